"""The Flower ClientApp of an institution: Flower messages in, :mod:`clients.node` calls, replies out.

A refusal (exhausted budget, node policy, invalid data) is a normal reply that carries the
reason and no weights, so the server can record it and go on; the node process is never
crashed by bad data.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import node as N
from configs.errors import UserError
from fedcredit import protocol as P

app = ClientApp()


def _policy(context: Context) -> N.NodePolicy:
    return N.policy_from_context(dict(context.node_config), dict(context.run_config), str(context.run_id))


def _institution(context: Context) -> str:
    try:
        return _policy(context).institution_id
    except UserError:
        return str(context.node_config.get("institution-id", f"node-{context.node_id}"))


def _refusal(msg: Message, context: Context, exc: Exception) -> Message:
    if isinstance(exc, N.NodeRefusal):
        reason, detail = exc.reason, exc.detail
    else:
        from clients.validation import DataValidationError

        reason = P.REFUSED_DATA if isinstance(exc, DataValidationError) else P.REFUSED_POLICY
        detail = str(exc)
    return P.reply(msg, institution_id=_institution(context), metrics={"num-examples": 0.0},
                   refused=reason, detail=detail[:4000])


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
def statistics(msg: Message, context: Context) -> Message:
    try:
        policy = _policy(context)
        stats, metrics = N.answer_statistics(policy, _config(msg))
    except (N.NodeRefusal, UserError) as exc:
        return _refusal(msg, context, exc)
    return P.reply(msg, institution_id=policy.institution_id, arrays_key=P.STATS, arrays=stats, metrics=metrics)


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        policy = _policy(context)
        state = {"plan": _plan_state(context)}
        weights, metrics = N.train(policy, P.from_array_record(msg.content[P.ARRAYS]), _config(msg), state)
        _save_plan_state(context, state.get("plan") or {})
    except (N.NodeRefusal, UserError) as exc:
        return _refusal(msg, context, exc)
    return P.reply(msg, institution_id=policy.institution_id, arrays_key=P.ARRAYS, arrays=weights, metrics=metrics)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    try:
        policy = _policy(context)
        arrays, metrics, mode = N.evaluate(policy, P.from_array_record(msg.content[P.ARRAYS]), _config(msg))
    except (N.NodeRefusal, UserError) as exc:
        return _refusal(msg, context, exc)
    return P.reply(msg, institution_id=policy.institution_id, arrays_key=P.EVAL, arrays=arrays,
                   metrics=metrics, extra={"release": mode})
