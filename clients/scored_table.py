"""A model package and a validated table scored with it: the first step of monitor, backtest, compare.

The file is read and validated exactly like ``fedcredit score`` reads it
(:func:`clients.validation.load_institution_table`, with the institution's ``--mapping``) and
scored with the same code (:func:`clients.score_command.score_rows`). With ``outcomes=True`` the
label column is required (a backtest or a comparison needs the realised defaults); without it an
applicant file without outcomes is fine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ScoredTable:
    """``pd``: the package's PD of every row of ``data.table`` (in file order); ``feature_counts``:
    the table's per-feature count vectors (:func:`models.encoder.feature_statistics`) when they
    were counted while scoring, else None."""

    package: object  # models.package.ModelPackage
    data: object  # clients.validation.InstitutionTable
    pd: np.ndarray
    feature_counts: dict | None = None

    @property
    def table(self):
        return self.data.table

    @property
    def rows(self) -> int:
        return len(self.pd)

    @property
    def outcomes(self) -> np.ndarray | None:
        """The realised defaults (1 = default) when the file has the label column, else None."""
        label = self.package.schema.label.name
        return self.table[label].to_numpy(dtype=np.int64) if label in self.table.columns else None


def package_pd(pkg, table) -> np.ndarray:
    """PD of every row of a validated table under a model package (the scoring code of ``score``)."""
    from clients.score_command import score_rows

    return score_rows(pkg, pkg.model(), table)[0]


def load_table(path, pkg, mapping=None, *, outcomes: bool = False):
    """Read and validate ``path`` against the package's schema (as ``fedcredit score`` does);
    ``outcomes`` requires the label column with both classes present."""
    from clients.validation import load_institution_table

    return load_institution_table(path, pkg.schema, mapping, require_label=outcomes, min_rows=1,
                                  min_positives=1 if outcomes else 0)


def load_scored_table(model_dir, data_path, mapping=None, *, outcomes: bool = False, package=None,
                      feature_counts: bool = False) -> ScoredTable:
    """Load (and verify) the package in ``model_dir`` — or use ``package`` — then read, validate
    and score ``data_path``; ``feature_counts``: also count the features in the scoring pass."""
    from clients.score_command import score_rows
    from models.package import load_package

    pkg = package if package is not None else load_package(model_dir)
    data = load_table(data_path, pkg, mapping, outcomes=outcomes)
    counts = {} if feature_counts else None
    pd_values = score_rows(pkg, pkg.model(), data.table, counts=counts)[0]
    return ScoredTable(package=pkg, data=data, pd=pd_values, feature_counts=counts)


def check_command_paths(models: list[str], out: str | None) -> None:
    """Before any work: ``--out`` can be a directory, each ``--model``-like path names a package."""
    from clients.score_command import check_model_dir
    from fedcredit.path_checks import check_output_dir

    if out:
        check_output_dir(out)
    for model in models:
        check_model_dir(model)


def write_result_json(out: str, name: str, payload: dict):
    """``OUT/NAME`` (the directory created) as strict JSON (undefined figures are null), atomically."""
    from pathlib import Path

    from fedcredit.atomic_write import write_json_atomic
    from fedcredit.json_values import finite

    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(directory / name, finite(payload), allow_nan=False)
