"""What the finetune tier reads of a task, in memory: preference pairs and a task's artifacts loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from lossearch.evaluation.tasks.catalog import TASKS
from lossearch.evaluation.tasks.lm import Sequences

RewardFn = Callable[[Sequence[int], Sequence[int]], float]  # reward(prompt_ids, response_ids)


@dataclass(frozen=True)
class PairSet:
    """Preference pairs with the frozen reference model's log-probs of both responses."""

    chosen: Sequences
    rejected: Sequences
    reference_chosen_logps: torch.Tensor
    """(N,) sum of the reference's response token log-probs, chosen."""
    reference_rejected_logps: torch.Tensor
    """(N,) the same, rejected."""
    chosen_scores: Optional[torch.Tensor] = None
    """(N,) the data's score of each chosen response (contract input `chosen_scores`); None: no scores."""
    rejected_scores: Optional[torch.Tensor] = None
    """(N,) the same, rejected."""

    def __len__(self) -> int:
        return len(self.chosen)

    def prefix(self, count: int | None) -> "PairSet":
        """The first `count` pairs (all of them for None)."""
        rows = slice(0, count)
        scores = [None if values is None else values[rows] for values in (self.chosen_scores, self.rejected_scores)]
        return PairSet(self.chosen.rows(rows), self.rejected.rows(rows), self.reference_chosen_logps[rows],
                       self.reference_rejected_logps[rows], *scores)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], split: str, count: int | None = None) -> "PairSet":
        """The first `count` pairs of `split` ("train" or "heldout") from a pairs.safetensors dict (with
        a scores.safetensors dict merged in, the pairs' scores too)."""
        rows = slice(0, count)

        def sequences(side: str) -> Sequences:
            return Sequences(tensors[f"{split}_{side}_ids"][rows], tensors[f"{split}_{side}_attention"][rows].bool(),
                             tensors[f"{split}_{side}_response"][rows].bool())

        scores = [tensors[name][rows] if name in tensors else None
                  for name in (f"{split}_chosen_scores", f"{split}_rejected_scores")]
        return cls(sequences("chosen"), sequences("rejected"), tensors[f"{split}_reference_chosen_logps"][rows],
                   tensors[f"{split}_reference_rejected_logps"][rows], *scores)


@dataclass(frozen=True)
class TaskData:
    """One task's artifacts, loaded: what training and scoring read."""

    name: str
    key: str
    """The artifact's name in the cache: what a score depends on."""
    model_config: dict
    """The base model's config dict (`model_type` names the architecture)."""
    parameters_file: Path
    """safetensors of the base model's named parameters: the policy's start and the reference."""
    pairs_file: Path
    """pairs.safetensors: what the sandbox child trains on."""
    train: PairSet
    heldout: PairSet
    heldout_prompts: tuple[torch.Tensor, torch.Tensor]
    """(ids, attention), left-padded: prompts for sampled reward and KL."""
    eos_id: int
    pad_id: int
    max_new_tokens: int
    reward: Optional[RewardFn]
    """The trusted oracle; None in a user setting without `--reward`."""
    kl_budget: Optional[float]
    """Fitness reads the reward at this KL (nats); None: no budget."""
    kl_penalty: float
    parameters: int
    fitness_floor: float = -math.inf
    """Fitness never goes below this: a run far over the budget is as useless as the worst reward."""
    decode: Callable[[Sequence[int]], str] = field(repr=False, default=str)
    """Token ids to text, for showing samples."""
    scores_file: Optional[Path] = None
    """scores.safetensors: the training pairs' scores (lossearch.evaluation.tasks.scores); None: the data has none."""

    @property
    def online(self) -> bool:
        """Online mode needs a catalog task: its labeller runs in the sandbox child."""
        return self.name in TASKS


