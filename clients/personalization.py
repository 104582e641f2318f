"""The node's side of personalisation: its own layers, its aggregation weight, its own model.

What the run config asks for (keys below) is checked here before any data is touched — the
coordinator is not trusted — and every step that reads training rows is DP-SGD or a Gaussian
mechanism recorded in the node's lifetime ledger, like the shared training
(:mod:`clients.node` calls in; the maths is :mod:`models.personalization`).

Run-config keys the node reads (all optional; absent = off)
-----------------------------------------------------------
``local-layers``                ``none`` | ``output-bias``: parameters the node keeps for itself
                                between rounds (its own intercept = its default rate on the logit
                                scale), stored under its state directory; it starts each round
                                from them instead of the aggregate's.
``output-bias-learning-rate``   the intercept's own step size (0 = the learning rate), ≤ 10.
``aggregation-weight``          ``examples`` | ``information``: with ``information`` the node
                                releases its number of defaults once per run through the Gaussian
                                mechanism (σ = :data:`LABEL_COUNT_NOISE_MULTIPLIER`, sensitivity 1,
                                recorded before anything leaves) and sends
                                ``aggregation-weight`` = 4 n π̃ (1 − π̃) with each update
                                (:func:`models.personalization.information_weight`).
``personalize``                 ``none`` | ``calibration`` | ``head`` | ``full``: after the run's
                                last round the node fine-tunes a personal copy of the model it
                                received (its own layers restored) with DP-SGD on its training
                                rows and keeps it as a model package under its state directory.
``personal-epochs``             epochs of that fine-tune, 0–20; the
                                node's noise plan reserves ⌈epochs / local-epochs⌉ rounds for it.
``personal-proximal-mu``        μ of the pull towards the received model (``full``), 0–1000.
``step-noise-target``           σ / batch the node aims at when it picks its own batch size
                                (privacy.batch_plan; 0–1, 0 = the announced batch).

The personal model never leaves the node: nothing about it is sent to the coordinator. It
is used by the institution to score its own applicants (``fedcredit score --model
STATE_DIR/personalized/<run>/model``); the package's ``model.json`` names the institution
(``personalized_for``) and the shared model it started from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.personalization import (PersonalizationConfigError, PersonalSettings, information_weight,
                                     local_parameter_names, personal_settings)

__all__ = ["PersonalizationConfigError", "PersonalRound", "PersonalSettings", "personal_settings"]
#: noise std of the released number of defaults (sensitivity 1 under add/remove adjacency).
#: Alone ε ≈ 0.38 at δ = 1e-5 (RDP); composed with a typical training plan it adds a few
#: hundredths, like the feature statistics (σ = 10, sensitivity √F).
LABEL_COUNT_NOISE_MULTIPLIER = 10.0
PERSONAL_DIR = "personalized"


# ----------------------------------------------------------------------- the run's store
def run_key(run_id: str) -> str:
    """Directory name of a run's personal state: a hash, so a run id from the coordinator can
    never name a path outside the node's state directory."""
    return hashlib.sha256(str(run_id).encode()).hexdigest()[:20]


def personal_dir(state_dir: Path, run_id: str) -> Path:
    return Path(state_dir) / PERSONAL_DIR / run_key(run_id)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class LocalLayers:
    """The parameters this node keeps for itself during one run (``local.json`` in its run dir)."""

    def __init__(self, state_dir: Path, run_id: str):
        self.path = personal_dir(state_dir, run_id) / "local.json"
        self.run_id = str(run_id)

    def restore(self, model, settings: PersonalSettings) -> list[str]:
        """Overwrite the model's local parameters with the stored ones; returns their names.

        Stored values whose shape no longer matches (another network) are ignored.
        """
        import torch

        names = local_parameter_names(model, settings.local_layers)
        stored = _read_json(self.path).get("parameters") or {}
        params = dict(model.named_parameters())
        restored = []
        for name in names:
            value = np.asarray(stored.get(name, []), dtype=np.float32)
            if name in stored and value.shape == tuple(params[name].shape) and np.all(np.isfinite(value)):
                with torch.no_grad():
                    params[name].copy_(torch.as_tensor(value))
                restored.append(name)
        return restored

    def store(self, model, settings: PersonalSettings) -> None:
        names = local_parameter_names(model, settings.local_layers)
        if not names:
            return
        params = dict(model.named_parameters())
        doc = _read_json(self.path)
        doc.update({"run_id": self.run_id,
                    "parameters": {n: params[n].detach().cpu().numpy().tolist() for n in names}})
        _write_atomic(self.path, json.dumps(doc).encode())

    def saved_label_count(self) -> float | None:
        """The noised number of defaults released earlier in this run, if any."""
        v = _read_json(self.path).get("noised_positives")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    def save_label_count(self, noised: float) -> None:
        doc = _read_json(self.path)
        doc.update({"run_id": self.run_id, "noised_positives": float(noised)})
        _write_atomic(self.path, json.dumps(doc).encode())


# ---------------------------------------------------------------------- label count release
def label_count_event(run_id: str, split: str):
    """The privacy event of one release of the number of defaults among the training rows."""
    from privacy.accountant import PrivacyEvent

    return PrivacyEvent("statistics", LABEL_COUNT_NOISE_MULTIPLIER, 1.0, 1, run_id=run_id, rows="train",
                        split=split, detail="label count (aggregation weight)")


def needs_label_count(settings: PersonalSettings, store: LocalLayers, dp: bool) -> bool:
    return dp and settings.aggregation_weight == "information" and store.saved_label_count() is None


def noised_label_count(y: np.ndarray, rng: np.random.Generator) -> float:
    """Number of defaults + N(0, σ²), σ = :data:`LABEL_COUNT_NOISE_MULTIPLIER` (sensitivity 1)."""
    return float(np.sum(np.asarray(y) == 1)) + float(rng.normal(0.0, LABEL_COUNT_NOISE_MULTIPLIER))


def aggregation_weight(n_rows: int, noised_positives: float) -> float:
    """The weight the node sends with its update (post-processing of the noised count)."""
    return information_weight(n_rows, noised_positives)


# ---------------------------------------------------------------------- the personal model
def save_personal_model(state_dir: Path, run_id: str, institution_id: str, *, spec, encoder, schema, weights,
                        base_weights, settings: PersonalSettings, meta: dict) -> Path:
    """Write the personal model package (``personalized/<run>/model``); returns its directory."""
    from models.package import ModelPackage, save_package, weights_digest

    d = personal_dir(state_dir, run_id) / "model"
    package = ModelPackage(spec=spec, encoder=encoder, weights=weights, schema=schema, meta={
        "personalized_for": institution_id, "run_id": str(run_id),
        "base_model_sha256": weights_digest(base_weights), "personalization": settings.personalize,
        "personal_epochs": settings.personal_epochs, "personal_proximal_mu": settings.personal_mu,
        "local_layers": settings.local_layers, **meta})
    return save_package(d, package)


def find_personal_model(state_dir: Path, run_ids: list[str]) -> Path | None:
    """The personal package of the first of ``run_ids`` this node has one for."""
    for run_id in run_ids:
        d = personal_dir(state_dir, run_id) / "model"
        if (d / "model.json").is_file():
            return d
    return None


# ------------------------------------------------------------------------ one training round
class PersonalRound:
    """The node's personalisation work in one training round (``clients.node.train`` calls in).

    Built from the round config (checked) and, when training, the model received: it restores
    the node's own layers into it and keeps a copy — the start of the personal fine-tune.
    """

    def __init__(self, state_dir: Path, run_id: str, cfg: dict, model=None):
        self.settings = personal_settings(cfg)
        self.state_dir, self.run_id = Path(state_dir), str(run_id)
        self.store = LocalLayers(self.state_dir, self.run_id)
        self._label_pending = False
        self.base_weights = None
        if model is not None:
            from models.network import get_weights

            self.store.restore(model, self.settings)
            self.base_weights = get_weights(model)

    def personalised(self) -> bool:
        return (personal_dir(self.state_dir, self.run_id) / "model" / "model.json").is_file()

    def reserved_rounds(self, cfg: dict) -> int:
        """Rounds' worth of steps the noise plan reserves for the fine-tune still to come."""
        if self.personalised():
            return 0
        return self.settings.personal_rounds(int(cfg.get("local-epochs", 1)))

    def releases_with_update(self, dp: bool, run_id: str, split: str) -> list:
        """Releases besides DP-SGD that go out with this update: the label count, once per run."""
        self._label_pending = needs_label_count(self.settings, self.store, dp)
        return [label_count_event(run_id, split)] if self._label_pending else []

    def after_training(self, model, y: np.ndarray, dp: bool, rng: np.random.Generator | None = None,
                       n_rows: float | None = None) -> dict:
        """Keep the node's own layers; the metrics sent with the update (``aggregation-weight``).

        Under DP the weight comes from the noised count released with this or an earlier update
        of the run (already recorded in the ledger by the caller) and ``n_rows``, the node's
        released (noisy) number of training rows — never the exact one; without DP from the
        exact counts.
        """
        self.store.store(model, self.settings)
        if self.settings.aggregation_weight != "information":
            return {}
        if not dp:
            return {"aggregation-weight": aggregation_weight(len(y), float(np.sum(np.asarray(y) == 1)))}
        if self._label_pending:
            if rng is None:
                raise ValueError("the label count release needs a random generator")
            self.store.save_label_count(noised_label_count(y, rng))
            self._label_pending = False
        noised = self.store.saved_label_count()
        n = float(n_rows) if n_rows is not None else float(len(y))
        return {"aggregation-weight": aggregation_weight(n, noised if noised is not None else n / 2)}

    def personalise_if_last(self, cfg: dict, x, y, tcfg, rule, institution_id: str, encoder, schema, *,
                            ledger=None, steps: int = 0) -> float | None:
        """After the run's last round: fine-tune the personal model, record its steps, save it.

        Returns the lifetime ε after the fine-tune's event (None when nothing was done). Under
        DP (``rule`` given) the event — ``personal_rounds × steps`` DP-SGD steps at the run's
        σ and q, reserved in the plan — is checked against the budget first (``BudgetExceeded``
        propagates) and recorded before the package is written.
        """
        rounds = self.settings.personal_rounds(tcfg.local_epochs)
        last = int(cfg.get("server-round", 0)) >= int(cfg.get("num-server-rounds", 0))
        if not last or rounds < 1 or self.base_weights is None or self.personalised():
            return None
        from dataclasses import replace

        from models.network import ModelSpec, build_model, set_weights
        from models.personalization import fine_tune

        spec = ModelSpec.from_dict(json.loads(cfg["model-spec"]))
        model = build_model(spec)
        set_weights(model, self.base_weights)
        ft = replace(tcfg, local_epochs=rounds * tcfg.local_epochs, proximal_mu=self.settings.personal_mu)
        spent, event = None, None
        if rule is not None:
            event = rule.events(rounds * int(steps), self.run_id, int(cfg["server-round"]))
            event.detail = f"personalization ({self.settings.personalize}); {event.detail}"
            event.rows, event.split = "train", getattr(ledger, "node_split", "")
            ledger.check([event])
        weights = fine_tune(model, x, y, self.settings.personalize, ft, rule,
                            seed=int(cfg.get("seed", 0)) * 100_003 + 7919)
        if event is not None:
            spent = ledger.record([event])
        save_personal_model(self.state_dir, self.run_id, institution_id, spec=spec, encoder=encoder, schema=schema,
                            weights=weights, base_weights=self.base_weights, settings=self.settings,
                            meta={"dp": rule is not None, "epsilon_spent": spent,
                                  "noise_multiplier": getattr(rule, "noise_multiplier", None)})
        return spent
