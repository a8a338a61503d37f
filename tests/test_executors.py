"""Executors: campaigns on a real local Ray instance (the sandbox itself: tests/test_sandbox_interface.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lossearch.ranking import load_campaign_data
from lossearch.reporting.results import build_leaderboard
from lossearch.search.campaign import run_campaign
from lossearch.search.config import CampaignConfig
from lossearch.search.seeds import seed_paths
from lossearch.store import Store

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_campaign_on_the_ray_executor(local_ray, tmp_path):
    requested = {"name": "onray", "generations": 1, "population": 2, "finetune": False, "workers": 2,
                 "executor": "ray"}
    outcome = run_campaign(CampaignConfig(**requested), runs_dir=tmp_path / "runs")
    assert outcome.stop_reason == "reached 1 generation(s)"
    with Store.for_campaign_dir(tmp_path / "runs" / "onray") as store:
        campaign = store.get_campaign("onray")
        assert not store.pending_candidates(campaign.id)
        assert sum(1 for c in store.candidates(campaign.id) if c.status == "evaluated") >= len(seed_paths())


def leaderboard_shape(runs_dir, name: str) -> tuple[list[tuple], int]:
    """(generation, name, status, tier, fitness) of every candidate, sorted; and how many were finetuned."""
    with Store.for_campaign_dir(runs_dir / name) as store:
        board = build_leaderboard(load_campaign_data(store, store.get_campaign(name)), include_failed=True)
    rows = sorted((row.generation, row.name, row.status, row.tier, row.fitness) for row in board.rows)
    return rows, sum(1 for row in board.rows if row.tier == "finetune")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_finetuning_campaign_on_ray_matches_the_same_campaign_run_locally(local_ray, sentiment_task, real_cache,
                                                                           tmp_path, monkeypatch, short_quick):
    monkeypatch.setenv("LOSSEARCH_CACHE", str(real_cache))  # the driver scores; the actors only train
    # a few finetunes a generation (promote_share): the shape is what is compared, not the search
    # and eight seeds of the 41: generation 0 runs on the executor too, and Ray's is not memoized from the local one
    kept = {"dpo", "ipo", "kto_pair", "sppo_hard", "simpo", "slic", "hinge", "robust"}
    common = {"generations": 1, "population": 2, "workers": 2, "finetune": True, "promote_share": 0.05,
              "confirm": False, "without_seeds": tuple(p.stem for p in seed_paths() if p.stem not in kept)}
    for executor in ("local", "ray"):
        outcome = run_campaign(CampaignConfig(name=executor, executor=executor, **common), runs_dir=tmp_path / "runs")
        assert outcome.stop_reason == "reached 1 generation(s)"
    local_rows, local_finetuned = leaderboard_shape(tmp_path / "runs", "local")
    ray_rows, ray_finetuned = leaderboard_shape(tmp_path / "runs", "ray")
    assert local_finetuned >= 3 and ray_finetuned == local_finetuned  # one per generation at least
    assert [row[:4] for row in ray_rows] == [row[:4] for row in local_rows]  # names, generations, tiers reached
    ray_fitness, local_fitness = ([row[4] for row in rows if row[4] is not None] for rows in (ray_rows, local_rows))
    assert ray_fitness == pytest.approx(local_fitness, rel=1e-6, abs=1e-9)  # the same jail, seeds and threads


def test_without_ray_the_executor_says_how_to_install_it(tmp_path):
    script = ("import sys; sys.modules['ray'] = None; from lossearch.cli import main; "
              "sys.exit(main(['run', '--name', 'x', '--executor', 'ray', '--no-finetune']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == 'error: the ray executor needs Ray: pip install "lossearch[ray]"'
