"""What every proposer shares: the views it reads, the proposals it returns, its protocol.

A proposer turns parents (existing candidates) and a context (the task, the
best candidates so far, recent failures) into new candidate source code. It
never evaluates anything and never touches the store: the campaign loop does
both, and hands the proposer plain frozen values.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence, runtime_checkable

from lossearch.errors import UserError

if TYPE_CHECKING:
    from lossearch.ranking import OperatorStats

RELATIONS = ("mutation", "crossover", "inspiration")
"""How a proposal relates to the candidates in its `parent_ids` (lineage edge kinds)."""

LLM_OUTCOMES = ("ok", "malformed", "rate_limited", "server_error", "timeout", "unreachable", "rejected")
"""`LLMUsage.outcome` values: `ok` (a usable loss), `malformed` (a reply with no usable loss),
`rate_limited` (429), `server_error` (5xx), `timeout`, `unreachable` (no connection),
`rejected` (any other 4xx, e.g. a bad key or an unknown model)."""


class ProposerError(UserError):
    """A proposer cannot go on (no API key, endpoint unreachable, key rejected).

    The message is one line that says what to do; it never holds a secret.
    """


@dataclass(frozen=True)
class ParentView:
    """What a proposer sees of an existing candidate."""

    id: int
    """The candidate's id in the store; proposals name their parents by it."""
    name: str
    source: str
    """The candidate's module source (it defines `loss`)."""
    fitness: float | None = None
    """Its best fitness so far; None while unscored."""
    metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """Headline metrics to show an LLM (reward, kl, pref_acc, ...)."""
    fingerprint_summary: str = ""
    """`FingerprintSummary.describe()`: how the loss pushes the chosen and rejected likelihoods."""
    tier: str | None = None
    """The tier `fitness` is from (`bandit` or `finetune`): the two are on different scales."""
    spread: float | None = None
    """Standard deviation of `fitness` over seeds; None when unknown (one seed)."""
    seeds: int = 0
    """Evaluations `fitness` averages."""


@dataclass(frozen=True)
class FailureView:
    """A recent failure, shown to an LLM so it does not repeat it."""

    name: str
    kind: str
    """One of lossearch.failures.FAILURE_KINDS."""
    message: str


@dataclass(frozen=True)
class IdeaRecord:
    """One earlier child, as the LLM proposer is shown it."""

    name: str
    idea: str
    """Its one-line thought."""
    outcome: str
    """`scored`, `duplicate`, `failed`, `rejected` or `pending`."""
    detail: str = ""
    """For a duplicate, of what; for a failure, its kind and message."""
    tier: str | None = None
    change: float | None = None
    """Its fitness minus its best parent's at `tier`; None without both."""
    spread: float | None = None
    """The noise that change is to be read against (the pooled std at `tier`)."""
    instruction: str | None = None
    """What it was asked to do (lossearch.search.proposers.prompt.INSTRUCTIONS)."""


@dataclass(frozen=True)
class ProposalContext:
    """What the campaign knows beyond the parents: the task, the leaders, the recent failures."""

    task: str
    """Task name, e.g. `sentiment`."""
    task_description: str = ""
    """A sentence or two on what the task's oracle rewards and what it stresses."""
    top: Sequence[ParentView] = ()
    """The best candidates so far, best first."""
    failures: Sequence[FailureView] = ()
    """Recent failures, newest first."""
    operators: Mapping[str, OperatorStats] = field(default_factory=lambda: MappingProxyType({}))
    """The campaign's record of each mutation operator so far (lossearch.ranking.operator_stats)."""
    baseline: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """DPO's fitness at each tier it has one, by tier: what `fitness` is to be read against."""
    noise: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """The typical std of one loss's fitness over seeds, by tier (lossearch.ranking.pooled_spread)."""
    instructions: Mapping[str, OperatorStats] = field(default_factory=lambda: MappingProxyType({}))
    """The campaign's record of each LLM instruction so far (lossearch.ranking.instruction_stats)."""
    history: Sequence[IdeaRecord] = ()
    """This proposer's earlier children in the campaign, newest first."""
    notes: str = ""
    """The latest summary of what has worked and what has not, written by the proposer itself."""


@dataclass(frozen=True)
class Proposal:
    """A new candidate: its source and where it came from."""

    source: str
    """Module source defining `loss`, with a module docstring."""
    name: str
    idea: str
    """One line: what the proposer meant this loss to do differently."""
    parent_ids: tuple[int, ...]
    relation: str
    """`mutation` (one parent), `crossover` (two) or `inspiration` (shown the leaders, no parent)."""
    operator: str
    """The mutation operator, or `llm`."""
    proposer: str
    """The proposer's `name`: `mutation` or `llm`."""
    model: str | None = None
    """The LLM that wrote it, or for the offline proposer its operator (the campaign's record of
    operators reads it back: lossearch.ranking.operator_stats)."""
    instruction: str | None = None
    """What the LLM was asked (lossearch.search.proposers.prompt.INSTRUCTIONS); None for the offline proposer."""
    temperature: float | None = None
    """The temperature of that request; None when none was sent."""

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}; use one of {', '.join(RELATIONS)}")


@dataclass(frozen=True)
class LLMUsage:
    """One request to the LLM endpoint (each retry is one more), successful or not."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    """US dollars, from `LLMConfig.prices`; 0 for a model not in the table."""
    latency: float
    """Seconds from sending the request to its answer or failure."""
    outcome: str
    """One of `LLM_OUTCOMES`."""
    detail: str = ""
    """A short reason for an outcome other than `ok` (never a secret)."""

    def __post_init__(self) -> None:
        if self.outcome not in LLM_OUTCOMES:
            raise ValueError(f"unknown LLM outcome {self.outcome!r}")


@runtime_checkable
class Proposer(Protocol):
    """Writes new candidate losses from parents and context.

    One parent asks for a mutation of it, two for a crossover, none for a new
    loss inspired by `context.top`. The list may be empty when nothing usable
    came out; only `ProposerError` (the proposer cannot go on) is raised.
    """

    name: str

    def propose(self, parents: Sequence[ParentView], context: ProposalContext,
                rng: random.Random) -> list[Proposal]: ...
