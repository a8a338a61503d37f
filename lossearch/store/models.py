"""The ORM models: the current schema (lossearch.store.migrations builds it, one version at a time)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class CampaignModel(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    status: Mapped[str] = mapped_column(sa.String(16))
    stop_reason: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime)


class CandidateModel(Base):
    __tablename__ = "candidates"
    __table_args__ = (
        sa.Index("ix_candidates_campaign_status", "campaign_id", "status"),
        sa.Index("ix_candidates_campaign_hash", "campaign_id", "code_hash"),
        sa.Index("ix_candidates_campaign_fitness", "campaign_id", "fitness"),
        sa.Index("ix_candidates_campaign_name", "campaign_id", "name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.Text)
    source: Mapped[str] = mapped_column(sa.Text)
    code_hash: Mapped[str] = mapped_column(sa.String(64))
    idea: Mapped[str] = mapped_column(sa.Text)
    proposer: Mapped[str] = mapped_column(sa.String(32))
    model: Mapped[str | None] = mapped_column(sa.Text)
    generation: Mapped[int]
    island: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(16))
    tier: Mapped[str | None] = mapped_column(sa.String(16))
    fingerprint: Mapped[list[float] | None] = mapped_column(sa.JSON)
    failure_kind: Mapped[str | None] = mapped_column(sa.String(16))
    failure_message: Mapped[str | None] = mapped_column(sa.Text)
    fitness: Mapped[float | None] = mapped_column(sa.Float)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime)
    instruction: Mapped[str | None] = mapped_column(sa.String(32))
    temperature: Mapped[float | None] = mapped_column(sa.Float)


class LineageEdgeModel(Base):
    __tablename__ = "lineage_edges"
    __table_args__ = (sa.Index("ix_lineage_edges_parent", "parent_id"),)

    child_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True)
    relation: Mapped[str] = mapped_column(sa.String(16), primary_key=True)


class EvaluationModel(Base):
    __tablename__ = "evaluations"
    __table_args__ = (sa.UniqueConstraint("candidate_id", "tier", "task", "seed", name="uq_evaluations_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id", ondelete="CASCADE"))
    tier: Mapped[str] = mapped_column(sa.String(16))
    task: Mapped[str] = mapped_column(sa.String(64))
    seed: Mapped[int]
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    fitness: Mapped[float | None] = mapped_column(sa.Float)
    seconds: Mapped[float] = mapped_column(sa.Float)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime)


class ScoreModel(Base):
    """What every evaluation of one candidate on one task at one tier adds up to, kept as each is
    recorded (`Store.record_evaluation`), so the leaderboard's first page is one ordered query."""

    __tablename__ = "scores"
    __table_args__ = (sa.Index("ix_scores_campaign_task", "campaign_id", "task"),)

    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True)
    task: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    tier: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    seeds: Mapped[int]
    fitness: Mapped[float] = mapped_column(sa.Float)
    spread: Mapped[float | None] = mapped_column(sa.Float)
    root_seeds: Mapped[float] = mapped_column(sa.Float)


class PrintIndexModel(Base):
    """Each candidate's print at its default beta, unit-normalized, as float32 bytes: 1.9 KB against its
    fingerprint's ~57 KB of JSON, so the duplicate check reads every stored print's index and decodes
    only the fingerprints that could be twins (lossearch.fingerprint.twin_bounds)."""

    __tablename__ = "print_index"
    __table_args__ = (sa.Index("ix_print_index_campaign", "campaign_id", "candidate_id"),)

    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    unit_print: Mapped[bytes] = mapped_column(sa.LargeBinary)


class LLMCallModel(Base):
    __tablename__ = "llm_calls"
    __table_args__ = (sa.Index("ix_llm_calls_campaign", "campaign_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    candidate_id: Mapped[int | None] = mapped_column(sa.ForeignKey("candidates.id", ondelete="SET NULL"))
    model: Mapped[str] = mapped_column(sa.Text)
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    cost: Mapped[float] = mapped_column(sa.Float)
    latency: Mapped[float] = mapped_column(sa.Float)
    outcome: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime)


class ConfirmationModel(Base):
    __tablename__ = "confirmations"
    __table_args__ = (sa.UniqueConstraint("candidate_id", name="uq_confirmations_candidate"),
                      sa.Index("ix_confirmations_campaign", "campaign_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id", ondelete="CASCADE"))
    confirmed: Mapped[bool] = mapped_column(sa.Boolean)
    record: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime)


class NoteModel(Base):
    __tablename__ = "notes"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "generation", name="uq_notes_campaign_generation"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    generation: Mapped[int]
    author: Mapped[str] = mapped_column(sa.Text)
    text: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime)


schema_version_table = sa.Table(
    "lossearch_schema_version",  # not `version_info`: Optuna's tables share the database
    Base.metadata,
    sa.Column("version", sa.Integer, nullable=False),
)


