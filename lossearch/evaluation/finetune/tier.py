"""The finetune tier (TRUSTED: the parent's side of every run).

One candidate evaluation is an Optuna search over beta (lossearch.evaluation.tuning); each
(beta, seed) run is one sandbox job: the parent copies in the base parameters and the pairs,
the child trains (lossearch.evaluation.finetune.train) and writes the trained parameters back,
the parent scores them (lossearch.evaluation.finetune.score).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence, Union

from lossearch.choices import USER_TASK
from lossearch.contract import LossSpec, missing_scores
from lossearch.errors import ConfigError
from lossearch.evaluation.finetune.config import Budget, FinetuneOptions, RunConfig
from lossearch.evaluation.finetune.device import check_fits, resolve_device, resolve_precision
from lossearch.evaluation.finetune.score import Scorer
from lossearch.evaluation.fitness import curve_by_seed, fitness_at_budget
from lossearch.evaluation.tasks.data import TaskData
from lossearch.evaluation.tasks.load import load_task, load_user_task
from lossearch.evaluation.tasks.scores import MISSING_USER_SCORES
from lossearch.evaluation.tuning import Values, tune_hyperparameters
from lossearch.failures import CandidateError
from lossearch.sandbox.interface import SandboxLike, SandboxLimits


def load_task_data(task: str, options: FinetuneOptions) -> TaskData:
    """The task `task` names: `user` is the setting in `options`, any other a catalog task; an already
    loaded one in `options` when it is that task."""
    if options.task_data is not None and options.task_data.name == task:
        return options.task_data
    if task == USER_TASK:
        if options.setting is None:
            raise ConfigError("task 'user' is your own model and pairs: give --model and --dataset")
        return load_user_task(options.setting, options.cache_dir, options.progress)
    return load_task(task, options.cache_dir, options.progress)


def sandbox_limits(task: TaskData, budget: Budget, options: FinetuneOptions, device: str) -> SandboxLimits:
    """Wall time, CPU time, memory and file size for one run, scaled by the model and the budget."""
    model_bytes = 4 * task.parameters
    wall = 300.0 + 2.0 * budget.steps * max(1.0, task.parameters / 1e6)
    memory = (2 << 30) + 24 * model_bytes + (64 << 30 if device.startswith("cuda") else 0)
    return SandboxLimits(wall_seconds=wall, cpu_seconds=int(wall * options.threads) + 10, memory_bytes=memory,
                         file_bytes=max(64 << 20, 2 * model_bytes + (16 << 20)), threads=options.threads)


def run_config(task: TaskData, spec: LossSpec, budget: Budget, options: FinetuneOptions, beta: float, seed: int,
               device: str, precision: str) -> RunConfig:
    online = None
    if options.data == "online":
        online = {"task": task.name, "every": budget.online_every, "max_new_tokens": task.max_new_tokens,
                  "eos_id": task.eos_id, "pad_id": task.pad_id}
    return RunConfig(beta=beta, seed=seed, steps=budget.steps, pairs=min(budget.pairs, len(task.train)),
                     batch_size=budget.batch_size, lr=budget.lr, uses_kl=spec.uses_kl, online=online, device=device,
                     precision=precision, uses_scores=spec.uses_scores,
                     uses_tokens=spec.uses_tokens, grad_accum=options.grad_accum,
                     group_by_length=options.group_by_length)


def job_inputs(task: TaskData, config: RunConfig) -> dict[str, Any]:
    """The files a training child reads: the base parameters, the pairs, and, for a loss that reads them
    on offline pairs, their scores (`check_scores` made sure there are some)."""
    inputs = {"base.safetensors": task.parameters_file, "pairs.safetensors": task.pairs_file}
    if config.uses_scores and not config.online and task.scores_file is not None:
        inputs["scores.safetensors"] = task.scores_file
    return inputs


def check_scores(spec: LossSpec, task: TaskData, options: FinetuneOptions) -> None:
    """Fail a loss that reads scores on offline data that has none (online pairs carry their labellers' rewards)."""
    if spec.uses_scores and task.scores_file is None and options.data == "offline":
        raise missing_scores(spec, MISSING_USER_SCORES if task.name == USER_TASK else f"task {task.name} has no scores")


def train_in_sandbox(sandbox: SandboxLike, spec: LossSpec, task: TaskData, config: RunConfig,
                     limits: SandboxLimits, hyperparameters: Optional[Mapping[str, float]] = None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one training job; (the child's report, the trained parameters)."""
    from safetensors.torch import load as load_safetensors

    payload = {"source": spec.source, "name": spec.name, "run": asdict(config), "model_config": task.model_config,
               "hyperparameters": dict(hyperparameters or {})}
    inputs = job_inputs(task, config)
    result = sandbox.run("finetune", payload, limits, inputs=inputs, outputs=("policy.safetensors",))
    result.raise_for_failure()
    data = result.outputs.get("policy.safetensors")
    if not data:
        raise CandidateError("crash", "the training child wrote no parameters")
    try:
        parameters = load_safetensors(data)
    except Exception as error:  # a malformed file is the child's failure, not ours
        raise CandidateError("crash", f"the training child wrote unreadable parameters: {error}") from None
    report = result.value if isinstance(result.value, dict) else {}
    return {"seconds": result.seconds, "train_seconds": report.get("train_seconds"),
            "final_loss": report.get("final_loss"), "isolation": result.isolation}, parameters


def train_many_in_sandbox(sandbox: SandboxLike, spec: LossSpec, task: TaskData, configs: Sequence[RunConfig],
                          limits: SandboxLimits, hyperparameters: Optional[Mapping[str, float]] = None
                          ) -> list[tuple[dict[str, Any], Optional[dict[str, Any]]]]:
    """Run several training runs (sharing the loss's `hyperparameters` beside beta) as one stacked job;
    per run (its report, its trained parameters, or None where it diverged: the report's `failure` says how)."""
    from safetensors.torch import load as load_safetensors

    payload = {"source": spec.source, "name": spec.name, "runs": [asdict(config) for config in configs],
               "model_config": task.model_config, "hyperparameters": dict(hyperparameters or {})}
    inputs = job_inputs(task, configs[0])
    names = tuple(f"policy_{index}.safetensors" for index in range(len(configs)))
    stacked = replace(limits, wall_seconds=limits.wall_seconds * len(configs),
                      cpu_seconds=limits.cpu_seconds * len(configs), memory_bytes=limits.memory_bytes * 2)
    result = sandbox.run("finetune_many", payload, stacked, inputs=inputs, outputs=names)
    result.raise_for_failure()
    value = result.value if isinstance(result.value, dict) else {}
    reports = value.get("runs")
    if not isinstance(reports, list) or len(reports) != len(configs):
        raise CandidateError("crash", "the stacked training child reported no runs")
    done: list[tuple[dict[str, Any], Optional[dict[str, Any]]]] = []
    for name, report in zip(names, reports):
        run_report = {"seconds": result.seconds, "train_seconds": value.get("train_seconds"),
                      "final_loss": report.get("final_loss"), "isolation": result.isolation, "stacked": len(configs),
                      "failure": report.get("failure")}
        data = result.outputs.get(name)
        if report.get("failure") or not data:
            done.append((run_report, None))
            continue
        try:
            done.append((run_report, load_safetensors(data)))
        except Exception as error:  # a malformed file is the child's failure, not ours
            raise CandidateError("crash", f"the training child wrote unreadable parameters: {error}") from None
    return done


def stacks_runs(task: TaskData, options: FinetuneOptions, device: str, precision: str) -> bool:
    """Whether independent runs train as one stacked pass (lossearch.evaluation.finetune.stacked):
    only where it measured faster than the runs one after another (benchmarks/multi_run.py). On a
    2-core EPYC with bf16 instructions, 10-12 runs of 40 steps took 0.80x the sequential time in bf16,
    and 0.94-0.99x in fp32 (1.06x at 30 runs), where the step is bound by matrix-product arithmetic that stacking cannot
    reduce: so not on a CPU in fp32. On CUDA the small model's step is bound by kernel launches,
    which stacking divides among the runs (benchmarks/gpu_check.sh measures it where a GPU is)."""
    from lossearch.evaluation.tasks.llama import supports

    fast = device.startswith("cuda") or precision == "bf16"
    whole_random_batches = options.grad_accum == 1 and not options.group_by_length
    unscaled = precision != "fp16"  # the stacked pass has no loss scaling
    return fast and unscaled and options.data == "offline" and whole_random_batches and supports(task.model_config)


# what run_many returns per run: its metrics, or the divergence that failed it
RunOutcome = Union[dict[str, Any], CandidateError]


@dataclass(frozen=True)
class FinetuneRunner:
    """Trains and scores single (beta, seed) runs of one loss on one task: the tier's unit of work.

    Beta tuning (`finetune_candidate`) and the confirmation stage (lossearch.search.confirm) both
    call `run`; every run of one runner shares the task, the budget, the device and the precision.
    """

    sandbox: SandboxLike
    spec: LossSpec
    task: TaskData
    budget: Budget
    options: FinetuneOptions
    device: str
    precision: str
    limits: SandboxLimits
    scorer: Scorer

    def run(self, beta: float, seed: int, values: Values = MappingProxyType({})) -> dict[str, Any]:
        """Train at `beta` and the loss's other hyperparameters `values` (its defaults where absent) with
        `seed` (initial order of batches, sampling of the evaluation prompts) in a sandbox child, then
        score here: the run's metrics, `fitness` among them."""
        config = run_config(self.task, self.spec, self.budget, self.options, beta, seed, self.device, self.precision)
        report, parameters = train_in_sandbox(self.sandbox, self.spec, self.task, config, self.limits, values)
        return {**point(beta, values), "seed": seed, **self.scorer.score(parameters, seed), **report}

    @property
    def stacks(self) -> bool:
        return stacks_runs(self.task, self.options, self.device, self.precision)

    def run_many(self, runs: Sequence[tuple[float, int, Values]]) -> list[RunOutcome]:
        """Train and score independent (beta, seed, values) runs: as one stacked pass where `stacks` and
        the runs share their `values`, else one after another; per run its metrics as `run` gives them,
        or the `nan` CandidateError of a run that diverged (any other failure raises, as in `run`)."""
        shared = {tuple(sorted(values.items())) for _, _, values in runs}
        if len(runs) < 2 or not self.stacks or len(shared) > 1:
            return [self.run_or_divergence(beta, seed, values) for beta, seed, values in runs]
        values = runs[0][2]
        configs = [run_config(self.task, self.spec, self.budget, self.options, beta, seed, self.device,
                              self.precision) for beta, seed, _ in runs]
        outcomes: list[RunOutcome] = []
        trained = train_many_in_sandbox(self.sandbox, self.spec, self.task, configs, self.limits, values)
        for (beta, seed, _), (report, parameters) in zip(runs, trained):
            failure = report.pop("failure")
            if parameters is None:
                failure = failure or {"kind": "crash", "message": "the training child wrote no parameters"}
                error = CandidateError(failure["kind"], failure["message"])
                if failure["kind"] != "nan":
                    raise error
                outcomes.append(error)
            else:
                outcomes.append({**point(beta, values), "seed": seed, **self.scorer.score(parameters, seed), **report})
        return outcomes

    def run_or_divergence(self, beta: float, seed: int, values: Values) -> RunOutcome:
        try:
            return self.run(beta, seed, values)
        except CandidateError as error:
            if error.failure.kind != "nan":
                raise
            return error

    def curve_fitness(self, runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Fitness at the task's KL budget from runs at several betas: each seed's curve read at the
        budget (lossearch.evaluation.fitness), then the mean and spread over seeds."""
        by_seed = {seed: fitness_at_budget(curve, self.task.kl_budget, self.task.kl_penalty, self.task.fitness_floor)
                   for seed, curve in curve_by_seed(runs).items()}
        values = [value for value in by_seed.values() if value is not None]
        return {"fitness": statistics.fmean(values) if values else None,
                # one seed says nothing of the spread over seeds: unknown, not 0
                "fitness_std": statistics.pstdev(values) if len(values) > 1 else None,
                "fitness_by_seed": {str(seed): value for seed, value in by_seed.items()},
                "curve_betas": sorted({float(run["beta"]) for run in runs}),
                "curve_points": curve_points(runs)}

    def describe(self) -> dict[str, Any]:
        """What every run's score depends on beside its beta and seed."""
        return {"task": self.task.name, "budget": asdict(self.budget), "data": self.options.data,
                "device": self.device, "precision": self.precision, "grad_accum": self.options.grad_accum,
                "group_by_length": self.options.group_by_length, "artifact": self.task.key,
                "base_parameters": self.task.parameters, "kl_budget": self.task.kl_budget,
                "kl_penalty": self.task.kl_penalty,
                "fitness_floor": self.task.fitness_floor if math.isfinite(self.task.fitness_floor) else None}


def point(beta: float, values: Values) -> dict[str, Any]:
    """A run's record of where it trained: its beta, and its other hyperparameters when tuning set any."""
    return {"beta": beta, "hyperparameters": dict(values)} if values else {"beta": beta}


def curve_points(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct points (beta, and the other hyperparameters where tuned) the runs trained at, by beta:
    what the confirmation stage retrains to draw the curve again."""
    points = {json.dumps(point(float(run["beta"]), run.get("hyperparameters") or {}), sort_keys=True)
              for run in runs}
    return sorted((json.loads(text) for text in points), key=lambda p: (p["beta"], sorted(p.items(), key=str)))


def finetune_runner(sandbox: SandboxLike, spec: LossSpec, task_name: str, options: FinetuneOptions) -> FinetuneRunner:
    """A runner for `spec` on `task_name` (or the user's setting in `options`) at `options`' budget."""
    budget = Budget.named(options.budget)
    device = resolve_device(options.device)
    task = load_task_data(task_name, options)
    check_scores(spec, task, options)
    check_fits(task.parameters, device)
    if options.data == "online" and not task.online:
        raise ConfigError("online mode needs a task's oracle to label fresh pairs: use --task, not --model")
    if options.grad_accum > budget.batch_size:
        raise ConfigError(f"--grad-accum {options.grad_accum} splits a batch of {budget.batch_size} pairs into "
                          f"more micro-batches than pairs: use at most {budget.batch_size}")
    return FinetuneRunner(sandbox, spec, task, budget, options, device, resolve_precision(options.precision, device),
                          sandbox_limits(task, budget, options, device),
                          Scorer(task, budget.eval_prompts, device, budget.heldout_pairs))


def finetune_candidate(sandbox: SandboxLike, spec: LossSpec, task_name: str, seed: int,
                       options: FinetuneOptions) -> dict[str, Any]:
    """The finetune tier's metrics for `spec`: `fitness` at the KL budget (over seeds, each read off the
    seed's runs at every beta tried), and the best beta's means over seeds, spreads and every trial."""
    started = time.monotonic()
    runner = finetune_runner(sandbox, spec, task_name, options)
    seeds = [seed * 1000 + index for index in range(runner.budget.seeds)]
    trials = runner.budget.trials if "beta" in spec.inputs else 1
    name = options.study_name or study_name(spec, runner.task, runner.budget, options, runner.precision, seed)
    tuning = tune_hyperparameters(runner.run, float(spec.hyperparameters["beta"]), trials, seeds,
                                  hyperparameters=spec.hyperparameters, storage=options.storage, study_name=name,
                                  progress=options.progress, run_many=runner.run_many if runner.stacks else None)
    every_run = [run for trial in tuning["trials"] for run in trial["runs"]]
    return {**runner.describe(), "seeds": seeds, **tuning, **runner.curve_fitness(every_run),
            "seconds": time.monotonic() - started}


def study_name(spec: LossSpec, task: TaskData, budget: Budget, options: FinetuneOptions, precision: str,
               seed: int) -> str:
    """One Optuna study per candidate code, task artifact, budget, data mode, precision and seed set."""
    return (f"finetune-{spec.code_hash[:16]}-{task.key}-{budget.name}-{options.data}-{precision}"
            f"{options.training_key()}-s{seed}")


