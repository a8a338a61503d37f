"""How the read side grows with the store: the leaderboard, the report and the dashboard at 1k, 10k, ... candidates.

Builds SQLite stores of synthetic candidates (DPO's code with a comment that makes each one unique,
one bandit-tier evaluation with reward, KL and fitness drawn from a fixed random stream, a parent
among the 200 candidates before it, 50 a generation, the first 41 seeds, and a fingerprint: one of
eight seeds' real ones, from the sanity tier, scaled by a random factor), through the store's own
API, as a campaign would write them. Then times, each once:
  generation  what a generation's proposing starts with, once: the snapshot and the ranking
  1st proposal  choosing two parents with a fresh runner (no fingerprint read, no distance remembered
              yet) and the offline proposer's context, on that snapshot
  proposal    each further proposal of the generation (the median of five, each after the child
              before it joined the snapshot, as in a campaign): issue 16's per-proposal figure
  load        lossearch.ranking.load_campaign_data (every command starts with it)
  leaderboard lossearch.reporting.results.build_leaderboard on that snapshot (every row)
  first page  `lossearch leaderboard --top 10`: its first page through the scores the store keeps, no snapshot
  show        `lossearch show ID` of the newest built candidate (its rank, evaluations, parents, children)
  lineage     `lossearch lineage ID` of the same candidate
  record      recording one evaluation (the store keeps the candidate's score up to date with it)
  report      lossearch report's whole file (and its size): past 5,000 candidates it plots a sample
  duplicates  a new child's fingerprint against every stored candidate's (the sanity tier's duplicate check):
              once indexing the prints stored without an index row, then as every later check runs
  dashboard   lossearch serve's first state and charts (what a page load costs)
Prints each figure with its ratio to the smallest store's, so growth reads as a number.

Usage: python benchmarks/store_scale.py [--sizes 1000,10000] [--folder /tmp/lossearch-scale] [--reuse]
                                       [--postgres postgresql+psycopg://USER@HOST:PORT/postgres]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lossearch.evaluation.cascade import sanity_tier, static_tier
from lossearch.ranking import load_campaign_data, rank
from lossearch.reporting.dashboard import Dashboard
from lossearch.reporting.report import write_report
from lossearch.reporting.results import build_leaderboard, leaderboard, lineage, show_candidate
from lossearch.sandbox.local import Sandbox
from lossearch.search.campaign import CampaignRunner
from lossearch.search.config import CampaignConfig
from lossearch.search.seeds import seed_path
from lossearch.store import LineageEdge, Store
from lossearch.store.locate import CampaignHandle

SEEDS = 41
PER_GENERATION = 50
PROPOSALS = 6


PRINTED_SEEDS = ("dpo", "ipo", "kto_pair", "simpo", "slic", "hinge", "robust", "sppo_hard")


def seed_fingerprints() -> list[list[float]]:
    """The sanity tier's fingerprints of eight seeds (run in the sandbox, as a campaign runs them)."""
    with Sandbox() as sandbox:
        return [sanity_tier(sandbox, static_tier(seed_path(name).read_text(), name))["fingerprint"]
                for name in PRINTED_SEEDS]


def url_of(location: Path | str) -> str:
    """A SQLite file's URL, or `location` itself when it is a URL already (PostgreSQL)."""
    return location if isinstance(location, str) else f"sqlite:///{location}"


def build_store(location: Path | str, candidates: int, seed: int = 0,
                fingerprints: Sequence[Sequence[float]] = ()) -> Store:
    """A fresh store at `location` (a SQLite file, replaced; or an empty database's URL) holding campaign
    `big` with `candidates` scored candidates (each with one of `fingerprints`, rescaled, when given)."""
    if isinstance(location, Path):
        location.unlink(missing_ok=True)
    store = Store(url_of(location))
    campaign = store.create_campaign("big", {"task": "sentiment", "proposer": "mutation", "finetune": False,
                                             "population": PER_GENERATION})
    source, draw, ids = seed_path("dpo").read_text(), random.Random(seed), []
    for index in range(candidates):
        is_seed = index < SEEDS
        generation = 0 if is_seed else 1 + (index - SEEDS) // PER_GENERATION
        parents = [] if is_seed else [(draw.choice(ids[-200:]), "mutation")]
        candidate = store.add_candidate(
            campaign.id, source=f"{source}\n# synthetic {index}\n", name="dpo" if index == 0 else f"loss_{index}",
            proposer="seed" if is_seed else "mutation", model=None if is_seed else draw.choice(
                ["blend", "cross_terms", "swap_function", "add_term"]),
            generation=generation, parents=parents, status="evaluated")
        fitness = draw.gauss(0.3, 0.05)
        store.record_evaluation(candidate.id, tier="bandit", task="sentiment", seed=0, fitness=fitness, seconds=0.5,
                                metrics={"reward": fitness + 0.05, "kl": abs(draw.gauss(0.4, 0.1)), "kl_budget": 0.5,
                                         "fitness": fitness})
        fingerprint = [value * draw.uniform(0.5, 2.0) for value in draw.choice(fingerprints)] if fingerprints else None
        store.update_candidate(candidate.id, tier="bandit", fitness=fitness, fingerprint=fingerprint)
        ids.append(candidate.id)
    return store


def built_size(location: Path | str) -> int:
    """How many candidates the store this script built at `location` holds (0 when it is not one)."""
    try:
        with Store(url_of(location)) as store:
            return store.candidate_counts(store.get_campaign("big").id).get("evaluated", 0)  # not the probes
    except Exception:  # another file, or a build cut short
        return 0


def measure(store: Store, folder: Path, size: int) -> dict[str, float]:
    campaign = store.get_campaign("big")
    figures: dict[str, float] = {}
    start = time.perf_counter()
    data = load_campaign_data(store, campaign)
    figures["load s"] = time.perf_counter() - start
    start = time.perf_counter()
    build_leaderboard(data)
    figures["leaderboard s"] = time.perf_counter() - start
    start = time.perf_counter()
    leaderboard(CampaignHandle(store, campaign, str(folder)), top=10)
    figures["first page s"] = time.perf_counter() - start
    newest = max(c.id for c in data.candidates.values() if c.status == "evaluated")  # a built one: it has a print
    for name, command in (("show s", show_candidate), ("lineage s", lineage)):
        start = time.perf_counter()
        command(CampaignHandle(store, campaign, str(folder)), newest)
        figures[name] = time.perf_counter() - start
    start = time.perf_counter()
    seed = len(store.evaluations(candidate_id=newest))  # a new key each time, so --reuse measures a write too
    store.record_evaluation(newest, tier="bandit", task="sentiment", seed=seed, fitness=0.3, seconds=1.0,
                            metrics={"reward": 0.3, "kl": 0.4, "fitness": 0.3})
    figures["record s"] = time.perf_counter() - start
    start = time.perf_counter()
    report = write_report(CampaignHandle(store, campaign, str(folder)), folder / f"report-{size}.html")
    figures["report s"] = time.perf_counter() - start
    figures["report MB"] = report.stat().st_size / 1e6
    start = time.perf_counter()
    runner = CampaignRunner(CampaignConfig(name="big", finetune=False, confirm=False), store, sandbox=None)  # type: ignore[arg-type]
    runner.campaign_id = campaign.id
    now = runner.snapshot()
    ranked = rank(now).candidates
    figures["generation s"] = time.perf_counter() - start
    # a new child against every stored one, as the sanity tier's duplicate check does: the first check also
    # indexes every print stored without an index row (a store built before the index), the next reads the index
    child_print = [value * 0.9 + 1e-3 for value in now.fingerprint(newest) or ()]
    for name in ("indexing check s", "duplicate check s"):
        start = time.perf_counter()
        runner.fingerprint_twin(newest + 1, child_print)
        figures[name] = time.perf_counter() - start
    start = time.perf_counter()
    snapshot = Dashboard(store, campaign).snapshot()
    snapshot.state()
    snapshot.charts()
    figures["dashboard s"] = time.perf_counter() - start
    generation = 1 + size // PER_GENERATION
    seconds = []
    for index in range(PROPOSALS):
        start = time.perf_counter()
        parents = runner.choose_parents(now, ranked, 0, generation, random.Random(index))
        runner.proposal_context(now, ranked)
        seconds.append(time.perf_counter() - start)
        # the child of the first parent joins the generation's snapshot, as CampaignRunner.store_proposal does
        child = store.add_candidate(campaign.id, source=f"{parents[0].source}\n# child {index}\n",
                                    name=f"child_{index}", proposer="mutation", model="blend",
                                    generation=generation, parents=[(parents[0].id, "mutation")])
        now.add_pending(child, [LineageEdge(child.id, parents[0].id, "mutation")])
    figures["1st proposal s"] = seconds[0]
    figures["proposal s"] = statistics.median(seconds[1:])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/lossearch-scale"))
    parser.add_argument("--reuse", action="store_true", help="measure a store this script built before, if "
                        "it holds the size asked for (a 100,000-candidate store takes about half an hour)")
    parser.add_argument("--postgres", metavar="ADMIN_URL", help="measure PostgreSQL stores too: a database "
                        "lossearch_scale_SIZE on this server for each size (made anew unless --reuse finds it built)")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    prints = seed_fingerprints()
    backends: list[tuple[str, Callable[[int], Path | str]]] = [
        ("sqlite", lambda size: args.folder / f"store-{size}.db")]
    if args.postgres:
        backends.append(("postgresql", lambda size: postgres_database(args.postgres, size, args.reuse)))
    for backend, location_of in backends:
        rows: list[tuple[int, float, dict[str, float]]] = []
        for size in (int(text) for text in args.sizes.split(",")):
            start = time.perf_counter()
            location = location_of(size)
            reusable = args.reuse and built_size(location) == size
            with (Store(url_of(location)) if reusable else build_store(location, size, fingerprints=prints)) as store:
                built = 0.0 if reusable else time.perf_counter() - start
                rows.append((size, built, measure(store, args.folder, size)))
        print_rows(backend, rows)


def postgres_database(admin_url: str, size: int, reuse: bool) -> str:
    """The URL of database lossearch_scale_SIZE on the server of `admin_url`, made empty unless `reuse`."""
    import sqlalchemy as sa

    name = f"lossearch_scale_{size}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}).first()
        if exists and not reuse:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        if not exists or not reuse:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def print_rows(backend: str, rows: list[tuple[int, float, dict[str, float]]]) -> None:
    first = rows[0][2]
    print(f"{backend}\n{'candidates':>10} {'build s':>8} " + " ".join(f"{name:>14}" for name in first)
          + f"   (x: ratio to {rows[0][0]} candidates)")
    for size, built, figures in rows:
        print(f"{size:>10} {built:>8.1f} " + " ".join(
            f"{value:>7.3g} x{value / first[name]:>5.1f}" if first[name] else f"{value:>14.3g}"
            for name, value in figures.items()))


if __name__ == "__main__":
    main()
