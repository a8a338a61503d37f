"""What a finetune evaluation may spend and how it runs: budgets, options, one run's configuration.

Torch-free, so the command line can offer the budgets without loading the evaluator, and
shared by both sides: the parent sends a `RunConfig` to the sandbox child as a dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from lossearch.errors import ConfigError, check_choice
from lossearch.progress import ProgressFn, no_progress

if TYPE_CHECKING:
    from lossearch.evaluation.tasks.data import TaskData

DATA_MODES = ("offline", "online")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Budget:
    """How much one candidate evaluation may spend."""

    name: str
    steps: int
    """AdamW steps per training run."""
    pairs: int
    """Training pairs used: the first this many of the task's (offline mode)."""
    batch_size: int
    """Pairs per step."""
    trials: int
    """Optuna trials: the first are a ladder of betas from the loss's default, later ones also draw its
    other float hyperparameters (lossearch.evaluation.tuning)."""
    seeds: int
    """Training seeds per trial; a trial's fitness is their mean."""
    eval_prompts: int
    """Held-out prompts sampled to measure reward and KL."""
    heldout_pairs: int = 512
    """Held-out pairs (at most the task's) that measure `pref_acc` and the implicit reward margin."""
    lr: float = 6e-4
    """Peak AdamW learning rate (linear warm-up over a tenth of the steps, cosine decay to a tenth)."""
    online_every: int = 16
    """Online mode: steps between two draws of fresh pairs from the current policy."""

    def __post_init__(self) -> None:
        counts = ("steps", "pairs", "batch_size", "trials", "seeds", "eval_prompts", "heldout_pairs", "online_every")
        for name in counts:
            if getattr(self, name) < 1:
                raise ConfigError(f"Budget.{name} must be at least 1")
        if not self.lr > 0:
            raise ConfigError("Budget.lr must be positive")

    @property
    def runs(self) -> int:
        return self.trials * self.seeds

    @classmethod
    def named(cls, budget: Union[str, "Budget"]) -> "Budget":
        return budget if isinstance(budget, Budget) else BUDGETS[budget]


# steps x batch_size / pairs is about 1.5 epochs at `standard`; `full` sees more pairs, not more
# steps, so its policies move as far as `standard`'s and the KL budget means the same at both;
# every budget tries at least three betas, the fewest that draw a reward–KL curve around the
# default to read the fitness off at the KL budget (lossearch.evaluation.fitness); every budget
# samples all of a catalog task's 1024 held-out prompts: at 256 the sampling's own spread (std 0.036
# of DPO's quick reward over 4 sampling seeds, same trained policy) exceeded the training seeds'
# (0.029 over 6); at 1024 quick's median std across seed sets fell from 0.051 to 0.038, for about
# 4 s more a run (a quick evaluation 33-39 s instead of 19-23 s; fp32, 2-core Xeon, sentiment)
BUDGETS = {
    "quick": Budget("quick", steps=100, pairs=1024, batch_size=16, trials=3, seeds=1, eval_prompts=1024,
                    heldout_pairs=256),
    "standard": Budget("standard", steps=200, pairs=2048, batch_size=16, trials=4, seeds=3, eval_prompts=1024),
    "full": Budget("full", steps=200, pairs=4096, batch_size=32, trials=8, seeds=5, eval_prompts=1024),
}


def check_training(grad_accum: int, group_by_length: bool, data: str) -> None:
    """grad_accum and group_by_length that cannot work (with the data mode) are a ConfigError."""
    if grad_accum < 1:
        raise ConfigError("--grad-accum must be at least 1")
    if group_by_length and data == "online":
        raise ConfigError("--group-by-length groups a fixed set of pairs; online pairs are drawn fresh every few "
                          "steps: drop one of the two")


@dataclass(frozen=True)
class FinetuneOptions:
    """How the finetune tier evaluates a candidate; the task itself is `evaluate`'s `task`."""

    budget: Union[str, Budget] = "quick"
    """A name in BUDGETS, or a Budget of one's own."""
    data: str = "offline"
    """`offline`: the task's fixed pairs; `online`: fresh pairs sampled from the policy every
    `Budget.online_every` steps and labelled by the task's oracle."""
    device: Optional[str] = None
    """Torch device; None picks CUDA when present, else the CPU."""
    setting: Optional[Any] = None
    """A lossearch.evaluation.tasks.user.UserSetting: the user's model and pairs, trained as task `user`."""
    storage: Optional[str] = None
    """Optuna storage URL (e.g. the campaign's database); None keeps the study in memory."""
    study_name: Optional[str] = None
    """Name of the Optuna study; None derives one from the code, task, budget, data mode and seed."""
    cache_dir: Optional[str] = None
    """Artifact cache; None means $LOSSEARCH_CACHE or ~/.cache/lossearch."""
    precision: str = "auto"
    """Training arithmetic: `fp32`, `bf16` (mixed: bf16 matrix products, float32 weights, optimizer,
    attention, norms and logits), `fp16` (mixed the same way in float16, with dynamic loss scaling:
    for GPUs without bf16; never chosen by `auto`), or `auto`: bf16 where the device computes it
    natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32. Scoring is always float32."""
    threads: int = 1
    """Torch threads of the training child. One: on a busy two-core machine two threads made a
    training step seven times slower in our measurements (OpenMP threads wait on each other)."""
    grad_accum: int = 1
    """Each step's batch runs as this many micro-batches, one after another, their gradients summed
    before the one AdamW step: the memory of a micro-batch, the budget's batch for the optimizer. A
    loss that reads its batch (batch statistics, the running margin statistics) sees micro-batches,
    as under TRL's gradient accumulation; a per-pair loss trains as without it, up to rounding."""
    group_by_length: bool = False
    """Draw the pairs of GROUP_STEPS steps at once and batch them by length (then shuffle the
    batches), so a batch holds pairs of similar length and pads less: faster on data whose lengths
    vary (0.79x the training time of random batches where prompts and responses vary from 1 to 128
    tokens: fp32, 2-core EPYC, benchmarks/batching.py), with other batches than the random draw
    (offline pairs only)."""
    task_data: Optional[TaskData] = field(default=None, compare=False, repr=False)
    """An already loaded task (or user setting), used for the task of its name instead of loading it."""
    progress: ProgressFn = field(default=no_progress, compare=False, repr=False)
    """progress(description, completed, total), for a progress bar."""

    def __post_init__(self) -> None:
        if not isinstance(self.budget, Budget):
            check_choice(self.budget, tuple(BUDGETS), "budget")
        check_choice(self.data, DATA_MODES, "data mode")
        check_choice(self.precision, PRECISIONS, "precision")
        if self.threads < 1:
            raise ConfigError("FinetuneOptions.threads must be at least 1")
        check_training(self.grad_accum, self.group_by_length, self.data)

    def training_key(self) -> str:
        """What grad_accum and group_by_length add to a study's name: nothing at their defaults."""
        return (f"-ga{self.grad_accum}" if self.grad_accum > 1 else "") + ("-gl" if self.group_by_length else "")


@dataclass(frozen=True)
class RunConfig:
    """One training run, as the parent sends it to the child."""

    beta: float
    seed: int
    steps: int
    pairs: int
    batch_size: int
    lr: float
    uses_kl: bool
    online: Optional[dict] = None
    """Online mode: {"task", "every", "max_new_tokens", "eos_id", "pad_id"}; None: offline."""
    device: str = "cpu"
    precision: str = "fp32"
    """`fp32`, `bf16` or `fp16` (autocast around the policy's and reference's forward passes; fp16 with
    dynamic loss scaling)."""
    uses_scores: bool = False
    """The loss reads the pairs' scores: the child reads them from scores.safetensors."""
    uses_tokens: bool = False
    """The loss reads token inputs: the child runs the reference model over every batch for its token log-probs."""
    grad_accum: int = 1
    """Micro-batches per step (FinetuneOptions.grad_accum)."""
    group_by_length: bool = False
    """Batches of pairs of similar length (FinetuneOptions.group_by_length)."""


