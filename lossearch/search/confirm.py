"""The confirmation stage: are the leaders better than DPO and the best seed, on seeds the search never saw?

A leaderboard's top is the maximum over many noisy candidates, so its own scores overstate it
(the winner's curse). The stage retrains the K best candidates beyond the seed library, DPO and
the best seed loss on N fresh seeds that no evaluation of the campaign used, each at the betas the
campaign tried for it (frozen: never tuned on the confirmation seeds), so that a seed's fitness
is read at the KL budget off that seed's own reward–KL curve, as in the campaign
(lossearch.evaluation.fitness). It compares each leader with each baseline seed by seed
(lossearch.evaluation.comparison): the same seeds give both the same order of training batches
and the same draws on the evaluation prompts. p-values are
Holm-corrected over the K leaders. A leader is a **confirmed discovery** when it is better than
DPO on the selection task and not worse than DPO on any held-out task confirmed.

Every seed's runs are stored as one evaluation of tier `confirm` under that seed, so a stage killed
at any moment resumes from its last finished seed, and the ranking (which reads the cascade's tiers only) never sees
them; each leader's verdict is stored as one confirmation record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lossearch.choices import BUDGET_NAMES, TASK_NAMES, USER_TASK, check_choice
from lossearch.contract import LossSpec, parse_spec
from lossearch.errors import ConfigError
from lossearch.evaluation.comparison import ALPHA, compare_paired, holm, verdict
from lossearch.evaluation.finetune.config import Budget, FinetuneOptions
from lossearch.evaluation.finetune.tier import FinetuneRunner, RunOutcome, finetune_runner, point
from lossearch.evaluation.tuning import FIRST_BETAS
from lossearch.failures import CandidateError
from lossearch.progress import ProgressFn, no_progress
from lossearch.ranking import CampaignData, load_campaign_data, rank
from lossearch.reporting.results import NoResults
from lossearch.sandbox.interface import SandboxLike
from lossearch.sandbox.local import Sandbox
from lossearch.search.config import CampaignConfig
from lossearch.search.seeds import seed_path
from lossearch.store import Candidate, Store
from lossearch.store.locate import CampaignHandle

CONFIRM_TIER = "confirm"
"""The tier of the stage's evaluations: outside the cascade, so no ranking reads them."""
CONFIRM_SEED_BASE = 1_000_000
"""Confirmation seeds start here, far from the cascade's (the campaign seed, and seed * 1000 + i)."""
KL_COLLAPSE = 4.0
"""A run whose KL is over this many times the task's budget has collapsed, as one at the fitness floor."""


@dataclass(frozen=True)
class ConfirmConfig:
    """How much the confirmation stage spends, and on what."""

    top: int = 3
    """Leaders to confirm: the best K candidates of the ranking beyond the seed library."""
    seeds: int = 5
    """Fresh seeds every leader and baseline is retrained on."""
    budget: str | None = None
    """The finetune budget of every run; None: the campaign's."""
    tasks: tuple[str, ...] = ()
    """Held-out tasks confirmed beside the selection task (a discovery must not be worse on them)."""

    def __post_init__(self) -> None:
        if self.top < 1 or self.seeds < 2:
            raise ConfigError("confirmation needs at least one leader (--top) and two seeds (--seeds)")
        if self.budget is not None:
            check_choice(self.budget, BUDGET_NAMES, "budget")
        for task in self.tasks:
            check_choice(task, TASK_NAMES, "task")
        object.__setattr__(self, "tasks", tuple(dict.fromkeys(self.tasks)))


@dataclass(frozen=True)
class Comparison:
    """One leader against one baseline on one task, over the confirmation seeds."""

    candidate: str
    candidate_id: int | None
    baseline: str
    baseline_id: int | None
    task: str
    verdict: str
    """`better`, `worse` or `no detectable difference` (lossearch.evaluation.comparison)."""
    difference: float
    """Mean per-seed fitness difference, candidate minus baseline."""
    ci: tuple[float, float]
    p_value: float
    """One-sided, for "better"."""
    p_adjusted: float
    """Holm-corrected over the leaders compared with this baseline on this task."""
    p_worse_adjusted: float
    test: str
    seeds: tuple[int, ...]
    candidate_fitness: tuple[float, ...]
    baseline_fitness: tuple[float, ...]
    candidate_collapse_rate: float
    baseline_collapse_rate: float
    candidate_betas: tuple[float, ...]
    baseline_betas: tuple[float, ...]
    """The betas each was trained at on every seed (its curve's points)."""

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "candidate_id": self.candidate_id, "baseline": self.baseline,
                "baseline_id": self.baseline_id, "task": self.task, "verdict": self.verdict,
                "difference": self.difference, "ci": list(self.ci), "p_value": self.p_value,
                "p_adjusted": self.p_adjusted, "p_worse_adjusted": self.p_worse_adjusted, "test": self.test,
                "seeds": list(self.seeds), "candidate_fitness": list(self.candidate_fitness),
                "baseline_fitness": list(self.baseline_fitness),
                "candidate_collapse_rate": self.candidate_collapse_rate,
                "baseline_collapse_rate": self.baseline_collapse_rate,
                "candidate_betas": list(self.candidate_betas), "baseline_betas": list(self.baseline_betas)}


@dataclass(frozen=True)
class LeaderVerdict:
    """What the stage concluded about one leader."""

    candidate: str
    candidate_id: int | None
    confirmed: bool
    """Better than DPO on the selection task and not worse than DPO on any held-out task."""
    comparisons: tuple[Comparison, ...]

    @property
    def summary(self) -> str:
        """One line: the verdict against DPO on the selection task, with its effect and interval."""
        first = self.comparisons[0]
        low, high = first.ci
        head = "confirmed discovery" if self.confirmed else "not confirmed"
        relation = {"better": "better than", "worse": "worse than"}.get(first.verdict, "no detectable difference from")
        p = first.p_worse_adjusted if first.verdict == "worse" else first.p_adjusted  # the verdict's direction
        return (f"{head}: {relation} {first.baseline} on {first.task}, {first.difference:+.3f} "
                f"(95% CI {low:+.3f} to {high:+.3f}, Holm p {p:.3g}, {len(first.seeds)} seeds)")


@dataclass(frozen=True)
class ConfirmationReport:
    """The stage's outcome: every comparison, and a verdict per leader."""

    selected_on: str
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    budget: str
    precision: str
    leaders: tuple[LeaderVerdict, ...]
    ran: int = 0
    """Training runs made by this call (the others were stored already)."""
    alpha: float = ALPHA
    notes: tuple[str, ...] = field(default=())

    @property
    def comparisons(self) -> list[Comparison]:
        return [comparison for leader in self.leaders for comparison in leader.comparisons]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [comparison.to_dict() for comparison in self.comparisons]


@dataclass(frozen=True)
class Contender:
    """A loss the stage trains: a leader or a baseline, with the betas it is trained at on each seed."""

    name: str
    spec: LossSpec
    betas: tuple[float, ...]
    candidate: Candidate | None = None
    """Its candidate in the campaign; None for a loss file outside any campaign."""
    values: tuple[Mapping[str, float], ...] = ()
    """Per beta, the other hyperparameters the campaign's tuning trained that point at (empty: the
    loss's defaults; none at all: every point at the defaults)."""

    def points(self) -> list[tuple[float, Mapping[str, float]]]:
        """(beta, other hyperparameters) of every point of the contender's curve."""
        return list(zip(self.betas, self.values or [{}] * len(self.betas)))


# -- seeds ---------------------------------------------------------------------------------------


def confirmation_seeds(campaign_seed: int, count: int) -> tuple[int, ...]:
    """The stage's seeds for a campaign: disjoint from the cascade's by construction (and checked)."""
    return tuple(CONFIRM_SEED_BASE + 1000 * campaign_seed + index for index in range(count))


def seeds_used(data: CampaignData) -> set[int]:
    """Every seed an evaluation of the cascade or of `transfer` used: its key's seed and its training seeds."""
    used: set[int] = set()
    for evaluations in data.evaluations.values():
        for evaluation in evaluations:
            if evaluation.tier == CONFIRM_TIER:
                continue
            used.add(evaluation.seed)
            used.update(int(seed) for seed in evaluation.metrics.get("seeds") or ())
            for run in evaluation.metrics.get("runs") or ():
                if isinstance(run, dict) and isinstance(run.get("seed"), int):
                    used.add(run["seed"])
    return used


def check_fresh(seeds: Sequence[int], data: CampaignData) -> None:
    overlap = sorted(set(seeds) & seeds_used(data))
    if overlap:
        raise ConfigError(f"confirmation seeds {overlap} were already used by the campaign's evaluations; "
                          "confirm on seeds the search never saw")


# -- choosing what to train ------------------------------------------------------------------------


def default_betas(spec: LossSpec, trials: int) -> tuple[float, ...]:
    """The betas a finetune evaluation of `trials` trials tries first, from the loss's default."""
    default = float(spec.hyperparameters["beta"])
    if "beta" not in spec.inputs:
        return (default,)
    return tuple(sorted(default * multiple for multiple in FIRST_BETAS[:trials]))


def campaign_contender(data: CampaignData, candidate: Candidate, task: str, trials: int) -> Contender:
    """`candidate` at the points (betas, and other hyperparameters where tuning moved them) the campaign's
    finetune evaluation of it on `task` (or on the selection task) trained at, else at the betas a
    `trials`-trial evaluation would try first."""
    spec = parse_spec(candidate.source, candidate.name)
    for wanted in (task, data.task):
        for evaluation in data.evaluations.get(candidate.id, ()):
            if evaluation.tier != "finetune" or evaluation.task != wanted:
                continue
            points = evaluation.metrics.get("curve_points")
            if points and any(point.get("hyperparameters") for point in points):
                return Contender(candidate.name, spec, tuple(float(point["beta"]) for point in points), candidate,
                                 tuple(dict(point.get("hyperparameters") or {}) for point in points))
            betas = evaluation.metrics.get("curve_betas")
            if betas:
                return Contender(candidate.name, spec, tuple(float(beta) for beta in betas), candidate)
    return Contender(candidate.name, spec, default_betas(spec, trials), candidate)


def contenders(data: CampaignData, top: int) -> tuple[list[Candidate], list[Candidate]]:
    """(the K best candidates beyond the seed library, [DPO, the best seed when it is not DPO])."""
    ranked = rank(data).candidates
    leaders = [candidate for candidate in ranked if candidate.proposer != "seed"][:top]
    baselines = [data.baseline] if data.baseline is not None else []
    best_seed = next((candidate for candidate in ranked if candidate.proposer == "seed"), None)
    if best_seed is not None and best_seed not in baselines:
        baselines.append(best_seed)
    return leaders, baselines


# -- running -------------------------------------------------------------------------------------


def is_collapsed(seed_runs: dict[str, Any], floor: float | None, kl_budget: float | None) -> bool:
    """A seed on which the loss collapsed: its fitness at the task's floor, or every run of its curve
    diverged or far over the KL budget."""
    fitness = seed_runs.get("fitness")
    at_floor = floor is not None and fitness is not None and fitness <= floor + 1e-9
    runs = seed_runs.get("runs") or []

    def far_over(run: dict[str, Any]) -> bool:
        kl = run.get("kl")
        return kl_budget is not None and isinstance(kl, (int, float)) and kl > KL_COLLAPSE * kl_budget

    return bool(at_floor or (runs and all(run.get("diverged") or far_over(run) for run in runs)))


class Stage:
    """Trains every contender on every task and seed, reusing what the store holds."""

    def __init__(self, sandbox: SandboxLike, options: FinetuneOptions, store: Store | None,
                 progress: ProgressFn) -> None:
        self.sandbox, self.options, self.store, self.progress = sandbox, options, store, progress
        self.runners: dict[tuple[str, str], FinetuneRunner] = {}
        self.ran = 0
        self.total = 0
        """Runs the stage holds or makes, for the progress bar."""
        self.done = 0

    def runner(self, contender: Contender, task: str) -> FinetuneRunner:
        key = (contender.spec.code_hash, task)
        if key not in self.runners:
            self.runners[key] = finetune_runner(self.sandbox, contender.spec, task, self.options)
        return self.runners[key]

    def runs(self, contender: Contender, task: str, seeds: Sequence[int]) -> list[dict[str, Any]]:
        """Per seed (stored ones reused): its runs at the contender's betas and its fitness at the KL
        budget over them; a run that diverged counts as the task's floor. The runs not stored train
        together, as one stacked pass where the runner stacks runs (FinetuneRunner.run_many)."""
        runner = self.runner(contender, task)
        by_seed: dict[int, dict[str, Any] | None] = {seed: self.stored_runs(contender, runner, task, seed)
                                                      for seed in seeds}
        missing = [seed for seed in seeds if by_seed[seed] is None]
        self.done += len(seeds) - len(missing)
        count = len(contender.betas)
        points = contender.points()
        for group in [missing] if runner.stacks and missing else [[seed] for seed in missing]:
            what = f"seed {group[0]}" if len(group) == 1 else f"{len(group) * count} runs in one pass"
            self.progress(f"confirming {contender.name} on {task}, {what}", self.done, max(self.total, 1))
            started = time.monotonic()
            outcomes = runner.run_many([(beta, seed, values) for seed in group for beta, values in points])
            seconds = (time.monotonic() - started) / len(group)
            for position, seed in enumerate(group):
                by_seed[seed] = self.record(contender, runner, task, seed,
                                            outcomes[position * count:(position + 1) * count], seconds)
            self.ran += len(group) * count
            self.done += len(group)
        return [runs for runs in by_seed.values() if runs is not None]

    def stored_runs(self, contender: Contender, runner: FinetuneRunner, task: str, seed: int) -> dict[str, Any] | None:
        candidate = contender.candidate
        if self.store is None or candidate is None:
            return None
        stored = self.store.find_evaluation(candidate.id, tier=CONFIRM_TIER, task=task, seed=seed)
        if stored is None:
            return None
        check_reusable(stored.metrics, runner, contender)
        return stored.metrics

    def record(self, contender: Contender, runner: FinetuneRunner, task: str, seed: int, outcomes: list[RunOutcome],
               seconds: float) -> dict[str, Any]:
        """One seed's runs (a divergence counting as the task's floor) and its fitness, stored."""
        floor = runner.task.fitness_floor
        runs = [{**point(beta, values), "seed": seed, "fitness": floor if math.isfinite(floor) else None,
                 "diverged": True, "failure": outcome.failure.to_dict()} if isinstance(outcome, CandidateError)
                else outcome for (beta, values), outcome in zip(contender.points(), outcomes)]
        curve = runner.curve_fitness(runs)
        seed_runs = {"seed": seed, "fitness": curve["fitness"], "betas": list(contender.betas), "runs": runs,
                     **runner.describe(), "stage": "confirmation"}
        if contender.values:
            seed_runs["hyperparameters"] = [dict(values) for values in contender.values]
        candidate = contender.candidate
        if self.store is not None and candidate is not None:
            self.store.record_evaluation(candidate.id, tier=CONFIRM_TIER, task=task, seed=seed, metrics=seed_runs,
                                         fitness=seed_runs["fitness"], seconds=seconds)
        return seed_runs


def check_reusable(metrics: dict[str, Any], runner: FinetuneRunner, contender: Contender) -> None:
    """Stored runs are reused only for what this stage would train: the same precision, budget, task
    artifact and betas (runs of another protocol would be paired with these as if they were alike)."""
    name = contender.name
    stored = metrics.get("precision")
    if stored is not None and stored != runner.precision:
        raise ConfigError(f"{name}'s stored confirmation runs were trained at {stored} and this machine trains at "
                          f"{runner.precision}: runs at different precisions are not paired; pass --precision "
                          f"{stored} or confirm on a machine that computes it")
    budget = (metrics.get("budget") or {}).get("name")
    if budget is not None and budget != runner.budget.name:
        raise ConfigError(f"{contender.name}'s stored confirmation runs are at budget {budget}, not "
                          f"{runner.budget.name}: confirm with --budget {budget}, or confirm a copy of the campaign")
    stored_training = (metrics.get("grad_accum", 1), bool(metrics.get("group_by_length", False)))
    if stored_training != (runner.options.grad_accum, runner.options.group_by_length):
        accum, grouped = stored_training
        raise ConfigError(f"{name}'s stored confirmation runs were trained with --grad-accum {accum}"
                          f"{' and --group-by-length' if grouped else ''}: confirm with the same training flags, "
                          "or confirm a copy of the campaign")
    artifact = metrics.get("artifact")
    if artifact is not None and artifact != runner.task.key:
        raise ConfigError(f"{contender.name}'s stored confirmation runs were trained on another build of task "
                          f"{runner.task.name} ({artifact}): confirm a copy of the campaign to retrain them")
    stored_betas = [round(float(beta), 9) for beta in metrics.get("betas") or []]
    if stored_betas != [round(float(beta), 9) for beta in contender.betas]:
        shown = ", ".join(f"{beta:g}" for beta in stored_betas) or "one beta, before betas were recorded"
        raise ConfigError(f"{contender.name}'s stored confirmation runs were trained at betas {shown}, not at "
                          f"{', '.join(f'{beta:g}' for beta in contender.betas)}: confirm a copy of the campaign "
                          "to retrain them under this protocol")
    stored_values = metrics.get("hyperparameters") or [{}] * len(stored_betas)
    if stored_values != [dict(values) for _, values in contender.points()]:
        raise ConfigError(f"{name}'s stored confirmation runs were trained at other hyperparameters than the "
                          "campaign's tuning now gives: confirm a copy of the campaign to retrain them")


# -- comparing -------------------------------------------------------------------------------------


def compare_family(leaders: Sequence[tuple[Contender, list[dict[str, Any]]]],
                   baseline: tuple[Contender, list[dict[str, Any]]], task: str, seeds: Sequence[int],
                   floor: float | None, kl_budget: float | None) -> list[Comparison]:
    """Every leader against one baseline on one task: paired results, Holm-corrected over the leaders."""
    base, base_runs = baseline
    base_fitness: list[float | None] = [run.get("fitness") for run in base_runs]
    results = []
    for leader, runs in leaders:
        fitness: list[float | None] = [run.get("fitness") for run in runs]
        # a seed counts where both have a fitness (a run that diverged has the floor's)
        kept = [(i, float(a), float(b)) for i, (a, b) in enumerate(zip(fitness, base_fitness))
                if a is not None and b is not None]
        collapsed = any(is_collapsed(runs[i], floor, kl_budget) or is_collapsed(base_runs[i], floor, kl_budget)
                        for i, _, _ in kept)
        paired = compare_paired([a for _, a, _ in kept], [b for _, _, b in kept], collapsed=collapsed)
        results.append((leader, runs, [i for i, _, _ in kept], [a for _, a, _ in kept], [b for _, _, b in kept],
                        paired))
    better = holm([paired.p_better for *_, paired in results])
    worse = holm([paired.p_worse for *_, paired in results])
    comparisons = []
    for (leader, runs, indexes, ours, theirs, paired), p_better, p_worse in zip(results, better, worse):
        comparisons.append(Comparison(
            leader.name, leader.candidate.id if leader.candidate else None, base.name,
            base.candidate.id if base.candidate else None, task, verdict(p_better, p_worse), paired.difference,
            paired.ci, paired.p_better, p_better, p_worse, paired.test, tuple(seeds[i] for i in indexes),
            tuple(ours), tuple(theirs),
            collapse_rate(runs, floor, kl_budget), collapse_rate(base_runs, floor, kl_budget), leader.betas,
            base.betas))
    return comparisons


def collapse_rate(runs: Sequence[dict[str, Any]], floor: float | None, kl_budget: float | None) -> float:
    return sum(is_collapsed(run, floor, kl_budget) for run in runs) / max(1, len(runs))


def judge(leaders: Sequence[Contender], comparisons: Sequence[Sequence[Comparison]], selected_on: str,
          dpo_name: str) -> list[LeaderVerdict]:
    """A verdict per leader (`comparisons[i]` are leader i's): confirmed when better than DPO on the
    selection task and not worse than DPO on any held-out task."""
    verdicts = []
    for leader, own in zip(leaders, comparisons):
        ordered = sorted(own, key=lambda c: (c.task != selected_on, c.baseline != dpo_name))
        against_dpo = [c for c in ordered if c.baseline == dpo_name]
        confirmed = any(c.task == selected_on and c.verdict == "better" for c in against_dpo) and \
            not any(c.task != selected_on and c.verdict == "worse" for c in against_dpo)
        verdicts.append(LeaderVerdict(leader.name, leader.candidate.id if leader.candidate else None, confirmed,
                                      tuple(ordered)))
    return verdicts


def run_stage(stage: Stage, leaders: Sequence[Contender], baselines: Sequence[Contender], tasks: Sequence[str],
              seeds: Sequence[int]) -> list[list[Comparison]]:
    """Train everything on every task and seed, then compare each leader with each baseline; the
    comparisons of each leader, in the leaders' order."""
    stage.total = len(tasks) * (len(leaders) + len(baselines)) * len(seeds)
    per_leader: list[list[Comparison]] = [[] for _ in leaders]
    for task in tasks:
        leader_runs = [stage.runs(leader, task, seeds) for leader in leaders]
        for baseline in baselines:
            runs = stage.runs(baseline, task, seeds)
            runner = stage.runner(baseline, task)
            floor = runner.task.fitness_floor if math.isfinite(runner.task.fitness_floor) else None
            family = compare_family(list(zip(leaders, leader_runs)), (baseline, runs), task, seeds, floor,
                                    runner.task.kl_budget)
            for own, comparison in zip(per_leader, family):
                own.append(comparison)
    return per_leader


# -- the two entry points ------------------------------------------------------------------------------


def confirm_campaign(handle: CampaignHandle, config: ConfirmConfig, *, sandbox: SandboxLike | None = None,
                     progress: ProgressFn = no_progress, options: FinetuneOptions | None = None) -> ConfirmationReport:
    """Confirm the campaign's K leaders against DPO and the best seed; store the runs and the verdicts.

    `options` are the finetune tier's (device, precision, an already loaded task); without them, the
    campaign's (its data mode, device, and the user's model and pairs it ran on); the budget is the
    configuration's, else that of `options`, else the campaign's."""
    data = load_campaign_data(handle.store, handle.campaign)
    campaign = CampaignConfig.from_dict(data.campaign.config)
    seeds = confirmation_seeds(campaign.seed, config.seeds)
    check_fresh(seeds, data)
    leaders, baselines = contenders(data, config.top)
    if not leaders:
        raise NoResults(f"campaign {data.campaign.name!r} has no ranked candidate beyond the seed library to confirm")
    if not baselines:
        raise NoResults(f"campaign {data.campaign.name!r} has no DPO seed to compare with")
    tasks = (data.task, *(task for task in config.tasks if task != data.task))
    budget: str | Budget = config.budget or (options.budget if options is not None else campaign.budget)
    own_sandbox = sandbox is None
    runner_sandbox = sandbox or Sandbox()
    try:
        stage = Stage(runner_sandbox, replace(options or campaign.finetune_options(), budget=budget), handle.store,
                      progress)
        trials = Budget.named(budget).trials
        lead = [campaign_contender(data, c, data.task, trials) for c in leaders]
        base = [campaign_contender(data, c, data.task, trials)
                for c in baselines]
        comparisons = run_stage(stage, lead, base, tasks, seeds)
        precision = stage.runner(base[0], data.task).precision
    finally:
        if own_sandbox:
            runner_sandbox.close()
    verdicts = judge(lead, comparisons, data.task, base[0].name)
    report = ConfirmationReport(data.task, tasks, seeds, budget.name if isinstance(budget, Budget) else budget,
                                precision, tuple(verdicts), stage.ran)
    for leader in verdicts:
        if leader.candidate_id is not None:
            handle.store.record_confirmation(data.campaign.id, leader.candidate_id, confirmed=leader.confirmed,
                                             record=confirmation_record(report, leader))
    return report


def confirmation_record(report: ConfirmationReport, leader: LeaderVerdict) -> dict[str, Any]:
    return {"summary": leader.summary, "selected_on": report.selected_on, "tasks": list(report.tasks),
            "seeds": list(report.seeds), "budget": report.budget, "precision": report.precision,
            "alpha": report.alpha, "comparisons": [c.to_dict() for c in leader.comparisons]}


def confirm_files(sources: Sequence[tuple[str, str]], *, task: str = "sentiment", seeds: int = 5,
                  budget: str | Budget = "quick", sandbox: SandboxLike | None = None,
                  progress: ProgressFn = no_progress, options: FinetuneOptions | None = None,
                  seed_set: int = 0) -> ConfirmationReport:
    """Is each loss file (`(name, source)`) better than DPO on `task`? The same protocol outside a
    campaign: fresh seeds, paired runs, Holm over the files; each loss at the betas the budget's
    finetune evaluation would try first from its default (at `quick`: x1, x10^0.5, x10^-0.5).
    `seed_set` picks another set of seeds (benchmarks repeat the protocol on several)."""
    if task != USER_TASK or options is None or options.setting is None:
        check_choice(task, TASK_NAMES, "task")
    if not isinstance(budget, Budget):
        check_choice(budget, BUDGET_NAMES, "budget")
    if not sources:
        raise ConfigError("give at least one loss file to confirm")
    ConfirmConfig(top=len(sources), seeds=seeds)  # the same limits as for a campaign
    dpo_spec = parse_spec(seed_path("dpo").read_text(encoding="utf-8"), "dpo")
    specs = [parse_spec(source, name) for name, source in sources]
    trials = Budget.named(budget).trials
    lead = [Contender(spec.name, spec, default_betas(spec, trials)) for spec in specs]
    base = [Contender("dpo", dpo_spec, default_betas(dpo_spec, trials))]
    run_seeds = confirmation_seeds(seed_set, seeds)
    own_sandbox = sandbox is None
    runner_sandbox = sandbox or Sandbox()
    try:
        stage = Stage(runner_sandbox, replace(options or FinetuneOptions(), budget=budget), None, progress)
        comparisons = run_stage(stage, lead, base, (task,), run_seeds)
        precision = stage.runner(base[0], task).precision
    finally:
        if own_sandbox:
            runner_sandbox.close()
    verdicts = judge(lead, comparisons, task, "dpo")
    name = budget.name if isinstance(budget, Budget) else budget
    return ConfirmationReport(task, (task,), run_seeds, name, precision, tuple(verdicts), stage.ran,
                              notes=("each loss at the betas its budget tries first from its default "
                                     "(no campaign tried any)",))
