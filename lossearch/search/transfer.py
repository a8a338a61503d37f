"""Transfer: the leaders (and DPO) evaluated on tasks the campaign did not select on.

DiscoPOP's held-out table: a loss found on one task is trained and scored on the others,
and the evaluations are stored with the campaign, so asking again runs nothing new. The other
tasks are the built-in ones, or a user's own data splits: each JSONL file given is a task named
`data:STEM`, trained on the campaign's model (or another) as task `user` is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lossearch.choices import TASK_NAMES, USER_TASK, check_choice
from lossearch.contract import LossSpec, parse_spec
from lossearch.errors import ConfigError
from lossearch.evaluation.cascade import bandit_tier, finetune_tier
from lossearch.failures import CandidateError
from lossearch.progress import ProgressFn, no_progress
from lossearch.ranking import CampaignData, load_campaign_data, rank
from lossearch.reporting.results import NoResults, TransferTable, build_transfer_table, empty_message, transfer_tier
from lossearch.sandbox.interface import SandboxLike
from lossearch.sandbox.local import Sandbox
from lossearch.search.config import CampaignConfig
from lossearch.store import Candidate, Store
from lossearch.store.locate import CampaignHandle

if TYPE_CHECKING:
    from lossearch.evaluation.tasks.data import TaskData
    from lossearch.evaluation.tasks.user import UserSetting

SPLIT_PREFIX = "data:"
"""A user's own data split is held-out task `data:STEM`, STEM its file's name without the suffix."""


def evaluate_on_task(sandbox: SandboxLike, spec: LossSpec, task: str, tier: str, config: CampaignConfig,
                     storage: str | None, split: TaskData | None = None) -> dict[str, Any]:
    """The one place a held-out evaluation is run: `tier`'s metrics of `spec` on `task`, a built-in task or
    the user's data `split`, loaded (raises CandidateError). The finetune tier trains as the campaign did
    (budget, data mode, device, training flags)."""
    if tier == "finetune":
        options = replace(config.finetune_options(), storage=storage)
        if split is not None:
            return finetune_tier(sandbox, spec, USER_TASK, config.seed, replace(options, task_data=split))
        return finetune_tier(sandbox, spec, task, config.seed, options)
    return bandit_tier(sandbox, spec, task, config.seed)


def transfer(handle: CampaignHandle, *, tasks: Sequence[str] | None = None, top: int = 3,
             progress: ProgressFn = no_progress, sandbox: SandboxLike | None = None,
             datasets: Sequence[Path] = (), model: Path | None = None, reward: str | None = None) -> TransferTable:
    """Evaluate the top `top` of the leaderboard, and DPO, on held-out `tasks` and on the user's data splits
    `datasets` (JSONL files, with `model` and `reward`, by default the campaign's); store and tabulate the
    results. Without `datasets`, `tasks` defaults to every built-in task but the campaign's.

    Evaluations already stored are reused, so a second call runs nothing new.
    """
    data = load_campaign_data(handle.store, handle.campaign)
    config = CampaignConfig.from_dict(data.campaign.config)
    tier = transfer_tier(data.campaign.config)
    splits = data_splits(config, datasets, model, reward)
    if splits and tier != "finetune":
        raise ConfigError("transfer to your own data needs the finetune tier, and this campaign ran without it "
                          "(--no-finetune): transfer it to the built-in tasks with --tasks")
    tasks = (*(held_out_tasks(data.task, tasks) if tasks is not None or not splits else ()), *splits)
    leaders = choose_leaders(data, top)
    jobs = []
    for candidate in leaders:
        for task in tasks:
            stored = handle.store.find_evaluation(candidate.id, tier=tier, task=task, seed=config.seed)
            if stored is None:
                jobs.append((candidate, task))
            elif task in splits:
                check_same_split(task, stored.metrics, splits[task])
    if jobs:
        run_jobs(handle.store, config, jobs, tier, progress, sandbox, splits)
        data = load_campaign_data(handle.store, handle.campaign)
    return build_transfer_table(data, [candidate.id for candidate in leaders], tasks, tier, ran=len(jobs))


def data_splits(config: CampaignConfig, datasets: Sequence[Path], model: Path | None,
                reward: str | None) -> dict[str, UserSetting]:
    """Held-out task name -> the user's setting of each split in `datasets`: `model` or the campaign's, `reward`
    or the campaign's, the campaign's truncation lengths."""
    if not datasets:
        if model is not None or reward is not None:
            raise ConfigError("--model and --reward say what to train and score your data splits with: give the "
                              "splits with --dataset")
        return {}
    from lossearch.evaluation.tasks.user import UserSetting  # torch: only when splits are trained

    model = model if model is not None else (Path(config.model) if config.model else None)
    if model is None:
        raise ConfigError(f"the campaign ran on task {config.task}, not on a model of yours: give --model to train "
                          "on your data splits")
    splits: dict[str, UserSetting] = {}
    for dataset in datasets:
        name = SPLIT_PREFIX + Path(dataset).stem
        if name in splits:
            raise ConfigError(f"two data splits are named {name}: give files of different names")
        splits[name] = UserSetting(model.resolve(), Path(dataset).resolve(), reward or config.reward,
                                   max_prompt_tokens=config.max_prompt_tokens,
                                   max_response_tokens=config.max_response_tokens)
    return splits


def check_same_split(task: str, metrics: Mapping[str, Any], split: UserSetting) -> None:
    """A stored evaluation of data split `task` is reused only for the same file and model."""
    stored = (metrics.get("dataset"), metrics.get("model"))
    if stored != (str(split.dataset), str(split.model)):
        raise ConfigError(f"{task} was measured on {stored[0]} with model {stored[1]}; this is {split.dataset} with "
                          f"{split.model}: give the file another name to transfer to it too")


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
             progress: ProgressFn, sandbox: SandboxLike | None, splits: Mapping[str, UserSetting]) -> None:
    """Run and record each (candidate, task) evaluation; a failure is recorded too, with no fitness. An
    evaluation on a data split records its file and model."""
    own_sandbox = sandbox is None
    runner = sandbox or Sandbox()
    loaded: dict[str, TaskData] = {}  # each split's files are read and hashed once, not once a job
    try:
        for done, (candidate, task) in enumerate(jobs):
            progress(f"{candidate.name} on {task}", done, len(jobs))
            started = time.monotonic()
            split = splits.get(task)
            if split is not None and task not in loaded:
                from lossearch.evaluation.tasks.load import load_user_task  # torch: only when splits are trained

                loaded[task] = load_user_task(split, config.finetune_options().cache_dir, progress)
            try:
                metrics = evaluate_on_task(runner, parse_spec(candidate.source, candidate.name), task, tier, config,
                                           store.optuna_storage_url(), loaded.get(task))
            except CandidateError as error:
                metrics = {"failure": error.failure.to_dict()}
            if split is not None:
                metrics.update(dataset=str(split.dataset), model=str(split.model))
            store.record_evaluation(candidate.id, tier=tier, task=task, seed=config.seed, metrics=metrics,
                                    fitness=metrics.get("fitness"), seconds=time.monotonic() - started)
        progress("done", len(jobs), len(jobs))
    finally:
        if own_sandbox:
            runner.close()
