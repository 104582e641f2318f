"""The evaluation step of the round loop: when a round's global model is evaluated, how, and where
the outcome goes (:class:`server.consortium.ConsortiumRun` delegates to :class:`RoundEvaluation`).

* **When.** A round evaluates when :func:`fedcredit.protocol.evaluation_rounds` says so
  (``evaluate-every``, and always the last round). Its evaluation goes into the next round's
  train message when :func:`server.folded_evaluation.folds_evaluation` allows — the round is then
  *pending* (its record says ``evaluation_in``) — else the sampled nodes get an ``evaluate``
  message at once (:meth:`RoundEvaluation.evaluate`).
* **How.** ``configure_evaluate`` of the strategy on the nodes connected now (fewer than its
  ``min_evaluate_nodes``: the evaluation is recorded as failed, with the reason), one exchange,
  the replies sorted by :func:`server.update_checks.check_evaluation` (a node whose policy
  releases nothing is withheld) and the accepted ones pooled (:mod:`server.evaluation`) into the
  round's record, with one progress event (and so one ledger entry) per refused or rejected node.
* **A pending round.** The next round's train replies are split (:func:`server.folded_evaluation.
  split_exchange`); the evaluation part goes into the pending round's record — already
  checkpointed and in the ledger — with its own ledger entry (``evaluation``), a progress event
  (``evaluation-end``) and a log line (:meth:`RoundEvaluation.attach`). A run that stops before
  that train message, or is resumed under settings that do not fold, evaluates the pending round's
  model (the current global model) with a separate message instead.
* **The final evaluation.** After the last round the model is recalibrated on the pooled
  histograms of the last completed round's evaluation (kept here: ``last_pooled``) and the
  calibrated network evaluated once more (:meth:`RoundEvaluation.final`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from fedcredit import protocol as P
from models.metrics import EvaluationSums
from server.evaluation import calibration_record, pool_evaluations
from server.exchange import Exchange
from server.folded_evaluation import folded_evaluation_config, folds_evaluation, split_exchange
from server.replies import RunStopped, by_institution, releases_nothing, sort_replies
from server.round_config import as_record, evaluate_config
from server.run_log import emit, evaluation_line
from server.run_records import drop_node_sums
from server.strategies import snapshot_grid
from server.update_checks import check_evaluation, fairness_layout

if TYPE_CHECKING:
    from server.consortium import ConsortiumRun


class RoundEvaluation:
    """The evaluations of one run: the pending round, the last pooled sums, and the steps that
    send, sort, pool and record them (reading the run's settings, model, grid and records)."""

    def __init__(self, run: "ConsortiumRun"):
        self.run = run
        self.pending: int | None = None  # a round whose evaluation goes with the next train message
        self.last_pooled: tuple[int, EvaluationSums] | None = None  # (round, pooled sums) of the last evaluation

    # ------------------------------------------------------------- in the round loop
    def train_config(self) -> dict:
        """What the next train message adds: with a round pending, the request to evaluate the
        weights it carries (they are that round's global model) before training on them."""
        return folded_evaluation_config(self.run.settings) if self.pending is not None else {}

    def take_folded(self, replies: Exchange, secure) -> Exchange:
        """The train replies without the pending round's evaluation part, which goes into that
        round's record (:meth:`attach`); unchanged with no round pending or under SecAgg+."""
        if self.pending is None or secure:
            return replies
        replies, evaluation = split_exchange(replies)
        self.attach(evaluation, "train")
        return replies

    def after_training(self, rnd: int, record: dict) -> None:
        """Round ``rnd``'s evaluation, when due: pending (the next train message carries it) or now."""
        s = self.run.settings
        if rnd in P.evaluation_rounds(rnd, s.num_server_rounds, s.evaluate_every):
            if folds_evaluation(s, rnd):
                self.pending = rnd
                record["evaluation_in"] = f"round {rnd + 1}'s train messages"
            else:
                self.evaluate(rnd, record)

    def keep_pooled(self, rnd: int, record: dict) -> bool:
        """Take round ``rnd``'s pooled sums out of ``record`` (it is checkpointed and public) and keep
        them for the recalibration; False when the record has none."""
        if "_pooled_eval" not in record:
            return False
        self.last_pooled = (rnd, record.pop("_pooled_eval"))
        return True

    # --------------------------------------------------------------------- the step
    def evaluate(self, rnd: int, record: dict, weights: dict[str, np.ndarray] | None = None) -> None:
        """configure → send → aggregate the evaluation of ``weights`` (default: the current global
        model) on the sampled nodes' holdouts; the outcome goes into ``record``."""
        if self.run.settings.fraction_evaluate <= 0:
            return
        ex = self.send(rnd, weights)
        if isinstance(ex, str):
            record["evaluation_failed"] = {"*": ex}
            return
        self.aggregate(rnd, record, ex)

    def send(self, rnd: int, weights: dict[str, np.ndarray] | None = None) -> Exchange | str:
        """The evaluate messages of round ``rnd`` sent and their replies collected; or why none was sent."""
        run = self.run
        nodes = sorted(run.grid.get_node_ids())
        if len(nodes) < max(1, run.strategy.min_evaluate_nodes):
            return f"only {len(nodes)} node(s) connected; evaluation skipped"
        config = as_record(evaluate_config(run.settings, run.node_run_id, rnd, run.encoder.to_json(),
                                           json.dumps(run.spec.to_dict()), run.ledger_head))
        messages = run.strategy.configure_evaluate(
            rnd, P.to_array_record(run.weights if weights is None else weights), config,
            snapshot_grid(run.grid, nodes))
        return run.send(messages)

    def aggregate(self, rnd: int, record: dict, ex: Exchange) -> None:
        """Sort the evaluation replies and pool the accepted ones into ``record``."""
        run = self.run
        fairness = fairness_layout(run.schema)
        replies = sort_replies(ex, lambda msg: check_evaluation(msg, fairness), order=run.institution_order,
                               withhold=releases_nothing)
        stage = "final-evaluation" if record.get("final") else "evaluation"
        run.record_outcomes(replies, rnd, refused=("refusal", stage), rejected=("rejected-reply", stage))
        record.update(pool_evaluations(replies, run.name, run.schema))
        record["evaluation_failed"] = by_institution(replies.dropped, run.name)
        record["evaluation_refused"] = by_institution(replies.refused, run.name)
        record["evaluation_rejected"] = by_institution(replies.rejected, run.name)

    # ------------------------------------------------------------ the pending round
    def attach(self, ex: Exchange | str, carried_by: str) -> None:
        """The evaluation of the pending round's model — from the next round's train replies, or a
        separate message (``ex`` a string: why none was sent) — into that round's record, which is
        already checkpointed and in the ledger: its own ledger entry, a progress event, a log line."""
        run = self.run
        rnd, self.pending = self.pending, None
        record = next(r for r in reversed(run.history) if r.get("round") == rnd)
        record.pop("evaluation_in", None)
        record["evaluated_with"] = carried_by
        if isinstance(ex, str):
            record["evaluation_failed"] = {"*": ex}
        else:
            self.aggregate(rnd, record, ex)
        if self.keep_pooled(rnd, record):
            drop_node_sums([r for r in run.history if r is not record])
        run.audit.evaluation(record)
        emit(evaluation_line(record, run.settings.num_server_rounds))
        run.recorder.event("evaluation-end", round=rnd, carried_by=carried_by,
                           auc=(record.get("global") or {}).get("auc"))

    def evaluate_pending(self) -> None:
        """A round's evaluation was to go with the next train message, which will not be sent (the
        run stopped, or resumed under settings that do not fold): evaluate that round's model — the
        current global model — with a separate message now."""
        if self.pending is None:
            return
        if self.run.settings.fraction_evaluate <= 0:  # resumed with federated evaluation turned off
            self.attach("fraction-evaluate is 0: no federated evaluation", "evaluate")
        else:
            self.attach(self.send(self.pending), "evaluate")

    def resume(self, history: list[dict]) -> None:
        """A checkpoint's last round written before its evaluation came is pending again."""
        if history and history[-1].get("evaluation_in"):
            self.pending = int(history[-1]["round"])

    def settle_resumed(self, first: int) -> None:
        """A resumed run that starts at round ``first``: a pending round whose evaluation the
        settings now would not fold into round ``first``'s train message is evaluated at once."""
        if self.pending is not None and not folds_evaluation(self.run.settings, first - 1):
            self.evaluate_pending()  # resumed under settings that do not fold: a separate message

    # ------------------------------------------------------------------------ end
    def final(self) -> dict | None:
        """Recalibrate the final model (:mod:`models.calibration`) and evaluate what is exported.

        The Platt fit uses the pooled histograms of the last completed round's evaluation (none:
        no final evaluation); the calibrated network is then evaluated once more, so the final
        metrics, fairness figures and histograms describe exactly the model in the package. The
        nodes reserve budget for this one extra (noised) evaluation in their plan.
        """
        run = self.run
        completed = [r["round"] for r in run.history if "model_sha256_after" in r]
        if not (self.last_pooled and completed and self.last_pooled[0] == completed[-1]):
            return None
        record = calibration_record(completed[-1], self.last_pooled[1], run.weights, run.spec)
        cal = record.pop("_platt")
        run.recorder.event("final-evaluation", round=record["round"], slope=cal.slope, intercept=cal.intercept)
        try:
            self.evaluate(record["round"], record, weights=record["weights"])
        except RunStopped:  # pragma: no cover - nodes vanished at the very end: keep the calibrated model
            pass
        return record
