"""Shared fixtures: one sandbox (one zygote) per test session keeps the suite fast."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from lossearch.sandbox.local import Sandbox
from lossearch.search.seeds import seed_path

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox() as shared:
        yield shared


@pytest.fixture(scope="session")
def seeded_campaign(tmp_path_factory) -> Path:
    """A runs/ folder holding campaign `t`: the seed library and one generation of 3 children, bandit tier
    only. Built once a session (20 s); a module copies it (shutil.copytree) before writing to it."""
    from lossearch.search.campaign import run_campaign
    from lossearch.search.config import CampaignConfig

    home = tmp_path_factory.mktemp("seeded-campaign")
    run_campaign(CampaignConfig(name="t", generations=1, population=3, finetune=False, confirm=False),
                 runs_dir=home / "runs")
    return home / "runs"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A database URL on each backend: a SQLite file, and a throwaway PostgreSQL database when
    LOSSEARCH_TEST_POSTGRES_URL names a server (CI starts one), else that case is skipped."""
    from helpers import throwaway_postgres_database

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'campaign.db'}"
    elif not os.environ.get("LOSSEARCH_TEST_POSTGRES_URL"):
        pytest.skip("set LOSSEARCH_TEST_POSTGRES_URL to run the store tests on PostgreSQL too")
    else:
        yield from throwaway_postgres_database(os.environ["LOSSEARCH_TEST_POSTGRES_URL"])


@pytest.fixture
def short_quick(monkeypatch):
    """The `quick` budget cut to two betas of 30 steps, for tests of how campaigns run (workers,
    executors, the confirmation at the end), not of what a quick evaluation measures."""
    from lossearch.evaluation.finetune.config import BUDGETS, Budget

    monkeypatch.setitem(BUDGETS, "quick", Budget("quick", steps=30, pairs=256, batch_size=8, trials=2, seeds=1,
                                                 eval_prompts=64, heldout_pairs=64))


@pytest.fixture
def dpo_source() -> str:
    return seed_path("dpo").read_text()


# -- the finetune tier's tasks (tests/test_tasks.py, tests/test_finetune.py) ----------------

def tiny_world(world: str = "sentiment"):
    """A base model of a few thousand parameters: builds in about a second."""
    from lossearch.evaluation.tasks.catalog import WorldConfig

    return WorldConfig(world, corpus_size=400, hidden_size=32, layers=1, heads=2, intermediate_size=64,
                       pretrain_steps=200, pretrain_batch=16)


TINY_DATA_FIELDS = {"train_pairs": 48, "heldout_prompts": 24, "heldout_pairs": 16}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lossearch-cache")


@pytest.fixture(scope="session")
def tiny_task(tiny_cache):
    """The sentiment task on a tiny base model, in a cache of the session's own."""
    from lossearch.evaluation.tasks.build import DataConfig
    from lossearch.evaluation.tasks.load import load_task

    return load_task("sentiment", tiny_cache, data=DataConfig(**TINY_DATA_FIELDS), world=tiny_world())


def pytest_configure(config) -> None:
    """Every test, and every command line a test starts, shares one cache: $LOSSEARCH_CACHE when set
    (a developer may keep one between runs), else a fresh folder for the session, never ~/.cache.
    So the real sentiment base model builds once a session (about three minutes), and campaigns after
    the first reuse the seed library's sanity and bandit evaluations (lossearch.evaluation.memo)."""
    if not os.environ.get("LOSSEARCH_CACHE"):
        os.environ["LOSSEARCH_CACHE"] = SESSION_CACHE[0] = tempfile.mkdtemp(prefix="lossearch-test-cache-")


def pytest_unconfigure(config) -> None:
    if SESSION_CACHE[0]:
        shutil.rmtree(SESSION_CACHE[0], ignore_errors=True)


SESSION_CACHE = [""]
"""The cache folder this session made, removed at its end ("" when $LOSSEARCH_CACHE was given)."""


@pytest.fixture(scope="session")
def real_cache():
    return Path(os.environ["LOSSEARCH_CACHE"])


@pytest.fixture(scope="session")
def sentiment_task(real_cache):
    from lossearch.evaluation.tasks.load import load_task

    return load_task("sentiment", real_cache)
