"""The finetune tier's scoring half (TRUSTED: runs in the parent; never calls candidate code).

Trained parameters are scored on the task's held-out prompts and pairs against its base
model: the oracle's reward of sampled responses, the exact per-token KL, held-out
preference accuracy, and the fitness at the task's KL budget.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from lossearch.evaluation.metrics import preference_accuracy
from lossearch.evaluation.tasks.build import batched_logps
from lossearch.evaluation.tasks.catalog import TASKS
from lossearch.evaluation.tasks.data import TaskData
from lossearch.evaluation.tasks.lm import (
    Sequences,
    forward_logits,
    load_parameters,
    make_model,
    sample_responses,
    split_sequences,
    widen,
)
from lossearch.failures import CandidateError


class Scorer:
    """Scores trained parameters on a task's held-out prompts and pairs, against its base model."""

    def __init__(self, task: TaskData, eval_prompts: int, device: str = "cpu",
                 heldout_pairs: Optional[int] = None) -> None:
        from safetensors.torch import load_file

        self.task = task
        self.device = device
        self.reference = self._model(load_file(str(task.parameters_file)))
        self.prompts = tuple(tensor[:eval_prompts].to(device) for tensor in task.heldout_prompts)
        self.heldout = task.heldout.prefix(heldout_pairs)
        self._reference_rewards: dict[int, Optional[float]] = {}  # by seed: the base model's samples' mean reward

    def _model(self, parameters: Mapping[str, torch.Tensor]):
        model = make_model(self.task.model_config)
        try:
            load_parameters(model, dict(parameters))
        except ValueError as error:
            raise CandidateError("crash", f"the trained parameters are unusable: {error}") from None
        return model.to(self.device).eval()

    @torch.no_grad()
    def sample(self, model, seed: int) -> tuple[Sequences, torch.Tensor]:
        """One response per held-out prompt, and the model's next-token log-probs at each of its
        steps, (N, R, V); the same seed gives the base model the same draws."""
        generator = torch.Generator(device=self.device).manual_seed(10_000 + seed)
        ids, attention = self.prompts
        batches = [sample_responses(model, ids[start:start + 256], attention[start:start + 256],
                                    self.task.max_new_tokens, self.task.eos_id, self.task.pad_id, generator,
                                    step_logps=True)
                   for start in range(0, ids.shape[0], 256)]
        width = max(batch.ids.shape[1] for batch, _ in batches)
        steps = width - ids.shape[1]
        samples = [widen(batch, width) for batch, _ in batches]
        logps = torch.cat([F.pad(step, (0, 0, 0, steps - step.shape[1])) for _, step in batches])
        joined = (torch.cat([getattr(b, name) for b in samples]) for name in ("ids", "attention", "response"))
        return Sequences(*joined), logps

    def mean_reward(self, samples: Sequences) -> Optional[float]:
        if self.task.reward is None:
            return None
        prompts, responses = split_sequences(samples.to("cpu"), self.prompts[0].shape[1])
        return statistics.fmean(self.task.reward(p, r) for p, r in zip(prompts, responses))

    @torch.no_grad()
    def kl(self, samples: Sequences, policy_logps: torch.Tensor) -> float:
        """Mean over prompts of sequence KL(policy || reference), exact per token on the policy's
        samples: the policy's side is its sampling's own log-probs, the reference's one forward pass."""
        prompt_width, total = self.prompts[0].shape[1], 0.0
        for start in range(0, len(samples), 256):
            batch = samples.rows(slice(start, start + 256))
            reference = F.log_softmax(forward_logits(self.reference, batch, prompt_width), dim=-1)  # (n, R, V)
            policy = policy_logps[start:start + 256]
            per_step = (policy.exp() * (policy - reference)).sum(-1)  # (n, R)
            total += float((per_step * batch.response[:, prompt_width:]).sum())
        return total / len(samples)

    @torch.no_grad()
    def preferences(self, model) -> tuple[float, float]:
        """(pref_acc, mean implicit reward margin) on the held-out pairs; ties count half."""
        heldout = self.heldout
        chosen = batched_logps(model, heldout.chosen.to(self.device)).cpu() - heldout.reference_chosen_logps
        rejected = batched_logps(model, heldout.rejected.to(self.device)).cpu() - heldout.reference_rejected_logps
        margin = chosen - rejected  # (M,) log-ratio margin; any beta > 0 keeps its sign
        return preference_accuracy(margin), float(margin.mean())

    def reference_reward(self, seed: int) -> Optional[float]:
        """The base model's mean sampled reward at `seed`: drawn once, then read from the task's cache
        (ReferenceRewardCache), which saves 27% of scoring a quick run (0.21 of 0.77 s; fp32, 2-core
        Xeon, benchmarks/command_overheads.py)."""
        if seed not in self._reference_rewards:
            self._reference_rewards[seed] = self._draw_reference_reward(seed)
        return self._reference_rewards[seed]

    def _draw_reference_reward(self, seed: int) -> Optional[float]:
        cache = ReferenceRewardCache.of(self.task, len(self.prompts[0]), self.device)
        cached = cache.get(seed) if cache is not None else None
        if cached is not None:
            return cached
        reward = self.mean_reward(self.sample(self.reference, seed)[0])
        if cache is not None and reward is not None:
            cache.put(seed, reward)
        return reward

    def score(self, parameters: Mapping[str, torch.Tensor], seed: int) -> dict[str, Optional[float]]:
        """reward, reference_reward, kl, pref_acc, margin and fitness of trained parameters."""
        model = self._model(parameters)
        samples, logps = self.sample(model, seed)
        reward, kl = self.mean_reward(samples), self.kl(samples, logps)
        pref_acc, margin = self.preferences(model)
        if not math.isfinite(kl):
            raise CandidateError("nan", "the trained policy's KL from the reference is not finite")
        return {"reward": reward, "reference_reward": self.reference_reward(seed), "kl": kl,
                "pref_acc": pref_acc, "margin": margin, "fitness": self.fitness(reward, kl, pref_acc)}

    def fitness(self, reward: Optional[float], kl: float, pref_acc: float) -> float:
        """The reward at the KL budget (over it: penalized); pref_acc where there is no reward."""
        if reward is None:
            return pref_acc
        if self.task.kl_budget is None:
            return reward
        penalized = reward - self.task.kl_penalty * max(0.0, kl - self.task.kl_budget)
        return max(self.task.fitness_floor, penalized)


# bump when Scorer.sample or a task's oracle draws or scores differently: the cache's entries go stale
SAMPLER_VERSION = 2


class ReferenceRewardCache:
    """The base model's mean sampled reward per seed, kept beside a catalog task's artifacts.

    It depends on nothing a candidate changes: the artifact (base model, held-out prompts), the
    seed, the number of prompts, the device and torch's sampler; every evaluation of a campaign
    needs the same few, so they are drawn once. A user's task is never cached: its reward is
    their code, which may change under the same artifact.
    """

    def __init__(self, path, entry: Callable[[int], str]) -> None:
        self.path, self.entry = path, entry

    @classmethod
    def of(cls, task: TaskData, prompts: int, device: str) -> Optional["ReferenceRewardCache"]:
        if task.name not in TASKS or task.reward is None:
            return None
        device_type = torch.device(device).type
        return cls(task.pairs_file.parent / "reference_rewards.json",
                   lambda seed: f"seed {seed}, {prompts} prompts, {task.max_new_tokens} tokens, {device_type}, "
                                f"torch {torch.__version__}, sampler {SAMPLER_VERSION}")

    def _read(self) -> dict:
        import json

        try:
            with open(self.path) as file:
                table = json.load(file)
        except (OSError, ValueError):
            return {}
        return table if isinstance(table, dict) else {}

    def get(self, seed: int) -> Optional[float]:
        value = self._read().get(self.entry(seed))
        return float(value) if isinstance(value, (int, float)) else None

    def put(self, seed: int, reward: float) -> None:
        """Add one entry; written whole to a temporary file, then renamed (a reader never sees half)."""
        import json
        import os
        import tempfile

        table = {**self._read(), self.entry(seed): reward}
        try:
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".reference_rewards-")
        except OSError:  # a read-only cache: draw them again next time
            return
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(table, file, indent=1)
            os.replace(temporary, self.path)
        except OSError:
            os.unlink(temporary)


