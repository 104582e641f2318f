"""What a Python module imports, read from its source (``ast``, nothing is imported): the package
layering checks (tests/test_layers.py) and the check that serving talks to no coordinator
(tests/test_untrusted_coordinator.py) walk it."""

from __future__ import annotations

import ast
from pathlib import Path

#: fedcredit's product packages (the repository's top-level folders of shipped code)
PACKAGES = ("clients", "configs", "fedcredit", "models", "privacy", "server", "simulation")


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
