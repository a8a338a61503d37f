"""Discriminating power of the finetune tier: does it tell the seed losses apart?

For each task, every seed loss is evaluated at a budget (default `standard`); the script
prints each loss's fitness (mean over the budget's seeds, at its tuned beta) and the spread
across seeds, then per task

    spread  = max - min of the losses' mean fitness
    noise   = median over losses of the standard deviation of one loss's fitness across seeds
    ratio   = spread / noise          (target: at least 5)

and the same three numbers over the losses that are not at the task's fitness floor on every
seed (a collapsed loss widens the spread, and its std of 0 lowers the median).
With `--seed-sets 0,1` it evaluates the library under two seed sets and prints the Spearman
rank correlation of the two rankings (do rankings hold when repeated with other seeds?) and,
for a budget of one training seed (`quick`, whose per-evaluation std is unknown), the noise
across the seed sets: each loss's std over them and the DPO-to-best-seed gap in its units.
Results stream to a JSONL file (`--out`), one line per (task, seed set, loss), and a rerun
skips what is already there, so a long run can be stopped and resumed.

    python benchmarks/discrimination.py --tasks sentiment --budget standard
    python benchmarks/discrimination.py --tasks sentiment --losses dpo,ipo,sft --seed-sets 0,1
    python benchmarks/discrimination.py --tasks sentiment --budget quick --seed-sets 0,1,2,3 --losses dpo,ipo,...
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from scipy.stats import spearmanr

from lossearch.choices import TASK_NAMES
from lossearch.contract import read_spec
from lossearch.evaluation.cascade import finetune_tier, static_tier
from lossearch.evaluation.finetune.config import FinetuneOptions
from lossearch.evaluation.tasks.catalog import TASKS
from lossearch.evaluation.tasks.load import load_task
from lossearch.failures import CandidateError
from lossearch.sandbox.local import Sandbox
from lossearch.search.seeds import seed_path, seed_paths


def read_done(out: Path) -> dict:
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done[(row["task"], row["seed_set"], row["loss"])] = row
    return done


def evaluate_loss(sandbox, task_data, name: str, budget: str, seed_set: int) -> dict:
    spec = static_tier(read_spec(seed_path(name)).source, name)
    started = time.monotonic()
    try:
        metrics = finetune_tier(sandbox, spec, task_data.name, seed_set,
                                FinetuneOptions(budget=budget, task_data=task_data))
    except CandidateError as error:
        return {"failure": error.failure.to_dict(), "seconds": time.monotonic() - started}
    keep = ("fitness", "fitness_std", "reward", "reward_std", "reference_reward", "kl", "kl_std", "pref_acc", "beta",
            "precision")
    return {**{key: metrics[key] for key in keep}, "seconds": time.monotonic() - started}


def summarize(rows: list[dict], floor: float) -> dict:
    """Spread, median std and their ratio; also over the losses not stuck at the task's fitness
    floor on every seed (those have std 0, which would flatter the median)."""
    scored = [row for row in rows if "fitness" in row]
    if len(scored) < 2 or any(row["fitness_std"] is None for row in scored):
        return {}  # a budget of one training seed: see print_noise_across_seed_sets
    fitness = [row["fitness"] for row in scored]
    spread = max(fitness) - min(fitness)
    noise = statistics.median(row["fitness_std"] for row in scored)
    moving = [row for row in scored if not (row["fitness"] == floor and row["fitness_std"] == 0)]
    summary = {"losses": len(scored), "spread": round(spread, 4), "median_std": round(noise, 4),
               "ratio": round(spread / noise, 1) if noise > 0 else float("inf"), "at_floor": len(scored) - len(moving)}
    if len(moving) >= 2:
        moving_spread = max(row["fitness"] for row in moving) - min(row["fitness"] for row in moving)
        moving_noise = statistics.median(row["fitness_std"] for row in moving)
        summary.update(spread_off_floor=round(moving_spread, 4), median_std_off_floor=round(moving_noise, 4),
                       ratio_off_floor=round(moving_spread / moving_noise, 1) if moving_noise > 0 else float("inf"))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASK_NAMES))
    parser.add_argument("--budget", default="standard")
    parser.add_argument("--losses", default="", help="comma-separated seed names [default: the whole library]")
    parser.add_argument("--seed-sets", default="0", help="comma-separated seed sets, e.g. 0,1")
    parser.add_argument("--out", default="runs/discrimination.jsonl")
    args = parser.parse_args()
    losses = args.losses.split(",") if args.losses else [path.stem for path in seed_paths()]
    seed_sets = [int(s) for s in args.seed_sets.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out)
    with Sandbox() as sandbox:
        for task in args.tasks.split(","):
            task_data = load_task(task)
            for seed_set in seed_sets:
                print(f"\n== {task}, budget {args.budget}, seed set {seed_set}", flush=True)
                print(f"{'loss':16} {'fitness':>8} {'± std':>7} {'reward':>7} {'kl':>6} {'beta':>8} {'s':>5}")
                for name in losses:
                    key = (task, seed_set, name)
                    if key not in done:
                        done[key] = {"task": task, "seed_set": seed_set, "loss": name, "budget": args.budget,
                                     **evaluate_loss(sandbox, task_data, name, args.budget, seed_set)}
                        with out.open("a") as log:
                            log.write(json.dumps(done[key]) + "\n")
                    print_row(done[key])
                rows = [done[(task, seed_set, name)] for name in losses]
                print(f"-- {task} seed set {seed_set}: {summarize(rows, TASKS[task].fitness_floor)}", flush=True)
            if len(seed_sets) > 1:
                print_rank_correlation(task, losses, seed_sets, done)
                print_noise_across_seed_sets(task, losses, seed_sets, done)


def print_row(row: dict) -> None:
    if "failure" in row:
        print(f"{row['loss']:16} failed: {row['failure']['kind']}: {row['failure']['message'][:60]}", flush=True)
        return
    std = "-" if row["fitness_std"] is None else f"{row['fitness_std']:.4f}"
    print(f"{row['loss']:16} {row['fitness']:8.4f} {std:>7} {row['reward']:7.3f} {row['kl']:6.2f} "
          f"{row['beta']:8.3g} {row['seconds']:5.0f}", flush=True)


def print_noise_across_seed_sets(task: str, losses: list[str], seed_sets: list[int], done: dict) -> None:
    """The noise of a budget with one training seed (`quick`): each loss's fitness over the seed
    sets, its std across them, and the gap between DPO and the best other seed loss in units of
    the median std (the target at `quick`: the std at most a third of that gap)."""
    means, stds = {}, {}
    for name in losses:
        values = [done[(task, s, name)]["fitness"] for s in seed_sets if "fitness" in done[(task, s, name)]]
        if len(values) == len(seed_sets):
            means[name], stds[name] = statistics.fmean(values), statistics.stdev(values)
    print(f"-- {task}: fitness over {len(seed_sets)} seed sets (mean ± std across them)")
    for name in sorted(means, key=means.get, reverse=True):
        print(f"   {name:16} {means[name]:8.4f} ± {stds[name]:.4f}")
    if "dpo" not in means or len(means) < 2:
        return
    best = max((name for name in means if name != "dpo"), key=means.get)
    gap = means[best] - means["dpo"]
    noise = statistics.median(stds.values())
    print(f"-- {task}: median std across seed sets {noise:.4f} (DPO's {stds['dpo']:.4f}); best seed {best} "
          f"{gap:+.4f} from DPO; gap / median std {gap / noise if noise else float('inf'):.2f} (target: >= 3)",
          flush=True)


def print_rank_correlation(task: str, losses: list[str], seed_sets: list[int], done: dict) -> None:
    first, second = seed_sets[:2]
    common = [name for name in losses
              if "fitness" in done[(task, first, name)] and "fitness" in done[(task, second, name)]]
    rho = float(spearmanr([done[(task, first, n)]["fitness"] for n in common],
                          [done[(task, second, n)]["fitness"] for n in common]).statistic)
    print(f"-- {task}: Spearman rank correlation between seed sets {first} and {second} over {len(common)} losses: "
          f"{rho:.3f}", flush=True)


if __name__ == "__main__":
    main()
