"""Shared fixtures: one sandbox (one zygote) per test session keeps the suite fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from lossearch.sandbox import Sandbox
from lossearch.seedlib import seed_path

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox() as shared:
        yield shared


@pytest.fixture
def dpo_source() -> str:
    return seed_path("dpo").read_text()
