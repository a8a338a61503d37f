"""The campaign store: the only shared state of a search (DESIGN §1).

Every campaign, candidate, lineage edge, evaluation and LLM call lives in one
relational database reached through `Store`. SQLite is the default
(`runs/NAME/campaign.db`); any SQLAlchemy URL works, PostgreSQL included.

Every public method is one committed transaction, so a process killed at any
instant leaves a database that holds everything it had committed and nothing
half-written. Callers get frozen value objects (`Campaign`, `Candidate`, ...),
never ORM rows, and every database failure surfaces as a `StoreError` whose
message fits on one line.

The schema carries a version; lossearch.store.migrations upgrades a database
to the current one when it is opened.
"""


from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased, defer, sessionmaker

from lossearch.contract import source_hash
from lossearch.failures import FAILURE_KINDS
from lossearch.store.migrations import migrate, read_schema_version
from lossearch.store.models import (
    CampaignModel,
    CandidateModel,
    ConfirmationModel,
    EvaluationModel,
    LineageEdgeModel,
    LLMCallModel,
    NoteModel,
    PrintIndexModel,
    ScoreModel,
)
from lossearch.store.values import (
    CAMPAIGN_DB_NAME,
    CAMPAIGN_STATUSES,
    CANDIDATE_STATUSES,
    RELATIONS,
    UNFINISHED_STATUSES,
    UPDATABLE_CANDIDATE_FIELDS,
    Campaign,
    CampaignSummary,
    Candidate,
    Confirmation,
    Evaluation,
    LineageEdge,
    LLMCall,
    LLMUsage,
    Note,
    NotFoundError,
    StoreError,
    finite_number,
    fitness_summary,
)

SQLITE_BUSY_TIMEOUT_MS = 30_000


# -- engine ------------------------------------------------------------------------------


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys and a busy timeout on every connection; transactions that begin
    when we say so (pysqlite's own BEGIN skips reads and DDL, which would make migrations
    and read-then-write methods non-atomic)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("lossearch_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _create_engine(url: sa.URL, engine_kwargs: Mapping[str, Any]) -> Engine:
    # JSON columns read with orjson: every command loads each candidate's fingerprint (4,356 floats),
    # and the standard library's decoder was 73% of `candidates()` on a 1,000-candidate store (1.73 s
    # against orjson's 0.23 s, the same floats bit for bit); writes keep json.dumps (see _json_copy)
    engine = sa.create_engine(url, **({"json_deserializer": orjson.loads} | dict(engine_kwargs)))
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


# -- helpers -----------------------------------------------------------------------------


def _now() -> datetime:
    """Naive UTC: what every backend stores the same way."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _json_copy(value: Any, what: str) -> Any:
    """A JSON round-trip of `value`; refuses what some backend could not store (nan, objects)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be JSON with finite numbers: {error}") from None


def _finite_or_none(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite number or None, not {value!r}")
    return float(value)


def _check_choice(value: str | None, choices: Sequence[str], what: str) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


# The JSON columns (config, metrics, record) are decoded afresh for each row a session loads, and a row
# lives only as long as its session, so the value objects take them as they are: a deep copy of every
# evaluation's metrics (a sanity evaluation holds its fingerprint) was 60% of a seeds-only campaign's
# time spent reloading the store (cProfile, 41 seeds, memoized).


def _as_campaign(row: CampaignModel) -> Campaign:
    return Campaign(row.id, row.name, row.config, row.status, row.stop_reason,
                    _aware(row.created_at), _aware(row.updated_at))


def _as_candidate(row: CandidateModel, fingerprint_loaded: bool = True) -> Candidate:
    # stored as floats (update_candidate converts): a C-level tuple(), not a Python loop over 4,356 values;
    # a row read without its fingerprint (Store.candidates(fingerprints=False)) gets None, not a lazy load
    fingerprint = None if not fingerprint_loaded or row.fingerprint is None else tuple(row.fingerprint)
    return Candidate(
        id=row.id, campaign_id=row.campaign_id, name=row.name, source=row.source, code_hash=row.code_hash,
        idea=row.idea, proposer=row.proposer, model=row.model, generation=row.generation, island=row.island,
        status=row.status, tier=row.tier, fingerprint=fingerprint, failure_kind=row.failure_kind,
        failure_message=row.failure_message, fitness=row.fitness,
        created_at=_aware(row.created_at), updated_at=_aware(row.updated_at),
        instruction=row.instruction, temperature=row.temperature,
    )


ID_CHUNK = 500
"""Ids bound in one IN (...) list: under every backend's limit on bound parameters."""


def _id_chunks(ids: Collection[int]) -> Iterator[list[int]]:
    """`ids`, sorted without repeats, `ID_CHUNK` at a time."""
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), ID_CHUNK):
        yield ordered[start:start + ID_CHUNK]


def _as_edge(row: LineageEdgeModel) -> LineageEdge:
    return LineageEdge(row.child_id, row.parent_id, row.relation)


def _as_evaluation(row: EvaluationModel) -> Evaluation:
    return Evaluation(row.id, row.candidate_id, row.tier, row.task, row.seed, row.metrics,
                      row.fitness, row.seconds, _aware(row.created_at))


def _as_note(row: NoteModel) -> Note:
    return Note(row.id, row.campaign_id, row.generation, row.author, row.text, _aware(row.created_at))


def _as_confirmation(row: ConfirmationModel) -> Confirmation:
    return Confirmation(row.id, row.campaign_id, row.candidate_id, bool(row.confirmed), row.record,
                        _aware(row.created_at))


def _as_llm_call(row: LLMCallModel) -> LLMCall:
    return LLMCall(row.id, row.campaign_id, row.candidate_id, row.model, row.prompt_tokens, row.completion_tokens,
                   row.cost, row.latency, row.outcome, _aware(row.created_at))


# -- the store ---------------------------------------------------------------------------


class Store:
    """The campaign database.

    Example:
        store = Store.for_campaign_dir("runs/demo")
        campaign = store.create_campaign("demo", {"task": "sentiment"})
        seed = store.add_candidate(campaign.id, source=dpo_source, name="dpo", proposer="seed", generation=0)
        store.record_evaluation(seed.id, tier="bandit", task="sentiment", seed=0,
                                metrics={"reward": 0.8}, fitness=0.8, seconds=0.4)

    Args:
        url: Any SQLAlchemy database URL (`sqlite:///path.db`, `postgresql+psycopg://...`).
        engine_kwargs: Passed on to `sqlalchemy.create_engine`.
    """

    def __init__(self, url: str | sa.URL, *, engine_kwargs: Mapping[str, Any] | None = None) -> None:
        try:
            self._url = sa.make_url(url)
            self._engine = _create_engine(self._url, engine_kwargs or {})
        except ImportError as error:
            raise StoreError(f"cannot use the database URL {_masked(url)}: {error}; install its driver "
                             "(PostgreSQL: pip install 'psycopg[binary]')") from error
        except SQLAlchemyError as error:
            raise StoreError(f"cannot use the database URL {_masked(url)}: {_first_line(error)}") from error
        self._sessions = sessionmaker(bind=self._engine, expire_on_commit=False)
        try:
            migrate(self._engine)
        except StoreError:
            self._engine.dispose()
            raise
        except SQLAlchemyError as error:
            self._engine.dispose()
            raise StoreError(f"cannot open the database at {self}: {_first_line(error)}") from error

    @classmethod
    def for_campaign_dir(cls, path: str | Path) -> Store:
        """The SQLite store of the campaign folder `path` (`runs/NAME`), created if missing."""
        folder = Path(path).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{folder / CAMPAIGN_DB_NAME}")

    @property
    def url(self) -> str:
        """The database URL, password included (pass it to other clients, never print it)."""
        return self._url.render_as_string(hide_password=False)

    def optuna_storage_url(self) -> str:
        """The URL for `optuna.storages.RDBStorage`: Optuna's studies live in the same database."""
        return self.url

    def schema_version(self) -> int:
        with self._session_scope() as session:
            return read_schema_version(session.connection())

    def close(self) -> None:
        """Return every pooled connection; the store can still be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __str__(self) -> str:
        return _masked(self._url)

    def __repr__(self) -> str:
        return f"Store({str(self)!r})"

    @contextmanager
    def _session_scope(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: committed if the block succeeds, rolled back if not; database
        errors become `StoreError`.

        A `write` transaction takes SQLite's write lock as it begins (waiting up to the busy
        timeout for other writers), so its reads and writes cannot be split by another
        writer's commit; read transactions never wait.
        """
        session = self._sessions()
        try:
            if write:
                session.connection(execution_options={"lossearch_immediate": True})
            yield session
            session.commit()
        except SQLAlchemyError as error:
            session.rollback()
            raise StoreError(f"database error at {self}: {_first_line(error)}") from error
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # -- campaigns ---------------------------------------------------------------------

    def create_campaign(self, name: str, config: Mapping[str, Any]) -> Campaign:
        """Start a campaign called `name` (unique in this database) with its full configuration."""
        if not name or len(name) > 255:
            raise ValueError("a campaign name must have 1 to 255 characters")
        config = _json_copy(dict(config), "the campaign configuration")
        with self._session_scope(write=True) as session:
            if session.scalar(sa.select(CampaignModel.id).where(CampaignModel.name == name)) is not None:
                raise StoreError(f"a campaign named {name!r} already exists in {self}")
            now = _now()
            row = CampaignModel(name=name, config=config, status="running", created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            return _as_campaign(row)

    def get_campaign(self, name: str) -> Campaign:
        """The campaign called `name`; `NotFoundError` if there is none."""
        campaign = self.find_campaign(name)
        if campaign is None:
            raise NotFoundError(f"no campaign named {name!r} in {self}")
        return campaign

    def find_campaign(self, name: str) -> Campaign | None:
        """The campaign called `name`, or None (what `lossearch run --name NAME` resumes)."""
        with self._session_scope() as session:
            row = session.scalar(sa.select(CampaignModel).where(CampaignModel.name == name))
            return None if row is None else _as_campaign(row)

    def get_campaign_by_id(self, campaign_id: int) -> Campaign:
        with self._session_scope() as session:
            return _as_campaign(self._campaign_row(session, campaign_id))

    def latest_campaign(self) -> Campaign | None:
        """The campaign created last, or None in an empty database."""
        with self._session_scope() as session:
            row = session.scalar(sa.select(CampaignModel).order_by(CampaignModel.id.desc()).limit(1))
            return None if row is None else _as_campaign(row)

    def list_campaigns(self) -> list[CampaignSummary]:
        """Every campaign, oldest first, with its candidate counts, LLM cost and last activity."""
        with self._session_scope() as session:
            rows = session.scalars(sa.select(CampaignModel).order_by(CampaignModel.id)).all()
            by_status: dict[int, dict[str, int]] = defaultdict(dict)
            for campaign_id, status, count in session.execute(
                sa.select(CandidateModel.campaign_id, CandidateModel.status, sa.func.count())
                .group_by(CandidateModel.campaign_id, CandidateModel.status)
            ):
                by_status[campaign_id][status] = count
            cost = dict(session.execute(
                sa.select(LLMCallModel.campaign_id, sa.func.sum(LLMCallModel.cost)).group_by(LLMCallModel.campaign_id)
            ).all())
            activity = self._last_activity(session)
            return [
                CampaignSummary(_as_campaign(row), dict(by_status[row.id]),
                                float(cost.get(row.id) or 0.0), _aware(max([row.updated_at, *activity[row.id]])))
                for row in rows
            ]

    @staticmethod
    def _last_activity(session: Session) -> dict[int, list[datetime]]:
        """Latest candidate update, evaluation and LLM call per campaign."""
        queries = (
            sa.select(CandidateModel.campaign_id, sa.func.max(CandidateModel.updated_at))
            .group_by(CandidateModel.campaign_id),
            sa.select(CandidateModel.campaign_id, sa.func.max(EvaluationModel.created_at))
            .join(CandidateModel, EvaluationModel.candidate_id == CandidateModel.id)
            .group_by(CandidateModel.campaign_id),
            sa.select(LLMCallModel.campaign_id, sa.func.max(LLMCallModel.created_at))
            .group_by(LLMCallModel.campaign_id),
        )
        moments: dict[int, list[datetime]] = defaultdict(list)
        for query in queries:
            for campaign_id, moment in session.execute(query):
                moments[campaign_id].append(moment)
        return moments

    def candidate_counts(self, campaign_id: int) -> dict[str, int]:
        """The campaign's candidates counted by status, plus `proposed` (past generation 0) and
        `finetuned` (reached the finetune tier): one aggregate query, for the live display."""
        proposed = sa.case((CandidateModel.generation > 0, 1), else_=0)
        finetuned = sa.case((CandidateModel.tier == "finetune", 1), else_=0)
        query = (sa.select(CandidateModel.status, sa.func.count(), sa.func.sum(proposed), sa.func.sum(finetuned))
                 .where(CandidateModel.campaign_id == campaign_id).group_by(CandidateModel.status))
        counts = {"proposed": 0, "finetuned": 0}
        with self._session_scope() as session:
            for status, count, past_zero, at_finetune in session.execute(query):
                counts[status] = int(count)
                counts["proposed"] += int(past_zero or 0)
                counts["finetuned"] += int(at_finetune or 0)
        return counts

    def evaluation_totals(self, campaign_id: int) -> tuple[int, float, int]:
        """(evaluations recorded, their seconds added up, the latest generation with a candidate): one
        aggregate read each, for the dashboard of a campaign too large to load whole."""
        in_campaign = CandidateModel.campaign_id == campaign_id
        evaluations = (sa.select(sa.func.count(EvaluationModel.id), sa.func.sum(EvaluationModel.seconds))
                       .join(CandidateModel, EvaluationModel.candidate_id == CandidateModel.id).where(in_campaign))
        with self._session_scope() as session:
            count, seconds = session.execute(evaluations).one()
            generation = session.scalar(sa.select(sa.func.max(CandidateModel.generation)).where(in_campaign))
        return int(count or 0), float(seconds or 0.0), int(generation or 0)

    def change_stamp(self, campaign_id: int) -> str:
        """A short string that changes whenever anything of the campaign is written: its status, a
        candidate added or updated, an evaluation, confirmation, note or LLM call recorded (six
        aggregate reads in one transaction; `lossearch serve` polls it)."""
        in_campaign = CandidateModel.campaign_id == campaign_id
        queries = (
            sa.select(CampaignModel.status, CampaignModel.updated_at).where(CampaignModel.id == campaign_id),
            sa.select(sa.func.count(CandidateModel.id), sa.func.max(CandidateModel.updated_at)).where(in_campaign),
            sa.select(sa.func.count(EvaluationModel.id), sa.func.max(EvaluationModel.id))
            .join(CandidateModel, EvaluationModel.candidate_id == CandidateModel.id).where(in_campaign),
            sa.select(sa.func.count(ConfirmationModel.id), sa.func.max(ConfirmationModel.id))
            .where(ConfirmationModel.campaign_id == campaign_id),
            sa.select(sa.func.count(NoteModel.id)).where(NoteModel.campaign_id == campaign_id),
            sa.select(sa.func.count(LLMCallModel.id)).where(LLMCallModel.campaign_id == campaign_id),
        )
        with self._session_scope() as session:
            parts = [session.execute(query).one_or_none() for query in queries]
        if parts[0] is None:
            raise NotFoundError(f"no campaign with id {campaign_id} in {self}")
        return "|".join(str(value) for row in parts if row is not None for value in row)

    def set_campaign_status(self, campaign_id: int, status: str, reason: str | None = None) -> Campaign:
        """Mark a campaign `running`, `stopped`, `finished` or `failed`, saying why it stopped."""
        _check_choice(status, CAMPAIGN_STATUSES, "campaign status")
        with self._session_scope(write=True) as session:
            row = self._campaign_row(session, campaign_id)
            row.status, row.stop_reason, row.updated_at = status, reason, _now()
            session.flush()
            return _as_campaign(row)

    def _campaign_row(self, session: Session, campaign_id: int) -> CampaignModel:
        row = session.get(CampaignModel, campaign_id)
        if row is None:
            raise NotFoundError(f"no campaign with id {campaign_id} in {self}")
        return row

    # -- candidates --------------------------------------------------------------------

    def add_candidate(
        self,
        campaign_id: int,
        *,
        source: str,
        name: str,
        proposer: str,
        generation: int,
        idea: str = "",
        model: str | None = None,
        island: int = 0,
        parents: Sequence[tuple[int, str]] = (),
        status: str = "pending",
        instruction: str | None = None,
        temperature: float | None = None,
    ) -> Candidate:
        """Record a new candidate and its lineage edges (`(parent id, relation)` pairs) together."""
        _check_choice(status, CANDIDATE_STATUSES, "candidate status")
        for _, relation in parents:
            _check_choice(relation, RELATIONS, "lineage relation")
        edges = list(dict.fromkeys((int(parent_id), relation) for parent_id, relation in parents))
        with self._session_scope(write=True) as session:
            self._campaign_row(session, campaign_id)
            self._check_candidates_exist(session, {parent_id for parent_id, _ in edges})
            now = _now()
            row = CandidateModel(
                campaign_id=campaign_id, name=name, source=source, code_hash=source_hash(source), idea=idea,
                proposer=proposer, model=model, generation=generation, island=island, status=status,
                created_at=now, updated_at=now, instruction=instruction, temperature=temperature,
            )
            session.add(row)
            session.flush()
            session.add_all(LineageEdgeModel(child_id=row.id, parent_id=parent_id, relation=relation)
                            for parent_id, relation in edges)
            return _as_candidate(row)

    def _check_candidates_exist(self, session: Session, candidate_ids: Collection[int]) -> None:
        if not candidate_ids:
            return
        found = set(session.scalars(sa.select(CandidateModel.id).where(CandidateModel.id.in_(candidate_ids))))
        missing = sorted(set(candidate_ids) - found)
        if missing:
            raise NotFoundError(f"no candidate with id {', '.join(map(str, missing))} in {self}")

    def get_candidate(self, candidate_id: int) -> Candidate:
        """The candidate with `candidate_id`; `NotFoundError` if there is none."""
        with self._session_scope() as session:
            return _as_candidate(self._candidate_row(session, candidate_id))

    def _candidate_row(self, session: Session, candidate_id: int) -> CandidateModel:
        row = session.get(CandidateModel, candidate_id)
        if row is None:
            raise NotFoundError(f"no candidate with id {candidate_id} in {self}")
        return row

    def find_candidate_by_hash(self, campaign_id: int, code_hash: str) -> Candidate | None:
        """The first candidate of the campaign whose `code_hash` is this one, if any."""
        with self._session_scope() as session:
            row = session.scalar(
                sa.select(CandidateModel)
                .where(CandidateModel.campaign_id == campaign_id, CandidateModel.code_hash == code_hash)
                .order_by(CandidateModel.id).limit(1)
            )
            return None if row is None else _as_candidate(row)

    def update_candidate(self, candidate_id: int, **fields: Any) -> Candidate:
        """Set some of `status`, `tier`, `fingerprint`, `failure_kind`, `failure_message`, `fitness`."""
        unknown = set(fields) - UPDATABLE_CANDIDATE_FIELDS
        if unknown:
            allowed = ", ".join(sorted(UPDATABLE_CANDIDATE_FIELDS))
            raise TypeError(f"cannot update {', '.join(sorted(unknown))}; only {allowed}")
        _check_choice(fields.get("status"), CANDIDATE_STATUSES, "candidate status")
        _check_choice(fields.get("failure_kind"), FAILURE_KINDS, "failure kind")
        if "fitness" in fields:
            fields["fitness"] = _finite_or_none(fields["fitness"], "fitness")
        if fields.get("fingerprint") is not None:
            fields["fingerprint"] = _json_copy([float(x) for x in fields["fingerprint"]], "a fingerprint")
        with self._session_scope(write=True) as session:
            row = self._candidate_row(session, candidate_id)
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated_at = _now()
            if "fingerprint" in fields:  # its index row described the print it had: the next check indexes anew
                session.execute(sa.delete(PrintIndexModel).where(PrintIndexModel.candidate_id == candidate_id))
            session.flush()
            return _as_candidate(row)

    def candidates(
        self,
        campaign_id: int,
        *,
        status: str | Collection[str] | None = None,
        generation: int | None = None,
        island: int | None = None,
        ids: Collection[int] | None = None,
        name: str | None = None,
        fingerprints: bool = True,
    ) -> list[Candidate]:
        """The campaign's candidates in the order they were added, optionally filtered; without
        `fingerprints`, every `fingerprint` is None (read them with `fingerprints_of`)."""
        query = sa.select(CandidateModel).where(CandidateModel.campaign_id == campaign_id)
        if name is not None:
            query = query.where(CandidateModel.name == name)
        if not fingerprints:
            query = query.options(defer(CandidateModel.fingerprint))
        if status is not None:
            query = query.where(CandidateModel.status.in_([status] if isinstance(status, str) else list(status)))
        if generation is not None:
            query = query.where(CandidateModel.generation == generation)
        if island is not None:
            query = query.where(CandidateModel.island == island)
        query = query.order_by(CandidateModel.id)
        with self._session_scope() as session:
            if ids is None:
                return [_as_candidate(row, fingerprints) for row in session.scalars(query)]
            rows = [row for chunk in _id_chunks(ids)
                    for row in session.scalars(query.where(CandidateModel.id.in_(chunk)))]
            return [_as_candidate(row, fingerprints) for row in sorted(rows, key=lambda row: row.id)]

    def candidate_ids(self, campaign_id: int) -> list[int]:
        """Every candidate id of the campaign, in the order they were added (one column: cheap at 100,000)."""
        query = (sa.select(CandidateModel.id).where(CandidateModel.campaign_id == campaign_id)
                 .order_by(CandidateModel.id))
        with self._session_scope() as session:
            return list(session.scalars(query))

    def fingerprints_of(self, candidate_ids: Collection[int]) -> dict[int, tuple[float, ...] | None]:
        """The fingerprints of the candidates `candidate_ids` (None for one without), by id."""
        found: dict[int, tuple[float, ...] | None] = {}
        with self._session_scope() as session:
            for chunk in _id_chunks(candidate_ids):
                query = sa.select(CandidateModel.id, CandidateModel.fingerprint).where(CandidateModel.id.in_(chunk))
                found.update((row.id, None if row.fingerprint is None else tuple(row.fingerprint))
                             for row in session.execute(query))
        return found

    def unindexed_fingerprints(self, campaign_id: int, *, below: int,
                               size: int = 1000) -> Iterator[list[tuple[int, tuple[float, ...]]]]:
        """The (id, fingerprint) of the campaign's candidates under `below` without a `print_index` row, in
        id order, `size` at a time. A finished candidate without a print comes with an empty one (indexed as
        such, so it is not read again); an unfinished one without a print yet is left for a later check (its
        print may come while this check runs: indexed empty, it would never be compared)."""
        last = 0
        while True:
            indexed = sa.select(PrintIndexModel.candidate_id).where(PrintIndexModel.candidate_id == CandidateModel.id)
            query = (sa.select(CandidateModel.id, CandidateModel.fingerprint, CandidateModel.status)
                     .where(CandidateModel.campaign_id == campaign_id, CandidateModel.id > last,
                            CandidateModel.id < below, ~indexed.exists())
                     .order_by(CandidateModel.id).limit(size))
            with self._session_scope() as session:
                rows = session.execute(query).all()
            if not rows:
                return
            last = rows[-1].id
            batch = [(row.id, tuple(row.fingerprint or ())) for row in rows
                     if row.fingerprint or row.status not in UNFINISHED_STATUSES]
            if batch:
                yield batch

    def add_print_index(self, campaign_id: int, unit_prints: Mapping[int, bytes]) -> None:
        """Keep the unit prints (lossearch.fingerprint.index_print) of the campaign's candidates, by id. A row
        another worker's check wrote first stays: two checks index the same unindexed prints at once."""
        with self._session_scope(write=True) as session:
            for candidate_id, value in unit_prints.items():
                try:
                    with session.begin_nested():
                        session.add(PrintIndexModel(candidate_id=candidate_id, campaign_id=campaign_id,
                                                    unit_print=value))
                except IntegrityError:  # indexed by the other check since it was read unindexed
                    pass

    def print_index(self, campaign_id: int, *, below: int, leave_out: Collection[str] = ()) -> list[tuple[int, bytes]]:
        """The (id, unit print) of the campaign's indexed candidates with a print, ids under `below` and a
        status not in `leave_out`, in id order."""
        query = (sa.select(PrintIndexModel.candidate_id, PrintIndexModel.unit_print)
                 .join(CandidateModel, CandidateModel.id == PrintIndexModel.candidate_id)
                 .where(PrintIndexModel.campaign_id == campaign_id, PrintIndexModel.candidate_id < below,
                        sa.func.length(PrintIndexModel.unit_print) > 0, CandidateModel.status.not_in(list(leave_out)))
                 .order_by(PrintIndexModel.candidate_id))
        with self._session_scope() as session:
            return [(row.candidate_id, row.unit_print) for row in session.execute(query)]

    def pending_candidates(self, campaign_id: int) -> list[Candidate]:
        """Candidates still to evaluate: `pending`, and `evaluating` ones a killed run left behind."""
        return self.candidates(campaign_id, status=UNFINISHED_STATUSES)

    # -- lineage -----------------------------------------------------------------------

    def parents(self, candidate_id: int) -> list[LineageEdge]:
        """The edges from `candidate_id` to the candidates it was made from."""
        return self._edges(LineageEdgeModel.child_id == candidate_id)

    def children(self, candidate_id: int) -> list[LineageEdge]:
        """The edges to the candidates made from `candidate_id`."""
        return self._edges(LineageEdgeModel.parent_id == candidate_id)

    def parents_of(self, candidate_ids: Collection[int]) -> list[LineageEdge]:
        """The edges from the parents of `candidate_ids` to them."""
        return sorted((edge for chunk in _id_chunks(candidate_ids)
                       for edge in self._edges(LineageEdgeModel.child_id.in_(chunk))),
                      key=lambda edge: (edge.child_id, edge.parent_id, edge.relation))

    def children_of(self, candidate_ids: Collection[int]) -> list[LineageEdge]:
        """The edges from `candidate_ids` to the candidates made from them."""
        return sorted((edge for chunk in _id_chunks(candidate_ids)
                       for edge in self._edges(LineageEdgeModel.parent_id.in_(chunk))),
                      key=lambda edge: (edge.child_id, edge.parent_id, edge.relation))

    def lineage(self, campaign_id: int) -> list[LineageEdge]:
        """Every lineage edge whose child belongs to the campaign."""
        children = sa.select(CandidateModel.id).where(CandidateModel.campaign_id == campaign_id)
        return self._edges(LineageEdgeModel.child_id.in_(children))

    def _edges(self, condition: sa.ColumnElement[bool]) -> list[LineageEdge]:
        query = sa.select(LineageEdgeModel).where(condition)
        query = query.order_by(LineageEdgeModel.child_id, LineageEdgeModel.parent_id, LineageEdgeModel.relation)
        with self._session_scope() as session:
            return [_as_edge(row) for row in session.scalars(query)]

    # -- evaluations -------------------------------------------------------------------

    def record_evaluation(
        self,
        candidate_id: int,
        *,
        tier: str,
        task: str,
        seed: int,
        metrics: Mapping[str, Any],
        fitness: float | None,
        seconds: float,
    ) -> Evaluation:
        """Record a completed evaluation. Idempotent: if one (candidate, tier, task, seed) was
        recorded already, that record is returned and nothing is written."""
        metrics = _json_copy(dict(metrics), "metrics")
        fitness = _finite_or_none(fitness, "fitness")
        key = (EvaluationModel.candidate_id == candidate_id, EvaluationModel.tier == tier,
               EvaluationModel.task == task, EvaluationModel.seed == seed)
        with self._session_scope(write=True) as session:
            existing = session.scalar(sa.select(EvaluationModel).where(*key))
            if existing is not None:
                return _as_evaluation(existing)
            # the candidate's row locked (PostgreSQL; SQLite's write transaction is already alone), so
            # two processes recording its seeds at once keep a score that counts both
            campaign_id = session.scalar(sa.select(CandidateModel.campaign_id).where(
                CandidateModel.id == candidate_id).with_for_update())
            if campaign_id is None:
                raise NotFoundError(f"no candidate with id {candidate_id} in {self}")
            row = EvaluationModel(candidate_id=candidate_id, tier=tier, task=task, seed=seed, metrics=metrics,
                                  fitness=fitness, seconds=float(seconds), created_at=_now())
            try:
                with session.begin_nested():
                    session.add(row)
            except IntegrityError:  # another process recorded the same key since we looked
                return _as_evaluation(session.scalars(sa.select(EvaluationModel).where(*key)).one())
            if fitness is not None:
                self._keep_score(session, campaign_id, candidate_id, task, tier)
            return _as_evaluation(row)

    @staticmethod
    def _keep_score(session: Session, campaign_id: int, candidate_id: int, task: str, tier: str) -> None:
        """Bring the candidate's kept score on (task, tier) up to date with its evaluations there."""
        rows = session.execute(sa.select(EvaluationModel.fitness, EvaluationModel.metrics).where(
            EvaluationModel.candidate_id == candidate_id, EvaluationModel.task == task,
            EvaluationModel.tier == tier, EvaluationModel.fitness.is_not(None)).order_by(EvaluationModel.id)).all()
        score = session.get(ScoreModel, (candidate_id, task, tier))
        if score is None:
            score = ScoreModel(candidate_id=candidate_id, task=task, tier=tier, campaign_id=campaign_id)
            session.add(score)
        score.fitness, score.spread = fitness_summary([row.fitness for row in rows],
                                                      finite_number(rows[0].metrics, "fitness_std"))
        score.seeds, score.root_seeds = len(rows), math.sqrt(len(rows))

    # -- kept scores (the leaderboard's first page; lossearch.ranking.rank_top) ----------------

    @staticmethod
    def _top_scores(campaign_id: int, task: str, tiers: Sequence[str], status: str) -> tuple[Any, Any, list[Any]]:
        """(the scores table, each row's tier position in `tiers`, the conditions that keep one row a
        candidate: the campaign's `status` candidates' scores on `task` at the last of `tiers` they have one at)."""
        score, higher = aliased(ScoreModel), aliased(ScoreModel)

        def position(table: Any) -> Any:
            return sa.case({tier: index for index, tier in enumerate(tiers)}, value=table.tier, else_=-1)

        conditions = [
            score.campaign_id == campaign_id, score.task == task, score.tier.in_(list(tiers)),
            CandidateModel.status == status,
            ~sa.exists().where(higher.candidate_id == score.candidate_id, higher.task == score.task,
                               higher.tier.in_(list(tiers)), position(higher) > position(score)),
        ]
        return score, position(score), conditions

    def best_scored(self, campaign_id: int, task: str, *, tiers: Sequence[str], status: str,
                    pooled: Mapping[str, float], own_spread_seeds: int, limit: int) -> list[int]:
        """The ids of the best `limit` of the campaign's `status` candidates with a kept score on `task`, each
        scored at the last of `tiers` it has one at, best first: later tiers first, then by the mean less one
        standard error (sigma / sqrt(seeds); sigma its own spread from `own_spread_seeds` seeds on, before
        that `pooled[tier]`, else its own spread, else 0), ties to the lower id: lossearch.ranking's rule."""
        score, position, conditions = self._top_scores(campaign_id, task, tiers, status)
        bound = self._bound(score, pooled, own_spread_seeds)
        query = (sa.select(score.candidate_id).join(CandidateModel, CandidateModel.id == score.candidate_id)
                 .where(*conditions).order_by(position.desc(), bound.desc(), score.candidate_id).limit(limit))
        with self._session_scope() as session:
            return list(session.scalars(query))

    @staticmethod
    def _bound(score: Any, pooled: Mapping[str, float], own_spread_seeds: int) -> Any:
        """`best_scored`'s key after the tier: the mean less one standard error."""
        pooled_sigma = sa.case({tier: sa.literal(value, sa.Float) for tier, value in pooled.items()},
                               value=score.tier, else_=sa.null()) if pooled else sa.null()
        sigma = sa.func.coalesce(sa.case((score.seeds >= own_spread_seeds, score.spread), else_=sa.null()),
                                 pooled_sigma, score.spread, sa.literal(0.0, sa.Float))
        return score.fitness - sigma / score.root_seeds

    def place_of(self, campaign_id: int, candidate_id: int, task: str, *, tiers: Sequence[str], status: str,
                 pooled: Mapping[str, float], own_spread_seeds: int) -> int | None:
        """The candidate's place (1 = best) in `best_scored`'s order, counted in the store; None when it does
        not rank."""
        score, position, conditions = self._top_scores(campaign_id, task, tiers, status)
        bound = self._bound(score, pooled, own_spread_seeds)
        own = (sa.select(position.label("position"), bound.label("bound"))
               .join(CandidateModel, CandidateModel.id == score.candidate_id)
               .where(*conditions, score.candidate_id == candidate_id))
        with self._session_scope() as session:
            found = session.execute(own).one_or_none()
            if found is None:
                return None
            ahead = sa.or_(position > found.position, sa.and_(position == found.position, sa.or_(
                bound > found.bound, sa.and_(bound == found.bound, score.candidate_id < candidate_id))))
            count = sa.select(sa.func.count()).select_from(score).join(
                CandidateModel, CandidateModel.id == score.candidate_id).where(*conditions, ahead)
            return 1 + int(session.scalar(count) or 0)

    def child_outcomes(self, campaign_id: int, task: str, *, proposer: str, model: str
                       ) -> list[tuple[str | None, str, float | None, float | None]]:
        """(failure kind, status, bandit-tier score, best parent's bandit-tier score) of each candidate the
        campaign's `proposer` made with `model` (an operator): its record, read through the kept scores."""
        own, parent = aliased(ScoreModel), aliased(ScoreModel)
        best_parent = (sa.select(sa.func.max(parent.fitness))
                       .join(LineageEdgeModel, LineageEdgeModel.parent_id == parent.candidate_id)
                       .where(LineageEdgeModel.child_id == CandidateModel.id, parent.task == task,
                              parent.tier == "bandit").scalar_subquery())
        query = (sa.select(CandidateModel.failure_kind, CandidateModel.status, own.fitness, best_parent)
                 .outerjoin(own, sa.and_(own.candidate_id == CandidateModel.id, own.task == task,
                                         own.tier == "bandit"))
                 .where(CandidateModel.campaign_id == campaign_id, CandidateModel.proposer == proposer,
                        CandidateModel.model == model))
        with self._session_scope() as session:
            return [tuple(row) for row in session.execute(query)]

    def scored_spreads(self, campaign_id: int, task: str, *, tiers: Sequence[str], status: str,
                       seeds: int) -> list[tuple[str, float]]:
        """The (tier, spread) of the `status` candidates with a kept score on `task` from at least `seeds`
        seeds, each at the last of `tiers` it has a score at."""
        score, _, conditions = self._top_scores(campaign_id, task, tiers, status)
        spreads = (sa.select(score.tier, score.spread).join(CandidateModel, CandidateModel.id == score.candidate_id)
                   .where(score.seeds >= seeds, score.spread.is_not(None), *conditions))
        with self._session_scope() as session:
            return [(row.tier, row.spread) for row in session.execute(spreads)]

    def count_scored(self, campaign_id: int, task: str, *, tiers: Sequence[str], status: str) -> int:
        """How many `status` candidates have a kept score on `task` at one of `tiers` (a scan: 0.25 s at 100,000)."""
        score, _, conditions = self._top_scores(campaign_id, task, tiers, status)
        joined = sa.select(sa.func.count()).select_from(score).join(
            CandidateModel, CandidateModel.id == score.candidate_id).where(*conditions)
        with self._session_scope() as session:
            return int(session.scalar(joined) or 0)

    def find_evaluation(self, candidate_id: int, *, tier: str, task: str, seed: int) -> Evaluation | None:
        """The evaluation recorded for this (candidate, tier, task, seed), if any."""
        with self._session_scope() as session:
            row = session.scalar(sa.select(EvaluationModel).where(
                EvaluationModel.candidate_id == candidate_id, EvaluationModel.tier == tier,
                EvaluationModel.task == task, EvaluationModel.seed == seed,
            ))
            return None if row is None else _as_evaluation(row)

    def evaluations(
        self,
        *,
        candidate_id: int | None = None,
        campaign_id: int | None = None,
        tier: str | None = None,
        task: str | None = None,
        candidate_ids: Collection[int] | None = None,
    ) -> list[Evaluation]:
        """Evaluations in the order they were recorded, filtered by any of the arguments."""
        query = self._evaluation_query(candidate_id, campaign_id, tier, task)
        with self._session_scope() as session:
            if candidate_ids is None:
                return [_as_evaluation(row) for row in session.scalars(query)]
            rows = [row for chunk in _id_chunks(candidate_ids)
                    for row in session.scalars(query.where(EvaluationModel.candidate_id.in_(chunk)))]
            return [_as_evaluation(row) for row in sorted(rows, key=lambda row: row.id)]

    @staticmethod
    def _evaluation_query(candidate_id: int | None, campaign_id: int | None, tier: str | None,
                          task: str | None) -> sa.Select[Any]:
        query = sa.select(EvaluationModel).order_by(EvaluationModel.id)
        if campaign_id is not None:
            query = query.join(CandidateModel, EvaluationModel.candidate_id == CandidateModel.id)
            query = query.where(CandidateModel.campaign_id == campaign_id)
        for column, value in ((EvaluationModel.candidate_id, candidate_id), (EvaluationModel.tier, tier),
                              (EvaluationModel.task, task)):
            if value is not None:
                query = query.where(column == value)
        return query

    # -- confirmations -----------------------------------------------------------------

    def record_confirmation(self, campaign_id: int, candidate_id: int, *, confirmed: bool,
                            record: Mapping[str, Any]) -> Confirmation:
        """Record the confirmation stage's verdict on a leader, replacing an earlier one of it."""
        stored: dict[str, Any] = _json_copy(dict(record), "a confirmation record")
        with self._session_scope(write=True) as session:
            self._campaign_row(session, campaign_id)
            self._candidate_row(session, candidate_id)
            row = session.scalar(sa.select(ConfirmationModel).where(ConfirmationModel.candidate_id == candidate_id))
            if row is None:
                row = ConfirmationModel(campaign_id=campaign_id, candidate_id=candidate_id)
                session.add(row)
            row.confirmed, row.record, row.created_at = bool(confirmed), stored, _now()
            session.flush()
            return _as_confirmation(row)

    def confirmations(self, campaign_id: int) -> list[Confirmation]:
        """The campaign's confirmation records, oldest first."""
        query = (sa.select(ConfirmationModel).where(ConfirmationModel.campaign_id == campaign_id)
                 .order_by(ConfirmationModel.id))
        with self._session_scope() as session:
            return [_as_confirmation(row) for row in session.scalars(query)]

    # -- notes -------------------------------------------------------------------------

    def record_note(self, campaign_id: int, generation: int, *, author: str, text: str) -> Note:
        """Keep a proposer's note written before `generation`; a second one for that generation replaces it."""
        with self._session_scope(write=True) as session:
            self._campaign_row(session, campaign_id)
            row = session.scalar(sa.select(NoteModel).where(NoteModel.campaign_id == campaign_id,
                                                            NoteModel.generation == generation))
            if row is None:
                row = NoteModel(campaign_id=campaign_id, generation=generation)
                session.add(row)
            row.author, row.text, row.created_at = author, text, _now()
            session.flush()
            return _as_note(row)

    def notes(self, campaign_id: int) -> list[Note]:
        """The campaign's notes, oldest first."""
        query = sa.select(NoteModel).where(NoteModel.campaign_id == campaign_id).order_by(NoteModel.generation)
        with self._session_scope() as session:
            return [_as_note(row) for row in session.scalars(query)]

    # -- LLM calls ---------------------------------------------------------------------

    def record_llm_call(
        self,
        campaign_id: int,
        *,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
        latency: float,
        outcome: str,
        candidate_id: int | None = None,
    ) -> LLMCall:
        """Record one request to an LLM proposer (the API key is never passed here)."""
        with self._session_scope(write=True) as session:
            self._campaign_row(session, campaign_id)
            row = LLMCallModel(campaign_id=campaign_id, candidate_id=candidate_id, model=model,
                               prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens),
                               cost=float(cost), latency=float(latency), outcome=outcome, created_at=_now())
            session.add(row)
            session.flush()
            return _as_llm_call(row)

    def llm_calls(self, campaign_id: int) -> list[LLMCall]:
        with self._session_scope() as session:
            query = sa.select(LLMCallModel).where(LLMCallModel.campaign_id == campaign_id).order_by(LLMCallModel.id)
            return [_as_llm_call(row) for row in session.scalars(query)]

    def llm_usage(self, campaign_id: int, *, model: str | None = None) -> LLMUsage:
        """Calls, tokens, cost and waiting time of the campaign's LLM calls (of one `model` if given)."""
        query = sa.select(
            sa.func.count(LLMCallModel.id),
            sa.func.coalesce(sa.func.sum(LLMCallModel.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(LLMCallModel.completion_tokens), 0),
            sa.func.coalesce(sa.func.sum(LLMCallModel.cost), 0.0),
            sa.func.coalesce(sa.func.sum(LLMCallModel.latency), 0.0),
        ).where(LLMCallModel.campaign_id == campaign_id)
        if model is not None:
            query = query.where(LLMCallModel.model == model)
        with self._session_scope() as session:
            calls, prompt, completion, cost, latency = session.execute(query).one()
            return LLMUsage(int(calls), int(prompt), int(completion), float(cost), float(latency))

    def integrity_check(self) -> str:
        """Return "ok", or what SQLite's integrity and foreign-key checks found wrong.

        Other backends guarantee both themselves and always answer "ok".
        """
        if self._engine.dialect.name != "sqlite":
            return "ok"
        with self._session_scope() as session:
            problems = [row[0] for row in session.execute(sa.text("PRAGMA integrity_check")) if row[0] != "ok"]
            violations = session.execute(sa.text("PRAGMA foreign_key_check"))
            problems += [f"foreign key violated: {tuple(row)}" for row in violations]
        return "\n".join(problems) or "ok"



def _masked(url: str | sa.URL) -> str:
    """`url` with its password hidden, fit for a message."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError, TypeError):
        return str(url).split("://", 1)[0] + "://..."


def _first_line(error: BaseException) -> str:
    """The driver's own message when there is one, without SQLAlchemy's SQL dump and links."""
    original = getattr(error, "orig", None)
    text = str(original if original is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__
