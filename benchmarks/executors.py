"""Candidates per minute: sequential, 1, 2 and 4 local workers, and the Ray executor.

Each configuration evaluates the 24 seeds through static, sanity and bandit
(no finetune) as a fresh campaign in a temporary folder, start-up included, and
prints its rate and its ratio to the sequential run measured in this script.

    python benchmarks/executors.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from lossearch.search.campaign import run_campaign
from lossearch.search.config import CampaignConfig

CONFIGS = [("sequential", {"workers": 1}), ("local x1", {"workers": 1}), ("local x2", {"workers": 2}),
           ("local x4", {"workers": 4}), ("ray x2", {"workers": 2, "executor": "ray"})]


def measure(label: str, options: dict, runs_dir: str, index: int) -> float:
    """Candidates per minute of one seeds-only campaign."""
    started = time.perf_counter()
    config = CampaignConfig(name=f"bench{index}", proposer="none", finetune=False, **options)
    outcome = run_campaign(config, runs_dir=runs_dir)
    seconds = time.perf_counter() - started
    count = outcome.stats.evaluated + outcome.stats.failed + outcome.stats.duplicates
    return 60.0 * count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; the best is kept")
    args = parser.parse_args()
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as runs_dir:
        for index, (label, options) in enumerate(CONFIGS):
            try:
                rates[label] = max(measure(label, options, runs_dir, index * 100 + r) for r in range(args.repeat))
            except Exception as error:  # noqa: BLE001 - e.g. Ray not installed: report and go on
                print(f"{label:12s} skipped: {error}")
                continue
            print(f"{label:12s} {rates[label]:7.1f} candidates/min  {rates[label] / rates['sequential']:.2f}x "
                  f"sequential")


if __name__ == "__main__":
    main()
