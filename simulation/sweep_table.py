"""The results of a sweep as one table: one row per grid point (``results.csv``, ``results.parquet``)."""

from __future__ import annotations

from pathlib import Path

from fedcredit.atomic_write import atomic_path

TABLE_COLUMNS = ["key", "epsilon", "dp", "strategy", "rounds", "local_epochs", "institutions", "partition", "seed",
                 "status", "stop_reason", "rounds_completed", "auc_federated", "ks_federated", "auc_centralized",
                 "auc_local_only_mean", "epsilon_spent_max", "wall_s", "point_wall_s", "runtime", "run_dir", "error"]


def results_frame(rows: list[dict]):
    import pandas as pd

    frame = pd.DataFrame([{c: r.get(c) for c in TABLE_COLUMNS} for r in rows], columns=TABLE_COLUMNS)
    for c in ("epsilon", "auc_federated", "ks_federated", "auc_centralized", "auc_local_only_mean",
              "epsilon_spent_max", "wall_s", "point_wall_s"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    for c in ("rounds", "local_epochs", "institutions", "seed"):
        frame[c] = frame[c].astype("int64")
    frame["rounds_completed"] = pd.to_numeric(frame["rounds_completed"], errors="coerce").astype("Int64")
    frame["dp"] = frame["dp"].astype(bool)
    for c in ("key", "strategy", "partition", "status", "stop_reason", "runtime", "run_dir", "error"):
        frame[c] = frame[c].fillna("").astype(str)
    return frame


def write_table(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``results.parquet``: one row per point (ε empty/NaN = no DP)."""
    frame = results_frame(rows)
    csv_path, parquet_path = out / "results.csv", out / "results.parquet"
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(parquet_path) as tmp:
        frame.to_parquet(tmp, index=False)
    return csv_path, parquet_path
