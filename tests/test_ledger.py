"""The signed audit ledger: hash chain, Ed25519 signatures, nodes' heads, the verify command."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from clients.ledger_heads import HEADS_FILE, read_ledger_heads, record_ledger_head
from configs.errors import ConfigError, UserError
from fedcredit.cli import main as cli_main
from server.ledger import (GENESIS, KEY_FILE, LEDGER_FILE, PUBLIC_KEY_FILE, AuditLedger, LedgerError, RunLedger,
                           canonical_json, entry_hash, generate_operator_key, key_id, load_private_key,
                           load_public_key, public_key_pem, read_ledger, verify_ledger)
from tests.conftest import run_fedcredit

H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64  # stand-in model hashes


def _record(rnd: int, before: str, after: str) -> dict:
    return {"round": rnd, "sampled": ["bank-a", "bank-b", "lender-c"], "participants": ["bank-a", "bank-b"],
            "refused": {"lender-c": {"reason": "budget-exhausted", "detail": "ε 3.0 spent"}},
            "dropped": {}, "rejected": {}, "model_sha256_before": before, "model_sha256_after": after,
            "aggregate_update_norm": np.float64(1.25 + rnd), "examples": np.int64(5000), "train_loss": 0.41,
            "privacy": {"bank-a": {"epsilon_spent": 0.5 * rnd, "epsilon_budget": 3.0},
                        "bank-b": {"epsilon_spent": 0.7 * rnd, "epsilon_budget": 3.0}},
            "global": {"auc": 0.71 + rnd / 100, "ks": float("nan")},
            "institutions": {"bank-a": {"auc": 0.7, "_sums": object()}}}


@pytest.fixture
def ledger(tmp_path):
    """A finished two-round run's ledger, written through RunLedger as the run writes it.

    Entries: 0 run-start, 1 statistics, 2 refusal, 3 round 1, 4 dropout, 5 rejected-update,
    6 round 2, 7 run-end. ``heads`` are what a node was shown before round 1 and round 2.
    """
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = run_dir / "config.resolved.toml"
    cfg.write_text('[run-config]\nseed = 0\n')
    rl = RunLedger.open(run_dir)
    rl.run_start("7", cfg, {"seed": 0, "ledger-key": ""})
    rl.statistics({"contributors": ["bank-a", "bank-b", "lender-c"], "refused": {}, "dropped": {},
                   "node_metrics": {"bank-a": {"epsilon-spent": 0.1}}})
    heads = [rl.head]
    rl.on_event({"event": "refusal", "time": "t", "round": 1, "institution": "lender-c",
                 "reason": "budget-exhausted", "detail": "ε 3.0 spent"})
    rl.round(_record(1, H1, H2))
    heads.append(rl.head)
    rl.on_event({"event": "dropout", "time": "t", "round": 2, "institution": "lender-c", "reason": "timeout"})
    rl.on_event({"event": "rejected-update", "time": "t", "round": 2, "institution": "bank-b",
                 "reason": "update norm 80 > 10"})
    rl.round(_record(2, H2, H3))
    final = rl.run_end("completed", "", 2, H3, None, {"auc": 0.73})
    rl.close()
    path = run_dir / LEDGER_FILE
    return {"run_dir": run_dir, "path": path, "public": run_dir / PUBLIC_KEY_FILE, "heads": heads,
            "final": final, "lines": path.read_bytes().splitlines(keepends=True)}


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def _bump(c: int) -> int:
    """Another character of the same class, so the line stays valid JSON."""
    ch = chr(c)
    if ch in "0123456789abcdef":
        digits = "0123456789abcdef"
        return ord(digits[(digits.index(ch) + 1) % 16])
    return ord("a") if ch == "z" else c + 1


def _change_one_byte(line: bytes, field: str) -> bytes:
    """Change one byte inside the value of ``field`` (first occurrence) in a ledger line."""
    at = line.index(f'"{field}":'.encode()) + len(field) + 3
    while not chr(line[at]).isalnum():
        at += 1
    changed = line[:at] + bytes([_bump(line[at])]) + line[at + 1:]
    assert len(changed) == len(line) and sum(a != b for a, b in zip(line, changed)) == 1
    json.loads(changed)  # still a JSON object: detection must come from the chain, not the parser
    return changed


# ----------------------------------------------------------------------------- intact
def test_intact_ledger_verifies_with_its_own_and_the_published_key(ledger):
    entries = read_ledger(ledger["path"])
    assert [e["kind"] for e in entries] == ["run-start", "statistics", "refusal", "round", "dropout",
                                            "rejected-update", "round", "run-end"]
    assert [e["index"] for e in entries] == list(range(8))
    assert entries[0]["prev"] == GENESIS
    for prev, e in zip(entries, entries[1:]):
        assert e["prev"] == prev["hash"]
    public = load_public_key(ledger["public"])
    for e in entries:
        assert e["hash"] == hashlib.sha256(canonical_json(
            {k: e[k] for k in ("index", "time", "kind", "payload", "prev", "key_id")})).hexdigest()
        assert e["key_id"] == key_id(public) == hashlib.sha256(
            public.public_bytes_raw()).hexdigest()[:16]
        public.verify(bytes.fromhex(e["signature"]), bytes.fromhex(e["hash"]))  # raises if not
    for r in (verify_ledger(ledger["path"]), verify_ledger(ledger["path"], public, head=ledger["heads"])):
        assert r.ok and r.entries == r.valid == 8 and r.first_bad_index is None and r.head == ledger["final"]
    assert verify_ledger(ledger["path"]).key_from_ledger

    start, rnd = entries[0]["payload"], entries[3]["payload"]
    assert start["run_id"] == "7" and start["key"]["source"] == "generated-for-run"
    assert start["config_sha256"] == hashlib.sha256((ledger["run_dir"] / "config.resolved.toml").read_bytes()).hexdigest()
    assert rnd["epsilon_spent"] == {"bank-a": 0.5, "bank-b": 0.7}
    assert rnd["model_sha256_before"] == H1 and rnd["model_sha256_after"] == H2
    assert rnd["aggregate_update_norm"] == 2.25 and rnd["examples"] == 5000
    assert rnd["metrics"]["global"] == {"auc": 0.72, "ks": None}  # NaN recorded as null
    assert rnd["metrics"]["institutions"] == {"bank-a": {"auc": 0.7}}
    # the generated key is kept for the run, private part readable by its owner only
    assert stat.S_IMODE(os.stat(ledger["run_dir"] / KEY_FILE).st_mode) == 0o600


def test_intact_ledger_cli_exit_0_and_says_where_the_key_came_from(ledger):
    own = run_fedcredit("ledger", "verify", ledger["path"], "--json")
    assert own.returncode == 0, own.stdout + own.stderr
    assert "taken from the ledger itself" in own.stdout and "weaker" in own.stdout
    out = json.loads(own.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["key_source"] == "ledger" and out["head"] == ledger["final"]

    given = run_fedcredit("ledger", "verify", ledger["run_dir"], "--public-key", ledger["public"],
                          "--head", ledger["heads"][0], "--head", ledger["heads"][1])
    assert given.returncode == 0, given.stdout + given.stderr
    assert "taken from the ledger itself" not in given.stdout
    assert "INTACT" in given.stdout and "2 of 2 on the chain" in given.stdout


# ----------------------------------------------------------------------- tamper matrix
@pytest.mark.parametrize("field,why", [
    ("index", "index is 4"),
    ("time", "do not match its hash"),
    ("kind", "do not match its hash"),
    ("aggregate_update_norm", "do not match its hash"),  # a payload value
    ("prev", "prev hash"),
    ("hash", "do not match its hash"),
    ("signature", "signature does not verify"),
    ("key_id", "do not match its hash"),
])
def test_one_changed_byte_in_any_field_is_detected(ledger, field, why):
    lines = list(ledger["lines"])
    lines[3] = _change_one_byte(lines[3], field)
    for key in (None, load_public_key(ledger["public"])):
        r = verify_ledger(_write(ledger["path"], lines), key)
        assert not r.ok and r.first_bad_index == 3 and r.valid == 3, (field, r.reason)
        assert why in r.reason
        assert r.bad_kind == ("sound" if field == "kind" else "round")


def test_removed_entry_is_detected(ledger):
    lines = list(ledger["lines"])
    del lines[4]
    r = verify_ledger(_write(ledger["path"], lines))
    assert not r.ok and r.first_bad_index == 4 and "index is 5 where 4 was expected" in r.reason


def test_swapped_entries_are_detected(ledger):
    lines = list(ledger["lines"])
    lines[2], lines[3] = lines[3], lines[2]
    r = verify_ledger(_write(ledger["path"], lines))
    assert not r.ok and r.first_bad_index == 2 and r.bad_kind == "round" and "reordered" in r.reason


def test_truncation_is_detected_against_a_nodes_stored_head(ledger, tmp_path):
    state = tmp_path / "node-state"
    for rnd, head in enumerate(ledger["heads"], 1):
        record_ledger_head(state, "7", rnd, head)
    cut = _write(ledger["path"], ledger["lines"][:3])  # the operator drops round 1 onwards
    alone = verify_ledger(cut)
    assert alone.ok, "a cut chain is still a valid prefix: alone it cannot show the cut"
    r = verify_ledger(cut, head=ledger["heads"])
    assert not r.ok and r.first_bad_index is None and "not on the chain" in r.reason
    assert [h["found"] for h in r.heads] == [True, False]

    proc = run_fedcredit("ledger", "verify", cut, "--heads-file", state / HEADS_FILE, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not on the chain" in proc.stdout and ledger["heads"][1] in proc.stdout
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["ok"] and [h["round"] for h in out["heads"] if not h["found"]] == [2]


def _forged_entry(prev_entry: dict, signer, key_id_value: str | None = None, sign: bool = True) -> bytes:
    entry = {"index": prev_entry["index"] + 1, "time": "2030-01-01T00:00:00.000000+00:00", "kind": "round",
             "payload": {"round": 3, "model_sha256_before": H3, "model_sha256_after": H1},
             "prev": prev_entry["hash"], "key_id": key_id_value or key_id(signer.public_key())}
    entry["hash"] = entry_hash(entry)
    if sign:
        entry["signature"] = signer.sign(bytes.fromhex(entry["hash"])).hex()
    return canonical_json(entry) + b"\n"


def test_unsigned_appended_entry_is_detected(ledger):
    last = json.loads(ledger["lines"][-1])
    own_key = load_private_key(ledger["run_dir"] / KEY_FILE)
    path = _write(ledger["path"], ledger["lines"] + [_forged_entry(last, own_key, sign=False)])
    r = verify_ledger(path, load_public_key(ledger["public"]))
    assert not r.ok and r.first_bad_index == 8 and "unsigned" in r.reason
    emptied = json.loads(_forged_entry(last, own_key))
    emptied["signature"] = ""
    r = verify_ledger(_write(ledger["path"], ledger["lines"] + [canonical_json(emptied) + b"\n"]))
    assert not r.ok and r.first_bad_index == 8 and "no signature" in r.reason


def test_entry_appended_with_another_key_is_detected(ledger, tmp_path):
    last = json.loads(ledger["lines"][-1])
    other = load_private_key(generate_operator_key(tmp_path / "mallory")[0])
    path = _write(ledger["path"], ledger["lines"] + [_forged_entry(last, other)])
    r = verify_ledger(path)
    assert not r.ok and r.first_bad_index == 8 and "signed by key" in r.reason
    proc = run_fedcredit("ledger", "verify", path, "--public-key", ledger["public"])
    assert proc.returncode == 1 and "entry 8 (round)" in proc.stdout, proc.stdout + proc.stderr

    # claiming the operator's key id does not help: the signature does not verify under it
    own_id = json.loads(ledger["lines"][0])["key_id"]
    r = verify_ledger(_write(ledger["path"], ledger["lines"] + [_forged_entry(last, other, own_id)]))
    assert not r.ok and r.first_bad_index == 8 and "signature does not verify" in r.reason
    # and the operator's ledger is never continued with another key
    with pytest.raises(LedgerError, match="signed by key"):
        AuditLedger.open(_write(ledger["path"], ledger["lines"]), other)


def test_modified_payload_cli_names_entry_kind_and_problem(ledger):
    lines = list(ledger["lines"])
    lines[6] = lines[6].replace(b'"participants":["bank-a","bank-b"]', b'"participants":["bank-a","bank-x"]')
    proc = run_fedcredit("ledger", "verify", _write(ledger["path"], lines), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "entry 6 (round)" in proc.stdout and "do not match its hash" in proc.stdout
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["first_bad_index"] == 6 and out["bad_kind"] == "round" and out["valid"] == 6


def test_rewritten_and_resigned_history_is_caught_by_published_key_and_node_heads(ledger, tmp_path):
    """The operator rewrites round 1 and re-signs everything with a fresh key: self-consistent, but
    neither the published key nor the node's heads accept it."""
    mallory = load_private_key(generate_operator_key(tmp_path / "mallory")[0])
    forged = tmp_path / "forged.jsonl"
    with AuditLedger.open(forged, mallory) as out:
        for e in read_ledger(ledger["path"]):
            p = e["payload"]
            if e["kind"] == "run-start":
                p["key"].update(key_id=out.key_id, public_key_pem=public_key_pem(mallory.public_key()))
            if e["kind"] == "round" and p["round"] == 1:
                p["participants"] = ["bank-a"]
            out.append(e["kind"], p)
    assert verify_ledger(forged).ok, "self-consistent: the key named inside proves nothing on its own"
    r = verify_ledger(forged, load_public_key(ledger["public"]))
    assert not r.ok and r.first_bad_index == 0 and "signed by key" in r.reason
    r = verify_ledger(forged, head=ledger["heads"])
    assert not r.ok and not any(h["found"] for h in r.heads)


def test_torn_edited_or_duplicated_lines_are_detected(ledger):
    lines = list(ledger["lines"])
    r = verify_ledger(_write(ledger["path"], lines[:-1] + [lines[-1].rstrip(b"\n")]))
    assert not r.ok and r.first_bad_index == 7 and "newline" in r.reason
    r = verify_ledger(_write(ledger["path"], lines[:-1] + [lines[-1][:40]]))
    assert not r.ok and r.first_bad_index == 7 and "JSON" in r.reason
    r = verify_ledger(_write(ledger["path"], lines[:5] + [lines[5].replace(b'"kind":', b'"kind":"x","kind":', 1)]
                             + lines[6:]))
    assert not r.ok and r.first_bad_index == 5 and "duplicate key" in r.reason
    r = verify_ledger(_write(ledger["path"], lines[:5] + [lines[5].replace(b',"kind":', b', "kind":', 1)] + lines[6:]))
    assert not r.ok and r.first_bad_index == 5 and "canonical" in r.reason
    r = verify_ledger(_write(ledger["path"], []))
    assert not r.ok and r.first_bad_index == 0 and "empty" in r.reason


def test_wrong_public_key_fails_at_the_first_entry(ledger, tmp_path):
    other_pub = generate_operator_key(tmp_path / "other")[1]
    r = verify_ledger(ledger["path"], load_public_key(other_pub))
    assert not r.ok and r.first_bad_index == 0 and r.bad_kind == "run-start"


# ------------------------------------------------------------------------ user mistakes
def test_tampered_ledger_with_the_given_key_does_not_claim_every_entry_is_signed(ledger):
    lines = list(ledger["lines"])
    lines[3] = lines[3].replace(b'"participants":["bank-a","bank-b"]', b'"participants":["bank-a","bank-x"]')
    proc = run_fedcredit("ledger", "verify", _write(ledger["path"], lines), "--public-key", ledger["public"])
    assert proc.returncode == 1 and "NOT INTACT" in proc.stdout, proc.stdout + proc.stderr
    assert "every entry is signed" not in proc.stdout
    assert "the 3 entries before entry 3 are signed by the given public key" in proc.stdout
    assert "from entry 3 on nothing is confirmed" in proc.stdout

    lines = list(ledger["lines"])
    lines[0] = lines[0].replace(b'"seed":0', b'"seed":1')
    proc = run_fedcredit("ledger", "verify", _write(ledger["path"], lines), "--public-key", ledger["public"])
    assert proc.returncode == 1 and "every entry is signed" not in proc.stdout
    assert "no entry verifies" in proc.stdout, proc.stdout

    intact = run_fedcredit("ledger", "verify", _write(ledger["path"], ledger["lines"]), "--public-key",
                           ledger["public"])
    assert intact.returncode == 0 and "every entry is signed by the given public key" in intact.stdout


def test_verify_says_when_a_file_is_not_a_ledger_at_all(ledger, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    csv = tmp_path / "loans.csv"
    csv.write_text("borrower_id,credit_limit\nA1,1000\n")
    progress = tmp_path / "progress.jsonl"  # JSON lines, but not ledger entries
    progress.write_text('{"time": "t", "event": "run-start"}\n{"time": "t", "event": "round-end"}\n')
    for path, words in ((empty, "the file is empty"), (blank, "the file is empty"), (csv, "not an audit ledger"),
                        (progress, "not an audit ledger")):
        proc = run_fedcredit("ledger", "verify", path, "--json")
        assert proc.returncode == 2, (path, proc.stdout, proc.stderr)
        assert words in proc.stderr and str(path) in proc.stderr and "Traceback" not in proc.stderr
        assert "entries verify" not in proc.stdout
        assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is False
    # a ledger cut in the middle of its first line is damaged, not "not a ledger": it still has entries
    lines = list(ledger["lines"])
    damaged = _write(tmp_path / "damaged.jsonl", [lines[0][:40] + b"\n"] + lines[1:])
    proc = run_fedcredit("ledger", "verify", damaged)
    assert proc.returncode == 1 and "entry 0" in proc.stdout, proc.stdout + proc.stderr


def test_cli_user_mistakes_exit_2(ledger, tmp_path, capsys):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    rsa_like = tmp_path / "heads.jsonl"
    rsa_like.write_text("not json\n")
    cases = [
        (["ledger", "verify", str(tmp_path / "nope.jsonl")], "no ledger file"),
        (["ledger", "verify", str(ledger["path"]), "--public-key", str(garbage)], "not a readable PEM"),
        (["ledger", "verify", str(ledger["path"]), "--public-key", str(tmp_path / "missing.pem")], "not found"),
        (["ledger", "verify", str(ledger["path"]), "--head", "abc"], "not a sha256"),
        (["ledger", "verify", str(ledger["path"]), "--heads-file", str(rsa_like)], "line 1"),
        (["ledger", "keygen", "--out", str(ledger["run_dir"])], "already exists"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_heads_file_of_other_runs_only_is_not_a_pass(ledger, tmp_path, capsys):
    state = tmp_path / "node"
    record_ledger_head(state, "99", 1, ledger["heads"][0])
    assert cli_main(["ledger", "verify", str(ledger["path"]), "--heads-file", str(state)]) == 1
    assert "belongs to this ledger's run" in capsys.readouterr().out
    record_ledger_head(state, "7", 1, ledger["heads"][0])
    assert cli_main(["ledger", "verify", str(ledger["path"]), "--heads-file", str(state)]) == 0
    assert "1 head(s) of other runs" in capsys.readouterr().out


def test_keygen_command_makes_a_usable_key_pair(tmp_path, capsys):
    assert cli_main(["ledger", "keygen", "--out", str(tmp_path / "k"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    private = load_private_key(out["private_key"])
    assert key_id(private.public_key()) == key_id(load_public_key(out["public_key"])) == out["key_id"]
    assert stat.S_IMODE(os.stat(out["private_key"]).st_mode) == 0o600


def test_unusable_private_keys_are_user_errors(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ecdsa = tmp_path / "ec.pem"
    ecdsa.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(LedgerError, match="not an Ed25519 key"):
        load_private_key(ecdsa)
    with pytest.raises(LedgerError, match="not found"):
        load_private_key(tmp_path / "none.pem")
    with pytest.raises(ConfigError, match="ledger-key"):
        from server.settings import parse_run_config

        parse_run_config({"ledger-key": str(tmp_path / "none.pem")})


# ---------------------------------------------------------------- continuing / resume
def test_continuing_an_intact_ledger_and_refusing_a_broken_one(ledger):
    run_dir = ledger["run_dir"]
    again = RunLedger.open(run_dir)  # reuses RUN_DIR/ledger-key.pem, verifies the 8 entries
    assert again.ledger.next_index == 8 and again.head == ledger["final"]
    with pytest.raises(LedgerError, match="another process"):
        AuditLedger.open(ledger["path"], load_private_key(run_dir / KEY_FILE))
    again.run_start("8", run_dir / "config.resolved.toml", {}, run_dir)
    again.close()
    r = verify_ledger(ledger["path"], load_public_key(ledger["public"]))
    assert r.ok and r.entries == 9 and r.run_ids == ["7", "8"]
    assert read_ledger(ledger["path"])[8]["payload"]["continues_ledger"] is True

    lines = ledger["path"].read_bytes().splitlines(keepends=True)
    lines[3] = _change_one_byte(lines[3], "aggregate_update_norm")
    _write(ledger["path"], lines)
    with pytest.raises(LedgerError, match=r"entry 3 \(round\).*do not match its hash"):
        RunLedger.open(run_dir, resume_from=run_dir)


def test_resume_with_a_broken_ledger_stops_with_a_user_error(ledger):
    from server.consortium import ConsortiumRun

    lines = list(ledger["lines"])
    del lines[2]
    _write(ledger["path"], lines)
    before = ledger["path"].read_bytes()
    run = ConsortiumRun(None, {"run-dir": str(ledger["run_dir"]), "resume-from": str(ledger["run_dir"])}, run_id=8)
    with pytest.raises(UserError, match="does not verify.*entry 2"):
        run.execute(ledger["run_dir"])
    assert ledger["path"].read_bytes() == before, "nothing may be appended to a broken ledger"


def test_ledger_needs_its_own_key_to_be_continued(ledger, tmp_path):
    (ledger["run_dir"] / KEY_FILE).unlink()
    with pytest.raises(LedgerError, match="ledger-key"):
        RunLedger.open(ledger["run_dir"])
    other = generate_operator_key(tmp_path / "op")[0]
    with pytest.raises(LedgerError, match="does not verify under the run's key"):
        RunLedger.open(ledger["run_dir"], str(other))


def test_operator_key_is_used_and_not_copied_into_the_run(tmp_path):
    private, public = generate_operator_key(tmp_path / "operator")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "c.toml").write_text("x = 1\n")
    rl = RunLedger.open(run_dir, str(private))
    rl.run_start("1", run_dir / "c.toml", {})
    rl.close()
    assert not (run_dir / KEY_FILE).exists()
    assert read_ledger(run_dir / LEDGER_FILE)[0]["payload"]["key"]["source"] == "operator"
    assert verify_ledger(run_dir / LEDGER_FILE, load_public_key(public)).ok


def test_resume_adds_checkpoint_rounds_missing_from_the_ledger_and_refuses_a_foreign_checkpoint(ledger):
    # a crash after checkpoint 3 was written but before its ledger entry
    history = [_record(1, H1, H2), _record(2, H2, H3), _record(3, H3, "4" * 64)]
    rl = RunLedger.open(ledger["run_dir"], resume_from=ledger["run_dir"])
    rl.run_start("8", ledger["run_dir"] / "config.resolved.toml", {}, ledger["run_dir"])
    rl.resumed(3, "4" * 64, history, "checkpoints/round-0003", "8")
    rl.close()
    entries = read_ledger(ledger["path"])
    assert [e["kind"] for e in entries[8:]] == ["run-start", "round", "resume"]
    assert entries[9]["payload"]["recovered_from_checkpoint"] and entries[9]["payload"]["round"] == 3
    assert entries[10]["payload"]["recovered_rounds"] == [3] and entries[10]["payload"]["next_round"] == 4
    assert verify_ledger(ledger["path"]).ok

    forged = [_record(1, H1, "f" * 64)]
    rl = RunLedger.open(ledger["run_dir"], resume_from=ledger["run_dir"])
    with pytest.raises(LedgerError, match="round 1"):
        rl.resumed(1, "f" * 64, forged, "checkpoints/round-0001")
    rl.close()


# ----------------------------------------------------------------------- node heads
def test_node_keeps_heads_atomically_once_per_round(tmp_path):
    state = tmp_path / "state"
    record_ledger_head(state, "5", 1, H1)
    record_ledger_head(state, "5", 1, H1)  # a retried message is not stored twice
    record_ledger_head(state, "5", 2, H2)
    record_ledger_head(state, "5", 2, H3, stage="evaluate")  # the evaluation after round 2's entry
    record_ledger_head(state, "5", 2, H3, stage="evaluate")
    heads = read_ledger_heads(state)
    assert [(h["run_id"], h["round"], h["stage"], h["head"]) for h in heads] == [
        ("5", 1, "train", H1), ("5", 2, "train", H2), ("5", 2, "evaluate", H3)]
    assert sorted(p.name for p in state.iterdir()) == [HEADS_FILE]  # no temporary file left
    with pytest.raises(UserError, match="ledger-head"):
        record_ledger_head(state, "5", 3, "not-a-hash")
    assert len(read_ledger_heads(state)) == 3


# ----------------------------------------------------------------- a real Flower run
@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ledger-sim") / "run"
    proc = run_fedcredit("simulate", "--institutions", 3, "--rounds", 2, "--scale", 0.3, "--no-dp",
                         "--out", run_dir, "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def _check_round_chain(entries: list[dict]) -> list[dict]:
    rounds = [e["payload"] for e in entries if e["kind"] == "round"]
    for a, b in zip(rounds, rounds[1:]):
        assert b["round"] == a["round"] + 1
        assert a["model_sha256_after"] == b["model_sha256_before"], (a["round"], b["round"])
    return rounds


def _of_round(entry: dict, rnd: int) -> bool:
    """An entry written once round ``rnd``'s train messages were sent: the round's own entries, and
    the evaluation of round ``rnd`` − 1 that those messages carried (fold-evaluation)."""
    p = entry["payload"]
    if entry["kind"] == "evaluation":
        return p.get("evaluated_with") == "train" and p.get("round") == rnd - 1
    return p.get("round") == rnd and entry["kind"] in ("round", "refusal", "dropout", "rejected-update")


def _check_node_heads(run_dir: Path, entries: list[dict], rounds: list[int]) -> list[Path]:
    files = sorted((run_dir / "node-state").glob(f"*/{HEADS_FILE}"))
    assert len(files) == 3
    index_of = {e["hash"]: e["index"] for e in entries}
    last_round_entry = max(e["index"] for e in entries if e["kind"] == "round")
    for f in files:
        stored = read_ledger_heads(f.parent)
        train = [h for h in stored if h["stage"] == "train"]
        assert [h["round"] for h in train] == rounds, f
        for h in train:
            # the head a node was shown for round k is the hash of the entry just before round k's entries
            first = next(e for e in entries if _of_round(e, h["round"]))
            assert h["head"] == entries[first["index"] - 1]["hash"], (f, h)
        evaluations = [h for h in stored if h["stage"] == "evaluate"]
        assert evaluations and len(train) + len(evaluations) == len(stored), f
        assert all(h["head"] in index_of for h in evaluations), f
        # the final evaluation's head covers the last round's entry: cutting that round is detectable too
        assert max(index_of[h["head"]] for h in evaluations) == last_round_entry, f
    return files


@pytest.mark.slow
def test_simulated_run_writes_a_verifiable_ledger_that_nodes_hold_heads_of(simulated_run):
    from models.package import load_package, weights_digest
    from server.checkpoints import load_checkpoint

    run_dir = simulated_run
    public = load_public_key(run_dir / PUBLIC_KEY_FILE)
    r = verify_ledger(run_dir / LEDGER_FILE, public)
    assert r.ok, r.reason
    entries = read_ledger(run_dir / LEDGER_FILE)
    # round 1's evaluation came with round 2's train messages (fold-evaluation): its own entry before round 2's
    assert [e["kind"] for e in entries] == ["run-start", "statistics", "round", "evaluation", "round", "run-end"]
    assert entries[3]["payload"]["round"] == 1 and entries[3]["payload"]["evaluated_with"] == "train"
    assert entries[3]["payload"]["model_sha256"] == entries[2]["payload"]["model_sha256_after"]
    start, end = entries[0]["payload"], entries[-1]["payload"]
    assert start["config_sha256"] == hashlib.sha256((run_dir / "config.resolved.toml").read_bytes()).hexdigest()
    assert start["key"]["source"] == "generated-for-run" and start["key"]["key_id"] == key_id(public)

    rounds = _check_round_chain(entries)
    assert [p["round"] for p in rounds] == [1, 2]
    evaluated = {e["payload"]["round"]: e["payload"]["metrics"] for e in entries if e["kind"] == "evaluation"}
    for p in rounds:
        assert len(p["participants"]) == 3 and set(p["epsilon_spent"]) == set(p["participants"])
        assert (p["metrics"]["global"] is None) == (p["round"] in evaluated)  # a round's figures in one entry only
        metrics = evaluated.get(p["round"], p["metrics"])
        assert p["aggregate_update_norm"] > 0 and 0.5 < metrics["global"]["auc"] < 1
    last_round = weights_digest(load_checkpoint(run_dir, 2).weights)
    assert rounds[-1]["model_sha256_after"] == last_round == end["last_round_model_sha256"]
    exported = weights_digest(load_package(run_dir / "model").weights)
    assert end["model_sha256"] == end["model_package"]["weights_sha256"] == exported
    if exported != last_round:  # the exported model was recalibrated from the last round's
        assert end["calibration"] is not None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ledger_head"] == entries[-1]["hash"] == r.head

    files = _check_node_heads(run_dir, entries, [1, 2])
    args = [a for f in files for a in ("--heads-file", f)]
    proc = run_fedcredit("ledger", "verify", run_dir, "--public-key", run_dir / PUBLIC_KEY_FILE, *args)
    n = sum(len(read_ledger_heads(f.parent)) for f in files)
    assert proc.returncode == 0 and f"{n} of {n} on the chain" in proc.stdout, proc.stdout + proc.stderr
    # the operator drops the last round (and the run end): the final evaluation's heads catch it
    cut = run_dir.parent / "cut-ledger.jsonl"
    last_round_entry = max(e["index"] for e in entries if e["kind"] == "round")
    cut.write_text("".join(line + "\n" for line in (run_dir / LEDGER_FILE).read_text().splitlines()[:last_round_entry]))
    proc = run_fedcredit("ledger", "verify", cut, "--public-key", run_dir / PUBLIC_KEY_FILE, *args)
    assert proc.returncode == 1 and "not on the chain" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_resumed_simulated_run_continues_the_same_ledger(simulated_run, tmp_path):
    import tomllib

    import tomli_w

    run_dir = tmp_path / "resumed"
    shutil.copytree(simulated_run, run_dir)
    (run_dir / "metrics.json").unlink()
    # the copy stands for a run planned for 3 rounds that died after round 2's checkpoint; its nodes
    # keep their state in the copy (`fedcredit simulate --resume` takes the run's own settings)
    cfg = run_dir / "config.resolved.toml"
    rc = tomllib.loads(cfg.read_text())["run-config"]
    rc.update({"num-server-rounds": 3, "state-root": str(run_dir / "node-state")})
    cfg.write_text(tomli_w.dumps({"run-config": rc}))
    proc = run_fedcredit("simulate", "--resume", run_dir, "--no-baselines", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = verify_ledger(run_dir / LEDGER_FILE, load_public_key(run_dir / PUBLIC_KEY_FILE))
    assert r.ok, r.reason
    entries = read_ledger(run_dir / LEDGER_FILE)
    assert [e["kind"] for e in entries] == ["run-start", "statistics", "round", "evaluation", "round", "run-end",
                                            "run-start", "resume", "round", "run-end"]
    assert entries[7]["payload"]["checkpoint_round"] == 2
    assert entries[7]["payload"]["model_sha256"] == entries[4]["payload"]["model_sha256_after"]
    assert [p["round"] for p in _check_round_chain(entries)] == [1, 2, 3]
    assert json.loads((run_dir / "metrics.json").read_text())["ledger_head"] == entries[-1]["hash"]
    _check_node_heads(run_dir, entries, [1, 2, 3])


# ------------------------------------------- the real round driver, in process (no Ray)
def _inprocess_run(tmp_path, tag: str, fail=None, **overrides) -> tuple[dict, Path]:
    from clients.client_app import app
    from server.consortium import run_consortium
    from tests.inprocess_grid import InProcessGrid

    run_dir = tmp_path / tag
    rc = {"num-server-rounds": 2, "min-available-nodes": 3, "min-train-nodes": 2, "run-dir": str(run_dir),
          "dp": False, "synthetic-scale": 0.3, "fraction-evaluate": 0.0, "state-root": str(tmp_path / f"{tag}-state"),
          "round-timeout": 1.0, "seed": 3, **overrides}
    grid = InProcessGrid(app, {11 + k: {"partition-id": k, "num-partitions": 3} for k in range(3)}, rc, fail=fail)
    return run_consortium(grid, rc, run_id=7), run_dir


def test_dropouts_become_signed_entries_in_round_order_and_nodes_store_heads(tmp_path):
    summary, run_dir = _inprocess_run(tmp_path, "drop", fail={13: {"train"}})
    assert summary["status"] == "completed"
    assert verify_ledger(run_dir / LEDGER_FILE, load_public_key(run_dir / PUBLIC_KEY_FILE)).ok
    entries = read_ledger(run_dir / LEDGER_FILE)
    assert [(e["kind"], e["payload"].get("round")) for e in entries] == [
        ("run-start", None), ("statistics", None), ("dropout", 1), ("round", 1), ("dropout", 2), ("round", 2),
        ("run-end", None)]
    dropped = entries[2]["payload"]["institution"]
    assert all(dropped not in e["payload"]["participants"] for e in entries if e["kind"] == "round")
    assert summary["ledger_head"] == entries[-1]["hash"]
    _check_round_chain(entries)
    heads = {f.parent.name: [h["head"] for h in read_ledger_heads(f.parent)]
             for f in (tmp_path / "drop-state").glob(f"*/{HEADS_FILE}")}
    assert dropped not in heads and len(heads) == 2, "only nodes that got the round store its head"
    for stored in heads.values():
        assert stored == [entries[1]["hash"], entries[3]["hash"]]


def test_rejected_updates_and_a_stopped_run_are_recorded(tmp_path):
    summary, run_dir = _inprocess_run(tmp_path, "reject", **{"max-update-norm": 1e-9})
    assert summary["status"] == "stopped"
    r = verify_ledger(run_dir / LEDGER_FILE)
    assert r.ok
    kinds = [e["kind"] for e in r.chain]
    assert kinds == ["run-start", "statistics", "rejected-update", "rejected-update", "rejected-update",
                     "run-stopped", "run-end"]
    assert r.chain[-1]["payload"]["status"] == "stopped" and r.chain[-1]["payload"]["rounds_completed"] == 0
    assert "norm" in r.chain[2]["payload"]["reason"]


def test_secure_aggregation_rounds_say_so_in_the_ledger(tmp_path):
    summary, run_dir = _inprocess_run(tmp_path, "secagg", **{"secure-aggregation": True, "num-server-rounds": 1})
    assert summary["status"] == "completed"
    (rnd,) = [e["payload"] for e in verify_ledger(run_dir / LEDGER_FILE).chain if e["kind"] == "round"]
    assert sorted(rnd["secure_aggregation"]["contributors"]) == sorted(rnd["participants"])
