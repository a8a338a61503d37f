"""The number the project lives by: how often does a whole campaign find a confirmed discovery?

Runs `--campaigns` offline mutation campaigns on `--task` (seeds 0, 1, ...), each until
`--evals` candidate evaluations, and confirms each one's `--top` leaders on fresh seeds against
DPO and the best seed, on the selection task and the `--held-out` tasks (lossearch.search.confirm:
paired runs, Holm over the leaders). Prints, per campaign, every leader's verdicts with their mean
differences and intervals, and at the end how many campaigns found a confirmed discovery over DPO
and how many a loss better than the best seed. Report it as it comes out, however small.

Each campaign keeps its store under `--runs` (default runs/discovery), so a stopped run resumes
where it was and its leaders can be read afterwards with `lossearch show --run discovery-SEED`;
`--first-seed` lets two processes share the campaigns (one per core).

    python benchmarks/discovery.py --campaigns 3 --evals 200 --task sentiment --held-out sort
    python benchmarks/discovery.py --first-seed 2 --campaigns 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lossearch.search.campaign import run_campaign
from lossearch.search.config import CampaignConfig
from lossearch.search.confirm import ConfirmConfig, confirm_campaign
from lossearch.store.locate import open_campaign


def one_campaign(seed: int, args: argparse.Namespace, runs: Path) -> dict:
    name = f"discovery-{seed}"
    started = time.perf_counter()
    config = CampaignConfig(name=name, task=args.task, seed=seed, generations=10_000, population=args.population,
                            max_evals=args.evals, confirm=False)
    outcome = run_campaign(config, runs_dir=runs)
    with open_campaign(name, runs_dir=runs) as handle:
        report = confirm_campaign(handle, ConfirmConfig(top=args.top, seeds=args.seeds, tasks=tuple(args.held_out)))
    leaders = [{"name": leader.candidate, "confirmed": leader.confirmed,
                "comparisons": [{"baseline": c.baseline, "task": c.task, "verdict": c.verdict,
                                 "difference": round(c.difference, 4), "ci": [round(x, 4) for x in c.ci],
                                 "p_adjusted": round(c.p_adjusted, 4), "test": c.test}
                                for c in leader.comparisons]}
               for leader in report.leaders]
    best_seed_beaten = any(c.baseline != "dpo" and c.task == args.task and c.verdict == "better"
                           for leader in report.leaders for c in leader.comparisons)
    return {"seed": seed, "stop": outcome.stop_reason, "leaders": leaders,
            "confirmed": any(leader["confirmed"] for leader in leaders), "beats_best_seed": best_seed_beaten,
            "seconds": round(time.perf_counter() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first campaign")
    parser.add_argument("--runs", type=Path, default=Path("runs/discovery"), help="where the campaigns' stores live")
    parser.add_argument("--evals", type=int, default=200, help="candidate evaluations per campaign")
    parser.add_argument("--population", type=int, default=8, help="children per generation")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--held-out", nargs="*", default=["sort"], help="held-out tasks of the confirmation")
    parser.add_argument("--top", type=int, default=3, help="leaders confirmed per campaign")
    parser.add_argument("--seeds", type=int, default=5, help="fresh confirmation seeds")
    args = parser.parse_args()
    outcomes = []
    for seed in range(args.first_seed, args.first_seed + args.campaigns):
        outcome = one_campaign(seed, args, args.runs)
        outcomes.append(outcome)
        print(json.dumps(outcome), flush=True)
    found = sum(o["confirmed"] for o in outcomes)
    beyond = sum(o["beats_best_seed"] for o in outcomes)
    print(f"{found} of {len(outcomes)} campaigns found a confirmed discovery over DPO; {beyond} of {len(outcomes)} a "
          f"leader better than the best seed on {args.task} (fresh seeds, Holm over {args.top} leaders)")


if __name__ == "__main__":
    main()
