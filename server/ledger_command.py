"""``fedcredit ledger verify``: check a run's signed audit ledger (and nodes' stored heads)."""

from __future__ import annotations

import argparse
import json

HELP = "verify a run's signed audit ledger (hash chain, Ed25519 signatures, nodes' stored heads)"
DESCRIPTION = """\
Verify RUN_DIR/ledger.jsonl, the run's append-only audit ledger (see docs/ledger.md).

Every entry must carry its position (index), the hash of the entry before it (prev; 64 zeros
for the first), a sha256 hash of its canonical contents, and an Ed25519 signature of that hash
by the operator's key. The first entry that breaks the chain is named with its index, kind and
what is wrong: modified contents, a removed, inserted or reordered entry, an unsigned entry or
one signed by another key, a torn last line.

Which key:
  --public-key FILE  the operator's published public key (PEM): every entry must be signed by
                     it. This is the real check.
  (none)             the key named in the ledger's own run-start entry. This only shows the
                     file is self-consistent — whoever rewrote the whole file could have
                     re-signed it with a key of their own — and the output says so.

Nodes' heads: each round every node stores the head hash it was shown
(STATE_DIR/ledger-heads.jsonl). Give them with --head HASH (repeatable) or --heads-file FILE
(heads of other runs in that file are skipped): each must be the hash of an entry on the
chain. A head that is not means the history was truncated or rewritten after the node saw it.

Exit codes:
  0  the ledger is intact (and every given head is on it)
  1  it is not: the first bad entry, or a head that is not on the chain, is named
  2  a user mistake: no such ledger file, a file that is not a ledger (empty, or no line of it is a
     ledger entry), an unreadable key or heads file, a malformed --head

With --json the last line of standard output is one JSON object:
  {"ok", "ledger", "entries", "valid", "first_bad_index", "bad_kind", "reason", "head",
   "key_id", "key_source" ("given" | "ledger"), "run_ids", "heads", "heads_skipped"}
"""
JSON = "the result"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ledger", metavar="LEDGER", help="the ledger file (RUN_DIR/ledger.jsonl) or its run directory")
    p.add_argument("--public-key", metavar="FILE",
                   help="the operator's Ed25519 public key (PEM); default: the key the ledger itself names")
    p.add_argument("--head", action="append", default=[], metavar="HASH",
                   help="a head hash a node stored; must be on the chain (repeatable)")
    p.add_argument("--heads-file", action="append", default=[], metavar="FILE",
                   help="a node's STATE_DIR/ledger-heads.jsonl; its heads of this ledger's runs must be on the "
                        "chain (repeatable)")


def _read_heads_file(path: str) -> list[dict]:
    from pathlib import Path

    from configs.errors import UserError
    from server.ledger import is_hash

    p = Path(path)
    if p.is_dir():
        p = p / "ledger-heads.jsonl"
    if not p.is_file():
        raise UserError(f"--heads-file {path}: not found (a node keeps it as STATE_DIR/ledger-heads.jsonl)")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except ValueError:
            raise UserError(f"--heads-file {p}, line {n}: not a JSON line") from None
        if not isinstance(e, dict) or not is_hash(e.get("head")):
            raise UserError(f"--heads-file {p}, line {n}: no sha256 'head' in it")
        out.append({"head": e["head"], "run_id": str(e.get("run_id", "")), "round": e.get("round"),
                    "source": str(p)})
    return out


#: the fields every ledger entry has (a line without them is not a ledger entry at all)
ENTRY_MARKERS = ("index", "kind", "prev", "hash")


def require_ledger_file(path) -> None:
    """Refuse (:class:`UserError`, exit 2) a file that is not an audit ledger at all — missing,
    empty, or without a single line that is a ledger entry (a JSON object with index, kind, prev
    and hash) — rather than reporting "0 of N entries verify". A ledger whose entries were
    damaged still has some entry lines and is verified (exit 1 names the first bad one)."""
    from configs.errors import UserError
    from server.ledger import LEDGER_FILE

    if not path.is_file():
        raise UserError(f"{path}: no ledger file there; give a run's audit ledger (RUN_DIR/{LEDGER_FILE}) or "
                        "its run directory")
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    if not head.strip():
        raise UserError(f"{path}: the file is empty — not an audit ledger (a run's {LEDGER_FILE} starts with a "
                        "signed run-start entry). Give the ledger of a run that has started")
    for line in head.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and all(k in entry for k in ENTRY_MARKERS):
            return
    raise UserError(f"{path}: not an audit ledger — none of its lines is a ledger entry (a JSON object with "
                    f"{', '.join(ENTRY_MARKERS)}, payload, key_id and signature). Give RUN_DIR/{LEDGER_FILE}, "
                    "not another file of the run")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from configs.errors import UserError
    from fedcredit.outcome import Outcome
    from server.ledger import LEDGER_FILE, is_hash, load_public_key, verify_ledger

    path = Path(args.ledger)
    if path.is_dir():
        path = path / LEDGER_FILE
    require_ledger_file(path)
    public_key = load_public_key(args.public_key) if args.public_key else None
    heads: list[dict] = []
    for h in args.head:
        if not is_hash(h.strip().lower()):
            raise UserError(f"--head {h!r}: not a sha256 hex digest (64 hex digits)")
        heads.append({"head": h.strip().lower(), "source": "--head"})
    from_files = [h for f in args.heads_file for h in _read_heads_file(f)]

    result = verify_ledger(path, public_key)  # first: which runs does the ledger hold?
    skipped = [h for h in from_files if h["run_id"] and h["run_id"] not in result.run_ids] if result.ok else []
    checked_files = [h for h in from_files if h not in skipped]
    no_heads_for_ledger = bool(from_files) and not checked_files and result.ok
    if result.ok and (heads or checked_files):
        result = verify_ledger(path, public_key, heads + checked_files)
    if no_heads_for_ledger:
        runs = sorted({h["run_id"] for h in from_files})
        result.ok = False
        result.reason = (f"none of the {len(from_files)} head(s) in the heads file(s) belongs to this ledger's "
                         f"run(s) {', '.join(result.run_ids) or '—'} (they are of run(s) {', '.join(runs)}): the "
                         "node did not take part in this ledger's runs, or the run ids were rewritten")

    out = result.to_json()
    out.update({"ledger": str(path), "heads_skipped": len(skipped)})
    _print_report(result, path, skipped, args.public_key)
    return Outcome(out, 0 if result.ok else 1)


def _print_report(r, path, skipped: list[dict], public_key_file: str | None) -> None:
    from rich.console import Console

    con = Console(highlight=False, soft_wrap=True)
    if r.first_bad_index is not None:
        kind = f" ({r.bad_kind})" if r.bad_kind else ""
        con.print(f"[bold red]NOT INTACT[/] {path}: entry {r.first_bad_index}{kind}: {r.reason}")
        con.print(f"  {r.valid} of {r.entries} entries verify, up to the first bad one"
                  + (f"; the last good head is {r.head}" if r.valid else ""))
    elif not r.ok:
        con.print(f"[bold red]NOT CONFIRMED[/] {path}: the chain of {r.entries} entries verifies, but {r.reason}")
    else:
        con.print(f"[bold green]INTACT[/] {path}: {r.entries} entries, head {r.head}")
    if r.key_id:
        if r.key_from_ledger:
            con.print(f"  key {r.key_id} was taken from the ledger itself (its run-start entry) — weaker: this only "
                      "shows the file is self-consistent, since whoever rewrote the whole file could re-sign it "
                      "with a key of their own. Verify with --public-key (the operator's published key) and "
                      "against the nodes' stored heads.")
        elif r.first_bad_index is None:
            con.print(f"  every entry is signed by the given public key {r.key_id} ({public_key_file})")
        elif r.valid:
            con.print(f"  the {r.valid} entries before entry {r.first_bad_index} are signed by the given public key "
                      f"{r.key_id} ({public_key_file}); from entry {r.first_bad_index} on nothing is confirmed")
        else:
            con.print(f"  checked against the given public key {r.key_id} ({public_key_file}): no entry verifies")
    if r.chain and r.first_bad_index is None:
        rounds = [e["payload"].get("round") for e in r.chain if e["kind"] == "round"]
        end = next((e["payload"] for e in reversed(r.chain) if e["kind"] == "run-end"), None)
        con.print(f"  run(s) {', '.join(r.run_ids) or '—'}; round entries {rounds or 'none'}; "
                  + (f"last run-end: {end.get('status')}" if end else "no run-end entry (run still going or crashed)"))
    if r.heads:
        found = [h for h in r.heads if h["found"]]
        con.print(f"  node heads: {len(found)} of {len(r.heads)} on the chain"
                  + (f" (latest at entry {max(h['index'] for h in found)})" if found else ""))
        for h in r.heads:
            if not h["found"] and r.first_bad_index is None:
                label = ", ".join(f"{k} {h[k]}" for k in ("run_id", "round") if h.get(k) not in (None, ""))
                con.print(f"    [red]not on the chain:[/] {h['head']}" + (f" ({label})" if label else ""))
    if skipped:
        con.print(f"  {len(skipped)} head(s) of other runs in the heads file(s) were skipped")
