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


def test_every_schema_and_mapping_key_is_in_the_schema_guide():
    from configs.schema import _FEATURE_KEYS

    guide = (REPO / "docs" / "schemas.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", guide, re.M))
    assert set(_FEATURE_KEYS) <= documented, f"docs/schemas.md lacks feature keys: {set(_FEATURE_KEYS) - documented}"
    for table in ("[columns]", "[recode.<column>]", "[scale]", "[offset]", "[unstandardise.<column>]", "[read]",
                  "[ignore] columns"):
        assert f"| `{table}" in guide or f"`{table}`" in guide, table
    for key in ("delimiter", "drop_leading_column", "positive", "negative", "bins", "transform"):
        assert key in guide, key
