"""Loading a task: the catalog's, built and cached on first use, or a user's own model and pairs.

    load_task("sentiment")      the task's artifacts, built and cached on first use
    load_user_task(setting)     the same from a user's own model folder and JSONL pairs
    task_summaries()            what `lossearch tasks` shows
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from lossearch.choices import TASK_NAMES, check_choice
from lossearch.evaluation.tasks import build, cache, catalog
from lossearch.evaluation.tasks.build import PARAMETERS_FILE, DataConfig, pairs_artifact, read_pairs
from lossearch.evaluation.tasks.catalog import TASKS, WORLDS, WorldConfig
from lossearch.evaluation.tasks.data import PairSet, TaskData
from lossearch.evaluation.tasks.scores import catalog_scores_file
from lossearch.progress import ProgressFn, no_progress


def load_task(name: str, cache_dir: str | Path | None = None, progress: ProgressFn = no_progress,
              data: DataConfig = DataConfig(), world: Optional[WorldConfig] = None) -> TaskData:
    """The artifacts of catalog task `name`, built into the cache first if they are missing.

    `data` and `world` replace the task's pair counts and its world's base model
    configuration (tests use tiny ones); each configuration has its own artifacts.
    """
    check_choice(name, TASK_NAMES, "task")
    import functools
    import json

    root = cache.cache_root(cache_dir)
    folder = pairs_artifact(name, data, root, progress, world)
    definition = TASKS[name]
    world_folder = root / json.loads((folder / "meta.json").read_text())["world"]
    world_meta = json.loads((world_folder / "meta.json").read_text())
    vocabulary = catalog.WORLD_VOCABULARIES[definition.world]
    tensors = read_pairs(folder)
    train = PairSet.from_tensors(tensors, "train")
    return TaskData(
        name=name, key=folder.name, model_config=json.loads((world_folder / "config.json").read_text()),
        parameters_file=world_folder / PARAMETERS_FILE, pairs_file=folder / "pairs.safetensors",
        train=train, heldout=PairSet.from_tensors(tensors, "heldout"),
        heldout_prompts=(tensors["heldout_prompt_ids"], tensors["heldout_prompt_attention"].bool()),
        eos_id=vocabulary.index("<eos>"), pad_id=vocabulary.index("<pad>"),
        max_new_tokens=definition.max_new_tokens, reward=catalog.reward_of_ids(name),
        kl_budget=definition.kl_budget, kl_penalty=definition.kl_penalty, parameters=world_meta["parameters"],
        fitness_floor=definition.fitness_floor,
        decode=functools.partial(catalog.decode_text, vocabulary=vocabulary),
        scores_file=catalog_scores_file(name, folder, (train.chosen, train.rejected), root))


def load_user_task(setting, cache_dir: str | Path | None = None, progress: ProgressFn = no_progress) -> TaskData:
    """A user's own model folder and JSONL pairs as a TaskData (see lossearch.evaluation.tasks.user)."""
    from lossearch.evaluation.tasks.user import load_user_setting

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
