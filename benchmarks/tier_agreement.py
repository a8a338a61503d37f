"""Does the cheap tier predict the expensive one? The bandit tier's ranking against the finetune tier's.

The 24 seeds plus `--children` mutation children of them (drawn as a campaign draws them, those
that pass the sanity tier and are not the same loss as a seed) are scored by the bandit tier and
by the finetune tier (at `--budget`, one seed; at `quick` three betas, read at the KL budget) on
each task. Prints, per task, Kendall's tau between the two scores (scipy.stats.kendalltau) and the share of the finetune
tier's top quartile that the campaign's promotion rule (the bandit tier's best quarter) would have
sent to the finetune tier. Every score is written to a JSONL file as it comes, so a run that is
cut short keeps what it measured.

    python benchmarks/tier_agreement.py --children 50 --tasks sentiment,sort,length,noisy
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

from scipy.stats import kendalltau

from lossearch.evaluation.cascade import bandit_tier, finetune_tier, sanity_tier, static_tier
from lossearch.evaluation.finetune.config import FinetuneOptions
from lossearch.evaluation.finetune.device import resolve_device, resolve_precision
from lossearch.evaluation.tasks.load import load_task
from lossearch.failures import CandidateError
from lossearch.fingerprint import same_loss
from lossearch.sandbox.local import Sandbox
from lossearch.search.proposers import MutationProposer, ParentView, ProposalContext
from lossearch.search.seeds import seed_paths


def candidates(count: int, seed: int, sandbox: Sandbox) -> list[tuple[str, str]]:
    """The seeds, then `count` children that pass the sanity tier and are new losses."""
    seeds = [(path.stem, path.read_text(encoding="utf-8")) for path in seed_paths()]
    prints = [sanity_tier(sandbox, static_tier(source, name))["fingerprint"] for name, source in seeds]
    pool = [ParentView(index, name, source) for index, (name, source) in enumerate(seeds)]
    proposer, rng, children = MutationProposer(), random.Random(seed), []
    while len(children) < count:
        parents = rng.sample(pool, 2) if rng.random() < 1 / 3 else [rng.choice(pool)]
        for proposal in proposer.propose(parents, ProposalContext(task="sentiment"), rng):
            try:
                fingerprint = sanity_tier(sandbox, static_tier(proposal.source, proposal.name))["fingerprint"]
            except CandidateError:
                continue
            if not any(same_loss(fingerprint, other) for other in prints):
                prints.append(fingerprint)
                children.append((f"child{len(children):03d}", proposal.source))
    return seeds + children


def score(name: str, source: str, task: str, budget: str, sandbox: Sandbox) -> dict:
    spec = static_tier(source, name)
    row: dict = {"name": name, "task": task}
    for tier, run in (("bandit", lambda: bandit_tier(sandbox, spec, task, 0)),
                      ("finetune", lambda: finetune_tier(sandbox, spec, task, 0, FinetuneOptions(budget=budget)))):
        try:
            row[tier] = run()["fitness"]
        except CandidateError as error:
            row[tier], row[f"{tier}_failure"] = None, error.failure.kind
    return row


def agreement(rows: list[dict]) -> str:
    both = [row for row in rows if row.get("bandit") is not None and row.get("finetune") is not None]
    if len(both) < 4:
        return f"{len(both)} candidates scored by both tiers: too few"
    tau = kendalltau([row["bandit"] for row in both], [row["finetune"] for row in both])
    quarter = max(1, math.ceil(len(both) / 4))
    by_bandit = sorted(both, key=lambda row: -row["bandit"])[:quarter]
    by_finetune = sorted(both, key=lambda row: -row["finetune"])[:quarter]
    caught = len({row["name"] for row in by_bandit} & {row["name"] for row in by_finetune})
    return (f"{len(both)} candidates: Kendall tau {tau.statistic:+.3f} (p {tau.pvalue:.2g}); the bandit tier's "
            f"best quarter holds {caught} of the finetune tier's top {quarter} ({caught / quarter:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=50, help="mutation children beside the 24 seeds")
    parser.add_argument("--tasks", default="sentiment,sort,length,noisy", help="comma-separated tasks")
    parser.add_argument("--budget", default="quick", help="finetune budget")
    parser.add_argument("--seed", type=int, default=0, help="seed of the children's draw")
    parser.add_argument("--out", default="runs/tier-agreement.jsonl", help="JSONL file of every score")
    args = parser.parse_args()
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    for task in tasks:
        load_task(task)  # built before any clock starts
    device = resolve_device(None)
    print(f"device {device}, precision {resolve_precision('auto', device)}, budget {args.budget}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Sandbox() as sandbox, out.open("a") as log:
        pool = candidates(args.children, args.seed, sandbox)
        for task in tasks:
            started, rows = time.perf_counter(), []
            for name, source in pool:
                rows.append(score(name, source, task, args.budget, sandbox))
                log.write(json.dumps(rows[-1]) + "\n")
                log.flush()
            print(f"{task}: {agreement(rows)} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
