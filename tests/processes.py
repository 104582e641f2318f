"""Helpers for tests that start real processes: find and stop only what the test started."""

from __future__ import annotations

import os
import signal
import subprocess
import time

FLOWER_AND_RAY = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-simulation",
                  "flwr-serverapp", "flwr-clientapp", "raylet", "gcs_server", "ray::", "default_worker.py")


def processes(markers=FLOWER_AND_RAY) -> dict[int, str]:
    """pid → command line of live processes whose command line contains one of ``markers``."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) < 3 or parts[1].startswith("Z"):
            continue  # zombies are reaped by their parent
        pid, args = int(parts[0]), parts[2]
        if pid != os.getpid() and any(m in args for m in markers):
            found[pid] = args
    return found


def new_processes(before: dict[int, str], settle_s: float = 10.0) -> dict[int, str]:
    """Processes present now but not in ``before``; waits up to ``settle_s`` for them to exit."""
    deadline = time.monotonic() + settle_s
    while True:
        extra = {p: a for p, a in processes().items() if p not in before}
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
