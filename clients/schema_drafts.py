"""Writing a drafted schema and its mapping stub as TOML, each choice explained in a comment.

The tables are serialised with tomli-w (so every value is valid TOML however odd the column
names); the comments are lines of ``#`` put before each table. A column name becomes the
schema's feature name as it is, so the source file validates with the schema alone; the
mapping stub lists the file's own names (to rename when a later export changes them), the
columns left out, the codes to translate, and how to read the file.
"""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone

import tomli_w

from clients.schema_inference import SchemaDraft

WIDTH = 100


def _comment(text: str) -> str:
    return "\n".join("# " + line for line in textwrap.wrap(text, WIDTH - 2, break_long_words=False)) + "\n"


def _table(data: dict) -> str:
    return tomli_w.dumps(data)


def render_schema(draft: SchemaDraft) -> str:
    """The schema file (TOML with comments) of ``draft``."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    parts = [
        _comment(f"Schema drafted by `fedcredit schema infer` from {draft.source} ({draft.rows} rows) on {when}. "
                 "Every choice below is a guess from the data, with its reason; review them, write real "
                 "descriptions (reason codes quote them), then validate: docs/schemas.md explains every key."),
        "\n",
        _table({"schema": {"name": draft.name, "version": "1",
                           "description": f"drafted from {draft.source}; describe the population and the outcome"}}),
        "\n", _comment(draft.label.why),
        _table({"label": {"name": draft.label.name, "description": "the outcome (describe it)",
                          "positive": draft.label.positive, "negative": draft.label.negative}}),
    ]
    if draft.id_column:
        parts += ["\n", _comment(draft.id_why),
                  _table({"id": {"name": draft.id_column, "description": "borrower reference"}})]
    for f in draft.features:
        body = {"name": f.name, "kind": f.kind, "description": f"{f.name} (describe it)", **f.keys}
        parts += ["\n", _comment(f"{f.name}: {f.why}."), _table({"feature": [body]})]
    if draft.ignored:
        parts += ["\n", _comment("Left out (listed under [ignore] in the mapping stub): "
                                 + "; ".join(f"'{c}': {why}" for c, why in draft.ignored.items()) + ".")]
    return "".join(parts)


def render_mapping(draft: SchemaDraft, name: str) -> str:
    """The mapping stub (TOML with comments) for the file ``draft`` was made from."""
    parts = [
        _comment(f"Mapping stub for {draft.source} → schema '{draft.name}' v1, drafted by `fedcredit schema infer`. "
                 "The schema uses the file's own column names, so the file validates with the schema alone (read "
                 "as [read] below says, where that table is present); "
                 "this stub is where a later export that renames columns, codes values differently or uses "
                 "other units is mapped back (docs/schemas.md: [columns], [recode.<column>], [scale], [offset], "
                 "[unstandardise.<column>], [read], [ignore])."),
        "\n",
        _table({"mapping": {"name": name, "schema": draft.name, "schema_version": "1",
                            "description": f"{draft.source} as drafted"}}),
    ]
    read = {}
    if draft.delimiter and draft.delimiter != "comma":
        read["delimiter"] = draft.delimiter
    if draft.drop_leading_column:
        read["drop_leading_column"] = True
    if read:
        parts += ["\n", _comment("How the file was read: keep it so every reader (validate, partition, the node) "
                                 "reads it the same way."), _table({"read": read})]
    columns = [draft.label.name] + ([draft.id_column] if draft.id_column else []) + [f.name for f in draft.features]
    parts += ["\n", _comment("The file's own column names (left) → schema columns (right): rename on the left when "
                             "a later file names a column differently."),
              _table({"columns": {c: c for c in columns}})]
    for f in draft.features:
        if f.nan_words:
            parts += ["\n", _comment(f"'{f.name}' writes {', '.join(repr(w) for w in f.nan_words)} for a missing "
                                     f"value: recoded to \"\" (missing), then imputed as the schema says."),
                      _table({"recode": {f.name: {w: "" for w in f.nan_words}}})]
    coded = [f for f in draft.features if f.kind == "categorical" and all(c.lstrip("-").isdigit() or len(c) <= 4
                                                                         for c in f.keys["categories"])]
    for f in coded:
        example = "\n".join(f'# "{c}" = "{c}"' for c in f.keys["categories"][:6])
        parts += ["\n", _comment(f"'{f.name}' holds codes. To give them names, change the schema's categories and "
                                 f"translate each code here, e.g.:"), f"# [recode.{f.name}]\n{example}\n"]
    if draft.ignored:
        parts += ["\n", _comment("Columns that are not features: " + "; ".join(f"'{c}': {w}" for c, w in
                                                                                draft.ignored.items()) + "."),
                  _table({"ignore": {"columns": list(draft.ignored)}})]
    return "".join(parts)
