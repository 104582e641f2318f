"""How much a small institution learns alone with DP-SGD, and its signal-to-noise ρ.

Research mode (simulation/research_mode.py) lets a simulation include institutions below the
consortium's 500 rows / 50 defaults and refuses those whose DP-SGD noise drowns all of their
defaults (ρ = q·P·√T/σ < 1). This measures what such institutions reach on their own: for n
training rows drawn from the synthetic consortium (scale 0.5, seed 7; ≈ 12 % defaults), the
consortium network (MLP 64-32, Adam, learning rate 0.01, batch 256) trained for 20 epochs
with DP-SGD at budget ε (the node's plan: Opacus RDP, δ = the node's default) or without DP,
and its AUC on a fixed holdout of 4,000 rows (mean of 2 seeds). It also prints the untrained
network's AUC (what "learned nothing" looks like: the initial weights' ranking) and ρ.

Prints one JSON line. Usage: python bench/small_institutions.py [--sizes 100,300,1000] [--epsilons 1,3,8]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EPOCHS, BATCH, LEARNING_RATE, SEEDS = 20, 256, 0.01, (0, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,200,300,500,1000,2000")
    ap.add_argument("--epsilons", default="0.5,1,3,8")
    args = ap.parse_args(argv)

    import numpy as np
    import pandas as pd
    import torch

    from configs.schema import load_schema
    from models.encoder import fit_encoder_from_tables
    from models.metrics import auc_score
    from models.network import ModelSpec, build_model, predict_pd
    from models.training import LocalTrainConfig, train_local
    from privacy.dpsgd import DPSGDGradients
    from privacy.planning import default_delta, plan_noise, sample_rate_for
    from simulation.synthetic import generate_consortium

    torch.set_num_threads(1)
    t0 = time.time()
    schema = load_schema()
    label = schema.label.name
    pool = pd.concat([d.table for d in generate_consortium(None, scale=0.5, seed=7)["_data"]], ignore_index=True)
    perm = np.random.default_rng(0).permutation(len(pool))
    holdout, rest = pool.iloc[perm[:4000]], pool.iloc[perm[4000:]].reset_index(drop=True)
    encoder = fit_encoder_from_tables(schema, [pool])
    xh, yh = encoder.transform(holdout), holdout[label].to_numpy(np.float32)
    spec = ModelSpec("mlp", encoder.n_outputs, (64, 32))
    untrained = [auc_score(yh, predict_pd(build_model(spec, s), xh)) for s in SEEDS]
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        for eps in [float(e) for e in args.epsilons.split(",")] + [None]:
            aucs, sigma, positives = [], 0.0, 0
            cfg = LocalTrainConfig(local_epochs=EPOCHS, batch_size=BATCH, learning_rate=LEARNING_RATE)
            q, steps = sample_rate_for(n, BATCH), EPOCHS * cfg.steps_per_epoch(n)
            for seed in SEEDS:
                sub = rest.iloc[np.random.default_rng(seed).choice(len(rest), n, replace=False)]
                x, y = encoder.transform(sub), sub[label].to_numpy(np.float32)
                positives = int(y.sum())
                rule = None
                if eps is not None:
                    sigma = plan_noise(prior_events=[], max_epsilon=eps, delta=default_delta(int(n / 0.8)),
                                       sample_rate=q, steps_per_round=cfg.steps_per_epoch(n),
                                       rounds=EPOCHS).noise_multiplier
                    rule = DPSGDGradients(sigma, 1.0, q, seed=seed)
                model = build_model(spec, seed)
                train_local(model, x, y, cfg, rule, seed=seed)
                aucs.append(auc_score(yh, predict_pd(model, xh)))
            rho = q * positives * math.sqrt(steps) / sigma if sigma else None
            rows.append({"rows": n, "defaults": positives, "epsilon": eps, "noise_multiplier": round(sigma, 3),
                         "rho": None if rho is None else round(rho, 1), "auc": round(float(np.mean(aucs)), 4)})
            print(rows[-1], file=sys.stderr, flush=True)
    print(json.dumps({"bench": "small_institutions", "epochs": EPOCHS, "batch_size": BATCH,
                      "untrained_auc": round(float(np.mean(untrained)), 4), "results": rows,
                      "wall_s": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
