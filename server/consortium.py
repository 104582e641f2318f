"""One consortium run, as the ServerApp drives it: the round loop.

The loop reads like Flower's ``Strategy.start`` (``flwr/serverapp/strategy/strategy.py``) — each
round is *configure → send → aggregate → evaluate*, each a named step of
:class:`ConsortiumRun` — around the steps a consortium adds: the federated statistics that fit
the encoder before the first round, reply checks, checkpoints, the signed audit ledger and the
recalibrated final model.

1. **Statistics** (:meth:`ConsortiumRun.fit_encoder`). Every connected node answers
   ``query.stats`` with its per-feature count vectors (DP-noised by the node when it trains
   privately); the sums fit the one consortium encoder
   (:func:`models.encoder.fit_encoder_from_histograms`). A reply that fails
   :func:`server.update_checks.check_statistics` is left out and recorded as rejected.
2. **Rounds** (:meth:`ConsortiumRun.run_round`). ``configure_train``: the strategy samples
   from the nodes connected now and each gets the global weights and the round config
   (:mod:`server.round_config`). ``send``: one exchange (:func:`server.exchange.exchange`, or
   SecAgg+, :mod:`server.secure_aggregation`). ``aggregate_train``: replies are sorted into
   accepted, refused, rejected (:mod:`server.update_checks`) and dropped
   (:func:`server.replies.sort_replies`) and the strategy aggregates the accepted ones — the
   weighted mean or a robust rule, optionally clipped first (:mod:`server.clipping`). The
   global model keeps the network's parameter dtype (float32) whatever the aggregation computes
   in (FedAdam: float64), so updates are checked against one dtype. ``evaluate``
   (:mod:`server.round_evaluation`): the sampled nodes evaluate the new global model on their
   holdouts — in the next round's train message when it can (:mod:`server.folded_evaluation`) —
   and the pooled histograms give the global AUC/KS/Gini exactly (:mod:`server.evaluation`);
   evaluation replies are sorted the same way. ``end_round``: a checkpoint, the ledger's round
   entry, a progress event and a line in the ServerApp's log (:mod:`server.run_log`, what
   ``flwr log`` shows).
3. **End.** When all rounds are done — or fewer than ``min-train-nodes`` nodes can train, which
   stops the run cleanly with the reason — the final model is recalibrated and evaluated once
   more, and the model package, ``metrics.json`` and the ledger's run-end entry are written
   (:mod:`server.run_summary`). The package carries the development population
   (:mod:`models.reference`): the summed statistics the encoder was fitted from (kept in
   ``population_counts`` and in every checkpoint) and the final evaluation's pooled score
   histograms — numbers already released, the baseline of ``fedcredit monitor``.

Each round samples from the nodes connected at that moment, so a node that died is not waited
for; one that errs or misses ``round-timeout`` is a dropout of that round (recorded in the
history and the audit ledger) and the run goes on while ``min-train-nodes`` updates arrive.

Resume: with ``resume_from`` (a run directory, or one of its ``checkpoints/round-NNNN``) the run
verifies that checkpoint — a damaged one is reported and never loaded — and continues from it
(weights, encoder, strategy state, round counter, history), skipping the statistics. The nodes
keep seeing the run id of the run being continued (``node_run_id``), so their privacy ledgers
show one run and they re-plan their noise for the remaining rounds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from configs.errors import UserError
from configs.schema import load_schema
from fedcredit import protocol as P
from models.encoder import FeatureEncoder, fit_encoder_from_histograms, statistics_layout, sum_statistics
from models.network import ModelSpec, build_model, get_weights
from models.package import weights_digest
from models.training import initial_weights
from server.checkpoints import Checkpoint, load_checkpoint, resume_source, save_checkpoint
from server.clipping import ServerSideClipping
from server.exchange import Exchange, exchange
from server.ledger import RunLedger
from server.replies import RunStopped, SortedReplies, by_institution, sort_replies, stop_reason
from server.round_config import as_record, statistics_config, train_config
from server.round_evaluation import RoundEvaluation
from server.run_log import emit, end_line, round_line, statistics_line
from server.run_records import (RunRecorder, drop_node_sums, privacy_fields, public, resolve_run_dir,
                                write_resolved_config)
from server.run_summary import run_summary
from server.settings import parse_run_config
from server.strategies import (aggregate_updates, build_strategy, restore_strategy_state, snapshot_grid,
                               strategy_state)
from server.update_checks import check_statistics, check_update

NODE_WAIT_POLL_S = 0.2


class ConsortiumRun:
    """State of one run; :meth:`execute` drives it end to end."""

    def __init__(self, grid: Grid, run_config: dict, run_id: int | str = 0,
                 listeners: list[Callable[[dict], None]] | None = None):
        self.grid = grid
        self.settings = parse_run_config(run_config)
        self.run_id = str(run_id)
        # the run id the nodes see: a resumed run goes on under the id of the run it continues, so
        # each node's privacy ledger shows one run and target-epsilon caps the whole of it
        self.node_run_id = self.run_id
        self.schema = load_schema(self.settings.schema)
        self.run_dir = resolve_run_dir(self.settings, run_id)
        self.recorder = RunRecorder(self.run_dir, list(listeners or []))
        self.strategy = build_strategy(self.settings)
        self.institutions: dict[int, str] = {}  # node id → institution id
        self.history: list[dict] = []
        self.statistics: dict = {}
        self.population_counts: dict[str, np.ndarray] | None = None  # summed statistics (models.reference)
        self.encoder: FeatureEncoder | None = None
        self.spec: ModelSpec | None = None
        self.weights: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, np.dtype] = {}  # the global model's parameter dtypes (the network's)
        self.audit: RunLedger | None = None  # the signed audit ledger, opened by execute()
        self.evaluation = RoundEvaluation(self)  # the evaluation step: pending round, last pooled sums
        self.started = time.time()

    # ----------------------------------------------------------------------- run
    def execute(self, resume_from: Path | None = None) -> dict:
        """Statistics (or resume), every round, the final evaluation and the run's records."""
        ckpt = self.open(resume_from)
        status, reason, detail = "completed", "", ""
        try:
            first = self.start(ckpt)
            for rnd in range(first, self.settings.num_server_rounds + 1):
                self.run_round(rnd)
        except RunStopped as stop:
            status, reason, detail = "stopped", stop.reason, stop.detail
            self.evaluation.evaluate_pending()  # the train message that was to carry it is not sent
            self.recorder.event("run-stopped", reason=reason, detail=detail)
        summary = self.finish(status, reason, detail, self.evaluation.final())
        self.recorder.event("run-end", status=status, reason=reason, ledger_head=summary.get("ledger_head"))
        emit(end_line(summary))
        self.recorder.close()
        self.audit.close()
        return summary

    def open(self, resume_from: Path | None) -> Checkpoint | None:
        """Open the audit ledger and load the checkpoint to resume from — a broken ledger or a
        damaged checkpoint stops here, before anything is written — then record the run's start."""
        s = self.settings
        source, rnd = resume_source(resume_from) if resume_from else (None, None)
        self.audit = RunLedger.open(self.run_dir, s.ledger_key, source)
        ckpt = None
        if source is not None:
            try:
                ckpt = load_checkpoint(source, rnd)
            except UserError:
                self.audit.close()
                self.recorder.close()
                raise
        self.recorder.listeners.append(self.audit.on_event)
        write_resolved_config(self.run_dir, s, self.run_id)
        self.audit.run_start(self.run_id, self.run_dir / "config.resolved.toml", s.as_run_config(), resume_from)
        self.recorder.event("run-start", run_id=self.run_id, run_dir=str(self.run_dir),
                            rounds=s.num_server_rounds, strategy=s.strategy)
        return ckpt

    def start(self, ckpt: Checkpoint | None) -> int:
        """The first round to train: 1 after the statistics, or the one after the checkpoint."""
        if ckpt is None:
            self.fit_encoder()
            return 1
        first = self.resume(ckpt)
        self.wait_for_nodes()  # a resumed run, too, starts once min-available-nodes are connected
        self.evaluation.settle_resumed(first)
        return first

    # ------------------------------------------------------------------- one round
    def run_round(self, rnd: int) -> dict:
        """One round: configure → send → aggregate, then (when due) evaluate, then record it.

        A due evaluation goes into the next round's train message when it can
        (:mod:`server.folded_evaluation`): this round's record then gets it from there
        (:mod:`server.round_evaluation`)."""
        t0 = time.time()
        messages = self.configure_train(rnd)
        replies, secure = self.send_train(rnd, messages)
        replies = self.evaluation.take_folded(replies, secure)
        record = self.aggregate_train(rnd, replies, secure)
        self.evaluation.after_training(rnd, record)
        self.end_round(rnd, record, time.time() - t0)
        return record

    def configure_train(self, rnd: int) -> list[Message]:
        """The strategy samples from the nodes connected now — a node that died is not waited for
        (Flower's own sampler would wait for min-available-nodes forever); fewer than
        min-train-nodes stops the run."""
        nodes = self.wait_for_nodes(self.settings.min_train_nodes)
        config = train_config(self.settings, self.node_run_id, rnd, self.encoder.to_json(),
                              json.dumps(self.spec.to_dict()), self.ledger_head)
        config.update(self.evaluation.train_config())  # a pending round: its model is the weights sent
        config = as_record(config)
        return list(self.strategy.configure_train(rnd, P.to_array_record(self.weights), config,
                                                  snapshot_grid(self.grid, nodes)))

    def send_train(self, rnd: int, messages: list[Message]) -> tuple[Exchange, object | None]:
        """Send the round's messages; under SecAgg+ the replies carry no arrays and the server
        gets only the mean update (the second value)."""
        s = self.settings
        self.recorder.event("round-start", round=rnd, sampled=len(messages))
        if not s.secure_aggregation:
            return self.send(messages), None
        from server.secure_aggregation import max_weight_from, secure_exchange

        return secure_exchange(self.grid, messages, rnd, self.weights, timeout=s.round_timeout,
                               clipping_range=s.secagg_clipping_range, run_id=self.run_id,
                               max_weight=max_weight_from(self.statistics, self.history),
                               on_reply=self._note_identity)

    def aggregate_train(self, rnd: int, ex: Exchange, secure=None) -> dict:
        """Sort the replies, stop the run when too few are usable, aggregate the accepted ones."""
        s = self.settings
        before = self.weights
        check = (lambda msg: "") if secure else (lambda msg: check_update(msg, before, s.max_update_norm, self.dtypes))
        # in institution order, not arrival order: the aggregate (a float sum) is then reproducible
        replies = sort_replies(ex, check, order=self.institution_order)
        refused, rejected, dropped = (by_institution(d, self.name) for d in
                                      (replies.refused, replies.rejected, replies.dropped))
        self.record_outcomes(replies, rnd, refused=("refusal", None), dropped=("dropout", None),
                             rejected=("rejected-update", None))
        accepted = list(replies.accepted.values())
        record = {"round": rnd, "sampled": [self.name(n) for n in ex.sent],
                  "participants": [self.name(n) for n in replies.accepted],
                  "refused": refused, "dropped": dropped, "rejected": rejected,
                  "model_sha256_before": weights_digest(before)}
        if len(accepted) < s.min_train_nodes:
            reason = stop_reason(replies.refusal_codes(), {**dropped, **rejected})
            record["stopped"] = reason
            self.history.append(record)
            emit(round_line(record, s.num_server_rounds))
            raise RunStopped(reason, f"round {rnd}: {len(accepted)} usable update(s), min-train-nodes is "
                             f"{s.min_train_nodes}; refused: {sorted(refused) or 'none'}, "
                             f"dropped: {sorted(dropped) or 'none'}, rejected: {sorted(rejected) or 'none'}")
        agg_arrays, agg_metrics, rule = aggregate_updates(
            self.strategy, s, rnd, secure.strategy_replies(before, accepted) if secure else accepted)
        if isinstance(self.strategy, ServerSideClipping):  # updates the server clipped: their norm before
            record["clipped"] = by_institution(self.strategy.clipped, self.name)
        if s.aggregation != "mean":
            if "selected" in rule:
                rule["selected"] = [record["participants"][i] for i in rule["selected"]]
            record["aggregation"] = rule
        # the global model keeps the network's parameter dtype: FedAdam's server step computes in
        # float64, and updates are checked against the global model's dtype (server.update_checks)
        self.weights = {k: np.asarray(v, dtype=self.dtypes.get(k, before[k].dtype))
                        for k, v in P.from_array_record(agg_arrays).items()}
        record.update({
            "model_sha256_after": weights_digest(self.weights),
            "aggregate_update_norm": np.sqrt(sum(float(np.sum((self.weights[k] - before[k]) ** 2)) for k in before)),
            # nodes under DP-SGD do not release their training loss (it is not noised): None then
            "train_loss": float(agg_metrics["train-loss"]) if agg_metrics and "train-loss" in agg_metrics else None,
            "examples": int(sum(float(m.content[P.METRICS]["num-examples"]) for m in accepted)),
            "privacy": {who: privacy_fields(m) for who, m in by_institution(replies.metrics, self.name).items() if m},
        })
        if secure:
            record["secure_aggregation"] = secure.summary(self.name)
        return record

    def end_round(self, rnd: int, record: dict, seconds: float) -> None:
        """Keep the round: history, checkpoint, the ledger's round entry, a progress event."""
        record["wall_s"] = seconds
        self.evaluation.keep_pooled(rnd, record)
        self.history.append(record)
        if record.get("institutions"):  # per-node histograms: only the latest evaluation's are kept
            drop_node_sums(self.history[:-1])
        self.checkpoint(rnd)
        self.audit.round(record)
        emit(round_line(record, self.settings.num_server_rounds))
        self.recorder.event("round-end", round=rnd, participants=len(record["participants"]),
                            auc=(record.get("global") or {}).get("auc"),
                            loss=record.get("train_loss"), wall_s=record["wall_s"])

    # ---------------------------------------------------------------- statistics
    def fit_encoder(self) -> None:
        """Federated feature statistics → the consortium encoder and the initial global model."""
        s = self.settings
        nodes = self.wait_for_nodes()
        config = as_record(statistics_config(s, self.node_run_id, self.schema.key))
        messages = [Message(RecordDict({P.CONFIG: config}), dst_node_id=n, message_type=P.STATS_MESSAGE)
                    for n in nodes]
        self.recorder.event("statistics-start", nodes=len(nodes))
        layout = statistics_layout(self.schema)
        # exact counts unless the run is private (then every node noises them: clients.node)
        replies = sort_replies(self.send(messages), lambda msg: check_statistics(msg, layout, exact=not s.dp),
                               order=self.institution_order)
        self.record_outcomes(replies, None, rejected=("rejected-reply", "statistics"))
        refused = {who: f"{r['reason']}: {r['detail']}" for who, r in by_institution(replies.refused, self.name).items()}
        dropped, rejected = by_institution(replies.dropped, self.name), by_institution(replies.rejected, self.name)
        # the ε spent of every contributor, and of a refusing node that reported it (e.g. an exhausted budget)
        spent = {node: m for node, m in replies.metrics.items() if node in replies.accepted or node in replies.refused}
        self.statistics = {"contributors": [self.name(n) for n in replies.accepted], "refused": refused,
                           "dropped": dropped, "rejected": rejected,
                           "node_metrics": by_institution(spent, self.name)}
        self.recorder.event("statistics-end", contributors=self.statistics["contributors"], refused=refused,
                            dropped=dropped, rejected=rejected)
        self.audit.statistics(self.statistics)
        emit(statistics_line(self.statistics))
        if len(replies.accepted) < s.min_train_nodes:
            raise RunStopped(stop_reason(replies.refusal_codes(), {**dropped, **rejected}),
                             f"only {len(replies.accepted)} node(s) answered the statistics query "
                             f"(min-train-nodes is {s.min_train_nodes}); refused: {refused or 'none'}; "
                             f"failed: {dropped or 'none'}; rejected: {rejected or 'none'}")
        parts = []
        for msg in replies.accepted.values():
            stats = P.from_array_record(msg.content[P.STATS])
            parts.append({k: stats[k] for k in layout})  # one order for all, whatever order it came in
        self.population_counts = sum_statistics(parts)
        self.encoder = fit_encoder_from_histograms(self.schema, self.population_counts, s.encoder_knots)
        self.spec = ModelSpec(s.model, self.encoder.n_outputs, s.hidden if s.model == "mlp" else ())
        self.weights = initial_weights(self.spec, s.seed, s.output_layer_init)  # zero: no round-1 collapse
        self.dtypes = {k: v.dtype for k, v in self.weights.items()}

    # ------------------------------------------------------------------- helpers
    def name(self, node_id: int) -> str:
        return self.institutions.get(node_id, f"node-{node_id}")

    def institution_order(self, node_id: int) -> tuple[str, int]:
        return self.name(node_id), node_id

    @property
    def ledger_head(self) -> str:
        return self.audit.head if self.audit is not None else ""

    def _note_identity(self, node_id: int, msg: Message) -> None:
        info = P.node_info(msg)
        if info.get("institution-id"):
            self.institutions[node_id] = str(info["institution-id"])

    def send(self, messages) -> Exchange:
        """Push ``messages``, collect the replies until the round time-out (:func:`exchange`)."""
        return exchange(self.grid, messages, self.settings.round_timeout, on_reply=self._note_identity)

    def record_outcomes(self, replies: SortedReplies, rnd: int | None, **events: tuple[str, str | None]) -> None:
        """One progress event (and so one ledger entry) per refused / dropped / rejected node, for the
        outcomes named in ``events`` (outcome → (event kind, stage or None))."""
        for outcome, (kind, stage) in events.items():
            where = {k: v for k, v in (("round", rnd), ("stage", stage)) if v is not None}
            for node, why in getattr(replies, outcome).items():
                detail = why if isinstance(why, dict) else {"reason": why}
                self.recorder.event(kind, **where, institution=self.name(node), **detail)

    def wait_for_nodes(self, need: int | None = None) -> list[int]:
        """Connected nodes, once at least ``need`` (default min-available-nodes) are; waits up to
        round-timeout, then stops the run with ``too-few-nodes``."""
        need = self.settings.min_available_nodes if need is None else need
        deadline = time.monotonic() + self.settings.round_timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= need:
                return nodes
            if time.monotonic() > deadline:
                what = "min-available-nodes" if need == self.settings.min_available_nodes else "min-train-nodes"
                raise RunStopped("too-few-nodes", f"{len(nodes)} node(s) connected after "
                                 f"{self.settings.round_timeout:.0f} s; {what} is {need}")
            time.sleep(NODE_WAIT_POLL_S)

    # ------------------------------------------------------------- checkpoints
    def checkpoint(self, rnd: int) -> None:
        state = {
            "run_id": self.run_id,
            "node_run_id": self.node_run_id,
            "encoder": self.encoder.to_dict(),
            "spec": self.spec.to_dict(),
            "history": [public(r) for r in self.history],
            "statistics": self.statistics,
            "population_counts": ({k: v.tolist() for k, v in self.population_counts.items()}
                                  if self.population_counts is not None else None),
            "institutions": {str(k): v for k, v in self.institutions.items()},
            "settings": self.settings.as_run_config(),
        }
        save_checkpoint(self.run_dir, rnd, self.weights, strategy_state(self.strategy), state)

    def resume(self, ckpt: Checkpoint) -> int:
        """Continue from a verified checkpoint; returns the first round to train."""
        st = ckpt.state
        self.node_run_id = str(st.get("node_run_id") or st.get("run_id") or self.run_id)
        self.institutions.update({int(k): v for k, v in (st.get("institutions") or {}).items()})
        self.encoder = FeatureEncoder.from_dict(st["encoder"])
        self.spec = ModelSpec.from_dict(st["spec"])
        self.weights = ckpt.weights  # as checkpointed (an older FedAdam run's may be float64)
        self.dtypes = {k: v.dtype for k, v in get_weights(build_model(self.spec)).items()}
        self.history = list(st.get("history", []))
        self.evaluation.resume(self.history)  # checkpointed before its evaluation came: pending again
        self.statistics = st.get("statistics", {})
        if st.get("population_counts"):  # absent in checkpoints written before monitoring existed
            self.population_counts = {k: np.asarray(v, dtype=np.float64) for k, v in st["population_counts"].items()}
        restore_strategy_state(self.strategy, ckpt.strategy_state, ckpt.weights)
        self.audit.resumed(ckpt.round, weights_digest(ckpt.weights), self.history, str(ckpt.path), self.run_id)
        now = self.settings.as_run_config()
        changed = {k: {"was": v, "now": now.get(k)} for k, v in (st.get("settings") or {}).items()
                   if now.get(k) != v and k not in ("run-dir", "resume-from")}
        self.recorder.event("resumed", from_round=ckpt.round, checkpoint=str(ckpt.path), node_run_id=self.node_run_id,
                            settings_changed=changed)
        return ckpt.round + 1

    # ----------------------------------------------------------------------- end
    def finish(self, status: str, reason: str, detail: str, final_record: dict | None) -> dict:
        """The run's summary (``metrics.json``), the model package and the ledger's run-end entry."""
        summary = run_summary(self, status, reason, detail, final_record)
        self.recorder.write_metrics(summary)
        return summary


def run_consortium(grid: Grid, run_config: dict, run_id: int | str = 0,
                   resume_from: str | Path | None = None,
                   listeners: list[Callable[[dict], None]] | None = None) -> dict:
    """Run (or resume) one consortium run; returns the summary also written to metrics.json."""
    return ConsortiumRun(grid, run_config, run_id, listeners).execute(Path(resume_from) if resume_from else None)
