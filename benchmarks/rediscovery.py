"""Can the search find a published loss it was not given? DiscoPOP's LRML, rediscovered.

With `discopop` (LRML: a sigmoid-gated blend of the logistic and the exponential loss) left out
of the seed library (`--without-seed discopop`), offline mutation campaigns run generation by
generation, the bandit tier only (the question is what the proposer reaches, not how it
scores), until a child's fingerprint is the same loss as LRML's (lossearch.fingerprint.same_loss:
within the same-loss distance at some rescaling of beta) or `--max-proposals` children were made.
Prints, per campaign seed, the children proposed until the first match (or that none matched),
the match's name and distance, and how many of those children each operator made. Target: every
seed, within 300 proposals.

    python benchmarks/rediscovery.py --seeds 5 --max-proposals 300
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from lossearch.evaluation.cascade import sanity_tier, static_tier
from lossearch.fingerprint import fingerprint_distance, same_loss
from lossearch.ranking import load_campaign_data
from lossearch.sandbox.local import Sandbox
from lossearch.search.campaign import run_campaign
from lossearch.search.config import CampaignConfig
from lossearch.search.seeds import seed_path
from lossearch.store import Store

TARGET = "discopop"


def target_fingerprint() -> list[float]:
    with Sandbox() as sandbox:
        spec = static_tier(seed_path(TARGET).read_text(encoding="utf-8"), TARGET)
        return list(sanity_tier(sandbox, spec)["fingerprint"])


def search(seed: int, args: argparse.Namespace, target: list[float], runs: Path) -> dict:
    """One campaign, extended a generation at a time, until a child is LRML or the proposals run out."""
    config = CampaignConfig(name=f"rediscover-{seed}", seed=seed, generations=0, population=args.population,
                            finetune=False, confirm=False, without_seeds=(TARGET,))
    started = time.perf_counter()
    for generation in range(1, args.max_proposals // args.population + 1):
        run_campaign(replace(config, generations=generation), given={"generations"}, runs_dir=runs)
        with Store.for_campaign_dir(runs / config.name) as store:
            data = load_campaign_data(store, store.get_campaign(config.name))
        children = sorted((c for c in data.candidates.values() if c.generation > 0), key=lambda c: c.id)
        for position, child in enumerate(children, 1):
            if child.fingerprint and same_loss(child.fingerprint, target):
                return {"seed": seed, "found": True, "proposals": position, "name": child.name,
                        "operator": child.model, "distance": fingerprint_distance(child.fingerprint, target),
                        "seconds": time.perf_counter() - started, "operators": operator_counts(children[:position])}
    return {"seed": seed, "found": False, "proposals": len(children), "seconds": time.perf_counter() - started,
            "operators": operator_counts(children)}


def operator_counts(children: list) -> dict[str, int]:
    """How many of `children` each operator made (a mutation child's model is its operator), most first."""
    return dict(Counter(child.model for child in children).most_common())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="campaign seeds")
    parser.add_argument("--max-proposals", type=int, default=300, help="children per campaign before giving up")
    parser.add_argument("--population", type=int, default=10, help="children per generation")
    args = parser.parse_args()
    target = target_fingerprint()
    outcomes = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):
            outcome = search(seed, args, target, Path(folder) / "runs")
            outcomes.append(outcome)
            print(json.dumps(outcome), flush=True)
    found = [o for o in outcomes if o["found"]]
    counts = ", ".join(str(o["proposals"]) if o["found"] else f">{o['proposals']}" for o in outcomes)
    print(f"LRML rediscovered in {len(found)} of {len(outcomes)} campaigns (proposals until the first match: "
          f"{counts}; target: every seed within {args.max_proposals})")


if __name__ == "__main__":
    main()
