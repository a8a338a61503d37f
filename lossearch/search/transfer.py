"""Transfer: the leaders (and DPO) evaluated on tasks the campaign did not select on.

DiscoPOP's held-out table: a loss found on one task is trained and scored on the others,
and the evaluations are stored with the campaign, so asking again runs nothing new.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from lossearch.choices import TASK_NAMES, check_choice
from lossearch.contract import LossSpec, parse_spec
from lossearch.errors import ConfigError
from lossearch.evaluation.cascade import bandit_tier, finetune_tier
from lossearch.evaluation.finetune.config import FinetuneOptions
from lossearch.failures import CandidateError
from lossearch.progress import ProgressFn, no_progress
from lossearch.ranking import CampaignData, load_campaign_data, rank
from lossearch.reporting.results import NoResults, TransferTable, build_transfer_table, empty_message, transfer_tier
from lossearch.sandbox.interface import SandboxLike
from lossearch.sandbox.local import Sandbox
from lossearch.search.config import CampaignConfig
from lossearch.store import Candidate, Store
from lossearch.store.locate import CampaignHandle


def evaluate_on_task(sandbox: SandboxLike, spec: LossSpec, task: str, tier: str, config: CampaignConfig,
                     storage: str | None) -> dict[str, Any]:
    """The one place a held-out evaluation is run: `tier`'s metrics of `spec` on `task` (raises CandidateError)."""
    if tier == "finetune":
        return finetune_tier(sandbox, spec, task, config.seed, FinetuneOptions(budget=config.budget, storage=storage))
    return bandit_tier(sandbox, spec, task, config.seed)


def transfer(handle: CampaignHandle, *, tasks: Sequence[str] | None = None, top: int = 3,
             progress: ProgressFn = no_progress, sandbox: SandboxLike | None = None) -> TransferTable:
    """Evaluate the top `top` of the leaderboard, and DPO, on held-out `tasks`; store and tabulate the results.

    Evaluations already stored are reused, so a second call runs nothing new.
    """
    data = load_campaign_data(handle.store, handle.campaign)
    config = CampaignConfig.from_dict(data.campaign.config)
    tasks = held_out_tasks(data.task, tasks)
    leaders = choose_leaders(data, top)
    tier = transfer_tier(data.campaign.config)
    jobs = [(candidate, task) for candidate in leaders for task in tasks
            if handle.store.find_evaluation(candidate.id, tier=tier, task=task, seed=config.seed) is None]
    if jobs:
        run_jobs(handle.store, config, jobs, tier, progress, sandbox)
        data = load_campaign_data(handle.store, handle.campaign)
    return build_transfer_table(data, [candidate.id for candidate in leaders], tasks, tier, ran=len(jobs))


def held_out_tasks(selected_on: str, tasks: Sequence[str] | None) -> tuple[str, ...]:
    """The tasks asked for (checked, without repeats), or every task but the one selected on."""
    if tasks is None:
        return tuple(task for task in TASK_NAMES if task != selected_on)
    for task in tasks:
        check_choice(task, TASK_NAMES, "task")
        if task == selected_on:
            raise ConfigError(f"the campaign selects on {task!r}; transfer evaluates the other tasks")
    if not tasks:
        raise ConfigError("give at least one task")
    return tuple(dict.fromkeys(tasks))


def choose_leaders(data: CampaignData, top: int) -> list[Candidate]:
    """The first `top` of the ranking, and DPO when it has a score and is not among them."""
    if top < 1:
        raise ConfigError("--top must be at least 1")
    leaders = rank(data).candidates[:top]
    if not leaders:
        raise NoResults(empty_message(data, data.task))
    baseline = data.baseline
    if baseline is not None and baseline not in leaders and data.score(baseline.id) is not None:
        leaders.append(baseline)
    return leaders


def run_jobs(store: Store, config: CampaignConfig, jobs: Sequence[tuple[Candidate, str]], tier: str,
             progress: ProgressFn, sandbox: SandboxLike | None) -> None:
    """Run and record each (candidate, task) evaluation; a failure is recorded too, with no fitness."""
    own_sandbox = sandbox is None
    runner = sandbox or Sandbox()
    try:
        for done, (candidate, task) in enumerate(jobs):
            progress(f"{candidate.name} on {task}", done, len(jobs))
            started = time.monotonic()
            try:
                metrics = evaluate_on_task(runner, parse_spec(candidate.source, candidate.name), task, tier, config,
                                           store.optuna_storage_url())
            except CandidateError as error:
                metrics = {"failure": error.failure.to_dict()}
            store.record_evaluation(candidate.id, tier=tier, task=task, seed=config.seed, metrics=metrics,
                                    fitness=metrics.get("fitness"), seconds=time.monotonic() - started)
        progress("done", len(jobs), len(jobs))
    finally:
        if own_sandbox:
            runner.close()
