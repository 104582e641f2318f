"""Flower's SuperNode with a short idle poll: ``python -m clients.supernode_launcher ARGS…``.

Takes exactly the arguments of ``flower-supernode`` and runs Flower's own entry point
(``flwr.supernode.cli:flower_supernode``, the ``flower-supernode`` console script of the
installed flwr) in this process, so its logs, exit codes and signal handling are Flower's.
One thing differs: the SuperNode's main loop (``flwr.supernode.start_client_internal``) pulls
the SuperLink for a message and, when there is none, sleeps a hard-coded 3 s before it pulls
again. A message that arrives during that sleep waits for it: on average half of it, and a round
waits for the slowest of its nodes, so up to ~3 s per message (~2 s on average with three
nodes) — several times the compute of a DP round. :data:`IDLE_POLL_S` replaces that one sleep.

How: the loop calls ``time.sleep(3)`` on its module's global ``time``. :func:`shorten_idle_poll`
replaces that global (of that module only) with :class:`IdlePollClock`, which is the real
``time`` module except that ``sleep(FLOWER_IDLE_SLEEP_S)`` sleeps :data:`IDLE_POLL_S`; the
module's other sleeps (0.5 s while a reply is awaited or pushed) and every other clock call
pass through unchanged. ``tests/test_supernode_launcher.py`` fails if the installed Flower's
loop no longer idles with ``time.sleep(FLOWER_IDLE_SLEEP_S)`` (or uses that value elsewhere in
the module), and runs Flower's loop to check that the patched sleep is the one it calls.

This relies on a private part of Flower, like other fedcredit modules do; that is why
``pyproject.toml`` pins ``flwr`` to 1.42.* — an upgrade must re-check it (the test says so).

Cost: an idle node asks the SuperLink for work every :data:`IDLE_POLL_S` seconds instead of
every 3 s (4 small authenticated gRPC requests per second per node over the Fleet API).
"""

from __future__ import annotations

import sys
import time

IDLE_POLL_S = 0.25
"""Seconds the SuperNode waits after a pull that found no message, before it pulls again.
Short, because a round's messages wait for it on every node (Flower's 3 s made a deployed DP
round several seconds slower than its compute); not shorter, because every idle poll is a
signed request that the SuperLink answers."""

FLOWER_IDLE_SLEEP_S = 3
"""The idle sleep hard-coded in Flower 1.42's SuperNode loop (``time.sleep(3)`` after
``_pull_and_store_message`` returns None in ``flwr/supernode/start_client_internal.py``)."""


class IdlePollClock:
    """The ``time`` module as Flower's SuperNode loop sees it once :func:`shorten_idle_poll` ran:
    every attribute is the real module's, except that the idle sleep is :data:`IDLE_POLL_S`."""

    def __getattr__(self, name: str):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        """``time.sleep``, with Flower's idle sleep (:data:`FLOWER_IDLE_SLEEP_S`) shortened."""
        time.sleep(IDLE_POLL_S if seconds == FLOWER_IDLE_SLEEP_S else seconds)


def shorten_idle_poll() -> None:
    """Make the SuperNode loop of this process idle :data:`IDLE_POLL_S` instead of 3 s."""
    from flwr.supernode import start_client_internal as supernode_loop

    supernode_loop.time = IdlePollClock()


def main() -> None:
    """Run ``flower-supernode`` with ``sys.argv[1:]``, its idle poll shortened (as the console
    script does: Flower ends the process with its own exit codes)."""
    shorten_idle_poll()
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"  # Flower's usage and error lines name its own command
    flower_supernode()


if __name__ == "__main__":
    sys.exit(main())
