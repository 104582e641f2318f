"""A deployed round against the same round simulated, measured side by side in one run.

Deployment on loopback as docs/operator.md and docs/institution.md describe it: ``fedcredit
certs`` → ``flower-superlink`` (TLS, ``--enable-supernode-auth``) → ``flwr supernode register`` →
one node per institution → ``flwr run .`` (without ``--stream``) of a DP run of ROUNDS rounds.
The nodes are ``fedcredit node start`` (the SuperNode in process isolation plus the warm
fedcredit runtime, ``--node-runtime fedcredit``, the default) or raw ``flower-supernode`` in
Flower's default subprocess isolation (``--node-runtime flower``: a ``flwr-clientapp`` process
per message that installs the FAB and imports torch — the path before issue #19).

Per-phase seconds of the deployed run, from the bench's clock and the ServerApp's
``progress.jsonl`` (same machine, same clock): ``submit`` (``flwr run`` until it returns),
``app_start`` (submitted → the ServerApp's ``run-start``), ``statistics`` (the federated
statistics query), each round (``round-start`` → ``round-end``: train and, when the round
evaluates, evaluation), ``final`` (last round-end → ``run-end``: final evaluation of the
recalibrated model, model package). Before the deployments ``fedcredit simulate`` trains the
same institutions' files with the same run config in Flower's simulation runtime; its rounds'
``wall_s`` are the simulated rounds.

ratio = median deployed round ÷ median simulated round, over rounds 2…R (round 1 is warm-up on
both sides: first-use costs of the nodes' workers, Ray actors importing torch); ``ratio_all``
over all rounds. Target: ≤ 10. Prints one JSON line, with the machine's 1-minute load average
at the start and the end (``load_avg``): on a shared machine the deployed side — a dozen
processes — suffers more from load than the simulated one.

Both sides run with the run config's defaults otherwise, so ``fold-evaluation = true``: a round's
evaluation travels in the next round's train message (one message per node per round; the
last round's evaluation and the final evaluation are one more message each).

With ``--node-runtime both`` (the default) the same run is deployed twice, one after the other,
on fresh deployments: with ``fedcredit node start`` (reported as the main figures) and with raw
``flower-supernode`` (``before``), so the before/after speed-up is measured in one run too.

Usage: python bench/deploy_latency.py [--institutions 3] [--scale 0.3] [--rounds 5]
                                     [--evaluate-every 1] [--node-runtime fedcredit|flower|both]
                                     [--seed 11] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.scratch import scratch_dir  # noqa: E402

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 600
RUN_TIMEOUT_S = 3600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(home: Path) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", OMP_NUM_THREADS="1",
                FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PATH=f"{BIN}:{os.environ.get('PATH', '')}")


def fedcredit(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fedcredit", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"fedcredit {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} after {timeout:.0f} s")


def start_superlink(work: Path, port: int) -> subprocess.Popen:
    certs = work / "certs"
    cmd = [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
           "--ssl-certfile", str(certs / "server.crt"), "--ssl-keyfile", str(certs / "server.key"),
           "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env_for(work / "home-link"), cwd=work, stdout=open(work / "superlink.log", "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, 120, "the SuperLink does not listen")
    return proc


def operator_home(work: Path, port: int, names: list[str]) -> Path:
    home = work / "home-cli"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "consortium"\n\n[superlink.consortium]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{work / "certs" / "ca.crt"}"\n')
    for name in names:
        subprocess.run([str(BIN / "flwr"), "supernode", "register", str(work / "keys" / f"{name}.pub"), "consortium"],
                       cwd=home, env=env_for(home), capture_output=True, text=True, check=True, timeout=120)
    return home


def node_config(work: Path, name: str) -> str:
    return (f"data-path='{work / 'data' / f'{name}.csv'}' state-dir='{work / f'state-{name}'}' max-epsilon=8.0 "
            f"institution-id='{name}'")


def start_node(work: Path, port: int, name: str, runtime: str) -> tuple[subprocess.Popen, Path]:
    log = work / f"node-{name}.log"
    common = ["--superlink", f"127.0.0.1:{port}", "--root-certificates", str(work / "certs" / "ca.crt")]
    if runtime == "fedcredit":
        cmd = [sys.executable, "-m", "fedcredit", "node", "start", *common, "--key", str(work / "keys" / name),
               "--port", str(free_port()), "--node-config", node_config(work, name)]
    else:
        cmd = [str(BIN / "flower-supernode"), *common, "--auth-supernode-private-key", str(work / "keys" / name),
               "--port", str(free_port()), "--node-config", node_config(work, name)]
    proc = subprocess.Popen(cmd, env=env_for(work / f"home-{name}"), cwd=REPO, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, log


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "progress.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def at(event: dict) -> float:
    return datetime.fromisoformat(event["time"]).timestamp()


def deployed_phases(run_dir: Path, submitted: float, submit_s: float) -> dict:
    """Per-phase seconds from the ServerApp's progress.jsonl (a phase that never ended: None)."""
    ev = events(run_dir)
    first = {e["event"]: e for e in reversed(ev)}  # the first event of each kind

    def span(a: str | None, b: str) -> float | None:
        start = at(first[a]) if a else submitted
        return round(at(first[b]) - start, 3) if b in first and (a is None or a in first) else None

    starts = {e["round"]: at(e) for e in ev if e["event"] == "round-start"}
    ends = {e["round"]: at(e) for e in ev if e["event"] == "round-end"}
    rounds = [round(ends[r] - starts[r], 3) for r in sorted(ends)]
    final = round(at(first["run-end"]) - ends[max(ends)], 3) if ends and "run-end" in first else None
    return {"submit": round(submit_s, 3), "app_start": span(None, "run-start"),
            "statistics": span("statistics-start", "statistics-end"), "rounds": rounds, "final": final}


def run_deployed(work: Path, port: int, cli_home: Path, run_config: str, timeout: float) -> tuple[dict, str]:
    """Submit the run, wait for its end (at most ``timeout`` s); phases and the run's status."""
    run_dir = work / "run-deployed"
    t0 = time.time()
    proc = subprocess.run([str(BIN / "flwr"), "run", ".", "consortium", "--run-config",
                           f"{run_config} run-dir='{run_dir}'"], cwd=REPO, env=env_for(cli_home),
                          capture_output=True, text=True, timeout=600)
    submit_s = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"flwr run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(e["event"] == "run-end" for e in events(run_dir)):
        time.sleep(0.5)
    phases = deployed_phases(run_dir, t0 + submit_s, submit_s)
    if not (run_dir / "metrics.json").is_file():
        return phases, f"unfinished after {timeout:.0f} s"
    return phases, json.loads((run_dir / "metrics.json").read_text())["status"]


def run_simulated(work: Path, rounds: int, seed: int, evaluate_every: int) -> dict:
    out = work / "run-simulated"
    fedcredit("simulate", "--data", work / "data", "--rounds", rounds, "--epsilon", 8.0, "--batch-size", 128,
              "--seed", seed, "--no-baselines", "--out", out, "--state-root", work / "sim-state", "--cpus", 2,
              "--run-config", "target-epsilon=1.0", "--run-config", f"evaluate-every={evaluate_every}",
              timeout=RUN_TIMEOUT_S)
    return json.loads((out / "metrics.json").read_text())


def median_after_first(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def deploy(work: Path, names: list[str], runtime: str, run_config: str, timeout: float) -> dict:
    """One deployment (own SuperLink, nodes, state) and one run on it; per-phase seconds."""
    started: list[subprocess.Popen] = []
    try:
        port = free_port()
        started.append(start_superlink(work, port))
        cli_home = operator_home(work, port, names)
        t_nodes = time.time()
        logs = []
        for name in names:
            proc, log = start_node(work, port, name, runtime)
            started.append(proc)
            logs.append(log)
        marker = "[fedcredit-runtime] ready" if runtime == "fedcredit" else "SuperNode ID"
        wait_for(lambda: all(marker in log.read_text() for log in logs), READY_TIMEOUT_S, "the nodes are not ready")
        nodes_ready_s = time.time() - t_nodes
        phases, status = run_deployed(work, port, cli_home, run_config, timeout)
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    rounds = phases["rounds"]
    metrics_file = work / "run-deployed" / "metrics.json"
    final = json.loads(metrics_file.read_text()).get("final") if metrics_file.is_file() else None
    return {"node_runtime": runtime, "final_auc": (final or {}).get("auc"),
            "final_auc_sd": (final or {}).get("auc_sd"), "nodes_ready_s": round(nodes_ready_s, 3), "phases_s": phases,
            "round_s": round(median_after_first(rounds), 3) if rounds else None, "status": status}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--institutions", type=int, default=3)
    p.add_argument("--scale", type=float, default=0.3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--evaluate-every", type=int, default=1)
    p.add_argument("--node-runtime", choices=("fedcredit", "flower", "both"), default="both",
                   help="fedcredit node start, raw flower-supernode (before #19), or both one after the other")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--before-timeout", type=float, default=1200.0,
                   help="give up on the raw flower-supernode run after this many seconds (reported as unfinished)")
    p.add_argument("--keep", default=None, help="keep data, logs and run directories here")
    args = p.parse_args(argv)
    t_bench, load_start = time.time(), os.getloadavg()[0]
    runtimes = ["fedcredit", "flower"] if args.node_runtime == "both" else [args.node_runtime]
    with scratch_dir(args.keep, "fedcredit-deploy-latency-") as work:
        fedcredit("certs", "--out", work / "certs", "--hosts", "localhost,127.0.0.1")
        synth = fedcredit("data", "synth", "--out", work / "data", "--institutions", args.institutions,
                          "--scale", args.scale, "--seed", args.seed, "--json")
        plan = json.loads(synth.stdout.strip().splitlines()[-1])["institutions"]
        names = [i["id"] for i in plan]
        for name in names:
            fedcredit("keys", "--out", work / "keys", "--name", name)
        for sub in ("certs", "data", "keys"):  # each deployment gets its own copy of the shared inputs
            for runtime in runtimes:
                (work / runtime).mkdir(exist_ok=True)
                subprocess.run(["cp", "-r", str(work / sub), str(work / runtime / sub)], check=True)
        run_config = (f"num-server-rounds={args.rounds} min-available-nodes={len(names)} "
                      f"min-train-nodes={len(names)} round-timeout=600.0 dp=true batch-size=128 "
                      f"seed={args.seed} target-epsilon=1.0 evaluate-every={args.evaluate_every}")
        simulated = run_simulated(work, args.rounds, args.seed, args.evaluate_every)  # first: fails fast
        deployed = {rt: deploy(work / rt, names, rt, run_config,
                               RUN_TIMEOUT_S if rt == runtimes[0] else args.before_timeout) for rt in runtimes}
    sim_rounds = [round(r["wall_s"], 3) for r in simulated["history"]]
    sim_round = median_after_first(sim_rounds)
    main_rt = deployed[runtimes[0]]
    result = {
        "benchmark": "deploy_latency", "institutions": len(names), "rows": sum(i["rows"] for i in plan),
        "rounds": args.rounds, "evaluate_every": args.evaluate_every, "dp": True, "tls": True, "node_auth": True,
        "node_runtime": runtimes[0], "phases_s": main_rt["phases_s"], "nodes_ready_s": main_rt["nodes_ready_s"],
        "deployed_round_s": main_rt["round_s"], "simulated_round_s": round(sim_round, 3),
        "simulated_rounds_s": sim_rounds, "ratio": round(main_rt["round_s"] / sim_round, 2),
        "ratio_all": round(statistics.median(main_rt["phases_s"]["rounds"]) / statistics.median(sim_rounds), 2),
        "target_ratio": 10, "deployed_status": main_rt["status"], "simulated_status": simulated["status"],
        "deployed_final_auc": main_rt["final_auc"], "deployed_final_auc_sd": main_rt["final_auc_sd"],
        "simulated_final_auc": (simulated.get("final") or {}).get("auc"),
        "fold_evaluation": True, "load_avg": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "bench_s": round(time.time() - t_bench, 1),
    }
    if "flower" in deployed and runtimes[0] != "flower":
        before = deployed["flower"]
        result["before"] = before
        if before["round_s"]:
            result["before"]["ratio"] = round(before["round_s"] / sim_round, 2)
            result["speedup"] = round(before["round_s"] / main_rt["round_s"], 2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
