"""The confirmation stage on a real tiny campaign: fresh seeds, paired runs stored and resumable, verdicts."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from conftest import TINY_DATA_FIELDS

from lossearch.errors import ConfigError
from lossearch.evaluation.finetune.config import Budget, FinetuneOptions
from lossearch.ranking import load_campaign_data, rank
from lossearch.search import confirm as confirm_module
from lossearch.search.confirm import CONFIRM_TIER, ConfirmConfig, confirm_campaign, confirm_files, seeds_used
from lossearch.store import Store
from lossearch.store.locate import open_campaign

TINY = Budget("tiny", steps=6, pairs=48, batch_size=4, trials=1, seeds=1, eval_prompts=16)
DPO_AS_SOFTPLUS = '''"""DPO written with softplus: the same loss in other words."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return F.softplus(-beta * margin)
'''


def tiny(task, **fields) -> FinetuneOptions:
    return FinetuneOptions(**{"budget": TINY, "task_data": task, "device": "cpu", **fields})


@pytest.fixture(scope="module")
def campaign_home(tmp_path_factory, seeded_campaign):
    """A campaign `t` of the seeds and one generation of 3 children, bandit tier only (a copy)."""
    home = tmp_path_factory.mktemp("confirm")
    shutil.copytree(seeded_campaign, home / "runs")
    return home


def test_the_stage_trains_leaders_and_baselines_on_fresh_seeds_and_stores_everything(campaign_home, tiny_task,
                                                                                   sandbox):
    with open_campaign("t", runs_dir=campaign_home / "runs") as handle:
        before = load_campaign_data(handle.store, handle.campaign)
        report = confirm_campaign(handle, ConfirmConfig(top=1, seeds=3), sandbox=sandbox, options=tiny(tiny_task))
        after = load_campaign_data(handle.store, handle.campaign)
        again = confirm_campaign(handle, ConfirmConfig(top=1, seeds=3), sandbox=sandbox, options=tiny(tiny_task))
    assert not set(report.seeds) & seeds_used(before)  # seeds no evaluation of the campaign had used
    leader = report.leaders[0]
    assert leader.candidate_id == next(c.id for c in rank(before).candidates if c.proposer != "seed")
    baselines = {c.baseline for c in leader.comparisons}
    assert "dpo" in baselines and len(baselines) in (1, 2)  # DPO, and the best seed when it is not DPO
    for comparison in leader.comparisons:
        assert comparison.seeds == report.seeds and len(comparison.candidate_fitness) == 3
        assert comparison.verdict in ("better", "worse", "no detectable difference")
        low, high = comparison.ci
        assert low <= comparison.difference <= high
    stored = [e for es in after.evaluations.values() for e in es if e.tier == CONFIRM_TIER]
    assert len(stored) == 3 * (1 + len(baselines)) == report.ran
    assert {e.seed for e in stored} == set(report.seeds)
    assert after.confirmations[leader.candidate_id].record["seeds"] == list(report.seeds)
    # the ranking never reads the stage's runs, and asking again runs nothing new
    assert [c.id for c in rank(after).candidates] == [c.id for c in rank(before).candidates]
    assert again.ran == 0 and again.to_dicts() == report.to_dicts()


def test_the_json_rows_have_the_documented_keys(campaign_home, tiny_task, sandbox):
    with open_campaign("t", runs_dir=campaign_home / "runs") as handle:
        rows = confirm_campaign(handle, ConfirmConfig(top=1, seeds=3), sandbox=sandbox,
                                options=tiny(tiny_task)).to_dicts()
    assert rows and all({"candidate", "baseline", "task", "verdict", "difference", "ci", "p_value", "p_adjusted",
                         "seeds"} <= set(row) for row in rows)
    json.dumps(rows)  # plain JSON


def test_seeds_the_campaign_used_are_refused(campaign_home, tiny_task, sandbox, monkeypatch):
    monkeypatch.setattr(confirm_module, "confirmation_seeds", lambda campaign_seed, count: (0, 1))
    with open_campaign("t", runs_dir=campaign_home / "runs") as handle, pytest.raises(ConfigError, match="already"):
        confirm_campaign(handle, ConfirmConfig(top=1, seeds=2), sandbox=sandbox, options=tiny(tiny_task))


def test_runs_made_at_another_precision_are_not_paired(campaign_home, tiny_task, sandbox, tmp_path):
    shutil.copytree(campaign_home / "runs", tmp_path / "runs")
    with open_campaign("t", runs_dir=tmp_path / "runs") as handle:
        confirm_campaign(handle, ConfirmConfig(top=1, seeds=2), sandbox=sandbox, options=tiny(tiny_task))
        import sqlalchemy as sa

        engine = sa.create_engine(handle.store.url)
        with engine.begin() as connection:  # as if an earlier stage had run on a bf16 machine
            rows = connection.execute(sa.text("SELECT id, metrics FROM evaluations WHERE tier = 'confirm'")).all()
            for row_id, metrics in rows:
                changed = {**json.loads(metrics), "precision": "bf16"}
                connection.execute(sa.text("UPDATE evaluations SET metrics = :m WHERE id = :i"),
                                   {"m": json.dumps(changed), "i": row_id})
        engine.dispose()
        with pytest.raises(ConfigError, match="different precisions"):
            confirm_campaign(handle, ConfirmConfig(top=1, seeds=2), sandbox=sandbox,
                             options=tiny(tiny_task, precision="fp32"))


def test_runs_of_another_protocol_are_not_reused_as_if_they_were_alike(campaign_home, tiny_task, sandbox, tmp_path):
    shutil.copytree(campaign_home / "runs", tmp_path / "runs")
    two_betas = Budget("tiny", steps=6, pairs=48, batch_size=4, trials=2, seeds=1, eval_prompts=16)
    with open_campaign("t", runs_dir=tmp_path / "runs") as handle:
        confirm_campaign(handle, ConfirmConfig(top=1, seeds=2), sandbox=sandbox, options=tiny(tiny_task))
        with pytest.raises(ConfigError, match="trained at betas .*, not at .*confirm a copy"):
            confirm_campaign(handle, ConfirmConfig(top=1, seeds=2), sandbox=sandbox,
                             options=tiny(tiny_task, budget=two_betas))
        with pytest.raises(ConfigError, match="trained with --grad-accum 1: confirm with the same training flags"):
            confirm_campaign(handle, ConfirmConfig(top=1, seeds=2), sandbox=sandbox,
                             options=tiny(tiny_task, grad_accum=2))
        other = Budget("other", steps=6, pairs=48, batch_size=4, trials=1, seeds=1, eval_prompts=16)
        with pytest.raises(ConfigError, match="are at budget tiny, not other: confirm with --budget tiny"):
            confirm_campaign(handle, ConfirmConfig(top=1, seeds=2), sandbox=sandbox,
                             options=tiny(tiny_task, budget=other))



def test_a_leader_is_retrained_at_the_hyperparameters_its_tuning_trained_it_at(seeded_campaign, tiny_task, sandbox,
                                                                               tmp_path):
    shutil.copytree(seeded_campaign, tmp_path / "runs")  # as built: no confirmation runs stored yet
    points = [{"beta": 0.1}, {"beta": 0.3, "hyperparameters": {"scale": 2.0}}]
    with open_campaign("t", runs_dir=tmp_path / "runs") as handle:
        data = load_campaign_data(handle.store, handle.campaign)
        leader = next(c for c in rank(data).candidates if c.proposer != "seed")
        # as a finetune evaluation whose later trial drew `scale` records its curve
        handle.store.record_evaluation(leader.id, tier="finetune", task=data.task, seed=0, fitness=0.5,
                                       seconds=1.0,
                                       metrics={"curve_betas": [0.1, 0.3], "curve_points": points})
        report = confirm_campaign(handle, ConfirmConfig(top=1, seeds=2), sandbox=sandbox, options=tiny(tiny_task))
        stored = [e for e in load_campaign_data(handle.store, handle.campaign).evaluations[leader.id]
                  if e.tier == CONFIRM_TIER]
    assert report.leaders[0].candidate_id == leader.id and len(stored) == 2
    for evaluation in stored:
        assert evaluation.metrics["hyperparameters"] == [{}, {"scale": 2.0}]
        assert [run.get("hyperparameters") for run in evaluation.metrics["runs"]] == [None, {"scale": 2.0}]


def test_a_loss_file_written_another_way_is_no_different_from_dpo(tiny_task, sandbox):
    two_betas = Budget("tiny2", steps=6, pairs=48, batch_size=4, trials=2, seeds=1, eval_prompts=16)
    report = confirm_files([("dpo_softplus", DPO_AS_SOFTPLUS)], seeds=2, budget=two_betas, sandbox=sandbox,
                           options=tiny(tiny_task, budget=two_betas))
    comparison = report.leaders[0].comparisons[0]
    assert comparison.baseline == "dpo" and comparison.verdict == "no detectable difference"
    assert comparison.difference == pytest.approx(0.0, abs=1e-6) and not report.leaders[0].confirmed
    # each seed's fitness is read off a curve of the betas a two-trial evaluation tries first
    assert comparison.candidate_betas == comparison.baseline_betas == pytest.approx((0.1, 0.1 * 10 ** 0.5))
    assert report.ran == 2 * 2 * 2  # two losses, two seeds, two betas


def test_a_held_out_task_is_confirmed_too_and_a_leader_worse_there_is_no_discovery(campaign_home, tiny_task,
                                                                                    tiny_cache, sandbox, monkeypatch,
                                                                                    tmp_path):
    from conftest import tiny_world

    from lossearch.evaluation.finetune import tier
    from lossearch.evaluation.tasks.build import DataConfig
    from lossearch.evaluation.tasks.load import load_task
    from lossearch.search.confirm import judge

    noisy = load_task("noisy", tiny_cache, data=DataConfig(**TINY_DATA_FIELDS), world=tiny_world())
    monkeypatch.setattr(tier, "load_task", lambda name, *args, **kwargs: {"sentiment": tiny_task, "noisy": noisy}[name])
    shutil.copytree(campaign_home / "runs", tmp_path / "runs")  # its noisy runs stay out of the other tests' copy
    with open_campaign("t", runs_dir=tmp_path / "runs") as handle:
        report = confirm_campaign(handle, ConfirmConfig(top=1, seeds=2, tasks=("noisy",)), sandbox=sandbox,
                                  options=FinetuneOptions(budget=TINY, device="cpu"))
    assert report.tasks == ("sentiment", "noisy")
    leader = report.leaders[0]
    assert {(c.task, c.baseline) for c in leader.comparisons if c.baseline == "dpo"} == {("sentiment", "dpo"),
                                                                                          ("noisy", "dpo")}
    noisy_runs = [c for c in leader.comparisons if c.task == "noisy"]
    sentiment_runs = [c for c in leader.comparisons if c.task == "sentiment"]
    assert noisy_runs[0].candidate_fitness != sentiment_runs[0].candidate_fitness  # trained on the other task
    # the rule: better than DPO on the selection task, and not worse than DPO on any held-out task
    dpo = report.leaders[0].comparisons[0]
    better = replace(dpo, task="sentiment", verdict="better")
    for held_out, confirmed in (("no detectable difference", True), ("better", True), ("worse", False)):
        (verdict,) = judge([confirm_module.Contender("x", None, (0.1,))],  # type: ignore[arg-type]
                           [[better, replace(dpo, task="noisy", verdict=held_out)]], "sentiment", "dpo")
        assert verdict.confirmed is confirmed, held_out
    (verdict,) = judge([confirm_module.Contender("x", None, (0.1,))],  # type: ignore[arg-type]
                       [[replace(dpo, task="sentiment", verdict="no detectable difference")]], "sentiment", "dpo")
    assert not verdict.confirmed


KILL_SCRIPT = """
import sys
from pathlib import Path
from lossearch.evaluation.finetune.config import Budget, FinetuneOptions
from lossearch.evaluation.tasks.build import DataConfig
from lossearch.evaluation.tasks.catalog import WorldConfig
from lossearch.evaluation.tasks.load import load_task
from lossearch.search.confirm import ConfirmConfig, confirm_campaign
from lossearch.store.locate import open_campaign

runs, cache = Path(sys.argv[1]), Path(sys.argv[2])
world = WorldConfig("sentiment", corpus_size=400, hidden_size=32, layers=1, heads=2, intermediate_size=64,
                    pretrain_steps=200, pretrain_batch=16)
task = load_task("sentiment", cache, data=DataConfig(**{fields}), world=world)
options = FinetuneOptions(budget=Budget("tiny", steps=6, pairs=48, batch_size=4, trials=1, seeds=1, eval_prompts=16),
                          task_data=task, device="cpu")
with open_campaign("t", runs_dir=runs) as handle:
    report = confirm_campaign(handle, ConfirmConfig(top=2, seeds=6), options=options)
print("ran", report.ran)
"""


def confirm_runs(runs_dir) -> int:
    with Store.for_campaign_dir(runs_dir / "t") as store:
        return sum(1 for e in store.evaluations(campaign_id=store.get_campaign("t").id) if e.tier == CONFIRM_TIER)


@pytest.mark.slow
def test_a_stage_killed_midway_resumes_and_repeats_nothing(campaign_home, tiny_task, tiny_cache, tmp_path):
    shutil.copytree(campaign_home / "runs", tmp_path / "runs")
    script = KILL_SCRIPT.replace("{fields}", repr(TINY_DATA_FIELDS))  # the fixture's tiny task, from its cache
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "runs"), str(tiny_cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while confirm_runs(tmp_path / "runs") < 3 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.2)
    child.kill()
    child.wait()
    done_before = confirm_runs(tmp_path / "runs")
    assert 3 <= done_before < 18, done_before  # killed mid-stage: 3 or 4 losses x 6 seeds in all
    finished = subprocess.run([sys.executable, "-c", script, str(tmp_path / "runs"), str(tiny_cache)],
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    total = confirm_runs(tmp_path / "runs")
    assert total in (18, 24)  # two leaders and DPO, and the best seed when it is not DPO
    assert finished.stdout.split()[-1] == str(total - done_before)  # only what was missing ran
    with Store.for_campaign_dir(tmp_path / "runs" / "t") as store:
        assert store.integrity_check() == "ok"
        assert len(store.confirmations(store.get_campaign("t").id)) == 2


@pytest.mark.slow  # 50 s: a campaign with its finetune tier
def test_the_run_ends_with_the_verdicts_and_confirm_reproduces_them(tiny_task, monkeypatch, capfd, tmp_path,
                                                                   short_quick):
    """The demo's path (`lossearch run` with the finetune tier and its confirmation stage), in this
    process on the tiny task; then `lossearch confirm` on the finished campaign, which reruns nothing."""
    from lossearch.cli import main
    from lossearch.evaluation.finetune import tier

    monkeypatch.setattr(tier, "load_task", lambda name, *args, **kwargs: tiny_task)
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--name", "d", "--generations", "1", "--population", "2", "--confirm-seeds", "2"]) == 0
    printed = capfd.readouterr().out
    with open_campaign("d", runs_dir=tmp_path / "runs") as handle:
        data = load_campaign_data(handle.store, handle.campaign)
    leader, score = next((c, s) for c, s in rank(data).ranked if s.tier == "finetune")
    seeds = {e.seed for e in data.evaluations[leader.id] if e.tier == "finetune"}
    assert score.seeds == 3 and seeds == {0, 1, 2}  # raced: shown as the leader only after three seeds
    assert "confirmation on 2 fresh seeds" in printed and "dpo" in printed
    assert any(word in printed for word in ("confirmed discovery", "not confirmed"))
    assert main(["confirm", "--run", "d", "--top", "1", "--seeds", "2", "--json"]) == 0
    rows = json.loads(capfd.readouterr().out)
    with open_campaign("d", runs_dir=tmp_path / "runs") as handle:
        data = load_campaign_data(handle.store, handle.campaign)
    (record,) = data.confirmations.values()
    assert rows == record.record["comparisons"]  # the stored verdicts, reproduced without training again
    assert all(row["seeds"] == record.record["seeds"] for row in rows)
