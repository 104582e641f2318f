"""The decision service under load: HTTP latency and throughput, with and without the decision trail.

    python bench/serve_latency.py [--requests 400] [--levels 1,8,32] [--applicants 500] [--seed 0] [--keep DIR]

Builds a model package (an MLP (64, 32) with random weights over an encoder fitted on synthetic
card-issuer applicants — the cost of deciding does not depend on what the weights learned) and
starts two real services, ``python -m fedcredit serve --port 0``: one writing the decision
trail (fsync before every answer, group commit), one with ``--no-trail``. A real HTTP client
(httpx, keep-alive connections) sends one application per ``POST /v1/decisions`` over loopback
at each concurrency level, the two services taking turns (``--rounds`` alternating turns per
level, so that the machine's load drifts over both alike), and measures each
request from send to parsed answer: p50 / p99 latency, decisions per second (answered
decisions / wall time of the level) and errors (anything but a 201 with a decision).

In the same run, in this process: the time to decide one application without HTTP or trail
(:class:`clients.decision_engine.DecisionModel`: validate as ``data validate``, encode, PD,
points, 3 reasons) — ``in_process_ms``, over 100 applicants before the load and 100 after it.

After the load the trail service's own counts are read (``/healthz``: groups, syncs, mean sync
time), the services are stopped and the trail is verified (``decisions verify``'s check); every
answered decision must be on it with the hash it was answered with (``lost``).

Targets (issue #18): no errors and nothing lost; p99 at concurrency 8 within 10× of the
in-process time for one application (``p99_c8_over_in_process``); the trail costs at most 20 %
of throughput (``trail_cost`` = 1 − trail decisions/s ÷ no-trail decisions/s, per level).
One JSON line. The client shares the machine's cores with the service: on a 2-core machine
the figures include the client's own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scratch import scratch_dir  # noqa: E402
from bench.score_throughput import make_package  # noqa: E402

TARGET_P99_OVER_IN_PROCESS = 10.0
TARGET_TRAIL_COST = 0.20


def applicants(n: int, seed: int) -> list[dict]:
    """``n`` synthetic applicants as JSON objects in the schema's own field names (no label)."""
    from configs.schema import load_schema
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution, institution_rng

    schema = load_schema(None)
    archetype = next(a for a in load_archetypes() if a.id == "card-issuer")
    table, _ = generate_institution(archetype, n, institution_rng(seed, 0), schema, id_prefix="APP")
    return json.loads(table.drop(columns=[schema.label.name]).to_json(orient="records"))


def in_process_times(model, apps: list[dict]) -> list[float]:
    """Milliseconds to decide each application in this process (validate, encode, PD, points, reasons)."""
    times = []
    for app in apps:
        t0 = time.perf_counter()
        model.score(model.validate_table([app]).table)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start_service(package: Path, trail: Path | None, log: Path) -> tuple[subprocess.Popen, str]:
    """A real ``fedcredit serve`` process on a free loopback port (its own process group); its URL."""
    cmd = [sys.executable, "-m", "fedcredit", "serve", "--model", str(package), "--port", "0", "--json"]
    cmd += ["--decisions", str(trail)] if trail else ["--no-trail"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True)
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the service did not start; see {log}:\n{log.read_text()[-2000:]}")
    return proc, json.loads(line)["url"]


def stop_service(proc: subprocess.Popen) -> None:
    """SIGTERM (queued applications are answered, the trail closed), SIGKILL after 60 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def load(url: str, apps: list[dict], requests: int, concurrency: int) -> dict:
    """``requests`` decisions at ``concurrency`` in flight; latency per request, throughput, errors."""
    import httpx

    latencies: list[float] = []
    answered: list[dict] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def worker(counter) -> None:
            for i in counter:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/decisions", json=apps[i % len(apps)])
                    body = r.json()
                except (httpx.HTTPError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)
                if r.status_code == 201 and body.get("decision") in ("approve", "decline"):
                    answered.append(body)
                else:
                    errors.append(f"HTTP {r.status_code}: {str(body)[:200]}")

        async def run(n: int) -> float:
            counter = iter(range(n))
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(counter) for _ in range(concurrency)))
            return time.perf_counter() - t0

        await run(2 * concurrency + 8)  # warm-up: open the connections (its decisions are counted as answered)
        warm = list(answered)
        latencies.clear()
        answered.clear()
        wall = await run(requests)
    answered_all = warm + answered
    return {"latencies": latencies, "answered": answered_all, "decided": len(answered), "errors": errors,
            "wall_s": wall}


def summarise(parts: list[dict]) -> dict:
    """One variant at one level over its interleaved parts: latency quantiles, decisions/s, errors."""
    latencies = [x for p in parts for x in p["latencies"]]
    errors = [e for p in parts for e in p["errors"]]
    wall = sum(p["wall_s"] for p in parts)
    return {"requests": len(latencies) + len(errors),
            "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
            "p99_ms": round(_quantile(latencies, 0.99), 2) if latencies else None,
            "decisions_per_s": round(sum(p["decided"] for p in parts) / wall, 1), "errors": len(errors),
            "error_examples": errors[:3], "wall_s": round(wall, 2)}


def service_counts(url: str) -> dict:
    """The trail service's own counts (``/healthz``): groups decided, syncs and their mean time."""
    import httpx

    h = httpx.get(url + "/healthz", timeout=60).json()
    return {"groups": h["groups"], "syncs": h["trail"]["syncs"], "sync_ms_mean": h["trail"]["sync_ms_mean"],
            "decisions_per_sync": round(h["decided"] / max(h["trail"]["syncs"], 1), 2)}


def lost_decisions(trail_dir: Path, answered: list[dict]) -> dict:
    """Verify the trail; every answered decision must be on it with the hash it was answered with."""
    from clients.decision_log import read_trail

    trail = read_trail(trail_dir)
    refs = trail.index.decisions
    lost = [a["decision_id"] for a in answered
            if a["decision_id"] not in refs or refs[a["decision_id"]].hash != a["trail"]["hash"]]
    return {"trail_ok": trail.check.ok, "trail_entries": trail.check.entries, "answered": len(answered),
            "lost": len(lost)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400, help="decisions per concurrency level and service")
    ap.add_argument("--rounds", type=int, default=4, help="turns per level: each service sends requests/rounds per "
                                                         "turn, alternately")
    ap.add_argument("--levels", default="1,8,32", help="concurrency levels")
    ap.add_argument("--applicants", type=int, default=500, help="distinct applications sent (cycled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="keep the package, trail and logs in DIR")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with scratch_dir(args.keep, "fedcredit-serve-bench-") as work:
        apps = applicants(args.applicants, args.seed)
        import pandas as pd

        from clients.decision_engine import DecisionModel

        package = make_package(work / "model", pd.DataFrame(apps))
        model = DecisionModel(package)
        in_process_times(model, apps[:20])  # warm-up
        times = in_process_times(model, apps[:100])  # before the load, and again after it
        services = {}
        try:
            services["trail"] = start_service(package, work / "decisions", work / "serve-trail.log")
            services["no_trail"] = start_service(package, None, work / "serve-no-trail.log")
            results: dict[str, dict] = {}
            answered: list[dict] = []
            for c in levels:
                parts: dict[str, list[dict]] = {"trail": [], "no_trail": []}
                for k in range(args.rounds):  # the two services take turns, so load on the machine hits both
                    for variant in (["trail", "no_trail"] if k % 2 == 0 else ["no_trail", "trail"]):
                        part = asyncio.run(load(services[variant][1], apps, args.requests // args.rounds, c))
                        parts[variant].append(part)
                        if variant == "trail":
                            answered += part["answered"]
                results[str(c)] = {variant: summarise(p) for variant, p in parts.items()}
            commits = service_counts(services["trail"][1])
        finally:
            for proc, _ in services.values():
                stop_service(proc)
        trail = dict(lost_decisions(work / "decisions", answered), **commits)
        times += in_process_times(model, apps[100:200])
    single = {"p50": round(statistics.median(times), 2), "p99": round(_quantile(times, 0.99), 2), "n": len(times)}
    for c, r in results.items():
        r["trail_cost"] = round(1 - r["trail"]["decisions_per_s"] / r["no_trail"]["decisions_per_s"], 3)
    p99_c8 = results.get("8", {}).get("trail", {}).get("p99_ms")
    errors = sum(v["errors"] for r in results.values() for k, v in r.items() if isinstance(v, dict))
    ratio = round(p99_c8 / single["p50"], 2) if p99_c8 else None
    worst_cost = max(r["trail_cost"] for r in results.values())
    out = {"bench": "serve_latency", "in_process_ms": single, "levels": results, "trail": trail,
           "p99_c8_over_in_process": ratio, "trail_cost_max": worst_cost, "errors": errors,
           "targets": {"p99_c8_over_in_process": TARGET_P99_OVER_IN_PROCESS, "trail_cost": TARGET_TRAIL_COST},
           "ok": {"no_errors_nothing_lost": errors == 0 and trail["lost"] == 0 and trail["trail_ok"],
                  "p99_c8": ratio is not None and ratio <= TARGET_P99_OVER_IN_PROCESS,
                  "trail_cost": worst_cost <= TARGET_TRAIL_COST},
           "cores": os.cpu_count(), "load_avg": round(os.getloadavg()[0], 2)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
