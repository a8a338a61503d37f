"""The `lossearch` command line: each command parses, calls one library function and renders.

Output goes through one rich console (stdout); errors through another (stderr).
A user's mistake ends in one line on stderr and exit code 2; a candidate that
is rejected or fails ends with exit code 1.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, astuple, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from lossearch.choices import (
    BUDGET_NAMES,
    DATA_MODES,
    EXECUTORS,
    PRECISIONS,
    PROPOSERS,
    TASK_NAMES,
    TIERS,
    USER_TASK,
)
from lossearch.errors import UserError
from lossearch.failures import CandidateError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Search for new preference-optimization losses (the DPO family).")
console = Console()
errors = Console(stderr=True)



def choice(values: Sequence[str]) -> Callable[[Optional[str]], Optional[str]]:
    """A typer callback that accepts one of `values` (or nothing), as click.Choice would."""
    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in values:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, values))}.")
        return value
    return check


def choices_metavar(values: Sequence[str]) -> str:
    return "[" + "|".join(values) + "]"


def choice_option(default: Optional[str], flag: str, values: Sequence[str], help: str) -> Any:
    """A `--flag` taking one of `values` (lossearch.choices), listed in --help as click lists choices."""
    return typer.Option(default, flag, callback=choice(values), metavar=choices_metavar(values), help=help)


class UsageProblem(UserError):
    """A mistake in how the command was called: reported in one line, exit code 2."""


def read_source(path: Path) -> str:
    if not path.is_file():
        raise UsageProblem(f"no such file: {path} (give the path of a Python module that defines `loss`)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageProblem(f"cannot read {path}: {error}") from None
    from lossearch.contract import loss_source

    return loss_source(text)  # an exported module is a candidate too: its TRL adapter is ours, not the loss


def print_json(value: Any) -> None:
    """Valid JSON and nothing else on stdout."""
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


@app.command("seeds")
def seeds_command(as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table.")) -> None:
    """List the seed library: the known losses every campaign starts from.

    Example: lossearch seeds --json
    """
    from lossearch.search.seeds import load_seed_specs

    specs = load_seed_specs()
    if as_json:
        print_json([spec.to_dict() for spec in specs])
        return
    table = Table(title=f"{len(specs)} seed losses")
    for column in ("name", "summary", "hyperparameters", "inputs"):
        table.add_column(column, overflow="fold")
    for spec in specs:
        hyper = ", ".join(f"{key}={value:g}" for key, value in spec.hyperparameters.items())
        inputs = ", ".join(name for name in spec.inputs if name != "beta")
        table.add_row(spec.name, spec.summary, hyper, inputs)
    console.print(table)


def render_evaluation(path: Path, evaluation) -> None:
    colour = {"ok": "green", "rejected": "yellow", "failed": "red"}[evaluation.status]
    console.print(f"[bold]{path.name}[/]: [{colour}]{evaluation.status}[/] at tier [bold]{evaluation.tier}[/]")
    if evaluation.error:
        console.print(f"  {evaluation.error.kind}: {evaluation.error.message}", markup=False)
    sanity = evaluation.metrics.get("sanity")
    if sanity:
        console.print(f"  fingerprint: {sanity['fingerprint_summary']['text']}", markup=False)
    bandit = evaluation.metrics.get("bandit")
    if bandit:
        table = Table(title=f"bandit tier, task {bandit['task']}, seed {bandit['seed']}")
        for column in ("beta", "reward", "reference_reward", "kl", "pref_acc", "fitness"):
            table.add_column(column, justify="right")
        for row in bandit["per_beta"]:
            best = row["beta"] == bandit["beta"]
            cells = [f"{row[key]:.4g}" for key in ("beta", "reward", "reference_reward", "kl", "pref_acc", "fitness")]
            table.add_row(*cells, style="bold" if best else None)
        console.print(table)
        console.print(f"  fitness {bandit['fitness']:.4f} at beta {bandit['beta']:g} (best of the grid)")
    finetune = evaluation.metrics.get("finetune")
    if finetune:
        render_finetune(finetune)


def _number(value, spread=None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" + (f" ± {spread:.2g}" if spread else "")


def render_finetune(finetune: dict) -> None:
    """One row per trial (its beta, and the other hyperparameters where tuning drew them), then the best
    trial's means over seeds."""
    budget = finetune["budget"]
    table = Table(title=f"finetune tier: {finetune['task']}, {budget['name']} budget, {finetune['data']}")
    tuned = sorted({name for trial in finetune["trials"] for name in trial.get("hyperparameters") or {}})
    for column in ("trial", "beta", *tuned, "state", "fitness"):
        table.add_column(column, justify="right")
    for trial in finetune["trials"]:
        values = trial.get("hyperparameters") or {}
        best = (trial["beta"], values) == (finetune["beta"], finetune.get("hyperparameters") or {}) \
            and trial["state"] == "complete"
        table.add_row(str(trial["number"]), _number(trial["beta"]), *(_number(values.get(name)) for name in tuned),
                      trial["state"], _number(trial["fitness"]), style="bold" if best else None)
    console.print(table)
    budget_text = f" at KL budget {finetune['kl_budget']:g}" if finetune.get("kl_budget") is not None else ""
    console.print(f"  reward {_number(finetune['reward'], finetune['reward_std'])} "
                  f"(reference {_number(finetune['reference_reward'])}), "
                  f"KL {_number(finetune['kl'], finetune['kl_std'])} nats, "
                  f"pref_acc {_number(finetune['pref_acc'], finetune['pref_acc_std'])}, "
                  f"margin {_number(finetune['margin'])}", markup=False)
    console.print(f"  fitness {_number(finetune['fitness'], finetune['fitness_std'])}{budget_text}, "
                  f"beta {finetune['beta']:.3g}; {budget['steps']} steps x {len(finetune['seeds'])} seed(s), "
                  f"{finetune['seconds']:.1f} s", markup=False)


@contextmanager
def progress_bar(enabled: bool):
    """A ProgressFn drawing a transient rich bar on stderr when `enabled`, else one that does nothing."""
    if not enabled:
        yield lambda description, completed, total: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                  TimeElapsedColumn(), console=errors, transient=True) as bar:
        task_id = bar.add_task("starting", total=1)

        def report(description: str, completed: float, total: float) -> None:
            bar.update(task_id, description=description, completed=completed, total=total)

        yield report


@dataclass(frozen=True)
class SettingFlags:
    """--model, --dataset, --reward and the truncation lengths: the user's own setting, as given."""

    model: Optional[Path] = None
    dataset: Optional[Path] = None
    reward: Optional[str] = None
    prompt_tokens: Optional[int] = None
    response_tokens: Optional[int] = None

    def given(self) -> bool:
        return any(value is not None for value in astuple(self))

    def check(self, data: Optional[str]) -> None:
        """A combination that cannot work (with --data too) is a UsageProblem."""
        model, dataset, reward = self.model, self.dataset, self.reward
        if (model is None) != (dataset is None):
            raise UsageProblem("--model and --dataset go together: a model folder and a JSONL file of pairs")
        if model is None and self.given():
            raise UsageProblem("--reward and the --max-*-tokens limits are for your own setting: give --model and "
                               "--dataset too")
        if model is not None and data == "online":
            raise UsageProblem("--data online needs a task's oracle to label fresh pairs; use it with --task, not "
                               "--model")
        check_files(model, [] if dataset is None else [dataset])
        if reward is not None and not Path(reward.rpartition(":")[0]).is_file():
            raise UsageProblem(f"--reward {reward}: write it as path/to/module.py:function, with an existing file")

    def lengths(self) -> dict[str, int]:
        """The truncation lengths given, by UserSetting's and CampaignConfig's field names."""
        return {name: value for name, value in (("max_prompt_tokens", self.prompt_tokens),
                                                ("max_response_tokens", self.response_tokens)) if value is not None}

    def setting(self):
        """The UserSetting these flags name, or None without --model."""
        from lossearch.evaluation.tasks.user import UserSetting

        if self.model is None or self.dataset is None:
            return None
        return UserSetting(self.model, self.dataset, self.reward, **self.lengths())

    def campaign_fields(self) -> dict[str, Any]:
        """CampaignConfig's fields for these flags: absolute paths, so a stored campaign finds its files from
        any folder."""
        fields: dict[str, Any] = dict(self.lengths())
        if self.model is not None and self.dataset is not None:
            fields.update(model=str(self.model.resolve()), dataset=str(self.dataset.resolve()))
        if self.reward is not None:
            path, _, function = self.reward.rpartition(":")
            fields["reward"] = f"{Path(path).resolve()}:{function}"
        return fields


def check_files(model: Optional[Path], datasets: Sequence[Path]) -> None:
    """A --model folder or a --dataset file that is not there is a UsageProblem."""
    if model is not None and not model.is_dir():
        raise UsageProblem(f"--model {model}: no such folder (give a folder written by save_pretrained)")
    for dataset in datasets:
        if not dataset.is_file():
            raise UsageProblem(f"--dataset {dataset}: no such file (give a JSONL file of prompt/chosen/rejected)")


@dataclass(frozen=True)
class TrainingFlags:
    """--grad-accum and --group-by-length: how each finetune step runs, on any task, as given."""

    grad_accum: Optional[int] = None
    group_by_length: Optional[bool] = None

    def given(self) -> bool:
        return self.grad_accum is not None or bool(self.group_by_length)

    def fields(self) -> dict[str, Any]:
        """The flags given, by FinetuneOptions' and CampaignConfig's field names."""
        return {name: value for name, value in asdict(self).items() if value is not None}


def checked_device(device: Optional[str]) -> str:
    """The torch device --device names (CUDA when present by default); one that is not here is a UsageProblem."""
    from lossearch.evaluation.finetune.device import resolve_device

    try:
        return resolve_device(device)
    except (ValueError, RuntimeError) as error:
        raise UsageProblem(f"--device: {error}") from None


def finetune_options(budget, trials, data, device, precision, flags: SettingFlags, training: TrainingFlags,
                     progress):
    """FinetuneOptions from eval's flags; a flag combination that cannot work is a UsageProblem."""
    flags.check(data)
    from lossearch.evaluation.finetune.config import FinetuneOptions

    device = checked_device(device)
    setting = flags.setting()
    chosen: Any = budget or "quick"
    if trials is not None:  # the budget with fewer or more betas tried
        from dataclasses import replace

        from lossearch.evaluation.finetune.config import Budget

        chosen = replace(Budget.named(chosen), trials=trials)
    return FinetuneOptions(budget=chosen, data=data or "offline",
                           device=device, precision=precision or "auto", setting=setting,
                           progress=progress, **training.fields())


def model_option(purpose: str) -> Any:
    return typer.Option(None, "--model", help=f"Your own local causal LM folder (save_pretrained output, with "
                                               f"--dataset) {purpose}.")


DATASET_OPTION: Any = typer.Option(None, "--dataset", help="JSONL pairs {prompt, chosen, rejected} for --model "
                                                           "(a tenth held out for scoring).")
REWARD_OPTION: Any = typer.Option(None, "--reward", help="module.py:function(prompt, response) -> float scoring "
                                                         "--model's samples: your code, run in this process, never "
                                                         "in a candidate's jail [default: fitness is held-out "
                                                         "preference accuracy].")
PROMPT_TOKENS_OPTION: Any = typer.Option(None, "--max-prompt-tokens", min=1,
                                         help="With --model: prompts cut to their last N tokens [default: 128].")
RESPONSE_TOKENS_OPTION: Any = typer.Option(None, "--max-response-tokens", min=2,
                                           help="With --model: responses cut to N tokens, end of sequence "
                                                "included [default: 128].")
PRECISION_OPTION: Any = choice_option(None, "--precision", PRECISIONS, "Training arithmetic: bf16 (mixed), fp16 "
                                                                      "(mixed, loss-scaled: GPUs without bf16), "
                                                                      "fp32, or auto: bf16 where the device computes "
                                                                      "it natively, else fp32 [default: auto].")
GRAD_ACCUM_OPTION: Any = typer.Option(None, "--grad-accum", min=1,
                                      help="Run each finetune step's batch as N micro-batches, their gradients "
                                           "summed: less memory, the same batch for the optimizer (a loss that "
                                           "reads its batch sees micro-batches, as under TRL's) [default: 1].")
GROUP_BY_LENGTH_OPTION: Any = typer.Option(None, "--group-by-length",
                                           help="Batch finetune pairs of similar length (drawn 16 steps' worth at "
                                                "a time), so batches pad less: faster where lengths vary, with "
                                                "other batches than a random draw [default: off].")
DEVICE_OPTION: Any = typer.Option(None, "--device", help="Torch device of the finetune tier [default: cuda if "
                                                         "present, else cpu].")


@app.command("eval")
def eval_command(
    file: Path = typer.Argument(..., help="A Python module defining `loss` (see DESIGN §2)."),
    tier: str = choice_option("bandit", "--tier", TIERS, "Highest tier to run."),
    task: str = choice_option("sentiment", "--task", TASK_NAMES, "Task for the bandit and finetune tiers."),
    seed: int = typer.Option(0, "--seed", help="Seed of the task and the training runs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: status, tier, error, metrics."),
    budget: Optional[str] = choice_option(None, "--budget", BUDGET_NAMES, "Finetune budget (see `lossearch tasks`) "
                                                                          "[default: quick]."),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Optuna trials instead of the budget's: the "
                                                                       "first five a fixed ladder of betas, later "
                                                                       "ones also draw the loss's other float "
                                                                       "hyperparameters; with 1, the default beta "
                                                                       "alone, read at the KL budget as one run."),
    data: Optional[str] = choice_option(None, "--data", DATA_MODES, "Finetune on the task's fixed pairs, or online on "
                                                                    "fresh ones [default: offline]."),
    device: Optional[str] = DEVICE_OPTION,
    precision: Optional[str] = PRECISION_OPTION,
    model: Optional[Path] = model_option("instead of a task's"),
    dataset: Optional[Path] = DATASET_OPTION,
    reward: Optional[str] = REWARD_OPTION,
    max_prompt_tokens: Optional[int] = PROMPT_TOKENS_OPTION,
    max_response_tokens: Optional[int] = RESPONSE_TOKENS_OPTION,
    grad_accum: Optional[int] = GRAD_ACCUM_OPTION,
    group_by_length: Optional[bool] = GROUP_BY_LENGTH_OPTION,
) -> None:
    """Evaluate one loss file up the cascade: static, sanity, bandit, finetune.

    Exit code 0 when the loss passes, 1 when it is rejected or fails. The finetune
    tier trains a small language model with the loss at the budget's betas (quick:
    three, about 20 s on a CPU; the task's base model is built once first, a minute
    or two) and reads the task's oracle reward at its KL budget off their curve.

    Example: lossearch eval seeds/dpo.py --tier finetune --task sentiment --budget quick
    """
    from lossearch.sandbox.local import Sandbox

    source = read_source(file)
    setting = SettingFlags(model, dataset, reward, max_prompt_tokens, max_response_tokens)
    training = TrainingFlags(grad_accum, group_by_length)
    run_flags = (budget, trials, data, device, precision)
    if tier != "finetune" and (setting.given() or training.given() or any(flag is not None for flag in run_flags)):
        raise UsageProblem("--budget, --trials, --data, --device, --precision, --grad-accum, --group-by-length, "
                           "--model, --dataset, --reward and the --max-*-tokens limits need --tier finetune")
    with Sandbox() as sandbox, progress_bar(tier == "finetune" and errors.is_terminal) as progress:
        if tier != "static":
            sandbox.start()  # its zygote imports torch while this process does the same
        from lossearch.evaluation.cascade import evaluate

        options = finetune_options(*run_flags, setting, training, progress) if tier == "finetune" else None
        evaluation = evaluate(source, file.stem, tier, task=USER_TASK if model is not None else task, seed=seed,
                              finetune=options, sandbox=sandbox)
    if as_json:
        print_json(evaluation.to_dict())
    else:
        render_evaluation(file, evaluation)
    raise typer.Exit(0 if evaluation.ok else 1)


@app.command("tasks")
def tasks_command(
    build: bool = typer.Option(False, "--build", help="Build the base models and pairs now (a few minutes, once)."),
    task: Optional[str] = choice_option(None, "--task", TASK_NAMES, "Only this task [default: all four]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: tasks, budgets, cached artifacts."),
) -> None:
    """List the finetune tier's tasks, their sizes and budgets, and the cached artifacts.

    Artifacts (base models, pairs) are built on first use into $LOSSEARCH_CACHE
    (default ~/.cache/lossearch); --build builds them ahead of time.

    Example: lossearch tasks --build --task sentiment
    """
    from dataclasses import asdict

    from lossearch.choices import TASK_NAMES
    from lossearch.evaluation.finetune.config import BUDGETS
    from lossearch.evaluation.tasks.load import cached_artifacts, load_task, task_summaries

    names = [task] if task else list(TASK_NAMES)
    if build:
        with progress_bar(errors.is_terminal) as progress:
            for name in names:
                load_task(name, progress=progress)
    summaries = [row for row in task_summaries() if row["name"] in names]
    artifacts = cached_artifacts()
    if as_json:
        print_json({"tasks": summaries, "budgets": [asdict(b) for b in BUDGETS.values()], "artifacts": artifacts})
        return
    render_tasks(summaries, BUDGETS, artifacts)


def render_tasks(summaries, budgets, artifacts) -> None:
    table = Table(title="finetune tasks")
    for column in ("task", "oracle rewards", "stresses", "vocab", "parameters", "KL budget", "built"):
        table.add_column(column, overflow="fold")
    for row in summaries:
        built = "yes" if row["built"]["pairs"] else ("base model" if row["built"]["world"] else "no")
        table.add_row(row["name"], row["rewards"], row["stresses"], str(row["vocabulary"]),
                      f"{row['parameters']:,}" if row["parameters"] else "-", f"{row['kl_budget']:g} nats", built)
    console.print(table)
    table = Table(title="budgets (per candidate: trials x seeds training runs)")
    for column in ("budget", "steps", "pairs", "batch", "trials", "seeds", "eval prompts", "held-out pairs", "lr"):
        table.add_column(column, justify="right")
    for budget in budgets.values():
        table.add_row(budget.name, str(budget.steps), str(budget.pairs), str(budget.batch_size), str(budget.trials),
                      str(budget.seeds), str(budget.eval_prompts), str(budget.heldout_pairs), f"{budget.lr:g}")
    console.print(table)
    root = summaries[0]["cache"] if summaries else ""
    console.print(f"cache {root}: {len(artifacts)} artifact(s)", markup=False)
    for artifact in artifacts:
        console.print(f"  {artifact['name']}  {artifact['bytes'] / 1e6:.1f} MB", markup=False)


@app.command("compare")
def compare_command(
    first: Path = typer.Argument(..., help="A loss file."),
    second: Path = typer.Argument(..., help="Another loss file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compare two losses by their gradient fingerprints: the same loss, or different?

    Example: lossearch compare seeds/dpo.py my_dpo_rewritten.py
    """
    from lossearch.evaluation.compare import compare_sources

    result = compare_sources(read_source(first), read_source(second), first.stem, second.stem)
    if as_json:
        print_json(result)
    else:
        note = f" ({result['note']})" if result["note"] else ""
        console.print(f"fingerprint distance {result['distance']:.4f}: [bold]{result['verdict']}[/]{note}",
                      highlight=False)
        for key in ("first", "second"):
            console.print(f"  {result[key]['name']}: {result[key]['summary']}", markup=False)
    raise typer.Exit(0)


@app.command("run")
def run_command(
    name: str = typer.Option("demo", "--name", help="Campaign name; an existing one is resumed."),
    task: Optional[str] = choice_option(None, "--task", TASK_NAMES, "Task to select on [default: sentiment]."),
    budget: Optional[str] = choice_option(None, "--budget", BUDGET_NAMES, "Finetune budget [default: quick]."),
    model: Optional[Path] = model_option("to search on, instead of a task's base model"),
    dataset: Optional[Path] = DATASET_OPTION,
    reward: Optional[str] = REWARD_OPTION,
    max_prompt_tokens: Optional[int] = PROMPT_TOKENS_OPTION,
    max_response_tokens: Optional[int] = RESPONSE_TOKENS_OPTION,
    data: Optional[str] = choice_option(None, "--data", DATA_MODES, "Finetune on the task's fixed pairs, or online "
                                                                    "on fresh ones labelled by its oracle "
                                                                    "[default: offline]."),
    device: Optional[str] = DEVICE_OPTION,
    precision: Optional[str] = PRECISION_OPTION,
    grad_accum: Optional[int] = GRAD_ACCUM_OPTION,
    group_by_length: Optional[bool] = GROUP_BY_LENGTH_OPTION,
    proposer: Optional[str] = choice_option(None, "--proposer", PROPOSERS, "mutation (offline), llm, or none: the "
                                                                           "seeds only [default: mutation]."),
    generations: Optional[int] = typer.Option(None, "--generations", help="Generations after the seeds [default: 2]."),
    population: Optional[int] = typer.Option(None, "--population", help="Children per generation [default: 4]."),
    islands: Optional[int] = typer.Option(None, "--islands", help="Independent sub-populations [default: 2]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of tasks, training and proposals [default: 0]."),
    finetune: Optional[bool] = typer.Option(None, "--finetune/--no-finetune", help="Run the finetune tier [default: "
                                                                                   "on]."),
    max_evals: Optional[int] = typer.Option(None, "--max-evals", help="Stop after this many evaluations."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Stop after this many seconds."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="Stop once LLM calls cost this many dollars."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Stop once LLM calls used this many tokens."),
    llm_base_url: Optional[str] = typer.Option(None, "--llm-base-url", help="OpenAI-compatible endpoint, e.g. "
                                                                            "http://127.0.0.1:8000/v1."),
    llm_model: Optional[list[str]] = typer.Option(None, "--llm-model", help="LLM model name; repeat for several."),
    llm_concurrency: Optional[int] = typer.Option(None, "--llm-concurrency", min=1,
                                                  help="LLM requests in flight at once; with one worker, children "
                                                       "are evaluated while the others are written [default: 4]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Candidates evaluated at once, in separate "
                                                                  "processes [default: 1]."),
    executor: Optional[str] = choice_option(None, "--executor", EXECUTORS, "local, or ray (pip install "
                                                                           "\"lossearch[ray]\") [default: local]."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address; without it a local "
                                                                          "Ray instance starts."),
    without_seed: Optional[list[str]] = typer.Option(None, "--without-seed",
                                                     help="Leave this seed loss out of generation 0 (can the "
                                                          "search find it itself?); repeat for several."),
    notes_every: Optional[int] = typer.Option(None, "--notes-every", min=0,
                                              help="The llm proposer writes its notes on the campaign before "
                                                   "every N generations; 0 never [default: 3]."),
    simplify: Optional[bool] = typer.Option(None, "--simplify/--no-simplify",
                                            help="Drop a child's terms that leave the same loss by fingerprint "
                                                 "before it is stored [default: on]."),
    pair_share: Optional[float] = typer.Option(None, "--pair-share", min=0.0, max=1.0,
                                               help="Chance that the mutation proposer, given two parents, "
                                                    "crosses them rather than mutating one [default: 0.4]."),
    promote_share: Optional[float] = typer.Option(None, "--promote-share", min=0.0, max=1.0,
                                                  help="Share of each generation's bandit survivors finetuned (at "
                                                       "least one, besides DPO and one random pick); lower it for a "
                                                       "large model [default: 0.25]."),
    race_top: Optional[int] = typer.Option(None, "--race-top", min=1,
                                           help="Leaders re-evaluated on more seeds after each generation "
                                                "[default: 1]."),
    race_seeds: Optional[int] = typer.Option(None, "--race-seeds", min=1,
                                             help="Finetune seeds a leader gets before it is shown as one; 1 "
                                                  "turns racing off [default: 3]."),
    confirm: Optional[bool] = typer.Option(None, "--confirm/--no-confirm",
                                           help="Confirm the leaders on fresh seeds at the end (with the finetune "
                                                "tier) [default: on]."),
    confirm_top: Optional[int] = typer.Option(None, "--confirm-top", min=1,
                                              help="Leaders the confirmation retrains [default: 1]."),
    confirm_seeds: Optional[int] = typer.Option(None, "--confirm-seeds", min=2,
                                                help="Fresh seeds of the confirmation [default: 5]."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL of the store [default: "
                                                        "sqlite:///runs/NAME/campaign.db]."),
) -> None:
    """Run a search campaign (or resume one): propose losses, evaluate them, keep the best.

    With no options this is the demo: 2 generations of 4 offline mutations on `sentiment`
    at the `quick` budget (the leader re-evaluated until it has 3 seeds), then the
    confirmation stage: the leader, DPO and the best seed
    retrained on 5 fresh seeds and compared seed by seed (see `lossearch confirm`). Ctrl-C
    stops cleanly; run the same command to resume.

    Example: lossearch run --name demo --task sentiment --budget quick --generations 2 --population 4
    """
    from lossearch.reporting.display import CampaignDisplay
    from lossearch.reporting.results import NoResults, leaderboard
    from lossearch.reporting.views import confirmation_view, leaderboard_table
    from lossearch.search.campaign import run_campaign
    from lossearch.search.config import CampaignConfig
    from lossearch.store.locate import open_campaign

    setting = SettingFlags(model, dataset, reward, max_prompt_tokens, max_response_tokens)
    setting.check(data)
    if device is not None:
        checked_device(device)
    flags: dict[str, Any] = {
        "task": task if task is not None or model is None else USER_TASK, "budget": budget,
        **setting.campaign_fields(), "data": data, "device": device, "precision": precision,
        **TrainingFlags(grad_accum, group_by_length).fields(), "proposer": proposer,
        "generations": generations, "population": population,
        "islands": islands, "seed": seed, "finetune": finetune, "max_evals": max_evals, "time_limit": time_limit,
        "max_cost": max_cost, "max_tokens": max_tokens, "llm_base_url": llm_base_url,
        "llm_models": tuple(llm_model) if llm_model else None, "workers": workers, "executor": executor,
        "ray_address": ray_address, "confirm": confirm, "confirm_top": confirm_top, "confirm_seeds": confirm_seeds,
        "race_top": race_top, "race_seeds": race_seeds, "promote_share": promote_share, "pair_share": pair_share,
        "simplify": simplify,
        "notes_every": notes_every, "llm_concurrency": llm_concurrency,
        "without_seeds": tuple(without_seed) if without_seed else None}
    given = {key for key, value in flags.items() if value is not None}
    config = CampaignConfig(name=name, **{key: flags[key] for key in given})
    with CampaignDisplay(console, f"campaign {name}") as display:
        outcome = run_campaign(config, given=given, db=db, on_update=display.update)
    try:
        with open_campaign(name, db) as handle:  # the table `lossearch leaderboard` prints, its top 10
            console.print(leaderboard_table(leaderboard(handle, top=10), console.width))
    except NoResults as empty:
        console.print(str(empty), markup=False)
    if outcome.confirmation is not None:
        console.print(confirmation_view(outcome.confirmation, console.width))
    console.print(f"stopped: {outcome.stop_reason}", markup=False)
    console.print(f"database: {outcome.database}", markup=False, highlight=False)
    console.print(f"resume or extend: lossearch run --name {name} --generations N", markup=False)
    console.print(f"look next: lossearch leaderboard --run {name} | lossearch report --run {name} | "
                  f"lossearch serve --run {name} | lossearch show ID | lossearch export ID --run {name}", markup=False)


# -- after a campaign (issue 6): campaigns, leaderboard, show, lineage, transfer, export, report --

RUN_HELP = "Campaign name (runs/NAME/campaign.db, or NAME in --db) [default: the most recently active one]."
DB_HELP = "SQLAlchemy URL of the store [default: each runs/*/campaign.db under this directory]."


class OutputFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"
    html = "html"


@contextmanager
def campaign_results(run: Optional[str], db: Optional[str]):
    """The campaign the flags name; a campaign with nothing to show yet ends in one line, exit code 1."""
    from lossearch.reporting.results import NoResults
    from lossearch.store.locate import open_campaign

    try:
        with open_campaign(run, db) as handle:
            yield handle
    except NoResults as error:
        errors.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def write_or_print(text: str, out: Optional[Path]) -> None:
    """`text` into `out`, or on stdout as it is."""
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    console.print(f"wrote {out}", markup=False, highlight=False)


@app.command("campaigns")
def campaigns_command(
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List every campaign: status, candidates, best fitness, confirmed discoveries, LLM cost and last
    activity.

    Campaigns are found in runs/*/campaign.db under the current directory, or in --db.
    The most recently active one (marked *) is what the other commands read by default.

    Example: lossearch campaigns --json
    """
    from lossearch.reporting.results import campaign_overviews
    from lossearch.reporting.views import campaigns_table

    listings = campaign_overviews(db=db)
    if as_json:
        print_json([listing.to_dict() for listing in listings])
        return
    if not listings:
        errors.print("error: no campaign found: no runs/*/campaign.db here; start one with `lossearch run --name NAME`",
                     markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(campaigns_table(listings, console.width))


@app.command("leaderboard")
def leaderboard_command(
    task: Optional[str] = choice_option(None, "--task", TASK_NAMES, "Rank on this task [default: the one the campaign "
                                                                    "selects on]."),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="Show the best K only."),
    include_failed: bool = typer.Option(False, "--include-failed", help="List rejected, failed and duplicate "
                                                                        "candidates too."),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, markdown, json or html."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to this file instead of stdout."),
    run: Optional[str] = typer.Option(None, "--run", help=RUN_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Rank a campaign's losses, with each one's verdict from the confirmation stage.

    Finetuned candidates rank ahead of bandit-only ones, then by fitness (its spread over
    seeds after ±). verdict: confirmed = better than DPO on fresh seeds after Holm correction
    (lossearch confirm); not confirmed = compared, not shown better; unconfirmed = never
    compared on fresh seeds. Seeds are the baselines.

    Example: lossearch leaderboard --run demo --top 10 --format markdown --out leaderboard/demo.md
    """
    from lossearch.reporting.report import leaderboard_page
    from lossearch.reporting.results import leaderboard
    from lossearch.reporting.views import as_text, leaderboard_markdown, leaderboard_table

    with campaign_results(run, db) as handle:
        board = leaderboard(handle, task=task, top=top, include_failed=include_failed)
    if output_format == OutputFormat.json:
        write_or_print(json.dumps(board.to_dicts(), indent=2), out)
    elif output_format == OutputFormat.markdown:
        write_or_print(leaderboard_markdown(board), out)
    elif output_format == OutputFormat.html:
        write_or_print(leaderboard_page(board), out)
    elif out is not None:
        write_or_print(as_text(leaderboard_table(board)), out)
    else:
        console.print(leaderboard_table(board, console.width))


@app.command("show")
def show_command(
    candidate: str = typer.Argument(..., help="Candidate id (12 or #12) or name."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    run: Optional[str] = typer.Option(None, "--run", help=RUN_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Show one candidate: its code, the idea behind it, every evaluation, fingerprint, parents and children.

    Example: lossearch show 31 --run demo
    """
    from lossearch.reporting.results import show_candidate
    from lossearch.reporting.views import candidate_view

    with campaign_results(run, db) as handle:
        report = show_candidate(handle, candidate)
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(candidate_view(report))


@app.command("lineage")
def lineage_command(
    candidate: str = typer.Argument(..., help="Candidate id (12 or #12) or name."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (nested branches)."),
    run: Optional[str] = typer.Option(None, "--run", help=RUN_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Draw a candidate's ancestry and descendants as a tree, with the fitness change along each edge.

    Δ is child minus parent, on the campaign's task at the highest tier both were scored at.

    Example: lossearch lineage 31 --run demo
    """
    from lossearch.reporting.results import lineage
    from lossearch.reporting.views import lineage_tree

    with campaign_results(run, db) as handle:
        tree = lineage(handle, candidate)
    if as_json:
        print_json(tree.to_dict())
    else:
        console.print(lineage_tree(tree))


@app.command("transfer")
def transfer_command(
    top: int = typer.Option(3, "--top", min=1, help="How many leaders to evaluate (DPO is always added)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated held-out built-in tasks [default: "
                                                              "every task but the campaign's, unless --dataset]."),
    dataset: Optional[list[Path]] = typer.Option(None, "--dataset", help="A JSONL file of your own pairs to transfer "
                                                                          "to, as task data:STEM (finetune tier); "
                                                                          "repeat for several."),
    model: Optional[Path] = model_option("to train on the --dataset splits [default: the campaign's]"),
    reward: Optional[str] = typer.Option(None, "--reward", help="module.py:function(prompt, response) -> float "
                                                               "scoring the --dataset splits: your code, run in this "
                                                               "process [default: the campaign's reward, if any]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    run: Optional[str] = typer.Option(None, "--run", help=RUN_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Evaluate the leaders on tasks they were not selected on, store the results, print the table.

    Uses the campaign's top tier: finetune if the campaign ran it, else bandit. The held-out
    tasks are built-in ones, or your own data splits (--dataset, trained on the campaign's
    model as it trained). Results already stored are reused, so running it again is instant.

    Example: lossearch transfer --run demo --top 3 --tasks sort,length,noisy
    """
    from lossearch.reporting.views import transfer_view
    from lossearch.search.transfer import transfer

    check_files(model, dataset or [])
    names = [name.strip() for name in tasks.split(",") if name.strip()] if tasks is not None else None
    with campaign_results(run, db) as handle, progress_bar(errors.is_terminal and not as_json) as progress:
        table = transfer(handle, tasks=names, top=top, progress=progress, datasets=dataset or (), model=model,
                         reward=reward)
    if as_json:
        print_json(table.to_dict())
    else:
        console.print(transfer_view(table))


@app.command("confirm")
def confirm_command(
    files: Optional[list[Path]] = typer.Argument(None, help="Loss files to compare with DPO, outside any campaign "
                                                           "[default: the campaign's leaders]."),
    top: int = typer.Option(3, "--top", min=1, help="Leaders of the campaign to confirm."),
    seeds: int = typer.Option(5, "--seeds", min=2, help="Fresh seeds each loss is retrained on."),
    budget: Optional[str] = choice_option(None, "--budget", BUDGET_NAMES, "Finetune budget of every run "
                                                                          "[default: the campaign's; quick for "
                                                                          "files]."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated held-out tasks to confirm on as well "
                                                             "(a discovery must not be worse there)."),
    task: Optional[str] = choice_option(None, "--task", TASK_NAMES, "Task of loss files [default: sentiment]."),
    model: Optional[Path] = model_option("to confirm loss files on, instead of a task"),
    dataset: Optional[Path] = DATASET_OPTION,
    reward: Optional[str] = REWARD_OPTION,
    max_prompt_tokens: Optional[int] = PROMPT_TOKENS_OPTION,
    max_response_tokens: Optional[int] = RESPONSE_TOKENS_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    precision: Optional[str] = PRECISION_OPTION,
    grad_accum: Optional[int] = GRAD_ACCUM_OPTION,
    group_by_length: Optional[bool] = GROUP_BY_LENGTH_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list: one object per (candidate, baseline, "
                                                       "task)."),
    run: Optional[str] = typer.Option(None, "--run", help=RUN_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Is a loss really better than DPO? Retrain on fresh seeds and compare seed by seed.

    On a campaign: its K leaders beyond the seed library, DPO and the best seed are retrained
    on N seeds no evaluation of the campaign used, at the beta the campaign tuned; each
    leader's per-seed fitness difference to each baseline gets a 95% interval and a one-sided
    p-value (paired t, or Wilcoxon's signed-rank test where a run collapsed), Holm-corrected
    over the leaders. A confirmed discovery is better than DPO on the selection task and not
    worse on any held-out task. Runs and verdicts are stored; asking again reuses them.
    With loss files: each file against DPO on --task, at their default betas.

    Example: lossearch confirm --run demo --top 3 --seeds 8 --tasks sort
    """
    from dataclasses import replace

    from lossearch.reporting.views import confirmation_view
    from lossearch.search.config import CampaignConfig
    from lossearch.search.confirm import ConfirmConfig, confirm_campaign, confirm_files

    held_out = tuple(name.strip() for name in (tasks or "").split(",") if name.strip())
    training = TrainingFlags(grad_accum, group_by_length)
    with progress_bar(errors.is_terminal and not as_json) as progress:
        if files:
            if run is not None or db is not None or held_out:
                raise UsageProblem("loss files are confirmed on their own: drop --run, --db and --tasks (use --task)")
            if model is not None and task is not None:
                raise UsageProblem("--task and --model are two places to confirm on: give one")
            setting = SettingFlags(model, dataset, reward, max_prompt_tokens, max_response_tokens)
            options = finetune_options(None, None, None, device, precision, setting, training, progress)
            report = confirm_files([(path.stem, read_source(path)) for path in files],
                                   task=USER_TASK if model is not None else task or "sentiment",
                                   seeds=seeds, budget=budget or "quick", progress=progress, options=options)
        else:
            if task is not None or SettingFlags(model, dataset, reward, max_prompt_tokens,
                                                max_response_tokens).given():
                raise UsageProblem("--task, --model, --dataset, --reward and the --max-*-tokens limits are for loss "
                                   "files; a campaign confirms on what it ran on (add --tasks)")
            config = ConfirmConfig(top=top, seeds=seeds, budget=budget, tasks=held_out)
            with campaign_results(run, db) as handle:
                options = CampaignConfig.from_dict(handle.campaign.config).finetune_options()
                options = replace(options, device=checked_device(device) if device else options.device,
                                  precision=precision or options.precision, progress=progress, **training.fields())
                report = confirm_campaign(handle, config, progress=progress, options=options)
    if as_json:
        print_json(report.to_dicts())
    else:
        console.print(confirmation_view(report, console.width))


@app.command("export")
def export_command(
    candidate: Optional[str] = typer.Argument(None, help="Candidate id (12 or #12) or name; or use --top."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the module here [default: print it]."),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="Export the best K instead, one module each."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Folder for --top [default: "
                                                                   "leaderboard/CAMPAIGN/]."),
    run: Optional[str] = typer.Option(None, "--run", help=RUN_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Export losses as standalone modules: the loss, its provenance, and an adapter for TRL's DPOTrainer.

    A module imports only torch; `dpo_trainer_class()` in it returns a trl.DPOTrainer
    subclass that trains with the loss. With --top, the folder also gets a README.md
    holding the leaderboard.

    Example: lossearch export --run demo --top 5 --out-dir leaderboard/demo/
    """
    from lossearch.reporting.export import export_candidate, export_top

    if (candidate is None) == (top is None):
        raise UsageProblem("give a candidate id, or --top K (not both)")
    if candidate is not None and out_dir is not None:
        raise UsageProblem("--out-dir goes with --top; for one candidate use --out FILE.py")
    if top is not None and out is not None:
        raise UsageProblem("--out is for one candidate; with --top use --out-dir FOLDER")
    with campaign_results(run, db) as handle:
        if top is not None:
            modules = export_top(handle, top, out_dir or Path("leaderboard") / handle.campaign.name)
        else:
            assert candidate is not None  # exactly one of a candidate and --top, checked above
            module = export_candidate(handle, candidate, out)
    if top is None:
        if out is None:
            sys.stdout.write(module.source)
        else:
            console.print(f"wrote {module.path} (#{module.candidate_id})", markup=False, highlight=False)
        return
    for module in modules:
        console.print(f"wrote {module.path} (#{module.candidate_id})", markup=False, highlight=False)


@app.command("report")
def report_command(
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write [default: runs/NAME/report.html]."),
    leaders: int = typer.Option(6, "--leaders", min=1, help="Leaders whose fingerprints and code are shown."),
    run: Optional[str] = typer.Option(None, "--run", help=RUN_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Write one self-contained HTML report: plots, lineage graph, fingerprints, the leaderboard with
    each verdict, and the confirmation stage's comparisons.

    The plots are inline SVG; the file opens without a network.

    Example: lossearch report --run demo --out runs/demo/report.html
    """
    from lossearch.reporting.report import write_report

    with campaign_results(run, db) as handle:
        path = write_report(handle, out, leaders=leaders)
    console.print(f"wrote {path}", markup=False, highlight=False)


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback lets others in."),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="TCP port."),
    run: Optional[str] = typer.Option(None, "--run", help=RUN_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Serve a live dashboard of a campaign in the browser: leaderboard with verdicts, lineage (click a
    node for its code, diff and evaluations), fitness over generations and time, reward against KL,
    operators, throughput, failures, LLM tokens and cost.

    Read-only; start it beside a running `lossearch run` (it polls the store every 2 s) or on a
    finished campaign. Everything it serves ships with lossearch: it works offline. Ctrl-C stops it.

    Example: lossearch serve --run demo --port 8765
    """
    import socket

    from lossearch.reporting.dashboard import is_loopback, serve
    from lossearch.store.locate import open_campaign

    with open_campaign(run, db) as handle:
        try:  # a port in use is the user's to fix: say so in one line before uvicorn would
            with socket.create_server((host, port)):
                pass
        except OSError as error:
            raise UsageProblem(f"cannot listen on {host}:{port} ({error.strerror or error}): pass another --port, "
                               "or stop what holds it") from None
        if not is_loopback(host):
            errors.print(f"warning: --host {host}: anyone who can reach this machine on port {port} can read "
                         f"campaign {handle.campaign.name!r}, its code and its ideas", markup=False,
                         highlight=False, soft_wrap=True)
        shown = f"[{host}]" if ":" in host else host
        console.print(f"serving campaign {handle.campaign.name} at http://{shown}:{port}/ (Ctrl-C stops)",
                      markup=False, highlight=False)
        serve(handle.store, handle.campaign, host=host, port=port)


def _click_exceptions() -> list:
    """Click's exception modules: typer >= 0.20 vendors its own copy of click beside the real one."""
    modules = [click.exceptions]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        return modules
    return modules + [vendored]


def entry() -> None:
    """The `lossearch` console script (lossearch.__main__): `main`, then exit."""
    code = [1]  # what an exception escaping `main` exits with

    def skip_teardown() -> None:
        # registered before the command imports anything that registers its own exit handler
        # (Ray's shutdown, Optuna's, ...), so it runs after them all: then the interpreter would
        # collect and tear down torch's objects and libraries: 0.55 s of a 3.0 s `eval --tier sanity`,
        # 18% (fp32, 2-core Xeon, medians of 7, benchmarks/command_overheads.py); the command has
        # closed its files and stores, so end the process here
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code[0])

    atexit.register(skip_teardown)
    code[0] = main()
    sys.exit(code[0])


def main(argv: Optional[list[str]] = None) -> int:
    """Run one `lossearch` command line; its exit code."""
    command = typer.main.get_command(app)
    modules = _click_exceptions()
    exits = tuple(module.Exit for module in modules if hasattr(module, "Exit"))
    help_requests = tuple(module.NoArgsIsHelpError for module in modules if hasattr(module, "NoArgsIsHelpError"))
    usage_errors = tuple(module.UsageError for module in modules)
    aborts = tuple(module.Abort for module in modules if hasattr(module, "Abort")) + (click.Abort, typer.Abort)
    try:
        result = command.main(args=argv, prog_name="lossearch", standalone_mode=False)
        return int(result or 0) if isinstance(result, int) else 0
    except exits as done:
        return int(done.exit_code)
    except help_requests as request:
        console.print(request.ctx.get_help(), markup=False, highlight=False)
        return 0
    except usage_errors as error:
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        message = error.format_message().replace(": Value error, ", ": ")  # pydantic's prefix, through typer
        errors.print(f"error: {message}{hint}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (UsageProblem, UserError, CandidateError) as error:  # anything else is a bug: its traceback shows
        errors.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except aborts + (KeyboardInterrupt,):
        errors.print("interrupted", markup=False)
        return 130


if __name__ == "__main__":
    entry()
