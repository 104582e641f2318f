"""Fault injection for simulations: virtual nodes that fail or straggle on purpose.

For rehearsing what a consortium run does when institutions drop out (``fedcredit simulate
--inject-fault``, and the tests in ``tests/test_faults.py``). A fault is a spec
``NODE:KIND[@ROUNDS]``:

* ``NODE`` — the virtual node's partition index (0 … N−1; the order of ``fedcredit simulate``'s
  institution table);
* ``KIND`` — ``fail``: the node's ClientApp raises during training (the server gets an error
  reply, a *dropout*); ``straggle``: it answers only after ``round-timeout`` + 5 s, i.e. after
  the server gave up on it (``straggle=SECONDS`` sets the delay);
* ``ROUNDS`` — comma-separated training rounds it applies to (default: every round).

E.g. ``0:fail@1`` ``2:straggle@2,3``. Only training messages are affected.

Why this cannot reach a deployment: the faults live in a :class:`ClientAppWithMods` that the
simulation runner builds in its own process and hands to Flower's simulation engine. A
deployed SuperNode loads the ClientApp the app declares (``clients.client_app:app``), which
has no such mod, and nothing in the run config or the messages turns one on. As a second
guard, :class:`FaultInjector` never acts on a node that has a ``data-path`` in its node config
(a deployment node).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from configs.errors import UserError

KINDS = ("fail", "straggle")
STRAGGLE_MARGIN_S = 5.0
_SPEC = re.compile(r"^(\d+):(fail|straggle)(?:=(\d+(?:\.\d*)?))?(?:@(\d+(?:,\d+)*))?$")

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


@dataclass(frozen=True)
class NodeFault:
    node: int  # partition index of the virtual node
    kind: str  # "fail" | "straggle"
    rounds: tuple[int, ...] = ()  # training rounds it applies to; () = every round
    delay_s: float | None = None  # straggle: seconds; None = round-timeout + STRAGGLE_MARGIN_S

    def applies(self, node: int, rnd: int) -> bool:
        return node == self.node and (not self.rounds or rnd in self.rounds)


def parse_fault(spec: str) -> NodeFault:
    """``'2:straggle@1,3'`` → NodeFault(2, 'straggle', (1, 3)); a bad spec raises UserError."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise UserError(f"--inject-fault {spec!r}: expected NODE:KIND[@ROUNDS] with KIND one of {', '.join(KINDS)} "
                        "(straggle=SECONDS sets the delay), e.g. '0:fail@1' or '2:straggle@2,3'")
    node, kind, delay, rounds = m.groups()
    if delay is not None and kind != "straggle":
        raise UserError(f"--inject-fault {spec!r}: only straggle takes =SECONDS")
    return NodeFault(int(node), kind, tuple(int(r) for r in rounds.split(",")) if rounds else (),
                     float(delay) if delay is not None else None)


class FaultInjector:
    """A Flower mod that makes chosen virtual nodes fail or straggle in chosen training rounds."""

    def __init__(self, faults: Sequence[NodeFault]):
        self.faults = tuple(faults)

    def __call__(self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != "train" or "data-path" in context.node_config:
            return call_next(msg, context)
        node = int(context.node_config.get("partition-id", -1))
        cfg = msg.content.config_records.get("config")
        rnd = int(cfg.get("server-round", 0)) if cfg is not None else 0
        for f in self.faults:
            if not f.applies(node, rnd):
                continue
            if f.kind == "fail":
                raise RuntimeError(f"injected fault: virtual node {node} fails in round {rnd}")
            delay = f.delay_s if f.delay_s is not None else \
                float(context.run_config.get("round-timeout", 600.0)) + STRAGGLE_MARGIN_S
            time.sleep(delay)
        return call_next(msg, context)


class ClientAppWithMods(ClientApp):
    """``base`` with extra mods in front of it (outermost first); used only in simulations."""

    def __init__(self, base: ClientApp, mods: Sequence[Mod]):
        super().__init__()
        self._base = base
        self._extra = list(mods)

    def __call__(self, message: Message, context: Context) -> Message:
        def call(i: int, msg: Message, ctx: Context) -> Message:
            if i == len(self._extra):
                return self._base(msg, ctx)
            return self._extra[i](msg, ctx, lambda m, c: call(i + 1, m, c))

        return call(0, message, context)


def client_app_with_faults(faults: Sequence[NodeFault | str], base: ClientApp | None = None,
                           n_nodes: int | None = None) -> ClientApp:
    """The fedcredit ClientApp (or ``base``) with ``faults`` injected; ``base`` itself when there are none."""
    if base is None:
        from clients.client_app import app as base
    parsed = [f if isinstance(f, NodeFault) else parse_fault(f) for f in faults]
    for f in parsed:
        if n_nodes is not None and f.node >= n_nodes:
            raise UserError(f"--inject-fault: node {f.node} does not exist; the virtual nodes are 0 … {n_nodes - 1}")
    return ClientAppWithMods(base, [FaultInjector(parsed)]) if parsed else base
