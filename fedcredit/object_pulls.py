"""Flower's object pulls, retried 20 ms after an upload-in-progress instead of 1 s after it.

Flower 1.42 moves a message as a tree of objects (the message, its records, each array and each
array's chunks: ~16 objects for a round's ``train`` message). A sender first *registers* the
message (``PushMessages``) and then uploads its objects one request at a time; the receiver sees
the message as soon as it is registered and pulls its objects. An object pulled before its upload
ended is answered "not available", and ``flwr.supercore.inflatable.inflatable_utils.pull_objects``
retries it after :data:`FLOWER_FIRST_RETRY_S` = 1 s (±20 % jitter), doubling up to 10 s.

In a deployed round that race is the rule, not the exception, and it happens on every hop: the
SuperNode pulls the round's message while the ServerApp still uploads it to the SuperLink; the
node's runtime acquires its task as soon as the SuperNode *registered* the message, while the
SuperNode still pulls the content; the ServerApp sees a reply while the SuperNode still uploads it.
Each hop then waits about a second for an upload that takes tens of milliseconds — up to ~3 s of a
round whose compute is a few tenths of a second.

:func:`pull_objects_promptly` is Flower's ``pull_objects`` with the first retry after
:data:`FIRST_RETRY_S` (and :func:`pull_and_inflate_promptly` Flower's
``pull_and_inflate_object_from_tree``, which pulls through it, likewise); everything else is
Flower's: the doubling and its ±20 % jitter, the 10 s cap, the limits on tries per object and on
time. An object that is still missing is asked for after 20, 40, 80, 160, 320, 640 ms …: six more
requests than Flower's before the retries are as far apart as Flower's own, in exchange for
waiting at most about as long as the upload itself. (Measured on loopback, 3 nodes: the retries
add no requests that count — a round made ~278 SuperLink requests with and without them, because
an upload caught in progress is rare there, while it is the rule between the runtime and its
SuperNode.)

:func:`retry_pulls_promptly` makes one Flower module call these where it calls Flower's:
``flwr.supernode.start_client_internal`` (the SuperNode pulling a message from the SuperLink),
``flwr.supernode.runtime.run_clientapp`` (``pull_task_input``: the node's runtime pulling its task's
message from the SuperNode) and ``flwr.superlink.grid.http_grid`` (the ServerApp pulling replies
from the SuperLink). It replaces that module's globals and nothing else, in the calling process
only. This relies on private parts of Flower (``pyproject.toml`` pins ``flwr`` to 1.42.*);
``tests/test_object_pulls.py`` fails when those modules no longer pull through these globals with
Flower's default first retry.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Callable

from flwr.supercore.constant import PULL_INITIAL_BACKOFF
from flwr.supercore.inflatable import inflatable_utils

FLOWER_FIRST_RETRY_S = PULL_INITIAL_BACKOFF
"""Flower 1.42's wait (seconds) before it pulls a not-yet-available object again."""

FIRST_RETRY_S = 0.02
"""Seconds before a not-yet-available object is pulled again the first time (then doubled, as
Flower does). Short, because the upload it waits for usually ends within tens of milliseconds; not
shorter, because every retry is a request the sender's side answers."""

FLOWER_PULLS: dict[str, Callable] = {
    "pull_objects": inflatable_utils.pull_objects,
    "pull_and_inflate_object_from_tree": inflatable_utils.pull_and_inflate_object_from_tree,
}
"""Flower's two pull functions (both take ``initial_backoff``), by the name modules import them as;
the originals, whatever is replaced later."""


def _promptly(flower_pull: Callable) -> Callable:
    @functools.wraps(flower_pull)
    def pull(*args, **options):
        options.setdefault("initial_backoff", FIRST_RETRY_S)
        return flower_pull(*args, **options)

    pull.__doc__ = (f"Flower's ``{flower_pull.__name__}`` (same arguments, result and errors), its first retry "
                    "of an unavailable object after :data:`FIRST_RETRY_S` unless ``initial_backoff`` is given.")
    return pull


pull_objects_promptly = _promptly(FLOWER_PULLS["pull_objects"])
pull_and_inflate_promptly = _promptly(FLOWER_PULLS["pull_and_inflate_object_from_tree"])
PROMPT_PULLS = {"pull_objects": pull_objects_promptly,
                "pull_and_inflate_object_from_tree": pull_and_inflate_promptly}


def retry_pulls_promptly(module: ModuleType) -> None:
    """Make Flower's ``module`` pull objects promptly: each of Flower's pull functions it holds as a
    global is replaced by its prompt twin (this process only; calling it again changes nothing)."""
    names = [name for name in FLOWER_PULLS if hasattr(module, name)]
    if not names or any(getattr(module, name) not in (FLOWER_PULLS[name], PROMPT_PULLS[name]) for name in names):
        raise RuntimeError(f"{module.__name__} does not pull through Flower's {' or '.join(FLOWER_PULLS)}: the "
                           "installed Flower changed; re-check fedcredit/object_pulls.py")
    for name in names:
        setattr(module, name, PROMPT_PULLS[name])
