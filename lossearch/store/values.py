"""What callers of the store get: frozen value objects, the vocabularies they use, the errors.

Nothing here touches a database; `lossearch.store.store.Store` turns rows into these.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lossearch.errors import UserError

CAMPAIGN_STATUSES = ("running", "stopped", "finished", "failed")
CANDIDATE_STATUSES = ("pending", "evaluating", "evaluated", "rejected", "failed", "duplicate")
UNFINISHED_STATUSES = ("pending", "evaluating")
"""Candidates a resumed campaign still has to evaluate (`evaluating` ones were interrupted)."""
UNRANKED_STATUSES = ("rejected", "failed", "duplicate")
"""Candidates left off a leaderboard unless failures are asked for."""
RELATIONS = ("mutation", "crossover", "inspiration", "seed")
SANITY_TASK = "-"
"""The `task` of sanity evaluations, which depend on no task."""
BASELINE_SEED = "dpo"
"""The seed whose evaluations are every leaderboard's baseline."""
UPDATABLE_CANDIDATE_FIELDS = frozenset({"status", "tier", "fingerprint", "failure_kind", "failure_message", "fitness"})
CAMPAIGN_DB_NAME = "campaign.db"


def fitness_summary(fitnesses: Sequence[float], one_run_spread: float | None) -> tuple[float, float | None]:
    """(mean, spread) of a candidate's fitnesses on one task at one tier: the spread is their standard
    deviation over seeds when there are several, else `one_run_spread`, the spread over training seeds
    that one evaluation reports (its `fitness_std`), else None. The ranking's scores
    (lossearch.ranking.score_of) and the store's kept ones (`scores`) both come from here."""
    spread = statistics.stdev(fitnesses) if len(fitnesses) >= 2 else one_run_spread
    return statistics.fmean(fitnesses), spread


def finite_number(metrics: Mapping[str, Any], name: str) -> float | None:
    """metrics[name] as a float when it is a finite number (not a bool), else None."""
    value = metrics.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class StoreError(UserError):
    """A database operation failed; the message says what and where, on one line."""


class NotFoundError(StoreError):
    """No campaign or candidate has the name or id asked for."""


# -- value objects: what callers get ------------------------------------------------------


@dataclass(frozen=True)
class Campaign:
    """One search campaign and the configuration it was started with."""

    id: int
    name: str
    config: dict[str, Any]
    """The campaign's full configuration, as given to `create_campaign` (a fresh copy)."""
    status: str
    """One of `CAMPAIGN_STATUSES`."""
    stop_reason: str | None
    """Why the campaign stopped or failed, in words; None while it runs."""
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Candidate:
    """One proposed loss: its code, where it came from, and how far it got."""

    id: int
    campaign_id: int
    name: str
    source: str
    code_hash: str
    """`lossearch.contract.source_hash(source)`: equal for sources that differ only in formatting."""
    idea: str
    """The proposer's stated idea behind the loss."""
    proposer: str
    """`mutation`, `llm`, `seed`, ...: what wrote the code."""
    model: str | None
    """The LLM (or mutation operator) that wrote it, when there is one."""
    generation: int
    island: int
    status: str
    """One of `CANDIDATE_STATUSES`."""
    tier: str | None
    """The highest evaluation tier reached."""
    fingerprint: tuple[float, ...] | None
    failure_kind: str | None
    """One of `lossearch.failures.FAILURE_KINDS` when the candidate failed."""
    failure_message: str | None
    fitness: float | None
    """The best known fitness; None until a tier scores it."""
    created_at: datetime
    updated_at: datetime
    instruction: str | None = None
    """What an LLM was asked for this candidate (improve, combine, novel, repair); None otherwise."""
    temperature: float | None = None
    """The sampling temperature of that request."""


@dataclass(frozen=True)
class LineageEdge:
    """`child_id` was made from `parent_id` by `relation` (one of `RELATIONS`)."""

    child_id: int
    parent_id: int
    relation: str


@dataclass(frozen=True)
class Evaluation:
    """One completed evaluation of a candidate at one (tier, task, seed)."""

    id: int
    candidate_id: int
    tier: str
    task: str
    seed: int
    metrics: dict[str, Any]
    fitness: float | None
    seconds: float
    created_at: datetime


@dataclass(frozen=True)
class Confirmation:
    """The confirmation stage's verdict on one leader, with every comparison it rests on."""

    id: int
    campaign_id: int
    candidate_id: int
    confirmed: bool
    """A confirmed discovery: better than DPO on the selection task after correction, and not
    worse than DPO on any held-out task confirmed."""
    record: dict[str, Any]
    """The comparisons, seeds, budget and precision (lossearch.search.confirm writes it)."""
    created_at: datetime


@dataclass(frozen=True)
class Note:
    """What a proposer wrote of the campaign so far (its meta-scratchpad), once per few generations."""

    id: int
    campaign_id: int
    generation: int
    """The generation it was written before."""
    author: str
    """The model that wrote it."""
    text: str
    created_at: datetime


@dataclass(frozen=True)
class LLMCall:
    """One request to an LLM proposer and what it cost."""

    id: int
    campaign_id: int
    candidate_id: int | None
    """The candidate the reply became, when it became one."""
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    """In US dollars, as the proposer priced it."""
    latency: float
    """Seconds from request to reply."""
    outcome: str
    """`ok`, or why the call gave no candidate (`timeout`, `http_error`, `unparsable`, ...)."""
    created_at: datetime


@dataclass(frozen=True)
class LLMUsage:
    """Totals over a campaign's LLM calls."""

    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency: float
    """Seconds spent waiting on replies, summed."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class CampaignSummary:
    """A campaign with its counts, cost and last activity (its leader is lossearch.ranking's to say)."""

    campaign: Campaign
    by_status: dict[str, int]
    """Number of candidates in each status (statuses with none are left out)."""
    llm_cost: float
    last_activity: datetime
    """The latest write of any kind to the campaign."""

    @property
    def candidates(self) -> int:
        return sum(self.by_status.values())

    @property
    def evaluated(self) -> int:
        return self.by_status.get("evaluated", 0)

    @property
    def failed(self) -> int:
        return self.by_status.get("failed", 0) + self.by_status.get("rejected", 0)
