"""Only errors a user can cause become one line; a bug of ours keeps its traceback."""

from __future__ import annotations

import pytest

from lossearch.cli import main
from lossearch.errors import ConfigError, UserError
from lossearch.search import seeds
from lossearch.search.config import CampaignConfig
from lossearch.store import StoreError


def test_a_users_mistake_is_one_line_and_exit_2(monkeypatch, capsys):
    def refuse():
        raise ConfigError("unknown budget 'huge'; choose one of quick, standard, full")

    monkeypatch.setattr(seeds, "load_seed_specs", refuse)
    assert main(["seeds"]) == 2
    assert capsys.readouterr().err == "error: unknown budget 'huge'; choose one of quick, standard, full\n"


def test_a_value_error_of_ours_is_a_bug_and_keeps_its_traceback(monkeypatch):
    def broken():
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(seeds, "load_seed_specs", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["seeds"])


def test_what_a_user_can_cause_is_a_user_error():
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        CampaignConfig(task="nope")
    with pytest.raises(ConfigError, match="1 to 255 characters"):
        CampaignConfig(name="x" * 300)
    assert issubclass(StoreError, UserError) and issubclass(ConfigError, ValueError)
