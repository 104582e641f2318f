"""The session's process reaper (tests/process_reaper.py): when a test session dies, however it
died, what it started ends — also processes detached into sessions of their own, as Flower
detaches ``flwr run``'s local SuperLink and the SuperLink's SuperExec."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from tests.conftest import REPO
from tests.process_reaper import SESSION_VARIABLE, end_session_processes, session_processes

SLEEPER = "import time; open({ready!r}, 'w').write('up'); time.sleep(600)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open({ready!r}, 'w').write('up'); time.sleep(600)"


def _detached(code: str, session_id: str, ready) -> subprocess.Popen:
    """A process in a session of its own (as Flower detaches its daemons) carrying ``session_id``;
    returns once it is up."""
    env = dict(os.environ, **{SESSION_VARIABLE: session_id})
    proc = subprocess.Popen([sys.executable, "-c", code.format(ready=str(ready))], env=env, start_new_session=True)
    _wait_for(lambda: ready.exists(), 30, f"{code} did not start")
    return proc


def _wait_for(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def _gone(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None


def test_a_closed_pipe_ends_the_sessions_detached_processes_and_only_those(tmp_path):
    mine, other = uuid.uuid4().hex, uuid.uuid4().hex
    reaper = subprocess.Popen([sys.executable, "-m", "tests.process_reaper", mine], cwd=REPO,
                              stdin=subprocess.PIPE, start_new_session=True)
    ours = _detached(SLEEPER, mine, tmp_path / "ours")
    theirs = _detached(SLEEPER, other, tmp_path / "theirs")
    try:
        time.sleep(0.5)
        assert not _gone(ours) and reaper.poll() is None  # the reaper waits while the pipe is open
        reaper.stdin.close()
        assert reaper.wait(timeout=30) == 0
        _wait_for(lambda: _gone(ours), 10, "the session's process outlived its reaper")
        assert ours.returncode == -signal.SIGTERM
        assert not _gone(theirs), "the reaper ended another session's process"
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    session = uuid.uuid4().hex
    stubborn = _detached(STUBBORN, session, tmp_path / "up")
    try:
        assert session_processes(session) == [stubborn.pid]
        assert end_session_processes(session, grace_s=0.5) == [stubborn.pid]
        assert stubborn.wait(timeout=10) == -signal.SIGKILL
        assert session_processes(session) == []
    finally:
        stubborn.kill()
        stubborn.wait()


INNER_TEST = '''
import os, subprocess, sys, time
from pathlib import Path

def test_starts_a_detached_process_and_waits():
    ready = Path({ready!r})
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    ready.write_text(str(proc.pid))
    time.sleep(600)
'''


def test_a_killed_pytest_session_leaves_no_process_behind(tmp_path):
    """The wiring in tests/conftest.py, for real: a pytest session with this conftest starts a
    detached process and is SIGKILLed; the process ends."""
    ready = tmp_path / "child.pid"
    (tmp_path / "test_inner.py").write_text(INNER_TEST.format(ready=str(ready)))
    session = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                                "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    child = None
    try:
        _wait_for(lambda: ready.exists() and ready.read_text(), 60, "the inner session did not start its process")
        child = int(ready.read_text())
        assert _alive(child) and session.poll() is None  # both up before the kill
        session.kill()
        assert session.wait(timeout=30) == -signal.SIGKILL
        _wait_for(lambda: not _alive(child), 20, "the killed session's detached process is still alive")
        assert not _alive(child)
    finally:
        session.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
