"""Building a task's artifacts: the base (SFT) model, then the preference pairs.

    world-{world}-{key}/   the base model: `save_pretrained` of a Llama-style causal LM
                           pretrained from scratch on the world's generated corpus, and
                           its tokenizer; shared by every task of the world
    pairs-{task}-{key}/    pairs.safetensors: training pairs (two responses sampled from the
                           base model per prompt, labelled by a Bradley-Terry draw) with their
                           reference log-probs, held-out prompts, held-out pairs ordered by
                           the oracle; sized for the largest budget (smaller ones use a prefix)

Both are deterministic given their configuration and built once (lossearch.evaluation.tasks.cache).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lossearch.evaluation.tasks import cache, catalog
from lossearch.evaluation.tasks.labels import bradley_terry_labels
from lossearch.evaluation.tasks.lm import (
    Sequences,
    make_hf_model,
    make_sequences,
    pad_left,
    sample_responses,
    save_parameters,
    sequence_logps,
)
from lossearch.evaluation.threads import one_thread
from lossearch.progress import ProgressFn, no_progress

PAIRS_FORMAT = 2  # bump when the code changes what a pairs artifact holds for the same configuration
PARAMETERS_FILE = "parameters.safetensors"  # every named parameter, tied ones once: what a sandbox child loads

@dataclass(frozen=True)
class DataConfig:
    """The pairs and held-out sets of one task; budgets use prefixes of them."""

    train_pairs: int = 4096
    """Training pairs built (the `full` budget's count)."""
    heldout_prompts: int = 1024
    """Prompts for reward and KL, sampled at scoring time."""
    heldout_pairs: int = 512
    """Pairs ordered by the oracle, for `pref_acc`."""
    seed: int = 0
    """Seed of the prompts, the sampled responses and the labels."""

    def __post_init__(self) -> None:
        if min(self.train_pairs, self.heldout_prompts, self.heldout_pairs) < 1:
            raise ValueError("DataConfig sizes must be positive")


# -----------------------------------------------------------------------------
# the base model

def world_artifact(world: catalog.WorldConfig, root: Path, progress: ProgressFn = no_progress) -> Path:
    """The base model folder of `world`, built (about a minute or two on two CPU cores) if missing."""
    name = world_name(world)

    def build(folder: Path) -> None:
        with one_thread():
            build_world(world, folder, progress)

    return cache.cached_artifact(root, name, build)


def model_config(world: catalog.WorldConfig, vocabulary) -> dict:
    """The Llama config dict of a world's base model."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=len(vocabulary), hidden_size=world.hidden_size, num_hidden_layers=world.layers,
        num_attention_heads=world.heads, num_key_value_heads=world.heads,
        intermediate_size=world.intermediate_size, max_position_embeddings=64, tie_word_embeddings=True,
        pad_token_id=vocabulary.index("<pad>"), bos_token_id=vocabulary.index("<bos>"),
        eos_token_id=vocabulary.index("<eos>"))
    return config.to_dict()


def corpus_sequences(world: catalog.WorldConfig, vocabulary) -> torch.Tensor:
    """(corpus_size, T) token ids: "<bos> prompt response <eos>", right-padded with <pad>."""
    rng = random.Random(world.seed)
    index = {word: i for i, word in enumerate(vocabulary)}
    rows = []
    for _ in range(world.corpus_size):
        prompt, response = catalog.sample_document(world.world, rng)
        rows.append([index["<bos>"], *(index[w] for w in prompt), *(index[w] for w in response), index["<eos>"]])
    width = max(len(row) for row in rows)
    return torch.tensor([row + [index["<pad>"]] * (width - len(row)) for row in rows])


def build_world(world: catalog.WorldConfig, folder: Path, progress: ProgressFn = no_progress) -> None:
    """Pretrain the base model from scratch on the world's corpus and save it into `folder`."""
    from lossearch.evaluation.tasks.tokenizer import build_tokenizer

    started = time.monotonic()
    vocabulary = catalog.WORLD_VOCABULARIES[world.world]
    tokenizer = build_tokenizer(vocabulary)
    torch.manual_seed(world.seed)
    model = make_hf_model(model_config(world, vocabulary))  # transformers' own class: it saves the folder
    corpus = corpus_sequences(world, vocabulary)  # (D, T)
    losses = pretrain(model, corpus, world, vocabulary.index("<pad>"), progress)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_parameters(model, folder / PARAMETERS_FILE)
    meta = {"kind": "world", "config": asdict(world), "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": time.monotonic() - started}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def pretrain(model, corpus: torch.Tensor, world: catalog.WorldConfig, pad_id: int, progress: ProgressFn) -> list[float]:
    """Next-token pretraining, nanoGPT-style: AdamW, warm-up then cosine decay, clipped gradients."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=world.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(world.seed)
    warmup = max(1, world.pretrain_steps // 20)
    losses = []
    model.train()
    for step in range(world.pretrain_steps):
        # linear warm-up, then cosine decay to a tenth of the peak
        progress_ratio = max(0.0, (step - warmup) / max(1, world.pretrain_steps - warmup))
        scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress_ratio)))
        for group in optimizer.param_groups:
            group["lr"] = world.pretrain_lr * scale
        batch = corpus[torch.randint(0, corpus.shape[0], (world.pretrain_batch,), generator=generator)]  # (B, T)
        batch = batch[:, : int((batch != pad_id).sum(-1).max())]  # trim the all-padding tail
        logits = model(input_ids=batch, attention_mask=(batch != pad_id).long()).logits  # (B, T, V)
        targets = batch[:, 1:].masked_fill(batch[:, 1:] == pad_id, -100)  # padding is not a target
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == world.pretrain_steps - 1:
            progress(f"pretraining the {world.world} base model", step + 1, world.pretrain_steps)
    model.eval()
    return losses


def load_base_model(folder: Path):
    """The base model saved in `folder`, in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per load of a 0.6 M model is noise in a campaign's log
    return AutoModelForCausalLM.from_pretrained(folder).eval()


# -----------------------------------------------------------------------------
# the pairs

def pairs_artifact(task: str, data: DataConfig, root: Path, progress: ProgressFn = no_progress,
                   world: catalog.WorldConfig | None = None) -> Path:
    """The pairs folder of `task`, built (with its world's base model) if missing."""
    definition = catalog.TASKS[task]
    world = world or catalog.WORLDS[definition.world]
    if world.world != definition.world:
        raise ValueError(f"task {task!r} lives in the {definition.world!r} world, not {world.world!r}")
    world_folder = world_artifact(world, root, progress)
    name = pairs_name(task, world, data)

    def build(folder: Path) -> None:
        with one_thread():
            build_pairs(task, data, world_folder, folder, progress)

    return cache.cached_artifact(root, name, build)


def pairs_name(task: str, world: catalog.WorldConfig, data: DataConfig) -> str:
    """The cache name of a task's pairs: what they depend on, and the format of this code."""
    fields = catalog.TASKS[task].pairs_fields()
    return f"pairs-{task}-{cache.config_key(world, fields, data, {'pairs_format': PAIRS_FORMAT})}"


def world_name(world: catalog.WorldConfig) -> str:
    return f"world-{world.world}-{cache.config_key(world)}"


def draw_prompts(world: str, count: int, rng: random.Random, vocabulary) -> list[list[int]]:
    """`count` prompts of the world as token ids, "<bos>" first."""
    index = {word: i for i, word in enumerate(vocabulary)}
    return [[index["<bos>"], *(index[w] for w in catalog.sample_document(world, rng)[0])] for _ in range(count)]


@torch.no_grad()
def sample_in_batches(model, prompts: list[list[int]], definition: catalog.TaskDefinition, vocabulary,
                      generator: torch.Generator, batch_size: int = 512) -> list[list[int]]:
    """One sampled response per prompt (token ids, eos included when the model ended it)."""
    pad_id, eos_id = vocabulary.index("<pad>"), vocabulary.index("<eos>")
    responses = []
    for start in range(0, len(prompts), batch_size):
        ids, attention = pad_left(prompts[start:start + batch_size], pad_id)
        batch = sample_responses(model, ids, attention, definition.max_new_tokens, eos_id, pad_id, generator)
        responses += [row[mask].tolist() for row, mask in zip(batch.ids, batch.response)]
    return responses


def build_pairs(task: str, data: DataConfig, world_folder: Path, folder: Path, progress: ProgressFn) -> None:
    """Sample, label and save the training pairs, held-out prompts and held-out pairs of `task`."""
    started = time.monotonic()
    definition = catalog.TASKS[task]
    vocabulary = catalog.WORLD_VOCABULARIES[definition.world]
    model = load_base_model(world_folder)
    rng = random.Random(f"{task}-{data.seed}")
    generator = torch.Generator().manual_seed(data.seed)
    oracle, labeller = catalog.reward_of_ids(task), catalog.reward_of_ids(task, labels=True)
    pad_id = vocabulary.index("<pad>")

    def prompts(count: int) -> list[list[int]]:
        return draw_prompts(definition.world, count, rng, vocabulary)

    progress(f"sampling {task} training pairs", 0, 3)
    train = label_pairs(model, prompts, definition, vocabulary, generator, labeller, data.train_pairs,
                        random_labels=True)
    progress(f"sampling {task} held-out pairs", 1, 3)
    heldout = label_pairs(model, prompts, definition, vocabulary, generator, oracle, data.heldout_pairs,
                          random_labels=False)
    heldout_prompts = draw_prompts(definition.world, data.heldout_prompts, rng, vocabulary)
    progress(f"reference log-probs of the {task} pairs", 2, 3)
    tensors = {}
    for split, (split_prompts, chosen, rejected) in (("train", train), ("heldout", heldout)):
        chosen_seqs = make_sequences(split_prompts, chosen, pad_id)
        rejected_seqs = make_sequences(split_prompts, rejected, pad_id)
        tensors.update(sequences_tensors(f"{split}_chosen", chosen_seqs))
        tensors.update(sequences_tensors(f"{split}_rejected", rejected_seqs))
        tensors[f"{split}_reference_chosen_logps"] = batched_logps(model, chosen_seqs)
        tensors[f"{split}_reference_rejected_logps"] = batched_logps(model, rejected_seqs)
    tensors["train_prompt_ids"], tensors["train_prompt_attention"] = pad_left(train[0], pad_id)
    tensors["heldout_prompt_ids"], tensors["heldout_prompt_attention"] = pad_left(heldout_prompts, pad_id)
    save_file({name: value.contiguous() for name, value in tensors.items()}, folder / "pairs.safetensors")
    progress(f"reference log-probs of the {task} pairs", 3, 3)
    meta = {"kind": "pairs", "task": task, "data": asdict(data), "definition": asdict(definition),
            "world": world_folder.name, "seconds": time.monotonic() - started,
            **pair_statistics(train, heldout, oracle)}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def label_pairs(model, draw: Callable[[int], list], definition, vocabulary, generator, reward, count: int,
                random_labels: bool):
    """(prompts, chosen, rejected) id lists of `count` pairs of distinct sampled responses.

    Training pairs (`random_labels`) are labelled by a Bradley-Terry draw on `reward`,
    with the task's flips; held-out pairs are ordered by `reward` and ties are dropped.
    Prompts come from `draw(n)`, a round at a time, until `count` pairs are usable.
    """
    prompts: list[list[int]] = []
    first: list[list[int]] = []
    second: list[list[int]] = []
    for _ in range(20):
        usable = [i for i in range(len(prompts)) if first[i] != second[i]
                  and (random_labels or reward(prompts[i], first[i]) != reward(prompts[i], second[i]))]
        if len(usable) >= count:
            break
        more = draw(int((count - len(usable)) * 1.25) + 16)
        prompts += more
        first += sample_in_batches(model, more, definition, vocabulary, generator)
        second += sample_in_batches(model, more, definition, vocabulary, generator)
    else:
        raise RuntimeError(f"only {len(usable)} usable pairs of {count}: the base model repeats itself too often")
    keep = usable[:count]
    first_rewards = torch.tensor([reward(prompts[i], first[i]) for i in keep])
    second_rewards = torch.tensor([reward(prompts[i], second[i]) for i in keep])
    if random_labels:
        first_wins = bradley_terry_labels(first_rewards, second_rewards, definition.label_temperature,
                                          definition.flip_fraction, generator)
    else:
        first_wins = first_rewards > second_rewards
    chosen = [first[i] if win else second[i] for i, win in zip(keep, first_wins.tolist())]
    rejected = [second[i] if win else first[i] for i, win in zip(keep, first_wins.tolist())]
    return [prompts[i] for i in keep], chosen, rejected


def pair_statistics(train, heldout, oracle) -> dict:
    """How good the base model's samples are and how often the labels agree with the oracle."""
    prompts, chosen, rejected = train
    chosen_rewards = [oracle(p, r) for p, r in zip(prompts, chosen)]
    rejected_rewards = [oracle(p, r) for p, r in zip(prompts, rejected)]
    agree = sum(c > r for c, r in zip(chosen_rewards, rejected_rewards))
    ties = sum(c == r for c, r in zip(chosen_rewards, rejected_rewards))
    return {"train_pairs": len(prompts), "heldout_pairs": len(heldout[0]),
            "base_sample_reward": (sum(chosen_rewards) + sum(rejected_rewards)) / (2 * len(prompts)),
            "labels_agree_with_oracle": agree / max(1, len(prompts) - ties)}


def sequences_tensors(prefix: str, sequences: Sequences) -> dict[str, torch.Tensor]:
    return {f"{prefix}_ids": sequences.ids, f"{prefix}_attention": sequences.attention,
            f"{prefix}_response": sequences.response}


@torch.no_grad()
def batched_logps(model, sequences: Sequences, batch_size: int = 512) -> torch.Tensor:
    """(N,) response log-probs of every sequence under `model`, a batch at a time."""
    return torch.cat([sequence_logps(model, sequences.select(slice(start, start + batch_size)))
                      for start in range(0, len(sequences), batch_size)])


def read_pairs(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "pairs.safetensors")
