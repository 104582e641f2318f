"""The package layering of DESIGN.md, checked on the source: imports point one way.

``server/``, ``clients/``, ``simulation/`` → ``privacy/``, ``models/`` → ``configs/``;
``fedcredit/`` holds the CLI and cross-cutting leaves. Every ``import`` statement counts, also
those inside functions (commands keep heavy imports in ``run``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO
from tests.source_imports import PACKAGES, imports_of

#: what each package must never import
FORBIDDEN = {
    "configs": {"clients", "models", "privacy", "server", "simulation"},
    "models": {"clients", "privacy", "server", "simulation"},
    "privacy": {"clients", "server", "simulation"},
    "fedcredit": {"clients", "models", "privacy", "server", "simulation"},
    "clients": {"server", "simulation"},  # a deployed node loads neither the coordinator nor simulation
}

#: imports against the layering, allowed by name (none left: a virtual node's table and budget come
#: from simulation through clients.virtual_nodes); listed so that no new one can appear unnoticed
KNOWN: dict[str, set[str]] = {}

#: the only module that may import the dispatcher (it loads every command module)
CLI_IMPORTERS = {"fedcredit/__main__.py"}


def product_modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield package, path.relative_to(REPO).as_posix(), imports_of(path)


def test_the_imports_point_one_way():
    wrong = []
    for package, rel, names in product_modules():
        reached = {n.split(".")[0] for n in names} & FORBIDDEN.get(package, set())
        reached -= KNOWN.get(rel, set())
        wrong += [f"{rel} imports {top} ({package}/ must not)" for top in sorted(reached)]
    assert wrong == []


def test_nothing_below_the_dispatcher_imports_it():
    """Command modules take their shared helpers from fedcredit.arguments / json_values / outcome."""
    wrong = [rel for _, rel, names in product_modules()
             if ("fedcredit.cli" in names or "fedcredit.cli.main" in names) and rel not in CLI_IMPORTERS]
    assert wrong == [], f"import fedcredit.arguments (number), fedcredit.json_values (print_json) instead: {wrong}"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def run():\n    from fedcredit.cli import number\n    import server.report\n")
    assert {"fedcredit.cli", "fedcredit.cli.number", "server.report"} <= imports_of(module)


# ------------------------------------------------------------------------------ the test suite
def imported_test_modules(path: Path) -> set[str]:
    """The test modules (``test_*``, pytest's own naming) that ``path`` imports: ``tests.test_x``,
    ``test_x``, ``from tests import test_x``, ``from .test_x import …``, at any depth of its code."""
    names = set(imports_of(path))
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            names |= {node.module or ""} | {f"{node.module or ''}.{a.name}".lstrip(".") for a in node.names}
    found = set()
    for name in names:
        parts = name.split(".")
        parts = parts[1:] if parts[0] == "tests" else parts
        if parts and parts[0].startswith("test_"):
            found.add(parts[0])
    return found


def test_no_test_module_imports_another():
    """What test modules share lives in helper modules beside them (tests/deployment.py,
    tests/node_messages.py, tests/source_imports.py, …): a test module imported by another ties the
    two together and hands its fixtures and tests to the importer. The helper modules define no
    ``test_*`` function or ``Test*`` class, so importing one collects nothing twice."""
    files = sorted((REPO / "tests").rglob("*.py"))
    wrong = {p.relative_to(REPO).as_posix(): sorted(found) for p in files if (found := imported_test_modules(p))}
    assert wrong == {}, f"move the shared helpers into a helper module under tests/: {wrong}"
    helpers = [p for p in files if p.parent.name == "tests" and not p.name.startswith("test_")]
    collectable = {p.name: [n.name for n in ast.parse(p.read_text(encoding="utf-8")).body
                            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name.startswith(("test", "Test"))]
                   for p in helpers}
    assert {k: v for k, v in collectable.items() if v} == {}


def test_the_check_sees_a_test_module_imported_in_any_form(tmp_path):
    module = tmp_path / "test_m.py"
    module.write_text("from tests.test_faults import _kinds\nimport test_deploy\n"
                      "def f():\n    from tests import test_ledger\n    from .test_monitor import _psi\n"
                      "    from . import test_serve\n    from tests.deployment import free_port\n")
    assert imported_test_modules(module) == {"test_faults", "test_deploy", "test_ledger", "test_monitor", "test_serve"}
