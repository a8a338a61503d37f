"""Schema migrations: each brings the schema from version N-1 to N; never edit a released one.

`MIGRATIONS` lists the functions that build the schema one version at a time;
opening a store applies the ones it has not seen, in one transaction. To change
the schema, change lossearch.store.models and append a migration that brings an
existing database to the same shape: the tests check that the two agree.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lossearch.store.models import schema_version_table
from lossearch.store.values import StoreError, finite_number, fitness_summary

_POSTGRES_MIGRATION_LOCK = 0x6C6F7373  # any constant: serializes schema upgrades across processes


def _create_tables(connection: Connection) -> None:
    """1: campaigns, candidates, lineage edges, evaluations and LLM calls (frozen as released)."""
    metadata = sa.MetaData()
    sa.Table(
        "campaigns", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stop_reason", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "candidates", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("idea", sa.Text, nullable=False),
        sa.Column("proposer", sa.String(32), nullable=False),
        sa.Column("model", sa.Text),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("island", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("tier", sa.String(16)),
        sa.Column("fingerprint", sa.JSON),
        sa.Column("failure_kind", sa.String(16)),
        sa.Column("failure_message", sa.Text),
        sa.Column("fitness", sa.Float),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "lineage_edges", metadata,
        sa.Column("child_id", sa.Integer, sa.ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("relation", sa.String(16), primary_key=True),
    )
    sa.Table(
        "evaluations", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("candidate_id", sa.Integer, sa.ForeignKey("candidates.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("fitness", sa.Float),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("candidate_id", "tier", "task", "seed", name="uq_evaluations_key"),
    )
    sa.Table(
        "llm_calls", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("candidate_id", sa.Integer, sa.ForeignKey("candidates.id", ondelete="SET NULL")),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("latency", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    metadata.create_all(connection, checkfirst=False)


def _index_read_paths(connection: Connection) -> None:
    """2: indexes for the loop's and the leaderboard's reads (hash lookups, the pending
    queue, ranking, children of a candidate, LLM spend per campaign)."""
    indexes = {
        "ix_candidates_campaign_status": "candidates (campaign_id, status)",
        "ix_candidates_campaign_hash": "candidates (campaign_id, code_hash)",
        "ix_candidates_campaign_fitness": "candidates (campaign_id, fitness)",
        "ix_lineage_edges_parent": "lineage_edges (parent_id)",
        "ix_llm_calls_campaign": "llm_calls (campaign_id)",
    }
    for name, target in indexes.items():
        connection.execute(sa.text(f"CREATE INDEX {name} ON {target}"))


def _add_confirmations(connection: Connection) -> None:
    """3: one confirmation record per confirmed leader (lossearch.search.confirm)."""
    metadata = sa.MetaData()
    sa.Table("campaigns", metadata, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table("candidates", metadata, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "confirmations", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("candidate_id", sa.Integer, sa.ForeignKey("candidates.id", ondelete="CASCADE"), nullable=False),
        sa.Column("confirmed", sa.Boolean, nullable=False),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("candidate_id", name="uq_confirmations_candidate"),
        sa.Index("ix_confirmations_campaign", "campaign_id"),
    )
    metadata.tables["confirmations"].create(connection)


def _add_recipes_and_notes(connection: Connection) -> None:
    """4: what an LLM proposal was asked (instruction, temperature), and the proposer's own notes."""
    for column in ("instruction VARCHAR(32)", "temperature FLOAT"):
        connection.execute(sa.text(f"ALTER TABLE candidates ADD COLUMN {column}"))
    metadata = sa.MetaData()
    sa.Table("campaigns", metadata, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "notes", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("author", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("campaign_id", "generation", name="uq_notes_campaign_generation"),
    )
    metadata.tables["notes"].create(connection)


def _add_scores(connection: Connection) -> None:
    """5: each candidate's score per task and tier, kept as evaluations are recorded (the leaderboard's
    first page is then one ordered query), filled here from the evaluations recorded so far."""
    metadata = sa.MetaData()
    sa.Table("campaigns", metadata, sa.Column("id", sa.Integer, primary_key=True))
    candidates = sa.Table("candidates", metadata, sa.Column("id", sa.Integer, primary_key=True),
                          sa.Column("campaign_id", sa.Integer))
    evaluations = sa.Table("evaluations", metadata, sa.Column("id", sa.Integer, primary_key=True),
                           sa.Column("candidate_id", sa.Integer), sa.Column("task", sa.String(64)),
                           sa.Column("tier", sa.String(16)), sa.Column("fitness", sa.Float),
                           sa.Column("metrics", sa.JSON))
    scores = sa.Table(
        "scores", metadata,
        sa.Column("candidate_id", sa.Integer, sa.ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("task", sa.String(64), primary_key=True),
        sa.Column("tier", sa.String(16), primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seeds", sa.Integer, nullable=False),
        sa.Column("fitness", sa.Float, nullable=False),
        sa.Column("spread", sa.Float),
        sa.Column("root_seeds", sa.Float, nullable=False),
        sa.Index("ix_scores_campaign_task", "campaign_id", "task"),
    )
    scores.create(connection)
    groups: dict[tuple[int, str, str], list[Any]] = defaultdict(list)
    campaign_of: dict[int, int] = {}
    query = (sa.select(evaluations.c.candidate_id, candidates.c.campaign_id, evaluations.c.task, evaluations.c.tier,
                       evaluations.c.fitness, evaluations.c.metrics)
             .join(candidates, candidates.c.id == evaluations.c.candidate_id)
             .where(evaluations.c.fitness.is_not(None)).order_by(evaluations.c.id))
    for row in connection.execute(query):
        groups[(row.candidate_id, row.task, row.tier)].append(row)
        campaign_of[row.candidate_id] = row.campaign_id
    rows = []
    for (candidate_id, task, tier), members in groups.items():
        fitness, spread = fitness_summary([member.fitness for member in members],
                                          finite_number(members[0].metrics or {}, "fitness_std"))
        rows.append({"candidate_id": candidate_id, "task": task, "tier": tier, "campaign_id": campaign_of[candidate_id],
                     "seeds": len(members), "fitness": fitness, "spread": spread,
                     "root_seeds": math.sqrt(len(members))})
    for start in range(0, len(rows), 5000):
        connection.execute(scores.insert(), rows[start:start + 5000])


def _add_print_index(connection: Connection) -> None:
    """6: each candidate's unit print at its default beta, for the duplicate check. Left empty here: the
    check indexes the stored prints it finds unindexed (computing them needs torch, which the store's
    readers do not load). And candidates indexed by name: the leaderboard's first page finds DPO by it
    (a scan of 100,000 candidates' rows took a third of that page's time)."""
    connection.execute(sa.text("CREATE INDEX ix_candidates_campaign_name ON candidates (campaign_id, name)"))
    metadata = sa.MetaData()
    sa.Table("campaigns", metadata, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table("candidates", metadata, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "print_index", metadata,
        sa.Column("candidate_id", sa.Integer, sa.ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("unit_print", sa.LargeBinary, nullable=False),
        sa.Index("ix_print_index_campaign", "campaign_id", "candidate_id"),
    )
    metadata.tables["print_index"].create(connection)


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_create_tables, _index_read_paths, _add_confirmations,
                                                        _add_recipes_and_notes, _add_scores, _add_print_index)
SCHEMA_VERSION = len(MIGRATIONS)


def read_schema_version(connection: Connection) -> int:
    if not sa.inspect(connection).has_table(schema_version_table.name):
        return 0
    return connection.execute(sa.select(sa.func.max(schema_version_table.c.version))).scalar() or 0


def migrate(engine: Engine, target: int = SCHEMA_VERSION) -> int:
    """Apply the migrations between the database's version and `target` in one transaction."""
    with engine.connect() as connection:
        current = read_schema_version(connection)
    if current == target:
        return current
    with engine.connect().execution_options(lossearch_immediate=True) as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_MIGRATION_LOCK})
        current = read_schema_version(connection)  # again, now that no one else can migrate
        if current > SCHEMA_VERSION:
            raise StoreError(f"the database has schema version {current}, newer than this lossearch knows "
                             f"({SCHEMA_VERSION}): upgrade lossearch")
        schema_version_table.create(connection, checkfirst=True)
        for version in range(current + 1, target + 1):
            MIGRATIONS[version - 1](connection)
        if target > current:
            connection.execute(schema_version_table.delete())
            connection.execute(schema_version_table.insert().values(version=target))
        return max(current, target)


