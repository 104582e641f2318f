"""The configuration the server sends with each message type, built in one place.

The run settings (:mod:`server.settings`) become three configurations, one per message type
(:mod:`fedcredit.protocol`):

* :func:`statistics_config` — ``query.stats``: the schema key, and what the node needs to plan
  its noise for the whole run before it releases anything (:data:`PLANNING_KEYS`);
* :func:`train_config` — ``train``: the planning keys again (a node re-plans when they
  differ), the local optimiser, DP-SGD clipping, the encoder and the model spec, and the audit
  ledger's head;
* :func:`evaluate_config` — ``evaluate``: encoder, model spec, cut-off PD and the ledger head.

They are plain dicts, so the in-process reference loop (:mod:`simulation.plain_loop`) hands
the node functions exactly what the ServerApp sends; :func:`as_record` wraps one in a Flower
``ConfigRecord``.
"""

from __future__ import annotations

from typing import Any

from server.settings import PERSONALIZATION_KEYS, RunSettings

#: the keys a node's noise plan depends on (clients.node re-plans when any of them changes)
PLANNING_KEYS = ("dp", "target-epsilon", "num-server-rounds", "local-epochs", "batch-size", "evaluate-every")


def planning_config(s: RunSettings, run_id: str) -> dict[str, Any]:
    """The run id, :data:`PLANNING_KEYS` and the personalisation keys (the fine-tune and the label
    count are reserved in the plan; :mod:`clients.personalization`): what fixes a node's noise
    plan for the run, and what it keeps of its own during the run."""
    values = s.as_run_config()
    return {"run-id": str(run_id), **{k: values[k] for k in PLANNING_KEYS + PERSONALIZATION_KEYS}}


def statistics_config(s: RunSettings, run_id: str, schema_key: str | None) -> dict[str, Any]:
    """Config of the statistics query (``schema-key`` None: the node does not check it)."""
    return {"schema-key": schema_key, **planning_config(s, run_id)}


def train_config(s: RunSettings, run_id: str, rnd: int, encoder_json: str, spec_json: str,
                 ledger_head: str = "") -> dict[str, Any]:
    """Config of training round ``rnd``."""
    return {
        **planning_config(s, run_id), "server-round": rnd,
        "learning-rate": s.learning_rate, "optimizer": s.optimizer,
        "proximal-mu": s.proximal_mu if s.strategy == "fedprox" else 0.0,
        "clipping-norm": s.clipping_norm, "seed": s.seed,
        "encoder": encoder_json, "model-spec": spec_json, "ledger-head": ledger_head,
    }


def evaluate_config(s: RunSettings, run_id: str, rnd: int, encoder_json: str, spec_json: str,
                    ledger_head: str = "") -> dict[str, Any]:
    """Config of the evaluation after round ``rnd`` (``ledger-head``: the head at that moment;
    after the last round, the one that covers that round's entry)."""
    return {"run-id": str(run_id), "server-round": rnd, "encoder": encoder_json, "model-spec": spec_json,
            "cutoff-pd": s.cutoff_pd, "ledger-head": ledger_head}


def as_record(config: dict[str, Any]):
    """``config`` as a Flower ``ConfigRecord`` (a ``None`` value is left out: records hold no None)."""
    from flwr.app import ConfigRecord

    return ConfigRecord({k: v for k, v in config.items() if v is not None})
