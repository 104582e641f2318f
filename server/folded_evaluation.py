"""Evaluation inside the next round's train message: one message per node per round.

A round that evaluates used to cost every node two messages — ``train``, then ``evaluate`` of
the new global model — and in deployment every message pays the SuperNode's idle poll (Flower
polls the SuperLink every 3 s) and its transfers. When round *r* evaluates and round *r+1*
trains on the same nodes, the evaluation of round *r*'s model is instead asked for in round
*r+1*'s train message: the weights that message carries *are* round *r*'s global model. The
train config then holds ``evaluate-received = true`` (and ``cutoff-pd``); the node evaluates
the received weights on its holdout **before** it trains, and answers with both releases in
one reply (:mod:`fedcredit.protocol`):

* the update in the usual layout — ``arrays``, ``metrics``, ``node``;
* the evaluation in records of its own — ``eval`` (arrays), ``eval-metrics``, ``eval-node`` —
  accounted separately at the node (holdout side; the update on the training side), each
  refused or released on its own.

The order of releases at a node is the same as with separate messages (train *r*, evaluate
*r*, train *r+1*), and so is the number of evaluation releases the nodes plan for.

:func:`split_exchange` turns the round's replies into the two exchanges separate messages
would have produced, so updates and evaluations go through the same checks
(:mod:`server.update_checks`), sorting (:mod:`server.replies`) and pooling
(:mod:`server.evaluation`) as before. The evaluation is then attached to round *r*'s record,
with its own ledger entry (``evaluation``): round *r*'s ``round`` entry was written before the
evaluation existed. A reply without an evaluation part counts as that node's evaluation
failing (``evaluation_failed``) — unless the whole message was refused, which refuses both.

A separate ``evaluate`` message remains (:func:`folds_evaluation` is False) for the last round
(no next train message, and the recalibration needs its figures at once), ``fraction-train`` or
``fraction-evaluate`` below 1 (the nodes that train are then not the sample that evaluates),
``fold-evaluation = false`` and SecAgg+ runs: there a round's train reply is handled by Flower's
``secaggplus_mod``, which clears every ArrayRecord of the reply that carries the masked update
(the histograms would be lost), and ``SecAggPlusWorkflow`` hands the server only the legacy
``FitRes``; a SecAgg+ round is four exchanges, so folding would save one message in five.

If the run stops before round *r+1* sends anything (too few nodes left), or is resumed under
settings that do not fold, round *r* is evaluated with a separate message then
(:meth:`server.round_evaluation.RoundEvaluation.evaluate_pending`), under the rule of every
evaluation: with fewer than min(min-train-nodes, min-available-nodes) nodes connected it is
recorded as failed, with the reason, in round *r*'s ``evaluation`` entry.
"""

from __future__ import annotations

import copy

from flwr.app import Message, RecordDict

from fedcredit import protocol as P
from server.exchange import Exchange
from server.replies import refusal
from server.settings import RunSettings

#: why a node's evaluation is missing when its train reply carries none (and refused nothing)
NO_EVALUATION = "the reply to the train message carries no evaluation (evaluate-received was ignored)"

EVALUATION_PART = (P.EVAL, P.EVAL_METRICS, P.EVAL_NODE)


def folds_evaluation(s: RunSettings, rnd: int) -> bool:
    """True when round ``rnd``'s evaluation goes into round ``rnd + 1``'s train message.

    Only asked for rounds that evaluate (:func:`fedcredit.protocol.evaluation_rounds`).
    """
    return (s.fold_evaluation and rnd < s.num_server_rounds and not s.secure_aggregation
            and s.fraction_train >= 1.0 and s.fraction_evaluate >= 1.0)


def folded_evaluation_config(s: RunSettings) -> dict:
    """What a train message adds when it also asks for the evaluation of the weights it carries."""
    return {P.EVALUATE_RECEIVED: True, "cutoff-pd": s.cutoff_pd}


def _with_content(msg: Message, content: RecordDict) -> Message:
    """A reply like ``msg`` (same sender, same ``reply_to``) with other content."""
    return Message(content, metadata=copy.copy(msg.metadata))


def split_reply(msg: Message) -> tuple[Message, Message | None]:
    """(the update reply, the evaluation reply or None) of one answered train message.

    The update reply keeps every record but the evaluation part — so a reply with stray records
    still fails :func:`server.update_checks.check_update` as before. The evaluation reply is the
    evaluation part in the layout of an ``evaluate`` reply (``eval``, ``metrics``, ``node``).
    Without an evaluation part it is the train reply's refusal when the node refused the whole
    message, else None (the node did not evaluate).
    """
    content = msg.content
    train = _with_content(msg, RecordDict({k: v for k, v in content.items() if k not in EVALUATION_PART}))
    if P.EVAL_NODE in content.config_records:
        part = RecordDict({P.NODE: content.config_records[P.EVAL_NODE]})
        if P.EVAL_METRICS in content.metric_records:
            part[P.METRICS] = content.metric_records[P.EVAL_METRICS]
        if P.EVAL in content.array_records:
            part[P.EVAL] = content.array_records[P.EVAL]
        return train, _with_content(msg, part)
    if refusal(train) is not None:  # the whole message was refused: no evaluation either
        part = RecordDict({P.NODE: content.config_records[P.NODE]})
        if P.METRICS in content.metric_records:
            part[P.METRICS] = content.metric_records[P.METRICS]
        return train, _with_content(msg, part)
    return train, None


def split_exchange(ex: Exchange) -> tuple[Exchange, Exchange]:
    """The round's exchange as (the train exchange, the evaluation exchange) separate messages
    would have given: the same nodes sent to, errors and missing replies in both."""
    train = Exchange(sent=list(ex.sent), errors=dict(ex.errors), missing=list(ex.missing))
    evaluation = Exchange(sent=list(ex.sent), errors=dict(ex.errors), missing=list(ex.missing))
    for node, msg in ex.replies.items():
        if msg.has_error():
            train.replies[node] = evaluation.replies[node] = msg
            continue
        train.replies[node], part = split_reply(msg)
        if part is None:
            evaluation.errors[node] = NO_EVALUATION
        else:
            evaluation.replies[node] = part
    return train, evaluation
