"""Shared fixtures: the shipped schema and UCI mapping, the bad-input generator, the CLI runner,
one torch thread, a process tag, a pooled synthetic consortium, a real Chromium; the session's
process reaper (process_reaper.py). Helpers that
are not fixtures live beside this file: tables.py (random and synthetic tables), processes.py, serving.py,
inprocess_grid.py and inprocess_runs.py (in-process Flower runs), model_packages.py,
deployment.py (a consortium on loopback), node_messages.py (crafted messages into a node's
ClientApp and the signature of its reply), bad_input_corpus.py, source_imports.py. A test module
never imports another test module (tests/test_layers.py checks it)."""

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


@pytest.fixture
def one_thread():
    """torch on one thread for the test (reproducible float sums; no oversubscription of a shared
    machine); a module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def process_tag():
    """A test's process tag (:func:`tests.processes.tagged`), set for the whole test: every process
    the test starts carries it, so the test can find and stop exactly those."""
    from tests.processes import tagged

    with tagged() as tag:
        yield tag


@pytest.fixture(scope="session")
def synthetic_pool():
    """The rows of one synthetic consortium (scale 0.25, seed 4) in one table. Shared by the
    session: do not change it in place."""
    import pandas as pd

    from simulation.synthetic import generate_consortium

    m = generate_consortium(None, scale=0.25, seed=4)
    return pd.concat([d.table for d in m["_data"]], ignore_index=True)


_REAPER: subprocess.Popen | None = None


def pytest_configure(config):
    """Start the session's process reaper (tests/process_reaper.py) and mark every process the
    session starts from now on with the session's id: if pytest is killed from outside, the
    reaper ends them — also those Flower detaches into sessions of their own."""
    global _REAPER
    import uuid

    from tests.process_reaper import SESSION_VARIABLE

    session_id = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != SESSION_VARIABLE}
    _REAPER = subprocess.Popen([sys.executable, "-m", "tests.process_reaper", session_id], cwd=REPO, env=env,
                               stdin=subprocess.PIPE, start_new_session=True)
    os.environ[SESSION_VARIABLE] = session_id


def pytest_unconfigure(config):
    """A normal end: close the reaper's pipe; it ends anything the session left and exits."""
    from tests.process_reaper import GRACE_S

    if _REAPER is not None:
        _REAPER.stdin.close()
        try:
            _REAPER.wait(timeout=GRACE_S + 10)
        except subprocess.TimeoutExpired:
            _REAPER.kill()


SLOW_TEST_TIMEOUT_S = 900


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (real Flower runtimes and processes) get 900 s unless they set their
    own ``@pytest.mark.timeout``; every other test has the 120 s default of pyproject.toml."""
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))


def find_chromium() -> str | None:
    """The path of a Chromium binary, or None."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """A real Chromium for checking pages. Skips when none is installed — except where
    ``FEDCREDIT_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs Debian's chromium): there a
    missing browser fails the test instead of silently skipping it."""
    path = find_chromium()
    if path is None:
        skip_unless_required("no Chromium installed (Debian: apt-get install -y chromium)", "FEDCREDIT_REQUIRE_BROWSER")
    return path


def skip_unless_required(message: str, variable: str) -> None:
    """A tool a test needs is missing: skip the test with ``message`` — or fail it where the
    environment variable ``variable`` is ``1`` (CI sets it after installing the tool)."""
    if os.environ.get(variable) == "1":
        pytest.fail(f"{message}; {variable}=1 requires it")
    pytest.skip(message)
