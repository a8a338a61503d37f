"""The campaign loop: propose, deduplicate, climb the cascade, record, repeat.

Generation 0 is the seed library. Each later generation chooses parents per
island, asks the proposer for children, stores each child before anything
else happens to it, rejects exact and fingerprint duplicates before any
training, runs static → sanity → bandit, then promotes the best part of the
generation to the finetune tier, then races its leaders: while one of the ranking's best
`race_top` finetuned candidates by mean fitness has fewer than `race_seeds` finetune evaluations,
it is evaluated on its next seed (the campaign's seed + 1, + 2, ...) and the means redone; the
ranking shown orders by a lower confidence bound (lossearch.ranking). Racing goes by the mean,
the bound by the noise: a candidate whose one seed looks best is the one worth more seeds, and
it is shown above steadier ones only once they confirm it. Racing rather than successive halving: a
generation finetunes a handful of candidates, too few to halve, and what needs more seeds is
the one candidate about to be shown (and confirmed) as the leader, whoever it is.

Every step is recorded in the store before the next one starts, and every step
is idempotent given the store: a campaign killed at any instant resumes with
`run_campaign` on the same name, skips what is recorded and redoes only the
step that was cut short. Nothing is lost and no evaluation is recorded twice.
"""

from __future__ import annotations

import itertools
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from lossearch.choices import USER_TASK
from lossearch.contract import source_hash
from lossearch.evaluation.cascade import bandit_tier, finetune_tier, sanity_tier, static_tier
from lossearch.evaluation.finetune.config import FinetuneOptions
from lossearch.evaluation.memo import MEMO_TIERS, recall_or_run
from lossearch.evaluation.tasks.cache import cache_root
from lossearch.evaluation.tasks.load import load_user_task
from lossearch.evaluation.tuning import create_study_storage
from lossearch.failures import CandidateError
from lossearch.fingerprint import (
    SAME_LOSS_DISTANCE,
    closest_rescaling,
    fingerprint_distances,
    index_print,
    possible_twins,
    rescaling_note,
    summarize,
)
from lossearch.ranking import (
    CampaignData,
    best_parent_fitness,
    instruction_stats,
    load_campaign_data,
    operator_stats,
    pooled_spread,
    rank,
    tier_agreement,
)
from lossearch.reporting.results import NoResults
from lossearch.sandbox.interface import SandboxLike
from lossearch.sandbox.local import Sandbox
from lossearch.search.config import CampaignConfig, merge_resumed
from lossearch.search.confirm import ConfirmationReport, ConfirmConfig, confirm_campaign
from lossearch.search.proposers import FailureView, ParentView, Proposal, ProposalContext, Proposer, make_proposer
from lossearch.search.proposers.base import IdeaRecord
from lossearch.search.proposers.syntax import code_size
from lossearch.search.seeds import seed_paths
from lossearch.search.selection import POOL_SIZE, PoolMember, SelectionWeights, choose_parents, member_distance
from lossearch.search.simplify import simplify_child
from lossearch.store import BASELINE_SEED, SANITY_TASK, Candidate, LineageEdge, Store
from lossearch.store.locate import DEFAULT_RUNS_DIR, CampaignHandle, campaign_store


@dataclass
class CampaignStats:
    """What the live display shows; rebuilt from the store, updated as the loop goes."""

    generation: int = 0
    completed_generation: int = -1
    """The last generation whose every step is recorded."""
    proposed: int = 0
    rejected: int = 0
    duplicates: int = 0
    failed: int = 0
    evaluated: int = 0
    finetuned: int = 0
    best_fitness: float | None = None
    best_name: str | None = None
    seconds_per_candidate: float = 0.0
    llm_tokens: int = 0
    llm_cost: float = 0.0
    tier_agreement: str = ""
    """How well the bandit tier's ranking predicts the finetune tier's so far (lossearch.ranking)."""
    llm_calls: int = 0
    message: str = ""
    runs: tuple[float, float] | None = None
    """(done, total) training runs of the candidate being finetuned, for its progress bar; None between."""
    _seconds: list[float] = field(default_factory=list, repr=False)

    def add_seconds(self, seconds: float) -> None:
        self._seconds.append(seconds)
        self.seconds_per_candidate = sum(self._seconds) / len(self._seconds)


@dataclass(frozen=True)
class CampaignOutcome:
    """How a run ended and where to look next."""

    campaign: str
    stop_reason: str
    stats: CampaignStats
    database: str
    """Where the store is, password hidden."""
    confirmation: ConfirmationReport | None = None
    """The confirmation stage's outcome, when it ran."""


class StopCampaign(Exception):
    """Raised inside the loop when a stopping limit is reached; carries the reason."""


class CampaignRunner:
    """Runs one campaign against a store; see the module docstring for the loop."""

    def __init__(self, config: CampaignConfig, store: Store, sandbox: SandboxLike, proposer: Proposer | None = None,
                 on_update: Callable[[CampaignStats], None] | None = None,
                 make_sandbox: Callable[[], SandboxLike] | None = None) -> None:
        self.config = config
        self.store = store
        self.sandbox = sandbox
        self.make_sandbox = make_sandbox or (lambda: Sandbox(sandbox.limits))
        self.proposer = proposer
        self.on_update = on_update or (lambda stats: None)
        self.stats = CampaignStats()
        self.started = time.monotonic()
        self.campaign_id = 0
        self.lock = threading.RLock()  # workers update the stats and the display
        self.leader_refreshed = -math.inf  # when refresh_stats last ranked the whole store
        self.worker_sandboxes: list[SandboxLike] = []
        self.confirmation: ConfirmationReport | None = None
        self.promotion_reasons: dict[int, str] = {}  # candidate id -> rule, baseline or random
        self.distances: dict[tuple[int, int], float] = {}  # fingerprint distances by candidate ids
        self.refused: list[FailureView] = []  # proposals refused as exact copies of stored code, newest first
        self.options = config.finetune_options()

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> CampaignOutcome:
        self.campaign_id = self.open_campaign()
        self.refresh_stats()
        reason = "finished"
        try:
            self.add_seeds()
            last = 0 if self.config.proposer == "none" else self.config.generations
            for generation in range(0, last + 1):
                self.stats.generation = generation
                if generation > 0 and self.config.proposer != "none":
                    self.propose_generation(generation)
                self.evaluate_generation(generation)
                self.promote_generation(generation)
                self.race_leaders()
                self.stats.completed_generation = generation
                self.refresh_stats()
            self.confirm_leaders()
            reason = "evaluated the seed library" if last == 0 else f"reached {last} generation(s)"
            status = "finished"
        except StopCampaign as stop:
            reason, status = str(stop), "stopped"
        except KeyboardInterrupt:
            reason, status = "interrupted (Ctrl-C); resume with the same --name", "stopped"
        except BaseException as error:
            self.store.set_campaign_status(self.campaign_id, "failed", f"{type(error).__name__}: {error}")
            raise
        finally:
            self.close_workers()
        self.store.set_campaign_status(self.campaign_id, status, reason)
        self.stats.message = f"stopped: {reason}"
        self.on_update(self.stats)
        return CampaignOutcome(self.config.name, reason, self.stats, str(self.store), self.confirmation)

    def open_campaign(self) -> int:
        existing = self.store.find_campaign(self.config.name)
        if existing is None:
            return self.store.create_campaign(self.config.name, self.config.to_dict()).id
        self.store.set_campaign_status(existing.id, "running", None)
        return existing.id

    def check_limits(self) -> None:
        """Raise StopCampaign when a limit other than the generation count is reached."""
        config = self.config
        if config.time_limit is not None and time.monotonic() - self.started >= config.time_limit:
            raise StopCampaign(f"reached the time limit of {config.time_limit:g} s")
        if config.max_evals is not None and self.stats.evaluated + self.stats.failed >= config.max_evals:
            raise StopCampaign(f"reached --max-evals {config.max_evals}")
        if config.max_cost is not None and self.stats.llm_cost >= config.max_cost:
            raise StopCampaign(f"reached the LLM cost budget of ${config.max_cost:g}")
        if config.max_tokens is not None and self.stats.llm_tokens >= config.max_tokens:
            raise StopCampaign(f"reached the LLM token budget of {config.max_tokens}")

    # -- generation 0 ----------------------------------------------------------------------
    def add_seeds(self) -> None:
        """Store the seed library as generation 0 (once; a resumed campaign finds them)."""
        existing = {candidate.name for candidate in self.store.candidates(self.campaign_id, generation=0)}
        for index, path in enumerate(seed_paths()):
            if path.stem in existing or path.stem in self.config.without_seeds:
                continue
            self.store.add_candidate(self.campaign_id, source=path.read_text(), name=path.stem,
                                     idea="seed: a known loss from the literature", proposer="seed", model=None,
                                     generation=0, island=index % self.config.islands, parents=())
        self.refresh_stats()

    # -- proposing -------------------------------------------------------------------------
    def propose_generation(self, generation: int) -> None:
        """Ask the proposer for children until the generation holds `population` of them."""
        if getattr(self.proposer, "concurrent", False) and self.config.llm_concurrency > 1:
            self.propose_concurrently(generation)
            return
        rng = random.Random(self.config.seed * 100_003 + generation)
        self.write_notes(generation, rng)
        attempts = 0
        data: CampaignData | None = None
        ranked: list[Candidate] = []
        while len(self.store.candidates(self.campaign_id, generation=generation)) < self.config.population:
            attempts += 1
            if attempts > 5 * self.config.population:
                self.stats.message = f"generation {generation}: the proposer kept repeating itself"
                return
            self.check_limits()
            island = len(self.store.candidates(self.campaign_id, generation=generation)) % self.config.islands
            if data is None:  # one snapshot and ranking for the generation's proposals: nothing is evaluated
                data = self.snapshot()  # while they are made, and each stored child joins it (add_pending)
                ranked = rank(data).candidates
            parents = self.choose_parents(data, ranked, island, generation, rng)
            context = self.proposal_context(data, ranked)
            assert self.proposer is not None  # a campaign without one (`none`) proposes nothing
            proposals = self.proposer.propose(self.parent_views(data, parents), context, rng)
            self.record_llm_usage()
            for proposal in proposals:
                self.store_proposal(proposal, generation, island, data)

    def propose_concurrently(self, generation: int) -> None:
        """`propose_generation` with up to `llm_concurrency` requests in flight, each slot's parents and
        rng drawn in turn from the generation's rng (so what is asked does not depend on which reply
        comes first); each reply is stored as it arrives and, with one worker, its candidate is
        evaluated while the other requests are still out, so the evaluator does not wait on the model."""
        rng = random.Random(self.config.seed * 100_003 + generation)
        assert self.proposer is not None  # only called with a concurrent proposer
        self.write_notes(generation, rng)
        pool = ThreadPoolExecutor(max_workers=self.config.llm_concurrency, thread_name_prefix="lossearch-propose")
        attempts = 0
        try:
            while (stored := len(self.store.candidates(self.campaign_id, generation=generation))) \
                    < self.config.population:
                missing = self.config.population - stored
                attempts += missing
                if attempts > 5 * self.config.population + missing:
                    self.stats.message = f"generation {generation}: the proposer kept repeating itself"
                    return
                self.check_limits()
                data = self.snapshot()
                ranked = rank(data).candidates
                context = self.proposal_context(data, ranked)
                slots = []
                for index in range(missing):
                    island = (stored + index) % self.config.islands
                    parents = self.parent_views(data, self.choose_parents(data, ranked, island, generation, rng))
                    slots.append((island, parents, random.Random(rng.getrandbits(64))))
                islands = {pool.submit(self.proposer.propose, parents, context, slot_rng): island
                           for island, parents, slot_rng in slots}
                for future in as_completed(islands):
                    island = islands[future]
                    proposals = future.result()
                    self.record_llm_usage()
                    for proposal in proposals:
                        self.store_proposal(proposal, generation, island)
                    if self.config.workers <= 1:
                        self.evaluate_generation(generation)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C or a failure does not wait for the model

    def store_proposal(self, proposal: Proposal, generation: int, island: int,
                       data: CampaignData | None = None) -> None:
        """Store a child before anything happens to it (an exact copy of stored code is refused); `data`,
        the snapshot its generation proposes from, takes it in."""
        if len(self.store.candidates(self.campaign_id, generation=generation)) >= self.config.population:
            return
        if self.config.simplify:
            simplified = simplify_child(proposal.source, proposal.name, self.fingerprint_of)
            if simplified.dropped:
                proposal = replace(proposal, source=simplified.source,
                                   idea=f"{proposal.idea}; simplified: {'; '.join(simplified.dropped)}")
        existing = self.store.find_candidate_by_hash(self.campaign_id, source_hash(proposal.source))
        if existing is not None:
            self.stats.duplicates += 1
            # never stored, so the proposer hears of it here (fingerprint twins are in its history)
            message = f"the same code as #{existing.id} {existing.name}: propose something new"
            self.refused.insert(0, FailureView(proposal.name, "duplicate", message))
            del self.refused[5:]
            return
        relations = [(parent_id, proposal.relation) for parent_id in proposal.parent_ids]
        child = self.store.add_candidate(self.campaign_id, source=proposal.source, name=proposal.name,
                                         idea=proposal.idea, proposer=proposal.proposer, model=proposal.model,
                                         generation=generation, island=island, parents=relations,
                                         instruction=proposal.instruction, temperature=proposal.temperature)
        if data is not None:
            data.add_pending(child, [LineageEdge(child.id, parent_id, relation) for parent_id, relation in relations])
        self.stats.proposed += 1
        self.on_update(self.stats)

    def record_llm_usage(self) -> None:
        drain = getattr(self.proposer, "drain_usage", None)
        for usage in (drain() if drain else []):
            self.store.record_llm_call(self.campaign_id, model=usage.model, prompt_tokens=usage.prompt_tokens,
                                       completion_tokens=usage.completion_tokens, cost=usage.cost,
                                       latency=usage.latency, outcome=usage.outcome)
            self.stats.llm_calls += 1
            self.stats.llm_tokens += usage.prompt_tokens + usage.completion_tokens
            self.stats.llm_cost += usage.cost

    # -- choosing parents ------------------------------------------------------------------
    def snapshot(self) -> CampaignData:
        """The campaign as the store holds it now: what ranking and selection read."""
        return load_campaign_data(self.store, self.store.get_campaign_by_id(self.campaign_id))

    def choose_parents(self, data: CampaignData, ranked: Sequence[Candidate], island: int, generation: int,
                       rng: random.Random) -> list[Candidate]:
        """Two parents from the island's pool, its best POOL_SIZE ranked candidates (lossearch.search.selection),
        and its stepping stones: children that are the same loss as a ranked one in other code (2 x DPO), which
        stand at their twin's place, since what an operator makes of them differs from what it makes of
        the twin; parsimony pressure weighs their extra size."""
        # places in the ranking (best: len(ranked)), of the pool's members only: a scan that stops at the pool
        places = ((len(ranked) - position, candidate) for position, candidate in enumerate(ranked))
        pool_places = list(itertools.islice(((place, c) for place, c in places if c.island == island), POOL_SIZE))
        if generation % self.config.migrate_every == 0 and self.config.islands > 1:
            # migration: the best of the neighbouring island joins this island's pool
            neighbour = next(((len(ranked) - position, c) for position, c in enumerate(ranked)
                              if c.island == (island + 1) % self.config.islands), None)
            pool_places += [neighbour] if neighbour is not None and neighbour not in pool_places else []
        pool_places = pool_places or [(len(ranked) - position, c) for position, c in enumerate(ranked[:POOL_SIZE])]
        pool = [candidate for _, candidate in pool_places]
        order = {candidate.id: place for place, candidate in pool_places}
        duplicates = data.memo("duplicates", lambda: [c for c in data.candidates.values() if c.status == "duplicate"])
        stones = [(c, twin) for c in duplicates if c.island == island and (twin := twin_of(c)) in order]
        pool += [c for c, _ in stones]
        order.update({c.id: order[twin] for c, twin in stones})
        printed = data.fingerprints(c.id for c in pool)
        members = [PoolMember(c.id, float(order[c.id]), printed[c.id], len(data.children.get(c.id, ())),
                              code_size(c.source)) for c in pool]
        chosen = choose_parents(members, 2, rng, SelectionWeights(), self.member_distance)
        by_id = {candidate.id: candidate for candidate in pool}
        return [by_id[member.id] for member in chosen]

    def member_distance(self, reference: PoolMember, members: Sequence[PoolMember]) -> list[float]:
        """fingerprint_distances from `reference` to `members`, remembered by candidate ids: a candidate's
        fingerprint never changes, and a distance that sees through beta costs ~16 ms a pair, asked
        3 x pool size times a proposal: choosing parents from the 24 seeds took 1.13 s, remembered
        0.003 s (2-core Xeon, another job running). Those not remembered are computed in one batch."""
        keys = [(min(reference.id, m.id), max(reference.id, m.id)) for m in members]
        missing = [(key, member) for key, member in zip(keys, members) if key not in self.distances]
        if missing:
            found = member_distance(reference, [member for _, member in missing])
            self.distances.update(zip((key for key, _ in missing), found))
        return [self.distances[key] for key in keys]

    def parent_views(self, data: CampaignData, candidates: Sequence[Candidate]) -> list[ParentView]:
        """What the proposer sees of each candidate: its code, its score (fitness with its tier, spread and
        seeds, metrics) and its fingerprint."""
        views = []
        for candidate in candidates:
            score = data.score(candidate.id)
            summaries = data.memo("summaries", dict)  # the leaders' summaries, asked again by every proposal
            if candidate.id not in summaries:
                fingerprint = data.fingerprint(candidate.id)
                summaries[candidate.id] = summarize(fingerprint).describe() if fingerprint else ""
            summary = summaries[candidate.id]
            views.append(ParentView(candidate.id, candidate.name, candidate.source,
                                    score.fitness if score else None, dict(score.metrics) if score else {}, summary,
                                    score.tier if score else None, score.spread if score else None,
                                    score.seeds if score else 0))
        return views

    def proposal_context(self, data: CampaignData, ranked: Sequence[Candidate]) -> ProposalContext:
        """The task, the leaders, DPO and the noise per tier, the records of operators and instructions,
        and for the LLM its own earlier children and latest notes."""
        task = self.config.task
        context = ProposalContext(task=task, task_description=task_description(task),
                                  top=self.parent_views(data, ranked[:5]), failures=self.recent_failures(data))
        if self.config.proposer != "llm":  # the offline proposer reads only its operators' record
            return replace(context, operators=operator_stats(data))
        scores = [score for c in data.candidates.values() for tier in ("bandit", "finetune")
                  if (score := data.score(c.id, task, tier)) is not None]
        noise = {tier: spread for (scored_task, tier), spread in pooled_spread(scores).items() if scored_task == task}
        baseline = {tier: score.fitness for tier in ("bandit", "finetune")
                    if (score := data.baseline_score(task, tier)) is not None}
        notes = self.store.notes(self.campaign_id)
        return replace(context, baseline=baseline, noise=noise, instructions=instruction_stats(data),
                       notes=notes[-1].text if notes else "", history=idea_history(data, noise))

    def write_notes(self, generation: int, rng: random.Random) -> None:
        """Every `notes_every` generations, before its proposals, the proposer's own summary of the
        campaign (an LLM's only)."""
        write = getattr(self.proposer, "write_notes", None)
        every = self.config.notes_every
        if write is None or not every or generation <= 1 or (generation - 1) % every:
            return
        if any(note.generation == generation for note in self.store.notes(self.campaign_id)):
            return  # written before an interruption
        data = self.snapshot()
        written = write(self.proposal_context(data, rank(data).candidates), rng)
        self.record_llm_usage()
        if written is not None:
            author, text = written
            self.store.record_note(self.campaign_id, generation, author=author, text=text)

    def fingerprint_of(self, source: str) -> list[float] | None:
        """The sanity tier's fingerprint of `source` (in the sandbox), or None when it fails a tier."""
        try:
            return list(sanity_tier(self.sandbox, static_tier(source, "candidate"))["fingerprint"])
        except CandidateError:
            return None

    def recent_failures(self, data: CampaignData, count: int = 5) -> list[FailureView]:
        """The proposals refused as exact copies, then the candidates that failed a tier, newest first."""
        failed = data.memo("failed", lambda: [c for c in data.candidates.values() if c.failure_kind][::-1])
        stored = [FailureView(c.name, c.failure_kind or "", c.failure_message or "") for c in failed]
        return (self.refused + stored)[:count]

    # -- evaluating ------------------------------------------------------------------------
    def for_each(self, candidates: Sequence[Candidate], work: Callable[[Candidate, SandboxLike], None]) -> None:
        """Run `work` on each candidate: in turn, or `workers` at a time, each in a sandbox of its own."""
        if self.config.workers <= 1 or len(candidates) <= 1:
            for candidate in candidates:
                self.check_limits()
                work(candidate, self.sandbox)
            return
        # the main sandbox is the first worker; the others are started once and kept
        while len(self.worker_sandboxes) < self.config.workers - 1:
            self.worker_sandboxes.append(self.make_sandbox())
        free: queue.Queue[SandboxLike] = queue.Queue()
        for sandbox in [self.sandbox, *self.worker_sandboxes]:
            free.put(sandbox)

        def task(candidate: Candidate) -> None:
            sandbox = free.get()
            try:
                work(candidate, sandbox)
            finally:
                free.put(sandbox)

        pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="lossearch-worker")
        slots = threading.Semaphore(self.config.workers)  # submit no further than the free workers
        futures = []
        try:
            for candidate in candidates:
                slots.acquire()
                self.check_limits()
                future = pool.submit(task, candidate)
                future.add_done_callback(lambda _: slots.release())
                futures.append(future)
            for future in futures:
                future.result()
        except BaseException:
            self.close_workers()  # kills the running children: their candidates stay resumable
            self.sandbox.close()  # (a local one restarts on its next run)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close_workers(self) -> None:
        for sandbox in self.worker_sandboxes:
            sandbox.close()
        self.worker_sandboxes.clear()

    def evaluate_generation(self, generation: int) -> None:
        """Static, sanity, duplicate check and bandit for every unfinished candidate of the generation."""
        todo = [c for c in self.store.candidates(self.campaign_id, generation=generation)
                if c.status in ("pending", "evaluating")]
        self.for_each(todo, self.evaluate_timed)

    def evaluate_timed(self, candidate: Candidate, sandbox: SandboxLike) -> None:
        started = time.monotonic()
        self.evaluate_candidate(candidate, sandbox)
        with self.lock:
            self.stats.add_seconds(time.monotonic() - started)
            self.refresh_stats(leader=False)

    def evaluate_candidate(self, candidate: Candidate, sandbox: SandboxLike) -> None:
        self.store.update_candidate(candidate.id, status="evaluating")
        try:
            spec = static_tier(candidate.source, candidate.name)
        except CandidateError as error:
            self.fail(candidate, "rejected", "static", error)
            return
        try:
            sanity = self.recorded_or_run(candidate, "sanity", SANITY_TASK, lambda: sanity_tier(sandbox, spec))
            self.store.update_candidate(candidate.id, fingerprint=sanity["fingerprint"], tier="sanity")
            # the seed library is the baseline: every seed is evaluated, near-twins included
            twin = None if candidate.generation == 0 else self.fingerprint_twin(candidate.id, sanity["fingerprint"])
            if twin is not None and twin.fingerprint is not None:  # a twin has one: it was found by it
                # the child is the twin at beta × factor
                distance, factor = closest_rescaling(twin.fingerprint, sanity["fingerprint"])
                message = (f"{TWIN_PREFIX}{twin.id} {twin.name}{rescaling_note(factor)} "
                           f"(fingerprint distance {distance:.3g})")
                self.store.update_candidate(candidate.id, status="duplicate", failure_kind=None,
                                            failure_message=message)
                return
            bandit = self.recorded_or_run(candidate, "bandit", self.config.task,
                                          lambda: bandit_tier(sandbox, spec, self.config.task, self.config.seed))
        except CandidateError as error:
            self.fail(candidate, "failed", "bandit" if self.has_evaluation(candidate.id, "sanity") else "sanity", error)
            return
        self.store.update_candidate(candidate.id, status="evaluated", tier="bandit", fitness=bandit["fitness"])
        self.report_outcome(candidate, bandit["fitness"])

    def fail(self, candidate: Candidate, status: str, tier: str, error: CandidateError) -> None:
        failure = error.failure
        self.store.update_candidate(candidate.id, status=status, tier=tier, failure_kind=failure.kind,
                                    failure_message=failure.message)
        if tier != "finetune":
            self.report_outcome(candidate, None)

    def report_outcome(self, candidate: Candidate, fitness: float | None) -> None:
        """Tell an LLM proposer's model bandit how much its child improved on its parents, per dollar."""
        record = getattr(self.proposer, "record_outcome", None)
        if record is None or not candidate.model:
            return
        parents = [self.bandit_fitness(edge.parent_id) for edge in self.store.parents(candidate.id)]
        baseline = max((value for value in parents if value > -math.inf), default=fitness or 0.0)
        improvement = 0.0 if fitness is None else fitness - baseline
        usage = self.store.llm_usage(self.campaign_id, model=candidate.model)
        record(candidate.model, improvement, usage.cost / max(1, usage.calls))

    def has_evaluation(self, candidate_id: int, tier: str) -> bool:
        return any(e.tier == tier for e in self.store.evaluations(candidate_id=candidate_id))

    def recorded_or_run(self, candidate: Candidate, tier: str, task: str, run: Callable[[], dict],
                        seed: int | None = None) -> dict:
        """The recorded metrics of this tier at `seed` (the campaign's by default), or run it and record
        them before going on."""
        seed = self.config.seed if seed is None else seed
        for evaluation in self.store.evaluations(candidate_id=candidate.id, tier=tier):
            if evaluation.task == task and evaluation.seed == seed:
                return evaluation.metrics
        started = time.monotonic()
        if candidate.proposer == "seed" and tier in MEMO_TIERS:  # the same code every campaign opens with
            metrics = recall_or_run(cache_root(self.options.cache_dir), source_hash(candidate.source), tier, task,
                                    seed, self.config.executor, run)
        else:
            metrics = run()
        fitness = metrics.get("fitness")
        self.store.record_evaluation(candidate.id, tier=tier, task=task, seed=seed, metrics=metrics,
                                     fitness=fitness, seconds=time.monotonic() - started)
        return metrics

    def fingerprint_twin(self, candidate_id: int, fingerprint: Sequence[float]) -> Candidate | None:
        """An earlier candidate that is the same loss in other words, if any, its beta rescaling included
        (`same_loss`); candidates stored before fingerprints held rescalings compare by the plain distance.
        The store's print index rules most stored prints out from 1.9 KB each (`possible_twins`); only the
        rest have their whole fingerprints read and compared."""
        self.index_prints(below=candidate_id)
        indexed = self.store.print_index(self.campaign_id, below=candidate_id, leave_out=("duplicate", "rejected"))
        near = [i for (i, _), keep in zip(indexed, possible_twins(fingerprint, [value for _, value in indexed]))
                if keep]
        for start in range(0, len(near), TWIN_BATCH):  # ids ascend: the earliest twin is found first
            printed = self.store.fingerprints_of(near[start:start + TWIN_BATCH])
            ids = [i for i in near[start:start + TWIN_BATCH] if printed.get(i)]
            distances = fingerprint_distances(fingerprint, [printed[i] or () for i in ids])  # one pass a batch
            twin = next((other for other, distance in zip(ids, distances) if distance < SAME_LOSS_DISTANCE), None)
            if twin is not None:
                return self.store.get_candidate(twin)
        return None

    def index_prints(self, below: int) -> None:
        """Index the stored prints under id `below` that have no index row yet (a store from before the
        index, the candidates stored since the last check, a print that changed)."""
        for batch in self.store.unindexed_fingerprints(self.campaign_id, below=below):
            self.store.add_print_index(self.campaign_id, {i: index_print(values) for i, values in batch})

    # -- promoting to finetune -------------------------------------------------------------
    def promoted(self, generation: int) -> list[tuple[Candidate, str]]:
        """Who the generation sends to the finetune tier, and why: the best `promote_share` of its bandit
        survivors by their bandit score (the ranking rule, at the bandit tier, among the generation),
        DPO in generation 0, and one survivor the rule passed over, drawn at random: its finetune
        score tells whether the bandit tier misleads the campaign (lossearch.ranking.tier_agreement).
        Once the earlier generations' random picks have done as well as the rule's, the rule keeps
        only the larger half of its share and the rest is drawn at random too: a campaign does not
        keep trusting a cheap tier it has measured to be no guide."""
        data = self.snapshot()
        members = [c.id for c in data.candidates.values() if c.generation == generation]
        survivors = rank(data, tier="bandit", among=members).candidates
        share = max(1, math.ceil(self.config.promote_share * len(survivors))) if survivors else 0
        drawn = 1 + (share // 2 if tier_agreement(data, before_generation=generation).rule_no_better_than_chance else 0)
        picked = [(candidate, "rule") for candidate in survivors[: share + 1 - drawn]]
        if generation == 0:
            picked += [(c, "baseline") for c in survivors if c.name == BASELINE_SEED and (c, "rule") not in picked]
        passed_over = [c for c in survivors if all(c is not other for other, _ in picked)]
        # the same draws on a resume: seeded by the campaign and the generation
        rng = random.Random(self.config.seed * 7919 + generation)
        picked += [(c, "random") for c in rng.sample(passed_over, min(drawn, len(passed_over)))]
        return picked

    def bandit_fitness(self, candidate_id: int) -> float:
        for evaluation in self.store.evaluations(candidate_id=candidate_id, tier="bandit"):
            if evaluation.fitness is not None:
                return evaluation.fitness
        return -math.inf

    def promote_generation(self, generation: int) -> None:
        if self.config.finetune:
            todo = [(c, reason) for c, reason in self.promoted(generation) if c.tier != "finetune"]
            self.promotion_reasons.update({c.id: reason for c, reason in todo})
            self.for_each([c for c, _ in todo], self.finetune_candidate)

    def finetune_candidate(self, candidate: Candidate, sandbox: SandboxLike, seed: int | None = None) -> None:
        """The finetune tier at the campaign's seed, or at another (`race_leaders`)."""
        seed = self.config.seed if seed is None else seed
        what = f"finetuning {candidate.name}" + ("" if seed == self.config.seed else f", seed {seed}")

        def progress(description: str, done: float, total: float) -> None:  # the candidate's progress bar
            with self.lock:
                self.stats.message, self.stats.runs = f"{what}: {description}", (done, total)
                self.on_update(self.stats)

        progress("starting", 0, 1)
        spec = static_tier(candidate.source, candidate.name)
        started = time.monotonic()
        suffix = "" if seed == self.config.seed else f"-s{seed}"
        reason = self.promotion_reasons.get(candidate.id, "rule") if seed == self.config.seed else "race"
        try:
            metrics = self.recorded_or_run(candidate, "finetune", self.config.task, lambda: {**finetune_tier(
                sandbox, spec, self.config.task, seed, self.finetune_options(), storage=self.store.optuna_storage_url(),
                study_name=f"{self.config.name}-{candidate.id}-{self.config.task}{suffix}", progress=progress),
                "promotion": reason}, seed=seed)
        except CandidateError as error:
            with self.lock:
                self.stats.runs = None
            if seed != self.config.seed:  # a loss that fails on one of its leader's seeds fails, as on the first
                error = CandidateError(error.failure.kind, f"on seed {seed}: {error.failure.message}")
            self.fail(candidate, "failed", "finetune", error)
            return
        fitness = self.snapshot().score(candidate.id)
        self.store.update_candidate(candidate.id, tier="finetune",
                                    fitness=fitness.fitness if fitness is not None else metrics["fitness"])
        with self.lock:
            self.stats.runs = None
            self.stats.add_seconds(time.monotonic() - started)
            self.refresh_stats(leader=False)

    def finetune_options(self) -> FinetuneOptions:
        """The campaign's finetune options; a user's model and pairs are loaded (their files hashed, and
        prepared the first time) once, not per evaluation."""
        with self.lock:
            if self.options.setting is not None and self.options.task_data is None:
                def progress(description: str, done: float, total: float) -> None:
                    self.stats.message = f"{description} ({done:.0f} of {total:.0f})"
                    self.on_update(self.stats)

                task = load_user_task(self.options.setting, self.options.cache_dir, progress)
                self.options = replace(self.options, task_data=task)
            return self.options

    def race_leaders(self) -> None:
        """Evaluate the ranking's `race_top` leaders, and the `race_top` finetuned candidates of best mean
        fitness, on more seeds until each has `race_seeds` (or has fallen out of the top): one seed more
        per candidate per round, then again. The leaders are always raced, so none is shown on fewer
        seeds; the best means only while the generation's allowance lasts."""
        if not self.config.finetune or self.config.race_seeds <= 1:
            return
        previous: list[tuple[int, int]] = []
        # the best means: at most twice what the top needs per generation, since each raced candidate
        # that falls back makes room for the next, and many lucky one-seed candidates must not stall it
        allowance = 2 * self.config.race_top * (self.config.race_seeds - 1)
        while True:
            data = self.snapshot()
            shown = [(c, score) for c, score in rank(data).ranked if score.tier == "finetune"]
            by_mean = sorted(shown, key=lambda pair: (-pair[1].fitness, pair[0].id))
            wanted = shown[: self.config.race_top] + (by_mean[: self.config.race_top] if allowance > 0 else [])
            lacking = {c.id: (c, score.seeds) for c, score in wanted if score.seeds < self.config.race_seeds}
            state = sorted((id_, seeds) for id_, (_, seeds) in lacking.items())
            if not lacking or state == previous:  # nothing left to race, or a round that added no seed
                return
            previous = state
            leaders = {c.id for c, _ in shown[: self.config.race_top]}
            allowance -= sum(1 for id_ in lacking if id_ not in leaders)
            self.for_each([c for c, _ in lacking.values()], self.race_once)

    def race_once(self, candidate: Candidate, sandbox: SandboxLike) -> None:
        """One more finetune evaluation of `candidate`, on the first seed after the campaign's it lacks."""
        used = {e.seed for e in self.store.evaluations(candidate_id=candidate.id, tier="finetune")
                if e.task == self.config.task}
        seed = next(self.config.seed + k for k in range(1, len(used) + 2) if self.config.seed + k not in used)
        self.finetune_candidate(candidate, sandbox, seed=seed)

    # -- confirming the leaders ------------------------------------------------------------
    def confirm_leaders(self) -> None:
        """The confirmation stage (lossearch.search.confirm), once the generations are done."""
        if not (self.config.finetune and self.config.confirm) or self.config.proposer == "none":
            return
        def progress(description: str, done: float, total: float) -> None:
            with self.lock:
                self.stats.message = f"{description} ({done:.0f} of {total:.0f} runs)"
                self.on_update(self.stats)

        handle = CampaignHandle(self.store, self.store.get_campaign_by_id(self.campaign_id), str(self.store))
        try:
            config = ConfirmConfig(top=self.config.confirm_top, seeds=self.config.confirm_seeds)
            self.confirmation = confirm_campaign(handle, config, sandbox=self.sandbox, progress=progress,
                                                 options=self.finetune_options())
        except NoResults as nothing:
            self.stats.message = str(nothing)

    # -- the display's numbers ---------------------------------------------------------------
    def refresh_stats(self, *, leader: bool = True) -> None:
        """The display's counts (exact: --max-evals reads them) and, with `leader`, the leader and the
        tiers' agreement, which need a snapshot of the whole store. After each evaluation the leader is
        redone at most every LEADER_EVERY seconds: reloading the store after each of generation 0's 41
        seeds was most of a memoized seeds-only campaign's bookkeeping."""
        stats = self.stats
        counts = self.store.candidate_counts(self.campaign_id)
        stats.proposed, stats.finetuned = counts["proposed"], counts["finetuned"]
        stats.rejected, stats.duplicates = counts.get("rejected", 0), counts.get("duplicate", 0)
        stats.failed, stats.evaluated = counts.get("failed", 0), counts.get("evaluated", 0)
        if leader or time.monotonic() - self.leader_refreshed >= LEADER_EVERY:
            self.leader_refreshed = time.monotonic()
            data = self.snapshot()
            ranked = rank(data).ranked
            if ranked:
                best, score = ranked[0]
                stats.best_fitness, stats.best_name = score.fitness, f"#{best.id} {best.name}"
            if stats.finetuned:
                stats.tier_agreement = tier_agreement(data).describe()
        usage = self.store.llm_usage(self.campaign_id)
        stats.llm_tokens, stats.llm_cost, stats.llm_calls = usage.total_tokens, usage.cost, usage.calls
        self.on_update(stats)


LEADER_EVERY = 1.0
"""Seconds between the display's re-rankings of the whole store while candidates are evaluated."""
TWIN_PREFIX = "same loss as #"
TWIN_BATCH = 1000
"""Whole fingerprints read and compared at a time by the duplicate check, among those its index keeps."""
"""How a fingerprint duplicate's message starts; `twin_of` reads the twin's id back."""


def twin_of(candidate: Candidate) -> int | None:
    """The id of the candidate a fingerprint duplicate is the same loss as, or None."""
    message = candidate.failure_message or ""
    if candidate.status != "duplicate" or not message.startswith(TWIN_PREFIX):
        return None
    digits = message[len(TWIN_PREFIX):].split(" ", 1)[0]
    return int(digits) if digits.isdigit() else None


def idea_history(data: CampaignData, noise: Mapping[str, float], limit: int = 40) -> list[IdeaRecord]:
    """The LLM's children, newest first: each idea, its outcome and its fitness change over its best
    parent at the highest tier both have, with that tier's noise."""
    records = []
    children = sorted((c for c in data.candidates.values() if c.proposer == "llm"), key=lambda c: -c.id)
    for child in children[:limit]:
        if child.status == "duplicate":
            outcome, detail = "duplicate", child.failure_message or ""
        elif child.failure_kind or child.status in ("failed", "rejected"):
            outcome, detail = "failed", f"{child.failure_kind}: {child.failure_message}"
        else:
            outcome, detail = ("scored", "") if child.fitness is not None else ("pending", "")
        tier, change = None, None
        score = data.score(child.id)
        if score is not None:
            best = best_parent_fitness(data, child, score.tier)
            tier, change = score.tier, None if best is None else score.fitness - best
        records.append(IdeaRecord(child.name, child.idea, outcome, detail, tier, change,
                                  noise.get(tier) if tier else None, child.instruction))
    return records


def task_description(task: str) -> str:
    """One paragraph on what the task's oracle rewards, for the LLM proposer's prompt."""
    return {
        "sentiment": "Generate positive movie reviews; the oracle scores sentiment. Fitness is the reward at a KL "
                     "budget.",
        "sort": "Output the prompt's digits sorted; the oracle checks correctness. Fitness is the reward at a KL "
                "budget.",
        "length": "The oracle penalizes length while the preference labels prefer longer answers: do not exploit "
                  "length.",
        "noisy": "As sentiment, with a third of the preference labels flipped: be robust to label noise.",
        USER_TASK: "The user's own model and preference pairs: fitness is the preference accuracy on held-out "
                   "pairs, or the user's reward of sampled answers when they gave one.",
    }.get(task, task)


def build_proposer(config: CampaignConfig) -> Proposer | None:
    """The proposer the configuration names (None for `none`)."""
    if config.proposer == "none":
        return None
    if config.proposer == "llm":
        return make_proposer("llm", base_url=config.llm_base_url, models=config.llm_models)
    return make_proposer("mutation", pair_share=config.pair_share)


def resolve_config(store: Store, requested: CampaignConfig, given: Collection[str] | None = None) -> CampaignConfig:
    """A new campaign's configuration (`requested`), or the stored one with the new limits of `given`."""
    existing = store.find_campaign(requested.name)
    if existing is None:
        return requested
    given = ALL_FIELDS if given is None else given
    return merge_resumed(CampaignConfig.from_dict(existing.config), requested, given)


ALL_FIELDS = frozenset(f.name for f in fields(CampaignConfig))


def run_campaign(config: CampaignConfig, *, given: Collection[str] | None = None, db: str | None = None,
                 runs_dir: str | Path = DEFAULT_RUNS_DIR,
                 on_update: Callable[[CampaignStats], None] | None = None) -> CampaignOutcome:
    """Start the campaign `config.name`, or resume it where it stopped.

    On a resume only the fields named in `given` (the flags a user gave; every field when
    None) are compared with the stored configuration: new stopping limits and executors are
    taken, any other change is refused (lossearch.search.config.merge_resumed).
    """
    store = campaign_store(config.name, db, runs_dir)
    try:
        config = resolve_config(store, config, given)
        proposer = build_proposer(config)
        make_sandbox = sandbox_factory(config)
        if config.finetune:  # Optuna's tables, made once here: workers creating them at once collide
            create_study_storage(store.optuna_storage_url())
        sandbox = make_sandbox()
        try:
            return CampaignRunner(config, store, sandbox, proposer, on_update, make_sandbox).run()
        finally:
            sandbox.close()
    finally:
        store.close()


def sandbox_factory(config: CampaignConfig) -> Callable[[], SandboxLike]:
    """Where evaluations run: local sandboxes, or sandboxes on Ray workers."""
    if config.executor == "ray":
        from lossearch.sandbox.ray_sandbox import RaySandbox, connect

        connect(config.ray_address)  # fails early, in one line, without Ray or a cluster
        return lambda: RaySandbox(address=config.ray_address)
    return Sandbox
