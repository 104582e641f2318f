"""The run configuration: what the operator chooses for one consortium run.

Flower passes it as ``context.run_config`` (kebab-case keys, from ``[tool.flwr.app.config]``
in pyproject.toml, overridden by ``flwr run --run-config``). :data:`DEFAULTS` is the single
source of the defaults; pyproject.toml lists the same keys and values (a test keeps them
equal) because Flower only accepts overrides for keys the app declares.

Privacy settings here are *requests*: each node caps them with its own policy (node config)
and may refuse; see :mod:`clients.node`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from configs.errors import ConfigError
from configs.sim_budgets import parse_sim_budgets

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedavgm", "fedyogi")
AGGREGATIONS = ("mean", "trimmed-mean", "median", "krum", "multi-krum")
#: why each robust rule needs the number of updates :func:`robust_min_updates` gives (f = max-malicious-nodes)
ROBUST_NEEDS = {
    "trimmed-mean": "f updates are dropped from each end of every coordinate, and one must remain: 2f + 1",
    "median": "the coordinate-wise median is an honest value only when honest updates are a majority: 2f + 1",
    "krum": "Krum scores each update by its n − f − 2 nearest neighbours and needs n ≥ 2f + 3",
    "multi-krum": "Multi-Krum scores each update by its n − f − 2 nearest neighbours and needs n ≥ 2f + 3",
}


def robust_min_updates(aggregation: str, f: int) -> int:
    """Fewest usable updates a round needs for ``aggregation`` with ``f`` malicious nodes."""
    if aggregation in ("krum", "multi-krum"):
        return 2 * f + 3
    if aggregation in ("trimmed-mean", "median"):
        return 2 * f + 1
    return 1

#: key → default. Types are taken from the defaults (int, float, bool, str).
DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 20,
    "strategy": "fedavg",
    "proximal-mu": 0.01,
    "server-learning-rate": 0.05,
    "server-momentum": 0.9,
    "aggregation": "mean",
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "evaluate-every": 1,
    "fold-evaluation": True,
    "min-train-nodes": 2,
    "min-available-nodes": 2,
    "local-epochs": 1,
    "batch-size": 256,
    "learning-rate": 0.01,
    "optimizer": "adam",
    "model": "mlp",
    "hidden-layers": "64,32",
    "encoder-knots": 8,
    "seed": 0,
    "dp": True,
    "target-epsilon": 0.0,
    "clipping-norm": 1.0,
    "round-timeout": 600.0,
    "cutoff-pd": 0.2,
    "run-dir": "",
    "resume-from": "",
    "ledger-key": "",
    "max-update-norm": 0.0,
    "clip-update-norm": 0.0,
    "max-malicious-nodes": 1,
    "secure-aggregation": False,
    "secagg-clipping-range": 8.0,
    # heterogeneity and personalisation (server.strategies.personalization_config, clients.personalization)
    "output-layer-init": "zero",
    "local-layers": "none",
    "output-bias-learning-rate": 0.0,
    "aggregation-weight": "examples",
    "personalize": "none",
    "personal-epochs": 2,
    "personal-proximal-mu": 0.0,
    "step-noise-target": 0.0,
    "schema": "consumer-credit-v1",
    # Simulation only: where virtual nodes find their data and keep their privacy state.
    "data-dir": "",
    "mapping": "",
    "synthetic-scale": 1.0,
    "synthetic-seed": 0,
    "state-root": "",
    "sim-max-epsilon": 3.0,
    "sim-budgets": "",  # per-institution budgets, "institution=ε,…" (others get sim-max-epsilon)
    # Simulation only (research mode): each virtual node's data minimum, as `fedcredit data validate`
    # --min-rows/--min-positives; below 500/50 the run is marked research mode (simulation.research_mode)
    "min-rows": 500,
    "min-positives": 50,
}


@dataclass(frozen=True)
class RunSettings:
    num_server_rounds: int
    strategy: str
    proximal_mu: float
    server_learning_rate: float
    server_momentum: float
    aggregation: str
    fraction_train: float
    fraction_evaluate: float
    evaluate_every: int
    fold_evaluation: bool  # evaluation of round r inside round r+1's train message (server.folded_evaluation)
    min_train_nodes: int
    min_available_nodes: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    model: str
    hidden_layers: str
    encoder_knots: int
    seed: int
    dp: bool
    target_epsilon: float
    clipping_norm: float
    round_timeout: float
    cutoff_pd: float
    run_dir: str
    resume_from: str
    ledger_key: str  # operator's Ed25519 private key (PEM) that signs the audit ledger; "" = one per run
    max_update_norm: float
    clip_update_norm: float  # server-side L2 clipping of each update's delta; 0 = off
    max_malicious_nodes: int  # f the robust aggregation rules are sized for
    secure_aggregation: bool
    secagg_clipping_range: float
    output_layer_init: str
    local_layers: str
    output_bias_learning_rate: float
    aggregation_weight: str
    personalize: str
    personal_epochs: int
    personal_proximal_mu: float
    step_noise_target: float
    schema: str
    data_dir: str
    mapping: str
    synthetic_scale: float
    synthetic_seed: int
    state_root: str
    sim_max_epsilon: float
    sim_budgets: str
    min_rows: int
    min_positives: int

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(int(h) for h in self.hidden_layers.split(",") if h.strip())

    def as_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def parse_run_config(run_config: dict[str, Any] | None) -> RunSettings:
    """Defaults overlaid with ``run_config``; unknown keys and bad values raise ConfigError."""
    merged = dict(DEFAULTS)
    for key, value in (run_config or {}).items():
        if key not in DEFAULTS:
            import difflib

            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"run config: unknown key '{key}'{hint}")
        merged[key] = _coerce(key, value, DEFAULTS[key])
    s = RunSettings(**{k.replace("-", "_"): v for k, v in merged.items()})
    _check(s)
    return s


def _coerce(key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"run config: '{key}' must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ConfigError(f"run config: '{key}' must be a whole number, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"run config: '{key}' must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"run config: '{key}' must be a string, got {value!r}")
    return value


def _check(s: RunSettings) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"run config: '{key}' {why}")

    if s.num_server_rounds < 1:
        raise bad("num-server-rounds", "must be at least 1")
    if s.strategy not in STRATEGIES:
        raise bad("strategy", f"must be one of {', '.join(STRATEGIES)}, got '{s.strategy}'")
    if s.aggregation not in AGGREGATIONS:
        raise bad("aggregation", f"must be one of {', '.join(AGGREGATIONS)}, got '{s.aggregation}'")
    if not 0 < s.fraction_train <= 1:
        raise bad("fraction-train", f"must be in (0, 1], got {s.fraction_train}")
    if not 0 <= s.fraction_evaluate <= 1:
        raise bad("fraction-evaluate", f"must be in [0, 1] (0 = no evaluation), got {s.fraction_evaluate}")
    if s.evaluate_every < 1:
        raise bad("evaluate-every", "must be at least 1 (evaluate every N rounds; the last round always)")
    if s.min_train_nodes < 1:
        raise bad("min-train-nodes", f"must be at least 1, got {s.min_train_nodes}")
    if s.min_available_nodes < s.min_train_nodes:
        raise bad("min-available-nodes", f"must be ≥ min-train-nodes ({s.min_train_nodes}), got {s.min_available_nodes}")
    for key, value in (("local-epochs", s.local_epochs), ("batch-size", s.batch_size), ("learning-rate", s.learning_rate)):
        if value <= 0:
            raise bad(key, f"must be positive, got {value}")
    if s.optimizer not in ("adam", "sgd"):
        raise bad("optimizer", "must be adam or sgd")
    if s.model not in ("mlp", "scorecard"):
        raise bad("model", f"must be mlp or scorecard, got '{s.model}'")
    try:
        hidden = s.hidden
    except ValueError:
        raise bad("hidden-layers", f"must be comma-separated widths like '64,32', got '{s.hidden_layers}'") from None
    if s.model == "mlp" and (not hidden or min(hidden) < 1):
        raise bad("hidden-layers", "needs at least one positive width for the mlp")
    if not 2 <= s.encoder_knots <= 64:
        raise bad("encoder-knots", "must be between 2 and 64")
    parse_sim_budgets(s.sim_budgets)
    for key, value in (("min-rows", s.min_rows), ("min-positives", s.min_positives)):
        if value < 0:
            raise bad(key, f"must be ≥ 0, got {value}")
    if not 0 <= s.seed < 2**63:  # the nodes refuse any other seed (clients.request_checks)
        raise bad("seed", f"must be a whole number in [0, 2^63), got {s.seed}")
    if s.target_epsilon < 0:
        raise bad("target-epsilon", f"must be ≥ 0 (0 = each node's remaining budget), got {s.target_epsilon}")
    if s.clipping_norm <= 0:
        raise bad("clipping-norm", f"must be positive, got {s.clipping_norm}")
    if s.round_timeout <= 0:
        raise bad("round-timeout", "must be positive (seconds)")
    if not 0 < s.cutoff_pd < 1:
        raise bad("cutoff-pd", "must lie strictly between 0 and 1")
    if s.ledger_key and not Path(s.ledger_key).expanduser().is_file():
        raise bad("ledger-key", f"names {s.ledger_key}, which is not a file; give the operator's Ed25519 "
                  "private key (PEM, 'fedcredit ledger keygen' makes one) or leave it empty")
    if s.max_update_norm < 0:
        raise bad("max-update-norm", "must be ≥ 0 (0 = no bound)")
    if s.clip_update_norm < 0:
        raise bad("clip-update-norm", "must be ≥ 0 (0 = no server-side clipping)")
    if s.max_malicious_nodes < 0:
        raise bad("max-malicious-nodes", "must be ≥ 0")
    if s.aggregation != "mean":
        need = robust_min_updates(s.aggregation, s.max_malicious_nodes)
        if s.min_train_nodes < need:
            raise bad("min-train-nodes", f"must be at least {need} with aggregation = {s.aggregation} and "
                      f"max-malicious-nodes = {s.max_malicious_nodes} ({ROBUST_NEEDS[s.aggregation]}); "
                      f"got {s.min_train_nodes}. Raise min-train-nodes (and min-available-nodes) or lower "
                      "max-malicious-nodes")
    if s.secagg_clipping_range <= 0:
        raise bad("secagg-clipping-range", "must be positive (each coordinate of a weighted update is clipped to ±it)")
    if s.secure_aggregation:
        why = "the server sees only the sum of the updates under secure aggregation"
        if s.aggregation != "mean":
            raise bad("aggregation", f"must be 'mean' with secure-aggregation = true ({why}; robust rules need "
                      "each update)")
        if s.clip_update_norm > 0:
            raise bad("clip-update-norm", f"must be 0 with secure-aggregation = true ({why}, so it cannot clip "
                      "each update; each coordinate is bounded by secagg-clipping-range instead)")
        if s.max_update_norm > 0:
            raise bad("max-update-norm", f"must be 0 with secure-aggregation = true ({why}, so it cannot check "
                      "each update's norm; each coordinate is bounded by secagg-clipping-range instead)")
        if s.min_train_nodes < 2:
            raise bad("min-train-nodes", "must be at least 2 with secure-aggregation = true (one update cannot be "
                      "hidden in a sum of one)")
    if s.proximal_mu < 0 or s.server_learning_rate <= 0:
        raise bad("proximal-mu", "must be ≥ 0 and server-learning-rate > 0")
    if not 0 <= s.server_momentum < 1:
        raise bad("server-momentum", f"must be in [0, 1) (FedAvgM's momentum), got {s.server_momentum}")
    _check_personalization(s, bad)
    if s.output_layer_init not in ("zero", "random"):
        raise bad("output-layer-init", f"must be zero or random, got '{s.output_layer_init}'")


def _check_personalization(s: RunSettings, bad) -> None:
    """The heterogeneity keys: the node checks them again (clients.personalization); here the
    operator gets the message before the run starts."""
    from models.personalization import PersonalizationConfigError, personal_settings

    try:
        personal_settings({k: getattr(s, k.replace("-", "_")) for k in PERSONALIZATION_KEYS})
    except PersonalizationConfigError as exc:
        raise ConfigError(str(exc)) from None
    if s.aggregation_weight == "information" and s.secure_aggregation:
        raise bad("aggregation-weight", "must be 'examples' with secure-aggregation = true (the SecAgg+ "
                  "protocol weights each update by its number of examples)")


#: run-config keys the nodes read for personalisation and aggregation weights (clients.personalization)
PERSONALIZATION_KEYS = ("local-layers", "output-bias-learning-rate", "aggregation-weight", "personalize",
                        "personal-epochs", "personal-proximal-mu", "step-noise-target")
