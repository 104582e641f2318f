"""The Flower ClientApp of an institution: Flower messages in, :mod:`clients.node` calls, replies out.

A refusal (exhausted budget, node policy, invalid data, a request that failed the node's
checks) is a normal reply that carries the reason and no weights, so the server can record it
and go on; the node process is never crashed by bad data or a crafted message. Every handler
runs inside :func:`_fixed_reply_on_error`: an unexpected exception — a bug, which could in
principle depend on a borrower's row — becomes the same ``node-error`` refusal whatever caused
it, and its traceback stays in the node's log.

Secure aggregation (run config ``secure-aggregation = true``, :mod:`server.secure_aggregation`):
the train handler runs behind Flower's ``secaggplus_mod`` for the messages of the SecAgg+
protocol (they carry the ``secaggplus_configs`` record); the mod answers the key-exchange and
unmasking stages itself and calls the handler once per round, with the legacy ``fitins.*``
records. The handler then replies in the legacy ``fitres.*`` layout with the node's *update*
(new weights − global weights), which the mod masks; a refusal is a zero update with weight 0.
Ordinary train messages pass the mod untouched.
"""

from __future__ import annotations

import functools
import sys
import traceback

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import node as N
from configs.errors import UserError
from fedcredit import protocol as P

app = ClientApp()

NODE_ERROR_DETAIL = "the node hit an internal error; its log has the details"


def _policy(context: Context) -> N.NodePolicy:
    return N.policy_from_context(dict(context.node_config), dict(context.run_config), str(context.run_id))


def _institution(context: Context) -> str:
    try:
        return _policy(context).institution_id
    except UserError:
        return str(context.node_config.get("institution-id", f"node-{context.node_id}"))


def _reason(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, N.NodeRefusal):
        return exc.reason, exc.detail
    from clients.validation import DataValidationError
    from privacy.errors import PrivacyStateError

    if isinstance(exc, DataValidationError):
        # the full report (values, row numbers) stays here, in the node's log; the coordinator
        # learns the kinds of problem and the columns only
        print(str(exc), file=sys.stderr, flush=True)
        return P.REFUSED_DATA, exc.summary_for_server()
    if isinstance(exc, PrivacyStateError):  # unwritable, damaged or locked state: nothing was released
        return P.REFUSED_STATE, str(exc)
    return P.REFUSED_POLICY, str(exc)


def _fixed_reply_on_error(handler):
    """``handler``, with any exception other than a refusal turned into one fixed ``node-error``
    reply (the traceback goes to the node's log only, never to the coordinator)."""
    @functools.wraps(handler)
    def guarded(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception:  # noqa: BLE001 - deliberately everything: the reply must not depend on what failed
            _log_unexpected(f"{msg.metadata.message_type} message")
            return _node_error(msg, context)
    return guarded


def _node_error(msg: Message, context: Context) -> Message:
    """The one fixed reply to an unexpected error, whatever caused it."""
    return P.reply(msg, institution_id=_institution(context), metrics={"num-examples": 0.0},
                   refused=P.REFUSED_ERROR, detail=NODE_ERROR_DETAIL)


def _log_unexpected(what: str) -> None:
    """The traceback of an unexpected error, to the node's log only."""
    print(f"fedcredit node: unexpected error while handling a {what}:\n{traceback.format_exc()}", file=sys.stderr,
          flush=True)


def _arrays(msg: Message) -> dict:
    """The message's weights as NumPy arrays; a record that cannot be read is the message's fault."""
    if P.ARRAYS not in msg.content.array_records:
        raise N.NodeRefusal.invalid_request("the message carries no weights")
    try:
        return P.from_array_record(msg.content[P.ARRAYS])
    except Exception as exc:  # noqa: BLE001 - malformed bytes from the coordinator
        raise N.NodeRefusal.invalid_request(f"the weights cannot be read ({type(exc).__name__})") from None


def _refusal_fields(exc: Exception) -> dict:
    """A refusal's reply fields: no examples and the public figures the refusal carries (ε spent,
    budget) as metrics, the reason code and its sentence."""
    reason, detail = _reason(exc)
    metrics = {"num-examples": 0.0, **(exc.metrics if isinstance(exc, N.NodeRefusal) else {})}
    return {"metrics": metrics, "refused": reason, "detail": detail[:4000]}


def _refusal(msg: Message, context: Context, exc: Exception) -> Message:
    return P.reply(msg, institution_id=_institution(context), **_refusal_fields(exc))


def _config(msg: Message) -> dict:
    return dict(msg.content[P.CONFIG]) if P.CONFIG in msg.content.config_records else {}


def _plan_state(context: Context) -> dict:
    rec = context.state.config_records.get("privacy-plan")
    return dict(rec) if rec is not None else {}


def _save_plan_state(context: Context, plan: dict) -> None:
    from flwr.app import ConfigRecord

    if plan:
        context.state["privacy-plan"] = ConfigRecord(plan)


@app.query("stats")
@_fixed_reply_on_error
def statistics(msg: Message, context: Context) -> Message:
    try:
        policy = _policy(context)
        state = {"plan": _plan_state(context)}
        stats, metrics = N.answer_statistics(policy, _config(msg), state)
        _save_plan_state(context, state.get("plan") or {})
    except (N.NodeRefusal, UserError) as exc:
        return _refusal(msg, context, exc)
    return P.reply(msg, institution_id=policy.institution_id, arrays_key=P.STATS, arrays=stats, metrics=metrics)


def _secagg_when_asked(msg: Message, context: Context, call_next) -> Message:
    """Flower's SecAgg+ mod for the protocol's messages; other train messages pass straight through."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


@app.train(mods=[_secagg_when_asked])
@_fixed_reply_on_error
def train(msg: Message, context: Context) -> Message:
    """Train on the received weights; when the message asks (``evaluate-received``), first evaluate
    them — the previous round's model — and answer both in one reply (:mod:`server.folded_evaluation`).

    The folded evaluation is handled exactly as a separate ``evaluate`` message would be: the
    same request checks (:func:`clients.node.received_evaluation` checks the whole train request
    first, :func:`clients.node.evaluate` then the evaluation's own), the same DP release, budget
    check and ledger event on the holdout side, the same refusals. The two releases are
    separate: each is checked against the budget and recorded in the node's ledger before the
    reply leaves, and each is refused on its own — an unexpected error in either becomes that
    part's fixed ``node-error`` refusal — so the update part has the same layout whatever
    happened to the evaluation and the other way round. A message that fails the checks is
    refused as a whole before either release.
    """
    if "fitins.parameters" in msg.content.array_records:
        return _train_secure(msg, context)
    try:
        policy = _policy(context)
        received, cfg = _arrays(msg), _config(msg)
        evaluation_cfg = N.received_evaluation(policy, received, cfg)
    except (N.NodeRefusal, UserError) as exc:
        return _refusal(msg, context, exc)
    if evaluation_cfg is None:
        return _train_part(msg, context, policy, received, cfg)
    evaluation = _evaluation_part(msg, context, policy, received, evaluation_cfg)  # first: the order of releases
    try:
        reply = _train_part(msg, context, policy, received, cfg)
    except Exception:  # noqa: BLE001 - as _fixed_reply_on_error, but the evaluation (already released) still goes
        _log_unexpected(f"{msg.metadata.message_type} message's training")
        reply = _node_error(msg, context)
    return P.add_evaluation(reply, institution_id=policy.institution_id, **evaluation)


def _train_part(msg: Message, context: Context, policy: N.NodePolicy, received: dict, cfg: dict) -> Message:
    """The reply with the update (``arrays``, ``metrics``, ``node``), or with a refusal."""
    try:
        state = {"plan": _plan_state(context)}
        weights, metrics = N.train(policy, received, cfg, state)
        _save_plan_state(context, state.get("plan") or {})
    except (N.NodeRefusal, UserError) as exc:
        return _refusal(msg, context, exc)
    return P.reply(msg, institution_id=policy.institution_id, arrays_key=P.ARRAYS, arrays=weights, metrics=metrics)


def _evaluation_part(msg: Message, context: Context, policy: N.NodePolicy, received: dict, cfg: dict) -> dict:
    """The evaluation part of a train reply (:func:`fedcredit.protocol.add_evaluation`'s fields) —
    what :func:`evaluate` would answer to the same request: released, withheld (``release-eval =
    off``) or refused, an unexpected error as the fixed ``node-error`` refusal."""
    try:
        arrays, metrics, mode = N.evaluate(policy, received, cfg, {"plan": _plan_state(context)})
        return {"arrays": arrays, "metrics": metrics, "release": mode}
    except (N.NodeRefusal, UserError) as exc:
        return _refusal_fields(exc)
    except Exception:  # noqa: BLE001 - deliberately everything, as _fixed_reply_on_error
        _log_unexpected(f"{msg.metadata.message_type} message's evaluation of the received weights")
        return {"metrics": {"num-examples": 0.0}, "refused": P.REFUSED_ERROR, "detail": NODE_ERROR_DETAIL}


def _train_secure(msg: Message, context: Context) -> Message:
    """One SecAgg+ round: train as usual, reply with the update (legacy ``fitres.*`` layout)."""
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from clients.request_checks import secure_aggregation_settings

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    cfg = dict(fitins.config)
    # checked before training (a refusal here spends nothing; the guard sends its fixed reply)
    names, max_weight, clip = secure_aggregation_settings(cfg, len(fitins.parameters.tensors))
    before = dict(zip(names, parameters_to_ndarrays(fitins.parameters)))
    update = {k: np.zeros_like(v) for k, v in before.items()}
    info = {"institution-id": _institution(context), "refused": "", "detail": ""}
    metrics: dict = {}
    try:
        policy = _policy(context)
        state = {"plan": _plan_state(context)}
        weights, metrics = N.train(policy, before, cfg, state)
        _save_plan_state(context, state.get("plan") or {})
        # finite by construction (N.finite_weights and the checked global weights): no data-dependent branch
        update = {k: (weights[k] - before[k]).astype(before[k].dtype) for k in names}
    except (N.NodeRefusal, UserError) as exc:
        reason, detail = _reason(exc)
        info.update(refused=reason, detail=detail[:4000])
    except Exception:  # noqa: BLE001 - the same fixed reply as _fixed_reply_on_error, in the SecAgg+ layout
        _log_unexpected("SecAgg+ round")
        info.update(refused=P.REFUSED_ERROR, detail=NODE_ERROR_DETAIL)
    n = 0 if info["refused"] else int(metrics.get("num-examples", 0))
    # the mod sends round(n/M · 2²²)/2²² · Δ, clipped to ±c: report how much the clipping changed
    ratio = round(n / max_weight * P.SECAGG_QUANTIZATION_RANGE) / P.SECAGG_QUANTIZATION_RANGE
    size = sum(d.size for d in update.values()) or 1
    clipped = sum(int(np.sum(np.abs(d * ratio) > clip)) for d in update.values()) / size
    out = {k: float(v) for k, v in metrics.items() if k != "num-examples"}
    out.update(info)
    out[P.SECAGG_CLIPPED] = float(clipped)
    fitres = FitRes(status=Status(code=Code.OK, message=info["refused"] or "ok"),
                    parameters=ndarrays_to_parameters([update[k] for k in names]), num_examples=n, metrics=out)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


@app.evaluate()
@_fixed_reply_on_error
def evaluate(msg: Message, context: Context) -> Message:
    try:
        policy = _policy(context)
        arrays, metrics, mode = N.evaluate(policy, _arrays(msg), _config(msg), {"plan": _plan_state(context)})
    except (N.NodeRefusal, UserError) as exc:
        return _refusal(msg, context, exc)
    return P.reply(msg, institution_id=policy.institution_id, arrays_key=P.EVAL, arrays=arrays,
                   metrics=metrics, extra={"release": mode})
