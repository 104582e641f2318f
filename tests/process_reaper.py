"""A watchdog that ends what a test session started once the session is gone, however it ended.

A test that is stopped normally stops its own processes (tests/processes.py). When the pytest
process itself is killed from outside (CI's timeout, a developer's ``kill -9``, a group kill of
the run) no ``finally`` runs, and what the tests started lives on: SuperLinks, SuperNodes, node
runtimes — and Flower detaches some of its processes into their own sessions on purpose
(``flwr run``'s local SuperLink, the SuperLink's SuperExec), so even a group kill misses them.

The session (tests/conftest.py) puts ``FEDCREDIT_TEST_SESSION=<id>`` into its environment, which
every process it starts inherits (also the detached ones), and starts this module in a session of
its own with a pipe on its stdin::

    python -m tests.process_reaper SESSION_ID

The reaper blocks on the pipe; the kernel closes the pipe's write end when the pytest process
exits for any reason, so ``read`` returns. Then it ends every process whose environment carries
the session's id: SIGTERM, and SIGKILL for whatever is left after :data:`GRACE_S` seconds.
Only processes of this session are touched (another session's id differs), never by name.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

SESSION_VARIABLE = "FEDCREDIT_TEST_SESSION"
#: seconds between SIGTERM and SIGKILL
GRACE_S = 5.0


def session_processes(session_id: str) -> list[int]:
    """PIDs of live processes (not zombies, not this one) whose environment carries ``session_id``."""
    marker = f"{SESSION_VARIABLE}={session_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:  # gone, or not ours to read
            continue
        found.append(int(entry.name))
    return found


def _signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def end_session_processes(session_id: str, grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM every process of the session, SIGKILL those alive after ``grace_s`` seconds;
    returns the PIDs that were found at first."""
    found = session_processes(session_id)
    _signal_all(found, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and session_processes(session_id):
        time.sleep(0.2)
    _signal_all(session_processes(session_id), signal.SIGKILL)
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0]:
        print("usage: python -m tests.process_reaper SESSION_ID  (stdin: a pipe from the session)", file=sys.stderr)
        return 2
    while sys.stdin.buffer.read(65536):  # EOF: the session's end of the pipe is closed
        pass
    end_session_processes(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
