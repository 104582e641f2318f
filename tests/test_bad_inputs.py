"""The bad-input corpus: every malformed file is refused by ``fedcredit data validate`` (exit 2),
with the expected problem codes and wording, and never with a traceback; every file of its
``readable`` list (each delimiter, each shape of a leading index column) is accepted."""

from __future__ import annotations

import json
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.bad_input_corpus import CORPUS, ENTRIES, READABLE


def command(entry: dict, path: Path | None = None) -> list[str]:
    args = ["data", "validate", str(path or CORPUS / entry["file"]), "--json"]
    if entry["mapping"]:
        args += ["--mapping", entry["mapping"]]
    return args + entry["args"]


@pytest.fixture(scope="module")
def corpus_results(fedcredit_cli):
    """Run the real command on every corpus file (a few at a time), keyed by file name."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = pool.map(lambda e: (e["file"], fedcredit_cli(*command(e), timeout=120)), ENTRIES)
        return dict(results)


def test_manifest_lists_every_file_and_enough_of_them():
    listed = {e["file"] for e in ENTRIES + READABLE}
    on_disk = {p.name for p in CORPUS.iterdir() if p.name != "MANIFEST.json" and not p.name.startswith(".")}
    assert listed == on_disk
    assert len(ENTRIES) >= 30
    assert {e["delimiter"] for e in READABLE} >= {"comma", "semicolon", "tab", "whitespace"}
    assert sum("--drop-leading-column" in e["args"] for e in READABLE) >= 3
    for e in ENTRIES:
        assert e["codes"] and e["contains"] and e["about"], e["file"]
        assert e["mapping"] in (None, "uci-taiwan")


def test_corpus_is_reproduced_byte_for_byte(tmp_path, bad_inputs_generator):
    fresh = tmp_path / "fresh"
    bad_inputs_generator.generate(fresh)
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in CORPUS.iterdir() if not p.name.startswith("."))
    for name in names:
        new, committed = (fresh / name).read_bytes(), (CORPUS / name).read_bytes()
        if new == committed:
            continue
        # Parquet embeds the writer's version ("created_by"); elsewhere the contents must match.
        assert name.endswith(".parquet") and committed.startswith(b"PAR1"), f"{name} differs from a fresh run"
        import pyarrow.parquet as pq

        assert pq.read_table(fresh / name).equals(pq.read_table(CORPUS / name)), name


@pytest.mark.timeout(400)  # the first one waits for the module fixture: ~35 commands, 3 at a time
@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_corpus_file_is_refused_with_a_clear_message(entry, corpus_results):
    r = corpus_results[entry["file"]]
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, r.stderr
    assert entry["contains"] in r.stderr, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ok"] is False
    assert sorted({p["code"] for p in result["problems"]}) == entry["codes"], r.stderr
    for p in result["problems"]:
        assert p["message"] in r.stderr
        if p["rows"]:  # row-level problems say which data rows, counted from 1
            assert re.search(rf"data rows? {p['rows'][0]}\b", p["message"]), p["message"]
            assert len(p["rows"]) <= 5 and p["rows"] == sorted(p["rows"])


@pytest.mark.parametrize("entry", READABLE, ids=[e["file"] for e in READABLE])
def test_readable_corpus_file_is_accepted_with_its_delimiter(entry, fedcredit_cli):
    r = fedcredit_cli(*command(entry), timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ok"] is True and result["rows"] == entry["rows"]
    assert result["delimiter"] == entry["delimiter"]
    assert result["drop_leading_column"] == ("--drop-leading-column" in entry["args"])
    assert result["features"]["age"]["min"] >= 21  # the columns are where they belong, not shifted by one


def _fifty_megabyte_csv(path: Path, generator) -> int:
    """A ~50 MB UCI-format file whose AGE is text in every 50,000th row; returns the row count."""
    g = generator
    rows = g.base_rows()
    bodies = [",".join(r[1:]) for r in rows]
    bad = []
    for r in rows:
        cells = list(r[1:])
        cells[4] = "abc"  # AGE
        bad.append(",".join(cells))
    header = ",".join(g.UCI_HEADER)
    avg = sum(map(len, bodies)) / len(bodies) + 8
    n = int(50e6 / avg * 1.03)
    lines = [header]
    for i in range(n):
        src = bad if (i + 1) % 50_000 == 0 else bodies
        lines.append(f"{i + 1},{src[i % len(rows)]}")
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size >= 50e6
    return n


@pytest.mark.timeout(180)
def test_fifty_megabyte_bad_csv_is_refused_quickly(tmp_path, fedcredit_cli, bad_inputs_generator):
    path = tmp_path / "big_bad.csv"
    n = _fifty_megabyte_csv(path, bad_inputs_generator)
    r = fedcredit_cli("data", "validate", path, "--mapping", "uci-taiwan", "--json", timeout=150)
    assert "Traceback" not in r.stderr
    assert r.returncode == 2, r.stderr
    assert "data rows 50000, 100000, 150000, 200000, 250000" in r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["rows"] == n
    (p,) = result["problems"]
    assert (p["code"], p["column"], p["count"]) == ("non-numeric", "age", n // 50_000)


@pytest.mark.timeout(120)
def test_fifty_megabyte_random_bytes_are_refused_quickly(tmp_path, fedcredit_cli):
    path = tmp_path / "noise.csv"
    path.write_bytes(random.Random(5).randbytes(50_000_000))
    r = fedcredit_cli("data", "validate", path, timeout=100)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not a text CSV" in r.stderr
