"""Reading TOML configuration files with precise, key-naming error messages.

Every configuration file of fedcredit (schemas, mappings, sweep grids, consortium configs) is
read through :func:`read_toml` and its tables are checked with :class:`Table`, so a mistake
always names the file, the dotted key path and, for a misspelt key, the closest valid key.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from configs.errors import ConfigError


def read_toml(path: str | Path, what: str = "configuration") -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error becomes a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; save it as UTF-8 TOML") from None


def parse_toml_value(text: str) -> Any:
    """One TOML value written as text (``3``, ``0.5``, ``true``, ``"x"``, ``[1, 2]``); text that is
    not a TOML value is returned as it is (a bare word such as ``fedprox``), as Flower's
    ``--run-config`` does."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def resolve_config_file(name_or_path: str | Path, directory: Path, what: str) -> Path:
    """A config file given by path, or by the name of a file shipped in ``directory``.

    A bare name (``consumer-credit-v1`` or ``consumer-credit-v1.toml``) that is not a file here
    resolves to ``directory/<name>.toml``; anything else must exist as given.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    stem = p.name[:-5] if p.name.endswith(".toml") else p.name
    shipped = directory / f"{stem}.toml"
    if shipped.is_file() and p.parent == Path("."):
        return shipped
    known = ", ".join(sorted(x.stem for x in directory.glob("*.toml")))
    raise ConfigError(f"{what} file not found: {name_or_path} (shipped {what}s: {known}; or give a path)")


def _suggest(key: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass
class Table:
    """A TOML table being checked: its data, the file it came from and its dotted path.

    Methods fetch typed values and raise :class:`ConfigError` naming ``file: path.key``.
    """

    data: dict[str, Any]
    file: Path
    path: str

    def where(self, key: str | None = None) -> str:
        dotted = self.path if key is None else (f"{self.path}.{key}" if self.path else key)
        return f"{self.file}: {dotted}" if dotted else str(self.file)

    def fail(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {message}")

    def reject_unknown(self, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in self.data:
            if key not in allowed:
                raise self.fail(
                    key,
                    f"unknown key{_suggest(key, allowed)}; allowed keys: {', '.join(allowed)}",
                )

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., describe: str = "") -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(key, f"required key is missing{describe and ' (' + describe + ')'}")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; never accept it where a number is asked for.
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"expected {_kind_names(kinds)}, got a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            return float(value) if kinds == (float,) else value
        if not isinstance(value, kinds):
            raise self.fail(key, f"expected {_kind_names(kinds)}, got {type(value).__name__} {value!r}")
        return value

    def choice(self, key: str, options: Iterable[str], default: Any = ...) -> str:
        options = list(options)
        value = self.get(key, str, default)
        if value not in options:
            raise self.fail(key, f"'{value}' is not one of: {', '.join(options)}{_suggest(value, options)}")
        return value

    def sub(self, key: str, required: bool = True) -> "Table | None":
        if key not in self.data:
            if required:
                raise self.fail(key, "required table is missing")
            return None
        value = self.data[key]
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {type(value).__name__}")
        return Table(value, self.file, f"{self.path}.{key}" if self.path else key)

    def array_of_tables(self, key: str) -> list["Table"]:
        value = self.data.get(key)
        if value is None:
            raise self.fail(key, f"required array of tables [[{key}]] is missing")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, f"expected an array of tables ([[{key}]] entries)")
        prefix = f"{self.path}." if self.path else ""
        return [Table(v, self.file, f"{prefix}{key}[{i}]") for i, v in enumerate(value)]


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
