"""The package layering of DESIGN.md, checked on the source: imports point one way.

``server/``, ``clients/``, ``simulation/`` → ``privacy/``, ``models/`` → ``configs/``;
``fedcredit/`` holds the CLI and cross-cutting leaves. Every ``import`` statement counts, also
those inside functions (commands keep heavy imports in ``run``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("clients", "configs", "fedcredit", "models", "privacy", "server", "simulation")

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


def imports_of(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


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
