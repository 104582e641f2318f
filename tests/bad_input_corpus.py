"""The bad-input corpus: malformed institution files under tests/data/bad_inputs (made by
tests/data/make_bad_inputs.py) and their manifest — for each file the command that reads it and
what it must say (tests/test_bad_inputs.py), or that it is readable with its delimiter."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "data" / "bad_inputs"
MANIFEST = json.loads((CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))
#: the refused files: one entry each (file, mapping, extra arguments, the problem codes and words it must give)
ENTRIES = MANIFEST["files"]
#: files in unusual dialects that must be accepted
READABLE = MANIFEST["readable"]
