"""The one base of every error a user can cause: a bad config key, a missing file, a wrong cue.

Each module keeps its own error type (`ConfigError`, `GenerateError`, `WeightsError`, ...) and
derives it from `UserError`. The command line and the jobs print a `UserError` as one line and
exit with code 2; the HTTP app answers it with 422. Any other exception is a bug and keeps its
traceback. `UserError` is a `ValueError`, so callers that catch `ValueError` keep working.
"""

from __future__ import annotations

import sys
from typing import Callable


class UserError(ValueError):
    """Bad input; the message names the field (or URL) and what is allowed."""


class StorageError(UserError):
    """A storage URL that cannot be read or written: no credentials, unreachable endpoint, missing or read-only path."""


class MissingObjectError(StorageError, FileNotFoundError):
    """No object at a storage URL (also a FileNotFoundError, for callers that treat absence as normal)."""


def exit_code(run: Callable[[], object]) -> int:
    """0 once `run()` returns; 2 when it raises a `UserError`, printed as one line `error: ...` on
    stderr (the exit of every command and job; any other exception keeps its traceback)."""
    try:
        run()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
