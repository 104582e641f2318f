"""README's "Where to start" stays true: each persona's commands, docs and first modules exist."""

from __future__ import annotations

import re

from tests.conftest import REPO



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
