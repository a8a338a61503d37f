"""Finding a campaign's database: `--db URL`, `--run NAME`, or every runs/*/campaign.db here.

`--db URL` names a database; `--run NAME` the campaign NAME, by default in
`runs/NAME/campaign.db`. With neither, every `runs/*/campaign.db` under the working
directory is read and the campaign with the most recent activity (any candidate,
evaluation or LLM call written) is the one used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lossearch.store.store import Store
from lossearch.store.values import CAMPAIGN_DB_NAME, Campaign, CampaignSummary, NotFoundError

DEFAULT_RUNS_DIR = Path("runs")


def campaign_store(name: str, db: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Store:
    """The store a campaign called `name` writes to: `db` (any SQLAlchemy URL) or runs_dir/NAME/campaign.db."""
    return Store(db) if db else Store.for_campaign_dir(Path(runs_dir) / name)


@dataclass(frozen=True)
class CampaignListing:
    """One campaign and where it lives."""

    summary: CampaignSummary
    location: str
    """The SQLite file (`runs/NAME/campaign.db`) or the database URL, password hidden."""
    url: str
    """The database URL to open it with (password included: never print it)."""


@dataclass(frozen=True)
class CampaignHandle:
    """An open store and the campaign chosen in it."""

    store: Store
    campaign: Campaign
    location: str


def campaign_databases(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[Path]:
    """Every `runs_dir/*/campaign.db`, sorted by path."""
    return sorted(path for path in Path(runs_dir).glob(f"*/{CAMPAIGN_DB_NAME}") if path.is_file())


def list_campaigns(*, db: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[CampaignListing]:
    """Every campaign in `db`, or in every `runs_dir/*/campaign.db`; the most recently active first."""
    listings: list[CampaignListing] = []
    sources = [(db, str(db))] if db else [(f"sqlite:///{path.resolve()}", str(path))
                                           for path in campaign_databases(runs_dir)]
    for url, location in sources:
        with Store(url) as store:
            location = str(store) if db else location
            listings += [CampaignListing(summary, location, url) for summary in store.list_campaigns()]
    return sorted(listings, key=lambda listing: listing.summary.last_activity, reverse=True)


@contextmanager
def open_campaign(run: str | None = None, db: str | None = None,
                  runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Iterator[CampaignHandle]:
    """The campaign `run` (in `db`, or in runs_dir/RUN/campaign.db), else the most recently active one.

    Raises `NotFoundError` (one line) when there is no such campaign or none at all.
    """
    store, location = _open_store(run, db, runs_dir)
    try:
        if run is not None:
            campaign = store.find_campaign(run)
            if campaign is None:
                raise NotFoundError(f"no campaign named {run!r} in {location} (`lossearch campaigns` lists them)")
        else:
            campaign = _most_recent(store, location)
        yield CampaignHandle(store, campaign, location)
    finally:
        store.close()


def _open_store(run: str | None, db: str | None, runs_dir: str | Path) -> tuple[Store, str]:
    if db:
        store = Store(db)
        return store, str(store)
    if run is not None:
        path = Path(runs_dir) / run / CAMPAIGN_DB_NAME
        if not path.is_file():
            raise NotFoundError(f"no campaign named {run!r}: {path} does not exist (`lossearch campaigns` lists them)")
        return Store(f"sqlite:///{path.resolve()}"), str(path)
    listings = list_campaigns(runs_dir=runs_dir)
    if not listings:
        raise NotFoundError(f"no campaign found: no {Path(runs_dir) / '*' / CAMPAIGN_DB_NAME} here; start one with "
                            "`lossearch run --name NAME`, or pass --run NAME or --db URL")
    location = listings[0].location
    return Store(f"sqlite:///{Path(location).resolve()}"), location


def _most_recent(store: Store, location: str) -> Campaign:
    summaries = store.list_campaigns()
    if not summaries:
        raise NotFoundError(f"no campaign in {location}; start one with `lossearch run --name NAME`")
    return max(summaries, key=lambda summary: summary.last_activity).campaign
