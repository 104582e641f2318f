"""Shared fixtures: the shipped schema and UCI mapping, the bad-input generator, the CLI runner."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def schema():
    """The shipped consumer-credit-v1 schema."""
    from configs.schema import load_schema

    return load_schema(None)


@pytest.fixture(scope="session")
def uci_mapping(schema):
    """The shipped UCI-Taiwan column mapping."""
    from configs.mapping import load_mapping

    return load_mapping("uci-taiwan", schema)


@pytest.fixture(scope="session")
def bad_inputs_generator():
    """The module ``tests/data/make_bad_inputs.py`` (deterministic made-up borrowers, corpus cases)."""
    path = TEST_DATA / "make_bad_inputs.py"
    spec = importlib.util.spec_from_file_location("make_bad_inputs", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def run_fedcredit(*args, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``fedcredit`` command (``python -m fedcredit``) in a subprocess."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "fedcredit", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=env)


@pytest.fixture(scope="session")
def fedcredit_cli():
    """``fedcredit_cli(*args, timeout=..)`` → CompletedProcess of ``python -m fedcredit *args``."""
    return run_fedcredit
