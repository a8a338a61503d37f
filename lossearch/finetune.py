"""The finetune tier (DESIGN §3-4): train a small causal LM with a candidate loss, score it.

One candidate evaluation is an Optuna search over beta (lossearch.tuning); each
(beta, seed) run is one sandbox job:

    parent                                      sandbox child (lossearch.jobs.finetune_job)
    ------                                      -------------------------------------------
    copies in base parameters + pairs file  ->  policy = copy of the base model
                                                for each step: a batch of pairs ->
                                                  policy log-probs (with graph) ->
                                                  candidate loss on detached copies ->
                                                  its input gradients carried back by us ->
                                                  AdamW step
    reads back policy.safetensors           <-  writes the trained parameters
    scores them: samples on held-out prompts,
    oracle reward, exact per-token KL,
    held-out preference accuracy, fitness

The parent never runs candidate code and the child never sees the oracle's held-out
prompts or its score: a candidate can change its score only through its gradients.

The module has two halves, marked below: training (runs in the child) and scoring
(trusted, runs in the parent).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from lossearch.contract import backpropagate
from lossearch.failures import CandidateError
from lossearch.tasks import PairSet, TaskData
from lossearch.tasks.build import ProgressFn, no_progress
from lossearch.tasks.lm import (Sequences, first_response_column, forward_logits, load_parameters, make_model,
                                sample_responses, sequence_kl, sequence_logps, token_logps)

DATA_MODES = ("offline", "online")
PRECISIONS = ("auto", "fp32", "bf16")


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
    """Optuna trials, i.e. betas tried; the first is the loss's default beta."""
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
        for name in ("steps", "pairs", "batch_size", "trials", "seeds", "eval_prompts", "heldout_pairs", "online_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"Budget.{name} must be at least 1")
        if not self.lr > 0:
            raise ValueError("Budget.lr must be positive")

    @property
    def runs(self) -> int:
        return self.trials * self.seeds

    @classmethod
    def named(cls, budget: Union[str, "Budget"]) -> "Budget":
        return budget if isinstance(budget, Budget) else BUDGETS[budget]


# steps x batch_size / pairs is about 1.5 epochs at `standard`; `full` sees more pairs, not more
# steps, so its policies move as far as `standard`'s and the KL budget means the same at both
BUDGETS = {
    "quick": Budget("quick", steps=100, pairs=1024, batch_size=16, trials=1, seeds=1, eval_prompts=256,
                    heldout_pairs=256),
    "standard": Budget("standard", steps=200, pairs=2048, batch_size=16, trials=4, seeds=3, eval_prompts=512),
    "full": Budget("full", steps=200, pairs=4096, batch_size=32, trials=8, seeds=5, eval_prompts=1024),
}


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
    """A lossearch.tasks.user.UserSetting: the user's model and pairs instead of a task."""
    storage: Optional[str] = None
    """Optuna storage URL (e.g. the campaign's database); None keeps the study in memory."""
    study_name: Optional[str] = None
    """Name of the Optuna study; None derives one from the code, task, budget, data mode and seed."""
    cache_dir: Optional[str] = None
    """Artifact cache; None means $LOSSEARCH_CACHE or ~/.cache/lossearch."""
    precision: str = "auto"
    """Training arithmetic: `fp32`, `bf16` (mixed: bf16 matrix products, float32 weights, optimizer,
    attention, norms and logits), or `auto`: bf16 where the device computes it natively (CUDA with
    bf16, CPUs with AVX512-BF16 or AMX), else fp32. Scoring is always float32."""
    threads: int = 1
    """Torch threads of the training child. One: on a busy two-core machine two threads made a
    training step seven times slower in our measurements (OpenMP threads wait on each other)."""
    task_data: Optional[TaskData] = field(default=None, compare=False, repr=False)
    """An already loaded task (or user setting) to use instead of loading `task` each time."""
    progress: ProgressFn = field(default=no_progress, compare=False, repr=False)
    """progress(description, completed, total), for a progress bar."""

    def __post_init__(self) -> None:
        if not isinstance(self.budget, Budget) and self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; choose one of {', '.join(BUDGETS)}")
        if self.data not in DATA_MODES:
            raise ValueError(f"unknown data mode {self.data!r}; choose one of {', '.join(DATA_MODES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.threads < 1:
            raise ValueError("FinetuneOptions.threads must be at least 1")


def resolve_device(device: Optional[str]) -> str:
    """`device`, or CUDA when present, else the CPU; a CUDA device that is missing is a ValueError."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device here")
    torch.device(device)  # raises on a malformed name
    return device


def resolve_precision(precision: str, device: str) -> str:
    """`fp32` or `bf16` for `device`: `auto` picks bf16 where the hardware computes it natively."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device == "cpu" and native_bf16_cpu() else "fp32"


@functools.lru_cache(maxsize=None)
def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (x86 AVX512-BF16 or AMX-BF16, Arm BF16).

    Without them torch emulates bf16, slower than float32. On this project's reference CPU
    (AMD EPYC, AVX512-BF16) a (736 x 128) @ (128 x 352) product took 0.15 ms in bf16, 0.64 ms in fp32.
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(cpuinfo.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


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
    """`fp32` or `bf16` (autocast around the policy's and reference's forward passes)."""


# -----------------------------------------------------------------------------
# training (UNTRUSTED process: runs in the sandbox child, beside the candidate's code)

LossFn = Callable[[Mapping[str, torch.Tensor], float], torch.Tensor]


def widen(batch: Sequences, width: int) -> Sequences:
    """`batch` padded on the right (with masked-out columns) to `width` columns."""
    return Sequences(*(torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))
                       for tensor in (batch.ids, batch.attention, batch.response)))


def concat_sequences(first: Sequences, second: Sequences) -> Sequences:
    """Stack two batches that share their prompt columns, padding the narrower on the right."""
    width = max(first.ids.shape[1], second.ids.shape[1])
    first, second = widen(first, width), widen(second, width)
    return Sequences(torch.cat([first.ids, second.ids]), torch.cat([first.attention, second.attention]),
                     torch.cat([first.response, second.response]))


def policy_inputs(policy, reference, pairs: PairSet, index: torch.Tensor, uses_kl: bool, precision: str = "fp32"):
    """Contract inputs of a batch: policy-side (B,) tensors with graph, and the fixed ones."""
    device = next(policy.parameters()).device
    chosen, rejected = pairs.chosen.select(index), pairs.rejected.select(index)
    # both responses of every pair share the prompt columns, so one forward pass serves both
    both = concat_sequences(chosen, rejected).to(device)  # (2B, T)
    first = first_response_column(both)  # logits from the last prompt column on: all the loss reads
    with arithmetic(device, precision):
        logits = forward_logits(policy, both, first).float()  # (2B, T - first, V)
    logps = token_logps(logits, both).sum(-1)  # (2B,)
    B = len(index)
    outputs = {"policy_chosen_logps": logps[:B], "policy_rejected_logps": logps[B:]}
    if uses_kl:  # TDPO's inputs: sum over response positions of KL(reference || policy)
        with torch.no_grad(), arithmetic(device, precision):
            reference_logits = forward_logits(reference, both, first).float()
        kl = sequence_kl(reference_logits, logits, both)  # (2B,)
        outputs.update(chosen_kl=kl[:B], rejected_kl=kl[B:])
    fixed = {"reference_chosen_logps": pairs.reference_chosen_logps[index],
             "reference_rejected_logps": pairs.reference_rejected_logps[index],
             "chosen_lengths": chosen.response_lengths(), "rejected_lengths": rejected.response_lengths()}
    return outputs, {name: value.to(device) for name, value in fixed.items()}


def arithmetic(device: torch.device, precision: str):
    """The autocast context of `precision` on `device` (a disabled one for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def loss_and_gradients(loss_fn: LossFn, outputs: dict, fixed: dict, beta: float):
    """(mean loss, {input: d mean loss / d input}): the candidate sees detached copies only.

    Its inputs are fresh leaves, so a loss cannot reach the model through `.grad_fn`;
    whatever it does to them in place stays in the copies.
    """
    leaves = {name: value.detach().clone().requires_grad_() for name, value in outputs.items()}
    copies = {name: value.detach().clone() for name, value in fixed.items()}
    loss = loss_fn({**leaves, **copies}, beta).mean()
    if not loss.requires_grad:
        raise CandidateError("no_grad", "the loss does not depend on the policy's log-probabilities")
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return loss.item(), {name: grad for name, grad in zip(leaves, grads) if grad is not None}


def training_step(policy, reference, optimizer, loss_fn: LossFn, pairs: PairSet, index: torch.Tensor,
                  beta: float, uses_kl: bool, precision: str = "fp32") -> float:
    """One AdamW step of the policy on the pairs `index`; returns the batch's mean loss."""
    outputs, fixed = policy_inputs(policy, reference, pairs, index, uses_kl, precision)
    loss, grads = loss_and_gradients(loss_fn, outputs, fixed, beta)
    if not grads:
        raise CandidateError("no_grad", "the loss's gradients with respect to the policy log-probs are all missing")
    if not all(bool(torch.isfinite(grad).all()) for grad in grads.values()):
        raise CandidateError("nan", f"the loss's gradients were not finite during training at beta={beta:g}")
    optimizer.zero_grad()
    # chain rule by hand: d loss / d theta = sum over inputs of (d loss / d input) * (d input / d theta)
    backpropagate([outputs[name] for name in grads], list(grads.values()))
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    optimizer.step()
    return loss


class AdamW:
    """torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments), fused.

    Not torch.optim's class: the first step of any torch.optim optimizer imports torch._dynamo,
    about a second, paid by every fresh process (the sandbox's zygote) for a few-second run.
    It calls the kernel torch.optim.AdamW(fused=True) calls, one pass over each tensor's
    parameter, gradient and moments: 0.3 ms a step for the tasks' model, where the same update
    in foreach ops (eight passes) took 1.5 ms. tests/test_finetune.py checks that it takes
    torch.optim.AdamW's steps.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        self.params = [param for param in params if param.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.exp_avg = [torch.zeros_like(param) for param in self.params]
        self.exp_avg_sq = [torch.zeros_like(param) for param in self.params]
        # per parameter, as torch's: one without a grad skips a step; float tensors, as the kernel takes them
        self.steps = [torch.zeros((), dtype=torch.float32, device=param.device) for param in self.params]

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, param in enumerate(self.params) if param.grad is not None]
        if not live:
            return
        steps = [self.steps[i] for i in live]
        torch._foreach_add_(steps, 1.0)
        beta1, beta2 = self.betas
        torch._fused_adamw_([self.params[i] for i in live], [self.params[i].grad for i in live],
                            [self.exp_avg[i] for i in live], [self.exp_avg_sq[i] for i in live], [], steps,
                            lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=self.weight_decay, eps=self.eps,
                            amsgrad=False, maximize=False)


def learning_rate_scale(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth: the last steps are small, so where a run
    ends depends little on exactly how many steps it took (less spread across seeds)."""
    decay = max(0.0, (step - warmup) / max(1, steps - warmup))
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * decay)))


def train_policy(loss_fn: LossFn, policy, reference, pairs: PairSet, config: RunConfig,
                 prompts: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> list[float]:
    """Train `policy` in place for `config.steps` steps; returns the loss of every step.

    `reference` (the frozen base model) is read only for KL inputs and online pairs; None otherwise.
    """
    optimizer = AdamW(policy.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    warmup = max(1, config.steps // 10)
    losses: list[float] = []
    policy.train()
    for step in range(config.steps):
        optimizer.lr = config.lr * learning_rate_scale(step, config.steps, warmup)
        if config.online and step % config.online["every"] == 0:
            pairs = draw_online_pairs(policy, reference, prompts, config, generator)
        index = torch.randint(0, len(pairs), (config.batch_size,), generator=generator)  # (B,)
        losses.append(training_step(policy, reference, optimizer, loss_fn, pairs, index, config.beta,
                                    config.uses_kl, config.precision))
    policy.eval()
    if not all(bool(torch.isfinite(param).all()) for param in policy.parameters()):
        raise CandidateError("nan", f"training diverged at beta={config.beta:g}: the parameters are not finite")
    return losses


@torch.no_grad()
def draw_online_pairs(policy, reference, prompts, config: RunConfig, generator: torch.Generator) -> PairSet:
    """On-policy pairs: two responses per prompt from the current policy, labelled by the task's labeller."""
    from lossearch.tasks import TASKS
    from lossearch.tasks.build import bradley_terry_labels
    from lossearch.tasks.catalog import reward_of_ids
    from lossearch.tasks.lm import split_sequences

    online = config.online
    device = next(policy.parameters()).device
    prompt_ids, prompt_attention = prompts
    count = config.batch_size * online["every"]
    index = torch.randint(0, prompt_ids.shape[0], (count,), generator=generator)
    ids, attention = prompt_ids[index].to(device), prompt_attention[index].to(device)
    sampler = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    policy.eval()
    first, second = (sample_responses(policy, ids, attention, online["max_new_tokens"], online["eos_id"],
                                      online["pad_id"], sampler).to("cpu") for _ in range(2))
    policy.train()
    labeller = reward_of_ids(online["task"], labels=True)
    width = ids.shape[1]
    first_rewards, second_rewards = (torch.tensor([labeller(p, r) for p, r in zip(*split_sequences(batch, width))])
                                     for batch in (first, second))
    definition = TASKS[online["task"]]
    first_wins = bradley_terry_labels(first_rewards, second_rewards, definition.label_temperature,
                                      definition.flip_fraction, generator)[:, None]  # (N, 1)
    full_width = max(first.ids.shape[1], second.ids.shape[1])
    first, second = widen(first, full_width), widen(second, full_width)

    def pick(a: Sequences, b: Sequences) -> Sequences:  # a where the first response won, else b
        return Sequences(*(torch.where(first_wins, x, y) for x, y in
                           ((a.ids, b.ids), (a.attention, b.attention), (a.response, b.response))))

    chosen, rejected = pick(first, second), pick(second, first)
    reference_logps = [sequence_logps(reference, s.to(device)).cpu() for s in (chosen, rejected)]
    return PairSet(chosen, rejected, *reference_logps)


# -----------------------------------------------------------------------------
# scoring (TRUSTED: runs in the parent; never calls candidate code)

class Scorer:
    """Scores trained parameters on a task's held-out prompts and pairs, against its base model."""

    def __init__(self, task: TaskData, eval_prompts: int, device: str = "cpu", heldout_pairs: Optional[int] = None) -> None:
        from safetensors.torch import load_file

        self.task = task
        self.device = device
        self.reference = self._model(load_file(str(task.parameters_file)))
        self.prompts = tuple(tensor[:eval_prompts].to(device) for tensor in task.heldout_prompts)
        self.heldout = task.heldout.prefix(heldout_pairs)
        self._reference_rewards: dict[int, Future] = {}  # by seed: the base model's samples' mean reward
        # scoring work that does not wait on the policy's samples runs here, beside the rest: the
        # reference's samples while the sandbox child trains, held-out preferences while sampling
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lossearch-scorer")

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
        return Sequences(*(torch.cat([getattr(b, name) for b in samples]) for name in ("ids", "attention", "response"))), logps

    def mean_reward(self, samples: Sequences) -> Optional[float]:
        if self.task.reward is None:
            return None
        from lossearch.tasks.lm import split_sequences

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
        from lossearch.tasks.build import batched_logps

        heldout = self.heldout
        chosen = batched_logps(model, heldout.chosen.to(self.device)).cpu() - heldout.reference_chosen_logps
        rejected = batched_logps(model, heldout.rejected.to(self.device)).cpu() - heldout.reference_rejected_logps
        margin = chosen - rejected  # (M,) log-ratio margin; any beta > 0 keeps its sign
        return float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean()), float(margin.mean())

    def prepare(self, seeds: Sequence[int]) -> None:
        """Start sampling the base model for these seeds' reference rewards in a background thread:
        it runs while the sandbox child trains (the parent only waits on it then)."""
        for seed in seeds:
            if seed not in self._reference_rewards:
                self._reference_rewards[seed] = self._background.submit(self._reference_reward, seed)

    def _reference_reward(self, seed: int) -> Optional[float]:
        cache = ReferenceRewardCache.of(self.task, len(self.prompts[0]), self.device)
        cached = cache.get(seed) if cache is not None else None
        if cached is not None:
            return cached
        reward = self.mean_reward(self.sample(self.reference, seed)[0])
        if cache is not None and reward is not None:
            cache.put(seed, reward)
        return reward

    def reference_reward(self, seed: int) -> Optional[float]:
        self.prepare([seed])
        return self._reference_rewards[seed].result()

    def close(self) -> None:
        self._background.shutdown(wait=True, cancel_futures=True)

    def score(self, parameters: Mapping[str, torch.Tensor], seed: int) -> dict[str, Optional[float]]:
        """reward, reference_reward, kl, pref_acc, margin and fitness of trained parameters."""
        model = self._model(parameters)
        preferences = self._background.submit(self.preferences, model)  # beside the sampling: no shared state
        samples, logps = self.sample(model, seed)
        reward, kl = self.mean_reward(samples), self.kl(samples, logps)
        pref_acc, margin = preferences.result()
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


SAMPLER_VERSION = 2  # bump when Scorer.sample or a task's oracle draws or scores differently: the cache's entries go stale


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
        from lossearch.tasks import TASKS

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


# -----------------------------------------------------------------------------
# the tier (TRUSTED: the parent's side of every run)

def load_task_data(task: str, options: FinetuneOptions) -> TaskData:
    from lossearch.tasks import load_task, load_user_task

    if options.task_data is not None:
        return options.task_data
    if options.setting is not None:
        return load_user_task(options.setting, options.cache_dir, options.progress)
    return load_task(task, options.cache_dir, options.progress)


def sandbox_limits(task: TaskData, budget: Budget, options: FinetuneOptions, device: str):
    """Wall time, CPU time, memory and file size for one run, scaled by the model and the budget."""
    from lossearch.sandbox import SandboxLimits

    model_bytes = 4 * task.parameters
    wall = 300.0 + 2.0 * budget.steps * max(1.0, task.parameters / 1e6)
    memory = (2 << 30) + 24 * model_bytes + (64 << 30 if device.startswith("cuda") else 0)
    return SandboxLimits(wall_seconds=wall, cpu_seconds=int(wall * options.threads) + 10, memory_bytes=memory,
                         file_bytes=max(64 << 20, 2 * model_bytes + (16 << 20)), threads=options.threads)


def run_config(task: TaskData, spec, budget: Budget, options: FinetuneOptions, beta: float, seed: int,
               device: str, precision: str) -> RunConfig:
    online = None
    if options.data == "online":
        online = {"task": task.name, "every": budget.online_every, "max_new_tokens": task.max_new_tokens,
                  "eos_id": task.eos_id, "pad_id": task.pad_id}
    return RunConfig(beta=beta, seed=seed, steps=budget.steps, pairs=min(budget.pairs, len(task.train)),
                     batch_size=budget.batch_size, lr=budget.lr, uses_kl=spec.uses_kl, online=online, device=device,
                     precision=precision)


def train_in_sandbox(sandbox, spec, task: TaskData, config: RunConfig, limits,
                     hyperparameters: Optional[Mapping[str, float]] = None) -> tuple[dict, dict]:
    """Run one training job; (the child's report, the trained parameters)."""
    from safetensors.torch import load as load_safetensors

    payload = {"source": spec.source, "name": spec.name, "run": asdict(config), "model_config": task.model_config,
               "hyperparameters": dict(hyperparameters or {})}
    inputs = {"base.safetensors": task.parameters_file, "pairs.safetensors": task.pairs_file}
    result = sandbox.run("finetune", payload, limits, inputs=inputs, outputs=("policy.safetensors",))
    result.raise_for_failure()
    data = result.outputs.get("policy.safetensors")
    if not data:
        raise CandidateError("crash", "the training child wrote no parameters")
    try:
        parameters = load_safetensors(data)
    except Exception as error:  # a malformed file is the child's failure, not ours
        raise CandidateError("crash", f"the training child wrote unreadable parameters: {error}") from None
    report = result.value if isinstance(result.value, dict) else {}
    return {"seconds": result.seconds, "train_seconds": report.get("train_seconds"),
            "final_loss": report.get("final_loss")}, parameters


def finetune_candidate(sandbox, spec, task_name: str, seed: int, options: FinetuneOptions) -> dict[str, Any]:
    """The finetune tier's metrics for `spec`: the best beta's means over seeds, spreads, every trial."""
    from lossearch.tuning import tune_beta

    started = time.monotonic()
    budget = Budget.named(options.budget)
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    task = load_task_data(task_name, options)
    if options.data == "online" and not task.online:
        raise ValueError("online mode needs a task's oracle to label fresh pairs: use --task, not --model")
    limits = sandbox_limits(task, budget, options, device)
    scorer = Scorer(task, budget.eval_prompts, device, budget.heldout_pairs)
    seeds = [seed * 1000 + index for index in range(budget.seeds)]
    scorer.prepare(seeds)
    tunes_beta = "beta" in spec.inputs

    def run(beta: float, run_seed: int) -> dict:
        config = run_config(task, spec, budget, options, beta, run_seed, device, precision)
        report, parameters = train_in_sandbox(sandbox, spec, task, config, limits)
        return {"beta": beta, "seed": run_seed, **scorer.score(parameters, run_seed), **report}

    try:
        tuning = tune_beta(run, float(spec.hyperparameters["beta"]), budget.trials if tunes_beta else 1, seeds,
                           storage=options.storage,
                           study_name=options.study_name or study_name(spec, task, budget, options, precision, seed),
                           progress=options.progress)
    finally:
        scorer.close()
    return {"task": task.name, "budget": asdict(budget), "data": options.data, "device": device,
            "precision": precision, "seeds": seeds,
            "artifact": task.key, "base_parameters": task.parameters, "kl_budget": task.kl_budget,
            "kl_penalty": task.kl_penalty, **tuning, "seconds": time.monotonic() - started}


def study_name(spec, task: TaskData, budget: Budget, options: FinetuneOptions, precision: str, seed: int) -> str:
    """One Optuna study per candidate code, task artifact, budget, data mode, precision and seed set."""
    return f"finetune-{spec.code_hash[:16]}-{task.key}-{budget.name}-{options.data}-{precision}-s{seed}"


# a Llama of the tasks' kind, small: the zygote warms the compact model's code paths with it at start
WARM_UP_CONFIG = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                  "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 8, "pad_token_id": 0,
                  "tie_word_embeddings": True, "max_position_embeddings": 16}


def warm_up_model(config: dict) -> None:
    """Build a model of `config` and run a training step and a sampling step, in mixed bf16 too,
    once per architecture: every config the compact Llama computes takes the same code paths."""
    import json

    from lossearch.tasks.llama import supports

    architecture = "compact-llama" if supports(config) else json.dumps(config, sort_keys=True, default=str)
    if architecture not in _WARMED_UP:
        _warm_up(config)
        _WARMED_UP.add(architecture)


_WARMED_UP: set[str] = set()  # the architectures warm_up_model has run, in this process


def _warm_up(config: dict) -> None:
    model = make_model(config)
    ids = torch.ones(2, 4, dtype=torch.long)
    batch = Sequences(ids, torch.ones_like(ids, dtype=torch.bool), torch.ones_like(ids, dtype=torch.bool))
    optimizer = AdamW(model.parameters(), lr=0.0)
    for precision in ("fp32", "bf16") if native_bf16_cpu() else ("fp32",):
        with arithmetic(torch.device("cpu"), precision):
            logps = sequence_logps(model, batch)
        logps.sum().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    sample_responses(model.eval(), ids, batch.attention, 2, eos_id=0, pad_id=0, generator=torch.Generator())
