"""A campaign's configuration: everything its results depend on, stored with it, and what a resume may change."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from lossearch.choices import (
    BUDGET_NAMES,
    DATA_MODES,
    EXECUTORS,
    PRECISIONS,
    PROPOSERS,
    TASK_NAMES,
    USER_TASK,
    check_choice,
)
from lossearch.errors import ConfigError
from lossearch.evaluation.finetune.config import FinetuneOptions, check_training
from lossearch.search.seeds import seed_paths
from lossearch.store.values import BASELINE_SEED


@dataclass(frozen=True)
class CampaignConfig:
    """Everything a campaign's results depend on, stored with it; resumes reuse it."""

    name: str = "demo"
    """The campaign's name; its default database is runs/NAME/campaign.db."""
    task: str = "sentiment"
    """The task candidates are selected on (sentiment, sort, length, noisy), or `user` with `model`."""
    budget: str = "quick"
    """The finetune tier's budget (quick, standard, full)."""
    model: str | None = None
    """Your own local causal LM folder (`save_pretrained` output, with its tokenizer): the finetune tier
    trains it on `dataset` instead of a task's base model; the task is then `user`."""
    dataset: str | None = None
    """JSONL file of {"prompt", "chosen", "rejected"} pairs to train `model` on (a tenth held out)."""
    reward: str | None = None
    """"path/to/module.py:function" scoring `model`'s samples: your code, run in this trusted process as
    an oracle is, never in a candidate's jail; without it fitness is the held-out preference accuracy."""
    max_prompt_tokens: int = 128
    """With `model`: prompts are cut to their last this many tokens."""
    max_response_tokens: int = 128
    """With `model`: responses are cut to this many tokens, end-of-sequence included."""
    data: str = "offline"
    """`offline`: the task's fixed pairs; `online`: fresh pairs from the policy, labelled by the task's
    oracle (catalog tasks only)."""
    device: str | None = None
    """Torch device of the finetune tier; None picks CUDA when present, else the CPU."""
    precision: str = "auto"
    """Training arithmetic of the finetune tier (FinetuneOptions.precision): `auto` is bf16 where the
    device computes it natively, else fp32; `fp16` for GPUs without bf16."""
    grad_accum: int = 1
    """Micro-batches each finetune step's batch runs as, gradients summed (less memory, the same
    optimizer batch; FinetuneOptions.grad_accum)."""
    group_by_length: bool = False
    """Finetune batches of pairs of similar length, for less padding (FinetuneOptions.group_by_length)."""
    proposer: str = "mutation"
    """`mutation` (offline, the default), `llm`, or `none` (evaluate the seed library only)."""
    generations: int = 2
    """Generations of children after generation 0 (the seeds)."""
    population: int = 4
    """Children proposed per generation, spread over the islands."""
    islands: int = 2
    """Independent sub-populations; the best migrate between them every `migrate_every` generations."""
    migrate_every: int = 2
    """Generations between migrations."""
    promote_share: float = 0.25
    """Share of a generation's bandit survivors promoted to the finetune tier (at least one)."""
    without_seeds: tuple[str, ...] = ()
    """Seed losses left out of generation 0 (an ablation: can the search find them itself?); never DPO,
    the baseline every verdict is against."""
    notes_every: int = 3
    """The LLM proposer writes its own notes on the campaign (what worked, what did not) before every
    this many generations, and sees the latest in its prompt; 0 never."""
    simplify: bool = True
    """Drop a child's terms whose removal leaves the same loss by fingerprint before it is stored
    (lossearch.search.simplify)."""
    pair_share: float = 0.4
    """The mutation proposer's chance, given two parents, of a two-parent operator rather than a
    one-parent one on the first (lossearch.search.proposers.mutation)."""
    seed: int = 0
    """Seed of the tasks, the training runs and the proposer's random choices."""
    finetune: bool = True
    """Whether to run the finetune tier at all (off: the bandit tier's fitness ranks)."""
    race_top: int = 1
    """Racing: after each generation, while one of the ranking's best `race_top` finetuned candidates
    has fewer than `race_seeds` finetune evaluations, it is evaluated on its next seed and the
    ranking redone, so no candidate stays a leader on one seed's luck (lossearch.search.campaign)."""
    race_seeds: int = 3
    """Finetune evaluations (seeds) a leader gets before the racing leaves it; 1 turns racing off."""
    max_evals: int | None = None
    """Stop after this many candidate evaluations (sanity or beyond) in this campaign."""
    time_limit: float | None = None
    """Stop after this many seconds of this run."""
    max_cost: float | None = None
    """Stop once the LLM calls of this campaign cost this many dollars."""
    max_tokens: int | None = None
    """Stop once the LLM calls of this campaign used this many tokens."""
    llm_base_url: str | None = None
    """OpenAI-compatible endpoint of the `llm` proposer."""
    llm_models: tuple[str, ...] = ()
    """Model names of the `llm` proposer; with several, a bandit picks per call."""
    llm_concurrency: int = 4
    """Requests the `llm` proposer keeps in flight; with one worker, children are evaluated while
    the others are still being written."""
    workers: int = 1
    """Candidates evaluated at once, each in a sandbox of its own."""
    executor: str = "local"
    """`local` (sandboxes on this machine) or `ray` (sandboxes on Ray workers)."""
    ray_address: str | None = None
    """Address of the Ray cluster; None starts a local Ray instance."""
    confirm: bool = True
    """After the last generation, confirm the leaders on fresh seeds (lossearch.search.confirm);
    only with the finetune tier on."""
    confirm_top: int = 1
    """Leaders the confirmation stage retrains, beside DPO and the best seed."""
    confirm_seeds: int = 5
    """Fresh seeds of the confirmation stage."""

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 255 or "/" in self.name or self.name.startswith("."):
            raise ConfigError("the campaign name must be a plain name of 1 to 255 characters, without '/'")
        if self.model is not None or self.task == USER_TASK:
            self.check_setting()
        else:
            check_choice(self.task, TASK_NAMES, "task")
        check_choice(self.data, DATA_MODES, "data mode")
        check_choice(self.precision, PRECISIONS, "precision")
        check_choice(self.budget, BUDGET_NAMES, "budget")
        check_choice(self.proposer, PROPOSERS, "proposer")
        check_choice(self.executor, EXECUTORS, "executor")
        if self.generations < 0 or self.population < 1 or self.islands < 1 or self.migrate_every < 1:
            raise ConfigError("generations must be >= 0; population, islands and migrate_every >= 1")
        if self.workers < 1 or self.llm_concurrency < 1:
            raise ConfigError("workers and --llm-concurrency must be at least 1")
        if self.race_top < 1 or self.race_seeds < 1:
            raise ConfigError("racing needs --race-top >= 1 and --race-seeds >= 1 (1 turns it off)")
        if self.confirm_top < 1 or self.confirm_seeds < 2:
            raise ConfigError("the confirmation stage needs --confirm-top >= 1 and --confirm-seeds >= 2")
        check_training(self.grad_accum, self.group_by_length, self.data)
        if not 0 < self.promote_share <= 1:
            raise ConfigError("--promote-share must be in (0, 1]")
        if self.notes_every < 0:
            raise ConfigError("notes_every must not be negative")
        if not 0 <= self.pair_share <= 1:
            raise ConfigError("--pair-share must be between 0 and 1")
        if self.proposer == "llm" and (not self.llm_base_url or not self.llm_models):
            raise ConfigError("the llm proposer needs --llm-base-url and at least one --llm-model")
        object.__setattr__(self, "llm_models", tuple(self.llm_models))
        object.__setattr__(self, "without_seeds", tuple(self.without_seeds))
        if self.without_seeds:
            known = {path.stem for path in seed_paths()}
            unknown = sorted(set(self.without_seeds) - known)
            if unknown:
                raise ConfigError(f"--without-seed {unknown[0]}: no such seed loss (`lossearch seeds` lists them)")
            if BASELINE_SEED in self.without_seeds:
                raise ConfigError(f"--without-seed {BASELINE_SEED}: DPO is the baseline every verdict is against")

    def check_setting(self) -> None:
        """A campaign on the user's own model: model and dataset together, task `user`, offline data."""
        if self.model is None or self.dataset is None:
            raise ConfigError("--model and --dataset go together: a model folder and a JSONL file of pairs")
        if self.task != USER_TASK:
            raise ConfigError(f"--task {self.task} is a built-in task; with --model the campaign runs on your "
                              "model and pairs (task 'user'): drop --task")
        if self.data == "online":
            raise ConfigError("--data online needs a task's oracle to label fresh pairs; use it with --task, "
                              "not --model")
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 2:
            raise ConfigError("--max-prompt-tokens must be at least 1 and --max-response-tokens at least 2")

    def finetune_options(self) -> FinetuneOptions:
        """The finetune tier's options for this campaign: its budget, data mode, device and setting."""
        from lossearch.evaluation.tasks.user import UserSetting  # torch: only when a campaign trains

        setting = None if self.model is None else UserSetting(
            Path(self.model), Path(self.dataset or ""), self.reward, max_prompt_tokens=self.max_prompt_tokens,
            max_response_tokens=self.max_response_tokens)
        return FinetuneOptions(budget=self.budget, data=self.data, device=self.device, setting=setting,
                               precision=self.precision, grad_accum=self.grad_accum,
                               group_by_length=self.group_by_length)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "llm_models": list(self.llm_models), "without_seeds": list(self.without_seeds)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CampaignConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


STOP_FIELDS = ("generations", "max_evals", "time_limit", "max_cost", "max_tokens", "workers", "executor", "ray_address",
               "confirm", "confirm_top", "confirm_seeds", "llm_concurrency")
"""Fields a resumed campaign may change: when to stop, where it runs and how its end is confirmed;
nothing its search depends on."""


def merge_resumed(stored: CampaignConfig, requested: CampaignConfig, given: Collection[str]) -> CampaignConfig:
    """The stored configuration with the stopping limits and executor of `requested` among the fields
    `given`; any other given field that differs from the stored one is refused."""
    for key in given:
        if key != "name" and key not in STOP_FIELDS and getattr(stored, key) != getattr(requested, key):
            raise ConfigError(f"campaign {stored.name!r} was started with {key}={getattr(stored, key)!r}; "
                              f"resume it without --{key.replace('_', '-')} or start another with a new --name")
    return replace(stored, **{key: getattr(requested, key) for key in given if key in STOP_FIELDS})
