"""What the speed tricks outside the training loop save, each against the same work done without it.

1. The bandit tier beside the finetune tier (lossearch.evaluation.cascade.bandit_beside_finetune):
   `evaluate(dpo, tier="finetune")` against the same two tiers called in turn, in this process,
   at the `quick` budget: the work is one quick evaluation above the sanity tier.
2. Skipping the interpreter's teardown of torch at exit (lossearch.cli.entry): `python -m
   lossearch eval seeds/dpo.py --tier sanity` against the same command run through `main()`
   with a normal exit: the work is one short command that loaded torch.
3. Scoring a trained policy with the held-out preferences computed in a background thread
   beside the sampling (as Scorer.score once did): against the same steps in turn, as it does
   now. The work is scoring one run of the `quick` budget. It measured 2.6%, so it went.
4. The base model's reference reward drawn once and cached beside the task
   (ReferenceRewardCache): against drawing it again, as every evaluation did before. The work
   is scoring one run (the draw is part of it).

Runs alternate, N of each; medians are printed with their ratio. Usage:

    python benchmarks/command_overheads.py --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from lossearch.evaluation.cascade import bandit_tier, evaluate, finetune_tier, sanity_tier, static_tier
from lossearch.evaluation.finetune.config import FinetuneOptions
from lossearch.evaluation.finetune.device import resolve_device, resolve_precision
from lossearch.evaluation.finetune.score import Scorer
from lossearch.evaluation.tasks.load import load_task
from lossearch.sandbox.local import Sandbox
from lossearch.search.seeds import seed_path

DPO = seed_path("dpo")


def side_by_side(sandbox: Sandbox, options: FinetuneOptions) -> float:
    started = time.perf_counter()
    assert evaluate(DPO.read_text(), "dpo", "finetune", sandbox=sandbox, finetune=options).ok
    return time.perf_counter() - started


def in_turn(sandbox: Sandbox, options: FinetuneOptions) -> float:
    started = time.perf_counter()
    spec = static_tier(DPO.read_text(), "dpo")
    sanity_tier(sandbox, spec)
    bandit_tier(sandbox, spec, "sentiment", 0)
    finetune_tier(sandbox, spec, "sentiment", 0, options)
    return time.perf_counter() - started


def command(teardown: bool) -> float:
    args = ["eval", str(DPO), "--tier", "sanity"]
    script = ("import sys; from lossearch.cli import main; sys.exit(main(sys.argv[1:]))" if teardown else
              "from lossearch.cli import entry; entry()")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - started


def scoring(task, overlapped: bool, cached: bool) -> float:
    """Seconds to score the base model's own parameters as a trained run's, at the quick budget."""
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import load_file

    parameters = load_file(str(task.parameters_file))
    scorer = Scorer(task, 256, "cpu", 256)
    started = time.perf_counter()
    if not cached:
        scorer.mean_reward(scorer.sample(scorer.reference, 0)[0])  # the draw the cache saves
    if overlapped:  # the old way: preferences in a thread beside the sampling
        model = scorer._model(parameters)
        with ThreadPoolExecutor(max_workers=1) as background:
            preferences = background.submit(scorer.preferences, model)
            samples, logps = scorer.sample(model, 0)
            scorer.mean_reward(samples), scorer.kl(samples, logps), preferences.result()
        scorer.reference_reward(0)
    else:
        scorer.score(parameters, 0)
    return time.perf_counter() - started


def report(label: str, unit: str, without: list[float], with_trick: list[float]) -> None:
    slow, fast = statistics.median(without), statistics.median(with_trick)
    print(f"{label}: {unit}: without {slow:.3f} s, with {fast:.3f} s (medians of {len(without)}); "
          f"saves {slow - fast:.3f} s = {100 * (slow - fast) / slow:.1f}% of the work")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each variant, alternating")
    args = parser.parse_args()
    load_task("sentiment")  # built and cached before any clock starts
    options = FinetuneOptions(budget="quick")
    device = resolve_device(None)
    print(f"device {device}, precision {resolve_precision('auto', device)}")
    with Sandbox() as sandbox:
        in_turn(sandbox, options)  # warm: the reference reward cache, the zygote's imports
        beside, turn = [], []
        for _ in range(args.repeat):
            beside.append(side_by_side(sandbox, options))
            turn.append(in_turn(sandbox, options))
    report("bandit beside finetune", "one quick evaluation (sanity, bandit, finetune)", turn, beside)
    task = load_task("sentiment")
    scoring(task, True, True)  # warm, and the cache filled
    pairs: dict[tuple[bool, bool], list[float]] = {(o, c): [] for o in (True, False) for c in (True, False)}
    for _ in range(args.repeat):
        for key in pairs:
            pairs[key].append(scoring(task, *key))
    report("preferences beside sampling", "scoring one quick run", pairs[(False, True)], pairs[(True, True)])
    report("reference reward cached", "scoring one quick run", pairs[(False, False)], pairs[(False, True)])
    skipped, torn_down = [], []
    for _ in range(args.repeat):
        skipped.append(command(teardown=False))
        torn_down.append(command(teardown=True))
    report("skip torch's teardown at exit", "`lossearch eval seeds/dpo.py --tier sanity`", torn_down, skipped)


if __name__ == "__main__":
    main()
