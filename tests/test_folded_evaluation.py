"""One message per node per round: a round's evaluation inside the next round's train message.

Server side (:mod:`server.folded_evaluation`): a reply with both parts splits into the update
reply and the evaluation reply separate messages would have produced — real Flower ``Message``
objects, the real checks. The round driver with the real ClientApp in process
(:class:`tests.inprocess_grid.InProcessGrid`): one message per node per round, the same
figures and the same model as with separate evaluate messages, the evaluation attached to its
round with its own ledger entry, a broken evaluation part left out without touching the update.

Node side (:func:`clients.client_app.train`): crafted train messages into the handler with a
deployment-style node config and a real privacy state — both releases recorded in the node's
ledger before the reply, each on its own side; a budget refusal of the evaluation leaves the
update's part the same, with and without a target borrower in the holdout; a malformed
``evaluate-received`` is refused as a whole before either release.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import RecordDict

from clients import client_app as CA
from fedcredit import protocol as P
from server.exchange import Exchange
from server.folded_evaluation import NO_EVALUATION, split_exchange, split_reply
from server.ledger import LEDGER_FILE, read_ledger, verify_ledger
from server.replies import refusal, releases_nothing
from server.update_checks import check_evaluation, check_update, fairness_layout
from tests.inprocess_runs import _execute, _grid, _message, _run_config
from tests.node_messages import comparable, context, honest_round, overflow_weights, send, signature
from tests.node_messages import tables  # noqa: F401 (a fixture)

FOLDED = {P.EVALUATE_RECEIVED: True}


# ------------------------------------------------------------------------- server: the split
def _train_message(rnd: int = 2):
    from flwr.app import ConfigRecord

    return _message(RecordDict({P.CONFIG: ConfigRecord({"server-round": rnd, **FOLDED})}), "train")


def _weights():
    return {"w": np.ones((3, 2), np.float32), "b": np.zeros((2,), np.float32)}


def _evaluation_arrays() -> dict:
    from server.update_checks import evaluation_bin_counts

    bins = evaluation_bin_counts()[0]
    return {"hist-neg": np.full(bins, 3.0), "hist-pos": np.full(bins, 1.0), "sums": np.array([4.0 * bins, bins, 1, 1, 1])}


def test_a_reply_with_both_parts_splits_into_an_update_and_an_evaluation_reply():
    msg = _train_message()
    reply = P.reply(msg, institution_id="bank-a", arrays_key=P.ARRAYS, arrays=_weights(),
                    metrics={"num-examples": 100.0, "epsilon-spent": 0.4})
    P.add_evaluation(reply, institution_id="bank-a", arrays=_evaluation_arrays(), release="noised",
                     metrics={"num-examples": 30.0, "epsilon-spent": 0.45, "noise-multiplier": 20.0})
    update, evaluation = split_reply(reply)
    for part in (update, evaluation):  # the same sender and the same message answered
        assert part.metadata.src_node_id == reply.metadata.src_node_id
        assert part.metadata.reply_to_message_id == msg.metadata.message_id
    assert set(update.content.keys()) == {P.ARRAYS, P.METRICS, P.NODE}
    assert check_update(update, _weights()) == ""
    assert dict(update.content[P.METRICS]) == {"num-examples": 100.0, "epsilon-spent": 0.4}
    assert set(evaluation.content.keys()) == {P.EVAL, P.METRICS, P.NODE}
    assert check_evaluation(evaluation, {}) == ""
    assert dict(evaluation.content[P.METRICS])["epsilon-spent"] == 0.45
    assert P.node_info(evaluation) == {"institution-id": "bank-a", "refused": "", "detail": "", "release": "noised"}


def test_each_part_keeps_its_own_refusal_and_a_withheld_evaluation_is_withheld():
    reply = P.reply(_train_message(), institution_id="bank-a", arrays_key=P.ARRAYS, arrays=_weights(),
                    metrics={"num-examples": 100.0})
    P.add_evaluation(reply, institution_id="bank-a", metrics={"num-examples": 0.0, "epsilon-spent": 2.0},
                     refused=P.REFUSED_BUDGET, detail="holdout side")
    update, evaluation = split_reply(reply)
    assert refusal(update) is None and check_update(update, _weights()) == ""
    assert refusal(evaluation) == {"reason": P.REFUSED_BUDGET, "detail": "holdout side"}

    off = P.reply(_train_message(), institution_id="bank-a", metrics={"num-examples": 0.0},
                  refused=P.REFUSED_BUDGET, detail="training side")
    P.add_evaluation(off, institution_id="bank-a", metrics={"num-examples": 0.0}, release="off")
    update, evaluation = split_reply(off)
    assert refusal(update)["detail"] == "training side"
    assert refusal(evaluation) is None and releases_nothing(evaluation)


def test_a_message_refused_as_a_whole_refuses_both_and_a_missing_evaluation_is_a_failure():
    refused = P.reply(_train_message(), institution_id="bank-a", metrics={"num-examples": 0.0},
                      refused=P.REFUSED_REQUEST, detail="'evaluate-received' must be true or false")
    plain = P.reply(_train_message(), institution_id="bank-b", arrays_key=P.ARRAYS, arrays=_weights(),
                    metrics={"num-examples": 50.0})
    ex = Exchange(sent=[1, 2, 3, 4], replies={1: refused, 2: plain}, errors={}, missing=[4])
    from flwr.app import Error, Message

    ex.replies[3] = Message(Error(code=2, reason="boom"), reply_to=_train_message())
    ex.errors[3] = "boom"
    train, evaluation = split_exchange(ex)
    assert refusal(evaluation.replies[1]) == refusal(train.replies[1])
    assert refusal(evaluation.replies[1])["reason"] == P.REFUSED_REQUEST
    assert 2 not in evaluation.replies and evaluation.errors[2] == NO_EVALUATION and 2 in train.ok
    assert evaluation.errors[3] == train.errors[3] == "boom" and evaluation.missing == train.missing == [4]
    assert evaluation.sent == train.sent == [1, 2, 3, 4]


def test_stray_records_stay_with_the_update_and_still_fail_its_check():
    reply = P.reply(_train_message(), institution_id="bank-a", arrays_key=P.ARRAYS, arrays=_weights(),
                    metrics={"num-examples": 100.0})
    reply.content["smuggled"] = P.to_array_record({"x": np.zeros(3, np.float32)})
    P.add_evaluation(reply, institution_id="bank-a", arrays=_evaluation_arrays(), release="noised",
                     metrics={"num-examples": 30.0})
    update, evaluation = split_reply(reply)
    assert "expected exactly one ArrayRecord" in check_update(update, _weights())
    assert "smuggled" not in evaluation.content.keys() and check_evaluation(evaluation, {}) == ""


# ------------------------------------------------------------------ server + ClientApp in process
def _kinds(run_dir: Path) -> list[tuple[str, int | None]]:
    return [(e["kind"], e["payload"].get("round")) for e in read_ledger(run_dir / LEDGER_FILE)]


def _sent(grid) -> list[str]:
    return [t for _, t in grid.sent]


@pytest.mark.timeout(300)
def test_one_message_per_round_gives_the_figures_and_the_model_of_separate_evaluations(tmp_path):
    """Simulation releases exact evaluations: evaluating round r's model inside round r+1's
    train message must give exactly the figures of a separate evaluate message, and the nodes'
    noise plans must not change. (From round 2 on the DP-SGD draws differ: a simulation's noise
    seed covers the request, which now asks for the evaluation too — so round 1's model, evaluated
    in round 2's message, is the one compared in full.)"""
    common = {"num-server-rounds": 3, "fraction-evaluate": 1.0, "dp": True, "synthetic-scale": 0.15,
              "round-timeout": 120.0, "batch-size": 128}
    runs = {}
    for fold in (True, False):
        rc = _run_config(tmp_path, f"fold-{fold}", **common, **{"fold-evaluation": fold})
        grid = _grid(rc)
        summary, _ = _execute(rc, grid)
        assert summary["status"] == "completed", summary.get("stop_detail")
        runs[fold] = (summary, grid, Path(rc["run-dir"]))
    (folded, fgrid, fdir), (separate, sgrid, sdir) = runs[True], runs[False]
    # 3 nodes: a train message per round, the last round's evaluation and the final one separately
    assert _sent(fgrid).count("train") == 9 and _sent(fgrid).count("evaluate") == 6
    assert _sent(sgrid).count("train") == 9 and _sent(sgrid).count("evaluate") == 12
    f1, s1 = folded["history"][0], separate["history"][0]
    assert f1["model_sha256_after"] == s1["model_sha256_after"] and f1["global"] == s1["global"]
    assert f1["fairness"] == s1["fairness"] and f1["global"]["auc"] is not None
    for f, s in zip(folded["history"], separate["history"]):
        assert f["privacy"] == s["privacy"]  # the same σ, sample rate, steps and ε spent every round
        assert set(f["institutions"]) == set(s["institutions"]) and f["global"]["auc"] is not None
    assert [r.get("evaluated_with") for r in folded["history"]] == ["train", "train", None]
    assert verify_ledger(fdir / LEDGER_FILE).ok
    assert _kinds(fdir) == [("run-start", None), ("statistics", None), ("round", 1), ("evaluation", 1),
                            ("round", 2), ("evaluation", 2), ("round", 3), ("run-end", None)]
    entries = read_ledger(fdir / LEDGER_FILE)
    rounds = {e["payload"]["round"]: e["payload"] for e in entries if e["kind"] == "round"}
    for e in (e for e in entries if e["kind"] == "evaluation"):
        p = e["payload"]
        assert p["model_sha256"] == rounds[p["round"]]["model_sha256_after"]  # the model it evaluated
        assert p["metrics"]["global"] == folded["history"][p["round"] - 1]["global"]
        assert rounds[p["round"]]["evaluation_in"] == f"round {p['round'] + 1}'s train messages"
        assert rounds[p["round"]]["metrics"]["global"] is None
    assert _kinds(sdir).count(("evaluation", 1)) == 0


def _folded_tamper(tamper):
    """The real ClientApp; virtual node 2's train replies get their evaluation part broken (its
    separate evaluate replies pass untouched)."""
    from clients.client_app import app
    from simulation.faults import ClientAppWithMods

    def mod(msg, ctx, call_next):
        reply = call_next(msg, ctx)
        if int(ctx.node_config["partition-id"]) == 2 and P.EVAL_NODE in reply.content.config_records:
            tamper(reply)
        return reply

    return ClientAppWithMods(app, [mod])


def _nan_histogram(reply) -> None:
    arrays = P.from_array_record(reply.content[P.EVAL])
    arrays["hist-neg"] = np.full_like(arrays["hist-neg"], np.nan)
    reply.content[P.EVAL] = P.to_array_record(arrays)


@pytest.mark.timeout(300)
def test_a_broken_evaluation_part_is_rejected_and_recorded_and_the_update_is_still_used(tmp_path):
    rc = _run_config(tmp_path, "tamper", **{"num-server-rounds": 2, "fraction-evaluate": 1.0})
    summary, _ = _execute(rc, _grid(rc, app=_folded_tamper(_nan_histogram)))
    assert summary["status"] == "completed"
    r1, r2 = summary["history"]
    (bad,) = r1["evaluation_rejected"]
    assert "NaN" in r1["evaluation_rejected"][bad] and bad not in r1["institutions"]
    assert len(r1["institutions"]) == 2 and r1["global"]["auc"] is not None
    assert bad in r2["participants"] and not r2["rejected"]  # its update in the same reply was fine
    run_dir = Path(rc["run-dir"])
    assert verify_ledger(run_dir / LEDGER_FILE).ok
    entries = read_ledger(run_dir / LEDGER_FILE)
    assert [(e["payload"]["round"], e["payload"]["stage"], e["payload"]["institution"])
            for e in entries if e["kind"] == "rejected-reply"] == [(1, "evaluation", bad)]
    (evaluation,) = [e["payload"] for e in entries if e["kind"] == "evaluation"]
    assert list(evaluation["evaluation_rejected"]) == [bad] and evaluation["evaluated_with"] == "train"


@pytest.mark.timeout(300)
def test_a_run_that_stops_before_the_next_train_message_records_the_pending_evaluation(tmp_path):
    """Round 1's evaluation was to go with round 2's train messages, but too few nodes are left to
    send them. The pending evaluation is then tried as a separate message, under the rule of every
    evaluation (at least min(min-train-nodes, min-available-nodes) connected): here it cannot be,
    and round 1 gets its own ``evaluation`` entry saying why, before the run's ``run-stopped``."""
    from tests.inprocess_grid import InProcessGrid

    class Emptying(InProcessGrid):  # after round 1's training one of the three nodes is gone
        def get_node_ids(self):
            return [11, 12] if any(t == "train" for _, t in self.sent) else list(self.contexts)

    rc = _run_config(tmp_path, "stop", **{"num-server-rounds": 3, "fraction-evaluate": 1.0, "round-timeout": 2.0,
                                          "min-train-nodes": 3})
    grid = _grid(rc, grid_cls=Emptying)
    summary, _ = _execute(rc, grid)
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 1
    (r1,) = summary["history"]
    assert r1["evaluated_with"] == "evaluate" and "evaluation_in" not in r1
    assert r1["evaluation_failed"] == {"*": "only 2 node(s) connected; evaluation skipped"}
    assert "evaluate" not in _sent(grid)
    entries = read_ledger(Path(rc["run-dir"]) / LEDGER_FILE)
    kinds = [(e["kind"], e["payload"].get("round")) for e in entries]
    assert kinds.index(("evaluation", 1)) < kinds.index(("run-stopped", None))
    (evaluation,) = [e["payload"] for e in entries if e["kind"] == "evaluation"]
    assert evaluation["evaluated_with"] == "evaluate" and evaluation["evaluation_failed"] == r1["evaluation_failed"]
    assert (Path(rc["run-dir"]) / "model").is_dir()  # round 1's model is still exported


@pytest.mark.timeout(300)
def test_a_run_resumed_without_folding_evaluates_the_pending_round_with_an_evaluate_message(tmp_path, monkeypatch):
    """The server died in round 2 after its train replies (carrying round 1's evaluation) came in;
    resumed from round 1's checkpoint with ``fold-evaluation = false``, it evaluates round 1's
    model with evaluate messages first, then trains rounds 2 and 3 with separate evaluations."""
    rc = _run_config(tmp_path, "resume", **{"num-server-rounds": 3, "fraction-evaluate": 1.0})
    crashed, _ = _execute(rc, _grid(rc), crash_at=2, monkeypatch=monkeypatch)
    assert crashed is None
    run_dir = Path(rc["run-dir"])
    rc.update({"resume-from": str(run_dir), "fold-evaluation": False})
    grid = _grid(rc)
    resumed, _ = _execute(rc, grid, resume_from=run_dir)
    assert resumed["status"] == "completed" and resumed["rounds_completed"] == 3
    sent = _sent(grid)
    assert sent[:3] == ["evaluate"] * 3 and sent[3:6] == ["train"] * 3
    r1, r2, r3 = resumed["history"]
    assert r1["evaluated_with"] == "evaluate" and r1["global"]["auc"] is not None and "evaluation_in" not in r1
    assert "evaluated_with" not in r2 and r2["global"]["auc"] is not None and r3["global"]["auc"] is not None
    assert verify_ledger(run_dir / LEDGER_FILE).ok
    assert _kinds(run_dir) == [("run-start", None), ("statistics", None), ("round", 1), ("evaluation", 1),
                               ("run-start", None), ("resume", None), ("evaluation", 1), ("round", 2), ("round", 3),
                               ("run-end", None)]


# ------------------------------------------------------------------------------- node side
def _events(state) -> list[tuple[str, int | None, str]]:
    from privacy.accountant import read_state

    if not Path(state).is_dir():  # nothing was ever recorded
        return []
    entries = read_state(state)
    return [(e["kind"], e["round"], e["rows"]) for e in entries[0]["events"]] if entries else []


def _parts(reply) -> tuple[dict, dict]:
    """The comparable signatures (tests/test_untrusted_coordinator.py) of the update and the evaluation part."""
    return tuple(comparable(signature(part)) for part in split_reply(reply))


def test_the_node_records_the_evaluation_and_the_update_separately_before_it_replies(tables, tmp_path):
    schema, table = tables["schema"], tables["table"]
    cfg, w, _ = honest_round(schema, table)
    ctx = context(tables["paths"]["full"], tmp_path / "s")
    first = send(CA.train, "train", cfg, w, ctx)
    before = _events(tmp_path / "s")
    assert signature(first)["refused"] == "" and ("train", 1, "train") in before
    received = P.from_array_record(first.content[P.ARRAYS])  # stands for round 1's global model
    reply = send(CA.train, "train", {**cfg, "server-round": 2, **FOLDED}, received, ctx)
    assert set(reply.content.keys()) == {P.ARRAYS, P.METRICS, P.NODE, P.EVAL, P.EVAL_METRICS, P.EVAL_NODE}
    after = _events(tmp_path / "s")
    # the evaluation of the received weights (round 1's model, holdout side), then round 2's training
    assert after[:len(before)] == before and after[len(before):] == [("evaluation", 1, "holdout"), ("train", 2, "train")]
    update, evaluation = _parts(reply)
    assert update["refused"] == evaluation["refused"] == "" and update["finite"] and evaluation["finite"]
    assert P.node_info(split_reply(reply)[1])["release"] == "noised"
    eval_eps = dict(reply.content[P.EVAL_METRICS])["epsilon-spent"]
    train_eps = dict(reply.content[P.METRICS])["epsilon-spent"]
    from privacy.accountant import read_state

    assert 0 < eval_eps <= train_eps == pytest.approx(read_state(tmp_path / "s")[0]["epsilon_spent"])
    fairness = fairness_layout(schema)
    assert check_evaluation(split_reply(reply)[1], fairness, None) == ""


def _exhaust_holdout_side(tables, state, path) -> None:
    """Record an earlier evaluation that leaves the holdout side just under the budget."""
    from clients.node_data import load_node_data
    from clients.node_policy import policy_from_context
    from clients.node_privacy import open_ledger
    from privacy.events import PrivacyEvent

    ctx = context(path, state)
    policy = policy_from_context(dict(ctx.node_config), {}, "")
    data = load_node_data(policy)
    with open_ledger(policy, data) as ledger:
        def event(sigma):
            return PrivacyEvent("evaluation", sigma, 1.0, 1, run_id="earlier", rows="holdout", split=data.split.split)

        lo, hi = 0.3, 50.0  # σ whose release brings the ledger to 97 % of the budget
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ledger.epsilon_if([event(mid)]) > 0.97 * ledger.max_epsilon else (lo, mid)
        ledger.record([event(hi)])


def test_an_evaluation_refused_for_budget_leaves_the_update_part_alike_with_and_without_the_target(tables, tmp_path):
    schema, table = tables["schema"], tables["table"]
    cfg, w, _ = honest_round(schema, table)
    folded = {**cfg, "server-round": 2, **FOLDED}
    parts = {}
    for k in ("full", "no-holdout-target"):
        ctx = context(tables["paths"][k], tmp_path / k)
        send(CA.train, "train", cfg, w, ctx)  # round 1: the run's plan
        _exhaust_holdout_side(tables, tmp_path / k, tables["paths"][k])
        parts[k] = _parts(send(CA.train, "train", folded, w, ctx))
        assert [e for e in _events(tmp_path / k) if e[1] == 2] == [("train", 2, "train")]  # nothing else recorded
    (upd_a, ev_a), (upd_b, ev_b) = parts["full"], parts["no-holdout-target"]
    assert ev_a["refused"] == ev_b["refused"] == P.REFUSED_BUDGET and ev_a["arrays"] == ev_b["arrays"] == {}
    assert ev_a["metric-keys"] == ev_b["metric-keys"] and ev_a["node-keys"] == ev_b["node-keys"]
    assert upd_a == upd_b and upd_a["refused"] == "" and set(upd_a["arrays"]) == {P.ARRAYS}
    # … and the update part is the one a node whose evaluation was released sends
    ctx = context(tables["paths"]["full"], tmp_path / "fresh")
    send(CA.train, "train", cfg, w, ctx)
    released_update, released_eval = _parts(send(CA.train, "train", folded, w, ctx))
    assert released_eval["refused"] == "" and released_update == upd_a


@pytest.mark.parametrize("value, rnd, why", [("yes", 2, "must be true or false"), (1, 2, "must be true or false"),
                                              (True, 1, "has none")], ids=["text", "number", "round-1"])
def test_a_malformed_evaluate_received_is_refused_as_a_whole_before_either_release(tables, tmp_path, value, rnd, why):
    cfg, w, _ = honest_round(tables["schema"], tables["table"])
    ctx = context(tables["paths"]["full"], tmp_path / "s")
    if rnd > 1:
        send(CA.train, "train", cfg, w, ctx)
    before = _events(tmp_path / "s")
    reply = send(CA.train, "train", {**cfg, "server-round": rnd, P.EVALUATE_RECEIVED: value}, w, ctx)
    s = signature(reply)
    assert s["refused"] == P.REFUSED_REQUEST and why in s["detail"] and s["arrays"] == {}
    assert P.EVAL_NODE not in reply.content.config_records
    assert _events(tmp_path / "s") == before
    _, evaluation = split_reply(reply)
    assert refusal(evaluation)["reason"] == P.REFUSED_REQUEST  # the server records both as refused


def test_a_node_that_releases_no_evaluations_withholds_that_part_and_trains(tables, tmp_path):
    cfg, w, _ = honest_round(tables["schema"], tables["table"])
    ctx = context(tables["paths"]["full"], tmp_path / "s", **{"release-eval": "off"})
    send(CA.train, "train", cfg, w, ctx)
    reply = send(CA.train, "train", {**cfg, "server-round": 2, **FOLDED}, w, ctx)
    update, evaluation = split_reply(reply)
    assert releases_nothing(evaluation) and refusal(evaluation) is None
    assert check_update(update, w) == "" and refusal(update) is None
    assert not [e for e in _events(tmp_path / "s") if e[0] == "evaluation"]


def test_weights_that_overflow_on_a_holdout_borrower_give_alike_finite_parts(tables, tmp_path):
    """The evaluation attack of tests/test_untrusted_coordinator.py through a train message: weights
    within the bound whose forward pass is not finite on the target holdout borrower only. Both
    parts of the reply — the evaluation of the crafted weights and the training from them — have
    the same keys, shapes and refusal with and without the target, and every number is finite."""
    schema, table = tables["schema"], tables["table"]
    cfg, _, enc = honest_round(schema, table)
    spec, w = overflow_weights(enc, tables["holdout_target"])
    folded = {**cfg, "model-spec": __import__("json").dumps(spec.to_dict()), "server-round": 2, **FOLDED}
    parts = {k: _parts(send(CA.train, "train", folded, w, context(tables["paths"][k], tmp_path / k)))
             for k in ("full", "no-holdout-target")}
    assert parts["full"] == parts["no-holdout-target"]
    update, evaluation = parts["full"]
    assert update["finite"] and evaluation["finite"]
    assert update["refused"] == "" and set(update["arrays"]) == {P.ARRAYS}
    assert evaluation["refused"] == "" and set(evaluation["arrays"][P.EVAL]) >= {"hist-neg", "hist-pos", "sums"}
    assert [e[:2] for e in _events(tmp_path / "full") if e[0] != "count"] == [("evaluation", 1), ("train", 2)]


@pytest.mark.parametrize("broken", ["evaluate", "train"])
def test_an_unexpected_error_in_one_part_is_that_parts_fixed_refusal_and_leaves_the_other(tables, tmp_path,
                                                                                        monkeypatch, broken):
    """A bug (here injected) in the evaluation or in the training becomes that part's fixed
    ``node-error`` refusal; the other part is released exactly as without the error."""
    from clients import node as N

    cfg, w, _ = honest_round(tables["schema"], tables["table"])
    folded = {**cfg, "server-round": 2, **FOLDED}
    expected = _parts(send(CA.train, "train", folded, w, context(tables["paths"]["full"], tmp_path / "ok")))

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a detail that must not reach the coordinator")

    monkeypatch.setattr(N, broken, bug)
    update, evaluation = _parts(send(CA.train, "train", folded, w, context(tables["paths"]["full"], tmp_path / "bug")))
    failed, kept = (evaluation, update) if broken == "evaluate" else (update, evaluation)
    assert failed["refused"] == P.REFUSED_ERROR and failed["detail"] == CA.NODE_ERROR_DETAIL and failed["arrays"] == {}
    assert kept == (expected[0] if broken == "evaluate" else expected[1]) and kept["refused"] == ""
    kinds = [e[0] for e in _events(tmp_path / "bug") if e[0] != "count"]
    assert kinds == (["train"] if broken == "evaluate" else ["evaluation"])


@pytest.mark.timeout(300)
def test_a_run_resumed_without_federated_evaluation_records_the_pending_one_as_not_done(tmp_path, monkeypatch):
    """Resumed with ``fraction-evaluate = 0``: round 1's pending evaluation is not sent but recorded
    as not done, with the reason, in its own ledger entry; nothing is evaluated after it."""
    rc = _run_config(tmp_path, "off", **{"num-server-rounds": 3, "fraction-evaluate": 1.0})
    _execute(rc, _grid(rc), crash_at=2, monkeypatch=monkeypatch)
    run_dir = Path(rc["run-dir"])
    rc.update({"resume-from": str(run_dir), "fraction-evaluate": 0.0})
    grid = _grid(rc)
    resumed, _ = _execute(rc, grid, resume_from=run_dir)
    assert resumed["status"] == "completed" and "evaluate" not in _sent(grid)
    r1 = resumed["history"][0]
    assert r1["evaluated_with"] == "evaluate" and r1["evaluation_failed"] == {
        "*": "fraction-evaluate is 0: no federated evaluation"}
    entries = read_ledger(run_dir / LEDGER_FILE)
    last = [e["payload"] for e in entries if e["kind"] == "evaluation"][-1]
    assert last["round"] == 1 and last["evaluation_failed"] == r1["evaluation_failed"]
