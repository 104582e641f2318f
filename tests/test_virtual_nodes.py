"""A virtual node gets its table and budget from simulation; a deployed node never loads simulation code.

clients/ asks for a virtual node's policy through :mod:`clients.virtual_nodes`; simulation/
provides it (:mod:`simulation.virtual_nodes`) — in its own runs through its ClientApp's mod, under
``flwr run .`` through the installed entry point. Checked here in fresh processes that import
only what a SuperNode imports (the ClientApp), where nothing was handed over.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO
from tests.tables import synthetic_bank_csv

PROBE = r"""
import json, sys
from clients import client_app  # what a SuperNode or a simulation actor loads: the app and its imports
from clients import node as N
policy = N.policy_from_context(json.loads(sys.argv[1]), json.loads(sys.argv[2]), "probe")
split = N.load_node_data(policy).split
print(json.dumps({"institution": policy.institution_id, "epsilon": policy.max_epsilon, "state": str(policy.state_dir),
                  "fingerprint": split.fingerprint, "rows": split.n_train + len(split.holdout),
                  "loaded": sorted({m.split(".")[0] for m in sys.modules} & {"server", "simulation"})}))
"""


def probe(node_config: dict, run_config: dict) -> dict:
    """The policy and table a fresh node process resolves for ``node_config`` in ``run_config``."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(node_config), json.dumps(run_config)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_deployed_node_loads_neither_simulation_nor_server_code(tmp_path):
    path = synthetic_bank_csv(tmp_path, 800, seed=3)
    got = probe({"data-path": str(path), "state-dir": str(tmp_path / "state"), "max-epsilon": 2.0}, {})
    assert got["loaded"] == []
    assert (got["institution"], got["epsilon"], got["rows"]) == ("bank", 2.0, 800)


def test_a_virtual_node_gets_the_simulations_table_and_budget_through_the_installed_entry_point(tmp_path):
    """What a ClientApp that ``flwr run .`` loads by name does: no mod handed anything over."""
    from clients.dataset import split_institution
    from configs.schema import load_schema
    from simulation.synthetic import consortium_member

    rc = {"synthetic-scale": 0.1, "synthetic-seed": 5, "sim-budgets": "regional-bank-1=0.7",
          "state-root": str(tmp_path / "root")}
    got = probe({"partition-id": 1, "num-partitions": 3}, rc)
    assert got["loaded"] == ["simulation"]
    assert (got["institution"], got["epsilon"], got["state"]) == ("regional-bank-1", 0.7,
                                                                  str(tmp_path / "root" / "regional-bank-1"))
    # institution 1 of the synthetic consortium, as `data synth` writes it, split as every node splits
    name, table, _ = consortium_member(1, 3, 0.1, 5, load_schema())
    expected = split_institution(table, load_schema(), name, 0.2, 0)
    assert (got["rows"], got["fingerprint"]) == (len(table), expected.fingerprint)


def test_a_virtual_node_of_a_data_directory_takes_its_file(tmp_path):
    (tmp_path / "data").mkdir()
    for k, name in enumerate(("b-lender", "a-lender", "c-lender")):
        synthetic_bank_csv(tmp_path / "data", 600 + 100 * k, seed=k, name=f"{name}.csv")
    got = probe({"partition-id": 0, "num-partitions": 3}, {"data-dir": str(tmp_path / "data"), "sim-max-epsilon": 4.0,
                                                         "state-root": str(tmp_path / "root")})
    assert (got["institution"], got["epsilon"], got["rows"]) == ("a-lender", 4.0, 700)  # the files, sorted
