"""clients/supernode_launcher.py: Flower's SuperNode with its idle poll shortened, nothing else.

The launcher replaces one sleep inside a private part of Flower (flwr is pinned to 1.42.* for
this and other private names). These tests fail when the installed Flower's SuperNode loop no
longer idles the way the launcher expects — re-check the launcher before changing the pin — and
run Flower's real loop to show the patched sleep is the one it calls.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clients import supernode_launcher
from clients.supernode_launcher import FLOWER_IDLE_SLEEP_S, IDLE_POLL_S, IdlePollClock, shorten_idle_poll

UPGRADE_HINT = ("the installed Flower's SuperNode loop changed: re-check clients/supernode_launcher.py "
                "(and the flwr pin in pyproject.toml)")


def _sleep_calls(tree: ast.AST) -> list[ast.Call]:
    """Every ``time.sleep(...)`` call under ``tree``."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "sleep" and isinstance(n.func.value, ast.Name) and n.func.value.id == "time"]


def _flower_loop_module():
    from flwr.supernode import start_client_internal as loop

    return loop


def test_flowers_supernode_loop_idles_with_the_sleep_the_launcher_replaces():
    loop = _flower_loop_module()
    assert loop.time is time, f"{UPGRADE_HINT}: its module no longer uses the time module as 'time'"
    module = ast.parse(inspect.getsource(loop))
    (function,) = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "start_client_internal"]
    # the idle branch: `if run_id is None: time.sleep(3); continue`, right after the pull
    idle = [n for n in ast.walk(function) if isinstance(n, ast.If) and ast.unparse(n.test) == "run_id is None"]
    assert len(idle) == 1, f"{UPGRADE_HINT}: no single 'if run_id is None' branch after the pull"
    pull = [n for n in ast.walk(function) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "run_id"
            and "_pull_and_store_message" in ast.unparse(n.value)]
    assert len(pull) == 1, f"{UPGRADE_HINT}: run_id no longer comes from _pull_and_store_message"
    calls = _sleep_calls(idle[0])
    assert [[ast.unparse(a) for a in c.args] for c in calls] == [[str(FLOWER_IDLE_SLEEP_S)]], \
        f"{UPGRADE_HINT}: the idle branch is {ast.unparse(idle[0])!r}"
    # the launcher tells the idle sleep by its value: no other sleep in the module may share it
    others = [ast.literal_eval(c.args[0]) for c in _sleep_calls(module) if c is not calls[0]]
    assert FLOWER_IDLE_SLEEP_S not in others, f"{UPGRADE_HINT}: other sleeps of {others} s"
    assert "from time import" not in inspect.getsource(loop), UPGRADE_HINT


class _LoopStopped(Exception):
    pass


def _run_flowers_loop_once(monkeypatch) -> list[float]:
    """Run Flower's real ``start_client_internal`` loop (the connection faked, no message to pull)
    until it sleeps once; the seconds it actually slept are returned."""
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.nodestate import NodeStateFactory

    loop = _flower_loop_module()
    pulls: list[int] = []

    @contextlib.contextmanager
    def connection(**_kwargs):
        yield (7, None, None, None, None, None, None, None)  # node id, then the Fleet API calls (unused)

    def no_message(**_kwargs):
        pulls.append(1)
        return None

    slept: list[float] = []

    def recording_sleep(seconds: float) -> None:
        slept.append(seconds)
        raise _LoopStopped

    monkeypatch.setattr(loop, "_init_connection", connection)
    monkeypatch.setattr(loop, "_pull_and_store_message", no_message)
    monkeypatch.setattr(loop, "register_signal_handlers", lambda **_kwargs: None)
    monkeypatch.setattr(time, "sleep", recording_sleep)
    with pytest.raises(_LoopStopped):
        loop.start_client_internal(state_factory=NodeStateFactory(objectstore_factory=ObjectStoreFactory()),
                                   server_address="127.0.0.1:9", node_config={}, isolation="process",
                                   insecure=True)
    assert pulls == [1]
    return slept


def test_flowers_loop_sleeps_the_launchers_idle_poll_once_patched(monkeypatch):
    loop = _flower_loop_module()
    monkeypatch.setattr(loop, "time", loop.time)  # undone after the test
    assert _run_flowers_loop_once(monkeypatch) == [FLOWER_IDLE_SLEEP_S]  # Flower's own: 3 s
    shorten_idle_poll()
    assert isinstance(loop.time, IdlePollClock)
    assert _run_flowers_loop_once(monkeypatch) == [IDLE_POLL_S]
    assert IDLE_POLL_S < FLOWER_IDLE_SLEEP_S


def test_the_clock_changes_only_the_idle_sleep(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock = IdlePollClock()
    for seconds in (FLOWER_IDLE_SLEEP_S, 0.5, 3.5, 0):
        clock.sleep(seconds)
    assert slept == [IDLE_POLL_S, 0.5, 3.5, 0]
    assert clock.monotonic is time.monotonic and clock.time is time.time and clock.perf_counter is time.perf_counter
    with pytest.raises(AttributeError):
        clock.no_such_clock


def test_the_launcher_takes_flower_supernodes_arguments():
    """Same entry point: the same usage text, and a wrong argument ends the same way (exit 2)."""
    flower = subprocess.run([str(Path(sys.executable).with_name("flower-supernode")), "--help"],
                            capture_output=True, text=True, timeout=60)
    ours = subprocess.run([sys.executable, "-m", "clients.supernode_launcher", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert flower.returncode == ours.returncode == 0, ours.stderr
    assert "--isolation" in ours.stdout and ours.stdout == flower.stdout
    bad = subprocess.run([sys.executable, "-m", "clients.supernode_launcher", "--no-such-option"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage: flower-supernode" in bad.stderr and "--no-such-option" in bad.stderr


def test_node_start_runs_the_supernode_through_the_launcher(tmp_path):
    import argparse

    from clients.node_command import supernode_command

    args = argparse.Namespace(superlink="link.example:9092", insecure=False, root_certificates=str(tmp_path / "ca.crt"),
                              key=str(tmp_path / "bank"), port=9123, supernode_args=["--", "--max-retries", "3"])
    cmd = supernode_command(args, {"data-path": "/data/x.csv"}, tmp_path / "secret")
    assert cmd[:3] == [sys.executable, "-m", supernode_launcher.__name__]
    assert cmd[3:5] == ["--superlink", "link.example:9092"] and cmd[-2:] == ["--max-retries", "3"]
    assert ["--isolation", "process"] == cmd[cmd.index("--isolation"):cmd.index("--isolation") + 2]
