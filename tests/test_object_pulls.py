"""fedcredit/object_pulls.py: Flower's object pulls with their first retry after 20 ms, not 1 s.

The module replaces the global ``pull_objects`` of three private Flower modules (flwr is pinned
to 1.42.*). These tests fail when the installed Flower no longer pulls through that global, and
run Flower's own pull loop to show which waits it asks for before and after: the waits are read
from the loop's own ``Event.wait`` calls (recorded, not slept), so nothing here is timed.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import textwrap
import threading
import types

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

from fedcredit import object_pulls
from fedcredit.object_pulls import FIRST_RETRY_S, FLOWER_FIRST_RETRY_S, pull_objects_promptly, retry_pulls_promptly

UPGRADE_HINT = "the installed Flower changed how it pulls objects: re-check fedcredit/object_pulls.py (and the flwr pin)"
JITTER = 0.2  # Flower's ±20 % on every backoff

# the modules whose pulls fedcredit makes prompt: (the function in it that pulls, what it calls)
PULLING = {"flwr.supernode.start_client_internal": ("_pull_and_store_message", "pull_objects"),
           "flwr.supernode.runtime.run_clientapp": ("pull_task_input", "pull_and_inflate_object_from_tree"),
           "flwr.superlink.grid.http_grid": ("HttpGrid.pull_messages", "pull_objects")}


@pytest.fixture
def restored():
    """Undo every replacement a test makes in the Flower modules."""
    modules = [importlib.import_module(name) for name in PULLING]
    before = [(m, name, getattr(m, name)) for m in modules for name in object_pulls.FLOWER_PULLS if hasattr(m, name)]
    yield modules
    for module, name, original in before:
        setattr(module, name, original)


@pytest.fixture
def backoffs(monkeypatch) -> list[float]:
    """The waits Flower's pull loop asks for, in order; recorded instead of slept (the loop waits on
    a ``threading.Event`` of its module's ``threading``)."""
    waits: list[float] = []

    class RecordingEvent(threading.Event):
        def wait(self, timeout=None):
            if timeout is not None and not self.is_set():
                waits.append(timeout)
            return self.is_set()

    monkeypatch.setattr(inflatable_utils, "threading",
                        types.SimpleNamespace(Event=RecordingEvent, Lock=threading.Lock))
    return waits


def _unavailable_then(content: bytes, misses: int):
    """A ``pull_object_fn`` whose object is "not available yet" ``misses`` times, then there."""
    calls: list[str] = []

    def pull(object_id: str) -> bytes:
        calls.append(object_id)
        if len(calls) <= misses:
            raise ObjectUnavailableError(object_id)
        return content

    return pull, calls


def _within_jitter(waits: list[float], first: float) -> bool:
    expected = [first * 2 ** i for i in range(len(waits))]
    return all(abs(w - e) <= JITTER * e + 1e-9 for w, e in zip(waits, expected))


def test_flowers_modules_pull_through_the_globals_fedcredit_replaces():
    for name, (function, pull) in PULLING.items():
        module = importlib.import_module(name)
        assert getattr(module, pull, None) is object_pulls.FLOWER_PULLS[pull], f"{UPGRADE_HINT}: {name}.{pull}"
        source = inspect.getsource(functools.reduce(getattr, function.split("."), module))
        calls = [n for n in ast.walk(ast.parse(textwrap.dedent(source)))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == pull]
        assert calls, f"{UPGRADE_HINT}: {name}.{function} no longer calls {pull}"
        assert not any(k.arg == "initial_backoff" for c in calls for k in c.keywords), \
            f"{UPGRADE_HINT}: {name}.{function} sets its own first retry"
    # Flower's pull_and_inflate_object_from_tree hands its own initial_backoff (default 1 s) to pull_objects
    defaults = inspect.signature(inflatable_utils.pull_and_inflate_object_from_tree).parameters
    assert defaults["initial_backoff"].default == FLOWER_FIRST_RETRY_S == 1, UPGRADE_HINT
    assert inspect.signature(inflatable_utils.pull_objects).parameters["initial_backoff"].default == 1, UPGRADE_HINT
    assert FIRST_RETRY_S < FLOWER_FIRST_RETRY_S


def test_flowers_pull_waits_a_second_and_the_prompt_one_twenty_milliseconds(backoffs):
    pull, calls = _unavailable_then(b"content", misses=3)
    assert inflatable_utils.pull_objects(["obj"], pull) == {"obj": b"content"}
    flowers, backoffs[:] = list(backoffs), []
    pull, calls = _unavailable_then(b"content", misses=3)
    assert pull_objects_promptly(["obj"], pull) == {"obj": b"content"}
    assert len(calls) == 4 and len(flowers) == len(backoffs) == 3
    assert _within_jitter(flowers, FLOWER_FIRST_RETRY_S), flowers  # 1, 2, 4 s (±20 %)
    assert _within_jitter(backoffs, FIRST_RETRY_S), backoffs  # 20, 40, 80 ms (±20 %)


def test_the_prompt_pull_keeps_flowers_limits_and_errors(backoffs):
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError

    pull, calls = _unavailable_then(b"never", misses=10)
    with pytest.raises(ObjectPullError):
        pull_objects_promptly(["obj"], pull, max_tries_per_object=3)
    assert len(calls) == 3
    pull, _ = _unavailable_then(b"content", misses=1)
    pull_objects_promptly(["obj"], pull, initial_backoff=0.5)  # a caller's own choice is kept
    assert backoffs[-1] == pytest.approx(0.5, rel=JITTER)


def test_retry_pulls_promptly_replaces_only_that_modules_pull(restored):
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal

    retry_pulls_promptly(http_grid)
    assert http_grid.pull_objects is pull_objects_promptly
    assert start_client_internal.pull_objects is inflatable_utils.pull_objects is object_pulls.FLOWER_PULLS["pull_objects"]
    retry_pulls_promptly(http_grid)  # again: no change
    assert http_grid.pull_objects is pull_objects_promptly
    for stranger in (types.SimpleNamespace(__name__="elsewhere", pull_objects=lambda *a, **k: {}),
                     types.SimpleNamespace(__name__="elsewhere")):
        with pytest.raises(RuntimeError, match="elsewhere does not pull through Flower's"):
            retry_pulls_promptly(stranger)


def test_the_runtimes_task_input_pull_retries_promptly(restored, backoffs):
    """The runtime's set-up makes Flower's ``run_clientapp.pull_task_input`` pull the message with
    its first retry after milliseconds; before it, after a second. Run on Flower's own pull of an
    object tree whose every object is "still uploading" at its first request."""
    from flwr.app import ConfigRecord, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
    from flwr.supernode.runtime import run_clientapp

    from clients.node_runtime import retry_task_input_pulls_promptly

    record = RecordDict({"config": ConfigRecord({"server-round": 3})})
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(record).items()}
    missing: dict[str, int] = {}

    def pull(object_id: str) -> bytes:
        missing[object_id] = missing.get(object_id, 0) + 1
        if missing[object_id] == 1:
            raise ObjectUnavailableError(object_id)
        return contents[object_id]

    def pulled() -> RecordDict:  # as pull_task_input calls it (no backoff of its own)
        missing.clear()
        return run_clientapp.pull_and_inflate_object_from_tree(get_object_tree(record), pull, lambda _id: None,
                                                                return_type=RecordDict)

    assert pulled()["config"]["server-round"] == 3
    flowers, backoffs[:] = list(backoffs), []
    retry_task_input_pulls_promptly()
    assert run_clientapp.pull_and_inflate_object_from_tree is object_pulls.pull_and_inflate_promptly
    assert pulled()["config"]["server-round"] == 3
    assert len(flowers) == len(backoffs) == len(contents)
    assert all(w == pytest.approx(FLOWER_FIRST_RETRY_S, rel=JITTER) for w in flowers)
    assert all(w == pytest.approx(FIRST_RETRY_S, rel=JITTER) for w in backoffs)


def test_the_serverapp_retries_reply_pulls_promptly_only_in_deployment(restored):
    from flwr.superlink.grid import http_grid
    from flwr.superlink.grid.http_grid import HttpGrid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from server.server_app import retry_reply_pulls_promptly

    retry_reply_pulls_promptly(InMemoryGrid(types.SimpleNamespace(state=lambda: None)))  # its state is not used
    assert http_grid.pull_objects is object_pulls.FLOWER_PULLS["pull_objects"]  # the simulation's grid pulls nothing
    retry_reply_pulls_promptly(HttpGrid(token="test-token"))  # not connected: nothing is sent
    assert http_grid.pull_objects is pull_objects_promptly
