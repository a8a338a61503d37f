"""Campaigns on a user's own model and pairs (issue 15), through the command line: tiny random GPT-2
and Llama models saved to a temporary folder, at a shortened `quick` budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from helpers import run_cli
from test_tasks import save_tiny_user_model, write_user_dataset

from lossearch.errors import ConfigError
from lossearch.evaluation.tasks.load import load_user_task
from lossearch.evaluation.tasks.user import UserSetting
from lossearch.search.config import CampaignConfig
from lossearch.store import Store

# a quick campaign of two generations: generation 0 finetunes 3 of the 41 seeds by the rule, DPO and one drawn
CAMPAIGN_FLAGS = ("--generations", "2", "--population", "2", "--promote-share", "0.05", "--confirm-seeds", "2",
                  "--race-seeds", "2")


def stored_campaign(path, name: str = "mine"):
    """(campaign, its candidates, every evaluation) of campaign `name` under path/runs."""
    store = Store(f"sqlite:///{path / 'runs' / name / 'campaign.db'}")
    try:
        campaign = store.find_campaign(name)
        assert campaign is not None
        return campaign, store.candidates(campaign.id), store.evaluations()
    finally:
        store.close()


def check_campaign(folder, rewarded: bool) -> None:
    """Campaign `mine` in `folder`: two generations on the saved model, finetuned and confirmed as `user`."""
    campaign, candidates, evaluations = stored_campaign(folder, "mine")
    config = CampaignConfig.from_dict(campaign.config)
    assert config.task == "user" and config.model == str(folder / "model")
    assert max(c.generation for c in candidates) == 2
    finetuned = [e for e in evaluations if e.tier == "finetune"]
    assert finetuned and all(e.task == "user" for e in finetuned)
    metrics = finetuned[0].metrics
    assert metrics["base_parameters"] < 50_000  # the saved model, not a task's base model
    if rewarded:
        assert metrics["fitness"] == metrics["reward"] and 0 <= metrics["reward"] <= 1
    else:
        assert metrics["reward"] is None and metrics["fitness"] == metrics["pref_acc"]
    assert any(e.tier == "confirm" and e.task == "user" for e in evaluations)


@pytest.mark.slow  # about 70 s: the README's example, a campaign, an export and a confirmation
def test_the_readmes_example_runs_exports_and_confirms_on_a_tiny_llama_with_a_reward(tmp_path, monkeypatch, capfd,
                                                                                    short_quick):
    """`python examples/tiny_setting.py`, then `lossearch run --model --dataset --reward`, `export` and
    `confirm` as the README says (here in this process, at a shortened `quick`)."""
    from lossearch.cli import main

    done = subprocess.run([sys.executable, str(REPO / "examples" / "tiny_setting.py"), "setting"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (tmp_path / "setting" / "model").rename(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "160")
    setting = ["--model", "model", "--dataset", "setting/pairs.jsonl", "--reward", "setting/reward.py:polite"]
    assert main(["run", "--name", "mine", *setting, *CAMPAIGN_FLAGS]) == 0
    printed = capfd.readouterr().out
    assert "confirmation on 2 fresh seeds" in printed and "selected on user" in printed
    check_campaign(tmp_path, rewarded=True)
    # the leader leaves as a module, and a user asks of it what they would of their own loss
    assert main(["export", "--top", "1", "--run", "mine", "--out-dir", "out"]) == 0
    exported = sorted((tmp_path / "out").glob("*.py"))
    assert len(exported) == 1
    capfd.readouterr()
    assert main(["confirm", str(exported[0]), *setting, "--seeds", "2", "--json"]) == 0
    verdicts = json.loads(capfd.readouterr().out)
    assert [v["task"] for v in verdicts] == ["user"] and verdicts[0]["baseline"] == "dpo"
    assert len(verdicts[0]["seeds"]) == 2


@pytest.mark.slow  # about 60 s
def test_a_campaign_runs_on_a_saved_gpt2_without_a_reward(tmp_path, monkeypatch, capfd, short_quick):
    from lossearch.cli import main

    save_tiny_user_model(tmp_path / "model")  # a GPT-2 through transformers, scored by held-out preferences
    write_user_dataset(tmp_path / "pairs.jsonl", count=40)
    monkeypatch.chdir(tmp_path)
    # a GPU user's training flags too: micro-batches and batches of like lengths
    assert main(["run", "--name", "mine", "--model", "model", "--dataset", "pairs.jsonl", "--max-response-tokens", "3",
                 "--grad-accum", "2", "--group-by-length", "--precision", "fp32", *CAMPAIGN_FLAGS]) == 0
    assert "selected on user" in capfd.readouterr().out
    check_campaign(tmp_path, rewarded=False)
    campaign, _, evaluations = stored_campaign(tmp_path)
    config = CampaignConfig.from_dict(campaign.config)
    assert config.max_response_tokens == 3 and config.grad_accum == 2 and config.group_by_length
    assert config.precision == "fp32" and config.finetune_options().precision == "fp32"
    finetuned = next(e for e in evaluations if e.tier == "finetune")
    assert finetuned.metrics["grad_accum"] == 2 and finetuned.metrics["group_by_length"] is True
    # the leader and DPO transferred to another split of the user's data, trained as the campaign trained
    write_user_dataset(tmp_path / "other.jsonl", count=30)
    capfd.readouterr()
    assert main(["transfer", "--run", "mine", "--top", "1", "--dataset", "other.jsonl", "--json"]) == 0
    table = json.loads(capfd.readouterr().out)
    assert table["tasks"] == ["data:other"] and table["ran"] == len(table["rows"]) >= 1
    cells = [row["cells"]["data:other"] for row in table["rows"]]
    assert all(cell["fitness"] is not None and 0 <= cell["fitness"] <= 1 for cell in cells)
    transferred = [e for e in stored_campaign(tmp_path)[2] if e.task == "data:other"]
    assert {e.metrics["dataset"] for e in transferred} == {str(tmp_path / "other.jsonl")}
    assert all(e.metrics["grad_accum"] == 2 and e.metrics["artifact"] != finetuned.metrics["artifact"]
               for e in transferred)
    assert main(["transfer", "--run", "mine", "--top", "1", "--dataset", "other.jsonl", "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["ran"] == 0  # stored: asking again runs nothing
    (tmp_path / "elsewhere").mkdir()
    write_user_dataset(tmp_path / "elsewhere" / "other.jsonl", count=30, scored=True)
    assert main(["transfer", "--run", "mine", "--top", "1", "--dataset", "elsewhere/other.jsonl"]) == 2
    assert "give the file another name" in capfd.readouterr().err
    assert finetuned.metrics["artifact"] != load_user_task(UserSetting(tmp_path / "model", tmp_path / "pairs.jsonl"),
                                                           os.environ["LOSSEARCH_CACHE"]).key  # cut: another build


@pytest.mark.parametrize("fields, message", [
    ({"model": "m"}, "--model and --dataset go together"),
    ({"model": "m", "dataset": "d.jsonl", "task": "sort"}, "drop --task"),
    ({"model": "m", "dataset": "d.jsonl", "task": "user", "data": "online"}, "--data online needs a task's oracle"),
    ({"task": "user"}, "--model and --dataset go together"),
    ({"data": "sideways"}, "data mode"),
    ({"grad_accum": 0}, "--grad-accum must be at least 1"),
    ({"precision": "fp8"}, "precision"),
    ({"group_by_length": True, "data": "online"}, "--group-by-length groups a fixed set of pairs"),
])
def test_a_campaign_setting_that_cannot_work_is_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message):
        CampaignConfig(**fields)


@pytest.mark.parametrize("fields, message", [
    ({"datasets": ["other.jsonl"]}, "the campaign ran on task sentiment, not on a model of yours: give --model"),
    ({"model": "model"}, "give the splits with --dataset"),
    ({"datasets": ["a/x.jsonl", "b/x.jsonl"], "model": "model"}, "two data splits are named data:x"),
])
def test_a_transfer_to_data_splits_that_cannot_work_is_refused_in_one_line(fields, message):
    from pathlib import Path

    from lossearch.search.transfer import data_splits

    with pytest.raises(ConfigError, match=message):
        data_splits(CampaignConfig(), [Path(path) for path in fields.get("datasets", ())],
                    Path(fields["model"]) if "model" in fields else None, None)


def test_the_run_command_refuses_a_missing_model_folder_in_one_line(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    done = run_cli("run", "--model", str(tmp_path / "none"), "--dataset", "pairs.jsonl", cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "no such folder" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "runs").exists()  # refused before any store was made


@pytest.mark.slow  # about 30 s: three candidates finetuned online on the tiny task
def test_a_campaign_finetunes_on_fresh_pairs_with_data_online(tmp_path, tiny_task, monkeypatch, short_quick):
    from lossearch.evaluation.finetune import tier
    from lossearch.search.campaign import run_campaign

    monkeypatch.setattr(tier, "load_task", lambda name, *args, **kwargs: tiny_task)
    config = CampaignConfig(name="online", generations=1, population=1, data="online", promote_share=0.01,
                            race_seeds=1, confirm=False)
    run_campaign(config, runs_dir=tmp_path / "runs")
    _, _, evaluations = stored_campaign(tmp_path, "online")
    finetuned = [e for e in evaluations if e.tier == "finetune"]
    assert len(finetuned) >= 2 and all(e.metrics["data"] == "online" for e in finetuned)


def test_a_model_too_large_for_the_device_is_refused_in_one_line_before_any_run(sandbox, tmp_path, monkeypatch,
                                                                                 dpo_source):
    from lossearch.evaluation.cascade import evaluate
    from lossearch.evaluation.finetune import device, tier
    from lossearch.evaluation.finetune.config import FinetuneOptions

    save_tiny_user_model(tmp_path / "model")
    write_user_dataset(tmp_path / "pairs.jsonl")
    options = FinetuneOptions(device="cpu", setting=UserSetting(tmp_path / "model", tmp_path / "pairs.jsonl"))
    parameters = load_user_task(options.setting).parameters
    # a device with room for the weights once, not for training: policy, reference, gradients and AdamW
    monkeypatch.setattr(device, "device_memory_bytes", lambda name: 8 * parameters)
    runs = []
    monkeypatch.setattr(tier, "train_in_sandbox", lambda *args, **kwargs: runs.append(args))
    with pytest.raises(ConfigError, match=r"training needs at least .* GiB .* and cpu has") as refused:
        evaluate(dpo_source, "dpo", "finetune", sandbox=sandbox, task="user", finetune=options)
    assert "\n" not in str(refused.value) and not runs
