"""``fedcredit decisions verify``: check an institution's decision trail (hash chain, Ed25519 signatures)."""

from __future__ import annotations

import argparse

HELP = "verify the decision trail of the decision service (hash chain, Ed25519 signatures)"
DESCRIPTION = """\
Verify DIR/decisions.jsonl, the decision service's append-only trail (docs/institution.md).

Every entry must carry its position, the hash of the entry before it, a sha256 of its canonical
contents and an Ed25519 signature of that hash. The first entry that breaks the chain is named
with its index, kind and what is wrong: modified contents, a removed, inserted or reordered
entry, an unsigned entry or one signed by another key, a torn last line (a crash in the middle
of a write: nothing in it was answered, and the service cuts it off at its next start).

Which key:
  --public-key FILE  the trail's public key (e.g. decisions-key.pub.pem, or the .pub.pem of the
                     key given to `serve --signing-key`): every entry must be signed by it.
  (none)             the key named in the trail's own log-start entry: shows only that the file
                     is self-consistent, since whoever rewrote it could re-sign it.
--head HASH: a head hash kept elsewhere (GET /healthz shows the current one); it must be on the
chain, or the trail was truncated or rewritten since.

Exit codes: 0 intact; 1 not intact (the first bad entry is named) or a head is not on it;
2 a user mistake (no trail there, unreadable key).
With --json the last line of standard output is one JSON object: {"ok", "log", "entries",
"valid", "first_bad_index", "bad_kind", "reason", "torn_tail", "head", "key_id", "key_source",
"decisions", "counts", "heads"}.
"""
JSON = "the result"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("decisions", metavar="DIR", help="the decision trail's directory (or its decisions.jsonl)")
    p.add_argument("--public-key", metavar="FILE", help="the trail's Ed25519 public key (PEM); default: the key "
                                                        "the trail itself names")
    p.add_argument("--head", action="append", default=[], metavar="HASH",
                   help="a head hash kept elsewhere; must be on the chain (repeatable)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from clients.decision_log import read_trail
    from configs.errors import UserError
    from fedcredit.outcome import Outcome
    from fedcredit.signed_chain import is_hash
    from fedcredit.signing_keys import load_public_key

    public_key = load_public_key(args.public_key) if args.public_key else None
    heads = [h.strip().lower() for h in args.head]
    for h in heads:
        if not is_hash(h):
            raise UserError(f"--head {h!r}: not a sha256 hex digest (64 hex digits)")
    trail = read_trail(args.decisions, public_key, with_hashes=bool(heads))
    c = trail.check
    hashes = trail.index.hashes or set()
    missing = [h for h in heads if h not in hashes]
    out = dict(trail.to_json(), heads=[{"head": h, "found": h in hashes} for h in heads])
    ok = c.ok and not missing
    out["ok"] = ok
    con = Console(highlight=False, soft_wrap=True)
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(trail.index.counts.items()))
    if c.first_bad_index is not None:
        kind = f" ({c.bad_kind})" if c.bad_kind else ""
        con.print(f"[bold red]NOT INTACT[/] {trail.path}: entry {c.first_bad_index}{kind}: {c.reason}")
        if c.torn_tail:
            con.print("  the last line is an interrupted write (the service was killed while writing it); nothing "
                      "in it was answered, and the service cuts it off when it starts again")
        con.print(f"  {c.valid} of {c.entries} entries verify, up to the first bad one ({counts or 'none'})")
    elif missing:
        con.print(f"[bold red]NOT CONFIRMED[/] {trail.path}: the chain of {c.entries} entries verifies, but head "
                  f"{missing[0][:16]}… is not on it: the trail was truncated or rewritten after that head was kept")
    else:
        con.print(f"[bold green]INTACT[/] {trail.path}: {c.entries} entries ({counts}), head {c.head}")
    if c.key_id:
        con.print(f"  signed by key {c.key_id} — " + ("taken from the trail's own log-start entry: this shows only "
                                                    "that the file is self-consistent; verify with --public-key"
                                                    if c.key_from_ledger else f"the given public key ({args.public_key})"))
    return Outcome(out, 0 if ok else 1)
