"""The data's scores of the training pairs: contract inputs `chosen_scores` and `rejected_scores`.

They live beside a task's pairs, in an artifact of their own, so the pairs artifact (and its key,
which every stored score depends on) stays as it was:

    scores-{pairs artifact}/scores.safetensors   train_chosen_scores, train_rejected_scores, (N,) each

A catalog task's scores are its labellers' rewards of each response: the oracle's, except in
`length`, where the labellers reward the length the oracle penalizes. Data carries the scores that
labelled it, never the held-out truth, so no loss can read the oracle of `length` through them.
A user's scores are the dataset's optional `chosen_score` and `rejected_score` fields, where every
line has both; otherwise the setting has none (`TaskData.scores_file` is None).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors.torch import save_file

from lossearch.evaluation.tasks import cache, catalog
from lossearch.evaluation.tasks.lm import Sequences

SCORES_FILE = "scores.safetensors"
SCORE_FIELDS = ("chosen_score", "rejected_score")
"""The optional fields of a user dataset's lines that hold the scores."""
MISSING_USER_SCORES = ("your --dataset has no scores: give every line numeric `chosen_score` and `rejected_score` "
                       "fields, or drop this loss")


def catalog_scores_file(task: str, pairs_folder: Path, train: tuple[Sequences, Sequences], root: Path) -> Path:
    """The scores file of catalog task `task`'s training pairs `train` (chosen, rejected), built once."""
    labeller = catalog.reward_of_ids(task, labels=True)

    def build(folder: Path) -> None:
        chosen, rejected = (sequence_rewards(labeller, side) for side in train)
        save_scores(folder, chosen, rejected, {"kind": "scores", "pairs": pairs_folder.name, "source": "labellers"})

    return cache.cached_artifact(root, f"scores-{pairs_folder.name}", build) / SCORES_FILE


def sequence_rewards(reward: Callable[[Sequence[int], Sequence[int]], float], sequences: Sequences) -> torch.Tensor:
    """(N,) `reward(prompt ids, response ids)` of every row: the prompt is the attended tokens before the response."""
    prompts = sequences.attention & ~sequences.response
    return torch.tensor([reward(ids[prompt].tolist(), ids[response].tolist())
                         for ids, prompt, response in zip(sequences.ids, prompts, sequences.response)],
                        dtype=torch.float32)


def user_scores_file(rows: Sequence[dict], train_rows: Sequence[int], artifact: str, root: Path) -> Optional[Path]:
    """The scores file of a user setting's training rows `train_rows`, or None where some line of the
    dataset lacks a finite numeric `chosen_score` or `rejected_score`."""
    if not all(has_score(row) for row in rows):
        return None

    def build(folder: Path) -> None:
        chosen, rejected = (torch.tensor([float(rows[i][field]) for i in train_rows], dtype=torch.float32)
                            for field in SCORE_FIELDS)
        save_scores(folder, chosen, rejected, {"kind": "scores", "pairs": artifact, "source": "dataset"})

    return cache.cached_artifact(root, f"scores-{artifact}", build) / SCORES_FILE


def has_score(row: dict) -> bool:
    values = [row.get(field) for field in SCORE_FIELDS]
    return all(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
               for value in values)


def save_scores(folder: Path, chosen: torch.Tensor, rejected: torch.Tensor, meta: dict) -> None:
    save_file({"train_chosen_scores": chosen.contiguous(), "train_rejected_scores": rejected.contiguous()},
              folder / SCORES_FILE)
    (folder / "meta.json").write_text(json.dumps({**meta, "train_pairs": len(chosen)}, indent=2))
