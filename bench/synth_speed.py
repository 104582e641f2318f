"""Speed of the synthetic consortium generator: one JSON line.

Generates a 5-institution consortium of about ``--rows`` rows (default 1,000,000) in memory and
times it; then, separately, writes the same tables as CSV (institution files and truth files)
and times that. Prints rows per second for both, the CSV bytes, and platform info.

    python bench/synth_speed.py [--rows 1000000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import pyarrow

    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_consortium, write_csv

    base = sum(a.rows for a in load_archetypes())
    scale = args.rows / base
    generate_consortium(None, scale=0.25, seed=args.seed)  # warm-up (imports, first allocations)

    t0 = time.perf_counter()
    manifest = generate_consortium(None, scale=scale, seed=args.seed)
    t_gen = time.perf_counter() - t0
    rows = manifest["rows"]

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        nbytes = 0
        for d in manifest["_data"]:
            path = Path(tmp) / f"{d.id}.csv"
            write_csv(d.table, path)
            truth = Path(tmp) / f"{d.id}.truth.csv"
            write_csv(pd.DataFrame({"borrower_id": d.table["borrower_id"], "true_pd": np.round(d.true_pd, 8)}), truth)
            nbytes += path.stat().st_size + truth.stat().st_size
        t_write = time.perf_counter() - t0

    print(json.dumps({
        "bench": "synth_speed",
        "rows": rows,
        "institutions": len(manifest["institutions"]),
        "scale": round(scale, 4),
        "generate_s": round(t_gen, 3),
        "generate_rows_per_s": round(rows / t_gen),
        "write_csv_s": round(t_write, 3),
        "write_csv_rows_per_s": round(rows / t_write),
        "end_to_end_rows_per_s": round(rows / (t_gen + t_write)),
        "csv_mb": round(nbytes / 1e6, 1),
        "oracle_auc": manifest["oracle_auc"],
        "platform": {
            "python": platform.python_version(), "machine": platform.machine(), "system": platform.system(),
            "cpus": os.cpu_count(), "numpy": np.__version__, "pandas": pd.__version__,
            "pyarrow": pyarrow.__version__,
        },
    }))


if __name__ == "__main__":
    main()
