"""The seed library's sanity and bandit evaluations, kept across campaigns (lossearch.evaluation.memo)."""

from __future__ import annotations

import pytest

from lossearch.contract import source_hash
from lossearch.evaluation.cascade import bandit_tier, static_tier
from lossearch.evaluation.memo import memo_path, recall_or_run
from lossearch.failures import CandidateError


def test_a_kept_evaluation_is_the_run_it_replaces_and_says_it_was_kept(sandbox, tmp_path, dpo_source):
    spec = static_tier(dpo_source, "dpo")
    calls = []

    def run():
        calls.append(1)
        return bandit_tier(sandbox, spec, "sentiment", 0)

    first = recall_or_run(tmp_path, source_hash(dpo_source), "bandit", "sentiment", 0, "local", run)
    again = recall_or_run(tmp_path, source_hash(dpo_source), "bandit", "sentiment", 0, "local", run)
    assert len(calls) == 1 and "memo" not in first
    assert again.pop("memo") and again == first
    fresh = bandit_tier(sandbox, spec, "sentiment", 0)  # what it stands for: the same numbers, run again
    assert fresh["fitness"] == first["fitness"] and fresh["per_beta"] == first["per_beta"]


def test_anything_the_evaluation_depends_on_is_a_new_key(tmp_path, dpo_source):
    key = memo_path(tmp_path, source_hash(dpo_source), "bandit", "sentiment", 0, "local")
    others = {memo_path(tmp_path, source_hash(dpo_source + "\nX = 1\n"), "bandit", "sentiment", 0, "local"),
              memo_path(tmp_path, source_hash(dpo_source), "sanity", "sentiment", 0, "local"),
              memo_path(tmp_path, source_hash(dpo_source), "bandit", "sort", 0, "local"),
              memo_path(tmp_path, source_hash(dpo_source), "bandit", "sentiment", 1, "local"),
              memo_path(tmp_path, source_hash(dpo_source), "bandit", "sentiment", 0, "ray")}
    assert key not in others and len(others) == 5


def test_a_failure_is_not_kept(tmp_path):
    def broken():
        raise CandidateError("crash", "it broke")

    with pytest.raises(CandidateError):
        recall_or_run(tmp_path, "abc", "sanity", "sentiment", 0, "local", broken)
    assert not (tmp_path / "evaluations").exists() or not list((tmp_path / "evaluations").iterdir())
