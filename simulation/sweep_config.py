"""The sweep file: what a grid of simulations is made of, read and checked key by key.

:func:`load_sweep` reads a sweep file (the format is described in :mod:`simulation.sweep`)
through :mod:`configs.toml_reader` and returns a :class:`SweepConfig`; every mistake raises a
:class:`~configs.errors.ConfigError` naming the file and the dotted key. Each table has its own
reader (``[sweep]``, ``[data]``, ``[grid]``, ``[run-config]``), and each grid axis its own
check of one value.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from configs.errors import ConfigError, UserError
from configs.toml_reader import Table, read_toml

RUNTIMES = ("flower", "plain")
SOURCES = ("synthetic", "table")
NO_DP = "no-dp"
SYNTHETIC_PARTITION = "archetypes"
#: grid axes in the order of the point keys (the last varies fastest)
AXES = ("seed", "institutions", "partition", "rounds", "local_epochs", "strategy", "epsilon")
TABLE_ONLY = ("path", "mapping", "alpha", "feature", "strictness", "min_rows")
DEFAULT_INSTITUTIONS = 5
#: what a partition's files hold (in its fingerprint: files of an older kind are made again)
PARTITION_FILES = "source-rows"
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


@dataclass(frozen=True)
class DataSource:
    """The ``[data]`` table: synthetic archetypes at ``scale``, or one table partitioned."""

    source: str = "synthetic"
    schema: str = "consumer-credit-v1"
    scale: float = 1.0
    path: Path | None = None
    mapping: str | None = None
    alpha: float = 0.5
    feature: str | None = None
    strictness: float = 1.0
    min_rows: int = 500


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
                        "institutions": point.institutions, "seed": point.seed, "files": PARTITION_FILES})


def _digest(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ reading
def load_sweep(path: str | Path) -> SweepConfig:
    """Read and check a sweep file; every mistake raises :class:`ConfigError` naming the key."""
    path = Path(path)
    root = Table(read_toml(path, "sweep"), path, "")
    root.reject_unknown(["sweep", "data", "grid", "run-config"])
    head = root.sub("sweep", required=False) or Table({}, path, "sweep")
    name, runtime, baselines, cpus = _read_head(head, path.stem)
    data_table = root.sub("data", required=False) or Table({}, path, "data")
    data = _read_data(data_table)
    axes = _read_grid(root.sub("grid", required=False) or Table({}, path, "grid"), data, data_table, runtime)
    if data.source == "synthetic":
        _check_synthetic_sizes(data_table, data.scale, axes["institutions"])
    run_config = _read_run_config(root.sub("run-config", required=False), path)
    return SweepConfig(file=path, name=name, runtime=runtime, baselines=baselines, cpus=cpus, source=data.source,
                       schema=data.schema, scale=data.scale, path=data.path, mapping=data.mapping, alpha=data.alpha,
                       feature=data.feature, strictness=data.strictness, min_rows=data.min_rows, axes=axes,
                       run_config=run_config)


def _read_head(head: Table, default_name: str) -> tuple[str, str, bool, int]:
    """``[sweep]``: name (a directory name), runtime, baselines, cpus."""
    head.reject_unknown(["name", "runtime", "baselines", "cpus"])
    name = head.get("name", str, default_name)
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise head.fail("name", f"'{name}' cannot name a directory; use letters, digits, '-' and '_'")
    runtime = head.choice("runtime", RUNTIMES, "flower")
    baselines = head.get("baselines", bool, True)
    cpus = head.get("cpus", int, 0)
    if cpus < 0:
        raise head.fail("cpus", f"must be ≥ 0 (0 = all CPUs), got {cpus}")
    return name, runtime, baselines, cpus


def _read_data(data: Table) -> DataSource:
    """``[data]``: the source and its keys (each only where it applies)."""
    from configs.schema import load_schema

    data.reject_unknown(["source", "scale", "schema", *TABLE_ONLY])
    source = data.choice("source", SOURCES, "synthetic")
    schema = data.get("schema", str, "consumer-credit-v1")
    try:
        schema_obj = load_schema(schema)
    except UserError as exc:
        raise data.fail("schema", str(exc)) from None
    if source == "synthetic":
        for key in TABLE_ONLY:
            if data.has(key):
                raise data.fail(key, 'only for source = "table" (synthetic institutions come from the archetypes)')
        scale = data.get("scale", float, 1.0)
        if not (math.isfinite(scale) and scale > 0):
            raise data.fail("scale", f"must be a positive number, got {scale!r}")
        return DataSource(source=source, schema=schema, scale=scale)
    if data.has("scale"):
        raise data.fail("scale", 'only for source = "synthetic" (a table has the rows it has)')
    return DataSource(source=source, schema=schema, path=_table_path(data),
                      mapping=_table_mapping(data, schema_obj), **_partition_keys(data, schema_obj))


def _table_path(data: Table) -> Path:
    """``data.path``: as given (absolute), else relative to the current directory or the sweep file."""
    given = Path(data.get("path", str, describe="the CSV or Parquet file to partition")).expanduser()
    candidates = [given] if given.is_absolute() else [given, data.file.parent / given]
    found = next((c.resolve() for c in candidates if c.is_file()), None)
    if found is None:
        tried: dict[Path, str] = {}
        for c in candidates:  # "x.csv" and "./x.csv" are one place: name it once
            tried.setdefault(c.resolve(), str(c))
        raise data.fail("path", f"file not found: {' or '.join(tried.values())}")
    return found


def _table_mapping(data: Table, schema) -> str | None:
    mapping = data.get("mapping", str, None)
    if mapping is not None:
        from configs.mapping import load_mapping

        try:
            load_mapping(mapping, schema)
        except UserError as exc:
            raise data.fail("mapping", str(exc)) from None
    return mapping


def _partition_keys(data: Table, schema) -> dict[str, Any]:
    """alpha, feature, strictness and min_rows of the table's partitions."""
    alpha = data.get("alpha", float, 0.5)
    if not (math.isfinite(alpha) and alpha > 0):
        raise data.fail("alpha", f"must be a positive number (small = skewed, large = near IID), got {alpha!r}")
    feature = data.get("feature", str, None)
    if feature is not None and feature not in schema.columns:
        raise data.fail("feature", f"'{feature}' is not a column of schema {schema.key}")
    strictness = data.get("strictness", float, 1.0)
    if not 0.0 <= strictness <= 1.0:
        raise data.fail("strictness", f"must be between 0 (IID) and 1 (pure bands), got {strictness}")
    min_rows = data.get("min_rows", int, 500)
    if min_rows < 1:
        raise data.fail("min_rows", f"must be at least 1, got {min_rows}")
    return {"alpha": alpha, "feature": feature, "strictness": strictness, "min_rows": min_rows}


# ------------------------------------------------------------------------------ the grid
def _whole(low: int) -> Callable[[Table, str, Any], int]:
    def check(t: Table, key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise t.fail(key, f"expected a whole number, got {v!r}")
        if v < low:
            raise t.fail(key, f"must be at least {low}, got {v}")
        return v

    return check


def _epsilon(t: Table, key: str, v: Any) -> float | None:
    if v == NO_DP:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise t.fail(key, f"expected a positive number or \"{NO_DP}\", got {v!r}")
    if not (math.isfinite(v) and v > 0):
        raise t.fail(key, f"ε must be a positive finite number, got {v!r}")
    return float(v)


def _strategy(runtime: str) -> Callable[[Table, str, Any], str]:
    from server.settings import STRATEGIES

    def check(t: Table, key: str, v: Any) -> str:
        if v not in STRATEGIES:
            raise t.fail(key, f"{v!r} is not one of: {', '.join(STRATEGIES)}")
        if v == "fedadam" and runtime == "plain":
            raise t.fail(key, "fedadam needs runtime = \"flower\" (the plain loop averages with FedAvg; "
                              "fedprox works in both)")
        return v

    return check


def _partition(data: DataSource, data_table: Table) -> Callable[[Table, str, Any], str]:
    from simulation.partitioning import METHODS

    def check(t: Table, key: str, v: Any) -> str:
        if data.source == "synthetic":
            if v != SYNTHETIC_PARTITION:
                raise t.fail(key, f'partitioning a table needs [data] source = "table"; synthetic institutions '
                                  f'are the archetypes (leave grid.partition out, or set it to "{SYNTHETIC_PARTITION}")')
            return v
        if v not in METHODS:
            raise t.fail(key, f"{v!r} is not one of: {', '.join(METHODS)}")
        if v == "feature" and data.feature is None:
            raise data_table.fail("feature", 'required when grid.partition includes "feature" (e.g. "credit_limit")')
        return v

    return check


def _read_grid(grid: Table, data: DataSource, data_table: Table, runtime: str) -> dict[str, list]:
    """``[grid]``: each axis a value or an array of values, every value checked, none repeated."""
    from server.settings import DEFAULTS
    from simulation.partitioning import METHODS

    grid.reject_unknown(list(AXES))
    checks: dict[str, tuple[Callable, list | None]] = {
        "epsilon": (_epsilon, [float(DEFAULTS["sim-max-epsilon"])]),
        "strategy": (_strategy(runtime), [DEFAULTS["strategy"]]),
        "rounds": (_whole(1), [DEFAULTS["num-server-rounds"]]),
        "local_epochs": (_whole(1), [DEFAULTS["local-epochs"]]),
        "institutions": (_whole(2), [DEFAULT_INSTITUTIONS]),
        "partition": (_partition(data, data_table), [SYNTHETIC_PARTITION] if data.source == "synthetic" else None),
        "seed": (_whole(0), [DEFAULTS["seed"]]),
    }
    axes: dict[str, list] = {}
    for axis in AXES:
        check, default = checks[axis]
        if not grid.has(axis):
            if default is None:
                raise grid.fail(axis, f"required for a table source: how to split it, one or more of "
                                      f"{', '.join(METHODS)}")
            axes[axis] = list(default)
            continue
        axes[axis] = _axis_values(grid, axis, check)
    return axes


def _axis_values(grid: Table, axis: str, check: Callable[[Table, str, Any], Any]) -> list:
    raw = grid.data[axis]
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise grid.fail(axis, "is empty; give at least one value")
    values = [check(grid, f"{axis}[{i}]" if isinstance(raw, list) else axis, v) for i, v in enumerate(items)]
    dupes = sorted({str(v) for v in values if values.count(v) > 1})
    if dupes:
        raise grid.fail(axis, f"repeats {', '.join(dupes)}; list each value once")
    return values


def _check_synthetic_sizes(data: Table, scale: float, institutions: list[int]) -> None:
    """Every synthetic consortium of the grid must be large enough at ``scale``."""
    from simulation.archetypes import institution_plan, load_archetypes

    for n in institutions:
        try:
            institution_plan(n, scale, load_archetypes())
        except UserError as exc:
            raise data.fail("scale", f"with {n} institutions: {exc}") from None


def _read_run_config(rc: Table | None, path: Path) -> dict[str, Any]:
    """``[run-config]``: further run-config keys, none that the sweep sets for each point."""
    from server.settings import parse_run_config

    if rc is None:
        return {}
    run_config: dict[str, Any] = {}
    for key, value in rc.data.items():
        if key in CONTROLLED:
            raise rc.fail(key, f"is set by the sweep for each point; use {CONTROLLED[key]}")
        run_config[key] = value
    try:
        parse_run_config(run_config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: [run-config]: {str(exc).removeprefix('run config: ')}") from None
    return run_config
