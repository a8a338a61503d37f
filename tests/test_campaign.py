"""The campaign loop, run as a user runs it, killed and resumed as a user's machine would kill it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter

import pytest
from helpers import run_cli
from helpers import start_cli as start_lossearch

from lossearch.errors import ConfigError
from lossearch.ranking import load_campaign_data, operator_stats, rank
from lossearch.search.campaign import run_campaign
from lossearch.search.config import CampaignConfig, merge_resumed
from lossearch.search.proposers import OPERATORS
from lossearch.search.proposers.mutation import CROSSOVERS
from lossearch.search.seeds import seed_paths
from lossearch.store import Store

FAST = {"finetune": False, "population": 3, "islands": 2}


def campaign_db(tmp_path, name: str) -> Store:
    return Store.for_campaign_dir(tmp_path / "runs" / name)


@pytest.mark.slow  # 20-30 s on a 2-core CPU without bf16
def test_a_short_campaign_records_everything(tmp_path):
    outcome = run_campaign(CampaignConfig(**{"name": "short", "generations": 2, **FAST}), runs_dir=tmp_path / "runs")
    assert outcome.stop_reason == "reached 2 generation(s)"
    with campaign_db(tmp_path, "short") as store:
        campaign = store.get_campaign("short")
        assert campaign.status == "finished"
        candidates = store.candidates(campaign.id)
        by_generation = Counter(candidate.generation for candidate in candidates)
        assert by_generation[0] == len(seed_paths()) and by_generation[1] == 3 and by_generation[2] == 3
        assert not store.pending_candidates(campaign.id)
        families = set()
        for child in (c for c in candidates if c.generation > 0):
            edges = store.parents(child.id)
            assert edges and {edge.relation for edge in edges} <= {"mutation", "crossover"}
            assert child.proposer == "mutation" and child.idea
            # the operator is recorded; a crossover names two parents, a mutation one
            family = "crossover" if child.model in CROSSOVERS else "mutation"
            assert child.model in OPERATORS and [e.relation for e in edges] == [family] * (1 + (family == "crossover"))
            families.add(family)
        assert families == {"mutation", "crossover"}  # both operator families fire, though each child has two parents
        record = operator_stats(load_campaign_data(store, campaign))
        assert sum(stats.children for stats in record.values()) == 6
        evaluated = [c for c in candidates if c.status == "evaluated"]
        assert len(evaluated) >= len(seed_paths())
        for candidate in evaluated:
            tiers = Counter(e.tier for e in store.evaluations(candidate_id=candidate.id))
            assert tiers == {"sanity": 1, "bandit": 1}
        assert store.integrity_check() == "ok"


@pytest.mark.slow  # 20-30 s on a 2-core CPU without bf16
def test_seeds_only_campaign_is_the_baseline(tmp_path):
    outcome = run_campaign(CampaignConfig(name="base", proposer="none", finetune=False), runs_dir=tmp_path / "runs")
    assert outcome.stop_reason == "evaluated the seed library"
    with campaign_db(tmp_path, "base") as store:
        board = rank(load_campaign_data(store, store.get_campaign("base"))).candidates
        assert len(board) == len(seed_paths()) and all(candidate.proposer == "seed" for candidate in board)


def test_the_live_panel_draws_the_finetuned_candidates_progress_bar():
    from rich.console import Console

    from lossearch.reporting.display import stats_table
    from lossearch.search.campaign import CampaignStats

    console = Console(record=True, width=100)
    stats = CampaignStats(message="finetuning dpo: beta 0.1, seed 0", runs=(1, 3))
    console.print(stats_table(stats, "campaign demo"))
    drawn = console.export_text()
    assert "runs" in drawn and "1/3" in drawn and "finetuning dpo: beta 0.1" in drawn
    console.print(stats_table(CampaignStats(), "campaign demo"))
    assert "1/3" not in console.export_text()  # between candidates there is no bar


def test_resuming_refuses_a_changed_task_but_takes_new_limits():
    stored = CampaignConfig(name="x", generations=2)
    assert merge_resumed(stored, CampaignConfig(name="x", generations=5), {"generations"}).generations == 5
    assert merge_resumed(stored, CampaignConfig(name="x", task="sort"), {"generations"}).task == "sentiment"
    with pytest.raises(ConfigError, match="started with task"):
        merge_resumed(stored, CampaignConfig(name="x", task="sort"), {"task"})


def test_max_evals_stops_and_says_why(tmp_path):
    outcome = run_campaign(CampaignConfig(**{"name": "capped", "max_evals": 5, **FAST}), runs_dir=tmp_path / "runs")
    assert outcome.stop_reason == "reached --max-evals 5"
    with campaign_db(tmp_path, "capped") as store:
        assert store.get_campaign("capped").status == "stopped"


def test_a_campaign_without_a_seed_never_holds_it_and_keeps_it_out_on_a_resume(tmp_path):
    with pytest.raises(ConfigError, match="no such seed loss"):
        CampaignConfig(name="x", without_seeds=("nope",))
    with pytest.raises(ConfigError, match="baseline"):
        CampaignConfig(name="x", without_seeds=("dpo",))
    config = CampaignConfig(**{"name": "ablation", "max_evals": 1, "without_seeds": ("discopop", "ipo"), **FAST})
    run_campaign(config, runs_dir=tmp_path / "runs")
    run_campaign(CampaignConfig(name="ablation", max_evals=2), given={"max_evals"}, runs_dir=tmp_path / "runs")
    with campaign_db(tmp_path, "ablation") as store:
        campaign = store.get_campaign("ablation")
        names = {candidate.name for candidate in store.candidates(campaign.id)}
        assert len(names) == len(seed_paths()) - 2 and not names & {"discopop", "ipo"} and "dpo" in names
        assert campaign.config["without_seeds"] == ["discopop", "ipo"]


def snapshot(store: Store, name: str) -> dict:
    campaign = store.find_campaign(name)
    if campaign is None:
        return {"candidates": {}, "evaluations": set()}
    candidates = {c.id: c.code_hash for c in store.candidates(campaign.id)}
    evaluations = {(e.candidate_id, e.tier, e.task, e.seed) for e in store.evaluations(campaign_id=campaign.id)}
    return {"candidates": candidates, "evaluations": evaluations}


def start_cli(tmp_path, *args: str) -> subprocess.Popen:
    return start_lossearch("run", *args, cwd=tmp_path)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_loses_and_repeats_nothing(tmp_path):
    # six generations: each kill lands while there is work left (a start is ~2 s of imports, then generation 0)
    args = ["--name", "crash", "--generations", "6", "--population", "3", "--no-finetune"]
    seen: dict = {"candidates": {}, "evaluations": set()}
    for delay in (2.0, 3.5, 5.0):
        process = start_cli(tmp_path, *args)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with campaign_db(tmp_path, "crash") as store:
            assert store.integrity_check() == "ok"
            now = snapshot(store, "crash")
        # nothing recorded before a kill is lost by the kill or by the next run
        assert seen["candidates"].items() <= now["candidates"].items()
        assert seen["evaluations"] <= now["evaluations"]
        seen = now
    finished = start_cli(tmp_path, *args)
    out, err = finished.communicate(timeout=300)
    assert finished.returncode == 0, err
    assert "reached 6 generation(s)" in out
    with campaign_db(tmp_path, "crash") as store:
        assert store.integrity_check() == "ok"
        campaign = store.get_campaign("crash")
        final = snapshot(store, "crash")
        assert seen["candidates"].items() <= final["candidates"].items()
        assert not store.pending_candidates(campaign.id)
        candidates = store.candidates(campaign.id)
        expected = {0: len(seed_paths()), **{generation: 3 for generation in range(1, 7)}}
        assert Counter(c.generation for c in candidates) == expected
        assert len({c.code_hash for c in candidates}) == len(candidates)  # no candidate stored twice
        per_key = Counter((e.candidate_id, e.tier, e.task, e.seed) for e in store.evaluations(campaign_id=campaign.id))
        assert max(per_key.values()) == 1  # no evaluation recorded twice
        for candidate in candidates:
            if candidate.status == "evaluated":
                assert {e.tier for e in store.evaluations(candidate_id=candidate.id)} >= {"sanity", "bandit"}


@pytest.mark.slow  # 20-30 s on a 2-core CPU without bf16
def test_ctrl_c_stops_cleanly_and_resumably(tmp_path):
    # more generations than it can finish before the signal, which comes once generation 0 is done
    process = start_cli(tmp_path, "--name", "interrupted", "--generations", "50", "--no-finetune")
    first = process.stdout.readline()  # the console flushes each line
    assert first.startswith("generation 0 done"), first + process.stderr.read()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "interrupted (Ctrl-C)" in out and "Traceback" not in err
    assert "reached 50 generation(s)" not in out
    with campaign_db(tmp_path, "interrupted") as store:
        campaign = store.get_campaign("interrupted")
        assert campaign.status == "stopped"
        assert store.integrity_check() == "ok"


LLM_CODE = '''"""Margin DPO {index}: DPO with a target margin on the implicit reward."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1, gamma: float = {gamma}):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin - gamma) + {weight} * F.softplus(-beta * margin) ** 2
'''


def llm_reply(index: int):
    """A scripted chat reply holding margin DPO number `index` (its own gamma and weight)."""
    from test_proposers import Reply

    code = LLM_CODE.format(index=index, gamma=0.1 * (index + 1), weight=0.05 * index)
    return Reply(content=json.dumps({"thought": f"idea {index}", "name": f"margin_{index}", "code": code}))


@pytest.mark.slow  # 20-30 s on a 2-core CPU without bf16
def test_llm_campaign_against_a_local_openai_compatible_server(tmp_path, monkeypatch):
    from test_proposers import FakeOpenAI, Reply

    server = FakeOpenAI()
    try:
        server.script.extend(llm_reply(index) for index in range(12))
        server.script.insert(1, Reply(status=500))  # one failure on the way, retried
        server.script.insert(6, server.script[0])  # one reply repeats an earlier one's code: refused, and said
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a loopback server needs no key
        process = start_cli(tmp_path, "--name", "llm", "--generations", "2", "--population", "3", "--no-finetune",
                            "--proposer", "llm", "--llm-base-url", server.url, "--llm-model", "local-model",
                            "--notes-every", "1")
        out, err = process.communicate(timeout=300)
    finally:
        server.close()
    prompts = [request["body"]["messages"][-1]["content"] for request in server.requests]
    notes_requests = [text for text in prompts if "## Your notes" not in text and "## Your job" not in text]
    assert len(notes_requests) == 1  # before generation 2, the model was asked to write its notes
    assert process.returncode == 0, err
    assert "reached 2 generation(s)" in out
    with campaign_db(tmp_path, "llm") as store:
        campaign = store.get_campaign("llm")
        children = [c for c in store.candidates(campaign.id) if c.generation > 0]
        assert len(children) == 6
        assert all(c.proposer == "llm" and c.model == "local-model" for c in children)
        assert all(c.idea.startswith("idea ") for c in children)
        assert all(c.instruction in ("improve", "combine", "novel", "repair") and c.temperature in (0.7, 1.0)
                   for c in children)
        (note,) = store.notes(campaign.id)
        assert note.generation == 2 and note.author == "local-model" and note.text
        first_generation = [c.name for c in children if c.generation == 1]
        later = [text for text in prompts if "## Your job" in text][-1]  # a prompt of generation 2
        assert "## Your notes on this campaign so far" in later and "## Your earlier proposals" in later
        assert all(f"- {name} [" in later for name in first_generation)
        assert "DPO's bandit fitness is" in later
        assert any("[duplicate]: the same code as #" in text for text in prompts)
        calls = store.llm_calls(campaign.id)
        assert {call.outcome for call in calls} >= {"ok", "server_error"}
        assert store.llm_usage(campaign.id).total_tokens > 0
        assert any(edge.relation == "inspiration" or edge.relation in ("mutation", "crossover")
                   for child in children for edge in store.parents(child.id))
    assert run_cli("report", "--run", "llm", cwd=tmp_path, timeout=120).returncode == 0
    assert "LLM instructions" in (tmp_path / "runs" / "llm" / "report.html").read_text()
    shown = run_cli("show", str(children[0].id), "--run", "llm", cwd=tmp_path, timeout=120,
                    env={"COLUMNS": "200"}).stdout
    assert f"asked to: {children[0].instruction} at temperature {children[0].temperature:g}" in shown


def test_llm_requests_are_in_flight_together_and_children_are_evaluated_while_others_are_written(tmp_path,
                                                                                                 monkeypatch):
    from test_proposers import FakeOpenAI

    server = FakeOpenAI()
    server.script.extend(llm_reply(index) for index in range(4))
    server.delay_of = lambda arrival: 0.2 if arrival < 2 else 6.0  # two quick replies, two slow ones
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    try:
        process = start_cli(tmp_path, "--name", "overlap", "--generations", "1", "--population", "4", "--no-finetune",
                            "--proposer", "llm", "--llm-base-url", server.url, "--llm-model", "local-model",
                            "--llm-concurrency", "4")
        out, err = process.communicate(timeout=300)
    finally:
        server.close()
    assert process.returncode == 0, err
    assert server.max_in_flight == 4  # the generation's four requests were out at once
    with campaign_db(tmp_path, "overlap") as store:
        campaign = store.get_campaign("overlap")
        children = [c for c in store.candidates(campaign.id) if c.generation == 1]
        assert len(children) == 4
        first_evaluated = min(e.created_at.timestamp() for c in children for e in store.evaluations(candidate_id=c.id))
    assert first_evaluated < max(server.replied_at)  # a child was evaluated before the last reply came


@pytest.mark.slow
def test_unreachable_llm_endpoint_is_one_line(tmp_path):
    process = start_cli(tmp_path, "--name", "nollm", "--generations", "1", "--no-finetune", "--proposer", "llm",
                        "--llm-base-url", "http://127.0.0.1:9/v1", "--llm-model", "m")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 2
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err


def test_two_workers_evaluate_the_same_campaign(tmp_path):
    config = CampaignConfig(name="parallel", generations=1, workers=2, **FAST)
    outcome = run_campaign(config, runs_dir=tmp_path / "runs")
    assert outcome.stop_reason == "reached 1 generation(s)"
    with campaign_db(tmp_path, "parallel") as store:
        campaign = store.get_campaign("parallel")
        assert not store.pending_candidates(campaign.id)
        per_key = Counter((e.candidate_id, e.tier, e.task, e.seed) for e in store.evaluations(campaign_id=campaign.id))
        assert per_key and max(per_key.values()) == 1
        seeds = [c for c in store.candidates(campaign.id) if c.generation == 0]
        assert all(c.status == "evaluated" for c in seeds)
        assert store.integrity_check() == "ok"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_workers_finetune_a_new_campaign_whose_optuna_tables_exist_before_they_start(
        tmp_path, sentiment_task, real_cache, monkeypatch, short_quick):
    import sqlalchemy as sa

    from lossearch.search import campaign as campaign_module

    monkeypatch.setenv("LOSSEARCH_CACHE", str(real_cache))
    tables_when_finetuning: list[bool] = []
    real_finetune_tier = campaign_module.finetune_tier

    def finetune_tier(sandbox, spec, task, *args, **options):  # the race, made certain: each worker looks first
        engine = sa.create_engine(options["storage"])
        try:
            tables_when_finetuning.append(sa.inspect(engine).has_table("studies"))
        finally:
            engine.dispose()
        return real_finetune_tier(sandbox, spec, task, *args, **options)

    monkeypatch.setattr(campaign_module, "finetune_tier", finetune_tier)
    # generation 0 promotes its best and the DPO baseline: two finetunes, one per worker, at once
    config = CampaignConfig(name="tuned", generations=1, population=2, workers=2, finetune=True, promote_share=0.01,
                            confirm=False)
    bars: list[tuple[float, float] | None] = []  # the live display's per-candidate progress, as it was updated
    outcome = run_campaign(config, runs_dir=tmp_path / "runs", on_update=lambda stats: bars.append(stats.runs))
    assert outcome.stop_reason == "reached 1 generation(s)"
    assert tables_when_finetuning and all(tables_when_finetuning)  # no worker had to create Optuna's tables
    # each finetuned candidate's bar went from its first run to its last, and the bar goes once it is done
    assert (0, 1) in bars and any(bar is not None and bar[0] == bar[1] == 2 for bar in bars)  # two betas
    assert outcome.stats.runs is None
    with campaign_db(tmp_path, "tuned") as store:
        campaign = store.get_campaign("tuned")
        finetuned = [c for c in store.candidates(campaign.id) if c.tier == "finetune"]
        assert len(finetuned) >= 2 and all(c.status == "evaluated" for c in finetuned)
        assert store.integrity_check() == "ok"
