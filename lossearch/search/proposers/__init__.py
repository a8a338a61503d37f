"""Proposers: where new candidate losses come from.

`MutationProposer` (the default) edits seed and evolved losses offline;
`LLMProposer` asks an OpenAI-compatible chat endpoint. Both follow the
`Proposer` protocol, so the campaign loop treats them alike. `make_proposer`
builds one from a kind name and its options; the kind `none` (evaluate the
seed library only) needs no proposer and is the loop's business.
"""

from __future__ import annotations

from typing import Any

from lossearch.choices import PROPOSERS
from lossearch.search.proposers.base import (
    LLM_OUTCOMES,
    RELATIONS,
    FailureView,
    LLMUsage,
    ParentView,
    Proposal,
    ProposalContext,
    Proposer,
    ProposerError,
)
from lossearch.search.proposers.llm import LLMConfig, LLMProposer
from lossearch.search.proposers.mutation import OPERATORS, MutationProposer

PROPOSER_KINDS = tuple(kind for kind in PROPOSERS if kind != "none")
"""The kinds that propose something (`none` evaluates the seed library only)."""

__all__ = [
    "FailureView", "LLMConfig", "LLMProposer", "LLMUsage", "LLM_OUTCOMES", "MutationProposer", "OPERATORS",
    "PROPOSER_KINDS", "ParentView", "Proposal", "ProposalContext", "Proposer", "ProposerError", "RELATIONS",
    "make_proposer",
]


def make_proposer(kind: str, **options: Any) -> Proposer:
    """A proposer of `kind` (`mutation` or `llm`) built from keyword options.

    `mutation` takes MutationProposer's arguments (`operators`, `max_attempts`);
    `llm` takes LLMConfig's fields (`base_url`, `models`, `timeout`, ...).
    """
    if kind == "mutation":
        return MutationProposer(**options)
    if kind == "llm":
        return LLMProposer(LLMConfig(**options))
    raise ProposerError(f"unknown proposer {kind!r}: choose one of {', '.join(PROPOSER_KINDS)}")
