"""The campaign store, on a real database file.

One suite runs against every backend (the way optuna/testing/pytest_storages.py
does): SQLite always, PostgreSQL when LOSSEARCH_TEST_POSTGRES_URL names a server
we may create throwaway databases on, e.g.
`postgresql+psycopg://postgres@127.0.0.1:5432/postgres`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from lossearch.contract import source_hash
from lossearch.store import NotFoundError, Store, StoreError, migrations, models, values
from lossearch.store import store as store_module
from lossearch.store.migrations import SCHEMA_VERSION

REPO = Path(__file__).resolve().parent.parent

DPO = '''"""DPO."""
import torch.nn.functional as F

def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
'''


@pytest.fixture
def store(store_url) -> Iterator[Store]:
    with Store(store_url) as opened:
        yield opened


@pytest.fixture
def sqlite_store(tmp_path) -> Iterator[Store]:
    with Store.for_campaign_dir(tmp_path / "runs" / "demo") as opened:
        yield opened


def variant(number: int) -> str:
    return DPO.replace("beta * ", f"{number + 1} * beta * ")


def add(store: Store, campaign_id: int, number: int, **fields):
    fields = {"name": f"c{number}", "proposer": "mutation", "generation": 1, **fields}
    return store.add_candidate(campaign_id, source=variant(number), **fields)


# -- campaigns -----------------------------------------------------------------------------


def test_campaigns_are_created_found_and_listed_newest_last(store):
    first = store.create_campaign("first", {"task": "sentiment", "budget": {"generations": 2}})
    second = store.create_campaign("second", {"task": "sort"})

    assert store.get_campaign("first") == store.find_campaign("first") == first
    assert store.find_campaign("third") is None
    assert store.get_campaign_by_id(second.id) == second
    assert store.latest_campaign() == second
    assert first.status == "running" and first.stop_reason is None
    assert first.config == {"task": "sentiment", "budget": {"generations": 2}}
    assert first.created_at.tzinfo is not None
    assert [summary.campaign.name for summary in store.list_campaigns()] == ["first", "second"]


def test_an_empty_database_has_no_latest_campaign(store):
    assert store.latest_campaign() is None
    assert store.list_campaigns() == []


def test_missing_and_duplicate_campaigns_say_so_in_one_line(store):
    store.create_campaign("demo", {})
    with pytest.raises(StoreError, match="already exists") as duplicate:
        store.create_campaign("demo", {})
    with pytest.raises(NotFoundError, match="no campaign named 'nope'") as missing:
        store.get_campaign("nope")
    with pytest.raises(NotFoundError, match="no campaign with id 999"):
        store.get_campaign_by_id(999)
    for error in (duplicate.value, missing.value):
        assert "\n" not in str(error)


def test_campaign_status_records_why_it_stopped(store):
    campaign = store.create_campaign("demo", {})
    stopped = store.set_campaign_status(campaign.id, "stopped", reason="--max-cost 1.00 reached")
    assert (stopped.status, stopped.stop_reason) == ("stopped", "--max-cost 1.00 reached")
    assert stopped.updated_at >= campaign.updated_at
    resumed = store.set_campaign_status(campaign.id, "running")
    assert (resumed.status, resumed.stop_reason) == ("running", None)
    with pytest.raises(ValueError, match="unknown campaign status"):
        store.set_campaign_status(campaign.id, "paused")


def test_configuration_must_be_json(store):
    with pytest.raises(ValueError, match="JSON"):
        store.create_campaign("demo", {"path": Path("/tmp")})
    with pytest.raises(ValueError, match="JSON"):
        store.create_campaign("demo", {"beta": float("nan")})
    assert store.latest_campaign() is None


# -- candidates and lineage ----------------------------------------------------------------


def test_a_candidate_is_recorded_with_its_lineage(store):
    campaign = store.create_campaign("demo", {})
    dpo = store.add_candidate(campaign.id, source=DPO, name="dpo", proposer="seed", generation=0)
    ipo = add(store, campaign.id, 1, generation=0, proposer="seed")
    child = store.add_candidate(
        campaign.id, source=variant(2), name="blend", idea="blend DPO and IPO by the margin",
        proposer="llm", model="gpt-test", generation=1, island=2,
        parents=[(dpo.id, "crossover"), (ipo.id, "crossover"), (dpo.id, "crossover")],
    )

    assert child.code_hash == source_hash(variant(2))
    assert (child.status, child.tier, child.fitness, child.fingerprint) == ("pending", None, None, None)
    assert (child.idea, child.model, child.island) == ("blend DPO and IPO by the margin", "gpt-test", 2)
    assert store.parents(child.id) == [values.LineageEdge(child.id, dpo.id, "crossover"),
                                       values.LineageEdge(child.id, ipo.id, "crossover")]
    assert [edge.child_id for edge in store.children(dpo.id)] == [child.id]
    assert store.parents(dpo.id) == []
    assert len(store.lineage(campaign.id)) == 2


def test_an_llm_candidate_keeps_what_it_was_asked_and_notes_keep_one_per_generation(store):
    campaign = store.create_campaign("notes", {})
    asked = add(store, campaign.id, 1, proposer="llm", model="m", instruction="repair", temperature=1.2)
    assert store.get_candidate(asked.id).instruction == "repair" and store.get_candidate(asked.id).temperature == 1.2
    store.record_note(campaign.id, 3, author="m", text="first")
    store.record_note(campaign.id, 3, author="m", text="rewritten")  # a resumed generation writes it again
    store.record_note(campaign.id, 6, author="m", text="later")
    assert [(note.generation, note.text) for note in store.notes(campaign.id)] == [(3, "rewritten"), (6, "later")]


def test_a_candidate_with_an_unknown_parent_writes_nothing(store):
    campaign = store.create_campaign("demo", {})
    with pytest.raises(NotFoundError, match="no candidate with id 12345"):
        add(store, campaign.id, 0, parents=[(12345, "mutation")])
    assert store.candidates(campaign.id) == []
    assert store.lineage(campaign.id) == []


def test_bad_statuses_and_relations_are_refused(store):
    campaign = store.create_campaign("demo", {})
    parent = add(store, campaign.id, 0)
    with pytest.raises(ValueError, match="unknown lineage relation"):
        add(store, campaign.id, 1, parents=[(parent.id, "adoption")])
    with pytest.raises(ValueError, match="unknown candidate status"):
        add(store, campaign.id, 1, status="great")
    with pytest.raises(NotFoundError):
        add(store, 999, 1)
    assert len(store.candidates(campaign.id)) == 1


def test_exact_duplicates_are_found_by_hash_whatever_the_formatting(store):
    campaign = store.create_campaign("demo", {})
    other = store.create_campaign("other", {})
    original = store.add_candidate(campaign.id, source=DPO, name="dpo", proposer="seed", generation=0)
    reformatted = DPO.replace("def loss(", "# a comment\ndef loss(")

    assert store.find_candidate_by_hash(campaign.id, source_hash(reformatted)) == original
    assert store.find_candidate_by_hash(other.id, source_hash(DPO)) is None
    duplicate = store.add_candidate(campaign.id, source=reformatted, name="dpo2", proposer="llm", generation=1,
                                    status="duplicate")
    assert store.find_candidate_by_hash(campaign.id, duplicate.code_hash) == original


def test_a_snapshot_leaves_fingerprints_in_the_store_and_reads_those_asked_for(store):
    from lossearch.ranking import load_campaign_data

    campaign = store.create_campaign("demo", {})
    printed, bare = add(store, campaign.id, 0), add(store, campaign.id, 1)
    store.update_candidate(printed.id, fingerprint=[0.5, -0.25, 1])
    assert [c.fingerprint for c in store.candidates(campaign.id, fingerprints=False)] == [None, None]
    assert store.fingerprints_of([printed.id, bare.id]) == {printed.id: (0.5, -0.25, 1.0), bare.id: None}
    data = load_campaign_data(store, campaign)
    assert data.candidates[printed.id].fingerprint is None  # not loaded with the snapshot
    assert data.fingerprints([bare.id, printed.id]) == {bare.id: None, printed.id: (0.5, -0.25, 1.0)}
    assert data.fingerprint(printed.id) == (0.5, -0.25, 1.0)


def test_unindexed_prints_come_in_id_order_a_batch_at_a_time_and_leave_the_store_once_indexed(store):
    campaign = store.create_campaign("demo", {})
    other = store.create_campaign("other", {})
    made = [add(store, campaign.id, number) for number in range(6)]
    for number, candidate in enumerate(made):
        if number != 2:  # one without a print, still pending: left for a later check
            store.update_candidate(candidate.id, fingerprint=[float(number)],
                                   status="duplicate" if number == 4 else "evaluated")
    foreign = add(store, other.id, 0)
    store.update_candidate(foreign.id, fingerprint=[9.0])
    batches = list(store.unindexed_fingerprints(campaign.id, below=made[5].id, size=2))
    assert [[values for _, values in batch] for batch in batches] == [[(0.0,), (1.0,)], [(3.0,)], [(4.0,)]]
    store.add_print_index(campaign.id, {i: b"x" for batch in batches for i, _ in batch})
    assert list(store.unindexed_fingerprints(campaign.id, below=made[5].id + 1)) == [[(made[5].id, (5.0,))]]
    assert [i for i, _ in store.print_index(campaign.id, below=made[5].id, leave_out=("duplicate",))] == [
        made[0].id, made[1].id, made[3].id]


def test_updating_a_candidate_touches_only_the_outcome_fields(store):
    campaign = store.create_campaign("demo", {})
    candidate = add(store, campaign.id, 0)
    updated = store.update_candidate(candidate.id, status="evaluated", tier="bandit", fitness=0.75,
                                     fingerprint=[0.5, -0.25, 1])
    assert (updated.status, updated.tier, updated.fitness) == ("evaluated", "bandit", 0.75)
    assert updated.fingerprint == (0.5, -0.25, 1.0)
    assert updated.updated_at >= candidate.updated_at
    assert store.get_candidate(candidate.id) == updated

    failed = store.update_candidate(candidate.id, status="failed", failure_kind="nan", failure_message="loss is nan")
    assert (failed.failure_kind, failed.failure_message, failed.fitness) == ("nan", "loss is nan", 0.75)
    with pytest.raises(TypeError, match="cannot update source"):
        store.update_candidate(candidate.id, source="x")
    with pytest.raises(ValueError, match="unknown failure kind"):
        store.update_candidate(candidate.id, failure_kind="bad luck")
    with pytest.raises(ValueError, match="finite"):
        store.update_candidate(candidate.id, fitness=float("inf"))
    with pytest.raises(NotFoundError, match="no candidate with id 999"):
        store.update_candidate(999, status="failed")


def test_candidates_are_filtered_and_the_unfinished_ones_listed(store):
    campaign = store.create_campaign("demo", {})
    made = [add(store, campaign.id, number, generation=number % 2, island=number % 3) for number in range(6)]
    store.update_candidate(made[0].id, status="evaluated", fitness=1.0)
    store.update_candidate(made[1].id, status="evaluating")
    store.update_candidate(made[2].id, status="rejected", failure_kind="policy", failure_message="import os")

    assert [c.id for c in store.candidates(campaign.id)] == [c.id for c in made]
    assert [c.id for c in store.candidates(campaign.id, generation=1)] == [made[1].id, made[3].id, made[5].id]
    assert [c.id for c in store.candidates(campaign.id, island=0)] == [made[0].id, made[3].id]
    assert [c.id for c in store.candidates(campaign.id, status="rejected")] == [made[2].id]
    finished_first = store.candidates(campaign.id, status=("evaluated", "rejected"), generation=0)
    assert [c.id for c in finished_first] == [made[0].id, made[2].id]
    assert [c.id for c in store.pending_candidates(campaign.id)] == [made[1].id, made[3].id, made[4].id, made[5].id]


def test_values_are_frozen_and_detached_from_the_database(store):
    campaign = store.create_campaign("demo", {"tasks": ["sentiment"]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        campaign.status = "finished"
    campaign.config["tasks"].append("sort")
    assert store.get_campaign("demo").config == {"tasks": ["sentiment"]}


# -- evaluations ---------------------------------------------------------------------------


def test_an_evaluation_is_recorded_once_per_key(store):
    campaign = store.create_campaign("demo", {})
    candidate = add(store, campaign.id, 0)
    first = store.record_evaluation(candidate.id, tier="bandit", task="sentiment", seed=0,
                                    metrics={"reward": 0.5, "kl": 0.1}, fitness=0.45, seconds=0.3)
    again = store.record_evaluation(candidate.id, tier="bandit", task="sentiment", seed=0,
                                    metrics={"reward": 0.9}, fitness=0.9, seconds=0.1)
    other_seed = store.record_evaluation(candidate.id, tier="bandit", task="sentiment", seed=1,
                                         metrics={"reward": 0.6}, fitness=0.55, seconds=0.3)

    assert again == first
    assert first.metrics == {"reward": 0.5, "kl": 0.1}
    assert store.evaluations(candidate_id=candidate.id) == [first, other_seed]
    assert store.find_evaluation(candidate.id, tier="bandit", task="sentiment", seed=1) == other_seed
    assert store.find_evaluation(candidate.id, tier="finetune", task="sentiment", seed=1) is None


def test_evaluations_are_filtered_by_campaign_tier_and_task(store):
    first, second = store.create_campaign("a", {}), store.create_campaign("b", {})
    x, y = add(store, first.id, 0), add(store, second.id, 1)
    for candidate in (x, y):
        for tier, task in (("bandit", "sentiment"), ("finetune", "sentiment"), ("finetune", "sort")):
            store.record_evaluation(candidate.id, tier=tier, task=task, seed=0, metrics={}, fitness=None, seconds=1.0)

    assert len(store.evaluations()) == 6
    assert {e.candidate_id for e in store.evaluations(campaign_id=first.id)} == {x.id}
    assert [(e.tier, e.task) for e in store.evaluations(campaign_id=second.id, tier="finetune")] == [
        ("finetune", "sentiment"), ("finetune", "sort")]
    assert len(store.evaluations(task="sort")) == 2


def test_metrics_must_be_finite_json(store):
    campaign = store.create_campaign("demo", {})
    candidate = add(store, campaign.id, 0)
    with pytest.raises(ValueError, match="metrics"):
        store.record_evaluation(candidate.id, tier="bandit", task="t", seed=0, metrics={"kl": float("nan")},
                                fitness=None, seconds=1.0)
    with pytest.raises(ValueError, match="fitness"):
        store.record_evaluation(candidate.id, tier="bandit", task="t", seed=0, metrics={}, fitness=float("-inf"),
                                seconds=1.0)
    with pytest.raises(NotFoundError):
        store.record_evaluation(999, tier="bandit", task="t", seed=0, metrics={}, fitness=None, seconds=1.0)
    assert store.evaluations() == []


# -- LLM calls -----------------------------------------------------------------------------


def test_llm_usage_adds_up_the_calls(store):
    campaign = store.create_campaign("demo", {})
    candidate = add(store, campaign.id, 0)
    assert store.llm_usage(campaign.id) == values.LLMUsage(0, 0, 0, 0.0, 0.0)
    store.record_llm_call(campaign.id, model="small", prompt_tokens=1000, completion_tokens=200, cost=0.01,
                          latency=1.5, outcome="ok", candidate_id=candidate.id)
    store.record_llm_call(campaign.id, model="large", prompt_tokens=3000, completion_tokens=500, cost=0.25,
                          latency=4.0, outcome="timeout")

    usage = store.llm_usage(campaign.id)
    assert (usage.calls, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2, 4000, 700, 4700)
    assert usage.cost == pytest.approx(0.26) and usage.latency == pytest.approx(5.5)
    assert store.llm_usage(campaign.id, model="small").cost == pytest.approx(0.01)
    calls = store.llm_calls(campaign.id)
    assert [(call.model, call.outcome, call.candidate_id) for call in calls] == [
        ("small", "ok", candidate.id), ("large", "timeout", None)]


# -- reading results -----------------------------------------------------------------------


def record_seeds(store: Store, candidate_id: int, task: str, fitnesses: list[float], tier: str = "finetune") -> None:
    for seed, fitness in enumerate(fitnesses):
        store.record_evaluation(candidate_id, tier=tier, task=task, seed=seed,
                                metrics={"reward": fitness + 0.1, "kl": 0.2, "note": "text is skipped"},
                                fitness=fitness, seconds=1.0)


def test_campaign_summaries_count_candidates_cost_and_activity(store):
    busy, idle = store.create_campaign("busy", {}), store.create_campaign("idle", {})
    made = [add(store, busy.id, number) for number in range(4)]
    store.update_candidate(made[0].id, status="evaluated", fitness=0.4)
    store.update_candidate(made[1].id, status="evaluated", fitness=0.6)
    store.update_candidate(made[2].id, status="rejected", fitness=0.9)
    for cost in (0.5, 0.25):
        last = store.record_llm_call(busy.id, model="m", prompt_tokens=10, completion_tokens=5, cost=cost,
                                     latency=1.0, outcome="ok")

    summaries = {summary.campaign.name: summary for summary in store.list_campaigns()}
    summary = summaries["busy"]
    assert (summary.candidates, summary.evaluated, summary.failed) == (4, 2, 1)
    assert summary.by_status == {"evaluated": 2, "rejected": 1, "pending": 1}
    assert summary.llm_cost == pytest.approx(0.75)
    assert summary.last_activity == last.created_at
    empty = summaries["idle"]
    assert (empty.candidates, empty.llm_cost) == (0, 0.0)
    assert empty.last_activity == idle.updated_at


# -- the database itself -------------------------------------------------------------------


def test_everything_survives_reopening(store_url):
    with Store(store_url) as first:
        campaign = first.create_campaign("demo", {"task": "sort"})
        candidate = add(first, campaign.id, 0)
    with Store(store_url) as again:
        assert again.get_campaign("demo") == campaign
        assert again.get_candidate(candidate.id) == candidate
        assert again.schema_version() == SCHEMA_VERSION


def test_concurrent_writers_neither_fail_nor_record_twice(store_url):
    with Store(store_url) as one, Store(store_url) as two:  # two stores: as good as two processes
        campaign = one.create_campaign("demo", {})
        root = add(one, campaign.id, 0)

        def work(worker: int) -> None:
            store = (one, two)[worker % 2]
            for seed in range(8):
                store.record_evaluation(root.id, tier="bandit", task="sentiment", seed=seed, metrics={"by": worker},
                                        fitness=0.1, seconds=0.1)
                child = add(store, campaign.id, 100 * worker + seed + 1, parents=[(root.id, "mutation")])
                store.update_candidate(child.id, status="evaluated", fitness=0.5)

        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(work, range(6)))
        assert [e.seed for e in one.evaluations(candidate_id=root.id)] == list(range(8))
        assert len(two.candidates(campaign.id, status="evaluated")) == len(one.children(root.id)) == 48


def test_a_database_error_rolls_back_and_becomes_a_store_error(store):
    campaign = store.create_campaign("demo", {})
    with pytest.raises(StoreError, match="database error at") as caught:
        with store._session_scope() as session:
            session.add(models.CandidateModel(
                campaign_id=campaign.id, name="x", source="x", code_hash="x", idea="", proposer="p",
                generation=0, island=0, status="pending", created_at=store_module._now(),
                updated_at=store_module._now()))
            session.flush()
            session.execute(sa.text("SELECT * FROM no_such_table"))
    assert "\n" not in str(caught.value)
    assert store.candidates(campaign.id) == []


def test_optuna_studies_share_the_campaign_database(store):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    campaign = store.create_campaign("demo", {})
    candidate = add(store, campaign.id, 0)

    study = optuna.create_study(storage=store.optuna_storage_url(), study_name=f"beta-{candidate.id}")
    study.optimize(lambda trial: (trial.suggest_float("beta", 0.01, 1.0, log=True) - 0.1) ** 2, n_trials=4)
    store.record_evaluation(candidate.id, tier="finetune", task="sentiment", seed=0,
                            metrics={"beta": study.best_params["beta"]}, fitness=-study.best_value, seconds=1.0)

    with Store(store.url) as reopened:  # our migrations run next to Optuna's tables
        assert reopened.schema_version() == SCHEMA_VERSION
        assert len(reopened.evaluations(candidate_id=candidate.id)) == 1
        assert reopened.integrity_check() == "ok"
    loaded = optuna.load_study(study_name=f"beta-{candidate.id}", storage=store.optuna_storage_url())
    assert len(loaded.trials) == 4
    tables = set(sa.inspect(sa.create_engine(store.url)).get_table_names())
    assert {"studies", "trials", "campaigns", "candidates", "evaluations", "lossearch_schema_version"} <= tables


# -- migrations ----------------------------------------------------------------------------


def test_a_version_1_database_is_upgraded_on_open(store_url):
    engine = store_module._create_engine(sa.make_url(store_url), {})
    assert migrations.migrate(engine, target=1) == 1
    with engine.begin() as connection:  # a row written by a lossearch that knew only version 1
        connection.execute(sa.text(
            "INSERT INTO campaigns (name, config, status, created_at, updated_at) "
            "VALUES ('old', '{\"task\": \"sort\"}', 'finished', '2025-01-02 03:04:05', '2025-01-02 03:04:05')"))
    assert not sa.inspect(engine).get_indexes("lineage_edges")
    engine.dispose()

    with Store(store_url) as upgraded:
        assert upgraded.schema_version() == SCHEMA_VERSION == 6
        old = upgraded.get_campaign("old")
        assert (old.config, old.status, old.created_at.year) == ({"task": "sort"}, "finished", 2025)
        added = add(upgraded, old.id, 0)
        assert added.campaign_id == old.id and added.instruction is None  # version 4's column, empty
        note = upgraded.record_note(old.id, 3, author="gpt-4o-mini", text="margins help")
        assert upgraded.notes(old.id) == [note] and note.generation == 3
    inspector = sa.inspect(sa.create_engine(store_url))
    assert [index["name"] for index in inspector.get_indexes("lineage_edges")] == ["ix_lineage_edges_parent"]


def test_the_models_match_what_the_migrations_build(store):
    inspector = sa.inspect(sa.create_engine(store.url))
    for table in models.Base.metadata.sorted_tables:
        columns = {column["name"]: column for column in inspector.get_columns(table.name)}
        assert set(columns) == set(table.columns.keys()), table.name
        for column in table.columns:
            if not column.primary_key:
                assert columns[column.name]["nullable"] == column.nullable, f"{table.name}.{column.name}"
        indexes = inspector.get_indexes(table.name)
        named = {index["name"] for index in indexes if not index.get("duplicates_constraint")}
        assert named == {index.name for index in table.indexes}, table.name
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)}
        declared = {tuple(c.name for c in u.columns) for u in table.constraints if isinstance(u, sa.UniqueConstraint)}
        declared |= {(column.name,) for column in table.columns if column.unique}
        assert uniques == declared, table.name
        foreign = {(tuple(fk["constrained_columns"]), fk["referred_table"])
                   for fk in inspector.get_foreign_keys(table.name)}
        assert foreign == {((fk.parent.name,), fk.column.table.name) for fk in table.foreign_keys}, table.name


def test_a_failing_migration_leaves_the_database_as_it_was(store_url, monkeypatch):
    def broken(connection):
        connection.execute(sa.text("CREATE TABLE half_done (id INTEGER)"))
        raise RuntimeError("migration 2 broke")

    monkeypatch.setattr(migrations, "MIGRATIONS", (migrations._create_tables, broken))
    engine = store_module._create_engine(sa.make_url(store_url), {})
    with pytest.raises(RuntimeError, match="migration 2 broke"):
        migrations.migrate(engine, target=2)
    with engine.connect() as connection:  # DDL included: the whole upgrade is one transaction
        assert migrations.read_schema_version(connection) == 0
        assert not {"campaigns", "half_done"} & set(sa.inspect(connection).get_table_names())
    engine.dispose()


def test_a_newer_schema_is_refused(store_url):
    with Store(store_url) as current:
        assert current.schema_version() == SCHEMA_VERSION
    engine = sa.create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE lossearch_schema_version SET version = 99"))
    engine.dispose()
    with pytest.raises(StoreError, match="schema version 99, newer than this lossearch knows"):
        Store(store_url)


# -- SQLite ----------------------------------------------------------------------------------


def test_a_campaign_folder_holds_a_wal_sqlite_database(sqlite_store, tmp_path):
    assert sqlite_store.url == f"sqlite:///{tmp_path / 'runs' / 'demo' / 'campaign.db'}"
    assert sqlite_store.optuna_storage_url() == sqlite_store.url
    with sqlite_store._session_scope() as session:
        settings = [session.execute(sa.text(f"PRAGMA {name}")).scalar()
                    for name in ("journal_mode", "foreign_keys", "busy_timeout")]
    assert settings == ["wal", 1, 30_000]
    assert sqlite_store.integrity_check() == "ok"


def test_the_integrity_check_reports_broken_references(sqlite_store, tmp_path):
    campaign = sqlite_store.create_campaign("demo", {})
    candidate = add(sqlite_store, campaign.id, 0)
    raw = sqlite3.connect(tmp_path / "runs" / "demo" / "campaign.db")  # foreign keys off, as any old client
    raw.execute("INSERT INTO lineage_edges VALUES (?, 4242, 'mutation')", (candidate.id,))
    raw.commit()
    raw.close()
    assert "foreign key violated" in sqlite_store.integrity_check()


@pytest.mark.parametrize("url, words", [
    ("sqlite:////no/such/folder/campaign.db", "cannot open the database"),
    ("nosuchdialect://somewhere", "cannot use the database URL"),
    ("postgresql+psycopg://user:secret@127.0.0.1:1/nothing", "the database"),  # no driver, or no server
])
def test_an_unusable_database_is_one_clear_line(url, words):
    with pytest.raises(StoreError, match=words) as caught:
        Store(url)
    assert "\n" not in str(caught.value)
    assert "secret" not in str(caught.value)


# -- crash safety: a real campaign-like writer, killed with SIGKILL --------------------------

WRITER = textwrap.dedent('''
    import os, random, sys
    from lossearch.store import NotFoundError, Store

    url, log_path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def note(*words):  # one unbuffered write per line: what is logged was committed before
        os.write(log, (" ".join(map(str, words)) + "\\n").encode())

    store = Store(url)
    try:
        campaign = store.get_campaign("crash")
    except NotFoundError:
        campaign = store.create_campaign("crash", {"task": "sentiment"})
    note("ready")

    def evaluate(candidate):
        store.update_candidate(candidate.id, status="evaluating")
        for seed in (0, 1):
            store.record_evaluation(candidate.id, tier="bandit", task="sentiment", seed=seed,
                                    metrics={"reward": 0.5, "kl": 0.1, "trace": "x" * 3000},
                                    fitness=candidate.id / 1000, seconds=0.01)
        store.update_candidate(candidate.id, status="evaluated", tier="bandit", fitness=candidate.id / 1000)
        note("evaluated", candidate.id)

    for candidate in store.pending_candidates(campaign.id):  # resume what a killed run left
        evaluate(candidate)
    ids = [candidate.id for candidate in store.candidates(campaign.id)]
    rng = random.Random()
    for _ in range(limit):
        parents = rng.sample(ids, min(len(ids), rng.randint(0, 3)))
        number = len(ids)
        candidate = store.add_candidate(
            campaign.id, source=f"def loss(policy_chosen_logps):\\n    return -{number} * policy_chosen_logps\\n",
            name=f"c{number}", idea=f"parents={len(parents)}", proposer="mutation", generation=number,
            parents=[(parent, "mutation") for parent in parents])
        note("candidate", candidate.id)
        ids.append(candidate.id)
        evaluate(candidate)
    note("done")
''')


def start_writer(url: str, log: Path, limit: int = 1_000_000) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, url, str(log), str(limit)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def start_writer_and_wait_until_ready(url: str, log: Path, timeout: float = 60.0) -> subprocess.Popen:
    """A writer that has opened the store (the log says `ready` once more than before)."""
    ready_before = log.read_text().count("ready") if log.exists() else 0
    writer = start_writer(url, log)
    deadline = time.monotonic() + timeout
    while not (log.exists() and log.read_text().count("ready") > ready_before):
        assert writer.poll() is None, writer.stderr.read().decode()
        assert time.monotonic() < deadline, "the writer never opened the store"
        time.sleep(0.01)
    return writer


def check_nothing_committed_was_lost(store: Store, log: Path) -> None:
    assert store.integrity_check() == "ok"
    campaign = store.get_campaign("crash")
    candidates = {candidate.id: candidate for candidate in store.candidates(campaign.id)}
    edges_per_child: dict[int, int] = {}
    for edge in store.lineage(campaign.id):
        edges_per_child[edge.child_id] = edges_per_child.get(edge.child_id, 0) + 1
    for candidate in candidates.values():  # a candidate is never without its lineage
        assert edges_per_child.get(candidate.id, 0) == int(candidate.idea.split("=")[1])
    seeds_per_candidate: dict[int, int] = {}
    for evaluation in store.evaluations(campaign_id=campaign.id):
        assert len(evaluation.metrics["trace"]) == 3000
        seeds_per_candidate[evaluation.candidate_id] = seeds_per_candidate.get(evaluation.candidate_id, 0) + 1
    for line in log.read_text().splitlines():
        word, *rest = line.split()
        if word == "candidate":
            assert int(rest[0]) in candidates
        if word == "evaluated":
            assert candidates[int(rest[0])].status == "evaluated"
            assert seeds_per_candidate[int(rest[0])] == 2


def test_a_writer_killed_at_any_moment_loses_nothing_and_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'campaign.db'}"
    log = tmp_path / "writer.log"
    for delay in (0.05, 0.2, 0.5, 1.0):
        writer = start_writer_and_wait_until_ready(url, log)
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
        with Store(url) as store:
            check_nothing_committed_was_lost(store, log)
    killed = log.read_text().count("candidate ")

    finisher = start_writer(url, log, limit=3)
    assert finisher.wait(timeout=60) == 0, finisher.stderr.read().decode()
    with Store(url) as store:
        check_nothing_committed_was_lost(store, log)
        campaign = store.get_campaign("crash")
        assert store.pending_candidates(campaign.id) == []
        assert len(store.candidates(campaign.id)) >= killed + 3 > 3
        assert all(c.status == "evaluated" for c in store.candidates(campaign.id))
