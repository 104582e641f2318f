"""Running a sweep: every grid point not yet done, each in its own run directory, resumable.

:func:`run_sweep` skips the points whose result is stored under the same settings (the
*fingerprint* of :class:`~simulation.sweep_config.SweepConfig`), runs the others one by one —
in Flower's simulation runtime (:func:`simulation.runner.simulate`) or the in-process loop
(:func:`simulation.plain_runner.simulate_plain`) — stores each result as soon as its point
completes, and then writes the results table (:mod:`simulation.sweep_table`) and the plots
(:mod:`simulation.sweep_plots`). A table source is validated once and partitioned once per
(institutions, partition, seed); a partition made under other settings is made again.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from configs.errors import ConfigError, UserError
from fedcredit.atomic_write import write_json_atomic
from fedcredit.json_values import json_default
from simulation.sweep_config import GridPoint, SweepConfig
from simulation.sweep_plots import plot_sweep
from simulation.sweep_table import write_table


@dataclass
class SweepOutcome:
    out_dir: Path
    results: list[dict]
    ran: list[str]
    skipped: list[str]
    failed: list[str]
    table_csv: Path
    table_parquet: Path
    plots: list[Path]

    def summary(self) -> dict:
        return {"ok": not self.failed, "out": str(self.out_dir), "points": len(self.results), "ran": len(self.ran),
                "skipped": len(self.skipped), "failed": self.failed, "table": str(self.table_csv),
                "parquet": str(self.table_parquet), "plots": [str(p) for p in self.plots]}


def default_out_dir(cfg: SweepConfig) -> Path:
    return Path("runs") / f"sweep-{cfg.name}"


def stored_result(out_dir: Path, point: GridPoint, fingerprint: str) -> dict | None:
    """The stored result of ``point`` if it completed under the same settings, else None."""
    f = out_dir / "points" / f"{point.key}.json"
    if not f.is_file():
        return None
    try:
        r = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if r.get("fingerprint") != fingerprint or r.get("status") == "failed":
        return None
    return r


def run_sweep(cfg: SweepConfig, out_dir: str | Path | None = None,
              on_point: Callable[[str, GridPoint, int, int, dict | None], None] | None = None,
              on_event: Callable[[dict], None] | None = None, verbose: bool = False) -> SweepOutcome:
    """Run every point not yet done, then write the table and the plots.

    ``on_point(stage, point, index, total, result)`` is called with stage ``"skip"``,
    ``"start"`` and ``"done"``; ``on_event`` receives the Flower run's progress events.
    """
    out = check_out_dir(out_dir or default_out_dir(cfg)).resolve()
    fingerprint = cfg.fingerprint()
    points = cfg.points()
    results: dict[str, dict] = {}
    ran, skipped, failed = [], [], []
    todo = [p for p in points if stored_result(out, p, fingerprint) is None]
    # a table is validated once, before anything runs: a bad table stops the sweep with its report
    source = _load_table(cfg) if cfg.source == "table" and todo else None
    if source is not None:
        _check_min_rows(cfg, len(source.table))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the directory ({exc.strerror or exc})") from None
    if cfg.file.resolve() != (out / "sweep.toml").resolve():
        shutil.copyfile(cfg.file, out / "sweep.toml")
    for i, point in enumerate(points):
        done = stored_result(out, point, fingerprint)
        if done is not None:
            results[point.key] = done
            skipped.append(point.key)
            if on_point:
                on_point("skip", point, i, len(points), done)
            continue
        if on_point:
            on_point("start", point, i, len(points), None)
        run_dir = out / "runs" / point.key
        if run_dir.exists():  # an interrupted or failed attempt, or a result under other settings
            shutil.rmtree(run_dir)
        t0 = time.time()
        try:
            data_dir = _partition_dir(cfg, out, point, source) if cfg.source == "table" else None
            summary = _run_point(cfg, point, run_dir, data_dir, on_event, verbose)
            result = _result_row(point, summary, run_dir)
        except UserError as exc:  # e.g. a partition too small for DP training: this point only
            result = {"status": "failed", "error": str(exc), "run_dir": str(run_dir)}
            failed.append(point.key)
        except Exception as exc:  # a bug or a runtime failure: recorded, the sweep goes on; rerun retries
            import traceback

            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(), "run_dir": str(run_dir)}
            failed.append(point.key)
        result.update({"key": point.key, "fingerprint": fingerprint, "runtime": cfg.runtime,
                       "point_wall_s": round(time.time() - t0, 2), **_point_fields(point)})
        (out / "points").mkdir(exist_ok=True)
        write_json_atomic(out / "points" / f"{point.key}.json", result, default=json_default)
        results[point.key] = result
        if result["status"] != "failed":
            ran.append(point.key)
        if on_point:
            on_point("done", point, i, len(points), result)
    rows = [results[p.key] for p in points]
    csv_path, parquet_path = write_table(rows, out)
    plots = plot_sweep(rows, out / "plots")
    return SweepOutcome(out, rows, ran, skipped, failed, csv_path, parquet_path, plots)


def _point_fields(p: GridPoint) -> dict:
    d = asdict(p)
    d["dp"] = p.dp
    return d


def _load_table(cfg: SweepConfig):
    """The table, validated once (a bad table stops the sweep with the validation report)."""
    from simulation.partition_files import load_partition_source

    return load_partition_source(cfg.path, cfg.schema, cfg.mapping)


def _partition_dir(cfg: SweepConfig, out: Path, point: GridPoint, source) -> Path:
    """The institution files of ``point`` (the source's rows as they are: the points read them with
    the sweep's mapping) — reused when a partition made under the same settings
    (:meth:`SweepConfig.partition_fingerprint`) is there, made (again) otherwise."""
    from simulation.partition_files import write_partition

    d = out / "data" / point.data_key
    fingerprint = cfg.partition_fingerprint(point)
    if stored_partition_fingerprint(d) == fingerprint:
        return d
    write_partition(source, d, k=point.institutions, method=point.partition, seed=point.seed, alpha=cfg.alpha,
                    feature=cfg.feature, strictness=cfg.strictness, min_rows=cfg.min_rows, force=True,
                    extra={"sweep_fingerprint": fingerprint})
    return d


def stored_partition_fingerprint(data_dir: Path) -> str | None:
    """The sweep fingerprint recorded in ``data_dir/manifest.json`` (None: no partition there, a
    damaged manifest, or one written before fingerprints were recorded)."""
    try:
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("sweep_fingerprint") if isinstance(manifest, dict) else None


def _check_min_rows(cfg: SweepConfig, rows: int) -> None:
    """Dirichlet and quantity skew give every institution at least ``data.min_rows`` rows: the
    table must hold that many for the largest number of institutions in the grid."""
    from simulation.partitioning import MIN_ROWS_METHODS

    methods = [m for m in cfg.axes["partition"] if m in MIN_ROWS_METHODS]
    if not methods:
        return
    too_many = [k for k in cfg.axes["institutions"] if k * cfg.min_rows > rows]
    if not too_many:
        return
    k = max(too_many)
    raise ConfigError(
        f"{cfg.file}: data.min_rows: {k} institutions (grid.institutions) of at least {cfg.min_rows} rows "
        f"(data.min_rows, used by grid.partition {' and '.join(repr(m) for m in methods)}) need "
        f"{k * cfg.min_rows} rows; the table {cfg.path} has {rows} after validation. Lower data.min_rows to at "
        f"most {rows // k}, or grid.institutions to at most {rows // cfg.min_rows}")


def check_out_dir(out: str | Path) -> Path:
    """``--out`` must be a directory or a path where one can be made."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; give a directory (new, or the one of an "
                        f"earlier run of this sweep to resume it)")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, so the directory cannot be made there; choose another path")
    return out


def _options(cfg: SweepConfig, point: GridPoint, run_dir: Path, data_dir: Path | None):
    from configs.mapping import mapping_reference
    from server.settings import DEFAULTS
    from simulation.runner import SimulationOptions

    return SimulationOptions(
        institutions=point.institutions, rounds=point.rounds, data_dir=str(data_dir) if data_dir else None,
        schema=cfg.schema, mapping=mapping_reference(cfg.mapping) if data_dir and cfg.mapping else None,
        strategy=point.strategy, dp=point.dp,
        epsilon=point.epsilon if point.dp else float(DEFAULTS["sim-max-epsilon"]), seed=point.seed,
        scale=cfg.scale, out=str(run_dir), baselines=cfg.baselines, cpus=cfg.cpus or None,
        run_config={**cfg.run_config, "local-epochs": point.local_epochs})


def _run_point(cfg: SweepConfig, point: GridPoint, run_dir: Path, data_dir: Path | None,
               on_event: Callable[[dict], None] | None, verbose: bool) -> dict:
    o = _options(cfg, point, run_dir, data_dir)
    o.verbose = verbose
    if cfg.runtime == "plain":
        from simulation.plain_runner import simulate_plain

        return simulate_plain(o)
    from simulation.runner import simulate

    return simulate(o, on_event)


def _result_row(point: GridPoint, summary: dict, run_dir: Path) -> dict:
    spent = [r["epsilon_spent"] for r in summary.get("institutions", []) if r.get("epsilon_spent") is not None]
    history = []
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        for r in json.loads(metrics_file.read_text()).get("history", []):
            auc = (r.get("global") or {}).get("auc")
            if auc is not None:
                history.append([r["round"], auc])
    return {"status": summary.get("status"), "stop_reason": summary.get("stop_reason", ""),
            "rounds_completed": summary.get("rounds"), "auc_federated": summary.get("auc_federated"),
            "ks_federated": summary.get("ks_federated"), "auc_centralized": summary.get("auc_centralized"),
            "auc_local_only_mean": summary.get("auc_local_only_mean"),
            "epsilon_spent_max": max(spent) if spent else None, "wall_s": summary.get("wall_s"),
            "run_dir": str(run_dir), "auc_by_round": history, "error": ""}
