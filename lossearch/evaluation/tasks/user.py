"""A user's own setting: a local causal LM folder and a JSONL file of preference pairs.

Each line of the dataset is {"prompt": ..., "chosen": ..., "rejected": ...}, with optional numeric
"chosen_score" and "rejected_score" (a loss that reads scores needs them on every line). A seeded
share of the pairs is held out: `pref_acc` and the implicit reward margin are read on
them. Without an oracle that is the whole score; with `reward="module.py:function"`,
`function(prompt, response) -> float` scores responses sampled on the held-out prompts.
The model folder is anything `AutoModelForCausalLM.from_pretrained` reads, with its
tokenizer; the prepared tensors are cached like a task's, keyed by the files' contents.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, cast

from safetensors.torch import save_file

from lossearch.choices import USER_TASK
from lossearch.errors import ConfigError
from lossearch.evaluation.tasks import cache
from lossearch.evaluation.tasks.build import PARAMETERS_FILE, ProgressFn, batched_logps, read_pairs, sequences_tensors
from lossearch.evaluation.tasks.lm import make_sequences, pad_left, save_parameters
from lossearch.evaluation.tasks.scores import user_scores_file


class SettingError(ConfigError):
    """The user's model, dataset or reward cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class UserSetting:
    """A local model folder, a JSONL pairs file and optionally a reward function."""

    model: Path
    """Folder with a causal LM and its tokenizer (`save_pretrained` output)."""
    dataset: Path
    """JSONL file, one {"prompt", "chosen", "rejected"} object per line."""
    reward: Optional[str] = None
    """"path/to/module.py:function"; function(prompt: str, response: str) -> float."""
    heldout_fraction: float = 0.1
    """Share of the pairs held out for scoring (at least one pair each way)."""
    max_prompt_tokens: int = 128
    """Prompts are cut to their last this many tokens."""
    max_response_tokens: int = 128
    """Responses are cut to this many tokens, end-of-sequence included."""
    kl_budget: Optional[float] = None
    """With a reward: fitness reads it at this KL (nats); None means no budget."""
    kl_penalty: float = 1.0
    """With a reward and a budget: reward lost per nat over the budget."""
    seed: int = 0
    """Seed of the held-out split."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "dataset", Path(self.dataset))
        if not 0 < self.heldout_fraction < 1:
            raise ValueError("UserSetting.heldout_fraction must be between 0 and 1")
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 2:
            raise ValueError("UserSetting token limits must be positive (responses at least 2)")


def load_reward_function(reference: str) -> Callable[[str, str], float]:
    """The function named by "path/to/module.py:function" (the user's own, trusted code)."""
    path, _, name = reference.rpartition(":")
    if not path or not name:
        raise SettingError(f"--reward {reference!r}: write it as path/to/module.py:function")
    if not Path(path).is_file():
        raise SettingError(f"--reward: no such file {path}")
    spec = importlib.util.spec_from_file_location(f"lossearch_user_reward_{Path(path).stem}", path)
    if spec is None or spec.loader is None:  # not a file Python imports (say, no .py suffix)
        raise SettingError(f"--reward: {path} is not a Python module; name a .py file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's module is broken: say so in one line
        raise SettingError(f"--reward: importing {path} raised {type(error).__name__}: {error}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise SettingError(f"--reward: {path} defines no function {name!r}")
    return function


def read_dataset(path: Path) -> list[dict[str, str]]:
    """The JSONL rows; raises SettingError naming the first bad line."""
    if not path.is_file():
        raise SettingError(f"--dataset: no such file {path}")
    rows = []
    required = ("prompt", "chosen", "rejected")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SettingError(f"--dataset {path} line {number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(key), str) for key in required):
            raise SettingError(f"--dataset {path} line {number}: needs string fields prompt, chosen, rejected")
        rows.append(row)
    if len(rows) < 2:
        raise SettingError(f"--dataset {path}: needs at least 2 pairs (one to train on, one to hold out)")
    return rows


def load_pretrained(folder: Path):
    """(model, tokenizer) from the user's folder; SettingError when it is not one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise SettingError(f"--model {folder}: not a model folder (no config.json); save one with save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
    except (OSError, ValueError, KeyError) as error:
        raise SettingError(f"--model {folder}: cannot load it ({str(error).splitlines()[0]})") from None
    return model, tokenizer


def setting_key(setting: UserSetting) -> str:
    """Hash of the setting and the bytes of the model folder's files and the dataset."""
    digest = hashlib.sha256()
    for file in sorted(path for path in setting.model.rglob("*") if path.is_file()) + [setting.dataset]:
        digest.update(file.name.encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return cache.config_key({**asdict(setting), "model": "", "dataset": "", "files": digest.hexdigest()})


def encode_rows(rows, tokenizer, setting: UserSetting):
    """(prompts, chosen, rejected) token-id lists; responses end with eos when the tokenizer has one."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def prompt(text: str) -> list[int]:
        return tokenizer(text)["input_ids"][-setting.max_prompt_tokens:]

    def response(text: str) -> list[int]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[: setting.max_response_tokens - len(eos)] + eos

    return ([prompt(row["prompt"]) for row in rows], [response(row["chosen"]) for row in rows],
            [response(row["rejected"]) for row in rows])


def split_rows(count: int, setting: UserSetting) -> dict[str, list[int]]:
    """{"heldout": row indices, "train": row indices}: a seeded share of the `count` rows held out."""
    order = list(range(count))
    random.Random(setting.seed).shuffle(order)
    n_heldout = min(count - 1, max(1, math.ceil(setting.heldout_fraction * count)))
    return {"heldout": order[:n_heldout], "train": order[n_heldout:]}


def build_user_artifact(setting: UserSetting, folder: Path, progress: ProgressFn) -> None:
    """Split, tokenize and save the pairs with their reference log-probs, and the model's parameters."""
    started = time.monotonic()
    model, tokenizer = load_pretrained(setting.model)
    rows = read_dataset(setting.dataset)
    splits = split_rows(len(rows), setting)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    tensors = {}
    for done, (split, indices) in enumerate(splits.items()):
        progress("reference log-probs of your pairs", done, len(splits))
        prompts, chosen, rejected = encode_rows([rows[i] for i in indices], tokenizer, setting)
        chosen_seqs, rejected_seqs = make_sequences(prompts, chosen, pad_id), make_sequences(prompts, rejected, pad_id)
        tensors.update(sequences_tensors(f"{split}_chosen", chosen_seqs))
        tensors.update(sequences_tensors(f"{split}_rejected", rejected_seqs))
        tensors[f"{split}_reference_chosen_logps"] = batched_logps(model, chosen_seqs, batch_size=16)
        tensors[f"{split}_reference_rejected_logps"] = batched_logps(model, rejected_seqs, batch_size=16)
        tensors[f"{split}_prompt_ids"], tensors[f"{split}_prompt_attention"] = pad_left(prompts, pad_id)
    save_file({name: value.contiguous() for name, value in tensors.items()}, folder / "pairs.safetensors")
    save_parameters(model, folder / PARAMETERS_FILE)
    responses = [len(r) for r in encode_rows(rows, tokenizer, setting)[1]]
    meta = {"kind": "user",
            "setting": {**asdict(setting), "model": str(setting.model), "dataset": str(setting.dataset)},
            "config": model.config.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
            "train_pairs": len(splits["train"]), "heldout_pairs": len(splits["heldout"]),
            "pad_id": pad_id, "eos_id": tokenizer.eos_token_id, "max_new_tokens": max(responses),
            "seconds": time.monotonic() - started}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, default=str))


def load_user_setting(setting: UserSetting, root: Path, progress: ProgressFn):
    """The TaskData of a user setting, prepared into the cache first if needed."""
    from transformers import AutoTokenizer

    from lossearch.evaluation.tasks.data import PairSet, TaskData

    if not setting.model.is_dir():
        raise SettingError(f"--model {setting.model}: no such folder")
    reward = load_reward_function(setting.reward) if setting.reward else None
    rows = read_dataset(setting.dataset)  # fail early, with the line number, before any model loads
    name = f"user-{setting_key(setting)}"
    folder = cache.cached_artifact(root, name, lambda staging: build_user_artifact(setting, staging, progress))
    scores_file = user_scores_file(rows, split_rows(len(rows), setting)["train"], name, root)
    meta = json.loads((folder / "meta.json").read_text())
    tensors = read_pairs(folder)
    tokenizer = AutoTokenizer.from_pretrained(setting.model)

    def decode(ids) -> str:
        return cast(str, tokenizer.decode(list(ids), skip_special_tokens=True))  # one sequence: one string

    def reward_of_ids(prompt_ids, response_ids) -> float:
        assert reward is not None  # TaskData gets this function only with a reward (below)
        return float(reward(decode(prompt_ids), decode(response_ids)))

    return TaskData(
        name=USER_TASK, key=name, model_config=meta["config"], parameters_file=folder / PARAMETERS_FILE,
        pairs_file=folder / "pairs.safetensors", train=PairSet.from_tensors(tensors, "train"),
        heldout=PairSet.from_tensors(tensors, "heldout"),
        heldout_prompts=(tensors["heldout_prompt_ids"], tensors["heldout_prompt_attention"].bool()),
        eos_id=meta["eos_id"] if meta["eos_id"] is not None else -1, pad_id=meta["pad_id"],
        max_new_tokens=meta["max_new_tokens"], reward=reward_of_ids if reward else None,
        kl_budget=setting.kl_budget if reward else None, kl_penalty=setting.kl_penalty,
        parameters=meta["parameters"], decode=decode, scores_file=scores_file)
