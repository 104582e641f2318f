"""A researcher brings a public-style credit table and runs it end to end with the commands alone.

``schema infer`` → ``data validate`` → ``data partition`` → ``simulate``, as separate processes,
each told only what the previous one printed or wrote (the validate command the draft names, the
partition's manifest). One test per shape of table (tests/public_tables.py): standardised
heavy-tailed numerics with 0 = default in a space-aligned file; coded categoricals with
1 = good / 2 = bad, small enough to need research mode; three parties' files with a junk header
name, simulated as they are.
"""

from __future__ import annotations

import json
import shlex

import pytest

from tests import public_tables as pt
from tests.conftest import run_fedcredit


def ok(proc) -> dict:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def validate_as_printed(draft: dict, *extra) -> dict:
    """Run the ``fedcredit data validate`` command line the draft printed (research minimums off)."""
    words = shlex.split(draft["validate_command"])
    assert words[:3] == ["fedcredit", "data", "validate"]
    return ok(run_fedcredit(*words[1:], "--min-rows", 0, "--min-positives", 0, "--json", *extra))


def simulate(data_dir, draft: dict, run_dir, *extra) -> dict:
    """Two rounds of several local epochs: Flower's per-round cost dominates on small tables, and two
    rounds of one epoch (a handful of steps) leave the network near its random start."""
    return ok(run_fedcredit("simulate", "--data", data_dir, "--schema", draft["schema"], "--mapping",
                            draft["mapping"], "--rounds", 2, "--out", run_dir, "--json", *extra, timeout=900))


@pytest.mark.slow
def test_standardised_numerics_with_zero_as_default(tmp_path):
    src = tmp_path / "standardised.txt"
    pt.write_aligned(pt.standardised_table(6000), src)
    draft = ok(run_fedcredit("schema", "infer", src, "--out", tmp_path / "std.toml", "--json"))
    assert draft["label"]["positive"] == 0
    checked = validate_as_printed(draft)
    assert checked["rows"] == 6000 and checked["default_rate"] < 0.15
    manifest = ok(run_fedcredit("data", "partition", src, "--schema", draft["schema"], "--mapping", draft["mapping"],
                                "-k", 3, "--by", "label", "--alpha", 5, "--min-positives", 60,
                                "--out", tmp_path / "parts", "--json"))
    assert sum(e["defaults"] for e in manifest["institutions"]) == round(checked["default_rate"] * 6000)
    s = simulate(tmp_path / "parts", draft, tmp_path / "run", "--epsilon", 3, "--local-epochs", 10,
                 "--no-baselines")
    assert s["status"] == "completed" and s["rounds"] == 2 and not s["research_mode"]
    assert s["auc_federated"] > 0.6  # the in-process loop reaches 0.70 at these settings
    assert [i["rows"] for i in s["institutions"]] == [e["rows"] for e in manifest["institutions"]]


@pytest.mark.slow
def test_coded_categoricals_one_good_two_bad_in_research_mode(tmp_path):
    src = tmp_path / "german.csv"
    pt.coded_categorical_table().to_csv(src, sep=";", index=False)
    draft = ok(run_fedcredit("schema", "infer", src, "--out", tmp_path / "german.toml", "--json"))
    assert draft["label"]["positive"] == 2
    validate_as_printed(draft)
    manifest = ok(run_fedcredit("data", "partition", src, "--schema", draft["schema"], "--mapping", draft["mapping"],
                                "-k", 3, "--seed", 1, "--out", tmp_path / "parts", "--json"))
    smallest = min(e["rows"] for e in manifest["institutions"])
    fewest = min(e["defaults"] for e in manifest["institutions"])
    assert smallest < 500  # below the consortium minimum: research mode
    refused = run_fedcredit("simulate", "--data", tmp_path / "parts", "--schema", draft["schema"], "--mapping",
                            draft["mapping"], "--rounds", 2, "--out", tmp_path / "refused", timeout=600)
    assert refused.returncode == 2 and f"--min-rows {smallest}" in refused.stderr
    assert not (tmp_path / "refused").exists()
    s = simulate(tmp_path / "parts", draft, tmp_path / "run", "--epsilon", 3, "--local-epochs", 10,
                 "--min-rows", smallest, "--min-positives", fewest)
    assert s["status"] == "completed" and s["research_mode"] is True and s["auc_federated"] is not None
    # ~330-row institutions learn little under DP (docs/schemas.md); the pooled non-private
    # baseline shows that the labels arrived with their coding (2 = bad) intact
    assert s["auc_centralized"] > 0.6 and s["baselines_s"] > 0
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert "RESEARCH MODE" in card


@pytest.mark.slow
def test_three_parties_with_a_junk_header_name_as_they_are(tmp_path):
    parties = tmp_path / "parties"
    parties.mkdir()
    files = []
    for i, frame in enumerate(pt.three_party_tables()):
        files.append(parties / f"party-{i + 1}.csv")
        pt.write_with_title_column(frame, files[-1])
    draft = ok(run_fedcredit("schema", "infer", *files, "--drop-leading-column", "--out", tmp_path / "p.toml",
                             "--json"))
    assert draft["label"]["positive"] == "yes"
    for f in files:
        ok(run_fedcredit("data", "validate", f, "--schema", draft["schema"], "--mapping", draft["mapping"],
                         "--json"))
    s = simulate(parties, draft, tmp_path / "run", "--no-dp", "--local-epochs", 5, "--no-baselines")
    assert s["status"] == "completed" and s["auc_federated"] > 0.7  # the in-process loop: 0.87
    assert sorted(i["id"] for i in s["institutions"]) == ["party-1", "party-2", "party-3"]
