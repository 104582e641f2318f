"""Deciding credit applications with a model package: validated as ``data validate``, scored as ``score``.

One application is a JSON object in the institution's own column names (its mapping applies);
it becomes a one-row table and goes through exactly the checks of ``fedcredit data validate``
(:func:`clients.validation.validate_frame`: same rules, same wording; the label may be absent,
no minimum of rows). A valid table is scored by :func:`clients.score_command.score_rows` (the
code behind ``fedcredit score``): PD, points on the package's score scale, ``approve`` when
PD < cut-off PD, and the K main adverse-action reasons of :mod:`models.reasons`.

Several applications that arrive together are validated as one table when they have the same
fields (the checks are per cell and per column, so a table of them passes only if each one does)
— one validation instead of many; if that table fails, each application is validated on its
own, so every applicant gets only its own problems, worded for its own row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clients.tabular_io import DataValidationError, Problem
from clients.validation import validate_frame
from configs.errors import UserError
from configs.mapping import Mapping, load_mapping
from models.package import load_package, sha256_file
from models.scoring import decisions

#: reasons given per decision unless configured (as ``score --explain 3``)
DEFAULT_EXPLAIN = 3


@dataclass
class Validated:
    """A valid application (or batch): its clean table and the validator's warnings.

    Applications validated together share one table; ``row`` is then this application's row in
    it (None: every row of ``table`` is this job's, as for a batch).
    """

    table: pd.DataFrame
    warnings: list[dict] = field(default_factory=list)
    row: int | None = None

    @property
    def rows(self) -> range:
        """This application's (or batch's) rows of ``table``."""
        return range(len(self.table)) if self.row is None else range(self.row, self.row + 1)


@dataclass
class Rejected:
    """An invalid application (or batch): every problem, as ``data validate`` words it."""

    problems: list[dict]
    warnings: list[dict] = field(default_factory=list)


@dataclass
class Scores:
    """Model outputs for the rows of a validated table."""

    pd: np.ndarray
    points: np.ndarray
    decision: np.ndarray
    reasons: list[list[str]]

    def row(self, i: int) -> dict:
        return {"pd": float(self.pd[i]), "score": round(float(self.points[i]), 1), "decision": str(self.decision[i])}


class DecisionModel:
    """A verified model package, the institution's mapping and the decision policy (cut-off, reasons).

    ``package_sha256`` is the sha256 of the package's ``model.json`` — which records the sha256 of
    every other file of the package — so it names the whole package; ``weights_sha256`` is the
    model's identity as the run's ledger records it (``model_sha256``).
    """

    def __init__(self, package_dir: str | Path, mapping: str | Path | None = None,
                 cutoff_pd: float | None = None, explain: int = DEFAULT_EXPLAIN):
        self.package_dir = Path(package_dir).expanduser().resolve()
        self.package = load_package(self.package_dir)  # verifies every file's sha256 first
        meta = json.loads((self.package_dir / "model.json").read_text())
        self.package_sha256 = sha256_file(self.package_dir / "model.json")
        self.weights_sha256 = str(meta.get("weights_sha256"))
        self.schema = self.package.schema
        self.mapping: Mapping | None = load_mapping(mapping, self.schema) if mapping else None
        self.mapping_sha256 = sha256_file(Path(self.mapping.source)) if self.mapping else None
        self.cutoff_pd = self.package.cutoff_pd if cutoff_pd is None else float(cutoff_pd)
        if not 0 < self.cutoff_pd < 1:
            raise UserError(f"--cutoff-pd must lie strictly between 0 and 1, got {self.cutoff_pd}")
        if explain < 0:
            raise UserError(f"--explain must be ≥ 0, got {explain}")
        self.explain = int(explain)
        self.scale = self.package.scale
        self.network = self.package.model()
        self.network.eval()

    # ------------------------------------------------------------------ identity
    @property
    def identity(self) -> dict:
        """What each decision records about the model that made it."""
        return {"package_sha256": self.package_sha256, "weights_sha256": self.weights_sha256,
                "run_id": self.package.meta.get("run_id")}

    def settings(self) -> dict:
        """What a service start records: the package, mapping and policy."""
        return {"model": dict(self.identity, dir=str(self.package_dir), schema=self.schema.key),
                "mapping": ({"path": str(self.mapping.source), "name": self.mapping.name,
                             "sha256": self.mapping_sha256} if self.mapping else None),
                "cutoff_pd": self.cutoff_pd, "explain": self.explain, "score_scale": self.scale.to_dict()}

    def field_name(self, column: str | None) -> str | None:
        """The institution's own name for a schema column (what its applications use)."""
        if column and self.mapping is not None and column in self.schema.columns:
            return self.mapping.source_column_for(column)
        return column

    # ---------------------------------------------------------------- validating
    def problem(self, p: Problem, numbered: bool) -> dict:
        """A validation problem as the service answers it: the field in the institution's own name."""
        out = {"field": self.field_name(p.column), "schema_column": p.column, "code": p.code, "message": p.message}
        if numbered:
            out["items"] = list(p.rows)
        return out

    def validate_table(self, applications: list[dict], numbered: bool = True) -> Validated | Rejected:
        """Validate applications as one table (item *i* is data row *i*)."""
        try:
            data = validate_frame(pd.DataFrame(applications), self.schema, self.mapping, source="request",
                                  require_label=False, min_rows=1, min_positives=0)
        except DataValidationError as exc:
            return Rejected([self.problem(p, numbered) for p in exc.problems],
                            [self.problem(w, numbered) for w in exc.warnings])
        return Validated(data.table, [self.problem(w, numbered) for w in data.warnings])

    def validate_each(self, applications: list[dict]) -> list[Validated | Rejected]:
        """Validate each application as its own one-row table; same-field groups go through together first."""
        out: list[Validated | Rejected | None] = [None] * len(applications)
        groups: dict[tuple, list[int]] = {}
        for i, app in enumerate(applications):
            groups.setdefault(tuple(sorted(app)), []).append(i)
        for members in groups.values():
            together = self.validate_table([applications[i] for i in members], numbered=False) \
                if len(members) > 1 else None
            if isinstance(together, Validated):
                for row, i in enumerate(members):
                    out[i] = Validated(together.table, together.warnings, row)
                continue
            for i in members:
                out[i] = self.validate_table([applications[i]], numbered=False)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------- scoring
    def score(self, table: pd.DataFrame) -> Scores:
        """PD, points, decision and reasons for every row of a validated table."""
        from clients.score_command import score_rows

        pd_values, reasons = score_rows(self.package, self.network, table, self.explain)
        texts = [[r for r in row if r] for row in reasons.tolist()] if self.explain else [[] for _ in range(len(table))]
        return Scores(pd_values, self.scale.points(pd_values), decisions(pd_values, self.cutoff_pd), texts)

    def redecide(self, application: dict) -> dict:
        """Decide one application again, recording nothing: ``{"outputs", "reasons"}`` or ``{"problems"}``."""
        checked = self.validate_table([application], numbered=False)
        if isinstance(checked, Rejected):
            return {"problems": checked.problems}
        scores = self.score(checked.table)
        return {"outputs": scores.row(0), "reasons": scores.reasons[0]}

    def describe(self) -> dict[str, Any]:
        """The model and policy for ``GET /v1/model``: identity, card summary, schema in the institution's
        field names, cut-off (as PD and as points)."""
        meta = self.package.meta
        fields = []
        for f in self.schema.features:
            item = {"field": self.field_name(f.name), "schema_column": f.name, "kind": f.kind,
                    "description": f.description, "missing": f.missing}
            if f.kind == "categorical":
                item["categories"] = list(f.categories or ())
            else:
                item["range"] = list(f.range) if f.range is not None else None
            fields.append(item)
        id_col = self.schema.id_column
        return {
            "model": dict(self.identity, spec=self.package.spec.to_dict()),
            "card": {k: meta.get(k) for k in ("status", "rounds_completed", "strategy", "dp", "final_metrics")
                     if k in meta},
            "schema": {"key": self.schema.key, "fingerprint": self.schema.fingerprint(),
                       "id_field": self.field_name(id_col) if id_col else None, "fields": fields},
            "mapping": self.settings()["mapping"],
            "cutoff_pd": self.cutoff_pd, "cutoff_score": round(float(self.scale.points([self.cutoff_pd])[0]), 1),
            "score_scale": self.scale.to_dict(), "explain": self.explain,
        }
