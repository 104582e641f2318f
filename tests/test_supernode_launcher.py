"""clients/supernode_launcher.py: Flower's SuperNode with its waits shortened, nothing else.

The launcher replaces three sleeps inside a private part of Flower (flwr is pinned to 1.42.* for
this and other private names): the idle poll (3 s) and the two waits for a reply and its objects
(0.5 s each). These tests fail when the installed Flower's SuperNode loop no longer sleeps those
durations where the launcher expects them — re-check the launcher before changing the pin — and
run Flower's real loop to show the patched sleeps are the ones it calls. Sleeps are recorded, not
slept: nothing here is timed.
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
from clients.supernode_launcher import (FLOWER_IDLE_SLEEP_S, FLOWER_REPLY_SLEEP_S, IDLE_POLL_S, REPLY_POLL_S,
                                        SHORTENED_SLEEPS, SuperNodeClock, shorten_waits)

UPGRADE_HINT = ("the installed Flower's SuperNode loop changed: re-check clients/supernode_launcher.py "
                "(and the flwr pin in pyproject.toml)")


def _sleep_calls(tree: ast.AST) -> list[ast.Call]:
    """Every ``time.sleep(...)`` call under ``tree``."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "sleep" and isinstance(n.func.value, ast.Name) and n.func.value.id == "time"]


def _flower_loop_module():
    from flwr.supernode import start_client_internal as loop

    return loop


def _function(module: ast.Module, name: str) -> ast.FunctionDef:
    (function,) = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == name]
    return function


def test_flowers_supernode_loop_sleeps_what_the_launcher_shortens_and_nothing_else():
    loop = _flower_loop_module()
    assert loop.time is time, f"{UPGRADE_HINT}: its module no longer uses the time module as 'time'"
    assert "from time import" not in inspect.getsource(loop), UPGRADE_HINT
    module = ast.parse(inspect.getsource(loop))
    function = _function(module, "start_client_internal")
    # the idle branch: `if run_id is None: time.sleep(3); continue`, right after the pull
    idle = [n for n in ast.walk(function) if isinstance(n, ast.If) and ast.unparse(n.test) == "run_id is None"]
    assert len(idle) == 1, f"{UPGRADE_HINT}: no single 'if run_id is None' branch after the pull"
    pull = [n for n in ast.walk(function) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "run_id"
            and "_pull_and_store_message" in ast.unparse(n.value)]
    assert len(pull) == 1, f"{UPGRADE_HINT}: run_id no longer comes from _pull_and_store_message"
    idle_calls = _sleep_calls(idle[0])
    assert [[ast.unparse(a) for a in c.args] for c in idle_calls] == [[str(FLOWER_IDLE_SLEEP_S)]], \
        f"{UPGRADE_HINT}: the idle branch is {ast.unparse(idle[0])!r}"
    # _push_messages: `while not (reply_messages := …): time.sleep(0.5)` and, per object of the
    # reply, `while (content := object_store.get(…)) == b"": time.sleep(0.5)`
    push = _function(module, "_push_messages")
    waits = [n for n in ast.walk(push) if isinstance(n, ast.While)]
    assert [ast.unparse(w.test) for w in waits] == [
        "not (reply_messages := state.get_messages_legacy(is_reply=True))",
        "(content := object_store.get(tree.object_id)) == b''"], f"{UPGRADE_HINT}: _push_messages waits differently"
    for wait in waits:
        assert [[ast.unparse(a) for a in c.args] for c in _sleep_calls(wait)] == [[str(FLOWER_REPLY_SLEEP_S)]], \
            f"{UPGRADE_HINT}: {ast.unparse(wait)!r}"
    # the clock tells Flower's sleeps by their value: the module sleeps nowhere else
    shortened = idle_calls + [c for w in waits for c in _sleep_calls(w)]
    assert [c for c in _sleep_calls(module) if c not in shortened] == [], f"{UPGRADE_HINT}: other sleeps"


def test_the_clock_shortens_exactly_flowers_sleeps(monkeypatch):
    assert SHORTENED_SLEEPS == {FLOWER_IDLE_SLEEP_S: IDLE_POLL_S, FLOWER_REPLY_SLEEP_S: REPLY_POLL_S}
    assert (FLOWER_IDLE_SLEEP_S, FLOWER_REPLY_SLEEP_S, IDLE_POLL_S, REPLY_POLL_S) == (3, 0.5, 0.25, 0.02)
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock = SuperNodeClock()
    clock.sleep(FLOWER_IDLE_SLEEP_S)
    clock.sleep(3.0)
    clock.sleep(FLOWER_REPLY_SLEEP_S)
    assert slept == [IDLE_POLL_S, IDLE_POLL_S, REPLY_POLL_S]
    other = [0, 0.02, 0.25, 0.49, 0.51, 1, 2.5, 3.01, 3.5, 60]  # every other duration: unchanged
    slept.clear()
    for seconds in other:
        clock.sleep(seconds)
    assert slept == other
    assert clock.monotonic is time.monotonic and clock.time is time.time and clock.perf_counter is time.perf_counter
    with pytest.raises(AttributeError):
        clock.no_such_clock


class _LoopStopped(Exception):
    pass


def _recording_sleep(monkeypatch, on_sleep=lambda seconds: None) -> list[float]:
    """``time.sleep`` records its seconds (and calls ``on_sleep``) instead of sleeping."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        on_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return slept


def _run_flowers_loop_once(monkeypatch) -> list[float]:
    """Run Flower's real ``start_client_internal`` loop (the connection faked, no message to pull)
    until it sleeps once; the seconds it asked to sleep are returned."""
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

    def stop(_seconds: float) -> None:
        raise _LoopStopped

    monkeypatch.setattr(loop, "_init_connection", connection)
    monkeypatch.setattr(loop, "_pull_and_store_message", no_message)
    monkeypatch.setattr(loop, "register_signal_handlers", lambda **_kwargs: None)
    slept = _recording_sleep(monkeypatch, stop)
    with pytest.raises(_LoopStopped):
        loop.start_client_internal(state_factory=NodeStateFactory(objectstore_factory=ObjectStoreFactory()),
                                   server_address="127.0.0.1:9", node_config={}, isolation="process",
                                   insecure=True)
    assert pulls == [1]
    return slept


def _reply(run_id: int = 5):
    """A reply as the runtime registers it: (message, its object tree, its objects' bytes by id)."""
    from flwr.app import ConfigRecord, Message, Metadata, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    metadata = Metadata(run_id=run_id, message_id="", src_node_id=7, dst_node_id=1, reply_to_message_id="instruction",
                        group_id="1", created_at=time.time(), ttl=3600.0, message_type="train")
    reply = Message(RecordDict({"node": ConfigRecord({"institution-id": "bank"})}), metadata=metadata)
    reply.metadata.__dict__["_message_id"] = reply.object_id
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(reply).items()}
    return reply, get_object_tree(reply), contents


def _push_a_reply(monkeypatch, upload_missing: bool) -> tuple[list[float], list[str]]:
    """Run Flower's real ``_push_messages`` on a SuperNode state where the reply is not registered
    yet (``upload_missing`` False: it is registered during the first sleep) or registered with one
    object not uploaded yet (True: uploaded during the first sleep). Returns the seconds it asked to
    sleep and the object ids it pushed to the (stand-in) SuperLink."""
    from flwr.app.message import remove_content_from_message
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.nodestate import NodeStateFactory

    loop = _flower_loop_module()
    state = NodeStateFactory(objectstore_factory=ObjectStoreFactory()).state()
    store = state.object_store
    reply, tree, contents = _reply()
    late = reply.metadata.message_id  # the message object itself: uploaded last by Flower's push

    def register() -> None:
        store.preregister(reply.metadata.run_id, tree)
        for oid, content in contents.items():
            if not (upload_missing and oid == late):
                store.put(oid, content)
        state.store_message(remove_content_from_message(reply))

    def runtime_catches_up(_seconds: float) -> None:
        if upload_missing:
            store.put(late, contents[late])
        else:
            register()

    if upload_missing:
        register()
    slept = _recording_sleep(monkeypatch, runtime_catches_up)
    pushed: list[str] = []
    loop._push_messages(state=state, object_store=store, send=lambda _msg, _tree, _runtime: (set(contents), "session"),
                        push_object=lambda _run, _session, oid, _content: pushed.append(oid))
    return slept, pushed


def test_flowers_loop_sleeps_the_launchers_waits_once_patched(monkeypatch):
    loop = _flower_loop_module()
    monkeypatch.setattr(loop, "time", loop.time)  # undone after the test
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    assert _run_flowers_loop_once(monkeypatch) == [FLOWER_IDLE_SLEEP_S]  # Flower's own: 3 s
    assert _push_a_reply(monkeypatch, upload_missing=False)[0] == [FLOWER_REPLY_SLEEP_S]  # 0.5 s
    assert _push_a_reply(monkeypatch, upload_missing=True)[0] == [FLOWER_REPLY_SLEEP_S]
    shorten_waits()
    assert isinstance(loop.time, SuperNodeClock)
    assert _run_flowers_loop_once(monkeypatch) == [IDLE_POLL_S]
    slept, pushed = _push_a_reply(monkeypatch, upload_missing=False)
    assert slept == [REPLY_POLL_S] and len(pushed) == len(_reply()[2])  # then the whole reply went out
    slept, pushed = _push_a_reply(monkeypatch, upload_missing=True)
    assert slept == [REPLY_POLL_S] and len(pushed) == len(_reply()[2])


def test_shorten_waits_also_makes_the_supernodes_pulls_prompt(monkeypatch):
    from fedcredit.object_pulls import pull_objects_promptly

    loop = _flower_loop_module()
    monkeypatch.setattr(loop, "time", loop.time)
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    shorten_waits()
    assert loop.pull_objects is pull_objects_promptly  # fedcredit/object_pulls.py, tested there


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
