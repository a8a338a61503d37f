"""The four tasks of DESIGN §4: which world each lives in, its oracle, its labels, its KL budget.

An oracle scores a (prompt, response) pair of token ids by reading them back as words
(lossearch.evaluation.tasks.text). `label_reward` is what the Bradley-Terry labeller sees: the
oracle itself, except in `length`, where the labellers like long answers that the
oracle dislikes. Everything here is trusted code: the parent scores with it, and in
online mode the sandbox child labels fresh pairs with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from lossearch.evaluation.tasks import text


@dataclass(frozen=True)
class WorldConfig:
    """A world's corpus and base model: everything the base model's cache key covers."""

    world: str
    """`sentiment` or `sort`: the text generator and vocabulary."""
    corpus_size: int = 40_000
    """Documents generated for pretraining."""
    hidden_size: int = 128
    """Width of the Llama-style base model."""
    layers: int = 3
    """Transformer blocks."""
    heads: int = 4
    """Attention heads (no grouped-query sharing)."""
    intermediate_size: int = 352
    """Width of the SwiGLU MLP."""
    pretrain_steps: int = 1500
    """AdamW steps of next-token pretraining."""
    pretrain_batch: int = 64
    """Documents per pretraining step."""
    pretrain_lr: float = 3e-3
    """Peak learning rate (linear warm-up, cosine decay to a tenth)."""
    seed: int = 0
    """Seed of the corpus and of the model's initialization."""

    def __post_init__(self) -> None:
        if self.world not in WORLD_VOCABULARIES:
            raise ValueError(f"unknown world {self.world!r}; choose one of {', '.join(WORLD_VOCABULARIES)}")
        if min(self.corpus_size, self.hidden_size, self.layers, self.heads, self.pretrain_steps,
               self.pretrain_batch) < 1:
            raise ValueError("WorldConfig sizes and steps must be positive")
        if self.hidden_size % self.heads:
            raise ValueError("WorldConfig.hidden_size must be a multiple of heads")


@dataclass(frozen=True)
class TaskDefinition:
    """One task: a world, how its pairs are labelled, and how its fitness is read."""

    name: str
    world: str
    rewards: str
    """What the oracle rewards (shown by `lossearch tasks`)."""
    stresses: str
    """What the task stresses in a loss."""
    kl_budget: float
    """Sequence KL(policy || reference), nats, at which fitness reads the reward."""
    kl_penalty: float
    """Reward lost per nat over the budget; above the reward/KL frontier's slope there."""
    label_temperature: float
    """Bradley-Terry temperature: p(a beats b) = sigmoid((r_a - r_b) / T) on the label reward."""
    max_new_tokens: int
    """Longest sampled response (tokens, end-of-sequence included)."""
    fitness_floor: float
    """The lowest fitness: the oracle's worst reward. Far over the KL budget a run is useless,
    and how far over says nothing more about the loss (nor should it swamp the spread)."""
    flip_fraction: float = 0.0
    """Share of training labels swapped after the draw (`noisy`)."""

    def pairs_fields(self) -> dict:
        """What the task's pairs depend on (its cache key): not the budget, penalty or floor."""
        return {"name": self.name, "world": self.world, "label_temperature": self.label_temperature,
                "max_new_tokens": self.max_new_tokens, "flip_fraction": self.flip_fraction}


WORLD_VOCABULARIES = {"sentiment": text.SENTIMENT_VOCAB, "sort": text.SORT_VOCAB}
WORLDS = {"sentiment": WorldConfig("sentiment"),
          "sort": WorldConfig("sort", corpus_size=60_000, pretrain_steps=2000)}
TASKS = {
    "sentiment": TaskDefinition(
        "sentiment", "sentiment", "positive sentiment of a generated review (toy IMDb), -1..1",
        "the classic reward/KL trade-off", kl_budget=2.0, kl_penalty=0.5, label_temperature=0.25,
        max_new_tokens=24, fitness_floor=-1.0),
    "sort": TaskDefinition(
        "sort", "sort", "1 for the sorted digits, else half the share of right positions",
        "verifiable reward", kl_budget=2.0, kl_penalty=0.5, label_temperature=0.1, max_new_tokens=10,
        fitness_floor=0.0),
    "length": TaskDefinition(
        "length", "sentiment", "sentiment minus 0.25 per clause past two; labels prefer longer",
        "length exploitation", kl_budget=2.0, kl_penalty=0.5, label_temperature=0.25, max_new_tokens=24,
        fitness_floor=-1.75),
    "noisy": TaskDefinition(
        "noisy", "sentiment", "as sentiment, with a third of the training labels flipped",
        "label noise", kl_budget=2.0, kl_penalty=0.5, label_temperature=0.25, max_new_tokens=24,
        fitness_floor=-1.0, flip_fraction=1 / 3),
}
TASK_NAMES = tuple(TASKS)
LENGTH_ORACLE_WEIGHT = 0.25  # oracle reward lost per clause past two
LENGTH_LABEL_WEIGHT = 0.5  # label reward gained per clause past two


def words_of(ids: Sequence[int], vocabulary: Sequence[str], eos_id: int) -> list[str]:
    """Token ids as words, without a final end-of-sequence token; unknown ids become "<unk>"."""
    ids = list(ids)
    if ids and ids[-1] == eos_id:
        ids = ids[:-1]
    return [vocabulary[i] if 0 <= i < len(vocabulary) else "<unk>" for i in ids]


def decode_text(ids: Sequence[int], vocabulary: Sequence[str]) -> str:
    """Token ids as text, special tokens left out: what the world's HF tokenizer's
    `decode(ids, skip_special_tokens=True)` returns, without importing transformers."""
    return " ".join(vocabulary[i] for i in ids if vocabulary[i] not in text.SPECIAL_TOKENS)


def oracle_words(task: str, prompt: Sequence[str], response: Sequence[str]) -> float:
    """The oracle reward of a (prompt, response) in words."""
    if TASKS[task].world == "sort":
        return text.sort_reward(prompt, response)
    reward = text.sentiment_reward(response)
    if task == "length":
        reward -= LENGTH_ORACLE_WEIGHT * (text.clause_count(response) - 2)
    return reward


def label_words(task: str, prompt: Sequence[str], response: Sequence[str]) -> float:
    """The reward the labellers' Bradley-Terry draw uses."""
    if task == "length":
        return text.sentiment_reward(response) + LENGTH_LABEL_WEIGHT * (text.clause_count(response) - 2)
    return oracle_words(task, prompt, response)


def reward_of_ids(task: str, labels: bool = False) -> Callable[[Sequence[int], Sequence[int]], float]:
    """reward(prompt_ids, response_ids) for the oracle (or, with `labels`, the labellers)."""
    vocabulary = WORLD_VOCABULARIES[TASKS[task].world]
    eos_id = vocabulary.index("<eos>")
    score = label_words if labels else oracle_words

    def reward(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> float:
        prompt = words_of(prompt_ids, vocabulary, eos_id)
        return score(task, [word for word in prompt if word != "<bos>"], words_of(response_ids, vocabulary, eos_id))

    return reward


def sample_document(world: str, rng) -> tuple[list[str], list[str]]:
    """(prompt words, response words) from a world's corpus distribution."""
    return text.sample_review(rng) if world == "sentiment" else text.sample_sort_problem(rng)
