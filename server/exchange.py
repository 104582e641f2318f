"""Sending one round of messages to nodes and collecting the replies.

Flower's deployment grid polls for replies with a fixed 3 s sleep in ``send_and_receive``.
:func:`exchange` uses the public ``push_messages`` / ``pull_messages`` instead and polls with
a short, growing interval (10 ms, ×1.5 per empty poll, at most 0.25 s: a reply waits
0.125 s on average to be seen, for four cheap pulls a second), so a round ends as soon as its
last reply arrives. Replies are matched to the sent messages by
``reply_to_message_id``; a node that has not answered by the timeout is reported as missing
(a straggler or a dropout) and the round goes on without it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_POLL_S = 0.01
MAX_POLL_S = 0.25


@dataclass
class Exchange:
    """Replies of one round: node id → reply; nodes that errored or never answered."""

    sent: list[int] = field(default_factory=list)  # the nodes messages were addressed to, in order
    replies: dict[int, Message] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)

    @property
    def ok(self) -> dict[int, Message]:
        return {n: m for n, m in self.replies.items() if not m.has_error()}


def exchange(grid: Grid, messages: Iterable[Message], timeout: float,
             on_reply: Callable[[int, Message], None] | None = None) -> Exchange:
    """Push ``messages``, poll until every reply is in or ``timeout`` seconds have passed."""
    messages = list(messages)
    dst = {}
    ids = []
    for msg, mid in zip(messages, grid.push_messages(messages)):
        if mid:
            dst[mid] = msg.metadata.dst_node_id
            ids.append(mid)
    result = Exchange(sent=[m.metadata.dst_node_id for m in messages])
    pending = set(ids)
    delay = FIRST_POLL_S
    deadline = time.monotonic() + timeout
    while pending:
        got = False
        for rep in grid.pull_messages(list(pending)):
            mid = rep.metadata.reply_to_message_id
            if mid not in pending:
                continue
            pending.discard(mid)
            node = dst[mid]
            result.replies[node] = rep
            if rep.has_error():
                result.errors[node] = _short_reason(rep.error.reason)
            if on_reply is not None:
                on_reply(node, rep)
            got = True
        if not pending or time.monotonic() >= deadline:
            break
        delay = FIRST_POLL_S if got else min(delay * 1.5, MAX_POLL_S)
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
    result.missing = sorted(dst[m] for m in pending)
    pushed = set(dst.values())
    result.missing += sorted(m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id not in pushed)
    return result


def _short_reason(reason: str | None) -> str:
    """The last meaningful line of an error reason (simulation reasons carry a traceback)."""
    if not reason:
        return "unknown error"
    reason = str(reason).strip()
    m = re.match(r"<class '([\w.]+)'>:<'(.*)'>$", reason, re.S)  # "<class 'X'>:<'message'>" (SuperNode)
    if m:
        reason = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
    # the envelope's closing "'>" may end the last line of a multi-line (traceback) reason
    lines = [re.sub(r"'>$", "", ln.strip()) for ln in reason.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln or "error" in ln:
            return ln[:500]
    return lines[-1][:500] if lines else "unknown error"
