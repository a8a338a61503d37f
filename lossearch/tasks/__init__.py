"""Tasks for the finetune tier (DESIGN §4): synthetic worlds, base models, oracles and pairs.

    load_task("sentiment")      the task's artifacts, built and cached on first use
    load_user_task(setting)     the same from a user's own model folder and JSONL pairs
    task_summaries()            what `lossearch tasks` shows

A `TaskData` is everything the finetune tier needs, in memory: the base model's
config and parameter file (what a sandbox child starts from), the training pairs
with their cached reference log-probs, held-out prompts and pairs, and the trusted
oracle the parent scores with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from lossearch.tasks import build, cache, catalog
from lossearch.tasks.build import (PARAMETERS_FILE, DataConfig, ProgressFn, no_progress, pairs_artifact, read_pairs)
from lossearch.tasks.catalog import TASK_NAMES, TASKS, WORLDS, TaskDefinition, WorldConfig
from lossearch.tasks.lm import Sequences

RewardFn = Callable[[Sequence[int], Sequence[int]], float]  # reward(prompt_ids, response_ids)

__all__ = ["TASK_NAMES", "TASKS", "WORLDS", "DataConfig", "PairSet", "ProgressFn", "TaskData", "TaskDefinition",
           "WorldConfig", "cached_artifacts", "load_task", "load_user_task", "task_summaries"]


@dataclass(frozen=True)
class PairSet:
    """Preference pairs with the frozen reference model's log-probs of both responses."""

    chosen: Sequences
    rejected: Sequences
    reference_chosen_logps: torch.Tensor
    """(N,) sum of the reference's response token log-probs, chosen."""
    reference_rejected_logps: torch.Tensor
    """(N,) the same, rejected."""

    def __len__(self) -> int:
        return len(self.chosen)

    def prefix(self, count: int | None) -> "PairSet":
        """The first `count` pairs (all of them for None)."""
        rows = slice(0, count)
        return PairSet(self.chosen.rows(rows), self.rejected.rows(rows), self.reference_chosen_logps[rows],
                       self.reference_rejected_logps[rows])

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], split: str, count: int | None = None) -> "PairSet":
        """The first `count` pairs of `split` ("train" or "heldout") from a pairs.safetensors dict."""
        rows = slice(0, count)

        def sequences(side: str) -> Sequences:
            return Sequences(tensors[f"{split}_{side}_ids"][rows], tensors[f"{split}_{side}_attention"][rows].bool(),
                             tensors[f"{split}_{side}_response"][rows].bool())

        return cls(sequences("chosen"), sequences("rejected"), tensors[f"{split}_reference_chosen_logps"][rows],
                   tensors[f"{split}_reference_rejected_logps"][rows])


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

    @property
    def online(self) -> bool:
        """Online mode needs a catalog task: its labeller runs in the sandbox child."""
        return self.name in TASKS


def load_task(name: str, cache_dir: str | Path | None = None, progress: ProgressFn = no_progress,
              data: DataConfig = DataConfig(), world: Optional[WorldConfig] = None) -> TaskData:
    """The artifacts of catalog task `name`, built into the cache first if they are missing.

    `data` and `world` replace the task's pair counts and its world's base model
    configuration (tests use tiny ones); each configuration has its own artifacts.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    import functools
    import json

    root = cache.cache_root(cache_dir)
    folder = pairs_artifact(name, data, root, progress, world)
    definition = TASKS[name]
    world_folder = root / json.loads((folder / "meta.json").read_text())["world"]
    world_meta = json.loads((world_folder / "meta.json").read_text())
    vocabulary = catalog.WORLD_VOCABULARIES[definition.world]
    tensors = read_pairs(folder)
    return TaskData(
        name=name, key=folder.name, model_config=json.loads((world_folder / "config.json").read_text()),
        parameters_file=world_folder / PARAMETERS_FILE, pairs_file=folder / "pairs.safetensors",
        train=PairSet.from_tensors(tensors, "train"), heldout=PairSet.from_tensors(tensors, "heldout"),
        heldout_prompts=(tensors["heldout_prompt_ids"], tensors["heldout_prompt_attention"].bool()),
        eos_id=vocabulary.index("<eos>"), pad_id=vocabulary.index("<pad>"),
        max_new_tokens=definition.max_new_tokens, reward=catalog.reward_of_ids(name),
        kl_budget=definition.kl_budget, kl_penalty=definition.kl_penalty, parameters=world_meta["parameters"],
        fitness_floor=definition.fitness_floor,
        decode=functools.partial(catalog.decode_text, vocabulary=vocabulary))


def load_user_task(setting, cache_dir: str | Path | None = None, progress: ProgressFn = no_progress) -> TaskData:
    """A user's own model folder and JSONL pairs as a TaskData (see lossearch.tasks.user)."""
    from lossearch.tasks.user import load_user_setting

    return load_user_setting(setting, cache.cache_root(cache_dir), progress)


def task_summaries(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every catalog task: its definition, its world's model size, and whether it is built."""
    root = cache.cache_root(cache_dir)
    built = {artifact["name"]: artifact for artifact in cache.list_artifacts(root)}
    rows = []
    for name, definition in TASKS.items():
        world = WORLDS[definition.world]
        world_name, pairs = build.world_name(world), build.pairs_name(name, world, DataConfig())
        rows.append({**asdict(definition), "vocabulary": len(catalog.WORLD_VOCABULARIES[definition.world]),
                     "model": {"hidden_size": world.hidden_size, "layers": world.layers, "heads": world.heads},
                     "parameters": built.get(world_name, {}).get("meta", {}).get("parameters"),
                     "train_pairs": DataConfig().train_pairs, "cache": str(root),
                     "built": {"world": world_name in built, "pairs": pairs in built}})
    return rows


def cached_artifacts(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every complete artifact in the cache: name, path, bytes, meta."""
    return cache.list_artifacts(cache.cache_root(cache_dir))
