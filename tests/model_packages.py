"""Model packages for the monitoring, backtest and compare tests: trained on synthetic lenders.

:func:`make_package` trains a small network on one synthetic institution and saves a package
whose development population (``reference.json``) is that institution's table — the exact
counterpart of what a federated run exports (the run's summed statistics and pooled score
histograms; exact in simulation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def archetype(archetype_id: str):
    from simulation.archetypes import load_archetypes

    return next(a for a in load_archetypes() if a.id == archetype_id)


def synthetic_table(archetype_id: str, rows: int, seed: int, index: int = 0, id_prefix: str | None = None):
    """A clean synthetic table (with the label) and each row's true PD."""
    from configs.schema import load_schema
    from simulation.synthetic import generate_institution, institution_rng

    return generate_institution(archetype(archetype_id), rows, institution_rng(seed, index), load_schema(),
                                id_prefix=id_prefix)


def make_package(directory: Path, table, *, epochs: int = 3, hidden=(16,), seed: int = 1, cutoff_pd: float = 0.15,
                 reference: bool = True, final_metrics: dict | None = None):
    """Train on ``table`` and save the package in ``directory``; returns the loaded package."""
    from configs.schema import load_schema
    from models.encoder import fit_encoder_from_tables
    from models.network import ModelSpec, build_model, get_weights
    from models.package import ModelPackage, load_package, save_package
    from models.reference import reference_from_table
    from models.training import LocalTrainConfig, train_local

    schema = load_schema()
    y = table[schema.label.name].to_numpy()
    enc = fit_encoder_from_tables(schema, [table])
    spec = ModelSpec("mlp", enc.n_outputs, tuple(hidden))
    net = build_model(spec, seed=seed)
    if epochs:
        train_local(net, enc.transform(table), y, LocalTrainConfig(local_epochs=epochs))
    pkg = ModelPackage(spec=spec, encoder=enc, weights=get_weights(net), schema=schema, cutoff_pd=cutoff_pd,
                       meta={"run_id": f"run-{seed}", "rounds_completed": 3,
                             **({"final_metrics": final_metrics} if final_metrics else {})})
    if reference:
        pkg.reference = reference_from_table(table, schema, pkg.predict_pd(table), y, source="the development sample")
    save_package(directory, pkg)
    return load_package(directory)


@dataclass
class PackagedLender:
    """A package trained on one synthetic lender's development table, and a later book of the same
    lender (new borrowers, same archetype), in one directory for the test's files."""

    directory: Path
    package: object
    development: object
    book: object

    def write(self, name: str, table, *, label: bool = True) -> Path:
        """Write ``table`` as ``directory / name`` (without the label column where ``label`` is False)."""
        drop = () if label else (self.package.schema.label.name,)
        return write_table(table, self.directory / name, drop=drop)


def packaged_lender(directory: Path, archetype_id: str, *, seed: int, book_rows: int, book_prefix: str,
                    development_rows: int = 8000, package_dir: str = "model") -> PackagedLender:
    """Train a package (``directory / package_dir``) on ``development_rows`` rows of the synthetic
    lender ``archetype_id`` (institution 0 of ``seed``) and draw its later book: ``book_rows`` rows of
    institution 1 of the same seed, ids prefixed ``book_prefix``."""
    development, _ = synthetic_table(archetype_id, development_rows, seed=seed)
    package = make_package(directory / package_dir, development)
    book, _ = synthetic_table(archetype_id, book_rows, seed=seed, index=1, id_prefix=book_prefix)
    return PackagedLender(directory, package, development, book)


def write_table(table, path: Path, drop: tuple[str, ...] = ()) -> Path:
    from simulation.synthetic import write_csv

    write_csv(table.drop(columns=list(drop)) if drop else table, path)
    return path


def outcomes_from_pd(table, pd_values, seed: int):
    """``table`` with its label replaced by outcomes drawn with the given PDs (known calibration)."""
    from configs.schema import load_schema

    out = table.copy()
    out[load_schema().label.name] = (np.random.default_rng(seed).random(len(out)) < pd_values).astype(np.int64)
    return out


def cli_in_process(capsys, *args):
    """``fedcredit ARGS`` in this process (the real entry point, without a new interpreter):
    a CompletedProcess-like result with returncode, stdout and stderr."""
    import types

    from fedcredit.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return types.SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)
