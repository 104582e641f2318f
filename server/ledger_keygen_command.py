"""``fedcredit ledger keygen``: create the operator's Ed25519 key pair that signs audit ledgers."""

from __future__ import annotations

import argparse

HELP = "create the operator's Ed25519 key pair for signing audit ledgers"
DESCRIPTION = """\
Create an Ed25519 key pair for signing the consortium's audit ledgers:

  DIR/ledger-key.pem      the private key (PKCS#8 PEM, file mode 0600) — give its path as the
                          run config key 'ledger-key'; keep it off the run directories
  DIR/ledger-key.pub.pem  the public key — publish it to the institutions, who verify with
                          'fedcredit ledger verify LEDGER --public-key ledger-key.pub.pem'

Existing files are never overwritten. The key id printed is the first 16 hex digits of the
sha256 of the raw public key; every ledger entry names it.

Exit codes: 0 created; 2 a user mistake (files exist already, directory not writable).
"""
JSON = "{private_key, public_key, key_id}"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the key pair (created if needed)")


def run(args: argparse.Namespace) -> int:
    from configs.errors import UserError
    from fedcredit.outcome import Outcome
    from fedcredit.path_checks import check_output_dir
    from server.ledger import generate_operator_key, key_id, load_public_key

    check_output_dir(args.out, "--out")
    try:
        private_path, public_path = generate_operator_key(args.out)
    except PermissionError as exc:
        raise UserError(f"--out {args.out}: cannot write there ({exc.strerror})") from None
    kid = key_id(load_public_key(public_path))
    print(f"private key {private_path} (mode 0600; run config: ledger-key = \"{private_path.resolve()}\")")
    print(f"public key  {public_path} (publish it; key id {kid})")
    return Outcome({"private_key": str(private_path.resolve()), "public_key": str(public_path.resolve()),
                    "key_id": kid})
