"""End-to-end scoring throughput: ``fedcredit score`` from CSV to CSV, one JSON line.

    python bench/score_throughput.py [--rows 1000000] [--repeats 1] [--no-mapping] [--seed 0]

Synthesises ``--rows`` applicants (the card-issuer archetype of ``simulation.synthetic``) and
writes them twice: in the consortium schema's own format, and in the UCI "default of credit
card clients" format (its column names and numeric codes for sex, education and marital status),
scored with ``--mapping uci-taiwan`` so that renaming and recoding are part of the path. The
model is an MLP (64, 32) package with random weights over an encoder fitted on the applicants
(the cost of scoring does not depend on what the weights learned).

Each variant runs the real command in a fresh process::

    python -m fedcredit score --model M --data apps.csv [--mapping uci-taiwan] --out scores.csv --json

and is timed from outside (``wall_s``: process start, imports, read, validate, map, encode,
predict, write, exit). ``rows_per_s`` is rows / wall_s — the figure the target (≥ 100,000
rows/s) is about. ``command_s`` is the command's own figure (without interpreter start-up).

A breakdown of the same work, measured in this process on the same file (``stages_s``): read
(``clients.tabular_io.read_table``), validate (+ mapping), encode + predict
(``clients.score_command.score_rows``), write (``clients.score_command.write_scores``). Repeats take the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_ROWS_PER_S = 100_000


def make_package(directory: Path, table) -> Path:
    from configs.schema import load_schema
    from models.encoder import fit_encoder_from_tables
    from models.network import ModelSpec, build_model, get_weights
    from models.package import ModelPackage, save_package

    schema = load_schema(None)
    encoder = fit_encoder_from_tables(schema, [table])
    spec = ModelSpec("mlp", encoder.n_outputs, (64, 32))
    return save_package(directory, ModelPackage(spec=spec, encoder=encoder, weights=get_weights(build_model(spec, 0)),
                                                schema=schema))


def uci_format(table, schema):
    """The applicants as the UCI file writes them: its column names and numeric category codes."""
    from configs.mapping import load_mapping

    mapping = load_mapping("uci-taiwan", schema)
    out = table.copy()
    for col, codes in mapping.recode.items():
        if col in out.columns:
            back = {}
            for code, value in codes.items():
                back.setdefault(value, int(code))  # the first (documented) code of each value
            out[col] = out[col].map(back).astype("int64")
    inverse = {dst: src for src, dst in mapping.columns.items()}
    return out.rename(columns=inverse)


def timed_command(model: Path, data: Path, out: Path, mapping: str | None, repo: Path = REPO) -> dict:
    cmd = [sys.executable, "-m", "fedcredit", "score", "--model", str(model), "--data", str(data),
           "--out", str(out), "--json"] + (["--mapping", mapping] if mapping else [])
    env = dict(os.environ, PYTHONPATH=str(repo))  # `python -m` in repo imports that checkout's code
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"fedcredit score failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "command_s": summary["seconds"], "rows": summary["rows"]}


def stages(model: Path, data: Path, out: Path, mapping: str | None) -> dict:
    """The command's work split into stages, in this process (imports already done)."""
    import numpy as np

    from clients import score_command
    from clients.tabular_io import read_table
    from clients.validation import validate_raw
    from configs.mapping import load_mapping
    from models.package import load_package
    from models.scoring import decisions

    t = {}
    pkg = load_package(model)
    m = load_mapping(mapping, pkg.schema) if mapping else None
    t0 = time.perf_counter()
    raw = read_table(data)
    t["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = validate_raw(raw, pkg.schema, m, require_label=False, min_rows=1, min_positives=0).table
    t["validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pd_values, _ = score_command.score_rows(pkg, pkg.model(), table)
    t["encode_predict"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame = {"borrower_id": table["borrower_id"].to_numpy(), "pd": np.round(pd_values, 6),
             "score": np.round(pkg.scale.points(pd_values), 1), "decision": decisions(pd_values, pkg.cutoff_pd)}
    score_command.write_scores(frame, str(out))
    t["write"] = time.perf_counter() - t0
    return t


def print_figures(out: dict) -> int:
    """Print the bench's one JSON line: ``out`` and the machine it ran on (torch threads, CPUs,
    Python, 1-minute load average); returns the exit code 0."""
    import torch

    out.update({"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                "python": platform.python_version(), "load_avg_1min": round(os.getloadavg()[0], 2)})
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each variant (median reported)")
    ap.add_argument("--no-mapping", action="store_true", help="skip the UCI-format variant (--mapping uci-taiwan)")
    ap.add_argument("--no-stages", action="store_true", help="skip the in-process stage breakdown")
    ap.add_argument("--compare-with", metavar="CHECKOUT",
                    help="another checkout of fedcredit (e.g. `git worktree add /tmp/base <commit>`): its "
                         "`fedcredit score` runs on the same files, alternating with this one; reports speed-ups")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np

    from configs.schema import load_schema
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution, write_csv

    schema = load_schema(None)
    arch = next(a for a in load_archetypes() if a.code == "CC")
    t0 = time.perf_counter()
    table, _ = generate_institution(arch, args.rows, np.random.default_rng(args.seed), schema)
    apps = table.drop(columns=[schema.label.name])
    out: dict = {"bench": "score_throughput", "rows": args.rows, "seed": args.seed, "repeats": args.repeats,
                 "target_rows_per_s": TARGET_ROWS_PER_S}
    with tempfile.TemporaryDirectory(prefix="fedcredit-score-bench-") as tmp:
        tmp = Path(tmp)
        variants = {"schema": (tmp / "apps.csv", None)}
        write_csv(apps, tmp / "apps.csv")
        if not args.no_mapping:
            write_csv(uci_format(apps, schema), tmp / "apps-uci.csv")
            variants["mapping"] = (tmp / "apps-uci.csv", "uci-taiwan")
        model = make_package(tmp / "model", table)
        out["prepare_s"] = round(time.perf_counter() - t0, 2)
        out["csv_mb"] = round((tmp / "apps.csv").stat().st_size / 1e6, 1)
        del table, apps
        for name, (data, mapping) in variants.items():
            runs, base = [], []
            for _ in range(args.repeats):
                if args.compare_with:
                    base.append(timed_command(model, data, tmp / f"base-{name}.csv", mapping,
                                              Path(args.compare_with).resolve()))
                runs.append(timed_command(model, data, tmp / f"scores-{name}.csv", mapping))
            wall = statistics.median(r["wall_s"] for r in runs)
            cmd_s = statistics.median(r["command_s"] for r in runs)
            assert all(r["rows"] == args.rows for r in runs)
            res = {"wall_s": round(wall, 3), "command_s": round(cmd_s, 3),
                   "rows_per_s": round(args.rows / wall), "command_rows_per_s": round(args.rows / cmd_s)}
            if base:
                base_wall = statistics.median(r["wall_s"] for r in base)
                res["compare_with"] = {"wall_s": round(base_wall, 3),
                                       "command_s": round(statistics.median(r["command_s"] for r in base), 3),
                                       "rows_per_s": round(args.rows / base_wall),
                                       "speedup_wall": round(base_wall / wall, 2)}
            if not args.no_stages:
                st = [stages(model, data, tmp / f"stage-{name}.csv", mapping) for _ in range(args.repeats)]
                res["stages_s"] = {k: round(statistics.median(s[k] for s in st), 3) for k in st[0]}
            out[name] = res
    out["rows_per_s"] = out["schema"]["rows_per_s"]
    if "mapping" in out:
        out["rows_per_s_mapping"] = out["mapping"]["rows_per_s"]
    out["ok"] = min(v["rows_per_s"] for k, v in out.items() if k in variants) >= TARGET_ROWS_PER_S
    return print_figures(out)


if __name__ == "__main__":
    sys.exit(main())
