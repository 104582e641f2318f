"""``fedcredit node start`` keeps two processes running: Flower's SuperNode and the fedcredit runtime.

* ``flower-supernode --isolation process`` talks to the SuperLink (TLS, node key) and holds the
  run's messages as tasks on its local Runtime API; it runs no app code.
* ``python -m clients.node_runtime`` (:mod:`clients.node_runtime`) executes those tasks with the
  installed fedcredit. A runtime that dies (killed, out of memory) is started again, after
  1, 2, 4 … 30 s; the restarted runtime first finishes the task the killed one was working on
  (:mod:`clients.task_in_flight`), and the privacy ledger stays as the last atomic write left it.

Both write to this process's standard output, each line prefixed with a UTC timestamp and
the source (``supernode`` / ``runtime``). When the SuperNode ends, the runtime is stopped and
the reason is translated: a key the SuperLink does not know, a missing key where the SuperLink
requires one, or a TLS failure end with one clear message and exit code 2 (Flower itself exits
with status 1 and logs "Exit Code: 305" for all of these). SIGTERM / SIGINT stop both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_AFTER_S = 120.0  # a runtime that ran this long starts its restart delays from the first again
STOP_GRACE_S = 10.0
TAIL_LINES = 60


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def emit(source: str, line: str) -> None:
    """One log line of the node: UTC timestamp, source, text."""
    sys.stdout.write(f"{timestamp()} {source:<9} {line.rstrip()}\n")
    sys.stdout.flush()


@dataclass
class Child:
    """A supervised process whose output is relayed line by line (the last lines are kept)."""

    name: str
    command: list[str]
    env: dict
    proc: subprocess.Popen | None = None
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    started_at: float = 0.0

    def start(self) -> None:
        from clients.node_runtime import die_with_parent

        me = os.getpid()
        # the children end with this process, even when it is killed with SIGKILL
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                                     bufsize=1, preexec_fn=lambda: die_with_parent(me, signal.SIGTERM))
        self.started_at = time.monotonic()
        threading.Thread(target=self._relay, name=f"relay-{self.name}", daemon=True).start()

    def _relay(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip("\n"))
            emit(self.name, line)

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def supernode_failure(lines: list[str], key: str | None) -> str | None:
    """A clear message for the SuperNode's known connection failures (Flower logs
    "Exit Code: 305" with the SuperLink's error code), or None."""
    text = "\n".join(lines)
    if "Exit Code: 305" not in text and "SSL" not in text:
        return None
    if "[code: 2004]" in text or "Failed to activate SuperNode" in text:
        pub = f"{key}.pub" if key else "this node's public key"
        return (f"the SuperLink refused this node: the public key {pub} is not registered with the SuperLink "
                "(or another node with this key is connected). Send the .pub file to the operator, who registers "
                "it with 'flwr supernode register'; 'flwr supernode ls' shows the registered nodes")
    if "[code: 2001]" in text or "must be registered" in text:
        return ("the SuperLink requires node authentication: give --key with this node's private key "
                "(create it with 'fedcredit keys'; the operator registers its .pub)")
    if "SSL" in text or "certificate" in text.lower():
        detail = next((ln.strip() for ln in reversed(lines) if "SSL" in ln or "certificate" in ln.lower()), "")
        return f"TLS with the SuperLink failed ({detail}); run 'fedcredit node start ... --check' to test it"
    return None


class NodeSupervisor:
    """Run the SuperNode and the runtime until the SuperNode ends or a signal asks to stop."""

    def __init__(self, supernode: Child, runtime: Child, runtime_port: int, key: str | None):
        self.supernode, self.runtime = supernode, runtime
        self.runtime_port = runtime_port
        self.key = key
        self._stop = threading.Event()
        self.restarts = 0

    def _on_signal(self, signum, _frame) -> None:
        emit("node", f"{signal.Signals(signum).name}: stopping the runtime and the SuperNode")
        self._stop.set()

    def run(self) -> int:
        from clients.node_runtime import POLL_MAX_S

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.supernode.start()
        emit("node", f"SuperNode started (pid {self.supernode.proc.pid})")
        if not self._wait_for_runtime_api():
            return self._finish()
        self._start_runtime()
        while not self._stop.wait(POLL_MAX_S):
            if self.supernode.poll() is not None:
                return self._finish()
            if self.runtime.poll() is not None:
                code = self.runtime.poll()
                if code == 2:  # the runtime's own user-error exit (node config, data): restarting will not help
                    emit("node", "the runtime stopped on a configuration error (above); stopping the node")
                    self._stop_all()
                    return 2
                self._restart_runtime(code)
        self._stop_all()
        return 0

    def _wait_for_runtime_api(self) -> bool:
        import socket

        while not self._stop.is_set() and self.supernode.poll() is None:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", self.runtime_port)) == 0:
                    return True
            time.sleep(0.2)
        return False

    def _start_runtime(self) -> None:
        self.runtime.start()
        emit("node", f"runtime started (pid {self.runtime.proc.pid})")

    def _restart_runtime(self, code: int) -> None:
        ran = time.monotonic() - self.runtime.started_at
        if ran > STABLE_AFTER_S:
            self.restarts = 0
        delay = RESTART_DELAYS_S[min(self.restarts, len(RESTART_DELAYS_S) - 1)]
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        emit("node", f"the runtime {how} after {ran:.0f} s; starting it again in {delay:g} s")
        self.restarts += 1
        if not self._stop.wait(delay) and self.supernode.poll() is None:
            self._start_runtime()

    def _stop_all(self) -> None:
        self.runtime.stop()
        self.supernode.stop()

    def _finish(self) -> int:
        """The SuperNode ended (or a signal came first): stop the runtime, say why."""
        self.runtime.stop()
        code = self.supernode.poll()
        if code is None:  # stopped by a signal
            self.supernode.stop()
            return 0
        time.sleep(0.2)  # let the relay thread print the SuperNode's last lines
        message = supernode_failure(list(self.supernode.tail), self.key)
        if message:
            emit("node", f"error: {message}")
            print(f"error: {message}", file=sys.stderr, flush=True)
            return 2
        emit("node", f"the SuperNode exited with status {code}")
        return code if code else 0


def runtime_environment(env: dict) -> dict:
    """The runtime's environment: unbuffered output (its lines reach the log as they happen)."""
    return dict(env, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")

