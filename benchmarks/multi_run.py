"""K runs of one candidate one after another against one stacked pass (issue 16's first target).

The runs are the kind a candidate's evaluation holds: betas around DPO's default (0.1, x10^0.5,
x10^-0.5) times seeds, every run the same model, pairs and steps. Each side goes through the real
sandbox, as the finetune tier does:

    sequential  K training jobs, one child each (lossearch.evaluation.finetune.tier.train_in_sandbox)
    stacked     one training job whose child trains the K runs as one pass (train_many_in_sandbox,
                lossearch.evaluation.finetune.stacked)

It prints, per precision and K, both wall times and their ratio (targets on a CPU: at most 0.35 at
K = 12, the `standard` budget's trials x seeds, and 0.3 at K = 10, the confirmation seeds), the
largest difference between a stacked run's trained weights and its sequential twin's (a check: it
should be rounding), and the end-to-end ratio once every run is also scored in the parent (one
score measured here; scoring is the same work either way). Precisions: fp32, and bf16 where the
device computes it natively.

    python benchmarks/multi_run.py [--task sentiment] [--ks 3,10,12,30] [--steps 40] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--ks", default="3,10,12,30", help="numbers of runs, comma-separated")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run (standard: 200)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default=None, help="default: fp32, and bf16 where it is native")
    args = parser.parse_args()

    from lossearch.contract import read_spec
    from lossearch.evaluation.finetune.config import BUDGETS, FinetuneOptions
    from lossearch.evaluation.finetune.device import resolve_precision
    from lossearch.evaluation.finetune.tier import finetune_runner, run_config, train_in_sandbox, train_many_in_sandbox
    from lossearch.sandbox.local import Sandbox
    from lossearch.search.seeds import seed_path

    ks = [int(k) for k in args.ks.split(",")]
    precisions = args.precisions.split(",") if args.precisions else \
        ["fp32", *(["bf16"] if resolve_precision("auto", args.device) == "bf16" else [])]
    budget = dataclasses.replace(BUDGETS["standard"], name="bench", steps=args.steps)
    spec = read_spec(seed_path("dpo"))
    print(f"{args.task}, {args.steps} steps of {budget.batch_size} pairs a run, device {args.device}, "
          f"CPU: {cpu_name()}, torch {torch.__version__}")
    with Sandbox() as sandbox:
        for precision in precisions:
            options = FinetuneOptions(budget=budget, device=args.device, precision=precision)
            runner = finetune_runner(sandbox, spec, args.task, options)
            betas_seeds = [(0.1 * multiple, seed) for seed in range(max(ks))
                           for multiple in (1.0, 10 ** 0.5, 10 ** -0.5)]
            warm = run_config(runner.task, spec, budget, options, 0.1, 0, runner.device, precision)
            train_many_in_sandbox(sandbox, spec, runner.task, [warm, warm], runner.limits)  # the zygote's first fork
            _, parameters = train_in_sandbox(sandbox, spec, runner.task, warm, runner.limits)
            started = time.perf_counter()
            runner.scorer.score(parameters, 0)
            score_seconds = time.perf_counter() - started
            print(f"\n{precision}: scoring one run in the parent takes {score_seconds:.2f} s")
            print(f"{'K':>3} {'sequential s':>13} {'stacked s':>10} {'ratio':>6} {'end to end':>11} {'max |dw|':>9}")
            for k in ks:
                configs = [run_config(runner.task, spec, budget, options, beta, seed, runner.device, precision)
                           for beta, seed in betas_seeds[:k]]
                started = time.perf_counter()
                alone = [train_in_sandbox(sandbox, spec, runner.task, config, runner.limits)[1] for config in configs]
                sequential = time.perf_counter() - started
                started = time.perf_counter()
                together = train_many_in_sandbox(sandbox, spec, runner.task, configs, runner.limits)
                stacked = time.perf_counter() - started
                difference = max(float((weights[name] - single[name]).abs().max())
                                 for (_, weights), single in zip(together, alone) if weights is not None
                                 for name in single)
                end_to_end = (stacked + k * score_seconds) / (sequential + k * score_seconds)
                print(f"{k:>3} {sequential:>13.2f} {stacked:>10.2f} {stacked / sequential:>6.2f} {end_to_end:>11.2f} "
                      f"{difference:>9.1e}")
            print(f"(sequential: {sequential / ks[-1]:.2f} s a run at K = {ks[-1]}, its child's start and loading "
                  "included)")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
