"""Sweeps: one simulated consortium per point of a grid — resumable, tabulated, plotted.

A sweep file (TOML; ``configs/sweeps/privacy-utility.toml`` is an example) declares a grid::

    [sweep]
    name = "privacy-utility"     # optional (default: the file name); names the default output directory
    runtime = "flower"           # "flower": the real ServerApp/ClientApps in Flower's simulation
                                 # runtime (simulation.runner.simulate); "plain": the same node code in
                                 # an in-process FedAvg loop (simulation.plain_loop; no fedadam) — fast
    baselines = true             # centralised and local-only reference models at every point
    cpus = 0                     # CPUs for Flower's runtime (0 = all)

    [data]
    source = "synthetic"         # "synthetic": the archetype consortium; "table": one table, partitioned
    scale = 0.25                 # synthetic: size multiplier of the institutions
    # path = "UCI_Credit_Card.csv"   table: CSV or Parquet (relative: to the current directory, else
    # mapping = "uci-taiwan"          to the sweep file); its column mapping (optional)
    # schema = "consumer-credit-v1"
    # alpha = 0.5  feature = "credit_limit"  strictness = 1.0  min_rows = 500   (partition parameters)

    [grid]                       # a value or an array each; every combination is one point
    epsilon = [0.5, 1, 2, 4, 8, "no-dp"]   # each institution's budget ε; "no-dp" trains without DP
    strategy = ["fedavg", "fedprox"]        # fedavg | fedprox | fedadam
    rounds = 10
    local_epochs = 1
    institutions = 5
    # partition = ["iid", "dirichlet", "quantity", "feature"]   (table source only)
    seed = [0, 1, 2]             # repeats: data synthesis / partition, initialisation, sampling, noise

    [run-config]                 # further run-config keys, the same at every point
    batch-size = 256

Every key is checked when the file is read; a mistake names the file and the dotted key.

Output directory (default ``runs/sweep-<name>``)::

    sweep.toml            the sweep file as run
    points/<key>.json     one result per point, written as soon as the point completes
    runs/<key>/           the point's run directory (metrics.json, model/, report.html …)
    data/<partition>/     institution files of each partition of the table (table source); the
                          manifest records the settings' fingerprint, and a partition made under
                          other settings (table, mapping, alpha, feature, …) is made again
    results.csv  results.parquet   the table: one row per point, with its run directory
    plots/privacy_utility.png      AUC vs ε: federated, local-only, centralised, no-DP references
    plots/auc_by_round.png         global AUC after each round, per point
    plots/auc_by_<axis>.png        AUC vs each other varied axis (strategy, rounds, …), per ε

**Resume.** Rerunning the same sweep into the same directory skips every point whose result
is stored under the same settings (the *fingerprint* of data, run config, runtime and
baselines); interrupted and failed points run again (their partial run directory is removed).
A table too small for ``data.min_rows`` rows at each of the most ``grid.institutions`` (Dirichlet
and quantity skew) stops the sweep before any point runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from configs.errors import ConfigError, UserError
from configs.toml_reader import Table, read_toml
from fedcredit.json_values import json_default

RUNTIMES = ("flower", "plain")
SOURCES = ("synthetic", "table")
NO_DP = "no-dp"
SYNTHETIC_PARTITION = "archetypes"
#: grid axes in the order of the point keys (the last varies fastest)
AXES = ("seed", "institutions", "partition", "rounds", "local_epochs", "strategy", "epsilon")
TABLE_ONLY = ("path", "mapping", "alpha", "feature", "strictness", "min_rows")
#: run-config keys the sweep sets itself, and where to set them instead
CONTROLLED = {"num-server-rounds": "grid.rounds", "strategy": "grid.strategy", "dp": "grid.epsilon ('no-dp')",
              "sim-max-epsilon": "grid.epsilon", "seed": "grid.seed", "synthetic-seed": "grid.seed",
              "local-epochs": "grid.local_epochs", "synthetic-scale": "data.scale", "schema": "data.schema",
              "mapping": "data.mapping", "data-dir": "[data]", "run-dir": "the sweep's output directory",
              "state-root": "the sweep's output directory", "resume-from": "rerunning the sweep"}


@dataclass(frozen=True)
class GridPoint:
    """One simulation of the sweep. ``epsilon`` None = without DP."""

    epsilon: float | None
    strategy: str
    rounds: int
    local_epochs: int
    institutions: int
    partition: str
    seed: int

    @property
    def dp(self) -> bool:
        return self.epsilon is not None

    @property
    def key(self) -> str:
        """A stable, file-name-safe name, e.g. ``eps1-fedavg-r10-e1-n5-archetypes-s0``."""
        eps = "nodp" if self.epsilon is None else f"eps{self.epsilon:g}"
        return f"{eps}-{self.strategy}-r{self.rounds}-e{self.local_epochs}-n{self.institutions}-{self.partition}-s{self.seed}"

    @property
    def data_key(self) -> str:
        """Points with the same data key share the institutions' data (table source)."""
        return f"n{self.institutions}-{self.partition}-s{self.seed}"


@dataclass
class SweepConfig:
    file: Path
    name: str
    runtime: str
    baselines: bool
    cpus: int
    source: str
    schema: str
    scale: float
    path: Path | None
    mapping: str | None
    alpha: float
    feature: str | None
    strictness: float
    min_rows: int
    axes: dict[str, list]
    run_config: dict[str, Any] = field(default_factory=dict)
    _table_sha256: str | None = field(default=None, init=False, repr=False, compare=False)

    def points(self) -> list[GridPoint]:
        values = [self.axes[a] for a in AXES]
        return [GridPoint(**dict(zip(AXES, combo))) for combo in itertools.product(*values)]

    def fingerprint(self) -> str:
        """What a stored result must have been computed with to be reused (not the grid: each
        point names its own values)."""
        blob = {"runtime": self.runtime, "baselines": self.baselines, "source": self.source, "schema": self.schema,
                "run_config": self.run_config}
        if self.source == "synthetic":
            blob["scale"] = self.scale
        else:
            blob.update(self._partition_settings())
        return _digest(blob)

    def table_sha256(self) -> str:
        """The table file's sha256 (table source; read once per configuration)."""
        if self._table_sha256 is None:
            from simulation.synthetic import file_sha256

            self._table_sha256 = file_sha256(self.path)
        return self._table_sha256

    def _partition_settings(self) -> dict[str, Any]:
        return {"table_sha256": self.table_sha256(), "mapping": self.mapping, "alpha": self.alpha,
                "feature": self.feature, "strictness": self.strictness, "min_rows": self.min_rows}

    def partition_fingerprint(self, point: GridPoint) -> str:
        """Everything the institution files of ``point`` depend on (table source): the table's
        contents, schema, mapping, partition parameters, method, number of institutions and seed.
        Stored in the partition's manifest; a partition with another fingerprint is redone."""
        return _digest({"schema": self.schema, **self._partition_settings(), "method": point.partition,
                        "institutions": point.institutions, "seed": point.seed})


def _digest(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ reading
def load_sweep(path: str | Path) -> SweepConfig:
    """Read and check a sweep file; every mistake raises :class:`ConfigError` naming the key."""
    from server.settings import DEFAULTS, STRATEGIES, parse_run_config
    from simulation.partitioning import METHODS

    path = Path(path)
    root = Table(read_toml(path, "sweep"), path, "")
    root.reject_unknown(["sweep", "data", "grid", "run-config"])
    head = root.sub("sweep", required=False) or Table({}, path, "sweep")
    head.reject_unknown(["name", "runtime", "baselines", "cpus"])
    name = head.get("name", str, path.stem)
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise head.fail("name", f"'{name}' cannot name a directory; use letters, digits, '-' and '_'")
    runtime = head.choice("runtime", RUNTIMES, "flower")
    baselines = head.get("baselines", bool, True)
    cpus = head.get("cpus", int, 0)
    if cpus < 0:
        raise head.fail("cpus", f"must be ≥ 0 (0 = all CPUs), got {cpus}")

    data = root.sub("data", required=False) or Table({}, path, "data")
    data.reject_unknown(["source", "scale", "schema", *TABLE_ONLY])
    source = data.choice("source", SOURCES, "synthetic")
    schema = data.get("schema", str, "consumer-credit-v1")
    from configs.schema import load_schema

    try:
        schema_obj = load_schema(schema)
    except UserError as exc:
        raise data.fail("schema", str(exc)) from None
    scale, table_path, mapping = 1.0, None, None
    alpha, feature, strictness, min_rows = 0.5, None, 1.0, 500
    if source == "synthetic":
        for key in TABLE_ONLY:
            if data.has(key):
                raise data.fail(key, 'only for source = "table" (synthetic institutions come from the archetypes)')
        scale = data.get("scale", float, 1.0)
        if not (math.isfinite(scale) and scale > 0):
            raise data.fail("scale", f"must be a positive number, got {scale!r}")
    else:
        if data.has("scale"):
            raise data.fail("scale", 'only for source = "synthetic" (a table has the rows it has)')
        given = Path(data.get("path", str, describe="the CSV or Parquet file to partition")).expanduser()
        candidates = [given] if given.is_absolute() else [given, path.parent / given]
        table_path = next((c.resolve() for c in candidates if c.is_file()), None)
        if table_path is None:
            tried: dict[Path, str] = {}
            for c in candidates:  # "x.csv" and "./x.csv" are one place: name it once
                tried.setdefault(c.resolve(), str(c))
            raise data.fail("path", f"file not found: {' or '.join(tried.values())}")
        mapping = data.get("mapping", str, None)
        if mapping is not None:
            from configs.mapping import load_mapping

            try:
                load_mapping(mapping, schema_obj)
            except UserError as exc:
                raise data.fail("mapping", str(exc)) from None
        alpha = data.get("alpha", float, 0.5)
        if not (math.isfinite(alpha) and alpha > 0):
            raise data.fail("alpha", f"must be a positive number (small = skewed, large = near IID), got {alpha!r}")
        feature = data.get("feature", str, None)
        if feature is not None and feature not in schema_obj.columns:
            raise data.fail("feature", f"'{feature}' is not a column of schema {schema_obj.key}")
        strictness = data.get("strictness", float, 1.0)
        if not 0.0 <= strictness <= 1.0:
            raise data.fail("strictness", f"must be between 0 (IID) and 1 (pure bands), got {strictness}")
        min_rows = data.get("min_rows", int, 500)
        if min_rows < 1:
            raise data.fail("min_rows", f"must be at least 1, got {min_rows}")

    grid = root.sub("grid", required=False) or Table({}, path, "grid")
    grid.reject_unknown(list(AXES))
    axes: dict[str, list] = {}

    def whole(t: Table, key: str, v: Any, low: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise t.fail(key, f"expected a whole number, got {v!r}")
        if v < low:
            raise t.fail(key, f"must be at least {low}, got {v}")
        return v

    def epsilon(t: Table, key: str, v: Any) -> float | None:
        if v == NO_DP:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise t.fail(key, f"expected a positive number or \"{NO_DP}\", got {v!r}")
        if not (math.isfinite(v) and v > 0):
            raise t.fail(key, f"ε must be a positive finite number, got {v!r}")
        return float(v)

    def strategy(t: Table, key: str, v: Any) -> str:
        if v not in STRATEGIES:
            raise t.fail(key, f"{v!r} is not one of: {', '.join(STRATEGIES)}")
        if v == "fedadam" and runtime == "plain":
            raise t.fail(key, "fedadam needs runtime = \"flower\" (the plain loop averages with FedAvg; "
                              "fedprox works in both)")
        return v

    def partition(t: Table, key: str, v: Any) -> str:
        if source == "synthetic":
            if v != SYNTHETIC_PARTITION:
                raise t.fail(key, f'partitioning a table needs [data] source = "table"; synthetic institutions '
                                  f'are the archetypes (leave grid.partition out, or set it to "{SYNTHETIC_PARTITION}")')
            return v
        if v not in METHODS:
            raise t.fail(key, f"{v!r} is not one of: {', '.join(METHODS)}")
        if v == "feature" and feature is None:
            raise data.fail("feature", 'required when grid.partition includes "feature" (e.g. "credit_limit")')
        return v

    checks: dict[str, tuple[Callable, list]] = {
        "epsilon": (epsilon, [float(DEFAULTS["sim-max-epsilon"])]),
        "strategy": (strategy, [DEFAULTS["strategy"]]),
        "rounds": (lambda t, k, v: whole(t, k, v, 1), [DEFAULTS["num-server-rounds"]]),
        "local_epochs": (lambda t, k, v: whole(t, k, v, 1), [DEFAULTS["local-epochs"]]),
        "institutions": (lambda t, k, v: whole(t, k, v, 2), [5]),
        "partition": (partition, [SYNTHETIC_PARTITION] if source == "synthetic" else None),
        "seed": (lambda t, k, v: whole(t, k, v, 0), [DEFAULTS["seed"]]),
    }
    for axis in AXES:
        check, default = checks[axis]
        if not grid.has(axis):
            if default is None:
                raise grid.fail(axis, f"required for a table source: how to split it, one or more of "
                                      f"{', '.join(METHODS)}")
            axes[axis] = list(default)
            continue
        raw = grid.data[axis]
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise grid.fail(axis, "is empty; give at least one value")
        values = []
        for i, v in enumerate(items):
            where = f"{axis}[{i}]" if isinstance(raw, list) else axis
            values.append(check(grid, where, v))
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise grid.fail(axis, f"repeats {', '.join(dupes)}; list each value once")
        axes[axis] = values
    if source == "synthetic":
        from simulation.archetypes import institution_plan, load_archetypes

        for n in axes["institutions"]:
            try:
                institution_plan(n, scale, load_archetypes())
            except UserError as exc:
                raise data.fail("scale", f"with {n} institutions: {exc}") from None

    run_config: dict[str, Any] = {}
    rc = root.sub("run-config", required=False)
    if rc is not None:
        for key, value in rc.data.items():
            if key in CONTROLLED:
                raise rc.fail(key, f"is set by the sweep for each point; use {CONTROLLED[key]}")
            run_config[key] = value
        try:
            parse_run_config(run_config)
        except ConfigError as exc:
            raise ConfigError(f"{path}: [run-config]: {str(exc).removeprefix('run config: ')}") from None
    return SweepConfig(file=path, name=name, runtime=runtime, baselines=baselines, cpus=cpus, source=source,
                       schema=schema, scale=scale, path=table_path, mapping=mapping, alpha=alpha, feature=feature,
                       strictness=strictness, min_rows=min_rows, axes=axes, run_config=run_config)


# ------------------------------------------------------------------------------ running
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


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")
    os.replace(tmp, path)


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
    clean_table = _load_table(cfg) if cfg.source == "table" and todo else None
    if clean_table is not None:
        _check_min_rows(cfg, len(clean_table))
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
            data_dir = _partition_dir(cfg, out, point, clean_table) if cfg.source == "table" else None
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
        _write_json_atomic(out / "points" / f"{point.key}.json", result)
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
    from clients.validation import load_institution_table

    return load_institution_table(cfg.path, cfg.schema, cfg.mapping).table


def _partition_dir(cfg: SweepConfig, out: Path, point: GridPoint, table) -> Path:
    """The institution files of ``point`` — reused when a partition made under the same
    settings (:meth:`SweepConfig.partition_fingerprint`) is there, made (again) otherwise."""
    from configs.schema import load_schema
    from simulation.partitioning import write_partition

    d = out / "data" / point.data_key
    fingerprint = cfg.partition_fingerprint(point)
    if stored_partition_fingerprint(d) == fingerprint:
        return d
    write_partition(table, d, schema=load_schema(cfg.schema), k=point.institutions, method=point.partition,
                    seed=point.seed, alpha=cfg.alpha, feature=cfg.feature, strictness=cfg.strictness,
                    min_rows=cfg.min_rows, source=str(cfg.path), force=True,
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
    from server.settings import DEFAULTS
    from simulation.runner import SimulationOptions

    return SimulationOptions(
        institutions=point.institutions, rounds=point.rounds, data_dir=str(data_dir) if data_dir else None,
        schema=cfg.schema, strategy=point.strategy, dp=point.dp,
        epsilon=point.epsilon if point.dp else float(DEFAULTS["sim-max-epsilon"]), seed=point.seed,
        scale=cfg.scale, out=str(run_dir), baselines=cfg.baselines, cpus=cfg.cpus or None,
        run_config={**cfg.run_config, "local-epochs": point.local_epochs})


def _run_point(cfg: SweepConfig, point: GridPoint, run_dir: Path, data_dir: Path | None,
               on_event: Callable[[dict], None] | None, verbose: bool) -> dict:
    o = _options(cfg, point, run_dir, data_dir)
    o.verbose = verbose
    if cfg.runtime == "plain":
        return simulate_plain(o)
    from simulation.runner import simulate

    return simulate(o, on_event)


def simulate_plain(o) -> dict:
    """:func:`simulation.runner.simulate` with the in-process loop instead of Flower.

    Same data, splits, node code, run config and baselines; FedAvg (or FedProx's local
    objective) aggregation, no checkpoints, model package or report. Writes
    ``RUN_DIR/metrics.json`` (history, final metrics, baselines, data) and returns the same
    summary as ``simulate``.
    """
    from server.settings import parse_run_config
    from simulation.baselines import run_baselines
    from simulation.plain_loop import run_plain
    from simulation.runner import (baseline_settings, build_run_config, count_data_files, data_summary,
                                   load_all_nodes, summarise)

    n = count_data_files(o.data_dir) if o.data_dir else o.institutions
    run_dir = Path(o.out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config = build_run_config(o, run_dir, n)
    settings = parse_run_config(run_config)
    nodes = load_all_nodes(run_config, n)
    t0 = time.time()
    res = run_plain(run_config, n, evaluate_every_round=True)
    wall = time.time() - t0
    metrics: dict[str, Any] = {
        "runtime": "plain", "run_dir": str(run_dir), "status": "completed", "stop_reason": "",
        "rounds_planned": settings.num_server_rounds, "rounds_completed": len(res["history"]),
        "wall_s_flower": wall, "settings": settings.as_run_config(), "history": res["history"], "final": res["final"],
        "institutions": {k: {"privacy": {"epsilon_spent": m.get("epsilon-spent"),
                                         "epsilon_budget": m.get("epsilon-budget")}}
                         for k, m in res["node_metrics"].items()},
    }
    if o.baselines:
        metrics["baselines"] = run_baselines(nodes, res["encoder"], res["spec"], baseline_settings(settings, o.epsilon))
    metrics["data"] = data_summary(nodes)
    metrics["summary"] = summarise(metrics, nodes, o)
    _write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics["summary"]


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


# ------------------------------------------------------------------------------ table and plots
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
    frame.to_csv(csv_path.with_name("results.csv.partial"), index=False)
    os.replace(csv_path.with_name("results.csv.partial"), csv_path)
    frame.to_parquet(parquet_path.with_name("results.parquet.partial"), index=False)
    os.replace(parquet_path.with_name("results.parquet.partial"), parquet_path)
    return csv_path, parquet_path


def _series_axes(frame) -> list[str]:
    """Axes besides ε and seed that take more than one value: each combination is one curve."""
    return [a for a in ("strategy", "rounds", "local_epochs", "institutions", "partition") if frame[a].nunique() > 1]


def _label(axes: list[str], values) -> str:
    names = {"strategy": "", "rounds": "R=", "local_epochs": "E=", "institutions": "K=", "partition": ""}
    if not isinstance(values, tuple):
        values = (values,)
    if not axes:
        return ""
    return ", ".join(f"{names[a]}{v}" for a, v in zip(axes, values))


def plot_sweep(rows: list[dict], plot_dir: Path) -> list[Path]:
    """The sweep's figures (PNG); returns the files written. Points that failed are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = results_frame(rows)
    frame = frame[(frame["status"] != "failed") & frame["auc_federated"].notna()]
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if frame.empty:
        return written
    written.append(_plot_privacy_utility(frame, plot_dir / "privacy_utility.png", plt))
    curves = _plot_rounds(rows, plot_dir / "auc_by_round.png", plt)
    if curves:
        written.append(curves)
    for axis in _series_axes(frame):
        written.append(_plot_axis(frame, axis, plot_dir / f"auc_by_{axis}.png", plt))
    return written


def _mean_sd(values) -> tuple[float, float]:
    import numpy as np

    v = np.asarray([x for x in values if x == x], dtype=float)
    if not v.size:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _plot_privacy_utility(frame, path: Path, plt) -> Path:
    """AUC vs ε: federated DP (mean ± sd over seeds), local-only DP, and horizontal references —
    centralised (non-private, pooled data), federated and local-only without DP."""
    axes = _series_axes(frame)
    groups = list(frame.groupby(axes, sort=True)) if axes else [((), frame)]
    fig, ax = plt.subplots(figsize=(8, 6.4), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dp_eps = sorted(frame.loc[frame["dp"], "epsilon"].unique())
    single = len(groups) == 1
    for gi, (values, g) in enumerate(groups):
        c = colours[gi % len(colours)]
        name = _label(axes, values)
        suffix = f" ({name})" if name else ""
        dp = g[g["dp"]]
        if not dp.empty:
            stats = [(e, *_mean_sd(dp.loc[dp["epsilon"] == e, "auc_federated"]),
                      *_mean_sd(dp.loc[dp["epsilon"] == e, "auc_local_only_mean"])) for e in dp_eps
                     if (dp["epsilon"] == e).any()]
            xs = [s[0] for s in stats]
            ax.errorbar(xs, [s[1] for s in stats], yerr=[s[2] for s in stats], color=c, marker="o", lw=2,
                        capsize=3, label=f"federated + DP{suffix}")
            if any(s[3] == s[3] for s in stats):
                ax.plot(xs, [s[3] for s in stats], color=c, marker="x", ls=":", lw=1.5,
                        label=f"local-only + DP (mean over institutions){suffix}")
        nodp = g[~g["dp"]]
        if not nodp.empty:
            m, _ = _mean_sd(nodp["auc_federated"])
            ax.axhline(m, color=c, ls="-.", lw=1.2, label=f"federated, no DP{suffix}: {m:.3f}")
            lo, _ = _mean_sd(nodp["auc_local_only_mean"])
            if lo == lo:
                ax.axhline(lo, color=c, ls=(0, (1, 3)), lw=1.2, label=f"local-only, no DP{suffix}: {lo:.3f}")
        cen, _ = _mean_sd(g["auc_centralized"])
        if cen == cen:
            ax.axhline(cen, color="black" if single else c, ls="--", lw=1.2,
                       label=f"centralised, no DP (pooled data){suffix}: {cen:.3f}")
    if dp_eps:
        ax.set_xscale("log")
        ax.set_xticks(dp_eps)
        ax.set_xticklabels([f"{e:g}" for e in dp_eps])
        ax.minorticks_off()
    ax.set_xlabel("ε — each institution's privacy budget (record-level (ε, δ)-DP)")
    ax.set_ylabel("AUC on the pooled holdouts")
    seeds = sorted(frame["seed"].unique())
    fixed = [a for a in ("strategy", "rounds", "local_epochs", "institutions", "partition") if a not in axes]
    setting = _label(fixed, tuple(frame[a].iloc[0] for a in fixed))
    ax.set_title(f"Privacy–utility ({setting}; {', '.join(sorted(frame['runtime'].unique()))} runtime, "
                 f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
                 + (", mean ± sd" if len(seeds) > 1 else "") + ")", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_rounds(rows: list[dict], path: Path, plt) -> Path | None:
    import matplotlib as mpl

    rows = [r for r in rows if r.get("auc_by_round") and r.get("status") != "failed"]
    if not rows:
        return None
    seeds = sorted({r["seed"] for r in rows})
    rows = [r for r in rows if r["seed"] == seeds[0]]  # one seed keeps the figure readable
    eps = sorted({r["epsilon"] for r in rows if r["epsilon"] is not None})
    cmap = mpl.colormaps["viridis"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for r in rows:
        xs, ys = zip(*r["auc_by_round"])
        if r["epsilon"] is None:
            colour, label = "black", "no DP"
        else:
            colour = cmap(eps.index(r["epsilon"]) / max(1, len(eps) - 1))
            label = f"ε = {r['epsilon']:g}"
        others = f"{r['strategy']}, K={r['institutions']}, E={r['local_epochs']}, {r['partition']}"
        ax.plot(xs, ys, color=colour, marker=".", lw=1.2, label=f"{label} ({others})")
    ax.set_xlabel("round")
    ax.set_ylabel("global AUC (pooled holdouts)")
    ax.set_title(f"AUC after each round (seed {seeds[0]})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_axis(frame, axis: str, path: Path, plt) -> Path:
    values = sorted(frame[axis].unique(), key=lambda v: (isinstance(v, str), v))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    eps_groups = [(e, frame[frame["epsilon"] == e]) for e in sorted(frame.loc[frame["dp"], "epsilon"].unique())]
    if (~frame["dp"]).any():
        eps_groups.append((None, frame[~frame["dp"]]))
    for e, g in eps_groups:
        ms = [_mean_sd(g.loc[g[axis] == v, "auc_federated"]) for v in values]
        ax.errorbar(range(len(values)), [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3,
                    label="no DP" if e is None else f"ε = {e:g}", color="black" if e is None else None)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels([str(v) for v in values])
    ax.set_xlabel(axis.replace("_", " "))
    ax.set_ylabel("federated AUC (pooled holdouts)")
    ax.set_title(f"AUC by {axis.replace('_', ' ')} (mean over the other axes and seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
