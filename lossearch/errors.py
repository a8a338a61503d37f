"""Errors a user can cause and fix: the command line shows their message as one line.

Everything else that escapes a command is a bug of ours and keeps its traceback: a
ValueError raised by our own code is not a user's mistake, so the CLI catches only these
classes (and a candidate's `CandidateError`, which is the loss file's fault).
"""

from __future__ import annotations

from collections.abc import Sequence


class UserError(Exception):
    """Something the user can fix (a flag, a file, a database URL, an endpoint); the message says how."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot work: an unknown choice, a limit out of range, flags that clash."""


def check_choice(value: object, choices: Sequence[str], what: str) -> None:
    """Raise a ConfigError naming the choices when `value` is not one of them."""
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
