"""``fedcredit nodes register``: register an institution's node key on the SuperLink under its name."""

from __future__ import annotations

import argparse

HELP = "register an institution's node public key on the SuperLink, bound to its name"
DESCRIPTION = """\
Register the public key an institution sent (NAME.pub from `fedcredit keys`) on the SuperLink,
bound to the institution's name — the key's comment, or --institution (they must agree when
both are given). This is `flwr supernode register KEY CONNECTION --name INSTITUTION`, with the
checks an operator wants first: the file is an ECDSA public key on a NIST curve, the name is a
valid institution id, and neither the key nor the name is registered already.

The SuperLink keeps name, key and node id together in its database (give flower-superlink a
persistent --database); `fedcredit nodes list` shows them. Check the key's fingerprint with the
institution through a second channel before registering it.

CONNECTION is a SuperLink connection of the Flower CLI (FLWR_HOME/config.toml,
[superlink.CONNECTION]); default: its default connection.

Exit codes: 0 registered; 2 a mistake (not a public key, a bad or taken name, a key already
registered, an unknown connection, the SuperLink unreachable).
"""
JSON = "{node_id, institution, fingerprint}"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("public_key", metavar="KEY.pub", help="the institution's public key file (from 'fedcredit keys')")
    p.add_argument("connection", metavar="CONNECTION", nargs="?", default=None,
                   help="the Flower CLI's SuperLink connection (default: its default connection)")
    p.add_argument("--institution", metavar="NAME", help="institution id (default: the key's comment)")


def run(args: argparse.Namespace):
    from fedcredit.outcome import Outcome
    from server.node_registry import register_node

    node = register_node(args.public_key, args.institution, args.connection)
    print(f"registered node {node.node_id} for institution {node.institution} (key {node.fingerprint})")
    return Outcome({"node_id": node.node_id, "institution": node.institution, "fingerprint": node.fingerprint})
