"""Failure kinds shared by every evaluation tier (DESIGN §3).

A failed candidate gets exactly one kind and a short message that is fit to
show an LLM proposer: a few lines at most, no traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

FAILURE_KINDS = (
    "syntax",  # the source does not parse
    "policy",  # the AST policy or the loss contract refuses it, or the sandbox caught a forbidden act
    "timeout",  # wall-clock or CPU-time limit reached
    "memory",  # memory limit reached
    "nan",  # a loss value or gradient is not finite
    "shape",  # the loss returns the wrong shape or type
    "no_grad",  # the loss does not depend differentiably on the policy
    "exception",  # the loss raised
    "crash",  # the child process died without a result
)

MAX_MESSAGE_CHARS = 400
MAX_MESSAGE_LINES = 4


def shorten(message: str) -> str:
    """Clip a message to a few lines and characters, so a proposer can be shown it."""
    lines = [line.rstrip() for line in str(message).strip().splitlines() if line.strip()]
    text = "\n".join(lines[:MAX_MESSAGE_LINES])
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


@dataclass(frozen=True)
class Failure:
    """Why a candidate failed: one of `FAILURE_KINDS` and a short message."""

    kind: str
    message: str

    def __post_init__(self) -> None:
        if self.kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {self.kind!r}")
        object.__setattr__(self, "message", shorten(self.message))

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


class CandidateError(Exception):
    """Raised by trusted code when a candidate breaks a rule; carries its `Failure`."""

    def __init__(self, kind: str, message: str) -> None:
        self.failure = Failure(kind, message)
        super().__init__(f"{kind}: {self.failure.message}")
