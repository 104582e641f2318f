"""The node's table, loaded once per process: validated, split into training rows and holdout, encoded.

Deployment nodes load their file with the same checks as ``fedcredit data validate``
(:mod:`clients.validation`); a virtual node of a synthetic simulation gets its table from the
callable its policy carries (:attr:`clients.node_policy.NodePolicy.draw_table`, put there by the
simulation: :mod:`clients.virtual_nodes`). The encoded matrices are cached per encoder; every
non-finite value an encoder could produce is replaced the same way for every row
(:func:`encode`), so a coordinator's encoder cannot mark one borrower's row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from clients.dataset import InstitutionSplit, labels, split_institution
from clients.node_policy import NodePolicy
from configs.schema import Schema, load_schema
from models.encoder import FeatureEncoder


def encode(encoder: FeatureEncoder, table) -> np.ndarray:
    """The encoded matrix with every non-finite entry set to 0 (a fixed, per-entry rule).

    A validated encoder (:mod:`clients.request_checks`) produces values in [0, 1] only; this is
    the second line of defence, so that no row can turn into NaN whatever the encoder.
    """
    x = encoder.transform(table)
    if not np.all(np.isfinite(x)):
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return x


_DATA_CACHE: dict[tuple, "NodeData"] = {}


@dataclass
class NodeData:
    schema: Schema
    split: InstitutionSplit
    encoded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # encoder hash → x/y train, x/y holdout

    def matrices(self, encoder: FeatureEncoder):
        key = hashlib.sha256(encoder.to_json().encode()).hexdigest()
        if key not in self.encoded:
            s = self.split
            self.encoded.clear()  # one encoder per run; keep memory flat
            self.encoded[key] = (encode(encoder, s.train), labels(s.train, self.schema),
                                 encode(encoder, s.holdout), labels(s.holdout, self.schema))
        return self.encoded[key]


def clear_data_cache() -> None:
    """Forget every table this process loaded (benchmarks: each repetition starts cold)."""
    _DATA_CACHE.clear()


def load_node_data(policy: NodePolicy) -> NodeData:
    """Load, validate and split the node's table (cached per process)."""
    key = (policy.source, policy.draw_table, policy.mapping, policy.schema, policy.split_seed,
           policy.holdout_fraction, policy.min_rows, policy.min_positives)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    schema = load_schema(policy.schema)
    if policy.draw_table is not None:
        table = policy.draw_table(schema)
    else:
        from clients.validation import load_institution_table

        table = load_institution_table(policy.source, schema, policy.mapping, min_rows=policy.min_rows,
                                       min_positives=policy.min_positives).table
    split = split_institution(table, schema, policy.institution_id, policy.holdout_fraction, policy.split_seed)
    data = NodeData(schema=schema, split=split, encoded={})
    _DATA_CACHE[key] = data
    return data

