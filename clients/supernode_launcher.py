"""Flower's SuperNode with short waits: ``python -m clients.supernode_launcher ARGS…``.

Takes exactly the arguments of ``flower-supernode`` and runs Flower's own entry point
(``flwr.supernode.cli:flower_supernode``, the ``flower-supernode`` console script of the
installed flwr) in this process, so its logs, exit codes and signal handling are Flower's.
What differs is how long the SuperNode's main loop (``flwr.supernode.start_client_internal``)
waits between its checks. Flower 1.42 hard-codes three sleeps there, each of which a round's
message or reply waits out on every node (and a round waits for the slowest node):

* :data:`FLOWER_IDLE_SLEEP_S` (3 s) after a pull of the SuperLink that found no message — a
  message that arrives meanwhile waits for it: up to 3 s per message. Now :data:`IDLE_POLL_S`.
* :data:`FLOWER_REPLY_SLEEP_S` (0.5 s), twice in ``_push_messages``: between checks whether the
  reply to the message being handled is registered (the runtime registers it when its task is
  done), and, once it is, between checks whether each of the reply's objects has arrived (the
  runtime uploads them one by one after registering the reply, so the first check nearly always
  finds one missing). Together ~0.5–1 s per reply. Now :data:`REPLY_POLL_S`.

How: the loop calls ``time.sleep(...)`` on its module's global ``time``. :func:`shorten_waits`
replaces that global (of that module only) with :class:`SuperNodeClock`, which is the real
``time`` module except that a sleep of one of Flower's durations above sleeps the shorter one;
every other sleep and every other clock call pass through unchanged. It also makes the module's
object pulls retry promptly (:mod:`fedcredit.object_pulls`: the SuperNode pulls a message while
the ServerApp may still be uploading it). ``tests/test_supernode_launcher.py`` fails if the
installed Flower's loop no longer sleeps these durations where the launcher expects them (or
sleeps them elsewhere in the module), and runs Flower's loop to check that the patched sleeps are
the ones it calls.

This relies on a private part of Flower, like other fedcredit modules do; that is why
``pyproject.toml`` pins ``flwr`` to 1.42.* — an upgrade must re-check it (the test says so).

Cost: an idle node asks the SuperLink for work every :data:`IDLE_POLL_S` seconds instead of
every 3 s (4 small authenticated requests per second per node over the Fleet API). While a task
runs, the SuperNode looks into its own in-memory state every :data:`REPLY_POLL_S` instead of
every 0.5 s (a dictionary scan under a lock, no request).
"""

from __future__ import annotations

import sys
import time

FLOWER_IDLE_SLEEP_S = 3
"""The idle sleep hard-coded in Flower 1.42's SuperNode loop (``time.sleep(3)`` after
``_pull_and_store_message`` returns None in ``flwr/supernode/start_client_internal.py``)."""

IDLE_POLL_S = 0.25
"""Seconds the SuperNode waits after a pull that found no message, before it pulls again.
Short, because a round's messages wait for it on every node (Flower's 3 s made a deployed DP
round several seconds slower than its compute); not shorter, because every idle poll is a
signed request that the SuperLink answers."""

FLOWER_REPLY_SLEEP_S = 0.5
"""The two sleeps hard-coded in Flower 1.42's ``_push_messages`` (``time.sleep(0.5)``): while no
reply is registered yet, and while an object of the reply has not been uploaded yet."""

REPLY_POLL_S = 0.02
"""Seconds between the SuperNode's checks for the reply and its objects. They look into the
SuperNode's own in-memory state (no request), so they can be frequent; a reply's upload from the
runtime takes tens of milliseconds."""

SHORTENED_SLEEPS = {FLOWER_IDLE_SLEEP_S: IDLE_POLL_S, FLOWER_REPLY_SLEEP_S: REPLY_POLL_S}
"""Flower's sleep (seconds) → the one the SuperNode loop sleeps instead."""


class SuperNodeClock:
    """The ``time`` module as Flower's SuperNode loop sees it once :func:`shorten_waits` ran:
    every attribute is the real module's, except that Flower's waits are shortened
    (:data:`SHORTENED_SLEEPS`)."""

    def __getattr__(self, name: str):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        """``time.sleep``, with a sleep of one of Flower's waits replaced by its shorter one."""
        time.sleep(SHORTENED_SLEEPS.get(seconds, seconds))


def shorten_waits() -> None:
    """Make the SuperNode loop of this process wait :data:`SHORTENED_SLEEPS` instead of Flower's
    sleeps, and retry its object pulls promptly."""
    from flwr.supernode import start_client_internal as supernode_loop

    from fedcredit.object_pulls import retry_pulls_promptly

    supernode_loop.time = SuperNodeClock()
    retry_pulls_promptly(supernode_loop)


def main() -> None:
    """Run ``flower-supernode`` with ``sys.argv[1:]``, its waits shortened (as the console script
    does: Flower ends the process with its own exit codes)."""
    shorten_waits()
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"  # Flower's usage and error lines name its own command
    flower_supernode()


if __name__ == "__main__":
    sys.exit(main())
