"""The node against a hostile coordinator (issue 12): its replies may depend on one borrower only
through an accounted mechanism — never through a NaN, an exception, a refusal reason, a key or
a shape.

Each attack is run as the coordinator would run it: real Flower ``Message`` objects into the
ClientApp's handlers (``clients/client_app.py``), a deployment-style node config, a real table
and a real privacy state. The reply to the crafted message is compared between a node whose
table holds the target borrower and one whose table does not: the same keys, shapes,
finiteness and refusal reason. The accounting attacks check that noise is fresh for every
release and that the spend survives a re-exported table. The messages and the reply's
signature are built in tests/node_messages.py (shared with tests/test_folded_evaluation.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients import client_app as CA
from clients import node as N
from clients.dataset import holdout_mask
from clients.virtual_nodes import use_virtual_nodes
from configs.schema import apply_transform
from fedcredit import protocol as P
from models.network import ModelSpec, build_model, get_weights
from privacy.accountant import read_state
from server.folded_evaluation import split_reply
from simulation.virtual_nodes import CONSORTIUM, virtual_policy
from tests.inprocess_runs import _message
from tests.node_messages import (BUDGET, assert_same_reply_shape, comparable, context, honest_round,
                                 overflow_weights, send, signature, with_encoder)
from tests.node_messages import tables  # noqa: F401 (a fixture)

KNOWN_REFUSALS = {"", P.REFUSED_REQUEST, P.REFUSED_BUDGET, P.REFUSED_POLICY, P.REFUSED_DATA, P.REFUSED_STATE,
                  P.REFUSED_ERROR}


# ---------------------------------------------------------------------------------------- set-up
def target_value(tables, who: str, feature: str) -> float:
    f = tables["schema"].feature(feature)
    return float(apply_transform(f.transform, np.clip(float(tables[who][feature]), *f.range)))


# ---------------------------------------------------------------------------------------- 1. encoder
def zero_width_knot_at(encoder_json: str, feature: str, value: float, gap: float = 0.0) -> str:
    d = json.loads(encoder_json)
    f = next(x for x in d["features"] if x["name"] == feature)
    knots = sorted([k for k in f["knots"] if abs(k - value) > 1e-3] + [value, value + gap])
    f["knots"], f["width"] = knots, len(knots) - 1
    start = 0
    for x in d["features"]:
        x["start"] = start
        start += x["width"]
    return json.dumps(d)


def test_an_encoder_with_a_zero_width_knot_at_a_borrowers_value_is_refused_alike(tables, tmp_path):
    """The issue's attack: a zero-width interval exactly at the target's transformed value made
    only that row encode to NaN, and the reply NaN exactly when the target was sampled."""
    cfg, _, _ = honest_round(tables["schema"], tables["table"])
    cfg, w = with_encoder(cfg, zero_width_knot_at(cfg["encoder"], "credit_limit",
                                                  target_value(tables, "train_target", "credit_limit")))
    replies = [send(CA.train, "train", cfg, w, context(tables["paths"][k], tmp_path / k))
               for k in ("full", "no-train-target")]
    assert_same_reply_shape(*replies)
    s = signature(replies[0])
    assert s["refused"] == P.REFUSED_REQUEST and "credit_limit" in s["detail"] and not s["arrays"]
    assert not (tmp_path / "full" / "privacy").exists(), "refused before any data was read or spent"


def test_an_encoder_with_the_narrowest_allowed_gap_at_a_borrower_gives_finite_alike_replies(tables, tmp_path):
    """Just inside the rule (gap = 1e-9 of the range): trained, and the replies look alike."""
    from clients.request_checks import MIN_KNOT_GAP

    f = tables["schema"].feature("credit_limit")
    t_range = float(np.diff(apply_transform(f.transform, np.asarray(f.range, dtype=float)))[0])
    cfg, _, _ = honest_round(tables["schema"], tables["table"])
    cfg, w = with_encoder(cfg, zero_width_knot_at(cfg["encoder"], "credit_limit",
                                                  target_value(tables, "train_target", "credit_limit"),
                                                  gap=1.01 * MIN_KNOT_GAP * max(1.0, t_range)))
    replies = [send(CA.train, "train", cfg, w, context(tables["paths"][k], tmp_path / k))
               for k in ("full", "no-train-target")]
    assert_same_reply_shape(*replies)
    assert signature(replies[0])["refused"] == "" and signature(replies[0])["arrays"], signature(replies[0])["detail"]


# ---------------------------------------------------------------------------------------- 2. weights
def test_weights_that_overflow_on_one_borrowers_pattern_give_finite_alike_replies(tables, tmp_path):
    import torch

    schema, table = tables["schema"], tables["table"]
    cfg, _, enc = honest_round(schema, table)
    spec, w = overflow_weights(enc, tables["train_target"])
    cfg["model-spec"] = json.dumps(spec.to_dict())
    # the crafted weights do what the attack wants: the target's logit is not finite, the others are
    model = build_model(spec)
    from models.network import set_weights

    set_weights(model, w)
    with torch.no_grad():
        x_t = torch.as_tensor(enc.transform(tables["train_target"].to_frame().T))
        others = table.drop(index=tables["train_target"].name).iloc[:3]  # three borrowers besides the target
        x_o = torch.as_tensor(enc.transform(others))
        assert not torch.isfinite(model(x_t)).all() and torch.isfinite(model(x_o)).all()
    replies = [send(CA.train, "train", cfg, w, context(tables["paths"][k], tmp_path / k))
               for k in ("full", "no-train-target")]
    assert_same_reply_shape(*replies)
    s = signature(replies[0])
    assert s["refused"] == "" and s["arrays"], s["detail"]
    assert read_state(tmp_path / "full")[0]["epsilon_spent"] <= BUDGET


def test_weights_out_of_bounds_or_of_the_wrong_kind_are_refused_alike(tables, tmp_path):
    cfg, w, _ = honest_round(tables["schema"], tables["table"])
    for name, crafted in [("huge", {**w, "layers.0.weight": np.full_like(w["layers.0.weight"], 3e38)}),
                          ("nan", {**w, "layers.0.bias": np.full_like(w["layers.0.bias"], np.nan)}),
                          ("float64", {**w, "layers.0.bias": w["layers.0.bias"].astype(np.float64)}),
                          ("shape", {**w, "layers.0.bias": w["layers.0.bias"][:-1]})]:
        replies = [send(CA.train, "train", cfg, crafted, context(tables["paths"][k], tmp_path / name / k))
                   for k in ("full", "no-train-target")]
        assert_same_reply_shape(*replies)
        assert signature(replies[0])["refused"] == P.REFUSED_REQUEST, name


# ---------------------------------------------------------------------------------------- 3. evaluation
def test_an_evaluation_with_the_target_in_the_holdout_never_raises_and_looks_alike(tables, tmp_path):
    """The issue's attack: a target whose PD was NaN made the handler raise (negative bincount
    index) — the exception itself was the membership oracle."""
    schema, table = tables["schema"], tables["table"]
    cfg, _, enc = honest_round(schema, table)
    spec, w = overflow_weights(enc, tables["holdout_target"])
    cfg["model-spec"] = json.dumps(spec.to_dict())
    replies = [send(CA.evaluate, "evaluate", cfg, w, context(tables["paths"][k], tmp_path / k))
               for k in ("full", "no-holdout-target")]
    assert_same_reply_shape(*replies)
    s = signature(replies[0])
    assert s["refused"] == "" and set(s["arrays"][P.EVAL]) >= {"hist-neg", "hist-pos", "sums"}
    assert P.node_info(replies[0])["release"] == "noised"


def test_a_small_holdout_gets_coarse_bins_and_planned_evaluation_noise(tables, tmp_path):
    """A ~140-row holdout: the node plans the evaluation noise below the default and chooses the
    coarsest histogram, from its released (noisy) holdout count."""
    from privacy.dp_release import EVALUATION_BIN_CHOICES, EVALUATION_NOISE_MULTIPLIER

    cfg, w, _ = honest_round(tables["schema"], tables["table"])
    ctx = context(tables["paths"]["full"], tmp_path / "s")
    send(CA.train, "train", cfg, w, ctx)  # plans the run (its evaluations' σ included)
    reply = send(CA.evaluate, "evaluate", cfg, w, ctx)
    metrics = dict(reply.content[P.METRICS])
    assert metrics["noise-multiplier"] < EVALUATION_NOISE_MULTIPLIER
    assert len(P.from_array_record(reply.content[P.EVAL])["hist-neg"]) == min(EVALUATION_BIN_CHOICES)
    holdout = int(holdout_mask(tables["table"], tables["schema"]).sum())
    assert abs(metrics["num-examples"] - holdout) < 120  # the released, noisy count: within 6 σ of its noise


# ---------------------------------------------------------------------------------------- 4. fresh noise
def simulation_context(data_dir, state_root, **run_config) -> Context:
    """A virtual node's context. Its handlers, called here directly, get its policy from simulation
    as they do behind simulation's ClientApp (simulation.virtual_nodes.with_virtual_nodes)."""
    use_virtual_nodes(CONSORTIUM)
    return Context(run_id=7, node_id=1, node_config={"partition-id": 0, "num-partitions": 1},
                   state=RecordDict(), run_config={"data-dir": str(data_dir), "state-root": str(state_root),
                                                   "sim-max-epsilon": 8.0, **run_config})


def test_two_runs_with_one_seed_cannot_be_combined_to_cancel_the_noise(tables, tmp_path):
    """The issue's attack: two runs with the same --seed on one state root drew the same noise and
    the same Poisson sample; with two σ the updates combine to the exact sum of clipped gradients,
    ĝ = (σ₂u₁ − σ₁u₂)/(σ₂ − σ₁). With fresh noise ĝ keeps noise of std √2·σ₁σ₂·C/(n̂·|σ₂ − σ₁|).
    The same seed on a fresh state root repeats the run exactly (reproducible research)."""
    import torch

    from privacy.dpsgd import DPSGDGradients

    data = tmp_path / "data"
    data.mkdir()
    pd.read_csv(tables["paths"]["full"]).to_csv(data / "bank.csv", index=False)
    cfg, _, enc = honest_round(tables["schema"], tables["table"])
    spec = ModelSpec("scorecard", enc.n_outputs, ())
    w0 = get_weights(build_model(spec))
    # one full-batch step of plain SGD (q = 1): the update is exactly (S + σ·C·z) / n̂
    cfg.update({"model-spec": json.dumps(spec.to_dict()), "optimizer": "sgd", "learning-rate": 1.0,
                "batch-size": 1_000_000, "num-server-rounds": 1})

    def release(state_root, run_id: str, **extra):
        reply = send(CA.train, "train", {**cfg, "run-id": run_id, **extra}, w0, simulation_context(data, state_root))
        assert signature(reply)["refused"] == "", signature(reply)
        w1 = P.from_array_record(reply.content[P.ARRAYS])
        u = np.concatenate([(w0[k] - w1[k]).ravel() for k in sorted(w0)]).astype(np.float64)
        return u, float(reply.content[P.METRICS]["noise-multiplier"]), float(reply.content[P.METRICS]["num-examples"])

    (u1, s1, n1) = release(tmp_path / "root", "run-a", **{"target-epsilon": 1.0})
    (u2, s2, n2) = release(tmp_path / "root", "run-b", **{"target-epsilon": 0.4})
    assert n1 == n2 and s2 > s1  # one released count for the table version; a second σ
    g_hat = (s2 * u1 - s1 * u2) / (s2 - s1)
    # the exact, noiseless mean of clipped gradients the attacker is after
    policy = virtual_policy(0, 1, {"data-dir": str(data)})
    x, y, _, _ = N.load_node_data(policy).matrices(enc)
    model = build_model(spec)
    exact_rule = DPSGDGradients(0.0, 1.0, 1.0, expected_batch_size=n1)
    exact_rule.compute(model, torch.as_tensor(x), torch.as_tensor(y))
    exact = np.concatenate([dict(model.named_parameters())[k].grad.numpy().ravel() for k in sorted(w0)])
    residual = np.sqrt(np.mean((g_hat - exact) ** 2))
    noise_left = math.sqrt(2) * s1 * s2 / (n1 * abs(s2 - s1))
    assert residual > 0.5 * noise_left, (residual, noise_left)  # same noise would leave ~1e-7
    # reproducible: the same seed on a fresh state root gives the same release, whatever the run id
    u3, s3, _ = release(tmp_path / "fresh", "run-z", **{"target-epsilon": 1.0})  # another run id, as simulate gives
    assert s3 == s1 and np.array_equal(u3, u1)


def test_deployment_noise_comes_from_the_operating_system(tables, tmp_path):
    cfg, w, _ = honest_round(tables["schema"], tables["table"])
    ctx = context(tables["paths"]["full"], tmp_path / "a")
    one = P.from_array_record(send(CA.train, "train", cfg, w, ctx).content[P.ARRAYS])
    two = P.from_array_record(send(CA.train, "train", {**cfg, "server-round": 2}, w, ctx).content[P.ARRAYS])
    fresh = P.from_array_record(send(CA.train, "train", cfg, w, context(tables["paths"]["full"], tmp_path / "b"))
                                .content[P.ARRAYS])
    assert not np.allclose(one["layers.0.weight"], two["layers.0.weight"])
    assert not np.allclose(one["layers.0.weight"], fresh["layers.0.weight"])  # not even on a fresh state


# ---------------------------------------------------------------------------------------- 5. budget
@pytest.mark.parametrize("variant", ["rekeyed", "dropped"])
def test_a_rekeyed_or_shortened_table_keeps_the_spend_and_the_sides(variant, tables, tmp_path):
    """The borrowers are the same people: a re-export must not restart their protection, nor move
    anyone between training rows and holdout."""
    schema, table = tables["schema"], tables["table"]
    state = tmp_path / "state"
    cfg, w, _ = honest_round(schema, table)
    send(CA.train, "train", cfg, w, context(tables["paths"]["full"], state))
    before = read_state(state)[0]
    assert before["epsilon_spent"] > 0
    reply = send(CA.train, "train", {**cfg, "run-id": "run-2"}, w, context(tables["paths"][variant], state))
    after = read_state(state)[0]
    assert after["epsilon_spent"] >= before["epsilon_spent"], "the spend carried over"
    assert len(after["events"]) > len(before["events"])
    assert signature(reply)["refused"] in ("", P.REFUSED_BUDGET)
    other = pd.read_csv(tables["paths"][variant])
    full_sides = holdout_mask(table, schema)
    if variant == "rekeyed":  # the same rows: the same table version, the same sides
        assert list(after["data_versions"]) == list(before["data_versions"])
        assert np.array_equal(holdout_mask(other, schema), full_sides)
    else:  # one row fewer: a new version, and every remaining borrower on the side it was on
        assert len(after["data_versions"]) == 2
        assert np.array_equal(holdout_mask(other, schema), full_sides[:-1])


def test_the_budget_refusal_is_the_same_with_and_without_the_target(tables, tmp_path):
    cfg, w, _ = honest_round(tables["schema"], tables["table"], **{"num-server-rounds": 1})
    for k in ("full", "no-train-target"):
        ctx = context(tables["paths"][k], tmp_path / k, **{"max-epsilon": 0.3})
        send(CA.train, "train", cfg, w, ctx)
    replies = [send(CA.train, "train", {**cfg, "server-round": 2}, w,
                    context(tables["paths"][k], tmp_path / k, **{"max-epsilon": 0.3}))
               for k in ("full", "no-train-target")]
    a, b = (signature(r) for r in replies)
    assert a["refused"] == b["refused"] == P.REFUSED_BUDGET
    assert a["arrays"] == b["arrays"] == {} and a["metric-keys"] == b["metric-keys"]


# ---------------------------------------------------------------------------------------- 6. fuzzing
def _mutate_encoder(text: str, how: str, where: int) -> str:
    d = json.loads(text)
    numeric = [f for f in d["features"] if f["kind"] == "numeric"]
    f = numeric[where % len(numeric)]
    k = f["knots"]
    i = where % len(k)
    if how in ("nan", "inf", "-inf", "huge"):
        k[i] = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 1e308}[how]
    elif how == "zero-width":
        k[i] = k[i - 1] if i else k[1]
    elif how == "reversed":
        f["knots"] = k[::-1]
    elif how == "wrong-width":
        f["width"] += 1
    elif how == "string-knot":
        k[i] = "1.0"
    elif how == "missing-feature":
        d["features"].pop(where % len(d["features"]))
    elif how == "extra-field":
        f["scale"] = 3.0
    elif how == "too-many-knots":
        f["knots"] = list(np.linspace(k[0], k[-1], 5000))
        f["width"] = 4999
    elif how == "not-json":
        return text[: len(text) // 2]
    return json.dumps(d, allow_nan=True)


def _mutate_weights(w: dict, how: str, where: int) -> dict:
    out = {k: v.copy() for k, v in w.items()}
    name = sorted(out)[where % len(out)]
    a = out[name]
    if how in ("nan", "inf", "-inf", "huge", "just-inside"):
        a.flat[where % a.size] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 3e38,
                                  "just-inside": 1e4}[how]
    elif how == "float64":
        out[name] = a.astype(np.float64)
    elif how == "int32":
        out[name] = a.astype(np.int32)
    elif how == "float16":
        out[name] = a.astype(np.float16)
    elif how == "shape":
        out[name] = a.reshape(-1)[:-1] if a.size > 1 else np.zeros((2,), np.float32)
    elif how == "missing":
        out.pop(name)
    elif how == "extra":
        out["layers.99.weight"] = np.zeros((2, 2), np.float32)
    return out


INVALID_ENCODER_MUTATIONS = {"nan", "inf", "-inf", "zero-width", "reversed", "wrong-width", "string-knot",
                             "missing-feature", "extra-field", "too-many-knots", "not-json"}
ENCODER_MUTATIONS = sorted(INVALID_ENCODER_MUTATIONS) + ["huge", "none"]  # a huge last knot is valid
INVALID_WEIGHT_MUTATIONS = {"nan", "inf", "-inf", "huge", "float64", "int32", "float16", "shape", "missing", "extra"}
WEIGHT_MUTATIONS = sorted(INVALID_WEIGHT_MUTATIONS) + ["just-inside", "none"]
CONFIG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                          st.text(max_size=20))
CONFIG_KEYS = ["server-round", "num-server-rounds", "local-epochs", "batch-size", "learning-rate", "clipping-norm",
               "proximal-mu", "target-epsilon", "evaluate-every", "seed", "dp", "optimizer", "cutoff-pd", "run-id",
               "ledger-head", "model-spec", P.EVALUATE_RECEIVED]


@pytest.fixture(scope="module")
def fuzz_node(tables, tmp_path_factory):
    cfg, w, _ = honest_round(tables["schema"], tables["table"], hidden=(8,))
    ctx = context(tables["paths"]["full"], tmp_path_factory.mktemp("fuzz"), **{"max-epsilon": 1e3})
    return cfg, w, ctx


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(handler=st.sampled_from(["train", "train-evaluating", "evaluate", "stats"]),
       enc=st.one_of(st.just("none"), st.sampled_from(ENCODER_MUTATIONS)),
       wts=st.one_of(st.just("none"), st.sampled_from(WEIGHT_MUTATIONS)), where=st.integers(0, 10_000),
       config=st.dictionaries(st.sampled_from(CONFIG_KEYS), CONFIG_VALUES, max_size=2))
def test_fuzzed_encoders_weights_and_configs_never_crash_the_node_nor_leak_a_non_finite_number(
        fuzz_node, handler, enc, wts, where, config):
    cfg, w, ctx = fuzz_node
    if handler == "train-evaluating":  # a train message that also asks to evaluate the received weights
        cfg = {**cfg, "server-round": 2, P.EVALUATE_RECEIVED: True}
    crafted = dict(cfg, **{k: v for k, v in config.items() if v is not None})
    if enc != "none":
        crafted["encoder"] = _mutate_encoder(cfg["encoder"], enc, where)
    weights = w if wts == "none" else _mutate_weights(w, wts, where)
    fn = {"train": CA.train, "train-evaluating": CA.train, "evaluate": CA.evaluate, "stats": CA.statistics}[handler]
    try:
        record = ConfigRecord(crafted)
    except Exception:  # a value Flower itself cannot carry never reaches a node
        return
    message_type = {"stats": P.STATS_MESSAGE, "train-evaluating": "train"}.get(handler, handler)
    reply = fn(_message(RecordDict({P.ARRAYS: P.to_array_record(weights), P.CONFIG: record}), message_type), ctx)
    # a reply with an evaluation part: the update and the evaluation, each checked like a reply of its own
    parts = split_reply(reply) if P.EVAL_NODE in reply.content.config_records else (reply,)
    for s in map(signature, parts):
        assert s["finite"], s
        assert s["refused"] in KNOWN_REFUSALS - {P.REFUSED_ERROR}, s
    s = signature(reply)
    if handler != "stats" and (enc in INVALID_ENCODER_MUTATIONS or wts in INVALID_WEIGHT_MUTATIONS):
        assert s["refused"] == P.REFUSED_REQUEST and not s["arrays"] and len(parts) == 1, (enc, wts, s)


# ---------------------------------------------------------------------------------------- 7. red team
# A second pass as a hostile coordinator (session 2): every handler and every release the crafted
# weights reach, messages out of order, claimed run ids and ledger heads. Each compares the reply
# of a node whose table holds the target with one whose table does not.
TARGET_FREE = {"train": "no-train-target", "evaluate": "no-holdout-target", "stats": "no-train-target"}
HANDLERS = {"train": (CA.train, "train"), "evaluate": (CA.evaluate, "evaluate"),
            "stats": (CA.statistics, P.STATS_MESSAGE)}


def both_nodes(tables, root, handler: str, cfg: dict, weights: dict, **node_config):
    """The reply of the node with the target and of the node without it (each on its own state)."""
    fn, message_type = HANDLERS[handler]
    return [send(fn, message_type, cfg, weights, context(tables["paths"][k], root / k, **node_config))
            for k in ("full", TARGET_FREE[handler])]


def overflow_round(tables, who: str, **extra):
    """An honest-looking round config with weights that overflow on ``who``'s row only."""
    cfg, _, enc = honest_round(tables["schema"], tables["table"], **extra)
    spec, w = overflow_weights(enc, tables[who])
    cfg["model-spec"] = json.dumps(spec.to_dict())
    return cfg, w


@pytest.mark.parametrize("handler", ["train", "evaluate", "stats"])
def test_overflow_weights_at_the_target_look_alike_in_every_handler(handler, tables, tmp_path):
    """The float32-overflow weights of the issue, sent to each handler with the target on the side
    that handler reads (the statistics query reads no weights: its reply must not care either)."""
    cfg, w = overflow_round(tables, "holdout_target" if handler == "evaluate" else "train_target")
    replies = both_nodes(tables, tmp_path, handler, cfg, w)
    assert_same_reply_shape(*replies)
    assert signature(replies[0])["refused"] == "", signature(replies[0])["detail"]


@pytest.mark.parametrize("personalize", ["calibration", "head", "full"])
def test_overflow_weights_in_the_last_round_with_personalisation_look_alike(personalize, tables, tmp_path):
    """The last round also fine-tunes the node's personal model (from the crafted weights: the
    calibration sees the target's non-finite logit, the head its overflowing body features) and
    releases the noised label count behind the information weight: still one fixed reply shape,
    and a personal model is written in both worlds."""
    from clients.personalization import personal_dir

    cfg, w = overflow_round(tables, "train_target", **{
        "num-server-rounds": 1, "personalize": personalize, "personal-epochs": 1,
        "aggregation-weight": "information", "local-layers": "output-bias"})
    replies = both_nodes(tables, tmp_path, "train", cfg, w)
    assert_same_reply_shape(*replies)
    s = signature(replies[0])
    assert s["refused"] == "" and "aggregation-weight" in s["metric-keys"], s["detail"]
    for k in ("full", "no-train-target"):
        assert (personal_dir(tmp_path / k, "run-1") / "model" / "model.json").is_file(), k


def test_an_encoder_with_a_zero_width_knot_is_refused_alike_by_evaluation_and_statistics(tables, tmp_path):
    """The zero-width knot at a holdout borrower's value, sent with an evaluation; and with a
    statistics query (which has no encoder: the knot must not reach the data either)."""
    cfg, _, _ = honest_round(tables["schema"], tables["table"])
    cfg, w = with_encoder(cfg, zero_width_knot_at(cfg["encoder"], "credit_limit",
                                                  target_value(tables, "holdout_target", "credit_limit")))
    evaluations = both_nodes(tables, tmp_path / "e", "evaluate", cfg, w)
    assert_same_reply_shape(*evaluations)
    assert signature(evaluations[0])["refused"] == P.REFUSED_REQUEST
    assert not (tmp_path / "e" / "full" / "privacy").exists()
    statistics = both_nodes(tables, tmp_path / "s", "stats", cfg, w)
    assert_same_reply_shape(*statistics)


def _sequence(tables, root, steps):
    """Play ``steps`` — (handler, config changes) — against both nodes; the signatures side by side."""
    cfg, w, _ = honest_round(tables["schema"], tables["table"], **{"num-server-rounds": 3})
    ctxs = {k: context(tables["paths"][k], root / k) for k in ("full", "no-train-target", "no-holdout-target")}
    out = []
    for handler, changes in steps:
        fn, message_type = HANDLERS[handler]
        out.append({k: signature(send(fn, message_type, {**cfg, **changes}, w, ctx)) for k, ctx in ctxs.items()})
    return out


@pytest.mark.parametrize("order", ["evaluate-first", "round-backwards", "same-round-twice", "another-run-id"])
def test_messages_out_of_order_never_raise_and_look_alike(order, tables, tmp_path):
    """Evaluation before any training, a round number that goes backwards, the same round twice,
    a run id that changes mid-run: every reply alike with and without either target, never an
    error, and every release recorded (the spend only grows)."""
    steps = {"evaluate-first": [("evaluate", {}), ("train", {}), ("evaluate", {"server-round": 1})],
             "round-backwards": [("train", {"server-round": 3}), ("train", {"server-round": 1}),
                                 ("evaluate", {"server-round": 2})],
             "same-round-twice": [("train", {}), ("train", {}), ("evaluate", {}), ("evaluate", {})],
             "another-run-id": [("train", {}), ("train", {"run-id": "run-x", "server-round": 2}),
                                ("evaluate", {"run-id": "run-1", "server-round": 2})]}[order]
    spent = []
    for replies in _sequence(tables, tmp_path, steps):
        full = replies.pop("full")
        for other in replies.values():
            assert comparable(full) == comparable(other) and full["finite"], (full, other)
        assert full["refused"] in ("", P.REFUSED_BUDGET), full
        spent.append(read_state(tmp_path / "full")[0]["epsilon_spent"])
    assert spent == sorted(spent) and spent[-1] > 0


def test_ledger_heads_that_do_not_chain_are_kept_as_shown_and_malformed_ones_refused_alike(tables, tmp_path):
    """The node cannot verify the operator's chain; it keeps every head it is shown (a head that
    goes back or forks is what ``fedcredit ledger verify --heads-file`` later catches) and refuses
    one that is not a sha256 digest before reading any row."""
    from clients.ledger_heads import read_ledger_heads

    cfg, w, _ = honest_round(tables["schema"], tables["table"])
    heads = ["a" * 64, "b" * 64, "a" * 64]  # a fork: round 2 shows a head, round 3 goes back to round 1's
    for rnd, head in enumerate(heads, start=1):
        replies = both_nodes(tables, tmp_path, "train", {**cfg, "server-round": rnd, "ledger-head": head}, w)
        assert_same_reply_shape(*replies)
    assert [h["head"] for h in read_ledger_heads(tmp_path / "full")] == heads
    for bad in ("A" * 64, "a" * 63, "not a hash", "../../etc/passwd"):
        for handler in ("train", "evaluate"):
            replies = both_nodes(tables, tmp_path / "bad", handler, {**cfg, "ledger-head": bad}, w)
            assert_same_reply_shape(*replies)
            assert signature(replies[0])["refused"] == P.REFUSED_REQUEST, (bad, handler)
    assert not (tmp_path / "bad" / "full" / "privacy").exists()


@pytest.mark.parametrize("key,value", [("num-server-rounds", 100_000), ("local-epochs", 1_000),
                                       ("evaluate-every", 1), ("batch-size", 10_000_000),
                                       ("learning-rate", 10.0), ("clipping-norm", 1e3), ("proximal-mu", 1e3),
                                       ("seed", 2**63 - 1), ("seed", -1), ("seed", -(2**63)), ("seed", 2**63),
                                       ("num-server-rounds", 100_001),
                                       ("batch-size", 2**70), ("learning-rate", 1e308)])
def test_huge_config_values_are_refused_or_served_alike(key, value, tables, tmp_path):
    """The largest values the checks allow and the first ones they do not: refused alike (before
    the data when out of bounds, by the public budget when the plan cannot fit) or trained alike."""
    from clients.request_checks import CONFIG_LIMITS

    cfg, w, _ = honest_round(tables["schema"], tables["table"])
    if key == "local-epochs":  # 1,000 epochs cannot fit ε = 2: a refusal, not an hour of training
        cfg["num-server-rounds"] = 100_000
    replies = both_nodes(tables, tmp_path, "train", {**cfg, key: value}, w)
    assert_same_reply_shape(*replies)
    s = signature(replies[0])
    _, lo, hi = CONFIG_LIMITS[key]
    if not lo <= value <= hi:
        assert s["refused"] == P.REFUSED_REQUEST and key in s["detail"], s
        assert not (tmp_path / "full" / "privacy").exists()
    else:
        assert s["refused"] in ("", P.REFUSED_BUDGET), s


def test_two_runs_with_one_seed_on_one_state_never_share_a_noise_seed(tables, tmp_path):
    """Simulation seeds: the same ``--seed``, the same round, run ids alike or not — every release
    on one state root gets its own seed, because the ledger's release counter is part of it; and a
    repeated message (same run, same round) is a new release with new noise."""
    from clients.node_privacy import inputs_digest, noise_seed, open_ledger

    data = tmp_path / "data"
    data.mkdir()
    pd.read_csv(tables["paths"]["full"]).to_csv(data / "bank.csv", index=False)
    cfg, w, _ = honest_round(tables["schema"], tables["table"], **{"num-server-rounds": 3, "target-epsilon": 2.0})
    seeds, updates = [], []
    for run_id in ("run-a", "run-a", "run-b"):
        ctx = simulation_context(data, tmp_path / "root")
        policy = N.policy_from_context(dict(ctx.node_config), dict(ctx.run_config), str(ctx.run_id))
        with open_ledger(policy, N.load_node_data(policy)) as ledger:
            seeds.append(noise_seed(policy, {**cfg, "run-id": run_id}, ledger, "train-1", inputs_digest(w, cfg)))
        reply = send(CA.train, "train", {**cfg, "run-id": run_id}, w, ctx)
        assert signature(reply)["refused"] == "", signature(reply)
        updates.append(P.from_array_record(reply.content[P.ARRAYS])["layers.0.weight"])
    assert len(set(seeds)) == 3
    assert not np.allclose(updates[0], updates[1]) and not np.allclose(updates[1], updates[2])


@pytest.mark.parametrize("handler", ["train", "stats", "evaluate"])
def test_a_request_the_node_policy_forbids_is_refused_before_any_row_is_read(handler, tables, tmp_path):
    """Training without DP on a node that forbids it, or any DP release on a node without a
    max-epsilon: the refusal is decided from the message and the node config alone — the same
    reply whether the table holds the target, or does not even pass validation (which would
    otherwise answer ``invalid-data``)."""
    cfg, w, _ = honest_round(tables["schema"], tables["table"])
    broken = tmp_path / "broken.csv"
    pd.read_csv(tables["paths"]["full"]).head(20).to_csv(broken, index=False)  # too few rows to validate
    cases = [({"dp": False}, {})] if handler != "evaluate" else []
    cases.append(({}, {"max-epsilon": ""}))
    for changes, node_config in cases:
        fn, message_type = HANDLERS[handler]
        replies = [send(fn, message_type, {**cfg, **changes}, w, context(path, tmp_path / f"s{i}", **node_config))
                   for i, path in enumerate([tables["paths"]["full"], tables["paths"]["no-train-target"], broken])]
        for other in replies[1:]:
            assert_same_reply_shape(replies[0], other)
        assert signature(replies[0])["refused"] == P.REFUSED_POLICY, signature(replies[0])


def test_serving_opens_no_channel_to_the_coordinator():
    """docs/privacy.md: ``fedcredit serve`` sends nothing to the coordinator. Checked on the source:
    nothing the serving command reaches — every fedcredit module it imports, at any depth — imports
    Flower, gRPC or an HTTP client; it only listens (uvicorn/starlette) for the institution's own
    applications."""
    from tests.conftest import REPO
    from tests.source_imports import PACKAGES, imports_of

    def module_file(name: str):
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            for candidate in (REPO.joinpath(*parts[:k]).with_suffix(".py"), REPO.joinpath(*parts[:k], "__init__.py")):
                if parts[0] in PACKAGES and candidate.is_file():
                    return candidate
        return None

    seen, todo, external = set(), [REPO / "clients" / "serve_command.py"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports_of(path):
            target = module_file(name)
            if target is not None:
                todo.append(target)
            elif name.split(".")[0] not in PACKAGES:
                external.add(name)
    assert {"decision_http.py", "decision_log.py"} <= {p.name for p in seen}  # the walk followed the serving code
    talking = {n for n in external if n.split(".")[0] in {"flwr", "grpc", "requests", "httpx", "aiohttp", "urllib3"}
               or n.startswith(("urllib.request", "http.client"))}
    assert talking == set(), sorted(talking)


def secure_round(cfg: dict, weights: dict, **secagg) -> RecordDict:
    """A train message in the legacy layout the SecAgg+ mod hands the handler (``fitins.*``)."""
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    names = sorted(weights)
    config = {**cfg, P.SECAGG_ARRAY_NAMES: json.dumps(names), P.SECAGG_MAX_WEIGHT: 10_000.0,
              P.SECAGG_CLIPPING: 8.0, **secagg}
    return compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters([weights[k] for k in names]), config), True)


def secure_signature(reply) -> dict:
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    assert not reply.has_error(), reply.error
    res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    arrays = parameters_to_ndarrays(res.parameters)
    metrics = dict(res.metrics)
    numbers = [v for v in metrics.values() if isinstance(v, float)]
    return {"shapes": [a.shape for a in arrays], "metric-keys": sorted(metrics), "refused": metrics.get("refused"),
            "finite": all(np.all(np.isfinite(a)) for a in arrays) and all(math.isfinite(v) for v in numbers)}


SECAGG_ATTACKS = {"overflow": {}, "zero-width-knot": {}, "max-weight-zero": {P.SECAGG_MAX_WEIGHT: 0.0},
                  "max-weight-tiny": {P.SECAGG_MAX_WEIGHT: 1e-300}, "clipping-nan": {P.SECAGG_CLIPPING: float("nan")},
                  "names-short": {P.SECAGG_ARRAY_NAMES: json.dumps(["layers.0.weight"])}}


@pytest.mark.parametrize("attack", sorted(SECAGG_ATTACKS))
def test_a_secure_aggregation_round_with_crafted_weights_or_settings_looks_alike(attack, tables, tmp_path):
    """The SecAgg+ path (:func:`clients.client_app._train_secure`): the update it hands the mod is
    finite and its reply alike with and without the target, for overflow weights at the target and
    a zero-width knot at its value (refused before the data). Secure-aggregation settings the mod's
    arithmetic cannot use (M = 0 divided by; M = 1e-300 overflowed after the round was trained and
    its ε spent) are refused before any row is read: the guard's fixed reply, nothing spent."""
    cfg, w = overflow_round(tables, "train_target")
    if attack == "zero-width-knot":
        cfg, w = with_encoder(cfg, zero_width_knot_at(cfg["encoder"], "credit_limit",
                                                      target_value(tables, "train_target", "credit_limit")))
    replies = [CA.train(_message(secure_round(cfg, w, **SECAGG_ATTACKS[attack]), "train"),
                        context(tables["paths"][k], tmp_path / k)) for k in ("full", "no-train-target")]
    if SECAGG_ATTACKS[attack]:
        a, b = (P.node_info(r) for r in replies)
        assert a == b and a["refused"] == P.REFUSED_ERROR, (a, b)
        assert not (tmp_path / "full" / "privacy").exists(), "refused before any data was read or spent"
        return
    a, b = (secure_signature(r) for r in replies)
    assert a == b and a["finite"], (a, b)
    assert a["refused"] == ("" if attack == "overflow" else P.REFUSED_REQUEST), a


MESSAGE = st.tuples(st.sampled_from(["train", "evaluate", "stats"]), st.integers(0, 4), st.sampled_from(["r1", "r2"]),
                    st.booleans())


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(sequence=st.lists(MESSAGE, min_size=2, max_size=4))
def test_fuzzed_message_orders_never_crash_the_node_nor_overspend(tables, fuzz_node, sequence):
    """Any order of train / evaluate / statistics messages — rounds repeated, skipped, going back,
    0 for a train message, run ids interleaved, weights overflowing for many rows or not — on a
    node with a small budget: never a node error, never a non-finite number, and the ledger never
    passes the budget."""
    import tempfile

    cfg, w, _ = fuzz_node
    budget = 0.5
    ctx = context(tables["paths"]["full"], tempfile.mkdtemp(prefix="order-fuzz-"), **{"max-epsilon": budget})
    crafted = {k: np.where(v > 0, np.float32(1e4), np.float32(-1e4)).astype(np.float32) if k.endswith("weight")
               else v for k, v in w.items()}  # every unit saturates: many rows' logits overflow
    for handler, rnd, run_id, overflow in sequence:
        fn, message_type = HANDLERS[handler]
        reply = send(fn, message_type, {**cfg, "server-round": rnd, "run-id": run_id}, crafted if overflow else w, ctx)
        s = signature(reply)
        assert s["finite"], s
        assert s["refused"] in {"", P.REFUSED_REQUEST, P.REFUSED_BUDGET}, s
        if handler == "train" and rnd == 0:
            assert s["refused"] == P.REFUSED_REQUEST, s
    if (Path(ctx.node_config["state-dir"]) / "privacy").exists():
        assert read_state(ctx.node_config["state-dir"])[0]["epsilon_spent"] <= budget
