"""What a schema's transforms and histogram bins do to model quality.

The encoder turns each numeric feature into a piecewise-linear encoding over quantile knots that
it reads off the federated histograms — histograms over the schema's bins on the schema's
transformed scale. A transform that leaves a heavy tail in a handful of bins, or bins too coarse
for the bulk of the values, gives coarse knots; under DP every bin also carries the statistics
release's Gaussian noise (std 10·√F per institution), so more bins add more noise.

For each table and schema variant, side by side on the same training rows and holdout (the
nodes' row-hash split):

* ``plain``: the encoder fitted from the exact pooled histograms, the consortium network (the
  run config's MLP, Adam, learning rate 0.01, batch 256) trained on the pooled training rows
  without DP for ``--epochs`` epochs;
* ``dp``: the encoder fitted from the sum of ``INSTITUTIONS`` IID institutions' histograms, each
  released with the nodes' Gaussian mechanism (σ = 10, sensitivity √F), and the network trained
  with DP-SGD at ε = 3 over the whole training (the node's planner, clipping norm 1);

and the AUC on the holdout is reported (mean of ``--repeats`` seeds).

Variants of every numeric feature: ``identity-64`` (no transform, the default 64 bins: the
obvious schema), ``identity-512``, ``drafted-64`` (the drafted transforms, 64 bins), ``drafted``
(the drafted transforms and bins, as ``fedcredit schema infer`` writes them), ``drafted-512``.

Tables: the UCI "default of credit card clients" file with the schema drafted from it (skipped
when the file is absent), and a made-up table of 10 standardised heavy-tailed features
(tests/public_tables.py, 30,000 rows, label 0 = default). Prints one JSON line.

Usage: python bench/schema_quality.py [--data PATH] [--epochs E] [--repeats R]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = Path("/work/shared/data/UCI_Credit_Card.csv")
INSTITUTIONS = 5
EPSILON = 3.0
VARIANTS = ("identity-64", "identity-512", "drafted-64", "drafted", "drafted-512")


def schema_variant(schema, variant: str):
    """``schema`` with every numeric feature's transform and bins set as ``variant`` says."""
    transform_part, _, bins_part = variant.partition("-")
    features = []
    for f in schema.features:
        if f.kind == "numeric":
            transform = "identity" if transform_part == "identity" else f.transform
            bins = int(bins_part) if bins_part else f.bins
            features.append(dataclasses.replace(f, transform=transform, bins=bins))
        else:
            features.append(f)
    return dataclasses.replace(schema, features=tuple(features))


def drafted(raw, name: str):
    """The schema ``fedcredit schema infer`` drafts for ``raw`` (loaded back from its TOML)."""
    import tempfile

    from clients.schema_drafts import render_schema
    from clients.schema_inference import infer_schema
    from configs.schema import load_schema

    draft = infer_schema(raw, name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "schema.toml"
        path.write_text(render_schema(draft))
        return load_schema(path)


def auc_of(schema, table, variant_seed: int, dp: bool, epochs: int, repeats: int) -> float:
    import numpy as np

    from clients.dataset import labels, split_institution
    from models.encoder import feature_statistics, fit_encoder_from_histograms, sum_statistics
    from models.metrics import auc_score
    from models.network import ModelSpec, build_model, predict_pd
    from models.training import LocalTrainConfig, train_local
    from privacy.dp_release import STATISTICS_NOISE_MULTIPLIER, release_statistics

    split = split_institution(table, schema, "pooled")
    train, holdout = split.train, split.holdout
    rng = np.random.default_rng(variant_seed)
    parts = np.array_split(rng.permutation(len(train)), INSTITUTIONS)
    stats = [feature_statistics(train.iloc[ix], schema) for ix in parts]
    if dp:
        stats = [release_statistics(s, STATISTICS_NOISE_MULTIPLIER, rng)[0] for s in stats]
    encoder = fit_encoder_from_histograms(schema, sum_statistics(stats))
    x, y = encoder.transform(train), labels(train, schema)
    xh, yh = encoder.transform(holdout), labels(holdout, schema)
    cfg = LocalTrainConfig(local_epochs=epochs, batch_size=256, learning_rate=0.01)
    aucs = []
    for seed in range(repeats):
        model = build_model(ModelSpec("mlp", encoder.n_outputs, (64, 32)), seed)
        train_local(model, x, y, cfg, _dp_rule(len(x), len(table), cfg, epochs, seed) if dp else None, seed=seed)
        aucs.append(auc_score(yh, predict_pd(model, xh)))
    return round(float(np.mean(aucs)), 4)


def _dp_rule(n_train: int, n_rows: int, cfg, epochs: int, seed: int):
    """DP-SGD at ε = :data:`EPSILON` over the whole training (the node's planner, δ its default)."""
    from privacy.dpsgd import DPSGDGradients
    from privacy.planning import default_delta, plan_noise, sample_rate_for

    q = sample_rate_for(n_train, cfg.batch_size)
    plan = plan_noise(prior_events=[], max_epsilon=EPSILON, delta=default_delta(n_rows), sample_rate=q,
                      steps_per_round=cfg.steps_per_epoch(n_train), rounds=epochs)
    return DPSGDGradients(plan.noise_multiplier, 1.0, q, seed=seed)


def measure_table(name: str, raw, epochs: int, repeats: int) -> dict:
    from clients.validation import validate_raw

    base = drafted(raw, name)
    table = validate_raw(raw, base, min_rows=0, min_positives=0).table
    out: dict = {"rows": len(table), "drafted_numeric": {f.name: f"{f.transform}/{f.bins}" for f in base.features
                                                          if f.kind == "numeric"}}
    for variant in VARIANTS:
        schema = schema_variant(base, variant)
        out[variant] = {"plain": auc_of(schema, table, 1, False, epochs, repeats),
                        "dp": auc_of(schema, table, 1, True, epochs, repeats)}
        print(f"{name} {variant}: {out[variant]}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the UCI credit-card CSV (skipped if absent)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from clients.raw_table import RawTable
    from clients.tabular_io import read_table
    from tests.public_tables import standardised_table

    t0 = time.time()
    result: dict = {"bench": "schema_quality", "epochs": args.epochs, "repeats": args.repeats,
                    "institutions": INSTITUTIONS, "tables": {}}
    frame = standardised_table(30000).astype(str)
    result["tables"]["standardised-30000"] = measure_table("standardised", RawTable.from_frame(frame), args.epochs,
                                                           args.repeats)
    if Path(args.data).is_file():
        result["tables"]["uci-credit-card"] = measure_table("uci-credit-card", read_table(args.data), args.epochs,
                                                            args.repeats)
    else:
        result["tables"]["uci-credit-card"] = {"skipped": f"data file not found: {args.data}"}
    result["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
