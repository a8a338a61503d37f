"""The `lossearch` command line: each command parses, calls one library function and renders.

Output goes through one rich console (stdout); errors through another (stderr).
A user's mistake ends in one line on stderr and exit code 2; a candidate that
is rejected or fails ends with exit code 1.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from lossearch.failures import CandidateError
from lossearch.proposers.base import ProposerError
from lossearch.store import StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Search for new preference-optimization losses (the DPO family).")
console = Console()
errors = Console(stderr=True)



class Tier(str, Enum):
    static = "static"
    sanity = "sanity"
    bandit = "bandit"


class Task(str, Enum):
    sentiment = "sentiment"
    sort = "sort"
    length = "length"
    noisy = "noisy"


class UsageProblem(Exception):
    """A mistake in how the command was called: reported in one line, exit code 2."""


def read_source(path: Path) -> str:
    if not path.is_file():
        raise UsageProblem(f"no such file: {path} (give the path of a Python module that defines `loss`)")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageProblem(f"cannot read {path}: {error}") from None


def print_json(value: Any) -> None:
    """Valid JSON and nothing else on stdout."""
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


@app.command("seeds")
def seeds_command(as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table.")) -> None:
    """List the seed library: the known losses every campaign starts from.

    Example: lossearch seeds --json
    """
    from lossearch.seedlib import load_seed_specs

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


@app.command("eval")
def eval_command(
    file: Path = typer.Argument(..., help="A Python module defining `loss` (see DESIGN §2)."),
    tier: Tier = typer.Option(Tier.bandit, "--tier", help="Highest tier to run."),
    task: Task = typer.Option(Task.sentiment, "--task", help="Task for the bandit tier."),
    seed: int = typer.Option(0, "--seed", help="Seed of the task and the training run."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: status, tier, error, metrics."),
) -> None:
    """Evaluate one loss file up the cascade: static, sanity, bandit.

    Exit code 0 when the loss passes, 1 when it is rejected or fails.

    Example: lossearch eval seeds/dpo.py --tier sanity --json
    """
    from lossearch.evaluate import evaluate

    source = read_source(file)
    evaluation = evaluate(source, file.stem, tier.value, task=task.value, seed=seed)
    if as_json:
        print_json(evaluation.to_dict())
    else:
        render_evaluation(file, evaluation)
    raise typer.Exit(0 if evaluation.ok else 1)


@app.command("compare")
def compare_command(
    first: Path = typer.Argument(..., help="A loss file."),
    second: Path = typer.Argument(..., help="Another loss file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compare two losses by their gradient fingerprints: the same loss, or different?

    Example: lossearch compare seeds/dpo.py my_dpo_rewritten.py
    """
    from lossearch.compare import compare_sources

    result = compare_sources(read_source(first), read_source(second), first.stem, second.stem)
    if as_json:
        print_json(result)
    else:
        console.print(f"fingerprint distance {result['distance']:.4f}: [bold]{result['verdict']}[/]")
        for key in ("first", "second"):
            console.print(f"  {result[key]['name']}: {result[key]['summary']}", markup=False)
    raise typer.Exit(0)


class Proposer(str, Enum):
    mutation = "mutation"
    llm = "llm"
    none = "none"


def render_short_leaderboard(entries, title: str) -> None:
    table = Table(title=title)
    for column in ("rank", "id", "name", "fitness", "reward", "kl", "tier", "gen", "proposer"):
        table.add_column(column, justify="right" if column in ("rank", "id", "fitness", "reward", "kl", "gen") else "left")
    for entry in entries:
        candidate, metrics = entry.candidate, entry.metrics
        cells = [str(entry.rank), str(candidate.id), candidate.name, f"{entry.fitness:.4f}",
                 f"{metrics.get('reward', float('nan')):.4f}", f"{metrics.get('kl', float('nan')):.3f}",
                 candidate.tier or "-", str(candidate.generation), candidate.proposer]
        table.add_row(*cells, style="dim" if candidate.proposer == "seed" else None)
    console.print(table)


@app.command("run")
def run_command(
    name: str = typer.Option("demo", "--name", help="Campaign name; an existing one is resumed."),
    task: Optional[Task] = typer.Option(None, "--task", help="Task to select on [default: sentiment]."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Finetune budget: quick, standard, full [default: quick]."),
    proposer: Optional[Proposer] = typer.Option(None, "--proposer", help="mutation (offline), llm, or none [default: mutation]."),
    generations: Optional[int] = typer.Option(None, "--generations", help="Generations after the seeds [default: 2]."),
    population: Optional[int] = typer.Option(None, "--population", help="Children per generation [default: 4]."),
    islands: Optional[int] = typer.Option(None, "--islands", help="Independent sub-populations [default: 2]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of tasks, training and proposals [default: 0]."),
    finetune: Optional[bool] = typer.Option(None, "--finetune/--no-finetune", help="Run the finetune tier [default: on]."),
    max_evals: Optional[int] = typer.Option(None, "--max-evals", help="Stop after this many evaluations."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Stop after this many seconds."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="Stop once LLM calls cost this many dollars."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Stop once LLM calls used this many tokens."),
    llm_base_url: Optional[str] = typer.Option(None, "--llm-base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."),
    llm_model: Optional[list[str]] = typer.Option(None, "--llm-model", help="LLM model name; repeat for several."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL of the store [default: sqlite:///runs/NAME/campaign.db]."),
) -> None:
    """Run a search campaign (or resume one): propose losses, evaluate them, keep the best.

    With no options this is the demo: 2 generations of 4 offline mutations on `sentiment`
    at the `quick` budget. Ctrl-C stops cleanly; run the same command to resume.

    Example: lossearch run --name demo --task sentiment --budget quick --generations 2 --population 4
    """
    from lossearch.campaign import open_store, run_campaign
    from lossearch.display import CampaignDisplay

    requested = {"name": name, "task": task.value if task else None, "budget": budget,
                 "proposer": proposer.value if proposer else None, "generations": generations,
                 "population": population, "islands": islands, "seed": seed, "finetune": finetune,
                 "max_evals": max_evals, "time_limit": time_limit, "max_cost": max_cost, "max_tokens": max_tokens,
                 "llm_base_url": llm_base_url, "llm_models": tuple(llm_model) if llm_model else None}
    with CampaignDisplay(console, f"campaign {name}") as display:
        outcome = run_campaign(requested, db=db, on_update=display.update)
    store = open_store(name, db)
    try:
        campaign = store.get_campaign(name)
        render_short_leaderboard(store.leaderboard(campaign.id, top=10), f"campaign {name}: top 10")
    finally:
        store.close()
    console.print(f"stopped: {outcome.stop_reason}", markup=False)
    console.print(f"database: {outcome.database}", markup=False, highlight=False)
    console.print(f"resume or extend: lossearch run --name {name} --generations N", markup=False)


def _click_exceptions() -> list:
    """Click's exception modules: typer >= 0.20 vendors its own copy of click beside the real one."""
    modules = [click.exceptions]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        return modules
    return modules + [vendored]


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the `lossearch` console script."""
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
        return done.exit_code
    except help_requests as request:
        console.print(request.ctx.get_help(), markup=False, highlight=False)
        return 0
    except usage_errors as error:
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        errors.print(f"error: {error.format_message()}{hint}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (UsageProblem, CandidateError, ValueError, ProposerError, StoreError) as error:
        errors.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except aborts + (KeyboardInterrupt,):
        errors.print("interrupted", markup=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
