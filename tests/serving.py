"""Helpers for tests of the decision service: a model package, applicants, a real ``fedcredit serve``.

:func:`served` starts the real command (``python -m fedcredit serve --port 0 --json``) in its
own process group, waits for its ready line and ``/healthz``, and at the end — also when the
test fails — stops the whole group (SIGTERM, then SIGKILL) and checks that nothing of it is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO
from tests.processes import signal_group, stop_group

START_TIMEOUT_S = 90


@dataclass
class Service:
    proc: subprocess.Popen
    url: str
    ready: dict
    stderr: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the service's process group and wait for it; returns its exit code."""
        return signal_group(self.proc, sig, timeout)


def start_service(args: list, stderr: Path) -> Service:
    """Start ``fedcredit serve ARGS --port 0 --json`` and wait until it answers ``/healthz``."""
    import httpx

    cmd = [sys.executable, "-m", "fedcredit", "serve", *map(str, args), "--port", "0", "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=open(stderr, "w"), text=True,
                            env=dict(os.environ, PYTHONIOENCODING="utf-8"), start_new_session=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line = proc.stdout.readline() if sel.select(timeout=START_TIMEOUT_S) else ""
    if not line:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the service did not start (exit {proc.poll()}):\n{stderr.read_text()[-3000:]}")
    ready = json.loads(line)
    service = Service(proc, ready["url"], ready, stderr)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(service.url + "/healthz", timeout=5).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            service.stop(signal.SIGKILL)
            raise AssertionError(f"the service does not answer /healthz:\n{stderr.read_text()[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def served(args: list, stderr: Path):
    """A running service for the ``with`` block; its process group is gone afterwards."""
    service = start_service(args, stderr)
    try:
        yield service
    finally:
        stop_group(service.proc, "the service", timeout=60)


def build_package(directory: Path, rows: int = 1500, seed: int = 3):
    """A small trained model package (cut-off PD 0.15) and 60 applicants, in the schema's format."""
    from configs.schema import load_schema
    from models.encoder import fit_encoder_from_tables
    from models.network import ModelSpec, build_model, get_weights
    from models.package import ModelPackage, save_package
    from models.training import LocalTrainConfig, train_local
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution, institution_rng

    schema = load_schema()
    archetype = next(x for x in load_archetypes() if x.id == "card-issuer")
    table, _ = generate_institution(archetype, rows, institution_rng(seed, 0), schema)
    encoder = fit_encoder_from_tables(schema, [table])
    spec = ModelSpec("mlp", encoder.n_outputs, (16,))
    net = build_model(spec, seed=1)
    train_local(net, encoder.transform(table), table[schema.label.name].to_numpy(), LocalTrainConfig(local_epochs=2))
    pkg = ModelPackage(spec=spec, encoder=encoder, weights=get_weights(net), schema=schema, cutoff_pd=0.15)
    save_package(directory, pkg)
    apps, _ = generate_institution(archetype, 60, institution_rng(seed, 1), schema, id_prefix="APP")
    return pkg, apps.drop(columns=[schema.label.name])


def records(frame) -> list[dict]:
    """A table's rows as JSON objects (as an application form would send them)."""
    return json.loads(frame.to_json(orient="records"))
