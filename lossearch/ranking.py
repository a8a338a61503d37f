"""How a campaign's candidates rank: one read of the campaign, one score per candidate, one order.

Every surface that orders candidates calls `rank`: the closing table of `lossearch run`,
`lossearch leaderboard`, the report, `export --top`, `transfer`'s leaders, and the
campaign's parent selection and promotion. So for one campaign they all show one order.

Scores. A candidate's score on a task is the mean fitness of its evaluations on that task at
the highest tier that has any (finetune above bandit), with their spread: the standard
deviation over seeds when there are several evaluations, else the spread over training seeds
that one finetune evaluation reports (`fitness_std`), else unknown.

The rule. Only `evaluated` candidates with a score rank (rejected, failed, duplicate and
unfinished ones do not). They rank by the tier of their score first, since a bandit fitness
and a finetune fitness are on different scales, then by a lower confidence bound on their
fitness, best first; ties go to the older candidate (lower id). The bound is the mean less one
standard error, sigma / sqrt(n) over the n evaluations averaged, where sigma is the candidate's
own spread once it has `OWN_SPREAD_SEEDS` evaluations, and before that the campaign's typical
spread at that tier and task (the median spread of the candidates evaluated on several seeds,
which the campaign's racing makes: lossearch.search.campaign; a median, so that one loss that
collapses on some seeds does not lend its huge spread to every other), else the one
evaluation's own `fitness_std`.
So a candidate that reaches the top on one lucky seed ranks below one as good on three seeds,
and both parent selection and promotion see that. With one evaluation each and no pooled spread
(the bandit tier, a campaign without racing) the bound orders candidates as their fitness does.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lossearch.choices import TIER_ORDER
from lossearch.store import BASELINE_SEED, Campaign, Candidate, Confirmation, Evaluation, LineageEdge, Store
from lossearch.store.values import finite_number, fitness_summary

RANKED_STATUS = "evaluated"
"""The one candidate status that ranks: it passed every tier it was sent to."""
DEFAULT_TASK = "sentiment"
"""The task of a campaign whose configuration names none."""
OWN_SPREAD_SEEDS = 3
"""Evaluations from which a candidate's own spread, not the campaign's pooled one, enters its bound."""


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
    """Mean of each finite numeric metric over those evaluations."""
    bound: float | None = None
    """The lower confidence bound the ranking orders by (set by `rank`; see the module docstring)."""


def pooled_spread(scores: Iterable[Score]) -> dict[tuple[str, str], float]:
    """Per (task, tier): the median over the candidates evaluated on two or more seeds of their
    standard deviation across those evaluations (the campaign's typical noise of one loss)."""
    return medians(((score.task, score.tier), score.spread) for score in scores
                   if score.seeds >= POOLED_FROM_SEEDS and score.spread is not None)


POOLED_FROM_SEEDS = 2
"""Evaluations from which a candidate's spread counts towards its campaign's pooled spread."""


def medians(pairs: Iterable[tuple[Any, float]]) -> dict[Any, float]:
    """The median of the values of each key."""
    values: dict[Any, list[float]] = defaultdict(list)
    for key, value in pairs:
        values[key].append(value)
    return {key: statistics.median(members) for key, members in values.items()}


def bound_of(score: Score) -> float:
    return score.bound if score.bound is not None else score.fitness


def lower_bound(score: Score, pooled: Mapping[tuple[str, str], float]) -> float:
    """The mean fitness less one standard error (see the module docstring)."""
    own = score.spread if score.seeds >= OWN_SPREAD_SEEDS else None
    sigma = own if own is not None else pooled.get((score.task, score.tier), score.spread)
    return score.fitness - (sigma or 0.0) / math.sqrt(score.seeds)


def mean_metrics(evaluations: Iterable[Evaluation]) -> dict[str, float]:
    """Mean of each finite numeric metric over `evaluations`; a metric missing from one (or
    not finite there) is left out of that one's count, not counted as zero."""
    values: dict[str, list[float]] = defaultdict(list)
    for evaluation in evaluations:
        for key in evaluation.metrics:
            value = finite_number(evaluation.metrics, key)
            if value is not None:
                values[key].append(value)
    return {key: statistics.fmean(numbers) for key, numbers in values.items()}


def score_of(evaluations: Sequence[Evaluation], task: str, tier: str | None = None) -> Score | None:
    """Mean fitness of `evaluations` on `task` at `tier` (the highest with any fitness), or None."""
    # the cascade's tiers only: the confirmation stage's runs (tier `confirm`) are judged apart, by
    # lossearch.search.confirm, on seeds the ranking must never have seen
    scored = [e for e in evaluations if e.task == task and e.fitness is not None and e.tier in TIER_ORDER]
    if tier is None and scored:
        tier = max((e.tier for e in scored), key=lambda name: TIER_ORDER.get(name, -1))
    counted = [e for e in scored if e.tier == tier]
    if tier is None or not counted:
        return None
    fitnesses = [float(e.fitness) for e in counted if e.fitness is not None]
    metrics = mean_metrics(counted)
    fitness, spread = fitness_summary(fitnesses, metrics.get("fitness_std"))
    return Score(task, tier, fitness, spread, len(counted), metrics)


UNCHANGED_BY_PENDING = ("failed", "duplicates", "operator_stats", "summaries")
"""The `CampaignData.memo` entries a pending child leaves as they are (the operators' counts it bumps)."""


@dataclass(frozen=True)
class CampaignData:
    """A snapshot of one campaign: candidates, lineage and evaluations, indexed."""

    campaign: Campaign
    candidates: dict[int, Candidate]
    parents: dict[int, list[LineageEdge]]
    children: dict[int, list[LineageEdge]]
    evaluations: dict[int, list[Evaluation]]
    confirmations: dict[int, Confirmation] = field(default_factory=dict)
    """The confirmation stage's verdicts, by candidate id (lossearch.search.confirm)."""
    store: Store | None = field(default=None, compare=False, repr=False)
    """Where `fingerprints` reads what the snapshot left out."""
    # caches of this snapshot (init=False: a dataclasses.replace copy starts its own)
    _fingerprints: dict[int, tuple[float, ...] | None] = field(default_factory=dict, init=False, compare=False,
                                                               repr=False)

    def fingerprints(self, candidate_ids: Iterable[int]) -> dict[int, tuple[float, ...] | None]:
        """The fingerprints of `candidate_ids`, by id. A snapshot leaves them in the store (4,356 floats
        each were most of loading one), and reads those asked for here, once."""
        ids = list(candidate_ids)
        missing = [i for i in ids if i not in self._fingerprints]
        for i in missing:
            own = self.candidates[i].fingerprint if i in self.candidates else None
            if own is not None or self.store is None:
                self._fingerprints[i] = own
        wanted = [i for i in missing if i not in self._fingerprints]
        if wanted and self.store is not None:
            self._fingerprints.update(self.store.fingerprints_of(wanted))
        return {i: self._fingerprints.get(i) for i in ids}

    def fingerprint(self, candidate_id: int) -> tuple[float, ...] | None:
        return self.fingerprints([candidate_id])[candidate_id]

    _memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()`, once per snapshot (until `add_pending`): for what a campaign asks of every proposal."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def add_pending(self, candidate: Candidate, edges: Sequence[LineageEdge]) -> None:
        """Take in a child stored while a generation is being proposed, so the next proposal of the
        generation reuses this snapshot and its ranking instead of reloading the store: a pending child
        ranks nowhere and has failed nothing, so only the lineage and the operators' counts change."""
        self.candidates[candidate.id] = candidate
        for edge in edges:
            self.parents.setdefault(edge.child_id, []).append(edge)
            self.children.setdefault(edge.parent_id, []).append(edge)
        kept = {key: value for key, value in self._memo.items() if key in UNCHANGED_BY_PENDING}
        self._memo.clear()
        self._memo.update(kept)
        operators = kept.get("operator_stats")
        if operators is not None and candidate.proposer == "mutation" and candidate.model:
            arm = candidate.model
            known = operators.get(arm)
            operators[arm] = OperatorStats(arm, 1, 0, 0, 0, 0.0) if known is None else \
                replace(known, children=known.children + 1)

    @property
    def task(self) -> str:
        """The task the campaign selects on."""
        return str(self.campaign.config.get("task") or DEFAULT_TASK)

    @property
    def baseline(self) -> Candidate | None:
        """The DPO seed every candidate is compared with."""
        return next((c for c in self.candidates.values() if c.proposer == "seed" and c.name == BASELINE_SEED), None)

    def score(self, candidate_id: int, task: str | None = None, tier: str | None = None) -> Score | None:
        """The candidate's score on `task` (the campaign's by default) at `tier` (the highest with any)."""
        return score_of(self.evaluations.get(candidate_id, []), task or self.task, tier)

    def baseline_score(self, task: str, tier: str) -> Score | None:
        baseline = self.baseline
        return None if baseline is None else self.score(baseline.id, task, tier)


def load_campaign_data(store: Store, campaign: Campaign) -> CampaignData:
    """Four reads: the campaign's candidates (their fingerprints left for `CampaignData.fingerprints`),
    lineage edges, evaluations and confirmations."""
    candidates = {candidate.id: candidate for candidate in store.candidates(campaign.id, fingerprints=False)}
    parents: dict[int, list[LineageEdge]] = defaultdict(list)
    children: dict[int, list[LineageEdge]] = defaultdict(list)
    for edge in store.lineage(campaign.id):
        parents[edge.child_id].append(edge)
        children[edge.parent_id].append(edge)
    evaluations: dict[int, list[Evaluation]] = defaultdict(list)
    for evaluation in store.evaluations(campaign_id=campaign.id):
        evaluations[evaluation.candidate_id].append(evaluation)
    confirmations = {record.candidate_id: record for record in store.confirmations(campaign.id)}
    return CampaignData(campaign, candidates, dict(parents), dict(children), dict(evaluations), confirmations,
                        store)


@dataclass(frozen=True)
class Ranking:
    """The ranked candidates, best first, each with the score it ranks by; then the rest."""

    ranked: tuple[tuple[Candidate, Score], ...]
    unranked: tuple[tuple[Candidate, Score | None], ...]
    """Candidates that do not rank (not `evaluated`, or no score), in the order they were added."""

    @property
    def candidates(self) -> list[Candidate]:
        return [candidate for candidate, _ in self.ranked]


def rank(data: CampaignData, task: str | None = None, tier: str | None = None,
         among: Iterable[int] | None = None) -> Ranking:
    """Order the campaign's candidates (or the ids `among`) on `task` (the campaign's by default) by
    the module's rule, scoring each at `tier` (by default the highest it has a score at)."""
    task = task or data.task
    ids = data.candidates if among is None else among
    scored = [(data.candidates[i], data.score(i, task, tier)) for i in ids]
    ranked = [(c, s) for c, s in scored if s is not None and c.status == RANKED_STATUS]
    # the pooled spread comes from every candidate of the campaign, not only those ranked here
    everyone = ranked if among is None else [
        (c, data.score(c.id, task, tier)) for c in data.candidates.values() if c.status == RANKED_STATUS]
    pooled = pooled_spread(s for _, s in everyone if s is not None)
    ranked = [(c, replace(s, bound=lower_bound(s, pooled))) for c, s in ranked]
    ranked.sort(key=lambda pair: (-TIER_ORDER.get(pair[1].tier, -1), -bound_of(pair[1]), pair[0].id))
    ranked_ids = {candidate.id for candidate, _ in ranked}
    return Ranking(tuple(ranked), tuple((c, s) for c, s in scored if c.id not in ranked_ids))


def rank_top(store: Store, campaign: Campaign, limit: int, task: str | None = None, *, count: bool = True
             ) -> tuple[CampaignData, Ranking, int | None]:
    """The best `limit` candidates by `rank`'s rule, found through the scores the store keeps as
    evaluations are recorded: one ordered query instead of a snapshot of the whole campaign (the
    leaderboard's first page at 100,000 candidates: benchmarks/store_scale.py). Returns a snapshot of
    those candidates alone (with the baseline and the campaign's confirmations), their `Ranking`
    (nothing unranked), and how many candidates rank in all (with `count`, else None: a scan of its own)."""
    task, tiers, pooled = kept_rule(store, campaign, task)
    total = store.count_scored(campaign.id, task, tiers=tiers, status=RANKED_STATUS) if count else None
    ids = store.best_scored(campaign.id, task, tiers=tiers, status=RANKED_STATUS, pooled=pooled,
                            own_spread_seeds=OWN_SPREAD_SEEDS, limit=limit)
    baseline = [c.id for c in store.candidates(campaign.id, name=BASELINE_SEED, fingerprints=False)
                if c.proposer == "seed"][:1]
    data = load_campaign_part(store, campaign, ids + baseline)
    keyed = {(task, tier): spread for tier, spread in pooled.items()}
    ranked = []
    for candidate_id in ids:
        score = data.score(candidate_id, task)
        if score is not None and candidate_id in data.candidates:  # else changed between the reads: left out
            ranked.append((data.candidates[candidate_id], replace(score, bound=lower_bound(score, keyed))))
    return data, Ranking(tuple(ranked), ()), total


def kept_rule(store: Store, campaign: Campaign, task: str | None) -> tuple[str, list[str], dict[str, float]]:
    """(task, tiers cheapest first, pooled spread per tier): what `rank`'s rule needs to be asked of the
    store's kept scores (`rank_top`, `place_of`)."""
    task = task or str(campaign.config.get("task") or DEFAULT_TASK)
    tiers = sorted(TIER_ORDER, key=TIER_ORDER.__getitem__)
    spreads = store.scored_spreads(campaign.id, task, tiers=tiers, status=RANKED_STATUS, seeds=POOLED_FROM_SEEDS)
    return task, tiers, medians(spreads)


def place_of(store: Store, campaign: Campaign, candidate_id: int, task: str | None = None) -> int | None:
    """The candidate's place in `rank`'s order (1 = best), counted through the store's kept scores; None
    when it does not rank."""
    task, tiers, pooled = kept_rule(store, campaign, task)
    return store.place_of(campaign.id, candidate_id, task, tiers=tiers, status=RANKED_STATUS, pooled=pooled,
                          own_spread_seeds=OWN_SPREAD_SEEDS)


def operator_record(store: Store, campaign: Campaign, operator: str) -> OperatorStats | None:
    """`operator_stats(...)[operator]` read through the store's kept scores, without a snapshot."""
    task = str(campaign.config.get("task") or DEFAULT_TASK)
    outcomes = store.child_outcomes(campaign.id, task, proposer="mutation", model=operator)
    if not outcomes:
        return None
    verdicts = []
    for failure_kind, status, fitness, best_parent in outcomes:
        gain = None if fitness is None else fitness - (fitness if best_parent is None else best_parent)
        if has_verdict(gain, failure_kind, status):
            verdicts.append(gain)
    return arm_stats(operator, len(outcomes), verdicts)


def load_campaign_part(store: Store, campaign: Campaign, candidate_ids: Iterable[int]) -> CampaignData:
    """A snapshot of the candidates `candidate_ids` alone: the edges to their parents (a parent may be
    outside the snapshot), the edges to their children among them, their evaluations, and the
    campaign's confirmations."""
    found = {c.id: c for c in store.candidates(campaign.id, ids=set(candidate_ids), fingerprints=False)}
    parents: dict[int, list[LineageEdge]] = defaultdict(list)
    children: dict[int, list[LineageEdge]] = defaultdict(list)
    for edge in store.parents_of(found):
        parents[edge.child_id].append(edge)
        if edge.parent_id in found:
            children[edge.parent_id].append(edge)
    evaluations: dict[int, list[Evaluation]] = defaultdict(list)
    for evaluation in store.evaluations(candidate_ids=found):
        evaluations[evaluation.candidate_id].append(evaluation)
    confirmations = {record.candidate_id: record for record in store.confirmations(campaign.id)}
    return CampaignData(campaign, found, dict(parents), dict(children), dict(evaluations), confirmations, store)


def load_campaign_sample(store: Store, campaign: Campaign, size: int, keep: Iterable[int] = (),
                         seed: int = 0) -> CampaignData:
    """A snapshot of part of a large campaign, for what plots it: a uniform draw of `size` of its
    candidates (the same draw each time: `seed`), their parents, the seeds and the ids `keep`."""
    everyone = store.candidate_ids(campaign.id)
    drawn = random.Random(seed).sample(everyone, min(size, len(everyone)))
    parents = {edge.parent_id for edge in store.parents_of(drawn)}
    seeds = {c.id for c in store.candidates(campaign.id, generation=0, fingerprints=False) if c.proposer == "seed"}
    return load_campaign_part(store, campaign, {*drawn, *parents, *seeds, *keep})


@dataclass(frozen=True)
class TierAgreement:
    """Does the cheap tier predict the expensive one, in this campaign so far?"""

    pairs: int
    """Candidates with a bandit score and a finetune score on the task."""
    kendall_tau: float | None
    """Kendall's tau between the two scores over those candidates (None below three)."""
    p_value: float | None
    """Its two-sided p-value (scipy.stats.kendalltau)."""
    random_picks: int
    """Candidates the promotion rule passed over and a random draw sent to the finetune tier."""
    random_picks_above_rule: int
    """Of those, the ones whose finetune score beats the median of the rule's picks: a bandit tier
    that ranks well keeps this near zero."""

    @property
    def rule_no_better_than_chance(self) -> bool:
        """Whether the random picks have done as well as the rule's: under a rule that knows nothing,
        a random pick beats the median of the rule's picks half the time. Judged from
        MIN_RANDOM_PICKS picks on; before that, the rule is trusted."""
        return (self.random_picks >= MIN_RANDOM_PICKS
                and self.random_picks_above_rule >= self.random_picks / 2)

    def describe(self) -> str:
        tau = "-" if self.kendall_tau is None else f"{self.kendall_tau:+.2f} (p {self.p_value:.2g})"
        text = (f"Kendall tau {tau} over {self.pairs} finetuned; random picks above the rule's median: "
                f"{self.random_picks_above_rule} of {self.random_picks}")
        if self.rule_no_better_than_chance:
            text += "; the rule is no better than chance so far, so half its promotions go to random draws"
        return text


MIN_RANDOM_PICKS = 3
"""Random promotions before the campaign judges its promotion rule by them (TierAgreement)."""


def tier_agreement(data: CampaignData, task: str | None = None, before_generation: int | None = None
                   ) -> TierAgreement:
    """The bandit tier's ranking against the finetune tier's, over the candidates scored by both
    (those of generations before `before_generation`, when given: what a generation knew when
    it was promoted, the same on a resume)."""
    from scipy.stats import kendalltau  # only here: the rest of the ranking needs no scipy

    task = task or data.task
    pairs: list[tuple[float, float]] = []
    rule: list[float] = []
    random_picks: list[float] = []
    for candidate_id, evaluations in data.evaluations.items():
        candidate = data.candidates.get(candidate_id)
        if before_generation is not None and (candidate is None or candidate.generation >= before_generation):
            continue
        bandit, finetune = score_of(evaluations, task, "bandit"), score_of(evaluations, task, "finetune")
        if bandit is None or finetune is None:
            continue
        pairs.append((bandit.fitness, finetune.fitness))
        reasons = {e.metrics.get("promotion") for e in evaluations if e.tier == "finetune" and e.task == task}
        if "random" in reasons:
            random_picks.append(finetune.fitness)
        elif "rule" in reasons:
            rule.append(finetune.fitness)
    tau = p = None
    if len(pairs) >= 3:
        result = kendalltau([b for b, _ in pairs], [f for _, f in pairs])
        if math.isfinite(result.statistic):
            tau, p = float(result.statistic), float(result.pvalue)
    median = statistics.median(rule) if rule else math.inf
    return TierAgreement(len(pairs), tau, p, len(random_picks), sum(1 for f in random_picks if f > median))


@dataclass(frozen=True)
class OperatorStats:
    """How one mutation operator's children have done in a campaign so far."""

    operator: str
    children: int
    """Children it wrote that the campaign stored."""
    scored: int
    """Of those, the ones that reached a verdict: a bandit-tier fitness, or a failure."""
    valid: int
    """Of those, the ones the bandit tier scored (they passed the static and sanity tiers)."""
    improved: int
    """Of those, the ones whose bandit-tier fitness beats their best parent's."""
    gain: float
    """Summed bandit-tier fitness gain over the best parent (a loss counts as 0)."""

    @property
    def success_rate(self) -> float | None:
        """Share of the scored children that improved on their parents."""
        return self.improved / self.scored if self.scored else None


def operator_stats(data: CampaignData) -> dict[str, OperatorStats]:
    """Per mutation operator (the `model` the offline proposer records): its children and how many
    improved on their parents at the bandit tier, the tier every child reaches."""
    return data.memo("operator_stats", lambda: child_record(data, lambda c: c.model if c.proposer == "mutation"
                                                            else None))


def instruction_stats(data: CampaignData) -> dict[str, OperatorStats]:
    """Per LLM instruction (improve, combine, novel, repair), as `operator_stats` per operator."""
    return child_record(data, lambda c: c.instruction if c.proposer == "llm" else None)


def model_stats(data: CampaignData) -> dict[str, OperatorStats]:
    """Per LLM model (what the LLM proposer records as `model`), as `operator_stats` per operator."""
    return child_record(data, lambda c: c.model if c.proposer == "llm" else None)


def child_record(data: CampaignData, arm_of: Callable[[Candidate], str | None]) -> dict[str, OperatorStats]:
    """Per arm (`arm_of` a child; None leaves it out): its children and how they did against their parents."""
    children: dict[str, int] = defaultdict(int)
    outcomes: dict[str, list[float | None]] = defaultdict(list)  # a gain over the best parent; None: failed
    for candidate in data.candidates.values():
        arm = arm_of(candidate)
        if not arm:
            continue
        children[arm] += 1
        gain = child_gain(data, candidate)
        if has_verdict(gain, candidate.failure_kind, candidate.status):
            outcomes[arm].append(gain)
    return {name: arm_stats(name, count, outcomes[name]) for name, count in children.items()}


def has_verdict(gain: float | None, failure_kind: str | None, status: str) -> bool:
    """Whether a child has been judged: a bandit-tier gain over its parents, or a failure."""
    return gain is not None or failure_kind is not None or status in ("rejected", "duplicate")


def arm_stats(name: str, children: int, verdicts: Sequence[float | None]) -> OperatorStats:
    """An arm's record from its children's count and their verdicts (a gain, or None for a failure)."""
    gains = [gain for gain in verdicts if gain is not None]
    return OperatorStats(name, children, len(verdicts), len(gains), sum(1 for g in gains if g > 0),
                         sum(max(0.0, g) for g in gains))


def child_gain(data: CampaignData, candidate: Candidate) -> float | None:
    """The child's bandit-tier fitness minus its best parent's (0 without a scored parent); None unscored."""
    child = data.score(candidate.id, tier="bandit")
    if child is None:
        return None
    best = best_parent_fitness(data, candidate, "bandit")
    return child.fitness - (child.fitness if best is None else best)


def best_parent_fitness(data: CampaignData, candidate: Candidate, tier: str) -> float | None:
    """The highest fitness at `tier` among the candidate's parents; None when none has one."""
    parents = [data.score(edge.parent_id, tier=tier) for edge in data.parents.get(candidate.id, [])]
    return max((score.fitness for score in parents if score is not None), default=None)
