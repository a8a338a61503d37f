"""Hyperparameter tuning for the finetune tier: one Optuna study per candidate evaluation.

A trial is one beta from a decade either side of the loss's default. The first trials
spread over that range in a fixed order (the default, then x10^0.5, x10^-0.5, x10, x10^-1),
so three trials already draw a reward–KL curve on both sides of the default (the fitness reads
it at the KL budget: lossearch.evaluation.fitness) and five see both ends of the range; later
ones are TPE's draws (log-uniform). A trial's own objective is its runs' mean fitness.
Those later trials also draw the loss's other float hyperparameters (a mutation's `focal_gamma`,
`clip`, `grown_weight`, a seed's `gamma`), each within a factor HYPERPARAMETER_RANGE of its default
(log-uniform; uniform for a negative default; one whose default is 0 has no scale and stays), so
tuning reaches every constant an operator brings; the opening trials keep them at their defaults.
The matched-KL fitness still reads one curve: the best reward within the budget that the trained
policies (or a mixture of two of them) reach, whatever their hyperparameters.
A loss's best beta can sit far from its default: on `sort`, with near-deterministic
labels, DPO at beta 0.1 drifts to 16 nats of KL while beta 1 keeps it near 1. A trial
trains one run per seed;
after each seed the running mean fitness is reported as an intermediate value,
so the median pruner can stop a trial that trails the others before it spends
its remaining seeds. The study lives in memory, or in `storage` (an Optuna RDB
URL such as the campaign's SQLite file), where a resumed evaluation finds the
trials already finished and only runs the rest.

A run that diverges (a `nan` failure) fails that trial only: a loss may be
unstable at a large beta and fine at a small one. Any other failure (timeout,
policy, exception, ...) ends the evaluation. If every trial diverged, the first
divergence is the evaluation's failure.
"""

from __future__ import annotations

import math
import statistics
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence

import optuna

from lossearch.failures import CandidateError

BETA_RANGE = 10.0  # trials draw beta from [default / 10, default * 10]
HYPERPARAMETER_RANGE = 4.0  # later trials draw another hyperparameter from [default / 4, default * 4]
FIRST_BETAS = (1.0, 10 ** 0.5, 10 ** -0.5, 10.0, 0.1)  # multiples of the default the first trials try
METRICS = ("fitness", "reward", "reference_reward", "kl", "pref_acc", "margin")

Values = Mapping[str, float]
"""A trial's hyperparameters other than beta (empty for a loss that has none to tune)."""
# run(beta, seed, values) -> metrics of one trained and scored run, "fitness" among them
RunFn = Callable[[float, int, Values], dict]
# run_many([(beta, seed, values), ...]) -> per run its metrics, or the `nan` CandidateError that failed it
RunManyFn = Callable[[list[tuple[float, int, Values]]], list[Any]]


def make_study(storage: Optional[str], study_name: Optional[str], seed: int = 0) -> optuna.Study:
    """A maximizing study with a seeded TPE sampler and a median pruner; reused if it exists."""
    # ERROR: a run's exception (a cancelled sandbox, Ctrl-C) leaves the trial failed, to be run
    # again on resume, and reaches our caller, who reports it; Optuna's warning would repeat it
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(
        storage=storage, study_name=study_name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))


def summarize_runs(runs: Sequence[dict]) -> dict[str, Any]:
    """Mean and standard deviation (over seeds) of every metric the runs report."""
    summary: dict[str, Any] = {}
    for name in METRICS:
        values = [run[name] for run in runs if run.get(name) is not None]
        summary[name] = statistics.fmean(values) if values else None
        summary[f"{name}_std"] = statistics.pstdev(values) if len(values) > 1 else (0.0 if values else None)
    return summary


def tunable(hyperparameters: Values) -> dict[str, float]:
    """The hyperparameters other than beta that tuning draws: finite, non-zero defaults."""
    return {name: float(value) for name, value in hyperparameters.items()
            if name != "beta" and math.isfinite(value) and value != 0}


def suggest(trial: optuna.Trial, default_beta: float, defaults: Values) -> tuple[float, dict[str, float]]:
    """A trial's beta and other hyperparameters (enqueued opening trials get back what was enqueued)."""
    beta = trial.suggest_float("beta", default_beta / BETA_RANGE, default_beta * BETA_RANGE, log=True)
    values = {}
    for name, default in defaults.items():
        low, high = sorted((default / HYPERPARAMETER_RANGE, default * HYPERPARAMETER_RANGE))
        values[name] = trial.suggest_float(name, low, high, log=default > 0)
    return beta, values


def tune_hyperparameters(run: RunFn, default_beta: float, trials: int, seeds: Sequence[int], *,
                         hyperparameters: Values = MappingProxyType({}), storage: Optional[str] = None,
                         study_name: Optional[str] = None,
                         progress: Callable[[str, float, float], None] = lambda *args: None,
                         run_many: Optional[RunManyFn] = None) -> dict[str, Any]:
    """Tune beta (and, after the opening trials, the `tunable` of `hyperparameters`, the loss's defaults)
    over `trials` trials of `len(seeds)` runs each; the best trial's summary and every trial.

    With `run_many` (runs trained in one stacked pass), the opening trials' runs all go in one pass,
    then each later trial's seeds in one; no trial is pruned part-way, its seeds costing one pass."""
    study = make_study(storage, study_name)
    low, high = default_beta / BETA_RANGE, default_beta * BETA_RANGE
    defaults = tunable(hyperparameters)
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = [t for t in study.trials if t.state in done_states]
    if not study.trials:
        for multiple in FIRST_BETAS[:trials]:
            study.enqueue_trial({"beta": min(high, max(low, default_beta * multiple)), **defaults})
    total_runs = trials * len(seeds)
    done_runs = [sum(len(t.user_attrs.get("runs", [])) for t in finished)]

    def objective(trial: optuna.Trial) -> float:
        beta, values = suggest(trial, default_beta, defaults)
        runs: list[dict] = []
        for step, seed in enumerate(seeds):
            progress(f"{describe(beta, values)}, seed {seed}", done_runs[0], total_runs)
            try:
                runs.append(run(beta, seed, values))
            except CandidateError as error:
                # recorded on the trial, which ends as pruned; any failure but a divergence also
                # ends the study (raising through Optuna would log a traceback per failure)
                trial.set_user_attr("failure", error.failure.to_dict())
                if error.failure.kind != "nan":
                    trial.study.stop()
                raise optuna.TrialPruned(error.failure.message) from None
            finally:
                done_runs[0] += 1
            trial.set_user_attr("runs", list(runs))
            mean_fitness = statistics.fmean(row["fitness"] for row in runs)
            trial.report(mean_fitness, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return mean_fitness

    remaining = trials - len(finished)
    if remaining > 0 and run_many is not None:
        opening = sum(trial.state == optuna.trial.TrialState.WAITING for trial in study.trials)
        while remaining > 0:
            batch = [study.ask() for _ in range(min(remaining, max(1, opening)))]
            opening = 0  # after the enqueued opening, one trial a pass
            points = [suggest(trial, default_beta, defaults) for trial in batch]
            progress(f"{len(batch) * len(seeds)} runs in one pass ({'; '.join(describe(*p) for p in points)})",
                     done_runs[0], total_runs)
            if not tell_trials(study, batch, points, seeds, run_many):
                break
            done_runs[0] += len(batch) * len(seeds)
            remaining -= len(batch)
    elif remaining > 0:
        study.optimize(objective, n_trials=remaining)
    progress("done", total_runs, total_runs)
    return best_trial_summary(study)


def describe(beta: float, values: Values) -> str:
    """`beta 0.1` or `beta 0.1, gamma 0.7`: a trial's point, for progress lines."""
    return ", ".join(f"{name} {value:.3g}" for name, value in {"beta": beta, **values}.items())


def tell_trials(study: optuna.Study, batch: list[optuna.Trial], points: list[tuple[float, dict[str, float]]],
                seeds: Sequence[int], run_many: RunManyFn) -> bool:
    """Train every (point, seed) of the asked trials `batch` in one pass and tell the study each trial's
    mean fitness (a trial with a diverged run ends pruned, as in the sequential objective); False when a
    failure other than a divergence ended the evaluation (every trial of the pass then carries it)."""
    try:
        outcomes = run_many([(beta, seed, values) for beta, values in points for seed in seeds])
    except CandidateError as error:
        for trial in batch:
            trial.set_user_attr("failure", error.failure.to_dict())
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return False
    except BaseException:
        for trial in batch:  # failed: a resumed evaluation runs them again
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    for index, trial in enumerate(batch):
        runs = outcomes[index * len(seeds):(index + 1) * len(seeds)]
        diverged = [run for run in runs if isinstance(run, CandidateError)]
        if diverged:
            trial.set_user_attr("failure", diverged[0].failure.to_dict())
            trial.set_user_attr("runs", [run for run in runs if not isinstance(run, CandidateError)])
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        trial.set_user_attr("runs", list(runs))
        study.tell(trial, statistics.fmean(run["fitness"] for run in runs))
    return True


def best_trial_summary(study: optuna.Study) -> dict[str, Any]:
    """The best complete trial's beta and metric summary, plus one row per trial with its runs."""
    rows = []
    for trial in study.trials:
        runs = trial.user_attrs.get("runs", [])
        rows.append({"number": trial.number, "beta": trial.params.get("beta"),
                     "hyperparameters": {k: v for k, v in trial.params.items() if k != "beta"},
                     "state": trial.state.name.lower(), "fitness": trial.value, "runs": runs,
                     "failure": trial.user_attrs.get("failure")})
    complete = [row for row in rows if row["state"] == "complete"]
    failures = [row["failure"] for row in rows if row["failure"]]
    fatal = [failure for failure in failures if failure["kind"] != "nan"]
    if fatal or not complete:
        failure = (fatal or failures or [{"kind": "crash", "message": "no beta trial finished"}])[0]
        raise CandidateError(failure["kind"], failure["message"])
    best = max(complete, key=lambda row: row["fitness"])  # the first of equals wins
    keys = ("number", "beta", "hyperparameters", "state", "fitness", "runs")
    return {"beta": best["beta"], "hyperparameters": best["hyperparameters"], **summarize_runs(best["runs"]),
            "runs": best["runs"], "trials": [{key: row[key] for key in keys} for row in rows]}


def create_study_storage(url: str) -> None:
    """Create Optuna's tables in the database at `url` (a no-op when they exist). A campaign does it
    once before its workers start: workers creating them at once collide (`table studies already exists`)."""
    optuna.storages.RDBStorage(url)
