"""The one exception type for user mistakes.

Everything a user can get wrong — a bad data file, a bad schema or mapping, a missing file, an
exhausted privacy budget — raises :class:`UserError` (or a subclass) with a message that names
what is wrong, where (file, key, column, row numbers) and how to fix it. The ``fedcredit``
command prints the message without a traceback and exits with code 2. Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A schema, mapping or run configuration file is invalid."""
