"""One consortium run, as the ServerApp drives it.

1. **Statistics.** Every connected node answers ``query.stats`` with its per-feature count
   vectors (DP-noised by the node when it trains privately); the sums fit the one consortium
   encoder (:func:`models.encoder.fit_encoder_from_histograms`). A reply that fails
   :func:`server.update_checks.check_statistics` (wrong features or lengths, NaN, negative exact
   counts) is left out and recorded as a rejected reply.
2. **Rounds.** The strategy samples nodes; each gets the global weights and the round config
   (which includes the encoder and the model spec). Replies are sorted into accepted updates,
   refusals (``budget-exhausted`` …), dropouts (errors, time-outs) and rejected updates (failed
   :mod:`server.update_checks`); the accepted ones (optionally clipped, ``clip-update-norm``)
   are aggregated by the strategy — the weighted mean or a robust rule. Then the
   sampled nodes evaluate the new global model on their holdouts; the pooled histograms give the
   global AUC/KS/Gini exactly (:mod:`models.metrics`). Evaluation replies are sorted the same
   way: refusals, failures, and rejected replies (:func:`server.update_checks.check_evaluation`)
   are recorded and left out of the pooled figures. The global model keeps the dtype of the
   network's parameters (float32) whatever the aggregation computes in (FedAdam: float64), so
   updates are checked against one dtype. A checkpoint is written every round.
3. **End.** When all rounds are done — or fewer than ``min-train-nodes`` nodes can train, which
   stops the run cleanly with the reason — the model package, ``metrics.json`` and the resolved
   config go to the run directory. The package carries the development population
   (:mod:`models.reference`): the summed statistics the encoder was fitted from and, when the
   final evaluation describes the exported model, its pooled score histograms — numbers already
   released, the baseline of ``fedcredit monitor``.

Each round samples from the nodes connected at that moment, so a node that died is not
waited for; one that errs or misses ``round-timeout`` is a dropout of that round (recorded in
the history and the audit ledger) and the run goes on while ``min-train-nodes`` updates arrive.

Resume: with ``resume_from`` (a run directory, or one of its ``checkpoints/round-NNNN``) the
run verifies that checkpoint — a damaged one is reported and never loaded — and continues from
it (weights, encoder, strategy state, round counter, history), skipping the statistics. The
nodes keep seeing the run id of the run being continued (``node_run_id``), so their privacy
ledgers show one run and they re-plan their noise for the remaining rounds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from configs.errors import UserError
from configs.schema import load_schema
from fedcredit import protocol as P
from fedcredit.json_values import json_default
from models.calibration import binned_calibration_summary, calibrate_weights, fit_platt
from models.encoder import FeatureEncoder, fit_encoder_from_histograms, statistics_layout, sum_statistics
from models.fairness import fairness_metrics
from models.metrics import EvaluationSums, rebin, sum_evaluations
from models.network import ModelSpec, build_model, get_weights
from models.package import ModelPackage, save_package, weights_digest
from models.reference import PopulationReference
from models.scoring import ScoreScale
from server.checkpoints import Checkpoint, load_checkpoint, resume_source, save_checkpoint
from server.exchange import exchange
from server.ledger import RunLedger
from server.settings import RunSettings, parse_run_config
from server.strategies import (aggregate_updates, build_strategy, restore_strategy_state, snapshot_grid,
                               strategy_state)
from server.update_checks import check_evaluation, check_statistics, check_update, clip_update, fairness_layout

NODE_WAIT_POLL_S = 0.2
REPORT_BINS = 100  # per-institution score histograms kept in metrics.json for the report


class RunStopped(Exception):
    """The run cannot go on (too few nodes); carries the reason code and detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class RunRecorder:
    """Writes ``progress.jsonl`` (one event per line, as they happen) and ``metrics.json``."""

    run_dir: Path
    listeners: list[Callable[[dict], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._progress = open(self.run_dir / "progress.jsonl", "a", buffering=1)

    def event(self, kind: str, **payload: Any) -> None:
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": kind, **payload}
        self._progress.write(json.dumps(entry, default=json_default) + "\n")
        for listener in self.listeners:
            listener(entry)

    def write_metrics(self, metrics: dict) -> None:
        tmp = self.run_dir / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2, default=json_default))
        tmp.replace(self.run_dir / "metrics.json")

    def close(self) -> None:
        self._progress.close()


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def resolve_run_dir(s: RunSettings, run_id: int | str) -> Path:
    if s.run_dir:
        return Path(s.run_dir).expanduser().resolve()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return (Path("runs") / f"{stamp}-{run_id}").resolve()


def write_resolved_config(run_dir: Path, s: RunSettings, run_id: int | str) -> None:
    lines = [f"# resolved run configuration of run {run_id}", "[run-config]"]
    for key, value in s.as_run_config().items():
        lines.append(f"{key} = {json.dumps(value)}")
    (run_dir / "config.resolved.toml").write_text("\n".join(lines) + "\n")


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
        self.started = time.time()

    # ------------------------------------------------------------------ helpers
    def name(self, node_id: int) -> str:
        return self.institutions.get(node_id, f"node-{node_id}")

    def _note_identity(self, node_id: int, msg: Message) -> None:
        info = P.node_info(msg)
        if info.get("institution-id"):
            self.institutions[node_id] = str(info["institution-id"])

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

    # --------------------------------------------------------------- statistics
    def collect_statistics(self) -> None:
        nodes = self.wait_for_nodes()
        s = self.settings
        cfg = ConfigRecord({"schema-key": self.schema.key, "run-id": self.node_run_id, "dp": s.dp,
                            "target-epsilon": s.target_epsilon, "num-server-rounds": s.num_server_rounds,
                            "local-epochs": s.local_epochs, "batch-size": s.batch_size,
                            "evaluate-every": s.evaluate_every})
        msgs = [Message(RecordDict({P.CONFIG: cfg}), dst_node_id=n, message_type=P.STATS_MESSAGE) for n in nodes]
        self.recorder.event("statistics-start", nodes=len(nodes))
        ex = exchange(self.grid, msgs, s.round_timeout, on_reply=self._note_identity)
        layout = statistics_layout(self.schema)
        parts, contributors, refused, rejected, spent, codes = [], [], {}, {}, {}, set()
        for node, msg in ex.ok.items():
            info = P.node_info(msg)
            if info.get("refused"):
                refused[self.name(node)] = f"{info['refused']}: {info.get('detail', '')}"
                codes.add(info["refused"])
                if P.METRICS in msg.content.metric_records:  # e.g. the ε spent and budget of an exhausted node
                    spent[self.name(node)] = dict(msg.content[P.METRICS])
                continue
            # exact counts unless the run is private (then every node noises them: clients.node)
            problem = check_statistics(msg, layout, exact=not s.dp)
            if problem:
                rejected[self.name(node)] = problem
                continue
            stats = P.from_array_record(msg.content[P.STATS])
            parts.append({k: stats[k] for k in layout})  # one order for all, whatever order it came in
            contributors.append(self.name(node))
            spent[self.name(node)] = dict(msg.content[P.METRICS])
        dropped = {self.name(n): r for n, r in ex.errors.items()}
        dropped.update({self.name(n): "no reply before the round timeout" for n in ex.missing})
        for who, why in rejected.items():
            self.recorder.event("rejected-reply", stage="statistics", institution=who, reason=why)
        self.statistics = {"contributors": contributors, "refused": refused, "dropped": dropped,
                           "rejected": rejected, "node_metrics": spent}
        self.recorder.event("statistics-end", contributors=contributors, refused=refused, dropped=dropped,
                            rejected=rejected)
        if self.audit is not None:
            self.audit.statistics(self.statistics)
        if len(parts) < s.min_train_nodes:
            raise RunStopped(_stop_reason(codes, {**dropped, **rejected}),
                             f"only {len(parts)} node(s) answered the statistics query "
                             f"(min-train-nodes is {s.min_train_nodes}); refused: {refused or 'none'}; "
                             f"failed: {dropped or 'none'}; rejected: {rejected or 'none'}")
        self.population_counts = sum_statistics(parts)
        self.encoder = fit_encoder_from_histograms(self.schema, self.population_counts, s.encoder_knots)
        self.spec = ModelSpec(s.model, self.encoder.n_outputs, s.hidden if s.model == "mlp" else ())
        self.weights = get_weights(build_model(self.spec, s.seed))
        self.dtypes = {k: v.dtype for k, v in self.weights.items()}

    # -------------------------------------------------------------------- rounds
    def round_config(self, rnd: int) -> ConfigRecord:
        s = self.settings
        return ConfigRecord({
            "run-id": self.node_run_id, "server-round": rnd, "num-server-rounds": s.num_server_rounds,
            "local-epochs": s.local_epochs, "batch-size": s.batch_size, "learning-rate": s.learning_rate,
            "optimizer": s.optimizer, "proximal-mu": s.proximal_mu if s.strategy == "fedprox" else 0.0,
            "dp": s.dp, "target-epsilon": s.target_epsilon, "clipping-norm": s.clipping_norm,
            "evaluate-every": s.evaluate_every,
            "seed": s.seed, "encoder": self.encoder.to_json(), "model-spec": json.dumps(self.spec.to_dict()),
            "ledger-head": self.audit.head if self.audit is not None else "",
        })

    def train_round(self, rnd: int) -> dict:
        s = self.settings
        before = self.weights
        # sample from the nodes connected now: a node that died is not waited for (Flower's own
        # sampler would wait for min-available-nodes forever); fewer than min-train-nodes stops the run
        nodes = self.wait_for_nodes(s.min_train_nodes)
        msgs = list(self.strategy.configure_train(rnd, P.to_array_record(before), self.round_config(rnd),
                                                  snapshot_grid(self.grid, nodes)))
        sampled = [m.metadata.dst_node_id for m in msgs]
        self.recorder.event("round-start", round=rnd, sampled=len(sampled))
        secure = None
        if s.secure_aggregation:  # SecAgg+: replies carry no arrays; the server gets only the mean update
            from server.secure_aggregation import max_weight_from, secure_exchange

            ex, secure = secure_exchange(self.grid, msgs, rnd, before, timeout=s.round_timeout,
                                         clipping_range=s.secagg_clipping_range, run_id=self.run_id,
                                         max_weight=max_weight_from(self.statistics, self.history),
                                         on_reply=self._note_identity)
        else:
            ex = exchange(self.grid, msgs, s.round_timeout, on_reply=self._note_identity)
        accepted, refused, rejected, node_metrics = [], {}, {}, {}
        # in institution order, not arrival order: the aggregate (a float sum) is then reproducible
        for node, msg in sorted(ex.ok.items(), key=lambda item: (self.name(item[0]), item[0])):
            who = self.name(node)
            info = P.node_info(msg)
            metrics = dict(msg.content[P.METRICS]) if P.METRICS in msg.content.metric_records else {}
            node_metrics[who] = metrics
            if info.get("refused"):
                refused[who] = {"reason": info["refused"], "detail": info.get("detail", "")}
                continue
            problem = "" if secure else check_update(msg, before, s.max_update_norm, self.dtypes)
            if problem:
                rejected[who] = problem
                continue
            accepted.append(msg)
        dropped = {self.name(n): r for n, r in ex.errors.items()}
        dropped.update({self.name(n): "no reply before the round timeout" for n in ex.missing})
        for who, why in refused.items():
            self.recorder.event("refusal", round=rnd, institution=who, **why)
        for who, why in dropped.items():
            self.recorder.event("dropout", round=rnd, institution=who, reason=why)
        for who, why in rejected.items():
            self.recorder.event("rejected-update", round=rnd, institution=who, reason=why)
        record = {"round": rnd, "sampled": [self.name(n) for n in sampled],
                  "participants": [self.name(m.metadata.src_node_id) for m in accepted],
                  "refused": refused, "dropped": dropped, "rejected": rejected,
                  "model_sha256_before": weights_digest(before)}
        if len(accepted) < s.min_train_nodes:
            reason = _stop_reason({r["reason"] for r in refused.values()}, {**dropped, **rejected})
            record["stopped"] = reason
            self.history.append(record)
            raise RunStopped(reason, f"round {rnd}: {len(accepted)} usable update(s), min-train-nodes is "
                             f"{s.min_train_nodes}; refused: {sorted(refused) or 'none'}, "
                             f"dropped: {sorted(dropped) or 'none'}, rejected: {sorted(rejected) or 'none'}")
        if s.clip_update_norm > 0 and not secure:  # server-side clipping of each update's delta
            record["clipped"] = {}
            for m in accepted:
                norm = clip_update(m, before, s.clip_update_norm)
                if norm is not None:
                    record["clipped"][self.name(m.metadata.src_node_id)] = norm
        agg_arrays, agg_metrics, rule = aggregate_updates(
            self.strategy, s, rnd, secure.strategy_replies(before, accepted) if secure else accepted)
        if s.aggregation != "mean":
            if "selected" in rule:
                rule["selected"] = [record["participants"][i] for i in rule["selected"]]
            record["aggregation"] = rule
        # the global model keeps the network's parameter dtype: FedAdam's server step computes in
        # float64, and updates are checked against the global model's dtype (server.update_checks)
        self.weights = {k: np.asarray(v, dtype=self.dtypes.get(k, before[k].dtype))
                        for k, v in P.from_array_record(agg_arrays).items()}
        delta = np.sqrt(sum(float(np.sum((self.weights[k] - before[k]) ** 2)) for k in before))
        record.update({
            "model_sha256_after": weights_digest(self.weights),
            "aggregate_update_norm": delta,
            # nodes under DP-SGD do not release their training loss (it is not noised): None then
            "train_loss": float(agg_metrics["train-loss"]) if agg_metrics and "train-loss" in agg_metrics else None,
            "examples": int(sum(float(m.content[P.METRICS]["num-examples"]) for m in accepted)),
            "privacy": {who: _privacy_fields(m) for who, m in node_metrics.items() if m},
        })
        if secure:
            record["secure_aggregation"] = secure.summary(self.name)
        return record

    def evaluate_round(self, rnd: int, record: dict, weights: dict[str, np.ndarray] | None = None) -> None:
        """Sampled nodes evaluate ``weights`` (default: the current global model) on their holdouts."""
        s = self.settings
        if s.fraction_evaluate <= 0:
            return
        cfg = ConfigRecord({"run-id": self.node_run_id, "server-round": rnd, "encoder": self.encoder.to_json(),
                            "model-spec": json.dumps(self.spec.to_dict()), "cutoff-pd": s.cutoff_pd,
                            # the head now; after the last round (final evaluation) it covers that round's entry
                            "ledger-head": self.audit.head if self.audit is not None else ""})
        nodes = sorted(self.grid.get_node_ids())
        if len(nodes) < max(1, self.strategy.min_evaluate_nodes):
            record["evaluation_failed"] = {"*": f"only {len(nodes)} node(s) connected; evaluation skipped"}
            return
        msgs = list(self.strategy.configure_evaluate(
            rnd, P.to_array_record(self.weights if weights is None else weights), cfg, snapshot_grid(self.grid, nodes)))
        ex = exchange(self.grid, msgs, s.round_timeout, on_reply=self._note_identity)
        parts, per_inst, fair_parts, refused, rejected = [], {}, [], {}, {}
        fairness = fairness_layout(self.schema)
        for node, msg in ex.ok.items():
            info = P.node_info(msg)
            if info.get("refused"):  # e.g. budget-exhausted: recorded like a training refusal
                refused[self.name(node)] = {"reason": info["refused"], "detail": info.get("detail", "")}
                continue
            if P.EVAL not in msg.content.array_records and info.get("release") == "off":
                continue  # the node's policy (release-eval = off): it releases no evaluation
            problem = check_evaluation(msg, fairness)
            if problem:
                rejected[self.name(node)] = problem
                continue
            arrays = P.from_array_record(msg.content[P.EVAL])
            sums = EvaluationSums.from_arrays(arrays)
            parts.append(sums)
            fair_parts.append({k[5:]: v for k, v in arrays.items() if k.startswith("fair/")})
            m = sums.metrics()
            per_inst[self.name(node)] = {k: _finite_or_none(v) for k, v in m.items()}
            per_inst[self.name(node)]["release"] = P.node_info(msg).get("release", "exact")
            reply_metrics = msg.content[P.METRICS] if P.METRICS in msg.content.metric_records else {}
            if "epsilon-spent" in reply_metrics:  # a noised release moved the node's lifetime ε
                record.setdefault("privacy_after_evaluation", {})[self.name(node)] = float(
                    reply_metrics["epsilon-spent"])
            per_inst[self.name(node)]["_sums"] = sums
        record["evaluation_failed"] = {self.name(n): r for n, r in ex.errors.items()}
        record["evaluation_failed"].update({self.name(n): "no reply before the round timeout" for n in ex.missing})
        record["evaluation_refused"] = refused
        record["evaluation_rejected"] = rejected
        stage = "final-evaluation" if record.get("final") else "evaluation"
        for who, why in refused.items():
            self.recorder.event("refusal", round=rnd, stage=stage, institution=who, **why)
        for who, why in rejected.items():
            self.recorder.event("rejected-reply", round=rnd, stage=stage, institution=who, reason=why)
        record["institutions"] = per_inst
        if parts:
            pooled = sum_evaluations(parts)
            record["global"] = {k: _finite_or_none(v) for k, v in pooled.metrics().items()}
            record["_pooled_eval"] = pooled
            counts = {k: sum(fp[k] for fp in fair_parts if k in fp) for k in set().union(*fair_parts)}
            if counts:
                record["fairness"] = fairness_metrics(counts, self.schema)
                record["fairness_counts"] = {k: v.tolist() for k, v in counts.items()}

    def checkpoint(self, rnd: int) -> None:
        state = {
            "run_id": self.run_id,
            "node_run_id": self.node_run_id,
            "encoder": self.encoder.to_dict(),
            "spec": self.spec.to_dict(),
            "history": [_public(r) for r in self.history],
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
        self.statistics = st.get("statistics", {})
        if st.get("population_counts"):  # absent in checkpoints written before monitoring existed
            self.population_counts = {k: np.asarray(v, dtype=np.float64) for k, v in st["population_counts"].items()}
        restore_strategy_state(self.strategy, ckpt.strategy_state)
        if hasattr(self.strategy, "current_arrays"):
            self.strategy.current_arrays = dict(ckpt.weights)
        if self.audit is not None:
            self.audit.resumed(ckpt.round, weights_digest(ckpt.weights), self.history, str(ckpt.path), self.run_id)
        now = self.settings.as_run_config()
        changed = {k: {"was": v, "now": now.get(k)} for k, v in (st.get("settings") or {}).items()
                   if now.get(k) != v and k not in ("run-dir", "resume-from")}
        self.recorder.event("resumed", from_round=ckpt.round, checkpoint=str(ckpt.path), node_run_id=self.node_run_id,
                            settings_changed=changed)
        return ckpt.round + 1

    # ----------------------------------------------------------------------- run
    def execute(self, resume_from: Path | None = None) -> dict:
        s = self.settings
        source, rnd = resume_source(resume_from) if resume_from else (None, None)
        # a broken ledger (here or in resume_from) stops before anything is written
        self.audit = RunLedger.open(self.run_dir, s.ledger_key, source)
        ckpt = None
        if source is not None:  # so does a damaged checkpoint: it is reported, never loaded
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
        status, reason, detail = "completed", "", ""
        last_pooled = None
        try:
            first = self.resume(ckpt) if ckpt else 1
            if ckpt:
                self.wait_for_nodes()  # a resumed run, too, starts once min-available-nodes are connected
            else:
                self.collect_statistics()
            for rnd in range(first, s.num_server_rounds + 1):
                t0 = time.time()
                record = self.train_round(rnd)
                if rnd in P.evaluation_rounds(rnd, s.num_server_rounds, s.evaluate_every):
                    self.evaluate_round(rnd, record)
                if "_pooled_eval" in record:
                    last_pooled = (rnd, record.pop("_pooled_eval"))
                record["wall_s"] = time.time() - t0
                self.history.append(record)
                if record.get("institutions"):  # per-node histograms: only the latest evaluation's are kept
                    _drop_node_sums(self.history[:-1])
                self.checkpoint(rnd)
                self.audit.round(record)
                self.recorder.event("round-end", round=rnd, participants=len(record["participants"]),
                                    auc=(record.get("global") or {}).get("auc"),
                                    loss=record.get("train_loss"), wall_s=record["wall_s"])
        except RunStopped as stop:
            status, reason, detail = "stopped", stop.reason, stop.detail
            self.recorder.event("run-stopped", reason=reason, detail=detail)
        completed = [r["round"] for r in self.history if "model_sha256_after" in r]
        final_record = None
        if last_pooled and completed and last_pooled[0] == completed[-1]:
            final_record = self.final_evaluation(completed[-1], last_pooled[1])
        summary = self.finish(status, reason, detail, final_record)
        self.recorder.event("run-end", status=status, reason=reason, ledger_head=summary.get("ledger_head"))
        self.recorder.close()
        self.audit.close()
        return summary

    def final_evaluation(self, rnd: int, pooled: EvaluationSums) -> dict:
        """Recalibrate the final model (:mod:`models.calibration`) and evaluate what is exported.

        The Platt fit uses the pooled histograms of round ``rnd``'s evaluation; the calibrated
        network is then evaluated once more, so the final metrics, fairness figures and
        histograms describe exactly the model in the package. The nodes reserve budget for this
        one extra (noised) evaluation in their plan.
        """
        cal = fit_platt(pooled.hist_neg, pooled.hist_pos)
        weights = calibrate_weights(self.weights, self.spec, cal)
        record = {"round": rnd, "final": True, "weights": weights,
                  "calibration": {**cal.to_dict(), "fitted_on": f"pooled holdout score histograms after round {rnd}",
                                  **binned_calibration_summary(pooled.hist_neg, pooled.hist_pos, cal)}}
        self.recorder.event("final-evaluation", round=rnd, slope=cal.slope, intercept=cal.intercept)
        try:
            self.evaluate_round(rnd, record, weights=weights)
        except RunStopped:  # pragma: no cover - nodes vanished at the very end: keep the calibrated model
            pass
        return record

    def finish(self, status: str, reason: str, detail: str, final_record: dict | None) -> dict:
        s = self.settings
        completed = [r for r in self.history if "model_sha256_after" in r]
        last_eval = next((r for r in reversed(self.history) if r.get("institutions")), None)
        if final_record is not None and final_record.get("global"):
            last_eval = final_record
        pooled = (last_eval or {}).get("_pooled_eval")
        summary = {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "status": status,
            "stop_reason": reason,
            "stop_detail": detail,
            "rounds_planned": s.num_server_rounds,
            "rounds_completed": len(completed),
            "wall_s": time.time() - self.started,
            "settings": s.as_run_config(),
            "schema": self.schema.key,
            "statistics": self.statistics,
            "history": [_public(r) for r in self.history],
            "final": (last_eval or {}).get("global") or (completed[-1].get("global") if completed else None),
            "institutions": _final_institutions(self.history + ([last_eval] if last_eval is final_record
                                                                  and last_eval is not None else [])),
        }
        if final_record is not None:
            summary["calibration"] = final_record["calibration"]
            summary["final_evaluation"] = {k: v for k, v in _public(final_record).items() if k != "weights"}
        if pooled is not None:
            summary["final_histograms"] = {"hist_neg": pooled.hist_neg, "hist_pos": pooled.hist_pos}
        if last_eval is not None:
            summary["final_institution_histograms"] = {
                who: {"bins": REPORT_BINS, "hist_neg": rebin(m["_sums"].hist_neg, REPORT_BINS),
                      "hist_pos": rebin(m["_sums"].hist_pos, REPORT_BINS)}
                for who, m in last_eval["institutions"].items()
                if "_sums" in m and len(m["_sums"].hist_neg) % REPORT_BINS == 0}
            summary["fairness"] = last_eval.get("fairness")
        export_weights = final_record["weights"] if final_record is not None else self.weights
        if self.encoder is not None and completed:
            pkg = ModelPackage(spec=self.spec, encoder=self.encoder, weights=export_weights, schema=self.schema,
                               scale=ScoreScale(), cutoff_pd=s.cutoff_pd,
                               meta={"run_id": self.run_id, "rounds_completed": len(completed),
                                     "strategy": s.strategy, "dp": s.dp, "status": status,
                                     "final_metrics": summary["final"]},
                               reference=self.population_reference(final_record))
            save_package(self.run_dir / "model", pkg)
            summary["model_dir"] = str(self.run_dir / "model")
        if self.audit is not None:
            summary["ledger_head"] = self.audit.run_end(
                status, reason, len(completed), weights_digest(export_weights) if export_weights else None,
                Path(summary["model_dir"]) if "model_dir" in summary else None, summary["final"],
                weights_digest(self.weights) if self.weights else None, summary.get("calibration"))
            summary["ledger"] = {"path": str(self.audit.path), "key_id": self.audit.ledger.key_id,
                                 "entries": self.audit.ledger.next_index}
        self.recorder.write_metrics(summary)
        return summary

    def population_reference(self, final_record: dict | None) -> PopulationReference | None:
        """The exported model's development population (:mod:`models.reference`): the summed
        statistics and, when the final evaluation of the exported (recalibrated) model was
        released, its pooled holdout score histograms."""
        if self.population_counts is None:
            return None
        contributors = len(self.statistics.get("contributors") or [])
        ref = PopulationReference(feature_counts=self.population_counts, source={
            "features": f"summed feature statistics of {contributors} institution(s)"
                        + (" (each Gaussian-noised by its node)" if self.settings.dp else " (exact)"),
            "dp": bool(self.settings.dp), "contributors": contributors, "run_id": self.run_id})
        pooled = (final_record or {}).get("_pooled_eval")
        if pooled is not None:
            ref.score_neg, ref.score_pos = np.asarray(pooled.hist_neg), np.asarray(pooled.hist_pos)
            ref.source["scores"] = (f"pooled holdout score histograms of the exported model ({len(pooled.hist_neg)} "
                                    f"logit bins; final evaluation after round {final_record['round']} by "
                                    f"{len(final_record.get('institutions') or {})} institution(s))")
        return ref


def _stop_reason(refusal_codes: set[str], dropped: dict) -> str:
    """``budget-exhausted`` when every missing node said so (and none failed), else ``too-few-nodes``."""
    return P.REFUSED_BUDGET if refusal_codes == {P.REFUSED_BUDGET} and not dropped else "too-few-nodes"


def _privacy_fields(metrics: dict) -> dict:
    keys = ("epsilon-spent", "epsilon-budget", "epsilon-run", "delta", "noise-multiplier",
            "sample-rate", "steps", "num-examples", "train-loss")
    return {k.replace("-", "_"): float(metrics[k]) for k in keys if k in metrics}


def _drop_node_sums(records: list[dict]) -> None:
    """Forget the per-institution evaluation sums of ``records`` (8,000-bin histograms per node:
    ~130 MB a round at 1,000 nodes); their metrics stay. :meth:`ConsortiumRun.finish` needs the
    sums of the last evaluation only."""
    for r in records:
        for m in (r.get("institutions") or {}).values():
            m.pop("_sums", None)


def _public(record: dict) -> dict:
    """A history record without in-memory objects (keys starting with '_'), JSON-ready."""
    out = {k: v for k, v in record.items() if not k.startswith("_")}
    if "institutions" in out:
        out["institutions"] = {who: {k: v for k, v in m.items() if not k.startswith("_")}
                               for who, m in out["institutions"].items()}
    return out


def _final_institutions(history: list[dict]) -> dict[str, dict]:
    """Last known evaluation and privacy figures per institution."""
    out: dict[str, dict] = {}
    for r in history:
        for who, m in (r.get("institutions") or {}).items():
            out.setdefault(who, {}).update({"eval": {k: v for k, v in m.items() if not k.startswith("_")}})
        for who, p in (r.get("privacy") or {}).items():
            out.setdefault(who, {}).update({"privacy": dict(p)})
        for who, eps in (r.get("privacy_after_evaluation") or {}).items():
            out.setdefault(who, {}).setdefault("privacy", {})["epsilon_spent"] = eps
        for who, why in (r.get("refused") or {}).items():
            out.setdefault(who, {}).update({"last_refusal": why})
    return out


def run_consortium(grid: Grid, run_config: dict, run_id: int | str = 0,
                   resume_from: str | Path | None = None,
                   listeners: list[Callable[[dict], None]] | None = None) -> dict:
    """Run (or resume) one consortium run; returns the summary also written to metrics.json."""
    try:
        run = ConsortiumRun(grid, run_config, run_id, listeners)
    except UserError:
        raise
    return run.execute(Path(resume_from) if resume_from else None)
