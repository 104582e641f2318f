"""Governance outputs: model card, HTML report, adverse-action reason codes.

* the card's ε per institution is that institution's privacy state (synthetic run here; a slow
  end-to-end ``fedcredit simulate --epsilon`` run below);
* the report has every section, and every plot is an embedded PNG that decodes;
* reason codes name the known driver of a synthetic data set, deterministically, and
  ``fedcredit score --explain`` adds the columns.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, run_fedcredit

REPAYMENT = "repeated payment delays in the last 6 months"
UTILISATION = "high use of the credit limit"


# ------------------------------------------------------------------------ synthetic run
def _histograms(rng, n: int, bins: int):
    """Scores of a calibrated model: PD ~ logit-normal, y ~ Bernoulli(PD); 8000-bin histograms."""
    from models.metrics import EvaluationSums

    logit = rng.normal(-2.0, 1.0, n)
    p = 1 / (1 + np.exp(-logit))
    y = (rng.random(n) < p).astype(float)
    return EvaluationSums.from_scores(p, y, bins), p, y


def make_run(tmp_path: Path, *, dp: bool = True, baselines: bool = True, ledger: bool = True) -> Path:
    """A finished-run directory with a metrics.json shaped like ``fedcredit simulate``'s (and, with
    ``dp``, each institution's privacy state written by the real PrivacyLedger)."""
    from configs.schema import load_schema
    from models.fairness import fairness_metrics
    from models.metrics import SCORE_BINS, rebin, sum_evaluations

    schema = load_schema(None)
    rng = np.random.default_rng(7)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    names = ["national-bank-1", "regional-bank-1", "online-microlender-1"]
    parts, institutions, data, inst_hists = [], {}, {}, {}
    for k, inst in enumerate(names):
        sums, p, y = _histograms(rng, 600 + 200 * k, SCORE_BINS)
        parts.append(sums)
        ev = {key: float(v) for key, v in sums.metrics().items()}
        institutions[inst] = {"eval": {**ev, "release": "exact"}, "privacy": {"num_examples": 2400.0 + k}}
        data[inst] = {"rows_train": 2400 + k, "rows_holdout": len(p), "rows": 2400 + k + len(p),
                      "default_rate": float(y.mean()), "fingerprint": f"{k:064x}"}
        inst_hists[inst] = {"bins": 100, "hist_neg": rebin(sums.hist_neg, 100).tolist(),
                            "hist_pos": rebin(sums.hist_pos, 100).tolist()}
    pooled = sum_evaluations(parts)
    counts = {"sex": np.array([[900, 100, 120, 60], [1100, 130, 160, 80]], dtype=float),
              "age": np.array([[100, 20, 30, 10], [700, 80, 90, 40], [500, 50, 60, 30], [400, 40, 50, 30],
                               [200, 25, 35, 20], [100, 15, 15, 10]], dtype=float)}
    fairness = fairness_metrics(counts, schema)
    settings = {"num-server-rounds": 3, "strategy": "fedavg", "aggregation": "mean", "local-epochs": 1,
                "batch-size": 256, "learning-rate": 0.002, "optimizer": "adam", "model": "mlp", "seed": 0,
                "dp": dp, "clipping-norm": 1.0, "target-epsilon": 0.0, "cutoff-pd": 0.2,
                "schema": "consumer-credit-v1", "data-dir": "", "state-root": str(run_dir / "node-state")}
    if dp:
        from privacy.accountant import PrivacyEvent, PrivacyLedger

        for k, inst in enumerate(names):
            with PrivacyLedger.open(run_dir / "node-state" / inst, fingerprint=data[inst]["fingerprint"],
                                    schema_key=schema.key, institution_id=inst, max_epsilon=3.0,
                                    delta=1e-5) as ledger:
                ledger.record([PrivacyEvent("statistics", 10.0, 1.0, 1)])
                spent = ledger.record([PrivacyEvent("train", 1.0 + 0.2 * k, 0.05, 40 * (k + 1), round=1)])
            institutions[inst]["privacy"].update({"epsilon_spent": spent, "epsilon_budget": 3.0, "delta": 1e-5,
                                                  "noise_multiplier": 1.0 + 0.2 * k, "sample_rate": 0.05,
                                                  "steps": 40.0 * (k + 1)})
    history = []
    for rnd in (1, 2, 3):
        history.append({"round": rnd, "sampled": names, "participants": names if rnd < 3 else names[:2],
                        "refused": {} if rnd < 3 else {names[2]: {"reason": "budget-exhausted", "detail": "ε"}},
                        "dropped": {}, "rejected": {}, "model_sha256_before": "a", "model_sha256_after": "b",
                        "train_loss": 0.5 - 0.05 * rnd, "wall_s": 0.4,
                        "global": {"auc": 0.70 + 0.02 * rnd, "ks": 0.3 + 0.02 * rnd}})
    metrics = {
        "run_id": "42", "run_dir": str(run_dir), "status": "completed", "stop_reason": "", "stop_detail": "",
        "rounds_planned": 3, "rounds_completed": 3, "settings": settings, "schema": schema.key,
        "statistics": {"contributors": names, "refused": {}, "dropped": {},
                       "node_metrics": {i: {"num-examples": 2400.0 + k} for k, i in enumerate(names)}},
        "history": history, "final": {k: float(v) for k, v in pooled.metrics().items()},
        "institutions": institutions,
        "final_histograms": {"hist_neg": pooled.hist_neg.tolist(), "hist_pos": pooled.hist_pos.tolist()},
        "final_institution_histograms": inst_hists, "fairness": fairness, "data": data,
    }
    if baselines:
        metrics["baselines"] = {
            "centralised": {"pooled_auc": 0.78, "institutions": {i: 0.76 + 0.01 * k for k, i in enumerate(names)}},
            "local_only": {i: {"auc": 0.70 + 0.01 * k} for k, i in enumerate(names)},
            "local_only_mean_auc": 0.71, "local_only_pooled_auc": 0.72, "dp_local_only": dp}
    else:
        metrics.pop("data")
        settings["state-root"] = ""
    if ledger:
        metrics["ledger_head"] = "f" * 64
        metrics["ledger"] = {"path": str(run_dir / "ledger.jsonl"), "key_id": "0123456789abcdef", "entries": 9}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


# ----------------------------------------------------------------------------- model card
def test_card_epsilon_is_each_institutions_state(tmp_path):
    from privacy.accountant import read_state
    from server.model_card import write_model_card

    run_dir = make_run(tmp_path)
    md, js = write_model_card(run_dir)
    card = json.loads(js.read_text())
    assert set(card["privacy"]["institutions"]) == {"national-bank-1", "regional-bank-1", "online-microlender-1"}
    spends = set()
    for inst, row in card["privacy"]["institutions"].items():
        (state,) = read_state(run_dir / "node-state" / inst)
        assert row["epsilon_spent"] == pytest.approx(state["epsilon_spent"], abs=1e-9)
        assert row["state"]["epsilon_spent"] == pytest.approx(state["epsilon_spent"], abs=1e-9)
        assert row["state_matches"] is True
        assert row["delta"] == state["delta"] and row["epsilon_budget"] == state["max_epsilon"]
        assert row["accountant"] == "rdp"
        spends.add(round(row["epsilon_spent"], 6))
        assert f"{row['epsilon_spent']:.4f}" in md.read_text()
    assert len(spends) == 3  # different spends, so a mix-up between institutions would show
    text = md.read_text()
    for heading in ("## Intended use", "## Training", "## Privacy guarantee", "## Performance", "## Fairness",
                    "## Audit"):
        assert heading in text, heading
    assert "human review" in text and "consumer-credit-v1" in text and "f" * 64 in text


def test_card_flags_a_node_report_that_disagrees_with_its_state(tmp_path):
    from server.model_card import build_model_card

    run_dir = make_run(tmp_path)
    m = json.loads((run_dir / "metrics.json").read_text())
    m["institutions"]["regional-bank-1"]["privacy"]["epsilon_spent"] -= 0.5
    (run_dir / "metrics.json").write_text(json.dumps(m))
    card = build_model_card(run_dir)
    assert card["privacy"]["institutions"]["regional-bank-1"]["state_matches"] is False
    assert card["privacy"]["institutions"]["national-bank-1"]["state_matches"] is True
    assert any("regional-bank-1" in w and "differs" in w for w in card["warnings"])


def test_card_without_dp_baselines_or_ledger_says_so(tmp_path):
    from server.card_document import render_markdown
    from server.model_card import build_model_card

    run_dir = make_run(tmp_path, dp=False, baselines=False, ledger=False)
    m = json.loads((run_dir / "metrics.json").read_text())
    m["institutions"]["regional-bank-1"]["eval"]["release"] = "noised"
    (run_dir / "metrics.json").write_text(json.dumps(m))
    card = build_model_card(run_dir)
    assert card["run"]["mode"] != "simulation"
    assert card["data"]["institutions"]["regional-bank-1"]["default_rate"] == "not released"
    assert isinstance(card["data"]["institutions"]["national-bank-1"]["default_rate"], float)  # released exactly
    assert card["ledger"] is None and card["metrics"]["baselines_available"] is False
    text = render_markdown(card)
    assert "No differential privacy" in text and "no audit ledger" in text and "No centralised" in text
    assert "not released" in text


def test_card_states_what_the_server_checked_of_each_update(tmp_path):
    from server.card_document import render_markdown
    from server.model_card import build_model_card

    run_dir = make_run(tmp_path)
    assert "no norm bound (max-update-norm = 0)" in render_markdown(build_model_card(run_dir))
    m = json.loads((run_dir / "metrics.json").read_text())
    m["settings"].update({"max-update-norm": 25.0, "clip-update-norm": 5.0})
    (run_dir / "metrics.json").write_text(json.dumps(m))
    text = render_markdown(build_model_card(run_dir))
    assert "at most 25" in text and "clipped to norm 5" in text
    m["settings"].update({"max-update-norm": 0.0, "clip-update-norm": 0.0, "secure-aggregation": True})
    (run_dir / "metrics.json").write_text(json.dumps(m))
    assert "checked no individual update" in render_markdown(build_model_card(run_dir))


# --------------------------------------------------------------------------------- report
class _Structure(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.external = {}, [], []
        self._sec, self._h2 = None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("#", "data:")):
                self.external.append(a[key])
        if tag == "link":
            self.external.append(a.get("href", "link"))
        if tag == "section":
            self._sec = a.get("id")
        elif tag == "h2":
            self._h2 = ""
        elif tag == "img":
            self.images.append((self._sec, a.get("src", "")))

    def handle_endtag(self, tag):
        if tag == "h2" and self._h2 is not None:
            self.sections[self._sec] = self._h2.strip()
            self._h2 = None
        elif tag == "section":
            self._sec = None

    def handle_data(self, data):
        if self._h2 is not None:
            self._h2 += data


def _parse(path: Path) -> _Structure:
    s = _Structure()
    s.feed(path.read_text(encoding="utf-8"))
    return s


def _decode_png(src: str):
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    img = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
    img.load()
    assert img.format == "PNG" and img.width > 200 and img.height > 100
    return img


def test_report_has_every_section_and_decodable_plots(tmp_path):
    from server.report import SECTIONS, write_report

    run_dir = make_run(tmp_path)
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    s = _parse(path)
    assert s.sections == dict(SECTIONS)
    assert s.external == []  # self-contained
    per_section: dict[str, int] = {}
    for sec, src in s.images:
        _decode_png(src)
        per_section[sec] = per_section.get(sec, 0) + 1
    for sec in ("training", "discrimination", "calibration", "distribution", "comparison", "privacy"):
        assert per_section.get(sec) == 1, sec
    assert per_section.get("fairness") == 2  # sex and age
    text = path.read_text()
    assert "class=\"absent\"" not in text  # every section had its data
    assert (run_dir / "model_card.md").is_file() and (run_dir / "model_card.json").is_file()
    assert "f" * 64 in text and "Demographic-parity difference" in text


def test_report_lists_evaluation_refusals_and_rejections(tmp_path):
    from server.report import section_participation

    run_dir = make_run(tmp_path)
    m = json.loads((run_dir / "metrics.json").read_text())
    m["history"][0]["evaluation_refused"] = {"online-microlender-1": {"reason": "budget-exhausted", "detail": ""}}
    m["history"][1]["evaluation_rejected"] = {"regional-bank-1": "histogram 'hist_pos' has non-finite values"}
    m["final_evaluation"] = {"evaluation_failed": {"national-bank-1": "no reply before the round timeout"}}
    m["statistics"] = {"contributors": ["a"], "rejected": {"national-bank-1": "wrong length"}}
    html = section_participation(m)
    assert "online-microlender-1 (evaluation)" in html and "budget-exhausted" in html
    assert "regional-bank-1 (evaluation)" in html and "non-finite" in html
    assert "final evaluation" in html and "no reply before the round timeout" in html
    assert "rejected: national-bank-1" in html


def test_report_sections_without_data_say_so(tmp_path):
    from server.report import SECTIONS, write_report

    run_dir = make_run(tmp_path, dp=False, baselines=False, ledger=False)
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("final_histograms", "final_institution_histograms", "fairness"):
        m.pop(key)
    (run_dir / "metrics.json").write_text(json.dumps(m))
    out = tmp_path / "elsewhere" / "r.html"
    write_report(run_dir, out)
    s = _parse(out)
    assert s.sections == dict(SECTIONS)
    text = out.read_text()
    for phrase in ("no local-only or centralised baselines", "without differential privacy",
                   "No pooled score histograms", "No per-institution score histograms", "No fairness counts",
                   "no audit ledger head"):
        assert phrase in text, phrase
    for _, src in s.images:
        _decode_png(src)


def test_the_report_escapes_what_a_run_says(tmp_path):
    """Institution names, reasons and details come from nodes and files: the report shows them as text."""
    from server.report import write_report

    run_dir = make_run(tmp_path, dp=False, baselines=False)
    evil = '<script>alert("x")</script>'
    m = json.loads((run_dir / "metrics.json").read_text().replace("regional-bank-1", evil.replace('"', '\\"')))
    m["history"][0]["refused"] = {"<b>bank</b>": {"reason": "<img src=x onerror=alert(1)>"}}
    m.update({"status": "stopped", "stop_reason": "<i>reason</i>", "stop_detail": "a & b"})
    (run_dir / "metrics.json").write_text(json.dumps(m))
    text = write_report(run_dir).read_text()
    for raw in (evil, "<b>bank</b>", "<img src=x", "<i>reason</i>"):
        assert raw not in text, raw
    assert "&lt;script&gt;alert(" in text and "&lt;b&gt;bank&lt;/b&gt;" in text and "&lt;i&gt;reason&lt;/i&gt;" in text
    assert _parse(run_dir / "report.html").external == []
    assert evil in (run_dir / "model_card.md").read_text()  # Markdown holds the name as it is


def test_the_card_is_one_document_rendered_as_markdown_and_in_the_report(tmp_path):
    from markupsafe import escape

    from server.card_document import REPORT_SECTIONS, card_document
    from server.report import write_report
    from server.templating import inline

    run_dir = make_run(tmp_path)
    html = write_report(run_dir).read_text()
    md = (run_dir / "model_card.md").read_text()
    doc = card_document(json.loads((run_dir / "model_card.json").read_text()))
    assert [s.key for s in doc.report_sections()] == list(REPORT_SECTIONS)
    for section in doc.sections:
        assert f"## {section.title}\n" in md
        for block in section.blocks:
            texts = {"paragraph": lambda: [block.text], "heading": lambda: [block.text],
                     "bullets": lambda: list(block.items), "preformatted": lambda: list(block.lines),
                     "table": lambda: [c for row in block.rows for c in row]}[block.kind]()
            for t in texts:
                assert t.replace("|", "\\|") in md, t
                if section.key in REPORT_SECTIONS:
                    assert str(inline(t)) in html, t
    assert "**Users:**" in md and "<strong>Users:</strong>" in html  # the marks, rendered twice
    assert str(escape(doc.parts["privacy-table"].rows[0][-1])) in html


def test_card_text_marks_become_tags_only_after_escaping():
    from server.templating import inline

    assert str(inline("a `x<y>` **b & c** <em>")) == "a <code>x&lt;y&gt;</code> <strong>b &amp; c</strong> &lt;em&gt;"
    assert str(inline("`" + "f" * 64 + "`")) == f'<code class="hash">{"f" * 64}</code>'


def test_calibration_bands_of_a_calibrated_model_lie_on_the_diagonal():
    from models.metrics import SCORE_BINS
    from models.calibration import calibration_bands

    sums, p, y = _histograms(np.random.default_rng(3), 200_000, SCORE_BINS)
    bands = calibration_bands(sums.hist_neg, sums.hist_pos, 10)
    assert len(bands) == 10
    assert sum(b["n"] for b in bands) == 200_000
    assert all(abs(b["n"] - 20_000) < 200 for b in bands)  # equal-population bands
    order = np.argsort(p)
    for b, chunk in zip(bands, np.array_split(order, 10)):
        assert b["mean_pd"] == pytest.approx(p[chunk].mean(), rel=0.01)
        assert b["observed"] == pytest.approx(b["mean_pd"], abs=4 * np.sqrt(b["mean_pd"] / b["n"]))


def test_report_command(tmp_path):
    run_dir = make_run(tmp_path, dp=False)
    proc = run_fedcredit("report", run_dir, "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["report"]).is_file() and Path(out["model_card_md"]).is_file()
    bad = run_fedcredit("report", tmp_path / "nothing-here")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nothing-here" in bad.stderr


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_renders_in_headless_chromium(tmp_path, chromium):
    render = _load_bench("render_report")
    from PIL import Image
    from server.report import SECTIONS, write_report

    path = write_report(make_run(tmp_path))
    shot = tmp_path / "shot.png"
    result = render.screenshot(path, shot, 1280, 2000, chromium=chromium)
    assert result["returncode"] == 0, result
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    colours = len(np.unique(np.asarray(img.resize((320, 500))).reshape(-1, 3), axis=0))
    assert colours > 50  # something was drawn (not a blank page)
    assert [k for k, _ in SECTIONS] == list(_parse(path).sections)


# --------------------------------------------------------------------------- reason codes
def _applicants(n: int, rng) -> pd.DataFrame:
    """Clean consumer-credit rows with plausible, independent feature values."""
    t = pd.DataFrame({
        "borrower_id": [f"A{i:06d}" for i in range(n)],
        "credit_limit": np.round(np.exp(rng.normal(11.5, 0.6, n)), -3),
        "sex": rng.choice(["male", "female"], n),
        "education": rng.choice(["graduate school", "university", "high school", "other"], n),
        "marital_status": rng.choice(["married", "single", "other"], n),
        "age": rng.integers(21, 70, n),
    })
    for m in range(1, 7):
        t[f"pay_status_{m}"] = rng.choice([-2, -1, 0, 1, 2, 3, 4], n, p=[.1, .2, .4, .1, .1, .05, .05])
    for m in range(1, 7):
        t[f"bill_amount_{m}"] = np.round(np.exp(rng.normal(9.5, 1.2, n)))
    for m in range(1, 7):
        t[f"pay_amount_{m}"] = np.round(np.exp(rng.normal(7.5, 1.0, n)))
    return t


def _driver_logit(t: pd.DataFrame) -> np.ndarray:
    """Only last month's repayment status and the statement balances drive default."""
    bills = np.log1p(t[[f"bill_amount_{m}" for m in range(1, 7)]].to_numpy(float)).mean(axis=1)
    return -2.2 + 1.1 * np.maximum(t["pay_status_1"].to_numpy(float), 0) + 1.3 * (bills - 9.5)


@pytest.fixture(scope="module")
def trained(request):
    """{architecture: (model, encoder, schema)} trained on data with known drivers."""
    import torch

    from configs.schema import load_schema
    from models.encoder import fit_encoder_from_tables
    from models.network import ModelSpec, build_model
    from models.training import LocalTrainConfig, train_local

    schema = load_schema(None)
    rng = np.random.default_rng(11)
    table = _applicants(6_000, rng)
    y = (rng.random(len(table)) < 1 / (1 + np.exp(-_driver_logit(table)))).astype(np.float32)
    table["default_next_month"] = y.astype(int)
    encoder = fit_encoder_from_tables(schema, [table])
    x = encoder.transform(table)
    out = {}
    torch.manual_seed(0)
    for arch, hidden in (("scorecard", ()), ("mlp", (16, 8))):
        model = build_model(ModelSpec(arch, encoder.n_outputs, hidden), seed=1)
        train_local(model, x, y, LocalTrainConfig(local_epochs=5, batch_size=256, learning_rate=0.02), seed=2)
        out[arch] = (model, encoder, schema)
    return out


def _row(encoder, **changes) -> pd.DataFrame:
    ref = encoder.reference_frame()
    for k, v in changes.items():
        ref[k] = v
    return ref


@pytest.mark.parametrize("arch", ["scorecard", "mlp"])
def test_reasons_name_the_known_driver(trained, arch):
    from models.reasons import adverse_action_reasons, explain_one

    model, encoder, schema = trained[arch]
    late = _row(encoder, pay_status_1=4)
    heavy = _row(encoder, **{f"bill_amount_{m}": 900_000.0 for m in range(1, 7)})
    both = _row(encoder, pay_status_1=4, **{f"bill_amount_{m}": 900_000.0 for m in range(1, 7)})
    ref = encoder.reference_frame()
    x = encoder.transform(pd.concat([ref, late, heavy, both], ignore_index=True))
    r = adverse_action_reasons(model, encoder, schema, x, 3)
    assert r.shape == (4, 3)
    assert list(r[0]) == ["", "", ""]  # the reference applicant has nothing adverse
    assert list(r[1]) == [REPAYMENT, "", ""]  # only pay_status_1 differs from the reference
    assert list(r[2]) == [UTILISATION, "", ""]
    assert set(r[3][:2]) == {REPAYMENT, UTILISATION} and r[3][2] == ""

    e = explain_one(model, encoder, schema, x[1])
    assert e.groups[0]["group"] == "repayment_status" and e.groups[0]["contribution"] > 0.5
    assert e.features["pay_status_1"] == pytest.approx(e.groups[0]["contribution"])
    assert e.completeness_error < (1e-5 if arch == "scorecard" else 1e-4)
    assert e.reasons == [REPAYMENT]


@pytest.mark.parametrize("arch", ["scorecard", "mlp"])
def test_reasons_are_deterministic_and_agree_with_explain_one(trained, arch):
    from models import reasons as R

    model, encoder, schema = trained[arch]
    x = encoder.transform(_applicants(3000, np.random.default_rng(5)))
    a = R.adverse_action_reasons(model, encoder, schema, x, 3)
    b = R.adverse_action_reasons(model, encoder, schema, x, 3, chunk_rows=257)
    assert (a == b).all()
    assert (a[:, 0] != "").mean() > 0.3  # plenty of adverse reasons to compare
    for i in range(0, 3000, 300):
        want = (R.explain_one(model, encoder, schema, x[i]).reasons + ["", "", ""])[:3]
        assert list(a[i]) == want, i
    # fewer than K groups exist: the extra columns are empty
    wide = R.adverse_action_reasons(model, encoder, schema, x[:50], 8)
    assert wide.shape == (50, 8) and (wide[:, 5:] == "").all()


def test_mlp_fast_path_equals_autograd(trained, monkeypatch):
    from models import reasons as R

    model, encoder, schema = trained["mlp"]
    x = encoder.transform(_applicants(500, np.random.default_rng(9)))
    ref = encoder.reference_vector()
    assert R._silu_stack(model) is not None  # this model takes the fast path
    fast = R.column_attributions(model, ref, x)
    monkeypatch.setattr(R, "_silu_stack", lambda m: None)
    slow = R.column_attributions(model, ref, x)
    np.testing.assert_allclose(fast, slow, atol=2e-5)
    import torch

    with torch.no_grad():
        f = model(torch.as_tensor(x)).double().numpy() - float(model(torch.as_tensor(ref[None]))[0])
    np.testing.assert_allclose(fast.sum(axis=1), f, atol=1e-4)  # completeness of the 16-point rule


def test_score_explain_adds_reason_columns(trained, tmp_path):
    from models.package import ModelPackage, save_package
    from models.network import get_weights
    from models.network import ModelSpec

    model, encoder, schema = trained["scorecard"]
    save_package(tmp_path / "model", ModelPackage(spec=ModelSpec("scorecard", encoder.n_outputs, ()),
                                                  encoder=encoder, weights=get_weights(model), schema=schema))
    apps = _applicants(40, np.random.default_rng(2))
    apps.loc[0, "pay_status_1"] = 4
    apps.to_csv(tmp_path / "apps.csv", index=False)
    proc = run_fedcredit("score", "--model", tmp_path / "model", "--data", tmp_path / "apps.csv",
                         "--out", tmp_path / "scores.csv", "--explain", 2, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = pd.read_csv(tmp_path / "scores.csv", keep_default_na=False)
    assert list(out.columns) == ["borrower_id", "pd", "score", "decision", "reason_1", "reason_2"]
    assert len(out) == 40
    assert REPAYMENT in (out.loc[0, "reason_1"], out.loc[0, "reason_2"])
    texts = set(schema.groups.values())
    assert set(out["reason_1"]) <= texts | {""} and set(out["reason_2"]) <= texts | {""}


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_simulate_with_dp_writes_card_and_report_whose_epsilon_is_the_state(tmp_path):
    if importlib.util.find_spec("privacy.accountant") is None:
        pytest.skip("privacy.accountant (the persistent ledger) is not installed; no DP run possible")
    from privacy.accountant import read_state
    from server.report import SECTIONS

    run_dir = tmp_path / "run"
    # a consortium budgets file: the regional bank has its own budget, the others get --epsilon
    budgets_file = tmp_path / "budgets.toml"
    budgets_file.write_text('[max-epsilon]\n"regional-bank-1" = 0.8\n')
    budget = {"national-bank-1": 2.0, "regional-bank-1": 0.8, "card-issuer-1": 2.0}
    proc = run_fedcredit("simulate", "--institutions", 3, "--rounds", 2, "--scale", 0.3, "--epsilon", 2,
                         "--budgets", budgets_file, "--seed", 4, "--out", run_dir, "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {i["id"]: i["epsilon_budget"] for i in summary["institutions"]} == budget
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["privacy"]["dp"] is True and len(card["privacy"]["institutions"]) == 3
    for inst, row in card["privacy"]["institutions"].items():
        (state,) = read_state(run_dir / "node-state" / inst)
        assert state["max_epsilon"] == budget[inst] and row["epsilon_budget"] == budget[inst]
        assert 0.9 * budget[inst] < state["epsilon_spent"] <= budget[inst] + 1e-9, inst
        assert row["epsilon_spent"] == pytest.approx(state["epsilon_spent"], abs=1e-9), inst
        assert row["state_matches"] is True
        assert row["epsilon_spent"] == pytest.approx(
            next(i for i in summary["institutions"] if i["id"] == inst)["epsilon_spent"], abs=1e-9)
    s = _parse(run_dir / "report.html")
    assert s.sections == dict(SECTIONS)
    for _, src in s.images:
        _decode_png(src)
    assert summary["report"] == str(run_dir / "report.html")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
