"""The names every layer chooses from: tiers, tasks, budgets, data modes, precisions, proposers, executors.

Each list is defined once, here or in the one module that defines the thing itself (the task
catalog, the budgets), and read from here by the CLI's choices, the configurations'
validation, the cascade, the campaign and the results. Importing this module is cheap (no
torch), so the command line can offer the choices without loading the evaluator.
"""

from __future__ import annotations

from lossearch.errors import check_choice
from lossearch.evaluation.finetune.config import BUDGETS, DATA_MODES, PRECISIONS
from lossearch.evaluation.tasks.catalog import TASKS

TIERS = ("static", "sanity", "bandit", "finetune")
"""The evaluation cascade's tiers, cheapest first (DESIGN §3)."""
TIER_ORDER = {tier: position for position, tier in enumerate(TIERS)}
"""A tier's place in the cascade: a candidate's `tier` is the highest it reached."""
TASK_NAMES = tuple(TASKS)
"""The synthetic tasks (DESIGN §4); the bandit tier has a tabular version of each."""
USER_TASK = "user"
"""The task name of a user's own model and pairs (`--model`, `--dataset`): its finetune evaluations are
stored under it, and its bandit tier screens on `sentiment`'s tabular task (it has none of its own)."""
BUDGET_NAMES = tuple(BUDGETS)
"""The finetune tier's budgets, smallest first."""
PROPOSERS = ("mutation", "llm", "none")
"""What writes a campaign's children: the offline mutator, an LLM, or nobody (the seeds only)."""
EXECUTORS = ("local", "ray")
"""Where a campaign's sandboxes run: on this machine, or on a Ray cluster's workers."""

__all__ = ["BUDGET_NAMES", "DATA_MODES", "EXECUTORS", "PRECISIONS", "PROPOSERS", "TASK_NAMES", "TIERS", "TIER_ORDER",
           "USER_TASK", "check_choice"]

