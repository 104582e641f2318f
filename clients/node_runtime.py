"""The institution's node runtime: executes Flower's ClientApp tasks with the *installed* fedcredit.

``flower-supernode --isolation process`` receives the run's messages from the SuperLink and
keeps them as tasks on its local Runtime API (``127.0.0.1:PORT``), but starts nothing itself.
This long-lived process is the node's executor (``fedcredit node start`` starts both and
restarts this one if it dies):

1. ``AcquireTask`` (signed with the SuperExec secret that only the SuperNode and this process
   know) claims the next ClientApp task and its token;
2. with the token, ``PullTaskInput`` and ``PullMessages`` give the run, its FAB, the node's
   context and the message (Flower's own ``run_clientapp.pull_task_input``, watched by
   :mod:`clients.task_input`: a message the SuperNode gave up while receiving it — its run
   stopped meanwhile — is finished without a reply as soon as the SuperNode has a newer task,
   instead of holding this process and leaving a stale reply that the SuperNode would send in
   place of the next message's);
3. the FAB is only *checked* (:func:`clients.app_release.check_fab`): a FAB that is not the
   installed release gets the reply ``app-not-allowed`` naming what was offered and what is
   allowed — its code is never installed, imported or run;
4. otherwise a worker forked from this warm process runs the installed
   ``clients.client_app.app`` on the message and pushes the reply and the updated context,
   while this process keeps the task alive with heartbeats. A worker that dies (a crash, a
   kill, the memory limit) takes only its task with it: this process finishes the task for it
   (its kept reply, or a fixed error reply) and goes on with the next task.

The task in flight — its token, its message and, before any of it is pushed, its reply — is kept
in the node's private directory (:mod:`clients.task_in_flight`), so that a runtime that was itself
killed finishes that task when it is started again, before it warms up: Flower's SuperNode waits
with no time limit for a reply whose upload was cut off.

Warm: torch, opacus, Flower's message types and the institution's table (validated and split)
are loaded once, before the first task; a forked worker starts with all of it in memory
(copy-on-write), so a message costs milliseconds of overhead instead of a new Python process
that imports torch (seconds). The parent never runs torch operations, so forking is safe.

Privacy state: the worker writes the lifetime ledger itself (``clients.node``: exclusive
``flock``, atomic writes, the spend persisted *before* the reply is pushed). A worker killed
mid-task releases nothing that was not recorded; its lock dies with it.

Error replies carry a fixed reason (no exception text, which could depend on the data); the
traceback stays in this node's log.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

NextTask = tuple[str, int]  # (token, task id) of a task acquired from the SuperNode

# the modules a task uses, imported once before the first task (most import torch or opacus)
WARM_MODULES = ("clients.client_app", "clients.node", "clients.validation", "clients.ledger_heads",
                "clients.personalization", "models.personalization", "models.package", "safetensors.numpy",
                "privacy.accountant", "privacy.dpsgd", "privacy.planning", "privacy.batch_plan", "privacy.dp_release",
                "opacus", "opacus.optimizers", "opacus.accountants", "opacus.accountants.utils",
                "opacus.accountants.analysis.rdp", "flwr.client.mod", "flwr.compat.common.recorddict_compat",
                "sklearn.metrics", "torch.optim", "torch._dynamo")
# imported by torch inside a task when present (the optimiser's profiling hooks); not in every torch
OPTIONAL_WARM_MODULES = ("torch.profiler._cupti_monitor",)
POLL_MIN_S = 0.02  # AcquireTask right after a task …
POLL_MAX_S = 0.25  # … backing off ×1.5 per empty poll to this (the SuperNode itself polls the SuperLink every 3 s)
SUPERNODE_GONE_S = 30.0  # the SuperNode's Runtime API unreachable this long: exit (node start decides)
TASK_FAILED_REASON = ("the fedcredit node could not complete this message; the reason is in the institution's "
                      "node log (a fixed text: an error's wording could depend on borrower data)")
ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"
VIRTUAL_NODE_REFUSED = ("this SuperNode's node config has no 'data-path': the node runs only on the institution's "
                        "own table, budget and state directory, never a virtual node's, which the run config sets")


def log(text: str) -> None:
    """One line of the runtime's log (``fedcredit node start`` adds the timestamp)."""
    print(f"[fedcredit-runtime] {text}", flush=True)


@dataclass
class RuntimeSettings:
    runtime_api: str  # the SuperNode's Runtime API, host:port
    node_config: dict
    secret: bytes | None = None  # the SuperExec auth secret shared with the SuperNode
    allowed_hashes: frozenset[str] = frozenset()
    verdicts: dict = field(default_factory=dict)  # FAB sha256 → FabVerdict
    work_dir: Path | None = None  # private to the node (the secret's directory): the task in flight


# ----------------------------------------------------------------------------- set-up
def warm_up(node_config: dict) -> str:
    """Import what tasks use and load the institution's table; returns the institution id."""
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    from clients import node as N

    policy = N.deployment_policy(node_config)
    N.load_node_data(policy)  # cached in this process: every forked worker starts with it
    return policy.institution_id


def retry_task_input_pulls_promptly() -> None:
    """A task is acquired as soon as the SuperNode has registered its message, usually while the
    SuperNode is still pulling the message's content from the SuperLink: Flower's pull of the
    task input (``run_clientapp.pull_task_input``) then retries after milliseconds instead of a
    second (:mod:`fedcredit.object_pulls`)."""
    from flwr.supernode.runtime import run_clientapp

    from fedcredit.object_pulls import retry_pulls_promptly

    retry_pulls_promptly(run_clientapp)


def _client(api: str, interceptors: list):
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(server_address=api, insecure=True, root_certificates=None,
                                                 interceptors=interceptors, retry_invoker=None)


def acquire_client(s: RuntimeSettings):
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor

    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if s.secret:
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=s.secret, protected_methods={ACQUIRE_METHOD}))
    return _client(s.runtime_api, interceptors)


def task_client(s: RuntimeSettings, token: str):
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor

    return _client(s.runtime_api, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                                   RuntimeTokenHttpInterceptor(token)])


# ----------------------------------------------------------------------------- tasks
def verdict_for(s: RuntimeSettings, fab):
    """The (cached) FAB check for this FAB's content."""
    from clients.app_release import check_fab

    key = hashlib.sha256(fab.content).hexdigest()
    if key not in s.verdicts:
        s.verdicts[key] = check_fab(fab.content, s.allowed_hashes)
    return s.verdicts[key]


def runtime_refusal(s: RuntimeSettings, fab, node_config) -> tuple[str, str] | None:
    """(reason, detail) when the runtime itself refuses a task, before any worker or data: the run's
    app is not the installed release, or the SuperNode's node config is not the institution's own
    (a virtual node's, whose table and budget the run config would set); None to run it."""
    from clients.app_release import installed_release
    from clients.node_policy import is_institution_config
    from fedcredit import protocol as P

    verdict = verdict_for(s, fab)
    if not verdict.allowed:
        return P.REFUSED_APP, verdict.detail(installed_release(), s.allowed_hashes)
    if not is_institution_config(node_config):
        return P.REFUSED_POLICY, VIRTUAL_NODE_REFUSED
    return None


def refusal_reply(message, institution_id: str, reason: str, detail: str):
    """A refusal made by the runtime itself, before the task touches the institution's data (no worker)."""
    from fedcredit import protocol as P

    return P.reply(message, institution_id=institution_id, metrics={"num-examples": 0.0},
                   refused=reason, detail=detail[:4000])


def error_reply(message):
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=TASK_FAILED_REASON), reply_to=message)


def run_task(s: RuntimeSettings, institution_id: str, token: str, task_id: int,
             acquire_next: Callable[[], NextTask | None] = lambda: None) -> NextTask | None:
    """Pull one task, check its FAB, run it in a forked worker (or refuse it), push the outcome.

    Returns the next task to run when this one's message turned out to be abandoned by the
    SuperNode (:mod:`clients.task_input`; ``acquire_next`` takes the next pending task), else None.
    """
    from flwr.common.constant import SubStatus
    from flwr.supernode.runtime.run_clientapp import push_task_output

    from clients.task_in_flight import TaskInFlight, send_reply
    from clients.task_input import MessageAbandoned, give_up, pull_task_input

    client = task_client(s, token)
    flight = TaskInFlight.of(s)
    try:
        flight.taken(token, task_id)
        try:
            message, context, run, fab = pull_task_input(client, task_id, acquire_next)
        except MessageAbandoned as gone:
            give_up(client, task_id, gone)
            return gone.next_task
        flight.received(message)
        kind = message.metadata.message_type
        refusal = runtime_refusal(s, fab, context.node_config)
        if refusal is not None:
            reason, detail = refusal
            log(f"REFUSED run {run.run_id} {kind}: {reason} — {detail}")
            send_reply(client, flight, refusal_reply(message, institution_id, reason, detail), context,
                       SubStatus.COMPLETED, reason)
            push_task_output(client, context, SubStatus.COMPLETED, reason)
            return None
        t0 = time.perf_counter()
        outcome = run_in_worker(s, token, message, context, client, flight)
        log(f"run {run.run_id} round {message.metadata.group_id or '-'} {kind}: {outcome} "
            f"in {time.perf_counter() - t0:.2f} s (task {task_id})")
    except Exception:  # a broken task must not stop the node: log it, the task expires at the SuperNode
        log(f"task {task_id} could not be handled:\n{traceback.format_exc()}")
    finally:
        flight.clear()
        client.close()
    return None


def run_in_worker(s: RuntimeSettings, token: str, message, context, client, flight) -> str:
    """Fork a worker for the task; heartbeat while it runs; finish the task for it if it dies
    (:func:`clients.task_in_flight.finish_task`: its kept reply, or the fixed error reply)."""
    from flwr.supercore.heartbeat import HeartbeatSender

    from clients.task_in_flight import finish_task
    from clients.task_input import heartbeat_fn

    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the worker
        os.close(read_fd)
        die_with_parent(parent)
        worker(s, token, message, context, flight, write_fd)
    os.close(write_fd)
    heartbeat = HeartbeatSender(heartbeat_fn(client))
    heartbeat.start()
    try:
        status = _wait(pid)
    finally:
        heartbeat.stop()
        progress = _read_all(read_fd)
    if b"O" in progress:
        return "done"
    why = _exit_description(status)
    done = finish_task(client, flight, flight.load(), message, context)
    log(f"the worker of this task {why}; {done}")
    return f"worker {why}"


def worker(s: RuntimeSettings, token: str, message, context, flight, progress_fd: int) -> None:
    """In the forked worker: run the installed ClientApp, keep and push reply and context, exit."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from flwr.common.constant import SubStatus
        from flwr.supernode.runtime.run_clientapp import push_task_output

        from clients.client_app import app
        from clients.task_in_flight import send_reply

        client = task_client(s, token)
        status, details = SubStatus.COMPLETED, ""
        loaded = set(sys.modules)
        try:
            reply = app(message=message, context=context)
            _report_cold_imports(message.metadata.message_type, loaded)
        except Exception:
            log(f"the ClientApp raised on a {message.metadata.message_type} message:\n{traceback.format_exc()}")
            reply, status, details = error_reply(message), SubStatus.FAILED, "ClientApp raised an exception"
        send_reply(client, flight, reply, context, status, details)
        push_task_output(client, context, status, details)
        os.write(progress_fd, b"O")
    except BaseException:
        log(f"worker failed:\n{traceback.format_exc()}")
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _report_cold_imports(kind: str, loaded: set[str]) -> None:
    """Log modules a task had to import (each costs every message, in every worker): WARM_MODULES
    should have loaded them."""
    new = sorted(m for m in set(sys.modules) - loaded if not m.startswith("_"))
    if new:
        log(f"{kind}: {len(new)} module(s) imported during the task, not warmed up: {', '.join(new[:12])}")


_PRCTL = None


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Linux: this (forked) process gets ``sig`` when its parent ``parent_pid`` dies (no orphan
    finishing a task or holding the node's port). Safe right after ``fork``: libc is loaded before."""
    if _PRCTL is not None:
        _PRCTL(1, int(sig))  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None


_PRCTL = _load_prctl()


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            continue


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 64):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _exit_description(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


# ------------------------------------------------------------------------------ loop
def next_pending_task(client, request) -> NextTask | None:
    """Acquire the SuperNode's next pending task, if it has one (None also when it cannot be asked)."""
    import httpx

    try:
        res = client.AcquireTask(request)
    except httpx.HTTPError:
        return None
    return (res.token, res.task.task_id) if res.HasField("task") and res.token else None


def serve(s: RuntimeSettings, institution_id: str) -> int:
    """Acquire and run tasks until stopped; exits 1 when the SuperNode is gone for good."""
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType

    client = acquire_client(s)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    delay, unreachable_since = POLL_MIN_S, None
    log(f"ready: institution {institution_id}, tasks from the SuperNode at {s.runtime_api}")

    def acquire_next() -> NextTask | None:
        return next_pending_task(client, request)

    while True:
        try:
            res = client.AcquireTask(request)
            unreachable_since = None
        except httpx.TransportError as exc:
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > SUPERNODE_GONE_S:
                log(f"the SuperNode's Runtime API at {s.runtime_api} is unreachable ({exc}); stopping")
                return 1
            time.sleep(1.0)
            continue
        except httpx.HTTPStatusError as exc:
            log(f"the SuperNode refused this runtime ({exc.response.status_code}: {exc.response.text[:300]}); "
                "stopping (is another runtime using a different secret?)")
            return 1
        if res.HasField("task") and res.token:
            task: NextTask | None = (res.token, res.task.task_id)
            while task is not None:  # the next one, when a task's message was abandoned by the SuperNode
                task = run_task(s, institution_id, *task, acquire_next=acquire_next)
            delay = POLL_MIN_S
        else:
            time.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clients.node_runtime",
                                description="fedcredit's node runtime (started by 'fedcredit node start')")
    p.add_argument("--runtime-api", required=True, help="the SuperNode's Runtime API, host:port")
    p.add_argument("--node-config", required=True, help="the node config, as given to the SuperNode")
    p.add_argument("--superexec-auth-secret-file", default=None, help="the secret shared with the SuperNode")
    return p.parse_args(argv)


def _exit_now(*_) -> None:
    """SIGTERM: exit at once. Nothing else needs cleaning up — a running worker dies with this
    process (PR_SET_PDEATHSIG), its task expires at the SuperNode, the privacy ledger is only
    written by workers, atomically — and a normal interpreter exit with torch loaded takes
    seconds (tens of seconds on a loaded machine). A runtime without a private directory removes
    its temporary task directory."""
    from clients.task_in_flight import remove_process_dir

    remove_process_dir()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    from clients.app_release import parse_allowed_hashes
    from clients.node_command import parse_node_config
    from clients.task_in_flight import finish_interrupted_task
    from configs.errors import UserError

    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_now)
    try:
        cfg = parse_node_config(args.node_config)
        secret = Path(args.superexec_auth_secret_file).read_bytes() if args.superexec_auth_secret_file else None
        settings = RuntimeSettings(args.runtime_api, cfg, secret, parse_allowed_hashes(cfg.get("allowed-fab-hashes")),
                                   work_dir=Path(args.superexec_auth_secret_file).parent if secret else None)
        finish_interrupted_task(settings)  # before warm-up: the old task's lease is running out
        retry_task_input_pulls_promptly()
        t0 = time.perf_counter()
        institution = warm_up(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    log(f"warm in {time.perf_counter() - t0:.1f} s (torch, opacus and the table loaded once)")
    try:
        return serve(settings, institution)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
