"""``fedcredit nodes list``: the registered node ids with their institutions' names."""

from __future__ import annotations

import argparse

HELP = "list the nodes registered on the SuperLink: node id, institution, status, key fingerprint"
DESCRIPTION = """\
List the nodes registered on the SuperLink with the institution names they were registered
under (`fedcredit nodes register`): node id, institution, status (registered: never connected;
online; offline), the public key's SHA256 fingerprint and when the node was last activated —
what `flwr supernode ls` shows, plus the name. A node registered with plain
`flwr supernode register` has no name ('—').

CONNECTION is a SuperLink connection of the Flower CLI (FLWR_HOME/config.toml); default: its
default connection. Exit codes: 0 listed; 2 an unknown connection or an unreachable SuperLink.
"""
JSON = "{nodes: [{node_id, institution, status, fingerprint, registered_at, last_seen}]}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("connection", metavar="CONNECTION", nargs="?", default=None,
                   help="the Flower CLI's SuperLink connection (default: its default connection)")
    p.add_argument("--all", action="store_true", help="also nodes that were unregistered")


def run(args: argparse.Namespace):
    from rich.console import Console
    from rich.table import Table

    from fedcredit.outcome import Outcome
    from server.node_registry import list_nodes

    nodes = list_nodes(args.connection, include_unregistered=args.all)
    if not args.json:
        table = Table(title=f"{len(nodes)} registered node(s)")
        for col in ("node id", "institution", "status", "key fingerprint", "last activated"):
            table.add_column(col)
        for n in nodes:
            table.add_row(str(n.node_id), n.institution or "—", n.status, n.fingerprint, n.last_seen or "—")
        import sys

        (Console() if sys.stdout.isatty() else Console(width=160)).print(table)  # a pipe gets whole ids
    return Outcome({"nodes": [n.to_json() for n in nodes]})
