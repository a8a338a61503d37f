"""The campaign store: the only shared state of a search (DESIGN §1).

    values.py      what callers get: frozen value objects, vocabularies, errors
    store.py       `Store`, the one door to the database: every method one transaction
    models.py      the ORM models, the current schema
    migrations.py  the versioned migrations that build it
    locate.py      finding a campaign's database (`--run NAME`, `--db URL`, runs/*/campaign.db)
"""

from lossearch.store.store import Store
from lossearch.store.values import (
    BASELINE_SEED,
    CAMPAIGN_DB_NAME,
    CAMPAIGN_STATUSES,
    CANDIDATE_STATUSES,
    RELATIONS,
    SANITY_TASK,
    UNFINISHED_STATUSES,
    UNRANKED_STATUSES,
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
)

__all__ = [
    "BASELINE_SEED", "CAMPAIGN_DB_NAME", "CAMPAIGN_STATUSES", "CANDIDATE_STATUSES", "RELATIONS", "SANITY_TASK",
    "UNFINISHED_STATUSES", "UNRANKED_STATUSES", "Campaign", "CampaignSummary", "Candidate", "Confirmation",
    "Evaluation", "LLMCall", "LLMUsage", "LineageEdge", "Note", "NotFoundError", "Store", "StoreError",
]
