"""What a campaign found: its leaderboard, one candidate, its lineage, its held-out results.

Everything here reads the store through one snapshot (lossearch.ranking.CampaignData) and
returns plain frozen dataclasses with a `to_dict()`; nothing prints. The CLI and the HTML
report render them; every order comes from `lossearch.ranking.rank`.

Claims against DPO. Nothing here decides whether a candidate is better than DPO: a
leaderboard's top is the best of many noisy candidates, so its own scores overstate it. Only
the confirmation stage (lossearch.search.confirm) makes that claim, on fresh seeds with paired
statistics, and stores a verdict per leader; every surface shows each candidate's verdict
(`verdict_of`): `confirmed` or `not confirmed` where the stage judged it, `unconfirmed` where
it never did, `seed` and `baseline` for the seed library and DPO itself. `dpo_delta` (fitness
minus DPO's at the same task and tier, its beta tuned like every candidate's) is a raw
difference, not a claim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lossearch.choices import TASK_NAMES, TIER_ORDER, check_choice
from lossearch.ranking import (
    CampaignData,
    OperatorStats,
    Score,
    load_campaign_data,
    load_campaign_part,
    operator_record,
    operator_stats,
    place_of,
    rank,
    rank_top,
)
from lossearch.store import SANITY_TASK, Campaign, Candidate, Evaluation, NotFoundError, Store
from lossearch.store.locate import DEFAULT_RUNS_DIR, CampaignHandle, CampaignListing, list_campaigns

HEADLINE_METRICS = ("reward", "kl", "pref_acc", "beta")


class NoResults(LookupError):
    """The campaign exists but holds nothing of what was asked for yet; the message says what to run."""


VERDICT_NOTE = ("verdict: confirmed = better than DPO on fresh seeds after Holm correction (lossearch confirm); "
                "unconfirmed = never confirmed")
"""The one line every table of verdicts carries under it."""


def verdict_of(data: CampaignData, candidate: Candidate) -> str:
    """`baseline` (DPO itself), `seed` (the seed library's other losses), the confirmation stage's
    `confirmed` / `not confirmed` where it judged the candidate, else `unconfirmed`."""
    baseline = data.baseline
    if baseline is not None and candidate.id == baseline.id:
        return "baseline"
    if candidate.proposer == "seed":
        return "seed"
    confirmation = data.confirmations.get(candidate.id)
    if confirmation is None:
        return "unconfirmed"
    return "confirmed" if confirmation.confirmed else "not confirmed"


def confirmation_summary(data: CampaignData, candidate_id: int) -> str | None:
    """The one-line summary of the candidate's confirmation record, or None without one."""
    confirmation = data.confirmations.get(candidate_id)
    summary = confirmation.record.get("summary") if confirmation is not None else None
    return str(summary) if summary is not None else None


# -- campaigns -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignOverview:
    """One campaign, where it lives, and its leader by the ranking rule."""

    listing: CampaignListing
    leader: str | None
    """`#ID name` of the first candidate of its leaderboard; None before any has a score."""
    leader_fitness: float | None
    leader_tier: str | None
    confirmed: int
    """Confirmed discoveries: leaders the confirmation stage found better than DPO."""

    def to_dict(self) -> dict[str, Any]:
        summary, campaign = self.listing.summary, self.listing.summary.campaign
        return {"name": campaign.name, "status": campaign.status, "stop_reason": campaign.stop_reason,
                "task": campaign.config.get("task"), "candidates": summary.candidates,
                "evaluated": summary.evaluated, "failed": summary.failed, "by_status": dict(summary.by_status),
                "leader": self.leader, "best_fitness": self.leader_fitness, "best_tier": self.leader_tier,
                "confirmed": self.confirmed,
                "llm_cost": summary.llm_cost, "created_at": campaign.created_at.isoformat(),
                "last_activity": summary.last_activity.isoformat(), "location": self.listing.location}


def campaign_overviews(*, db: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[CampaignOverview]:
    """Every campaign (see lossearch.store.locate), the most recently active first, with its leader."""
    overviews = []
    for listing in list_campaigns(db=db, runs_dir=runs_dir):
        with Store(listing.url) as store:  # the leader through the kept scores: no snapshot of the campaign
            data, ranking, _ = rank_top(store, listing.summary.campaign, 1, count=False)
        ranked = ranking.ranked
        leader = ranked[0] if ranked else None
        confirmed = sum(1 for record in data.confirmations.values() if record.confirmed)
        overviews.append(CampaignOverview(listing, f"#{leader[0].id} {leader[0].name}" if leader else None,
                                          leader[1].fitness if leader else None, leader[1].tier if leader else None,
                                          confirmed))
    return overviews


# -- leaderboard -------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaderboardRow:
    """One candidate on a leaderboard."""

    rank: int | None
    """1 for the best; None for candidates listed only with `include_failed`."""
    id: int
    name: str
    status: str
    tier: str | None
    """The tier the row's score comes from (the candidate's own tier reached when it has no score)."""
    generation: int
    island: int
    proposer: str
    model: str | None
    parents: tuple[int, ...]
    is_seed: bool
    """A loss from the seed library: a baseline, not a discovery."""
    is_baseline: bool
    """The DPO seed itself."""
    fitness: float | None
    fitness_std: float | None
    seeds: int
    reward: float | None
    kl: float | None
    pref_acc: float | None
    beta: float | None
    verdict: str
    """`verdict_of`: confirmed / not confirmed by the confirmation stage, else unconfirmed, seed or baseline."""
    confirmation: str | None
    """The confirmation record's one-line summary; None when the stage never judged the candidate."""
    dpo_delta: float | None
    """fitness - DPO's fitness at the same tier: a raw difference, no claim (that is `verdict`'s)."""
    failure: str | None

    def to_dict(self) -> dict[str, Any]:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class Leaderboard:
    campaign: str
    task: str
    rows: tuple[LeaderboardRow, ...]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [row.to_dict() for row in self.rows]


def leaderboard(handle: CampaignHandle, *, task: str | None = None, top: int | None = None,
                include_failed: bool = False) -> Leaderboard:
    """The campaign's candidates on `task` (its own by default), best first; `NoResults` when none has a score."""
    if task is not None:
        check_choice(task, TASK_NAMES, "task")
    if top is not None and not include_failed:  # the first page: read through the store's kept scores
        page, _ = first_page(handle.store, handle.campaign, max(top, 0), task, count=False)
        if page.rows:
            return page
    data = load_campaign_data(handle.store, handle.campaign)
    board = build_leaderboard(data, task=task, top=top, include_failed=include_failed)
    if not board.rows:
        raise NoResults(empty_message(data, task or data.task))
    return board


def first_page(store: Store, campaign: Campaign, top: int, task: str | None = None, *, count: bool = True
               ) -> tuple[Leaderboard, int | None]:
    """The leaderboard's first `top` rows through the store's kept scores (lossearch.ranking.rank_top), and
    how many candidates rank in all (with `count`, else None)."""
    data, ranking, total = rank_top(store, campaign, top, task, count=count)
    rows = tuple(leaderboard_row(data, candidate, score, place)
                 for place, (candidate, score) in enumerate(ranking.ranked, 1))
    return Leaderboard(campaign.name, task or data.task, rows), total


def build_leaderboard(data: CampaignData, *, task: str | None = None, top: int | None = None,
                      include_failed: bool = False) -> Leaderboard:
    """`leaderboard` on a snapshot (the report and `export --top` use it too); may be empty."""
    task = task or data.task
    ranking = rank(data, task)
    rows = [leaderboard_row(data, candidate, score, place)
            for place, (candidate, score) in enumerate(ranking.ranked, 1)]
    if top is not None:
        rows = rows[:max(top, 0)]
    if include_failed:
        rows += [leaderboard_row(data, candidate, score, None) for candidate, score in ranking.unranked]
    return Leaderboard(data.campaign.name, task, tuple(rows))


def leaderboard_row(data: CampaignData, candidate: Candidate, score: Score | None, rank: int | None) -> LeaderboardRow:
    baseline = data.baseline
    is_baseline = baseline is not None and candidate.id == baseline.id
    dpo = data.baseline_score(score.task, score.tier) if score is not None else None
    metrics = score.metrics if score is not None else {}
    return LeaderboardRow(
        rank=rank, id=candidate.id, name=candidate.name, status=candidate.status,
        tier=score.tier if score is not None else candidate.tier, generation=candidate.generation,
        island=candidate.island, proposer=candidate.proposer, model=candidate.model,
        parents=tuple(edge.parent_id for edge in data.parents.get(candidate.id, ())),
        is_seed=candidate.proposer == "seed", is_baseline=is_baseline,
        fitness=score.fitness if score is not None else None, fitness_std=score.spread if score is not None else None,
        seeds=score.seeds if score is not None else 0,
        **{name: metrics.get(name) for name in HEADLINE_METRICS},
        verdict=verdict_of(data, candidate), confirmation=confirmation_summary(data, candidate.id),
        dpo_delta=None if dpo is None or score is None else score.fitness - dpo.fitness,
        failure=f"{candidate.failure_kind}: {candidate.failure_message}" if candidate.failure_kind else
        (candidate.failure_message if candidate.status == "duplicate" else None),
    )


def empty_message(data: CampaignData, task: str) -> str:
    name = data.campaign.name
    if not data.candidates:
        return f"campaign {name!r} has no candidates yet: run `lossearch run --name {name}`"
    if task != data.task:
        return (f"no candidate of campaign {name!r} has a score on {task!r} yet: "
                f"run `lossearch transfer --run {name} --tasks {task}`")
    return (f"campaign {name!r} has {len(data.candidates)} candidate(s) but none with a fitness yet "
            f"(--include-failed lists them; `lossearch run --name {name}` resumes it)")


# -- one candidate -------------------------------------------------------------------------


@dataclass(frozen=True)
class Relative:
    """A parent or child of a candidate, and the fitness change along the edge (child - parent)."""

    id: int
    name: str
    relation: str
    fitness: float | None
    tier: str | None
    delta: float | None
    delta_tier: str | None
    """The tier both ends have a score at, where `delta` is measured."""


@dataclass(frozen=True)
class EvaluationRow:
    tier: str
    task: str
    seed: int
    fitness: float | None
    fitness_std: float | None
    reward: float | None
    kl: float | None
    pref_acc: float | None
    beta: float | None
    seconds: float
    failure: str | None


@dataclass(frozen=True)
class CandidateReport:
    """Everything `lossearch show` says about one candidate."""

    campaign: str
    task: str
    candidate: Candidate
    rank: int | None
    score: Score | None
    verdict: str
    """`verdict_of`."""
    confirmation: dict[str, Any] | None
    """The confirmation stage's whole record on the candidate (summary, seeds, comparisons); None without one."""
    hyperparameters: dict[str, float]
    evaluations: tuple[EvaluationRow, ...]
    fingerprint_summary: dict[str, Any] | None
    parents: tuple[Relative, ...]
    children: tuple[Relative, ...]
    operator: OperatorStats | None = None
    """For a mutation child, its operator's record in the campaign (lossearch.ranking.operator_stats)."""

    def to_dict(self) -> dict[str, Any]:
        candidate = {key: value for key, value in asdict(self.candidate).items() if key != "fingerprint"}
        candidate["created_at"] = self.candidate.created_at.isoformat()
        candidate["updated_at"] = self.candidate.updated_at.isoformat()
        return {"campaign": self.campaign, "task": self.task, **candidate, "rank": self.rank,
                "is_seed": self.candidate.proposer == "seed",
                "score": None if self.score is None else asdict(self.score) | {"metrics": dict(self.score.metrics)},
                "verdict": self.verdict, "confirmation": self.confirmation, "hyperparameters": self.hyperparameters,
                "evaluations": [asdict(row) for row in self.evaluations],
                "fingerprint_summary": self.fingerprint_summary,
                "parents": [asdict(edge) for edge in self.parents],
                "children": [asdict(edge) for edge in self.children],
                "operator": None if self.operator is None else asdict(self.operator)
                | {"success_rate": self.operator.success_rate}}


def show_candidate(handle: CampaignHandle, ident: str | int) -> CandidateReport:
    """The candidate's code, idea, every evaluation, fingerprint summary, parents and children: a snapshot of
    it and its relatives alone, its place and its operator's record counted in the store (a snapshot of the
    whole campaign took 14 s at 100,000 candidates)."""
    store, campaign = handle.store, handle.campaign
    found = find_candidate(store, campaign, ident)
    relatives = [edge.parent_id for edge in store.parents(found.id)] + [edge.child_id for edge in
                                                                         store.children(found.id)]
    data = load_campaign_part(store, campaign, [found.id, *relatives])
    candidate = data.candidates[found.id]
    operator = operator_record(store, campaign, candidate.model or "") if candidate.proposer == "mutation" else None
    return candidate_report(data, candidate, place=place_of(store, campaign, candidate.id), operator=operator)


def find_candidate(store: Store, campaign: Campaign, ident: str | int) -> Candidate:
    """A candidate of the campaign by id (`12`, `#12`) or by exact name (one indexed read); `NotFoundError`
    otherwise."""
    text = str(ident).strip().lstrip("#")
    if text.isdigit():
        try:
            candidate = store.get_candidate(int(text))
        except NotFoundError:
            candidate = None
        if candidate is not None and candidate.campaign_id == campaign.id:
            return candidate
    named = store.candidates(campaign.id, name=text, fingerprints=False)
    if named:
        return named[0]
    raise NotFoundError(f"no candidate {ident!r} in campaign {campaign.name!r} "
                        "(give an id or a name from `lossearch leaderboard --include-failed`)")


UNSET: Any = object()
"""`candidate_report`'s default for what it reads off the snapshot unless told."""


def candidate_report(data: CampaignData, candidate: Candidate, leaderboard: Leaderboard | None = None, *,
                     place: int | None = UNSET, operator: OperatorStats | None = UNSET) -> CandidateReport:
    """`show_candidate` on a snapshot (`lossearch serve` keeps one); `leaderboard` when it is already built.
    `place` and `operator`, when given, stand for the candidate's rank and its operator's record, which the
    snapshot would otherwise be read for (whole, it holds them; `show_candidate`'s partial one does not)."""
    from lossearch.fingerprint import summarize

    if place is UNSET:
        row = {row.id: row for row in (leaderboard or build_leaderboard(data)).rows}.get(candidate.id)
        place = row.rank if row else None
    if operator is UNSET:
        operator = operator_stats(data).get(candidate.model or "") if candidate.proposer == "mutation" else None
    score = data.score(candidate.id)
    confirmation = data.confirmations.get(candidate.id)
    return CandidateReport(
        campaign=data.campaign.name, task=data.task, candidate=candidate, rank=place,
        score=score, verdict=verdict_of(data, candidate), confirmation=confirmation.record if confirmation else None,
        hyperparameters=_hyperparameters(candidate.source),
        evaluations=tuple(_evaluation_row(e) for e in data.evaluations.get(candidate.id, ()) if e.task != SANITY_TASK),
        fingerprint_summary=summarize(printed).to_dict() if (printed := data.fingerprint(candidate.id)) else None,
        parents=tuple(_relative(data, edge.parent_id, edge.child_id, edge.parent_id, edge.relation)
                      for edge in data.parents.get(candidate.id, ())),
        children=tuple(_relative(data, edge.child_id, edge.child_id, edge.parent_id, edge.relation)
                       for edge in data.children.get(candidate.id, ())),
        operator=operator,
    )


def _hyperparameters(source: str) -> dict[str, float]:
    from lossearch.contract import parse_spec
    from lossearch.failures import CandidateError

    try:
        return dict(parse_spec(source).hyperparameters)
    except CandidateError:
        return {}


def _evaluation_row(evaluation: Evaluation) -> EvaluationRow:
    metrics = evaluation.metrics
    number = lambda key: metrics.get(key) if isinstance(metrics.get(key), (int, float)) else None  # noqa: E731
    failure = metrics.get("failure")
    return EvaluationRow(evaluation.tier, evaluation.task, evaluation.seed, evaluation.fitness, number("fitness_std"),
                         number("reward"), number("kl"), number("pref_acc"), number("beta"), evaluation.seconds,
                         f"{failure.get('kind')}: {failure.get('message')}" if isinstance(failure, dict) else None)


def edge_delta(data: CampaignData, child_id: int, parent_id: int) -> tuple[float | None, str | None]:
    """child - parent fitness on the campaign's task, at the highest tier both have a score at."""
    for tier in sorted(TIER_ORDER, key=TIER_ORDER.__getitem__, reverse=True):
        child, parent = data.score(child_id, tier=tier), data.score(parent_id, tier=tier)
        if child is not None and parent is not None:
            return child.fitness - parent.fitness, tier
    return None, None


def _relative(data: CampaignData, other_id: int, child_id: int, parent_id: int, relation: str) -> Relative:
    other = data.candidates.get(other_id)
    score = data.score(other_id)
    delta, tier = edge_delta(data, child_id, parent_id)
    return Relative(other_id, other.name if other else "?", relation, score.fitness if score else None,
                    score.tier if score else None, delta, tier)


# -- lineage -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineageNode:
    """A candidate in a lineage tree; `relation` and `delta` describe the edge to the node above."""

    id: int
    name: str
    fitness: float | None
    tier: str | None
    generation: int
    is_seed: bool
    status: str
    relation: str | None = None
    delta: float | None = None
    """Fitness change along the edge, child minus parent (see `edge_delta`)."""
    repeated: bool = False
    """Shown in full elsewhere in the tree (lineages are graphs: crossovers share ancestors)."""
    branches: tuple[LineageNode, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        values = {key: value for key, value in asdict(self).items() if key != "branches"}
        return values | {"branches": [branch.to_dict() for branch in self.branches]}


@dataclass(frozen=True)
class Lineage:
    """`root`'s ancestry (branches = parents, recursively) and descendants (branches = children)."""

    campaign: str
    root: LineageNode
    ancestors: tuple[LineageNode, ...]
    descendants: tuple[LineageNode, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "root": self.root.to_dict(),
                "ancestors": [node.to_dict() for node in self.ancestors],
                "descendants": [node.to_dict() for node in self.descendants]}


def lineage(handle: CampaignHandle, ident: str | int) -> Lineage:
    """The candidate's ancestry and descendants, each candidate expanded once: a snapshot of them alone,
    found one generation of edges a read at a time."""
    store, campaign = handle.store, handle.campaign
    candidate = find_candidate(store, campaign, ident)
    related = _relatives(store, candidate.id, upward=True) | _relatives(store, candidate.id, upward=False)
    data = load_campaign_part(store, campaign, related)
    up = _branches(data, candidate.id, upward=True, seen={candidate.id})
    down = _branches(data, candidate.id, upward=False, seen={candidate.id})
    return Lineage(data.campaign.name, _node(data, candidate.id), up, down)


def _relatives(store: Store, candidate_id: int, *, upward: bool) -> set[int]:
    """The candidate and all its ancestors (`upward`) or all its descendants."""
    found, frontier = {candidate_id}, {candidate_id}
    while frontier:
        edges = store.parents_of(frontier) if upward else store.children_of(frontier)
        frontier = {edge.parent_id if upward else edge.child_id for edge in edges} - found
        found |= frontier
    return found


def _branches(data: CampaignData, candidate_id: int, *, upward: bool, seen: set[int]) -> tuple[LineageNode, ...]:
    edges = data.parents.get(candidate_id, ()) if upward else data.children.get(candidate_id, ())
    nodes = []
    for edge in edges:
        other = edge.parent_id if upward else edge.child_id
        delta, _ = edge_delta(data, edge.child_id, edge.parent_id)
        repeated = other in seen
        seen.add(other)
        branches = () if repeated else _branches(data, other, upward=upward, seen=seen)
        nodes.append(_node(data, other, edge.relation, delta, repeated, branches))
    return tuple(nodes)


def _node(data: CampaignData, candidate_id: int, relation: str | None = None, delta: float | None = None,
          repeated: bool = False, branches: tuple[LineageNode, ...] = ()) -> LineageNode:
    candidate = data.candidates[candidate_id]
    score = data.score(candidate_id)
    return LineageNode(candidate_id, candidate.name, score.fitness if score else None, score.tier if score else None,
                       candidate.generation, candidate.proposer == "seed", candidate.status, relation, delta,
                       repeated, branches)


# -- transfer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferCell:
    """One candidate on one held-out task."""

    fitness: float | None
    spread: float | None
    reward: float | None
    kl: float | None
    dpo_delta: float | None
    """fitness - DPO's fitness on this task at this tier (a raw difference, no claim); None for DPO itself
    or without DPO's score there."""
    failure: str | None = None


@dataclass(frozen=True)
class TransferRow:
    id: int
    name: str
    is_seed: bool
    is_baseline: bool
    selected_fitness: float | None
    """Fitness on the task the campaign selected on."""
    cells: dict[str, TransferCell]
    """By held-out task."""


@dataclass(frozen=True)
class TransferTable:
    """The leaders on tasks they were not selected on (DiscoPOP's held-out table)."""

    campaign: str
    selected_on: str
    tier: str
    tasks: tuple[str, ...]
    rows: tuple[TransferRow, ...]
    ran: int = 0
    """Evaluations run (and stored) by this call; the others were stored already."""

    def to_dict(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "selected_on": self.selected_on, "tier": self.tier,
                "tasks": list(self.tasks), "ran": self.ran, "rows": [asdict(row) for row in self.rows]}


def transfer_tier(config: Mapping[str, Any]) -> str:
    """The tier held-out evaluations use: the campaign's top tier (finetune when it ran it)."""
    return "finetune" if config.get("finetune") else "bandit"


def build_transfer_table(data: CampaignData, candidate_ids: Sequence[int], tasks: Sequence[str], tier: str,
                         ran: int = 0) -> TransferTable:
    """The stored held-out scores of `candidate_ids` on `tasks` at `tier`, compared with DPO's."""
    baseline = data.baseline
    rows = []
    for candidate_id in candidate_ids:
        candidate = data.candidates[candidate_id]
        selected = data.score(candidate_id)
        cells = {task: _transfer_cell(data, candidate_id, task, tier) for task in tasks}
        rows.append(TransferRow(candidate_id, candidate.name, candidate.proposer == "seed",
                                baseline is not None and baseline.id == candidate_id,
                                selected.fitness if selected else None, cells))
    return TransferTable(data.campaign.name, data.task, tier, tuple(tasks), tuple(rows), ran)


def _transfer_cell(data: CampaignData, candidate_id: int, task: str, tier: str) -> TransferCell:
    score = data.score(candidate_id, task, tier)
    if score is None:
        failures = [e.metrics["failure"] for e in data.evaluations.get(candidate_id, ())
                    if e.task == task and e.tier == tier and isinstance(e.metrics.get("failure"), dict)]
        failure = f"{failures[0].get('kind')}: {failures[0].get('message')}" if failures else None
        return TransferCell(None, None, None, None, None, failure)
    baseline = data.baseline
    dpo = data.baseline_score(task, tier)
    is_baseline = baseline is not None and baseline.id == candidate_id
    delta = None if dpo is None or is_baseline else score.fitness - dpo.fitness
    return TransferCell(score.fitness, score.spread, score.metrics.get("reward"), score.metrics.get("kl"), delta)


def held_out_results(data: CampaignData) -> TransferTable | None:
    """What earlier `transfer` calls stored (for the report), or None if nothing was."""
    tier = transfer_tier(data.campaign.config)
    tasks = sorted({e.task for evaluations in data.evaluations.values() for e in evaluations
                    if e.tier == tier and e.task not in (data.task, SANITY_TASK)})
    if not tasks:
        return None
    ids = [candidate_id for candidate_id, evaluations in data.evaluations.items()
           if any(e.task in tasks and e.tier == tier for e in evaluations)]
    ranked = {row.id: index for index, row in enumerate(build_leaderboard(data, include_failed=True).rows)}
    ids.sort(key=lambda candidate_id: ranked.get(candidate_id, len(ranked)))
    # the built-in tasks in their order, then a user's data splits (data:STEM) by name
    ordered = [task for task in TASK_NAMES if task in tasks] + sorted(set(tasks) - set(TASK_NAMES))
    return build_transfer_table(data, ids, ordered, tier)
