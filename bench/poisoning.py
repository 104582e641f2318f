"""Robust aggregation against one malicious institution.

Five synthetic institutions (the archetype consortium, one file each) train in Flower's
simulation runtime; one of them — by default the largest, national-bank-1, the worst case for a
mean weighted by examples — is malicious, with one of three attacks:

* ``scale``      — it sends its honest update × 50 (``global + 50 · Δ``);
* ``sign-flip``  — it sends its update reversed (``global − Δ``);
* ``label-flip`` — its data has every label flipped (default ↔ no default); it trains honestly
  on them.

The attacker is a ClientApp *in this script* that wraps the real one (a Flower mod on its
replies; for label-flip only its data file differs): nothing in the run config or the product
can make a real node malicious. Each attack runs with plain FedAvg (``aggregation = mean``) and
each robust rule (``trimmed-mean``, ``median``, ``krum``, ``multi-krum``, ``max-malicious-nodes =
1``); the clean consortium (no attacker) runs with every rule too. Optionally ``clip-update-norm``.

Score: AUC of the last round's global model on the pooled holdouts of the four honest
institutions (the attacker's holdout is left out, so the label-flip's own holdout does not
count), computed here from the checkpoint — no recalibration, no federated evaluation.

Prints one JSON line: per attack and rule the final AUC, the clean AUC per rule, and per attack
the best robust rule and its gap to clean FedAvg.

Usage: python bench/poisoning.py [--rounds 10] [--scale 0.5] [--dp --epsilon 3] [--clip 0]
                                 [--attacker national-bank-1] [--rules mean,median,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.scratch import scratch_dir  # noqa: E402

RULES = ("mean", "trimmed-mean", "median", "krum", "multi-krum")
ATTACKS = ("scale", "sign-flip", "label-flip")
SCALE_FACTOR = 50.0
SIGN_FACTOR = -1.0


def write_consortium(out: Path, scale: float, seed: int) -> dict[str, Path]:
    """The five archetype institutions, one CSV each (as ``fedcredit data synth`` writes them)."""
    from configs.schema import load_schema
    from simulation.archetypes import institution_plan, load_archetypes
    from simulation.synthetic import generate_institution, institution_rng, write_csv

    schema = load_schema()
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for p in institution_plan(5, scale, load_archetypes()):
        table, _ = generate_institution(p.archetype, p.rows, institution_rng(seed, p.index), schema,
                                        id_prefix=f"{p.archetype.code}{p.copy}")
        files[p.id] = out / f"{p.id}.csv"
        write_csv(table, files[p.id])
    return files


def flip_labels(src: Path, dst: Path) -> None:
    import pandas as pd

    from configs.schema import load_schema

    label = load_schema().label.name
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    df[label] = df[label].map({"0": "1", "1": "0"})
    df.to_csv(dst, index=False)


class Attacker:
    """A Flower mod: virtual node ``partition`` replies ``global + factor · Δ`` instead of ``global + Δ``."""

    def __init__(self, partition: int, factor: float):
        self.partition, self.factor = partition, factor

    def __call__(self, msg, context, call_next):
        from fedcredit import protocol as P

        is_train = msg.metadata.message_type == "train"
        before = P.from_array_record(msg.content[P.ARRAYS]) if is_train else None
        reply = call_next(msg, context)
        if not is_train or int(context.node_config.get("partition-id", -1)) != self.partition:
            return reply
        if P.ARRAYS not in reply.content.array_records:  # a refusal
            return reply
        w = P.from_array_record(reply.content[P.ARRAYS])
        reply.content[P.ARRAYS] = P.to_array_record(
            {k: (before[k] + self.factor * (w[k] - before[k])).astype(w[k].dtype) for k in w})
        return reply


def honest_auc(run_dir: Path, run_config: dict, honest: list[int], n: int) -> float:
    """AUC of the last checkpoint's model on the honest institutions' pooled holdouts."""
    import numpy as np

    from clients.node import load_node_data
    from models.encoder import FeatureEncoder
    from models.metrics import auc_score
    from models.network import ModelSpec, build_model, predict_pd, set_weights
    from server.checkpoints import load_checkpoint
    from simulation.virtual_nodes import virtual_policy

    ckpt = load_checkpoint(run_dir)
    encoder = FeatureEncoder.from_dict(ckpt.state["encoder"])
    model = build_model(ModelSpec.from_dict(ckpt.state["spec"]))
    set_weights(model, ckpt.weights)
    ps, ys = [], []
    for k in honest:
        data = load_node_data(virtual_policy(k, n, run_config))
        ps.append(predict_pd(model, encoder.transform(data.split.holdout)))
        ys.append(data.split.holdout[data.schema.label.name].to_numpy())
    return float(auc_score(np.concatenate(ys), np.concatenate(ps)))


def one_run(work: Path, tag: str, data_dir: Path, rule: str, args, attacker: int | None, attack: str | None,
            n: int) -> dict:
    from simulation.faults import ClientAppWithMods
    from simulation.flower_runtime import run_in_simulation

    from clients.client_app import app

    run_dir = work / tag
    rc = {"data-dir": str(data_dir), "num-server-rounds": args.rounds, "min-available-nodes": n,
          "min-train-nodes": n, "aggregation": rule, "max-malicious-nodes": 1, "fraction-evaluate": 0.0,
          "dp": bool(args.dp), "sim-max-epsilon": float(args.epsilon), "seed": args.seed,
          "run-dir": str(run_dir), "state-root": str(work / f"{tag}-state"), "clip-update-norm": float(args.clip),
          "local-epochs": args.local_epochs}
    client_app = app
    if attack in ("scale", "sign-flip"):
        client_app = ClientAppWithMods(app, [Attacker(attacker, SCALE_FACTOR if attack == "scale" else SIGN_FACTOR)])
    t0 = time.time()
    run_in_simulation(rc, n, num_cpus=args.cpus, client_app=client_app)
    wall = time.time() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    honest = [k for k in range(n) if k != attacker]
    out = {"auc": honest_auc(run_dir, rc, honest, n), "status": metrics["status"],
           "rounds": metrics["rounds_completed"], "wall_s": round(wall, 1)}
    if rule in ("krum", "multi-krum") and attacker is not None:
        names = sorted(p.stem for p in data_dir.iterdir())
        out["attacker_selected_rounds"] = sum(
            names[attacker] in (r.get("aggregation") or {}).get("selected", []) for r in metrics["history"])
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(work / f"{tag}-state", ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--scale", type=float, default=0.5, help="size of the synthetic institutions")
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--dp", action="store_true", help="DP-SGD at each node (default: no DP)")
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument("--clip", type=float, default=0.0, help="clip-update-norm (0 = off)")
    ap.add_argument("--attacker", default="national-bank-1")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", type=int, default=None)
    args = ap.parse_args()
    rules = [r for r in args.rules.split(",") if r]
    attacks = [a for a in args.attacks.split(",") if a]
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import logging

    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.ERROR)

    t0 = time.time()
    with scratch_dir(None, "fedcredit-poisoning-") as work:
        clean_dir = work / "data-clean"
        files = write_consortium(clean_dir, args.scale, args.seed)
        names = sorted(files)
        rows = {name: sum(1 for _ in open(path)) - 1 for name, path in files.items()}
        if args.attacker not in names:
            raise SystemExit(f"--attacker must be one of {', '.join(names)}")
        attacker = names.index(args.attacker)
        flipped_dir = work / "data-label-flip"
        shutil.copytree(clean_dir, flipped_dir)
        flip_labels(files[args.attacker], flipped_dir / files[args.attacker].name)

        results: dict = {"clean": {}, "attacks": {a: {} for a in attacks}}
        for rule in rules:
            results["clean"][rule] = one_run(work, f"clean-{rule}", clean_dir, rule, args, None, None, len(names))
            print(f"clean      {rule:13s} AUC {results['clean'][rule]['auc']:.4f}", file=sys.stderr, flush=True)
        for attack in attacks:
            data_dir = flipped_dir if attack == "label-flip" else clean_dir
            for rule in rules:
                r = one_run(work, f"{attack}-{rule}", data_dir, rule, args, attacker, attack, len(names))
                results["attacks"][attack][rule] = r
                print(f"{attack:10s} {rule:13s} AUC {r['auc']:.4f}", file=sys.stderr, flush=True)

    clean_mean = results["clean"].get("mean", {}).get("auc")
    summary = {}
    for attack, by_rule in results["attacks"].items():
        robust = {r: v["auc"] for r, v in by_rule.items() if r != "mean"}
        best = max(robust, key=robust.get) if robust else None
        summary[attack] = {
            "fedavg_auc": by_rule.get("mean", {}).get("auc"),
            "fedavg_drop_vs_clean": (clean_mean - by_rule["mean"]["auc"]) if clean_mean and "mean" in by_rule else None,
            "best_rule": best, "best_rule_auc": robust.get(best),
            "best_rule_gap_vs_clean": (clean_mean - robust[best]) if clean_mean and best else None,
            "within_0.01_of_clean": sorted(r for r, a in robust.items() if clean_mean and clean_mean - a <= 0.01),
        }
    print(json.dumps({
        "bench": "poisoning", "institutions": len(names), "attacker": args.attacker,
        "attacker_share_of_rows": round(rows[args.attacker] / sum(rows.values()), 3), "rounds": args.rounds, "scale": args.scale, "dp": bool(args.dp),
        "epsilon": args.epsilon if args.dp else None, "clip_update_norm": args.clip, "seed": args.seed,
        "scale_factor": SCALE_FACTOR, "sign_flip_factor": SIGN_FACTOR,
        "clean_auc": {r: v["auc"] for r, v in results["clean"].items()},
        "attack_auc": {a: {r: v["auc"] for r, v in by.items()} for a, by in results["attacks"].items()},
        "krum_selected_attacker_rounds": {a: {r: v.get("attacker_selected_rounds") for r, v in by.items()
                                              if "attacker_selected_rounds" in v}
                                          for a, by in results["attacks"].items()},
        "summary": summary, "wall_s": round(time.time() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }))


if __name__ == "__main__":
    main()
