"""How long-running library calls report how far they are, without printing anything themselves."""

from __future__ import annotations

from typing import Callable

ProgressFn = Callable[[str, float, float], None]
"""progress(description, completed, total); the CLI draws it as a bar."""


def no_progress(description: str, completed: float, total: float) -> None:
    """The default ProgressFn: report nothing."""
