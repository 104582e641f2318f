"""Every node reply is checked before the server uses it: statistics, updates, evaluations.

A malformed statistics or evaluation reply used to stop the whole ServerApp (a KeyError, an
sklearn ValueError on NaN histograms, "statistics from different schemas cannot be summed");
a refusal to evaluate was dropped without a trace. Here the real round driver and the real
ClientApp run in process (:class:`tests.inprocess_grid.InProcessGrid`) with a mod that breaks
one node's reply: the node is left out and recorded (round record, signed ledger), the run
goes on, the ledger verifies. Also: updates must have the global model's dtype; the evaluation
config carries the ledger head; ``fedcredit report`` verifies the ledger.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedcredit import protocol as P
from server.ledger import LEDGER_FILE, read_ledger, verify_ledger
from tests.inprocess_runs import _execute, _grid, _run_config

BAD_PARTITION = 2  # the virtual node whose replies the mod breaks


# ------------------------------------------------------------------------------ helpers
def _tampering_app(message_type: str, tamper, seen: dict | None = None):
    """The real ClientApp; node BAD_PARTITION's replies of ``message_type`` go through
    ``tamper(reply, msg) -> reply``. ``seen`` collects the institution id of that node and the
    ledger heads every evaluation config carried."""
    from clients.client_app import app
    from simulation.faults import ClientAppWithMods

    seen = seen if seen is not None else {}

    def mod(msg, ctx, call_next):
        if msg.metadata.message_type == "evaluate" and P.CONFIG in msg.content.config_records:
            cfg = msg.content[P.CONFIG]
            seen.setdefault("eval_heads", []).append((int(cfg["server-round"]), str(cfg.get("ledger-head", ""))))
        reply = call_next(msg, ctx)
        if int(ctx.node_config["partition-id"]) != BAD_PARTITION or msg.metadata.message_type != message_type:
            return reply
        seen["bad"] = P.node_info(reply).get("institution-id")
        return tamper(reply, msg)

    return ClientAppWithMods(app, [mod])


def _replace_arrays(reply, key: str, arrays: dict):
    """``reply`` with its ArrayRecord ``key`` replaced by ``arrays`` (the rest as it was)."""
    from flwr.app import Message, RecordDict

    content = RecordDict()
    content[key] = P.to_array_record(arrays)
    for k, rec in reply.content.metric_records.items():
        content[k] = rec
    for k, rec in reply.content.config_records.items():
        content[k] = rec
    return Message(content, reply_to=reply_to_of(reply))


def reply_to_of(reply):
    """A stand-in for the message ``reply`` answers (Message(reply_to=…) needs one)."""
    from flwr.app import Message, RecordDict

    m = Message(RecordDict(), dst_node_id=reply.metadata.src_node_id, message_type=reply.metadata.message_type)
    m.metadata.__dict__["_message_id"] = reply.metadata.reply_to_message_id
    m.metadata.__dict__["_src_node_id"] = reply.metadata.dst_node_id
    return m


def _ledger_kinds(run_dir: Path) -> list[tuple]:
    return [(e["kind"], e["payload"].get("round"), e["payload"].get("stage"))
            for e in read_ledger(run_dir / LEDGER_FILE)]


# --------------------------------------------------------------------- statistics replies
def _short_stats(reply, msg):
    stats = P.from_array_record(reply.content[P.STATS])
    k = min(stats)
    stats[k] = stats[k][:-1].copy()
    return _replace_arrays(reply, P.STATS, stats)


def test_a_shortened_statistics_reply_is_rejected_recorded_and_the_run_goes_on(tmp_path):
    seen: dict = {}
    rc = _run_config(tmp_path, "stats", **{"num-server-rounds": 2})
    summary, _ = _execute(rc, _grid(rc, app=_tampering_app(P.STATS_MESSAGE, _short_stats, seen)))
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    bad = seen["bad"]
    st = summary["statistics"]
    assert list(st["rejected"]) == [bad] and "has shape" in st["rejected"][bad]
    assert bad not in st["contributors"] and len(st["contributors"]) == 2
    run_dir = Path(rc["run-dir"])
    assert verify_ledger(run_dir / LEDGER_FILE).ok
    entries = read_ledger(run_dir / LEDGER_FILE)
    assert _ledger_kinds(run_dir)[:3] == [("run-start", None, None), ("rejected-reply", None, "statistics"),
                                          ("statistics", None, None)]
    assert entries[1]["payload"]["institution"] == bad and "has shape" in entries[1]["payload"]["reason"]
    assert entries[2]["payload"]["rejected"] == {bad: st["rejected"][bad]}


def test_too_many_rejected_statistics_stop_the_run_cleanly(tmp_path):
    rc = _run_config(tmp_path, "stats-stop", **{"num-server-rounds": 2, "min-train-nodes": 3})
    summary, _ = _execute(rc, _grid(rc, app=_tampering_app(P.STATS_MESSAGE, _short_stats)))
    assert summary["status"] == "stopped" and summary["stop_reason"] == "too-few-nodes"
    assert "rejected" in summary["stop_detail"] and summary["rounds_completed"] == 0
    assert verify_ledger(Path(rc["run-dir"]) / LEDGER_FILE).ok


# --------------------------------------------------------------------- evaluation replies
def _without_sums(reply, msg):
    arrays = P.from_array_record(reply.content[P.EVAL])
    del arrays["sums"]
    return _replace_arrays(reply, P.EVAL, arrays)


def _nan_histogram(reply, msg):
    arrays = P.from_array_record(reply.content[P.EVAL])
    arrays["hist-neg"] = np.full_like(arrays["hist-neg"], np.nan)
    return _replace_arrays(reply, P.EVAL, arrays)


@pytest.mark.parametrize("tamper, reason", [(_without_sums, "missing ['sums']"), (_nan_histogram, "NaN")],
                         ids=["no-sums", "nan-histogram"])
def test_a_broken_evaluation_reply_is_rejected_recorded_and_the_run_goes_on(tmp_path, tamper, reason):
    seen: dict = {}
    # every evaluation in an evaluate message (the folded ones: tests/test_folded_evaluation.py)
    rc = _run_config(tmp_path, "eval", **{"num-server-rounds": 2, "fraction-evaluate": 1.0, "fold-evaluation": False})
    summary, _ = _execute(rc, _grid(rc, app=_tampering_app("evaluate", tamper, seen)))
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    bad = seen["bad"]
    for record in summary["history"]:
        assert list(record["evaluation_rejected"]) == [bad] and reason in record["evaluation_rejected"][bad]
        assert bad not in record["institutions"] and len(record["institutions"]) == 2
        assert record["global"]["auc"] is not None  # pooled from the two good nodes
    final = summary["final_evaluation"]
    assert list(final["evaluation_rejected"]) == [bad]
    assert bad not in summary["final_institution_histograms"]
    run_dir = Path(rc["run-dir"])
    assert verify_ledger(run_dir / LEDGER_FILE).ok
    entries = read_ledger(run_dir / LEDGER_FILE)
    rejected = [(e["payload"]["round"], e["payload"]["stage"], e["payload"]["institution"])
                for e in entries if e["kind"] == "rejected-reply"]
    assert rejected == [(1, "evaluation", bad), (2, "evaluation", bad), (2, "final-evaluation", bad)]
    rounds = [e["payload"] for e in entries if e["kind"] == "round"]
    assert all(reason in r["evaluation_rejected"][bad] for r in rounds)


def _refuse(reply, msg):
    return P.reply(reply_to_of(reply), institution_id=P.node_info(reply)["institution-id"],
                   metrics={"num-examples": 0.0, "epsilon-spent": 3.0, "epsilon-budget": 3.0},
                   refused=P.REFUSED_BUDGET, detail="the evaluation would exceed max-epsilon")


@pytest.fixture(scope="module")
def refusing_run(tmp_path_factory):
    """A finished run (2 rounds, evaluated) in which one node refuses every evaluation."""
    tmp = tmp_path_factory.mktemp("refusal")
    seen: dict = {}
    rc = _run_config(tmp, "refuse", **{"num-server-rounds": 2, "fraction-evaluate": 1.0, "fold-evaluation": False})
    summary, _ = _execute(rc, _grid(rc, app=_tampering_app("evaluate", _refuse, seen)))
    return summary, Path(rc["run-dir"]), seen


def test_a_refusal_to_evaluate_is_recorded_in_the_record_and_the_ledger(refusing_run):
    summary, run_dir, seen = refusing_run
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    bad = seen["bad"]
    for record in summary["history"]:
        assert record["evaluation_refused"] == {bad: {"reason": P.REFUSED_BUDGET,
                                                      "detail": "the evaluation would exceed max-epsilon"}}
        assert record["evaluation_rejected"] == {} and bad not in record["institutions"]
    assert list(summary["final_evaluation"]["evaluation_refused"]) == [bad]
    assert verify_ledger(run_dir / LEDGER_FILE).ok
    entries = read_ledger(run_dir / LEDGER_FILE)
    refusals = [(e["payload"]["round"], e["payload"]["stage"], e["payload"]["institution"], e["payload"]["reason"])
                for e in entries if e["kind"] == "refusal"]
    assert refusals == [(1, "evaluation", bad, P.REFUSED_BUDGET), (2, "evaluation", bad, P.REFUSED_BUDGET),
                        (2, "final-evaluation", bad, P.REFUSED_BUDGET)]
    assert all(e["payload"]["evaluation_refused"][bad]["reason"] == P.REFUSED_BUDGET
               for e in entries if e["kind"] == "round")


def test_the_evaluation_config_carries_the_ledger_head_and_the_final_one_covers_the_last_round(refusing_run):
    _, run_dir, seen = refusing_run
    entries = read_ledger(run_dir / LEDGER_FILE)
    hashes = [e["hash"] for e in entries]
    heads = seen["eval_heads"]
    assert heads and all(h in hashes for _, h in heads)
    last_round = max(i for i, e in enumerate(entries) if e["kind"] == "round")
    assert heads[-1] == (2, hashes[last_round]), "the final evaluation shows the head of the last round's entry"
    assert verify_ledger(run_dir / LEDGER_FILE, head=[h for _, h in heads]).ok


# ---------------------------------------------------------------------------- update dtype
def _update_message(weights: dict[str, np.ndarray]):
    from flwr.app import Message, MetricRecord, RecordDict

    content = RecordDict({P.ARRAYS: P.to_array_record(weights), P.METRICS: MetricRecord({"num-examples": 10.0})})
    return Message(content, dst_node_id=1, message_type="train")


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_an_update_of_another_float_dtype_is_rejected(dtype):
    from server.update_checks import check_update

    ref = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    assert check_update(_update_message({k: v + 0.1 for k, v in ref.items()}), ref) == ""
    why = check_update(_update_message({k: (v + 0.1).astype(dtype) for k, v in ref.items()}), ref)
    assert f"dtype {np.dtype(dtype)}, expected float32 (the global model's dtype)" in why
    # the global model's dtype is the network's, even when the weights sent were float64
    assert check_update(_update_message(ref), {k: v.astype(np.float64) for k, v in ref.items()},
                        dtypes={k: np.dtype(np.float32) for k in ref}) == ""


def test_a_float64_update_is_rejected_in_a_run_and_the_round_goes_on(tmp_path):
    def widen(reply, msg):
        w = {k: v.astype(np.float64) for k, v in P.from_array_record(reply.content[P.ARRAYS]).items()}
        return _replace_arrays(reply, P.ARRAYS, w)

    seen: dict = {}
    rc = _run_config(tmp_path, "f64", **{"num-server-rounds": 1})
    summary, run = _execute(rc, _grid(rc, app=_tampering_app("train", widen, seen)))
    assert summary["status"] == "completed"
    (record,) = summary["history"]
    assert "float64, expected float32" in record["rejected"][seen["bad"]]
    assert {v.dtype for v in run.weights.values()} == {np.dtype(np.float32)}


def test_fedadam_keeps_the_global_model_float32_so_no_update_is_rejected(tmp_path):
    """FedAdam's server step computes in float64; the global model stays the network's float32."""
    rc = _run_config(tmp_path, "adam", **{"num-server-rounds": 2, "strategy": "fedadam", "min-train-nodes": 3})
    summary, run = _execute(rc, _grid(rc))
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert all(r["rejected"] == {} and len(r["participants"]) == 3 for r in summary["history"])
    assert {v.dtype for v in run.weights.values()} == {np.dtype(np.float32)}


# ------------------------------------------------------------------------- check functions
def _reply(key: str, arrays: dict, release: str | None = None, n: float = 10.0):
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    node = {"institution-id": "x", "refused": "", "detail": ""}
    if release is not None:
        node["release"] = release
    content = RecordDict({key: P.to_array_record(arrays), P.METRICS: MetricRecord({"num-examples": n}),
                          P.NODE: ConfigRecord(node)})
    return Message(content, dst_node_id=1, message_type="evaluate")


def test_check_statistics(schema):
    from models.encoder import statistics_layout
    from server.update_checks import check_statistics

    layout = statistics_layout(schema)
    good = {k: np.full(n, 3.0) for k, n in layout.items()}
    assert check_statistics(_reply(P.STATS, good), layout, exact=True) == ""
    assert check_statistics(_reply(P.STATS, dict(reversed(list(good.items())))), layout, exact=True) == ""
    k = next(iter(layout))
    noised = {**good, k: good[k] - 10.0}
    assert "negative" in check_statistics(_reply(P.STATS, noised), layout, exact=True)
    assert check_statistics(_reply(P.STATS, noised), layout, exact=False) == ""  # DP noise can go below 0
    cases = {"missing": ({x: v for x, v in good.items() if x != k}, f"missing ['{k}']"),
             "extra": ({**good, "zz": np.ones(2)}, "unexpected ['zz']"),
             "inf": ({**good, k: np.full(layout[k], np.inf)}, "NaN or infinite"),
             "2d": ({**good, k: np.ones((layout[k], 1))}, "has shape"),
             "int": ({**good, k: np.ones(layout[k], np.int64)}, "expected a float type")}
    for name, (arrays, why) in cases.items():
        assert why in check_statistics(_reply(P.STATS, arrays), layout, exact=False), name
    assert "num-examples" in check_statistics(_reply(P.STATS, good, n=float("nan")), layout, exact=False)


def test_check_evaluation(schema):
    from models.metrics import SCORE_BINS, EvaluationSums
    from privacy.dp_release import EVALUATION_BINS
    from server.update_checks import check_evaluation, fairness_layout

    fair = fairness_layout(schema)
    rng = np.random.default_rng(0)
    p, y = rng.uniform(size=500), rng.integers(0, 2, 500)
    exact = EvaluationSums.from_scores(p, y).to_arrays()
    groups = {k: np.ones(shape) for k, shape in fair.items()}
    assert check_evaluation(_reply(P.EVAL, {**exact, **groups}, "exact"), fair) == ""
    noised = {"hist-neg": rng.normal(0, 60, EVALUATION_BINS), "hist-pos": rng.normal(0, 60, EVALUATION_BINS),
              "sums": np.array([-5.0, -3.0, 1.0, -2.0, 4.0]), **{k: -v for k, v in groups.items()}}
    assert check_evaluation(_reply(P.EVAL, noised, "noised"), fair) == ""
    assert "negative" in check_evaluation(_reply(P.EVAL, noised, "exact"), fair)
    bad_fair = next(iter(fair))
    cases = {
        "no sums": ({k: v for k, v in exact.items() if k != "sums"}, "missing ['sums']"),
        "extra": ({**exact, "fair/zz": np.ones((2, 4))}, "unexpected ['fair/zz']"),
        "nan": ({**exact, "hist-pos": np.full(SCORE_BINS, np.nan)}, "NaN or infinite"),
        "bins": ({**exact, "hist-neg": np.ones(7), "hist-pos": np.ones(7)}, "bins"),
        "lengths": ({**exact, "hist-pos": np.ones(EVALUATION_BINS)}, "'hist-pos' has shape"),
        "sums": ({**exact, "sums": np.ones(4)}, "'sums' has shape"),
        "fair": ({**exact, bad_fair: np.ones((fair[bad_fair][0] + 1, 4))}, f"'{bad_fair}' has shape"),
    }
    for name, (arrays, why) in cases.items():
        assert why in check_evaluation(_reply(P.EVAL, arrays, "exact"), fair), name
    assert "unknown evaluation release" in check_evaluation(_reply(P.EVAL, exact, "leaky"), fair)


# ---------------------------------------------------------------- the report checks the ledger
def _report(run_dir: Path, capsys) -> tuple[int, str, dict]:
    from fedcredit.cli import main

    rc = main(["report", str(run_dir), "--json"])
    captured = capsys.readouterr()
    return rc, captured.err, json.loads((run_dir / "model_card.json").read_text())


def test_report_verifies_the_ledger_and_warns_when_it_does_not(refusing_run, tmp_path, capsys):
    from server.model_card import build_model_card

    _, run_dir, _ = refusing_run
    intact = build_model_card(run_dir)
    assert intact["ledger"]["verification"]["ok"] is True
    assert not any("ledger" in w.lower() for w in intact["warnings"])

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    lines = (copy / LEDGER_FILE).read_text().splitlines(keepends=True)
    entry = json.loads(lines[1])
    assert entry["kind"] == "statistics"
    entry["payload"]["contributors"] = entry["payload"]["contributors"][:1]  # history rewritten, not re-signed
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    (copy / LEDGER_FILE).write_text("".join(lines))

    code, err, card = _report(copy, capsys)
    assert code == 0
    assert "audit ledger does not verify" in err and "entry 1 (statistics)" in err
    assert card["ledger"]["verification"]["ok"] is False
    assert any("audit ledger does not verify" in w for w in card["warnings"])
    html = (copy / "report.html").read_text()
    assert "audit ledger does not verify" in html
    assert "does NOT verify" in (copy / "model_card.md").read_text()

    (copy / LEDGER_FILE).unlink()  # metrics.json names a ledger that is gone
    code, err, card = _report(copy, capsys)
    assert code == 0 and "no ledger.jsonl" in err
    assert any("audit ledger does not verify" in w for w in card["warnings"])
