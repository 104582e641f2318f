"""The bad-input corpus at the node: every malformed file makes the institution's ClientApp refuse
with ``invalid-data`` — it never crashes and releases nothing. The full report (values, row
numbers) goes to the node's own log; the coordinator is told the kinds of problem and the
schema columns only.

The handlers of ``clients/client_app.py`` get a Flower Message and a Context with a
deployment-style node config pointing at the corpus file, as a SuperNode would hand them over.
(The Flower-level run with one invalid institution is ``test_faults.py::
test_simulation_with_failing_straggling_and_invalid_nodes_goes_on``.)
"""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from clients import client_app as CA
from fedcredit import protocol as P
from tests.bad_input_corpus import CORPUS, ENTRIES
from tests.inprocess_runs import _message


def _context(entry: dict, state) -> Context:
    node_config = {"data-path": str(CORPUS / entry["file"]), "state-dir": str(state), "max-epsilon": 3.0,
                   "institution-id": "lender-x"}
    if entry["mapping"]:
        node_config["mapping"] = entry["mapping"]
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def _refusal(reply) -> dict:
    info = P.node_info(reply)
    assert not reply.has_error(), reply.error
    assert not reply.content.array_records, "a refusal releases no arrays"
    return info


def assert_told_without_borrower_details(detail: str) -> None:
    head, tail = "the institution's table failed validation (", "); the node's log has the full report"
    assert detail.startswith(head) and tail in detail, detail
    told = detail[len(head):detail.index(tail)]  # "N problems: code (column); code; …"
    assert "'" not in told and "data row" not in told and "Traceback" not in told, told


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_node_refuses_a_bad_file_with_invalid_data_and_the_problem(entry, tmp_path, capsys):
    cfg = ConfigRecord({"schema-key": "consumer-credit-v1", "run-id": "1", "dp": True, "num-server-rounds": 2,
                        "local-epochs": 1, "batch-size": 64, "target-epsilon": 0.0, "evaluate-every": 1})
    reply = CA.statistics(_message(RecordDict({P.CONFIG: cfg}), P.STATS_MESSAGE), _context(entry, tmp_path / "st"))
    info = _refusal(reply)
    assert info["refused"] == P.REFUSED_DATA, info
    assert info["institution-id"] == "lender-x"
    assert entry["contains"] in capsys.readouterr().err  # the full report, in the node's log
    assert_told_without_borrower_details(info["detail"])
    assert not (tmp_path / "st" / "privacy").exists(), "nothing was accounted for a file that was never read"


def honest_request(schema, **extra) -> tuple[ConfigRecord, dict]:
    """A training/evaluation config and global weights as an honest coordinator sends them
    (the encoder fitted from uniform statistics: no borrower data involved)."""
    import numpy as np

    from models.encoder import fit_encoder_from_histograms, statistics_layout
    from models.network import ModelSpec, build_model, get_weights

    enc = fit_encoder_from_histograms(schema, {k: np.ones(n) for k, n in statistics_layout(schema).items()})
    spec = ModelSpec("mlp", enc.n_outputs, (8,))
    cfg = {"run-id": "1", "server-round": 1, "num-server-rounds": 2, "local-epochs": 1, "batch-size": 64,
           "learning-rate": 0.01, "optimizer": "adam", "proximal-mu": 0.0, "dp": True, "target-epsilon": 0.0,
           "clipping-norm": 1.0, "evaluate-every": 1, "seed": 0, "encoder": enc.to_json(),
           "model-spec": json.dumps(spec.to_dict()), "cutoff-pd": 0.2, **extra}
    return ConfigRecord(cfg), get_weights(build_model(spec))


def test_train_and_evaluate_refuse_a_bad_file_too(tmp_path, capsys, schema):
    entry = next(e for e in ENTRIES if e["file"] == "nan_strings.csv")
    ctx = _context(entry, tmp_path / "st")
    cfg, weights = honest_request(schema)
    for message_type, handler in (("train", CA.train), ("evaluate", CA.evaluate)):
        content = RecordDict({P.ARRAYS: P.to_array_record(weights), P.CONFIG: cfg})
        info = _refusal(handler(_message(content, message_type), ctx))
        assert info["refused"] == P.REFUSED_DATA, (message_type, info)
        assert_told_without_borrower_details(info["detail"])
        assert "non-numeric (age)" in info["detail"], info["detail"]  # the kind of problem and the column
        assert entry["contains"] in capsys.readouterr().err
