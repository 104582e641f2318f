"""The node runs only the fedcredit it installed (clients.app_release), and ``node start`` says what
is wrong before it starts (clients.superlink_probe) — without Flower processes.

The FABs are built by Flower's own builder from this repository (the release installed in this
environment) and from a modified copy; the SuperLink stand-ins are real TLS / plain HTTP servers
on loopback with the certificates ``fedcredit certs`` makes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO, run_fedcredit
from tests.deployment import LoopbackServer


def _fab(app_dir: Path) -> bytes:
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(app_dir)


def _app_copy(tmp_path: Path) -> Path:
    """A copy of the app's files as ``flwr run .`` would package them (tracked files)."""
    dst = tmp_path / "app"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel.endswith((".py", ".toml", ".md", ".json")) and not rel.startswith(("tests/", "docs/", "bench/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    return dst


@pytest.fixture(scope="module")
def installed_fab(tmp_path_factory) -> bytes:
    """The FAB of the installed release's files (built from a copy: Flower's builder would walk
    the whole checkout, .venv included, which took over 30 s on a loaded machine)."""
    return _fab(_app_copy(tmp_path_factory.mktemp("installed")))


def test_the_app_constants_match_pyproject():
    from clients.app_release import APP_NAME, APP_PUBLISHER, CLIENTAPP_REF, installed_release

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["tool"]["flwr"]["app"]["publisher"] == APP_PUBLISHER
    assert project["project"]["name"] == APP_NAME
    assert project["tool"]["flwr"]["app"]["components"]["clientapp"] == CLIENTAPP_REF
    assert installed_release().version == project["project"]["version"]


def test_the_installed_release_is_allowed(installed_fab):
    from clients.app_release import check_fab

    verdict = check_fab(installed_fab)
    assert verdict.allowed, verdict.problems
    digest = hashlib.sha256(installed_fab).hexdigest()
    assert check_fab(installed_fab, frozenset({digest})).allowed
    pinned = check_fab(installed_fab, frozenset({"0" * 64}))  # allow-list without this FAB
    assert not pinned.allowed and any("allowed-fab-hashes" in p for p in pinned.problems)


def test_a_modified_app_is_not_allowed_and_the_refusal_names_the_file(tmp_path):
    from clients.app_release import check_fab, installed_release

    app = _app_copy(tmp_path)
    with open(app / "clients" / "client_app.py", "a") as fh:
        fh.write("\n# a coordinator's change\n")
    (app / "privacy" / "extra_release.py").write_text("LEAK = True\n")
    verdict = check_fab(_fab(app))
    assert not verdict.allowed
    assert "clients/client_app.py differs from the installed file" in verdict.problems
    assert "privacy/extra_release.py is not part of the installed release" in verdict.problems
    detail = verdict.detail(installed_release(), frozenset())
    assert detail.startswith(f"offered: fedcredit/fedcredit {installed_release().version} (FAB sha256 ")
    assert "allowed: fedcredit/fedcredit" in detail and "clients/client_app.py" in detail


def test_another_version_or_clientapp_is_not_allowed(tmp_path):
    from clients.app_release import check_fab

    app = _app_copy(tmp_path)
    text = (app / "pyproject.toml").read_text()
    text = text.replace('version = "0.1.0"', 'version = "9.9.9"').replace(
        'clientapp = "clients.client_app:app"', 'clientapp = "clients.other:app"')
    (app / "pyproject.toml").write_text(text)
    verdict = check_fab(_fab(app))
    assert not verdict.allowed
    assert any("version 9.9.9 is not the installed" in p for p in verdict.problems)
    assert any("'clients.other:app' is not 'clients.client_app:app'" in p for p in verdict.problems)
    assert not check_fab(b"not a zip file").allowed


def test_allowed_fab_hashes_are_checked_at_node_start(tmp_path):
    from clients.app_release import parse_allowed_hashes

    good = "a" * 64
    assert parse_allowed_hashes(f"{good}, {'B' * 64}") == {good, "b" * 64}
    assert parse_allowed_hashes("") == frozenset()
    data = tmp_path / "bank.csv"
    data.write_text("x\n")
    proc = run_fedcredit("node", "start", "--superlink", "127.0.0.1:9", "--insecure", "--check", "--node-config",
                         f"data-path='{data}' state-dir='{tmp_path}/s' max-epsilon=1.0 allowed-fab-hashes='abc'")
    assert proc.returncode == 2 and "allowed-fab-hashes: 'abc' is not a SHA-256" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ node start diagnostics
@pytest.fixture(scope="module")
def node_setup(tmp_path_factory):
    """Certificates (two CAs), a key, one institution's table."""
    base = tmp_path_factory.mktemp("node")
    assert run_fedcredit("certs", "--out", base / "certs", "--hosts", "localhost,127.0.0.1").returncode == 0
    assert run_fedcredit("certs", "--out", base / "other", "--hosts", "localhost,127.0.0.1").returncode == 0
    assert run_fedcredit("certs", "--out", base / "elsewhere", "--hosts", "superlink.example").returncode == 0
    assert run_fedcredit("keys", "--out", base / "keys", "--name", "bank").returncode == 0
    assert run_fedcredit("data", "synth", "--out", base / "data", "--institutions", 1, "--scale", 0.2).returncode == 0
    return base, next((base / "data").glob("*.csv"))


def _check(node_setup, superlink: str, *extra) -> subprocess.CompletedProcess:
    base, csv = node_setup
    return run_fedcredit("node", "start", "--superlink", superlink, "--check", "--node-config",
                         f"data-path='{csv}' state-dir='{base}/state' max-epsilon=4.0", *extra)


@pytest.mark.slow  # six `node start --check` processes, each loading torch and the table
def test_check_tests_the_superlink_certificate_against_ca_crt(node_setup):
    base, _ = node_setup
    ca, key = ["--root-certificates", base / "certs" / "ca.crt"], ["--key", base / "keys" / "bank"]
    with LoopbackServer(base / "certs" / "server.crt", base / "certs" / "server.key") as tls:
        ok = _check(node_setup, f"127.0.0.1:{tls.port}", *ca, *key)
        assert ok.returncode == 0, ok.stderr
        assert "SuperLink OK" in ok.stdout and "commonName=localhost" in ok.stdout
        assert "--isolation process" in ok.stdout and "clients.node_runtime" in ok.stdout
        wrong_ca = _check(node_setup, f"127.0.0.1:{tls.port}", "--root-certificates", base / "other" / "ca.crt")
        assert wrong_ca.returncode == 2 and "is not signed by" in wrong_ca.stderr, wrong_ca.stderr
        insecure = _check(node_setup, f"127.0.0.1:{tls.port}", "--insecure")
        assert insecure.returncode == 2 and "uses TLS but this node was started with --insecure" in insecure.stderr
    with LoopbackServer(base / "elsewhere" / "server.crt", base / "elsewhere" / "server.key") as other_name:
        wrong_name = _check(node_setup, f"127.0.0.1:{other_name.port}",
                            "--root-certificates", base / "elsewhere" / "ca.crt")
        assert wrong_name.returncode == 2 and "not valid for '127.0.0.1'" in wrong_name.stderr, wrong_name.stderr
    with LoopbackServer() as plain:
        no_tls = _check(node_setup, f"127.0.0.1:{plain.port}", *ca)
        assert no_tls.returncode == 2 and "does not use TLS" in no_tls.stderr, no_tls.stderr
    for proc in (wrong_ca, insecure, wrong_name, no_tls):
        assert "Traceback" not in proc.stderr and "would run" not in proc.stdout


def test_check_reports_a_superlink_that_does_not_answer(node_setup):
    from tests.deployment import free_port

    base, _ = node_setup
    proc = _check(node_setup, f"127.0.0.1:{free_port()}", "--root-certificates", base / "certs" / "ca.crt")
    assert proc.returncode == 2 and "nothing answers at 127.0.0.1:" in proc.stderr, proc.stderr


def test_insecure_with_a_key_is_refused_before_anything_starts(node_setup):
    base, csv = node_setup
    proc = run_fedcredit("node", "start", "--superlink", "127.0.0.1:9", "--insecure", "--key", base / "keys" / "bank",
                         "--node-config", f"data-path='{csv}' state-dir='{base}/state' max-epsilon=4.0")
    assert proc.returncode == 2, proc.stderr
    assert "--insecure with --key: SuperNode authentication needs TLS" in proc.stderr
    assert "starting:" not in proc.stdout and "Traceback" not in proc.stderr


def test_supernode_connection_failures_are_translated():
    from clients.node_supervisor import supernode_failure

    unregistered = ["ERROR :     Exit Code: 305", "Failed to initialize the connection to the SuperLink.",
                    "[code: 2004] Failed to activate SuperNode."]
    assert "keys/bank.pub is not registered" in supernode_failure(unregistered, "keys/bank")
    no_key = ["Exit Code: 305", "[code: 2001] SuperNode authentication is enabled. All SuperNodes must be "
              "registered via the CLI."]
    assert "requires node authentication: give --key" in supernode_failure(no_key, None)
    assert supernode_failure(["INFO : SuperNode terminated gracefully."], None) is None


def test_runtime_module_runs_as_a_program():
    proc = subprocess.run([sys.executable, "-m", "clients.node_runtime", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0 and "--runtime-api" in proc.stdout


_TEMPORARY_TASK_DIR = """
import os, signal, sys
from clients.node_runtime import RuntimeSettings, _exit_now
from clients.task_in_flight import TaskInFlight, remove_process_dir
flight = TaskInFlight.of(RuntimeSettings("127.0.0.1:1", {}))
flight.taken("token", 7)
print(flight.directory, flush=True)
pid = os.fork()
if pid == 0:  # a forked worker: its removal call and its exit leave the runtime's directory alone
    remove_process_dir()
    os._exit(0)
os.waitpid(pid, 0)
print(flight.directory.is_dir(), flush=True)
if sys.argv[1] == "sigterm":
    signal.signal(signal.SIGTERM, _exit_now)
    os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.parametrize("ending", ["exit", "sigterm"])
def test_a_runtime_without_a_private_directory_removes_its_temporary_task_directory(ending):
    proc = subprocess.run([sys.executable, "-c", _TEMPORARY_TASK_DIR, ending], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    directory, kept_after_worker = proc.stdout.split()
    assert Path(directory).name.startswith("fedcredit-runtime-")
    assert kept_after_worker == "True"
    assert not Path(directory).exists()


# ------------------------------------------------------------- a message the SuperNode gave up
@pytest.fixture
def supernode_side():
    """Flower's own SuperNode parts in this process: its NodeState and the Runtime API app that
    ``flower-supernode`` serves (on a free loopback port), and its message intake
    ``_pull_and_store_message`` fed by a stand-in SuperLink."""
    import time

    import uvicorn
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.main import create_app
    from flwr.supernode.nodestate import NodeStateFactory

    from tests.deployment import free_port

    factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
    state = factory.state()
    state.set_node_id(7)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app=create_app(state_factory=factory), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield state, f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _superlink_message(run_id: int, server_round: int):
    """A train message as the SuperLink hands it out: (message without content, object tree,
    the contents of its objects by id)."""
    import time

    from flwr.app import ConfigRecord, Message, Metadata, RecordDict
    from flwr.app.message import remove_content_from_message
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    metadata = Metadata(run_id=run_id, message_id="", src_node_id=1, dst_node_id=7, reply_to_message_id="",
                        group_id=str(server_round), created_at=time.time(), ttl=3600.0, message_type="train")
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": server_round})}), metadata=metadata)
    msg.metadata.__dict__["_message_id"] = msg.object_id
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    return remove_content_from_message(msg), get_object_tree(msg), contents


def _supernode_receives(state, run_id: int, server_round: int, fab: bytes,
                        run_stopped: bool, node_config: dict | None = None) -> tuple[str, int | None]:
    """Flower's SuperNode (started with ``node_config``) takes one message of ``run_id`` from the
    SuperLink; with ``run_stopped`` the run stops while its content is pulled (its ServerApp was
    killed mid-round). Returns the message id and what Flower's intake returns (the run id, or
    None for a message it ignored)."""
    from flwr.supercore.fab import Fab
    from flwr.supercore.run import Run, RunNotRunningException
    from flwr.supernode.start_client_internal import _pull_and_store_message

    message, tree, contents = _superlink_message(run_id, server_round)
    digest = hashlib.sha256(fab).hexdigest()
    run = Run.create_empty(run_id)
    run.fab_hash, run.series_id = digest, run_id

    def pull_object(_run_id: int, object_id: str) -> bytes:
        if run_stopped:
            raise RunNotRunningException()
        return contents[object_id]

    got = _pull_and_store_message(state=state, object_store=state.object_store, node_config=node_config or {},
                                  receive=lambda: (message, tree), get_run=lambda _: run,
                                  get_fab=lambda *_: Fab(digest, fab, {}), pull_object=pull_object,
                                  confirm_message_received=lambda *_: None, trusted_entities=None)
    return message.metadata.message_id, got


def test_a_message_the_supernode_gave_up_is_left_unanswered_and_the_next_one_is_answered(
        supernode_side, installed_fab, capsys):
    """Flower 1.42's SuperNode ignores a message whose run stopped while its content was being pulled,
    but leaves its task pending with the content missing. The runtime takes that task, waits for the
    content, and once the SuperNode has the next run's task gives the old one up without a reply —
    so the one reply in the SuperNode's state, the one it sends, answers the next run's message
    (a stale reply would be sent in its place and the real one never; a resumed run then got no
    reply in a whole round). Both messages are refused here (the FAB is not on the node's
    allow-list), so no worker starts."""
    import time

    from flwr.common.constant import Status, SubStatus
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supernode.start_client_internal import _push_messages

    from clients.node_runtime import RuntimeSettings, acquire_client, next_pending_task, run_task

    state, api = supernode_side
    _, ignored = _supernode_receives(state, 111, 2, installed_fab, run_stopped=True)
    assert ignored is None  # Flower: "Run ID 111 is not in `RUNNING` status. Ignoring message …"
    (stale,) = state.get_tasks(statuses=[Status.PENDING])

    settings = RuntimeSettings(api, {}, None, frozenset({"0" * 64}))
    client = acquire_client(settings)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    first = client.AcquireTask(request)
    assert first.task.task_id == stale.task_id
    outcome: dict = {}

    def run_the_stale_task() -> None:
        outcome["next"] = run_task(settings, "test-bank", first.token, first.task.task_id,
                                   acquire_next=lambda: next_pending_task(client, request))

    runtime = threading.Thread(target=run_the_stale_task, daemon=True)
    runtime.start()
    time.sleep(2.0)
    assert runtime.is_alive()  # waiting for content that is not there (yet)

    answered_id, got = _supernode_receives(state, 222, 2, installed_fab, run_stopped=False)  # the resumed run
    assert got == 222
    runtime.join(timeout=40)
    assert not runtime.is_alive(), "the runtime stayed on the message the SuperNode gave up"
    token, task_id = outcome["next"]
    assert run_task(settings, "test-bank", token, task_id) is None

    (old,) = state.get_tasks(task_ids=[stale.task_id])
    assert (old.status.status, old.status.sub_status) == (Status.FINISHED, SubStatus.FAILED)
    sent = []
    _push_messages(state=state, object_store=state.object_store, push_object=lambda *_: None,
                   send=lambda msg, _tree, _runtime: (sent.append(msg), (set(), "session"))[1])
    assert [(m.metadata.run_id, m.metadata.reply_to_message_id) for m in sent] == [(222, answered_id)]
    log = capsys.readouterr().out
    assert f"run 111 task {stale.task_id}: given up without a reply" in log
    assert f"moved on to task {task_id}" in log and "REFUSED run 222 train: app-not-allowed" in log


# function-level imports a task never reaches, with the reason; everything else a warmed-up module
# imports inside a function must be loaded by warm-up itself
NOT_IN_TASKS = {
    "clients.node_runtime": "the runtime's own set-up and serve loop, before any task",
    "clients.node_command": "the runtime's own set-up, before any task",
    "importlib.metadata": "the simulation's entry point (clients.virtual_nodes) only for virtual nodes",
    "pyarrow.csv": "the table is read once at warm-up (clients.node.load_node_data)",
    "pyarrow.parquet": "the table is read once at warm-up (clients.node.load_node_data)",
    "sklearn.linear_model": "Platt scaling (models.calibration.fit_platt) runs on the server",
}

WARM_IMPORT_CHECK = r"""
import ast, importlib, json, sys
from pathlib import Path
from clients.node_runtime import WARM_MODULES
not_in_tasks = json.loads(sys.argv[1])
for name in WARM_MODULES:
    importlib.import_module(name)
repo = Path.cwd().resolve()
ours = ("clients", "models", "privacy", "configs", "fedcredit")
loaded = [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) and m.__name__ not in not_in_tasks
          and m.__name__.split(".")[0] in ours and Path(m.__file__).resolve().is_relative_to(repo)]
for module in loaded:
    tree = ast.parse(Path(module.__file__).read_text())
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for sub in ast.walk(fn):
            names = ([sub.module] if isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module
                     else [a.name for a in sub.names] if isinstance(sub, ast.Import) else [])
            for name in names:
                if name not in sys.modules and name not in not_in_tasks and not name.startswith("simulation."):
                    print(f"{module.__name__}.{fn.name} imports {name}")
"""


def test_every_module_a_handler_imports_inside_a_function_is_warmed_up():
    """The warm runtime imports WARM_MODULES once; a module that a node's handler imports lazily
    (inside a function) and that warm-up does not load would be imported again in every forked
    task (seconds per message; the slow deployment test sees it as "not warmed up"). Statically:
    every function-level import in the fedcredit modules warm-up loads is loaded by warm-up too,
    but for NOT_IN_TASKS (each with its reason) and ``simulation.*`` (virtual nodes only)."""
    import json

    proc = subprocess.run([sys.executable, "-c", WARM_IMPORT_CHECK, json.dumps(NOT_IN_TASKS)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "", f"add these to clients.node_runtime.WARM_MODULES:\n{proc.stdout}"


# -------------------------------------------------- a runtime killed while handing over a reply
def _taken_task(state, api: str, fab: bytes, run_id: int, work: Path):
    """The SuperNode receives a train message of ``run_id``; a runtime (a node whose private
    directory is ``work``) takes its task and pulls it. Returns (settings, client, flight, message,
    context, task id)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supernode.runtime.run_clientapp import pull_task_input

    from clients.node_runtime import RuntimeSettings, acquire_client, task_client
    from clients.task_in_flight import TaskInFlight

    _, got = _supernode_receives(state, run_id, 2, fab, run_stopped=False)
    assert got == run_id
    settings = RuntimeSettings(api, {}, None, frozenset(), work_dir=work)
    res = acquire_client(settings).AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    client = task_client(settings, res.token)
    flight = TaskInFlight.of(settings)
    flight.taken(res.token, res.task.task_id)
    message, context, _, _ = pull_task_input(client)
    flight.received(message)
    return settings, client, flight, message, context, res.task.task_id


def _update_reply(message):
    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    arrays = ArrayRecord({"w": Array(np.arange(5000, dtype=np.float32))})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10.0})}), reply_to=message)


class _KilledAfter:
    """The runtime's client, dead (as the SIGKILLed process) after ``n`` object pushes."""

    def __init__(self, client, n: int):
        self._client, self._left = client, n

    def __getattr__(self, name):
        return getattr(self._client, name)

    def PushObject(self, request):  # noqa: N802 - the Runtime API's method name
        if self._left <= 0:
            raise KeyboardInterrupt("SIGKILL")  # not an Exception: nothing in Flower's pusher handles it
        self._left -= 1
        return self._client.PushObject(request)


def _supernode_sending(state):
    """Flower's SuperNode send step (``_push_messages``) in a thread, against a SuperLink stand-in
    that asks for every object; returns (thread, what was sent, the objects pushed)."""
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
    from flwr.supernode.start_client_internal import _push_messages

    sent, pushed = [], {}

    def send(msg, tree, _runtime):
        sent.append(msg)
        return {t.object_id for t in iterate_object_tree(tree)}, "session"

    thread = threading.Thread(target=_push_messages, daemon=True, kwargs=dict(
        state=state, object_store=state.object_store, send=send,
        push_object=lambda _run, _session, oid, content: pushed.__setitem__(oid, content)))
    thread.start()
    return thread, sent, pushed


def test_a_reply_cut_off_by_a_killed_runtime_is_completed_by_the_restarted_one(supernode_side, installed_fab,
                                                                               capsys, tmp_path):
    """The runtime dies after registering its reply and pushing one of its objects: Flower's SuperNode
    then waits for the rest with no time limit (it would never take another message). The restarted
    runtime finds the kept reply and pushes what is missing with the task's token; the SuperNode
    sends exactly that reply — the one release the node accounted for — and the task is finished
    with the kept status."""
    import time

    from flwr.common.constant import Status, SubStatus
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from clients.task_in_flight import finish_interrupted_task, send_reply

    state, api = supernode_side
    settings, client, flight, message, context, task_id = _taken_task(state, api, installed_fab, 301, tmp_path)
    reply = _update_reply(message)
    with pytest.raises(KeyboardInterrupt):
        send_reply(_KilledAfter(client, 1), flight, reply, context, SubStatus.COMPLETED, "")
    thread, sent, pushed = _supernode_sending(state)
    time.sleep(1.5)
    assert thread.is_alive() and len(sent) == 1, "Flower's SuperNode waits for the rest of the reply"

    finish_interrupted_task(settings)  # the restarted runtime, before its warm-up
    thread.join(timeout=20)
    assert not thread.is_alive(), "the SuperNode still waits for the reply"
    (reply_sent,) = sent
    assert reply_sent.metadata.reply_to_message_id == message.metadata.message_id
    kept = {oid: obj.deflate() for oid, obj in get_all_nested_objects(reply).items()}
    assert pushed == kept, "the SuperNode sent exactly the reply the worker made"
    (task,) = state.get_tasks(task_ids=[task_id])
    assert (task.status.status, task.status.sub_status) == (Status.FINISHED, SubStatus.COMPLETED)
    assert not state.get_messages_legacy(is_reply=True), "no second reply"
    assert not flight.directory.exists()
    assert "is finished: its kept reply was pushed again (the SuperNode held part of it)" in capsys.readouterr().out


def test_a_reply_the_supernode_already_sent_is_not_pushed_again(supernode_side, installed_fab, capsys, tmp_path):
    """Killed after the last object went and before the task's outcome: the SuperNode has sent the
    reply (and forgotten it). Pushing it again would leave a stale reply that the SuperNode sends in
    place of the next message's; the restarted runtime only finishes the task."""
    from flwr.common.constant import Status, SubStatus

    from clients.task_in_flight import finish_interrupted_task, send_reply

    state, api = supernode_side
    settings, client, flight, message, context, task_id = _taken_task(state, api, installed_fab, 302, tmp_path)
    send_reply(client, flight, _update_reply(message), context, SubStatus.COMPLETED, "")
    thread, sent, _ = _supernode_sending(state)
    thread.join(timeout=20)
    assert not thread.is_alive() and len(sent) == 1

    finish_interrupted_task(settings)
    assert not state.get_messages_legacy(is_reply=True), "a stale reply was left for the next message"
    (task,) = state.get_tasks(task_ids=[task_id])
    assert (task.status.status, task.status.sub_status) == (Status.FINISHED, SubStatus.COMPLETED)
    assert "is finished: its reply had been sent by the SuperNode" in capsys.readouterr().out


def test_a_task_killed_before_its_reply_is_answered_with_the_fixed_error_at_once(supernode_side, installed_fab,
                                                                                capsys, tmp_path):
    """Killed while training (no reply made): the restarted runtime answers with the fixed error reply
    now instead of the SuperNode doing so when the lease ends (up to a minute later)."""
    from flwr.common.constant import Status, SubStatus

    from clients.node_runtime import TASK_FAILED_REASON
    from clients.task_in_flight import finish_interrupted_task

    state, api = supernode_side
    settings, _, _, message, _, task_id = _taken_task(state, api, installed_fab, 303, tmp_path)
    finish_interrupted_task(settings)
    thread, sent, _ = _supernode_sending(state)
    thread.join(timeout=20)
    (reply,) = sent
    assert reply.metadata.reply_to_message_id == message.metadata.message_id
    assert reply.has_error() and reply.error.reason == TASK_FAILED_REASON
    (task,) = state.get_tasks(task_ids=[task_id])
    assert (task.status.status, task.status.sub_status) == (Status.FINISHED, SubStatus.FAILED)
    assert "no reply had been made: answered with the fixed error reply" in capsys.readouterr().out


# ----------------------------------------------------------- the node config is the institution's
def test_a_runtime_with_a_virtual_node_config_refuses_to_start():
    """``partition-id`` without ``data-path`` is a simulation's virtual node, whose table, budget and
    state directory come from the run config (the coordinator's): the runtime exits 2 before warm-up."""
    proc = subprocess.run([sys.executable, "-m", "clients.node_runtime", "--runtime-api", "127.0.0.1:1",
                           "--node-config", "partition-id=0 num-partitions=2"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error: node config: 'data-path' is required" in proc.stderr and "Traceback" not in proc.stderr


def test_a_task_from_a_supernode_without_the_institutions_data_path_is_refused_without_a_worker(
        supernode_side, installed_fab, capsys, tmp_path):
    """The SuperNode hands its own node config to every task; one without ``data-path`` (a SuperNode
    started apart from ``fedcredit node start``, with a virtual node's config) would make the app take
    the table and budget from the run config. The runtime answers with a ``policy`` refusal naming
    why, runs no worker, reads no data, and the task is finished."""
    from flwr.common.constant import Status, SubStatus
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    from clients.node_runtime import VIRTUAL_NODE_REFUSED, RuntimeSettings, acquire_client, run_task
    from fedcredit import protocol as P

    state, api = supernode_side
    message_id, got = _supernode_receives(state, 401, 1, installed_fab, run_stopped=False,
                                          node_config={"partition-id": 0, "num-partitions": 2})
    assert got == 401
    settings = RuntimeSettings(api, {}, None, frozenset(), work_dir=tmp_path)  # the installed release: allowed
    res = acquire_client(settings).AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    assert run_task(settings, "test-bank", res.token, res.task.task_id) is None

    thread, sent, pushed = _supernode_sending(state)
    thread.join(timeout=20)
    (reply,) = sent
    assert reply.metadata.reply_to_message_id == message_id
    info = P.node_info(inflate_object_from_contents(reply.metadata.message_id, pushed))
    assert info["refused"] == P.REFUSED_POLICY and info["detail"] == VIRTUAL_NODE_REFUSED
    assert "'data-path'" in VIRTUAL_NODE_REFUSED
    (task,) = state.get_tasks(task_ids=[res.task.task_id])
    assert (task.status.status, task.status.sub_status) == (Status.FINISHED, SubStatus.COMPLETED)
    log = capsys.readouterr().out
    assert f"REFUSED run 401 train: policy — {VIRTUAL_NODE_REFUSED}" in log
    assert f"(task {res.task.task_id})" not in log  # the line a worker's outcome is logged with
