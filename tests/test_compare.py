"""Champion vs challenger: DeLong's test (fast form) against its definition, a hand-worked value
and the bootstrap; swap sets; ``fedcredit compare`` with its recommendation and ``--adopt``
recorded in the node's ledger heads and checked by ``fedcredit ledger verify``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.delong import auc_interval, compare_aucs, delong_covariance
from models.swap_sets import bad_rate_at_approval_rate, swap_sets
from tests.conftest import run_fedcredit
from tests.model_packages import cli_in_process as cli
from tests.model_packages import make_package, outcomes_from_pd, synthetic_table, write_table


def _structural_components(y, s):
    """DeLong's V10 / V01 straight from the definition, O(m·n)."""
    x, z = s[y], s[~y]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def test_fast_delong_equals_the_definition_with_ties():
    rng = np.random.default_rng(0)
    n = 700
    y = rng.random(n) < 0.25
    a = np.round(rng.normal(size=n) + y, 1)  # rounded: many ties
    b = np.round(0.6 * a + rng.normal(size=n) + 0.7 * y, 1)
    assert np.isin(a[y], a[~y]).any() and np.isin(b[y], b[~y]).any()  # the case of the test: ties across classes
    aucs, cov = delong_covariance(y, [a, b])
    comps = [_structural_components(y, s) for s in (a, b)]
    m, k = y.sum(), (~y).sum()
    s10 = np.cov(np.stack([c[0] for c in comps]))
    s01 = np.cov(np.stack([c[1] for c in comps]))
    np.testing.assert_allclose(aucs, [c[0].mean() for c in comps], rtol=1e-12)
    np.testing.assert_allclose(cov, s10 / m + s01 / k, rtol=1e-10)


def test_delong_hand_worked_example():
    # defaulters score 3 and 4, non-defaulters 1, 2, 3: V10 = (5/6, 1), V01 = (1, 1, 3/4)
    y = np.array([1, 1, 0, 0, 0], dtype=bool)
    s = np.array([3.0, 4.0, 1.0, 2.0, 3.0])
    r = auc_interval(y, s)
    assert r.auc == pytest.approx(11 / 12)
    assert r.se ** 2 == pytest.approx(np.var([5 / 6, 1], ddof=1) / 2 + np.var([1, 1, 0.75], ddof=1) / 3)
    assert r.se ** 2 == pytest.approx(1 / 72)


def test_delong_standard_error_of_a_difference_matches_the_bootstrap():
    rng = np.random.default_rng(1)
    n = 1500
    y = rng.random(n) < 0.2
    a = rng.normal(size=n) + 0.9 * y
    b = 0.5 * a + rng.normal(size=n) + 0.9 * y
    c = compare_aucs(y, a, b)
    boot = []
    for _ in range(400):
        i = rng.integers(0, n, n)
        aucs, _ = delong_covariance(y[i], [a[i], b[i]])
        boot.append(aucs[1] - aucs[0])
    assert c.se == pytest.approx(np.std(boot, ddof=1), rel=0.15)
    assert c.low < c.difference < c.high and c.high - c.low == pytest.approx(2 * 1.959964 * c.se)
    same = compare_aucs(y, a, a)
    assert same.difference == 0.0 and same.p_value == 1.0


def test_swap_sets_and_the_bad_rate_at_equal_approval():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 0])
    champ = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    chall = np.array([1, 0, 1, 1, 1, 0, 0, 0], dtype=bool)
    s = swap_sets(y, champ, chall)
    assert [(k, v.n, v.defaults) for k, v in s.items()] == [
        ("both approve", 2, 0), ("swap-out", 2, 1), ("swap-in", 2, 1), ("both decline", 2, 1)]
    assert sum(v.n for v in s.values()) == len(y)
    p = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6])
    assert bad_rate_at_approval_rate(p, y, 0.5) == 0.0  # the four lowest PDs are the four goods
    assert bad_rate_at_approval_rate(p, y, 0.75) == pytest.approx(1 / 6)  # + 0.6 (good), 0.7 (default)


# ----------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def contenders(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    dev, _ = synthetic_table("national-bank", 6000, seed=6)
    weak = make_package(d / "weak" / "model", dev, epochs=0, seed=2)  # untrained: ranks by chance
    strong = make_package(d / "strong" / "model", dev, epochs=4, seed=3)
    holdout, true_pd = synthetic_table("national-bank", 8000, seed=6, index=1, id_prefix="H")
    write_table(outcomes_from_pd(holdout, true_pd, seed=9), d / "holdout.csv")
    return d, weak, strong


def _run_ledger(run_dir, run_id: str, model_dir) -> str:
    """A real signed audit ledger for a run that exported ``model_dir``; returns its final head."""
    from models.package import load_package, weights_digest
    from server.ledger import RunLedger

    cfg = run_dir / "config.resolved.toml"
    cfg.write_text("[run-config]\nseed = 0\n")
    rl = RunLedger.open(run_dir)
    rl.run_start(run_id, cfg, {"seed": 0, "ledger-key": ""})
    head = rl.run_end("completed", "", 3, weights_digest(load_package(model_dir).weights), model_dir)
    rl.close()
    (run_dir / "metrics.json").write_text(json.dumps({"run_id": run_id, "ledger_head": head}))
    return head


def test_compare_recommends_the_better_model_and_records_its_adoption(contenders, tmp_path, capsys):
    d, weak, strong = contenders
    head = _run_ledger(d / "strong", "run-3", d / "strong" / "model")
    state = tmp_path / "node-state"
    proc = run_fedcredit("compare", "--champion", d / "weak" / "model", "--challenger", d / "strong" / "model",
                         "--data", d / "holdout.csv", "--json", "--out", tmp_path / "out", "--adopt",
                         "--state-dir", state, "--note", "risk committee 2025-07, item 4", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    holdout = pd.read_csv(d / "holdout.csv")
    y = holdout["default_next_month"].to_numpy()
    assert s["auc_champion"] == pytest.approx(roc_auc_score(y, weak.predict_pd(holdout)), abs=1e-9)
    assert s["auc_challenger"] == pytest.approx(roc_auc_score(y, strong.predict_pd(holdout)), abs=1e-9)
    assert s["auc_difference"]["low"] > 0  # significantly better
    assert s["recommendation"]["decision"] in ("adopt-challenger", "review")
    assert "significantly better" in s["recommendation"]["text"]
    assert sum(v["n"] for v in s["swap_sets"].values()) == 8000
    full = json.loads((tmp_path / "out" / "compare.json").read_text())
    attrs = {r["attribute"] for r in full["fairness_side_by_side"]}
    assert attrs == {"sex", "age"}
    assert full["challenger"]["fairness"]["sex"]["demographic_parity_difference"] is not None
    # the adoption: one "adopt" line in the node's ledger heads, with the head the run ended on
    (line,) = [json.loads(x) for x in (state / "ledger-heads.jsonl").read_text().splitlines()]
    assert line["stage"] == "adopt" and line["head"] == head and line["run_id"] == "run-3"
    assert line["decision"]["note"] == "risk committee 2025-07, item 4"
    from models.package import weights_digest

    assert line["decision"]["adopted_weights_sha256"] == weights_digest(strong.weights)
    assert line["decision"]["replaces"]["weights_sha256"] == weights_digest(weak.weights)
    # and `fedcredit ledger verify` finds the adopted head on the run's signed ledger
    assert cli(capsys, "ledger", "verify", d / "strong", "--heads-file", state).returncode == 0
    (d / "strong" / "ledger.jsonl").write_text((d / "strong" / "ledger.jsonl").read_text().splitlines()[0] + "\n")
    assert cli(capsys, "ledger", "verify", d / "strong", "--heads-file", state).returncode != 0


def test_compare_keeps_a_better_champion_and_adopting_against_it_needs_a_note(contenders, tmp_path, capsys):
    d, _, _ = contenders
    args = ["compare", "--champion", d / "strong" / "model", "--challenger", d / "weak" / "model",
            "--data", d / "holdout.csv", "--json"]
    proc = cli(capsys, *args)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["recommendation"]["decision"] == "keep-champion" and s["auc_difference"]["high"] < 0
    assert "significantly worse" in s["recommendation"]["text"]
    bad = cli(capsys, *args, "--adopt", "--state-dir", tmp_path / "state", "--ledger-head", "a" * 64)
    assert bad.returncode == 2 and "--note" in bad.stderr
    assert not (tmp_path / "state" / "ledger-heads.jsonl").exists()


@pytest.mark.parametrize("case", ["no-state-dir", "no-ledger-head", "tampered", "missing-file", "no-label"])
def test_compare_user_mistakes_exit_2(contenders, tmp_path, case, capsys):
    import shutil

    d, _, _ = contenders
    champion, challenger, data, extra = d / "weak" / "model", d / "strong" / "model", d / "holdout.csv", []
    if case == "no-state-dir":
        extra = ["--adopt"]
    elif case == "no-ledger-head":
        shutil.copytree(d / "strong" / "model", tmp_path / "run" / "model")
        challenger = tmp_path / "run" / "model"
        extra = ["--adopt", "--state-dir", tmp_path / "state", "--note", "x"]
    elif case == "tampered":
        shutil.copytree(d / "strong" / "model", tmp_path / "model")
        challenger = tmp_path / "model"
        with open(challenger / "weights.safetensors", "r+b") as fh:
            fh.seek(-4, 2)
            fh.write(b"\x00\x01\x02\x03")
    elif case == "missing-file":
        data = tmp_path / "holdout.csv"
    else:
        import pandas as pd

        data = write_table(pd.read_csv(d / "holdout.csv"), tmp_path / "x.csv", drop=("default_next_month",))
    proc = cli(capsys, "compare", "--champion", champion, "--challenger", challenger, "--data", data, *extra)
    assert proc.returncode == 2, proc.stdout[-2000:]
    needle = {"no-state-dir": "--state-dir", "no-ledger-head": "--ledger-head", "tampered": "weights.safetensors",
              "missing-file": "holdout.csv", "no-label": "default_next_month"}[case]
    assert needle in proc.stderr
