"""What a campaign found: which campaign, its leaderboard, one candidate, its lineage, transfer.

Everything here reads the store (and `transfer` writes evaluations to it) and
returns plain frozen dataclasses with a `to_dict()`; nothing prints. The CLI
and the HTML report render them.

Finding a campaign. `--db URL` names a database; `--run NAME` the campaign
NAME, by default in `runs/NAME/campaign.db`. With neither, every
`runs/*/campaign.db` under the working directory is read and the campaign with
the most recent activity (any candidate, evaluation or LLM call written) is
the one used.

Scores. A candidate's score on a task is the mean fitness of its evaluations
on that task at the highest tier that has any (finetune above bandit), with
their spread: the standard deviation over seeds when there are several
evaluations, else the spread over training seeds that one finetune evaluation
reports (`fitness_std`), else unknown. Leaderboards rank by tier reached, then
fitness, as the campaign ranks parents: a bandit fitness and a finetune
fitness are on different scales.

Beating DPO. The baseline is the seed `dpo` scored on the same task at the same
tier, its beta tuned like every candidate's (the bandit grid, or Optuna in the
finetune tier). A candidate beats it when its fitness minus its spread exceeds
DPO's fitness plus DPO's spread (`BEATS_RULE`): the two one-standard-deviation
intervals do not overlap. An unknown spread counts as zero; the bandit tier is
exact and deterministic for a given seed, so there a single evaluation has no
seed noise to allow for.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lossearch.store import (BASELINE_SEED, CAMPAIGN_DB_NAME, SANITY_TASK, TIER_ORDER, UNRANKED_STATUSES, Campaign,
                             CampaignSummary, Candidate, Evaluation, LineageEdge, NotFoundError, Store)
TASK_NAMES = ("sentiment", "sort", "length", "noisy")
DEFAULT_RUNS_DIR = Path("runs")
BEATS_RULE = "fitness - spread > DPO fitness + DPO spread (same task and tier; an unknown spread counts as 0)"
HEADLINE_METRICS = ("reward", "kl", "pref_acc", "beta")

ProgressFn = Callable[[str, float, float], None]


class NoResults(LookupError):
    """The campaign exists but holds nothing of what was asked for yet; the message says what to run."""


# -- finding campaigns -------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignListing:
    """One campaign and where it lives."""

    summary: CampaignSummary
    location: str
    """The SQLite file (`runs/NAME/campaign.db`) or the database URL, password hidden."""

    def to_dict(self) -> dict[str, Any]:
        summary, campaign = self.summary, self.summary.campaign
        return {"name": campaign.name, "status": campaign.status, "stop_reason": campaign.stop_reason,
                "task": campaign.config.get("task"), "candidates": summary.candidates,
                "evaluated": summary.evaluated, "failed": summary.failed, "by_status": dict(summary.by_status),
                "best_fitness": summary.best_fitness, "llm_cost": summary.llm_cost,
                "created_at": campaign.created_at.isoformat(), "last_activity": summary.last_activity.isoformat(),
                "location": self.location}


@dataclass(frozen=True)
class CampaignHandle:
    """An open store and the campaign chosen in it."""

    store: Store
    campaign: Campaign
    location: str

    @property
    def task(self) -> str:
        """The task the campaign selects on."""
        return str(self.campaign.config.get("task") or "sentiment")


def campaign_databases(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[Path]:
    """Every `runs_dir/*/campaign.db`, sorted by path."""
    return sorted(path for path in Path(runs_dir).glob(f"*/{CAMPAIGN_DB_NAME}") if path.is_file())


def list_campaigns(*, db: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[CampaignListing]:
    """Every campaign in `db`, or in every `runs_dir/*/campaign.db`; the most recently active first."""
    listings: list[CampaignListing] = []
    sources = [(db, str(db))] if db else [(f"sqlite:///{path.resolve()}", str(path))
                                           for path in campaign_databases(runs_dir)]
    for url, location in sources:
        with Store(url) as store:
            location = str(store) if db else location
            listings += [CampaignListing(summary, location) for summary in store.list_campaigns()]
    return sorted(listings, key=lambda listing: listing.summary.last_activity, reverse=True)


@contextmanager
def open_campaign(run: str | None = None, db: str | None = None,
                  runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Iterator[CampaignHandle]:
    """The campaign `run` (in `db`, or in runs_dir/RUN/campaign.db), else the most recently active one.

    Raises `NotFoundError` (one line) when there is no such campaign or none at all.
    """
    store, location = _open_store(run, db, runs_dir)
    try:
        if run is not None:
            campaign = store.find_campaign(run)
            if campaign is None:
                raise NotFoundError(f"no campaign named {run!r} in {location} (`lossearch campaigns` lists them)")
        else:
            campaign = _most_recent(store, location)
        yield CampaignHandle(store, campaign, location)
    finally:
        store.close()


def _open_store(run: str | None, db: str | None, runs_dir: str | Path) -> tuple[Store, str]:
    if db:
        store = Store(db)
        return store, str(store)
    if run is not None:
        path = Path(runs_dir) / run / CAMPAIGN_DB_NAME
        if not path.is_file():
            raise NotFoundError(f"no campaign named {run!r}: {path} does not exist (`lossearch campaigns` lists them)")
        return Store(f"sqlite:///{path.resolve()}"), str(path)
    listings = list_campaigns(runs_dir=runs_dir)
    if not listings:
        raise NotFoundError(f"no campaign found: no {Path(runs_dir) / '*' / CAMPAIGN_DB_NAME} here; start one with "
                            "`lossearch run --name NAME`, or pass --run NAME or --db URL")
    location = listings[0].location
    return Store(f"sqlite:///{Path(location).resolve()}"), location


def _most_recent(store: Store, location: str) -> Campaign:
    summaries = store.list_campaigns()
    if not summaries:
        raise NotFoundError(f"no campaign in {location}; start one with `lossearch run --name NAME`")
    return max(summaries, key=lambda summary: summary.last_activity).campaign


# -- one read of everything a campaign holds -----------------------------------------------


@dataclass(frozen=True)
class Score:
    """A candidate's fitness on one task at one tier."""

    task: str
    tier: str
    fitness: float
    spread: float | None
    """Standard deviation over seeds (see the module docstring); None when unknown."""
    seeds: int
    """Evaluations averaged."""
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Mean of each numeric metric over those evaluations."""

    @property
    def low(self) -> float:
        return self.fitness - (self.spread or 0.0)

    @property
    def high(self) -> float:
        return self.fitness + (self.spread or 0.0)


def beats(score: Score, baseline: Score) -> bool:
    """`BEATS_RULE`: the one-standard-deviation intervals do not overlap, `score` above."""
    return score.low > baseline.high


@dataclass(frozen=True)
class CampaignData:
    """A snapshot of one campaign: candidates, lineage and evaluations, indexed."""

    campaign: Campaign
    candidates: dict[int, Candidate]
    parents: dict[int, list[LineageEdge]]
    children: dict[int, list[LineageEdge]]
    evaluations: dict[int, list[Evaluation]]

    @property
    def task(self) -> str:
        return str(self.campaign.config.get("task") or "sentiment")

    @property
    def baseline(self) -> Candidate | None:
        """The DPO seed every candidate is compared with."""
        return next((c for c in self.candidates.values() if c.proposer == "seed" and c.name == BASELINE_SEED), None)

    def score(self, candidate_id: int, task: str | None = None, tier: str | None = None) -> Score | None:
        """Mean fitness on `task` (the campaign's by default) at `tier` (the highest with any), or None."""
        task = task or self.task
        scored = [e for e in self.evaluations.get(candidate_id, ()) if e.task == task and e.fitness is not None]
        if tier is None and scored:
            tier = max((e.tier for e in scored), key=lambda name: TIER_ORDER.get(name, -1))
        counted = [e for e in scored if e.tier == tier]
        if not counted:
            return None
        fitnesses = [e.fitness for e in counted]
        metrics = _mean_metrics(counted)
        if len(fitnesses) >= 2:
            spread = statistics.stdev(fitnesses)
        else:
            spread = metrics.get("fitness_std")
        return Score(task, tier, statistics.fmean(fitnesses), spread, len(counted), metrics)

    def baseline_score(self, task: str, tier: str) -> Score | None:
        baseline = self.baseline
        return None if baseline is None else self.score(baseline.id, task, tier)

    def is_ranked(self, candidate: Candidate, score: Score | None) -> bool:
        return score is not None and candidate.status not in UNRANKED_STATUSES


def load_campaign_data(store: Store, campaign: Campaign) -> CampaignData:
    """Three reads: the campaign's candidates, lineage edges and evaluations."""
    candidates = {candidate.id: candidate for candidate in store.candidates(campaign.id)}
    parents: dict[int, list[LineageEdge]] = defaultdict(list)
    children: dict[int, list[LineageEdge]] = defaultdict(list)
    for edge in store.lineage(campaign.id):
        parents[edge.child_id].append(edge)
        children[edge.parent_id].append(edge)
    evaluations: dict[int, list[Evaluation]] = defaultdict(list)
    for evaluation in store.evaluations(campaign_id=campaign.id):
        evaluations[evaluation.candidate_id].append(evaluation)
    return CampaignData(campaign, candidates, dict(parents), dict(children), dict(evaluations))


def _mean_metrics(evaluations: Sequence[Evaluation]) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for evaluation in evaluations:
        for key, value in evaluation.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values[key].append(float(value))
    return {key: statistics.fmean(numbers) for key, numbers in values.items()}


def check_task(task: str | None) -> None:
    if task is not None and task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}")


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
    beats_dpo: bool | None
    """`BEATS_RULE` against DPO on the same task and tier; None for DPO itself or without a DPO score."""
    dpo_delta: float | None
    """fitness - DPO's fitness at the same tier."""
    failure: str | None

    def to_dict(self) -> dict[str, Any]:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class Leaderboard:
    campaign: str
    task: str
    rows: tuple[LeaderboardRow, ...]
    rule: str = BEATS_RULE

    def to_dicts(self) -> list[dict[str, Any]]:
        return [row.to_dict() for row in self.rows]


def leaderboard(handle: CampaignHandle, *, task: str | None = None, top: int | None = None,
                include_failed: bool = False) -> Leaderboard:
    """The campaign's candidates on `task` (its own by default), best first; `NoResults` when none has a score."""
    check_task(task)
    data = load_campaign_data(handle.store, handle.campaign)
    board = build_leaderboard(data, task=task, top=top, include_failed=include_failed)
    if not board.rows:
        raise NoResults(_empty_message(data, task or data.task))
    return board


def build_leaderboard(data: CampaignData, *, task: str | None = None, top: int | None = None,
                      include_failed: bool = False) -> Leaderboard:
    """`leaderboard` on a snapshot (the report uses it too); may be empty."""
    task = task or data.task
    scored = [(candidate, data.score(candidate.id, task)) for candidate in data.candidates.values()]
    ranked = sorted(((c, s) for c, s in scored if data.is_ranked(c, s)),
                    key=lambda pair: (-TIER_ORDER.get(pair[1].tier, -1), -pair[1].fitness, pair[0].id))
    rows = [leaderboard_row(data, candidate, score, rank) for rank, (candidate, score) in enumerate(ranked, 1)]
    if top is not None:
        rows = rows[:max(top, 0)]
    if include_failed:
        rows += [leaderboard_row(data, c, s, None) for c, s in scored if not data.is_ranked(c, s)]
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
        beats_dpo=None if is_baseline or dpo is None or score is None else beats(score, dpo),
        dpo_delta=None if dpo is None or score is None else score.fitness - dpo.fitness,
        failure=f"{candidate.failure_kind}: {candidate.failure_message}" if candidate.failure_kind else
        (candidate.failure_message if candidate.status == "duplicate" else None),
    )


def _empty_message(data: CampaignData, task: str) -> str:
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
    beats_dpo: bool | None
    hyperparameters: dict[str, float]
    evaluations: tuple[EvaluationRow, ...]
    fingerprint_summary: dict[str, Any] | None
    parents: tuple[Relative, ...]
    children: tuple[Relative, ...]

    def to_dict(self) -> dict[str, Any]:
        candidate = {key: value for key, value in asdict(self.candidate).items() if key != "fingerprint"}
        candidate["created_at"] = self.candidate.created_at.isoformat()
        candidate["updated_at"] = self.candidate.updated_at.isoformat()
        return {"campaign": self.campaign, "task": self.task, **candidate, "rank": self.rank,
                "is_seed": self.candidate.proposer == "seed",
                "score": None if self.score is None else asdict(self.score) | {"metrics": dict(self.score.metrics)},
                "beats_dpo": self.beats_dpo, "hyperparameters": self.hyperparameters,
                "evaluations": [asdict(row) for row in self.evaluations],
                "fingerprint_summary": self.fingerprint_summary,
                "parents": [asdict(edge) for edge in self.parents], "children": [asdict(edge) for edge in self.children]}


def resolve_candidate(data: CampaignData, ident: str | int) -> Candidate:
    """A candidate of the campaign by id (`12`, `#12`) or by exact name; `NotFoundError` otherwise."""
    text = str(ident).strip().lstrip("#")
    if text.isdigit() and int(text) in data.candidates:
        return data.candidates[int(text)]
    named = [candidate for candidate in data.candidates.values() if candidate.name == text]
    if named:
        return named[0]
    raise NotFoundError(f"no candidate {ident!r} in campaign {data.campaign.name!r} "
                        "(give an id or a name from `lossearch leaderboard --include-failed`)")


def show_candidate(handle: CampaignHandle, ident: str | int) -> CandidateReport:
    """The candidate's code, idea, every evaluation, fingerprint summary, parents and children."""
    from lossearch.fingerprint import summarize

    data = load_campaign_data(handle.store, handle.campaign)
    candidate = resolve_candidate(data, ident)
    board = {row.id: row for row in build_leaderboard(data).rows}
    score = data.score(candidate.id)
    row = board.get(candidate.id)
    return CandidateReport(
        campaign=data.campaign.name, task=data.task, candidate=candidate, rank=row.rank if row else None,
        score=score, beats_dpo=row.beats_dpo if row else None, hyperparameters=_hyperparameters(candidate.source),
        evaluations=tuple(_evaluation_row(e) for e in data.evaluations.get(candidate.id, ()) if e.task != SANITY_TASK),
        fingerprint_summary=summarize(candidate.fingerprint).to_dict() if candidate.fingerprint else None,
        parents=tuple(_relative(data, edge.parent_id, edge.child_id, edge.parent_id, edge.relation)
                      for edge in data.parents.get(candidate.id, ())),
        children=tuple(_relative(data, edge.child_id, edge.child_id, edge.parent_id, edge.relation)
                       for edge in data.children.get(candidate.id, ())),
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
    for tier in sorted(TIER_ORDER, key=TIER_ORDER.get, reverse=True):
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
    """The candidate's ancestry and descendants, each candidate expanded once."""
    data = load_campaign_data(handle.store, handle.campaign)
    candidate = resolve_candidate(data, ident)
    up = _branches(data, candidate.id, upward=True, seen={candidate.id})
    down = _branches(data, candidate.id, upward=False, seen={candidate.id})
    return Lineage(data.campaign.name, _node(data, candidate.id), up, down)


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
    beats_dpo: bool | None
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

    @property
    def wins(self) -> int:
        """Held-out tasks where it beats DPO."""
        return sum(1 for cell in self.cells.values() if cell.beats_dpo)


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
    rule: str = BEATS_RULE

    def to_dict(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "selected_on": self.selected_on, "tier": self.tier,
                "tasks": list(self.tasks), "ran": self.ran, "rule": self.rule,
                "rows": [asdict(row) | {"wins": row.wins} for row in self.rows]}


def transfer_tier(config: Mapping[str, Any]) -> str:
    """The tier held-out evaluations use: the campaign's top tier (finetune when it ran it and it exists)."""
    from lossearch import evaluate

    return "finetune" if config.get("finetune") and hasattr(evaluate, "finetune_tier") else "bandit"


def evaluate_on_task(sandbox, spec, task: str, tier: str, config: Mapping[str, Any], storage: str | None) -> dict:
    """The one place a held-out evaluation is run: `tier`'s metrics of `spec` on `task` (raises CandidateError)."""
    from lossearch import evaluate

    seed = int(config.get("seed") or 0)
    if tier == "finetune":
        from lossearch.finetune import FinetuneOptions

        options = FinetuneOptions(budget=str(config.get("budget") or "quick"), storage=storage)
        return evaluate.finetune_tier(sandbox, spec, task, seed, options)
    return evaluate.bandit_tier(sandbox, spec, task, seed)


def transfer(handle: CampaignHandle, *, tasks: Sequence[str] | None = None, top: int = 3,
             progress: ProgressFn | None = None, sandbox=None) -> TransferTable:
    """Evaluate the top `top` of the leaderboard, and DPO, on held-out `tasks`; store and tabulate the results.

    Evaluations already stored are reused, so a second call runs nothing new.
    """
    data = load_campaign_data(handle.store, handle.campaign)
    tasks = _held_out_tasks(data.task, tasks)
    leaders = _leaders(data, top)
    tier = transfer_tier(data.campaign.config)
    jobs = [(candidate, task) for candidate in leaders for task in tasks
            if handle.store.find_evaluation(candidate.id, tier=tier, task=task, seed=_seed(data)) is None]
    if jobs:
        _run_jobs(handle.store, data, jobs, tier, progress or (lambda *args: None), sandbox)
        data = load_campaign_data(handle.store, handle.campaign)
    return build_transfer_table(data, [candidate.id for candidate in leaders], tasks, tier, ran=len(jobs))


def _held_out_tasks(selected_on: str, tasks: Sequence[str] | None) -> tuple[str, ...]:
    if tasks is None:
        return tuple(task for task in TASK_NAMES if task != selected_on)
    for task in tasks:
        check_task(task)
        if task == selected_on:
            raise ValueError(f"the campaign selects on {task!r}; transfer evaluates the other tasks")
    if not tasks:
        raise ValueError("give at least one task")
    return tuple(dict.fromkeys(tasks))


def _leaders(data: CampaignData, top: int) -> list[Candidate]:
    if top < 1:
        raise ValueError("--top must be at least 1")
    rows = build_leaderboard(data, top=top).rows
    if not rows:
        raise NoResults(_empty_message(data, data.task))
    leaders = [data.candidates[row.id] for row in rows]
    baseline = data.baseline
    if baseline is not None and baseline not in leaders and data.score(baseline.id) is not None:
        leaders.append(baseline)
    return leaders


def _seed(data: CampaignData) -> int:
    return int(data.campaign.config.get("seed") or 0)


def _run_jobs(store: Store, data: CampaignData, jobs: Sequence[tuple[Candidate, str]], tier: str,
              progress: ProgressFn, sandbox) -> None:
    """Run and record each (candidate, task) evaluation; a failure is recorded too, with no fitness."""
    from lossearch.contract import parse_spec
    from lossearch.failures import CandidateError
    from lossearch.sandbox import Sandbox

    own_sandbox = sandbox is None
    sandbox = sandbox or Sandbox()
    try:
        for done, (candidate, task) in enumerate(jobs):
            progress(f"{candidate.name} on {task}", done, len(jobs))
            started = time.monotonic()
            try:
                metrics = evaluate_on_task(sandbox, parse_spec(candidate.source, candidate.name), task, tier,
                                           data.campaign.config, store.optuna_storage_url())
            except CandidateError as error:
                metrics = {"failure": error.failure.to_dict()}
            store.record_evaluation(candidate.id, tier=tier, task=task, seed=_seed(data), metrics=metrics,
                                    fitness=metrics.get("fitness"), seconds=time.monotonic() - started)
        progress("done", len(jobs), len(jobs))
    finally:
        if own_sandbox:
            sandbox.close()


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
    verdict = None if dpo is None or (baseline is not None and baseline.id == candidate_id) else beats(score, dpo)
    return TransferCell(score.fitness, score.spread, score.metrics.get("reward"), score.metrics.get("kl"), verdict)


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
    return build_transfer_table(data, ids, [task for task in TASK_NAMES if task in tasks], tier)
