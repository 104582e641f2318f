"""Helpers for tests that start real processes: find and stop only what the test started.

Other work may run Flower and Ray on the same machine at the same time, so "new since the test
began" is not enough to know what a test started. :func:`tagged` puts a unique tag into the
environment for the duration of a test; every process the test starts — and everything those
start (SuperExec, Ray's daemons and workers) — inherits it, and :func:`processes` with
``tag=`` keeps only the processes whose environment carries it. The ``process_tag`` fixture
(tests/conftest.py) sets one for a whole test. A process started with ``start_new_session=True``
leads its own process group: :func:`signal_group` and :func:`stop_group` end it with everything it
started, and :func:`group_alive` says whether anything of it is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

TAG_VARIABLE = "FEDCREDIT_TEST_TAG"


@contextlib.contextmanager
def tagged():
    """Set a fresh process tag in this process's environment; yields the tag."""
    tag = uuid.uuid4().hex
    old = os.environ.get(TAG_VARIABLE)
    os.environ[TAG_VARIABLE] = tag
    try:
        yield tag
    finally:
        if old is None:
            os.environ.pop(TAG_VARIABLE, None)
        else:
            os.environ[TAG_VARIABLE] = old


def _has_tag(pid: int, tag: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return f"{TAG_VARIABLE}={tag}".encode() in fh.read().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False

FLOWER_AND_RAY = ("flower-superlink", "flower-supernode", "clients.supernode_launcher", "flower-superexec",
                  "flwr-simulation", "clients.node_runtime", "flwr-serverapp", "flwr-clientapp", "raylet", "gcs_server", "ray::", "default_worker.py")


def processes(markers=FLOWER_AND_RAY, tag: str | None = None) -> dict[int, str]:
    """pid → command line of live processes whose command line contains one of ``markers``
    (and, with ``tag``, whose environment carries that test tag)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) < 3 or parts[1].startswith("Z"):
            continue  # zombies are reaped by their parent
        pid, args = int(parts[0]), parts[2]
        if pid != os.getpid() and any(m in args for m in markers) and (tag is None or _has_tag(pid, tag)):
            found[pid] = args
    return found


def new_processes(before: dict[int, str], settle_s: float = 10.0, tag: str | None = None) -> dict[int, str]:
    """Processes present now but not in ``before`` (with ``tag``: only the test's own);
    waits up to ``settle_s`` for them to exit."""
    deadline = time.monotonic() + settle_s
    while True:
        extra = {p: a for p, a in processes(tag=tag).items() if p not in before}
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.5)


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(1.0)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is still alive (zombies do not count)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def signal_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    """Send ``sig`` to the process group that ``proc`` leads and wait for ``proc``; SIGKILL the
    group if ``proc`` outlives ``timeout`` seconds. Returns ``proc``'s exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)


def stop_group(proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    """End the process group that ``proc`` leads (SIGTERM, SIGKILL for anything left after
    ``timeout`` seconds) and assert that none of its processes is left."""
    signal_group(proc, timeout=timeout)
    deadline = time.monotonic() + timeout
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    assert not group_alive(proc.pid), f"{what} left processes behind"


def stop_started(started: list) -> None:
    """Stop the ``subprocess.Popen``s a test started (last first), by their PIDs only."""
    for p in reversed(started):
        if p.poll() is None:
            kill_pids([p.pid])
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
