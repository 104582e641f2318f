"""A researcher brings a public-style credit table and runs it end to end with the commands alone.

One end-to-end test walks the whole path as separate processes, each told only what the previous
one printed or wrote: ``schema infer`` → ``data validate`` (the command the draft names) →
``data partition --by label`` (a refused alpha, then the alpha/seed its message names) →
``simulate`` refused below the DP minimum (nothing left behind) → ``simulate`` in research mode
with the options the refusal named, with baselines, progress and timings. The table
(tests/public_tables.py) has coded categoricals with 1 = good / 2 = bad, so the labels' coding
must survive every step.

The other two shapes — standardised heavy-tailed numerics in a space-aligned file with
0 = default, and three parties' files with a junk header name — go through infer → validate →
partition and the loader every virtual node of ``simulate`` uses (fast; training itself is the
end-to-end test's). An optional test takes the real UCI credit-card file the same way when
/work/shared/data holds it (never copied into the repository).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import pytest

from fedcredit.cli import main
from simulation.runner import SimulationOptions, build_run_config, load_all_nodes
from tests import public_tables as pt
from tests.conftest import run_fedcredit

UCI = Path("/work/shared/data/UCI_Credit_Card.csv")


def ok(proc) -> dict:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def refused(proc) -> str:
    """The one-line error of a user mistake: exit 2, no traceback; returned with its spaces joined."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return " ".join(proc.stderr.split())


def validate_as_printed(draft: dict, *extra) -> dict:
    """Run the ``fedcredit data validate`` command line the draft printed."""
    words = shlex.split(draft["validate_command"])
    assert words[:3] == ["fedcredit", "data", "validate"]
    return ok(run_fedcredit(*words[1:], "--json", *extra))


def partition_by_label(src, draft: dict, out, *extra) -> dict:
    return ok(run_fedcredit("data", "partition", src, "--schema", draft["schema"], "--mapping", draft["mapping"],
                            "--by", "label", "--out", out, "--json", *extra))


def nodes_as_simulate_loads_them(data_dir, draft: dict) -> dict:
    """Every virtual node's table exactly as ``simulate --data DIR --schema --mapping`` loads it."""
    files = sorted(p for p in Path(data_dir).iterdir() if p.suffix in (".csv", ".txt", ".parquet"))
    o = SimulationOptions(data_dir=str(data_dir), schema=draft["schema"], mapping=draft["mapping"], dp=False)
    run_config = {**build_run_config(o, Path(data_dir) / "unused-run", len(files)), "min-rows": 0,
                  "min-positives": 0}
    return load_all_nodes(run_config, len(files))


def rows_and_defaults(nodes: dict) -> dict[str, tuple[int, int]]:
    out = {}
    for k, d in nodes.items():
        label = d.schema.label.name
        out[k] = (d.split.n_train + len(d.split.holdout),
                  int(d.split.train[label].sum() + d.split.holdout[label].sum()))
    return out


@pytest.mark.slow
def test_a_researcher_takes_a_coded_categorical_table_through_every_command(tmp_path):
    src = tmp_path / "german.csv"
    pt.coded_categorical_table().to_csv(src, sep=";", index=False)
    draft = ok(run_fedcredit("schema", "infer", src, "--out", tmp_path / "german.toml", "--json"))
    assert draft["label"]["positive"] == 2 and draft["read"]["delimiter"] == "semicolon"
    checked = validate_as_printed(draft)
    assert checked["rows"] == 1000 and 0.2 < checked["default_rate"] < 0.4  # 2 = bad, not inverted

    # a label skew too strong for 3 institutions of ≥ 50 defaults: exit 2 naming an alpha/seed that works
    said = refused(run_fedcredit("data", "partition", src, "--schema", draft["schema"], "--mapping",
                                 draft["mapping"], "--by", "label", "-k", 3, "--alpha", 0.2, "--seed", 1,
                                 "--out", tmp_path / "too-skewed"))
    assert not (tmp_path / "too-skewed").exists()
    advice = re.search(r"--alpha (\S+) --seed (\d+) works", said)
    assert advice, said
    manifest = partition_by_label(src, draft, tmp_path / "parts", "-k", 3, "--alpha", advice[1],
                                  "--seed", advice[2])
    assert manifest["label"]["positive"] == 2 and "redraws" in manifest["params"]
    assert all(50 <= e["defaults"] <= e["rows"] - 50 for e in manifest["institutions"])
    assert sum(e["defaults"] for e in manifest["institutions"]) == round(checked["default_rate"] * 1000)
    assert min(e["rows"] for e in manifest["institutions"]) < 500  # below the consortium minimum

    # without research options: refused, the advice names the options, no run directory
    run = ["simulate", "--data", tmp_path / "parts", "--schema", draft["schema"], "--mapping", draft["mapping"],
           "--rounds", 2, "--epsilon", 3, "--local-epochs", 10]
    said = refused(run_fedcredit(*run, "--out", tmp_path / "refused", timeout=600))
    assert not (tmp_path / "refused").exists()
    options = re.search(r"research mode: (--min-rows \d+(?: --min-positives \d+)?)", said)
    assert options, said

    t0 = time.time()
    proc = run_fedcredit(*run, *options[1].split(), "--out", tmp_path / "run", "--json", timeout=900)
    elapsed = time.time() - t0
    s = ok(proc)
    err = " ".join(proc.stderr.split())
    assert s["status"] == "completed" and s["rounds"] == 2 and s["research_mode"] is True
    assert "RESEARCH MODE: 3 institutions below" in err
    assert "baselines (centralised, local-only)" in err and "4/4" in err  # progress while the baselines train
    assert [i["rows"] for i in s["institutions"]] == [e["rows"] for e in manifest["institutions"]]
    assert s["auc_federated"] is not None
    # ~330-row institutions learn little under DP (docs/schemas.md); the pooled non-private
    # baseline shows that the labels arrived with their coding (2 = bad) intact
    assert s["auc_centralized"] > 0.6
    # wall_s: the whole command, its Flower run and its baselines included, and no more than it took
    assert 0 < s["flower_s"] and 0 < s["baselines_s"] and s["flower_s"] + s["baselines_s"] <= s["wall_s"] <= elapsed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["wall_s"] == s["wall_s"]
    assert set(metrics["research_mode"]["institutions"]) == {e["id"] for e in manifest["institutions"]}
    card = " ".join((tmp_path / "run" / "model_card.md").read_text().split())
    assert "RESEARCH MODE: 3 institutions below the consortium's DP-training minimum" in card


def test_standardised_numerics_in_a_space_aligned_file_reach_the_simulation_with_zero_as_default(tmp_path, capsys):
    src = tmp_path / "standardised.txt"
    table = pt.standardised_table(3000)
    pt.write_aligned(table, src)
    assert main(["schema", "infer", str(src), "--out", str(tmp_path / "std.toml"), "--json"]) == 0
    draft = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert draft["label"]["positive"] == 0 and draft["read"]["delimiter"] == "whitespace"
    assert main(["data", "partition", str(src), "--schema", draft["schema"], "--mapping", draft["mapping"],
                 "-k", "3", "--by", "label", "--alpha", "5", "--out", str(tmp_path / "parts"), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(e["defaults"] >= 50 for e in manifest["institutions"])
    loaded = rows_and_defaults(nodes_as_simulate_loads_them(tmp_path / "parts", draft))
    assert loaded == {e["id"]: (e["rows"], e["defaults"]) for e in manifest["institutions"]}
    assert sum(d for _, d in loaded.values()) == int((table["Y"] == 0).sum())  # 0 = default, as the file says


def test_three_parties_with_a_junk_header_name_reach_the_simulation_as_they_are(tmp_path, capsys):
    parties = tmp_path / "parties"
    parties.mkdir()
    frames = pt.three_party_tables()
    for i, frame in enumerate(frames):
        pt.write_with_title_column(frame, parties / f"party-{i + 1}.csv")
    assert main(["schema", "infer", *map(str, sorted(parties.iterdir())), "--drop-leading-column",
                 "--out", str(tmp_path / "p.toml"), "--json"]) == 0
    draft = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert draft["label"]["positive"] == "yes"
    loaded = rows_and_defaults(nodes_as_simulate_loads_them(parties, draft))
    assert loaded == {f"party-{i + 1}": (len(f), int((f["defaulted"] == "yes").sum())) for i, f in enumerate(frames)}


@pytest.mark.slow
@pytest.mark.skipif(not UCI.is_file(), reason=f"{UCI} is not on this machine")
def test_the_real_uci_credit_card_file_from_schema_infer_to_a_simulated_round(tmp_path):
    draft = ok(run_fedcredit("schema", "infer", UCI, "--out", tmp_path / "uci.toml", "--json"))
    assert draft["label"] == {"name": "default.payment.next.month", "positive": 1, "negative": 0}
    assert draft["id"] == "ID"
    checked = validate_as_printed(draft)
    assert checked["rows"] == 30000 and round(checked["default_rate"], 4) == 0.2212
    manifest = partition_by_label(UCI, draft, tmp_path / "parts", "-k", 4, "--alpha", 1, "--min-positives", 500)
    assert all(e["defaults"] >= 500 for e in manifest["institutions"])
    assert sum(e["defaults"] for e in manifest["institutions"]) == 6636
    s = ok(run_fedcredit("simulate", "--data", tmp_path / "parts", "--schema", draft["schema"], "--mapping",
                         draft["mapping"], "--rounds", 1, "--no-baselines", "--out", tmp_path / "run", "--json",
                         timeout=900))
    assert s["status"] == "completed" and s["research_mode"] is False and s["auc_federated"] is not None
    assert sorted(i["rows"] for i in s["institutions"]) == sorted(e["rows"] for e in manifest["institutions"])
