"""How many of the mutation proposer's children pass the static and sanity tiers.

Draws children from the seed library (one parent: a mutation; two: a crossover,
one time in three), runs each up to the sanity tier in the real sandbox, and
prints the share that passes, overall, per operator and per failure kind, and how
many passing children are new losses: fingerprint not `same_loss` as a parent's
(the loop rejects the others before training). With
`--rounds 2` the second round also breeds from the first round's survivors, as
a campaign does.

    python benchmarks/mutation_validity.py --children 200 --seed 0
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

from lossearch.evaluation.cascade import evaluate
from lossearch.fingerprint import same_loss
from lossearch.sandbox.local import Sandbox
from lossearch.search.proposers import MutationProposer, ParentView, ProposalContext
from lossearch.search.seeds import seed_paths


def breed(pool: list[ParentView], count: int, rng: random.Random) -> list:
    """`count` proposals from parents drawn out of `pool`."""
    proposer, context, children = MutationProposer(), ProposalContext(task="sentiment"), []
    while len(children) < count:
        parents = rng.sample(pool, 2) if rng.random() < 1 / 3 else [rng.choice(pool)]
        children += proposer.propose(parents, context, rng)
    return children


def fingerprint_of(source: str, name: str, sandbox: Sandbox) -> list[float] | None:
    result = evaluate(source, name, "sanity", sandbox=sandbox)
    return result.metrics["sanity"]["fingerprint"] if result.ok else None


def run_round(children: list, sandbox: Sandbox, label: str, fingerprints: dict[int, list[float]]) -> list[ParentView]:
    """Evaluate to the sanity tier, print the shares, return the survivors as parents."""
    passed, novel, by_operator, kinds, survivors = 0, 0, Counter(), Counter(), []
    started = time.perf_counter()
    for index, child in enumerate(children):
        result = evaluate(child.source, child.name, "sanity", sandbox=sandbox)
        by_operator[child.operator, result.ok] += 1
        if not result.ok:
            kinds[f"{result.tier}:{result.error.kind}"] += 1
            continue
        passed += 1
        fingerprint = result.metrics["sanity"]["fingerprint"]
        novel += not any(same_loss(fingerprint, fingerprints[parent])
                         for parent in child.parent_ids if parent in fingerprints)
        survivor = ParentView(1000 * (len(fingerprints) + 1) + index, child.name, child.source)
        fingerprints[survivor.id] = fingerprint
        survivors.append(survivor)
    seconds = time.perf_counter() - started
    print(f"{label}: {passed}/{len(children)} children pass static+sanity = {passed / len(children):.1%} "
          f"({seconds / len(children) * 1000:.0f} ms per child); {novel}/{passed} passing children "
          f"differ from their parents by fingerprint = {novel / max(passed, 1):.1%}")
    for operator in sorted({operator for operator, _ in by_operator}):
        ok, total = by_operator[operator, True], by_operator[operator, True] + by_operator[operator, False]
        print(f"  {operator:<17} {ok:>4}/{total:<4} {ok / total:6.1%}")
    if kinds:
        print("  failures: " + ", ".join(f"{kind} {count}" for kind, count in kinds.most_common()))
    return survivors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=200, help="children per round")
    parser.add_argument("--seed", type=int, default=0, help="seed of the proposer's random draws")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; later ones also breed from survivors")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    pool = [ParentView(index, path.stem, path.read_text()) for index, path in enumerate(seed_paths())]
    print(f"{len(pool)} seeds, {args.children} children per round, seed {args.seed}")
    with Sandbox() as sandbox:
        fingerprints = {parent.id: fingerprint_of(parent.source, parent.name, sandbox) for parent in pool}
        for round_index in range(args.rounds):
            started = time.perf_counter()
            children = breed(pool, args.children, rng)
            propose_ms = (time.perf_counter() - started) / len(children) * 1000
            print(f"proposing: {propose_ms:.1f} ms per child")
            pool = pool + run_round(children, sandbox, f"round {round_index + 1}", fingerprints)


if __name__ == "__main__":
    main()
