"""The runbooks stay true to the code: every run-config key is documented with its default."""

from __future__ import annotations

import json
import re

from server.settings import DEFAULTS
from tests.conftest import REPO


def _documented_defaults() -> dict[str, str]:
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| ([^|]+) \|", (REPO / "docs" / "operator.md").read_text(), re.M)
    return {key: value.strip().strip("`") for key, value in rows}


def test_every_run_config_key_is_in_the_operator_runbook_with_its_default():
    documented = _documented_defaults()
    missing = [k for k in DEFAULTS if k not in documented]
    assert not missing, f"docs/operator.md lacks run-config keys: {missing}"
    for key, default in DEFAULTS.items():
        shown = documented[key]
        if isinstance(default, bool):
            assert shown == ("true" if default else "false"), key
        elif isinstance(default, str):
            assert shown in (json.dumps(default), default), key
        else:
            assert float(shown) == float(default), key


def test_the_readme_where_to_start_names_real_commands_docs_and_modules():
    """Each persona's row in README's "Where to start": its commands exist, its docs and modules too."""
    from fedcredit.cli import COMMANDS

    text = (REPO / "README.md").read_text()
    table = text[text.index("## Where to start"):text.index("## Quick start")]
    rows = [r for r in table.splitlines() if r.startswith("| **")]
    assert len(rows) == 3, "one row per persona: institution, operator, researcher"
    words = {w for path, _ in COMMANDS for w in path.split()}
    for row in rows:
        _, runs, reads, code = [c.strip() for c in row.strip("|").split(" | ")]
        for command in re.findall(r"`([^`]+)`", runs):
            if command.startswith("flwr "):
                continue
            assert set(re.findall(r"[a-z]+", command)) <= words, (command, row[:40])
        for link in re.findall(r"\]\(([^)]+)\)", reads):
            assert (REPO / link).exists(), link
        for path in re.findall(r"`([a-z_/]+(?:\.py|/))`", code):
            assert (REPO / path).exists(), path
        assert re.findall(r"`[a-z_]+/[a-z_]+\.py`", code), row[:40]
