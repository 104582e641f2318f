"""Throughput of adverse-action reason codes: ``fedcredit score`` with and without ``--explain``.

    python bench/reason_codes_speed.py [--rows 100000] [--model RUN_DIR/model] [--explain 3]

Synthesises ``--rows`` applicants (a credit-card-issuer archetype), then runs the real command
``fedcredit score --model M --data apps.csv --out scores.csv --json`` twice — without and with
``--explain K`` — and times, in this process, ``models.reasons.adverse_action_reasons`` alone
on the encoded matrix. Without ``--model`` a package is built from an MLP (64, 32) with random
weights and an encoder fitted on the applicants (the cost does not depend on what the weights
learned). Prints one JSON line: rows, seconds and rows/s of each, and the explain/plain ratio.
Ratios measured in one run are what to compare (these machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from bench.score_throughput import make_package  # noqa: E402  (the same untrained package as score_throughput)


def timed_score(model: Path, data: Path, out: Path, explain: int) -> dict:
    cmd = [sys.executable, "-m", "fedcredit", "score", "--model", str(model), "--data", str(data),
           "--out", str(out), "--json"] + (["--explain", str(explain)] if explain else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"fedcredit score failed:\n{proc.stderr[-2000:]}")
    return {"wall_s": round(wall, 3), "command_s": round(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"], 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--model", help="model package directory (default: a random-weight MLP package)")
    ap.add_argument("--explain", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from configs.schema import load_schema
    from models.package import load_package
    from models.reasons import adverse_action_reasons
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution

    schema = load_schema(None)
    arch = next(a for a in load_archetypes() if a.code == "CC")  # card issuer
    table, _ = generate_institution(arch, args.rows, np.random.default_rng(args.seed), schema)
    with tempfile.TemporaryDirectory(prefix="fedcredit-reasons-") as tmp:
        tmp = Path(tmp)
        data = tmp / "apps.csv"
        table.drop(columns=[schema.label.name]).to_csv(data, index=False)
        model = Path(args.model) if args.model else make_package(tmp / "model", table)
        plain = timed_score(model, data, tmp / "plain.csv", 0)
        explained = timed_score(model, data, tmp / "explained.csv", args.explain)

        pkg = load_package(model)
        x = pkg.encoder.transform(table)
        net = pkg.model()
        adverse_action_reasons(net, pkg.encoder, pkg.schema, x[:2048], args.explain)  # warm-up
        t0 = time.perf_counter()
        reasons = adverse_action_reasons(net, pkg.encoder, pkg.schema, x, args.explain)
        reasons_s = time.perf_counter() - t0
    n = args.rows
    print(json.dumps({
        "bench": "reason_codes_speed", "rows": n, "explain": args.explain, "architecture": pkg.spec.architecture,
        "torch_threads": torch.get_num_threads(),
        "score_s": plain["command_s"], "score_rows_per_s": round(n / plain["command_s"]),
        "score_explain_s": explained["command_s"], "score_explain_rows_per_s": round(n / explained["command_s"]),
        "explain_over_plain": round(explained["command_s"] / plain["command_s"], 2),
        "reasons_only_s": round(reasons_s, 3), "reasons_only_rows_per_s": round(n / reasons_s),
        "rows_with_a_reason": float((reasons[:, 0] != "").mean()),
        "process_wall_s": {"plain": plain["wall_s"], "explain": explained["wall_s"]},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
