"""Model quality on real credit data: the UCI "default of credit card clients" file.

The 30,000 borrowers are mapped to the consortium schema (configs/mappings/uci-taiwan.toml),
split into INSTITUTIONS non-IID institutions (default: by credit-limit bands, so each lender
serves a different segment with its own default rate), and each institution keeps its own
holdout (the nodes' deterministic split). Then, side by side on the same splits:

* ``auc_centralized_hgb`` — scikit-learn HistGradientBoosting on the pooled training rows
  (schema columns, categoricals as codes; protected attributes excluded like the model's);
* ``auc_centralized_mlp`` — the consortium network and encoder on the pooled rows, non-private;
* ``auc_local_only_mean`` — each institution alone (mean over institutions), non-private;
* ``auc_federated_nodp`` — the Flower federated run without DP;
* ``auc_federated_dp`` — {ε: AUC} of federated runs with DP-SGD, each institution holding
  budget ε; ``auc_local_only_dp_mean`` — {ε: mean local-only AUC at the same budget}.

All AUCs are on the pooled holdouts (local-only: each institution's own holdout, averaged).
Prints one JSON line. Skips cleanly (a JSON line with "skipped") when the file is absent.

The partition and run directories go to a temporary directory, removed at the end (also after
a failure or SIGTERM), unless ``--keep DIR`` names where to keep them.

Usage: python bench/quality_uci.py [--data PATH] [--epsilons 1,3,8] [--rounds R] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.scratch import scratch_dir  # noqa: E402
from server.settings import DEFAULTS  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "UCI_Credit_Card.csv"
#: the institution files keep the UCI file's own columns and codes: every run reads them with it
MAPPING = "uci-taiwan"


def hgb_auc(nodes, schema) -> float:
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier

    from models.metrics import auc_score

    feats = schema.model_features()

    def matrix(table):
        cols = {}
        for f in feats:
            cols[f.name] = (pd.Categorical(table[f.name], categories=f.categories).codes
                            if f.kind == "categorical" else table[f.name].to_numpy(float))
        return pd.DataFrame(cols)

    tr = pd.concat([d.split.train for d in nodes.values()], ignore_index=True)
    te = pd.concat([d.split.holdout for d in nodes.values()], ignore_index=True)
    cat = [f.kind == "categorical" for f in feats]
    model = HistGradientBoostingClassifier(categorical_features=np.array(cat), random_state=0)
    model.fit(matrix(tr), tr[schema.label.name])
    return auc_score(te[schema.label.name].to_numpy(), model.predict_proba(matrix(te))[:, 1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--epsilons", default="1,3,8", help="comma-separated budgets ε ('' for none)")
    ap.add_argument("--institutions", type=int, default=5)
    ap.add_argument("--partition", default="feature", choices=["feature", "dirichlet", "iid", "quantity"])
    ap.add_argument("--rounds", type=int, default=DEFAULTS["num-server-rounds"])
    ap.add_argument("--dp-rounds", type=int, default=DEFAULTS["num-server-rounds"], help="rounds of the DP runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="keep the partition and run directories here")
    args = ap.parse_args(argv)

    if not Path(args.data).is_file():
        print(json.dumps({"bench": "quality_uci", "skipped": f"data file not found: {args.data}"}))
        return 0
    with scratch_dir(args.keep, "fedcredit-quality-uci-") as work:
        print(json.dumps(measure(args, work)))
    return 0


def measure(args: argparse.Namespace, work: Path) -> dict:
    from configs.schema import load_schema
    from simulation.partition_files import load_partition_source, write_partition
    from simulation.runner import SimulationOptions, load_all_nodes, simulate

    t0 = time.time()
    schema = load_schema()
    source = load_partition_source(args.data, schema, MAPPING)
    data_dir = work / "institutions"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    write_partition(source, data_dir, k=args.institutions, method=args.partition, seed=args.seed,
                    alpha=1.0, feature="credit_limit" if args.partition == "feature" else None)

    def run(name: str, **kw) -> dict:
        opts = SimulationOptions(data_dir=str(data_dir), mapping=MAPPING, out=str(work / name), seed=args.seed, **kw)
        if (work / name).exists():
            shutil.rmtree(work / name)
        return simulate(opts)

    nodp = run("nodp", rounds=args.rounds, dp=False)
    nodes = load_all_nodes({"data-dir": str(data_dir), "mapping": MAPPING, "state-root": str(work / "scratch-state")},
                           len(list(data_dir.glob("*.csv"))))
    out = {
        "bench": "quality_uci", "institutions": args.institutions, "partition": args.partition,
        "rounds": args.rounds, "dp_rounds": args.dp_rounds, "seed": args.seed,
        "rows": {k: d.split.n_train + len(d.split.holdout) for k, d in nodes.items()},
        "auc_centralized_hgb": hgb_auc(nodes, schema),
        "auc_centralized_mlp": nodp["auc_centralized"],
        "auc_local_only_mean": nodp["auc_local_only_mean"],
        "auc_federated_nodp": nodp["auc_federated"],
        "auc_federated_dp": {}, "auc_local_only_dp_mean": {}, "epsilon_spent_max": {},
    }
    for eps in [float(e) for e in args.epsilons.split(",") if e.strip()]:
        s = run(f"dp-eps{eps:g}", rounds=args.dp_rounds, dp=True, epsilon=eps)
        key = f"{eps:g}"
        out["auc_federated_dp"][key] = s["auc_federated"]
        out["auc_local_only_dp_mean"][key] = s["auc_local_only_mean"]
        spent = [i["epsilon_spent"] for i in s["institutions"] if i["epsilon_spent"] is not None]
        out["epsilon_spent_max"][key] = max(spent) if spent else None
    out["wall_s"] = round(time.time() - t0, 1)
    out["work_dir"] = str(work) if args.keep else None
    return out


if __name__ == "__main__":
    sys.exit(main())
