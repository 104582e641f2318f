"""The decision desk: a worker thread that validates, scores and records decisions in groups, and a
committer thread that makes them durable before they are answered.

Every request becomes a job — one application, a batch, or an override — on a queue. The
worker takes what is queued (up to ``max_group`` applications), validates it
(:meth:`~clients.decision_engine.DecisionModel.validate_each`), scores every valid row at once,
appends one trail entry per decision and per override and writes them to the file, unsynced.
It hands the group to the committer and goes on with the next group. The committer syncs the
trail (``fdatasync``) once for every group written since its last sync and only then answers
them. That is group commit, pipelined: one sync serves every group written while the previous
one ran, the next group is decided while the disk syncs, and no answer ever precedes its
durable entry. With no trail (``log=None``, for benchmarks) the worker answers directly.

If writing or syncing the trail fails (disk full, I/O error) the desk stops deciding: the groups
not yet synced and every later job are answered :class:`TrailUnavailable` (HTTP 503); a restart
verifies the trail again.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from clients.decision_engine import DecisionModel, Rejected, Validated
from clients.decision_log import DecisionLog, application_sha256

#: applications the worker decides in one group at most (one validation pass, one fsync)
DEFAULT_MAX_GROUP = 256
#: applications waiting at most before new requests are refused (HTTP 503, retry)
DEFAULT_MAX_QUEUE = 4096
OUTCOMES = ("approve", "decline")


class TrailUnavailable(RuntimeError):
    """The decision trail cannot be written: no decision is made (HTTP 503)."""


class Overloaded(RuntimeError):
    """Too many applications are waiting; the client should retry (HTTP 503 with Retry-After)."""


class UnknownDecision(LookupError):
    """No decision with that id on the trail (HTTP 404)."""


@dataclass
class Job:
    """One request: ``kind`` is ``single``, ``batch`` or ``override``."""

    kind: str
    applications: list[dict] = field(default_factory=list)
    override: dict | None = None
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return max(len(self.applications), 1)


@dataclass
class Decided:
    """The answered decisions of a job, in order."""

    records: list[dict]
    batch_id: str | None = None


class DecisionDesk:
    """The worker thread between the HTTP handlers and the model and trail (see the module docstring)."""

    def __init__(self, model: DecisionModel, log: DecisionLog | None, store_application: bool = True,
                 max_group: int = DEFAULT_MAX_GROUP, max_queue: int = DEFAULT_MAX_QUEUE):
        self.model = model
        self.log = log
        self.store_application = store_application
        self.max_group = max_group
        self.max_queue = max_queue
        self.failure: str | None = None
        self.decided = 0
        self.groups = 0
        self.syncs = 0
        self.sync_seconds = 0.0
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting = 0  # applications queued (approximate: read without the lock)
        self._lock = threading.Lock()
        self._closed = False
        self._held: Job | None = None  # a job taken from the queue that did not fit the last group
        self._commits: queue.SimpleQueue[tuple[list[Job], list] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="decision-desk", daemon=True)
        self._committer = threading.Thread(target=self._commit_loop, name="decision-commit", daemon=True)

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        self._committer.start()
        self._thread.start()

    def close(self, timeout: float = 120.0) -> None:
        """Stop taking jobs, answer what is queued, stop the worker and close the trail.

        A worker still busy after ``timeout`` seconds is left alone (it may be writing the trail):
        no service-stop entry then, and the process's exit ends it.
        """
        with self._lock:
            self._closed = True
        self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in (self._thread, self._committer):  # the worker hands its end on to the committer
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive() or self._committer.is_alive():
            return
        if self.log is not None:
            if self.failure is None:
                self.log.append("service-stop", {"decisions": self.decided, "groups": self.groups})
            self.log.close()

    @property
    def waiting(self) -> int:
        return self._waiting

    # ------------------------------------------------------------------ submitting
    def submit(self, job: Job) -> Future:
        """Queue a job; its future resolves to :class:`Decided`, :class:`Rejected` or an override record."""
        if self.failure is not None:
            raise TrailUnavailable(self.failure)
        with self._lock:
            if self._closed:
                raise TrailUnavailable("the service is shutting down")
            if self._waiting + job.size > self.max_queue:
                raise Overloaded(f"{self._waiting} applications are waiting (limit {self.max_queue})")
            self._waiting += job.size
        self._queue.put(job)
        return job.future

    # ------------------------------------------------------------------ the worker
    def _take_group(self) -> list[Job] | None:
        """Block for the first job, then take what else is queued, up to ``max_group`` applications."""
        first = self._held or self._queue.get()
        self._held = None
        if first is None:
            return None
        group, size = [first], first.size
        while size < self.max_group:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # answer this group, then stop
                break
            if size + job.size > self.max_group:
                self._held = job
                break
            group.append(job)
            size += job.size
        return group

    def _run(self) -> None:
        """The worker: decide group after group; hand each to the committer (without a trail: answer it)."""
        while True:
            group = self._take_group()
            if group is None:
                self._commits.put(None)
                return
            try:
                answers = self._decide(group)
            except OSError as exc:  # the trail could not be written: stop deciding
                answers = [self._fail(exc)] * len(group)
            except Exception as exc:  # a bug: every job of the group fails with it (HTTP 500)
                answers = [exc] * len(group)
            if self.log is None:
                self._answer(group, answers)
            else:
                self._commits.put((group, answers))

    def _commit_loop(self) -> None:
        """The committer: one sync for every group written since the last, then their answers."""
        while True:
            first = self._commits.get()
            if first is None:
                return
            tickets, stop = [first], False
            while True:  # every group the worker has written meanwhile rides on the same sync
                try:
                    ticket = self._commits.get_nowait()
                except queue.Empty:
                    break
                if ticket is None:
                    stop = True
                    break
                tickets.append(ticket)
            if self.failure is None:
                try:
                    t0 = time.perf_counter()
                    self.log.datasync()  # the worker flushed each group to the file before handing it on
                    self.sync_seconds += time.perf_counter() - t0
                    self.syncs += 1
                except OSError as exc:
                    self._fail(exc)
            for group, answers in tickets:
                self._answer(group, answers if self.failure is None else [TrailUnavailable(self.failure)] * len(group))
            if stop:
                return

    def _fail(self, exc: OSError) -> TrailUnavailable:
        """Stop deciding: the trail cannot be written or synced."""
        self.failure = f"the decision trail could not be written ({exc.strerror or exc}); restart the service"
        return TrailUnavailable(self.failure)

    def _answer(self, group: list[Job], answers: list) -> None:
        with self._lock:
            self._waiting -= sum(j.size for j in group)
        for job, answer in zip(group, answers):
            if isinstance(answer, BaseException):
                job.future.set_exception(answer)
            else:
                job.future.set_result(answer)

    def _decide(self, group: list[Job]) -> list:
        """Validate, score and record one group (written to the file, not yet synced); each job's answer."""
        if self.failure is not None:
            return [TrailUnavailable(self.failure)] * len(group)
        answers: list = [None] * len(group)
        valid: list[tuple[int, Validated]] = []  # (job position, its validated rows)
        singles = [i for i, j in enumerate(group) if j.kind == "single"]
        for i, checked in zip(singles, self.model.validate_each([group[i].applications[0] for i in singles])):
            self._collect(i, checked, answers, valid)
        for i, job in enumerate(group):
            if job.kind == "batch":
                self._collect(i, self.model.validate_table(job.applications), answers, valid)
        if valid:
            self._record_decisions(group, valid, answers)
        for i, job in enumerate(group):
            if job.kind == "override":
                answers[i] = self._record_override(job.override or {})
        if self.log is not None:
            self.log.flush()  # to the file; durable, and answered, once the committer has synced it
        self.groups += 1
        return answers

    @staticmethod
    def _collect(i: int, checked: Validated | Rejected, answers: list, valid: list) -> None:
        if isinstance(checked, Rejected):
            answers[i] = checked
        else:
            valid.append((i, checked))

    def _record_decisions(self, group: list[Job], valid: list[tuple[int, Validated]], answers: list) -> None:
        """Score every valid row of the group at once (each distinct table once), then record each decision."""
        tables: dict[int, pd.DataFrame] = {}
        for _, checked in valid:
            tables.setdefault(id(checked.table), checked.table)
        offsets, start = {}, 0
        for key, table in tables.items():
            offsets[key] = start
            start += len(table)
        combined = pd.concat(list(tables.values()), ignore_index=True) if len(tables) > 1 else \
            next(iter(tables.values()))
        scores = self.model.score(combined)
        for i, checked in valid:
            job = group[i]
            batch_id = str(uuid.uuid4()) if job.kind == "batch" else None
            base = offsets[id(checked.table)]
            records = [self._record_one(application, scores, base + row, checked.warnings,
                                        {"id": batch_id, "item": item + 1} if batch_id else None)
                       for item, (application, row) in enumerate(zip(job.applications, checked.rows))]
            answers[i] = Decided(records, batch_id)
            self.decided += len(records)

    def _record_one(self, application: dict, scores, row: int, warnings: list[dict], batch: dict | None) -> dict:
        """One decision's trail entry (written, not yet synced) and the answer built from it."""
        decision_id = str(uuid.uuid4())
        outputs = scores.row(row)
        reasons = scores.reasons[row]
        payload = {"decision_id": decision_id, "model": self.model.identity,
                   "mapping_sha256": self.model.mapping_sha256, "cutoff_pd": self.model.cutoff_pd,
                   "explain": self.model.explain, "outputs": outputs, "reasons": reasons,
                   "warnings": [w["code"] for w in warnings], "batch": batch}
        if self.store_application:
            payload["application"] = application
        else:
            payload["application_sha256"] = application_sha256(application)
        trail = None
        when = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        if self.log is not None:
            entry = self.log.append("decision", payload, sync=False)
            trail, when = {"index": entry["index"], "hash": entry["hash"]}, entry["time"]
        return {"decision_id": decision_id, "time": when, "decision": outputs["decision"], "pd": outputs["pd"],
                "score": outputs["score"], "cutoff_pd": self.model.cutoff_pd, "reasons": reasons,
                "model": self.model.identity, "warnings": warnings, "trail": trail, **({"batch": batch} if batch else {})}

    def _record_override(self, request: dict) -> dict | Exception:
        """A person's override of a decision, chained after it (written, not yet synced)."""
        if self.log is None:  # the HTTP layer refuses overrides without a trail before they get here
            return TrailUnavailable("the service runs without a decision trail, so there is nothing to override")
        ref = self.log.index.decisions.get(request["decision_id"])
        if ref is None:
            return UnknownDecision(f"no decision {request['decision_id']!r} on this service's trail")
        before = ref.outcome
        entry = self.log.append("override", {
            "decision_id": request["decision_id"], "decision_hash": ref.hash, "from": before, "to": request["to"],
            "changes_outcome": before != request["to"], "reason": request["reason"], "by": request["by"]},
            sync=False)
        return {"decision_id": request["decision_id"], "time": entry["time"], "from": before, "to": request["to"],
                "changes_outcome": before != request["to"], "reason": request["reason"], "by": request["by"],
                "trail": {"index": entry["index"], "hash": entry["hash"]}}

