"""The finetune tier's training half (UNTRUSTED process: runs in the sandbox child, beside the candidate's code).

A copy of the base model trains with the candidate loss: for each step a batch of pairs ->
the policy's log-probs (with graph) -> the candidate loss on detached copies -> its input
gradients carried back by us -> an AdamW step. The child imports this module and what it
imports, nothing of the parent's side (tests/test_layout.py checks it).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from lossearch.contract import LossFn, TrainingState, backpropagate, loss_input_gradients
from lossearch.evaluation.finetune.config import RunConfig
from lossearch.evaluation.finetune.device import native_bf16_cpu
from lossearch.evaluation.tasks.catalog import TASKS, reward_of_ids
from lossearch.evaluation.tasks.data import PairSet
from lossearch.evaluation.tasks.labels import bradley_terry_labels
from lossearch.evaluation.tasks.lm import (
    Sequences,
    concat_sequences,
    first_response_column,
    forward_logits,
    make_model,
    sample_responses,
    sequence_kl,
    sequence_logps,
    split_sequences,
    token_logps,
    widen,
)
from lossearch.failures import CandidateError


def policy_inputs(policy, reference, pairs: PairSet, index: torch.Tensor, uses_kl: bool, precision: str = "fp32",
                  uses_tokens: bool = False):
    """Contract inputs of a batch: policy-side (B,) tensors (token inputs (B, T)) with graph, and the fixed ones."""
    device = next(policy.parameters()).device
    chosen, rejected = pairs.chosen.select(index), pairs.rejected.select(index)
    # both responses of every pair share the prompt columns, so one forward pass serves both
    both = concat_sequences(chosen, rejected).to(device)  # (2B, T)
    outputs, reference_side = sequence_outputs(policy, reference, both, uses_kl, precision, runs=1,
                                               uses_tokens=uses_tokens)
    fixed = fixed_inputs(pairs, index, device)
    fixed.update({name: value[0] for name, value in reference_side.items()})
    return {name: value[0] for name, value in outputs.items()}, fixed


def fixed_inputs(pairs: PairSet, index: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """The contract inputs of the pairs `index` that do not depend on the policy (scores where the pairs
    have them; the run's state comes from its TrainingState)."""
    fixed = {"reference_chosen_logps": pairs.reference_chosen_logps[index],
             "reference_rejected_logps": pairs.reference_rejected_logps[index],
             "chosen_lengths": pairs.chosen.rows(index).response_lengths(),
             "rejected_lengths": pairs.rejected.rows(index).response_lengths()}
    if pairs.chosen_scores is not None and pairs.rejected_scores is not None:
        fixed.update(chosen_scores=pairs.chosen_scores[index].float(),
                     rejected_scores=pairs.rejected_scores[index].float())
    return {name: value.to(device) for name, value in fixed.items()}


def checked_grads(all_grads: dict, beta: float) -> dict[str, torch.Tensor]:
    """The loss's input gradients that exist; `no_grad` when none does, `nan` when one is not finite."""
    grads = {name: grad for name, grad in all_grads.items() if grad is not None}
    if not grads:
        raise CandidateError("no_grad", "the loss's gradients with respect to the policy log-probs are all missing")
    if not all(bool(torch.isfinite(grad).all()) for grad in grads.values()):
        raise CandidateError("nan", f"the loss's gradients were not finite during training at beta={beta:g}")
    return grads


def sequence_outputs(policy, reference, both: Sequences, uses_kl: bool, precision: str, runs: int,
                     uses_tokens: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The policy-side contract inputs of the rows `both`, with graph, as (runs, B) tensors (token inputs
    (runs, B, K)), and the reference-side token inputs (none unless `uses_tokens`): the rows are `runs`
    groups (one per stacked run), each its B chosen responses, then their B rejected ones."""
    first = first_response_column(both)  # logits from the last prompt column on: all the loss reads
    with arithmetic(both.ids.device, precision):
        logits = forward_logits(policy, both, first).float()  # (N, K, V), K = T - first
    tokens = token_logps(logits, both).view(runs, 2, -1, logits.shape[1])  # (runs, 2, B, K)
    logps = tokens.sum(-1)  # (runs, 2, B)
    outputs = {"policy_chosen_logps": logps[:, 0], "policy_rejected_logps": logps[:, 1]}
    reference_side: dict[str, torch.Tensor] = {}
    if uses_kl or uses_tokens:
        with torch.no_grad(), arithmetic(both.ids.device, precision):
            reference_logits = forward_logits(reference, both, first).float()
    if uses_kl:  # TDPO's inputs: sum over response positions of KL(reference || policy)
        kl = sequence_kl(reference_logits, logits, both).view(runs, 2, -1)
        outputs.update(chosen_kl=kl[:, 0], rejected_kl=kl[:, 1])
    if uses_tokens:  # token-level losses' inputs: each response position's log-probs, and the mask
        outputs.update(policy_chosen_token_logps=tokens[:, 0], policy_rejected_token_logps=tokens[:, 1])
        reference_side = reference_token_inputs(reference_logits, both, runs)
    return outputs, reference_side


def reference_token_inputs(reference_logits: torch.Tensor, both: Sequences, runs: int) -> dict[str, torch.Tensor]:
    """(runs, B, K) the reference's token log-probs of the rows `both` and their response masks (float),
    from its logits as forward_logits gives them (K wide)."""
    width = reference_logits.shape[1]
    shape = (runs, 2, -1, width)
    tokens = token_logps(reference_logits, both).view(shape)  # (runs, 2, B, K), 0 off the response
    mask = both.response[:, both.ids.shape[1] - width:].float().view(shape)
    return {"reference_chosen_token_logps": tokens[:, 0], "reference_rejected_token_logps": tokens[:, 1],
            "chosen_mask": mask[:, 0], "rejected_mask": mask[:, 1]}


def arithmetic(device: torch.device, precision: str):
    """The autocast context of `precision` on `device` (a disabled one for fp32)."""
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16,
                          enabled=precision in ("bf16", "fp16"))


class LossScale:
    """Dynamic loss scaling for fp16, torch.amp.GradScaler's rule for the gradients we carry back by hand:
    they leave the loss multiplied by `factor`, so that small ones survive float16's range in the
    backward pass; the parameters' gradients are divided by it again before the step. A step whose
    gradients overflowed is skipped and the factor halved; after `growth_interval` good steps in a
    row it doubles. Off (factor 1, no check) in fp32 and bf16, whose range is float32's."""

    def __init__(self, enabled: bool, factor: float = 2.0 ** 16, growth_interval: int = 2000) -> None:
        self.enabled = enabled
        self.factor = factor if enabled else 1.0
        self.growth_interval = growth_interval
        self.good_steps = 0

    def unscale(self, parameters) -> bool:
        """Divide the gradients by the factor; False (and the factor halved) where one is not finite."""
        if not self.enabled:
            return True
        grads = [param.grad for param in parameters if param.grad is not None]
        if not all(bool(torch.isfinite(grad).all()) for grad in grads):
            self.factor /= 2
            self.good_steps = 0
            return False
        for grad in grads:
            grad.div_(self.factor)
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.factor *= 2
            self.good_steps = 0
        return True


def training_step(policy, reference, optimizer, loss_fn: LossFn, pairs: PairSet, index: torch.Tensor,
                  beta: float, uses_kl: bool, precision: str = "fp32",
                  state: Optional[TrainingState] = None, step: int = 0, uses_tokens: bool = False,
                  grad_accum: int = 1, scale: Optional[LossScale] = None) -> float:
    """One AdamW step of the policy on the pairs `index` (step `step` of the run whose `state` it is:
    a fresh one-step run's without one), run as `grad_accum` micro-batches whose gradients add up to
    the batch's, and skipped where fp16's `scale` finds them overflowed; returns the batch's mean loss."""
    state = state or TrainingState(steps=1)
    scale = scale or LossScale(precision == "fp16")
    optimizer.zero_grad()
    total = 0.0
    for part in index.tensor_split(grad_accum):
        share = len(part) / len(index)  # the micro-batch's weight in the batch's mean loss (1.0 without one)
        outputs, fixed = policy_inputs(policy, reference, pairs, part, uses_kl, precision, uses_tokens)
        fixed.update(state.inputs(step, outputs, fixed))
        loss, all_grads = loss_input_gradients(loss_fn, outputs, fixed, beta)
        grads = checked_grads(all_grads, beta)
        # chain rule by hand: d loss / d theta = sum over inputs of (d loss / d input) * (d input / d theta);
        # backward adds each micro-batch's share to the parameters' gradients
        backpropagate([outputs[name] for name in grads], [grad * (share * scale.factor) for grad in grads.values()])
        total += float(loss) * share
    if scale.unscale(policy.parameters()):
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
    return total


class AdamW:
    """torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments), op for op
    torch's own CPU path (_single_tensor_adam), in public in-place ops.

    Not torch.optim's class: its first step imports torch._dynamo, 1.5 s of CPU in every fresh
    process (22% of a quick training run here, fp32, 2-core Xeon, benchmarks/speed_tricks.py).
    Not torch's private fused kernel either: it saved 3-4% of a training step here, under the 5%
    a trick must save. tests/test_finetune.py checks that it takes torch.optim.AdamW's steps.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        self.params = [param for param in params if param.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.exp_avg = [torch.zeros_like(param) for param in self.params]
        self.exp_avg_sq = [torch.zeros_like(param) for param in self.params]
        self.steps = [0] * len(self.params)  # per parameter, as torch's: one without a grad skips a step

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for i, param in enumerate(self.params):
            if param.grad is None:
                continue
            self.steps[i] += 1
            grad, mean, square, step = param.grad, self.exp_avg[i], self.exp_avg_sq[i], self.steps[i]
            if self.weight_decay:
                param.mul_(1 - self.lr * self.weight_decay)  # decoupled: theta <- theta (1 - lr wd)
            mean.lerp_(grad, 1 - beta1)  # m <- b1 m + (1 - b1) g
            square.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v <- b2 v + (1 - b2) g^2
            denominator = (square.sqrt() / (1 - beta2 ** step) ** 0.5).add_(self.eps)  # sqrt(v_hat) + eps
            param.addcdiv_(mean, denominator, value=-self.lr / (1 - beta1 ** step))  # theta -= lr m_hat / denominator


def learning_rate_scale(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth: the last steps are small, so where a run
    ends depends little on exactly how many steps it took (less spread across seeds)."""
    decay = max(0.0, (step - warmup) / max(1, steps - warmup))
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * decay)))


def train_policy(loss_fn: LossFn, policy, reference, pairs: PairSet, config: RunConfig,
                 prompts: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> list[float]:
    """Train `policy` in place for `config.steps` steps; returns the loss of every step.

    `reference` (the frozen base model) is read only for KL inputs, token inputs and online pairs; None otherwise.
    """
    optimizer = AdamW(policy.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    warmup = max(1, config.steps // 10)
    losses: list[float] = []
    state = TrainingState(config.steps)
    scale = LossScale(config.precision == "fp16")
    grouped: list[torch.Tensor] = []  # with group_by_length, the drawn batches not yet trained on
    policy.train()
    for step in range(config.steps):
        optimizer.lr = config.lr * learning_rate_scale(step, config.steps, warmup)
        if config.online and step % config.online["every"] == 0:
            pairs = draw_online_pairs(policy, reference, prompts, config, generator)
        if config.group_by_length:
            grouped = grouped or length_grouped_batches(pairs, config.batch_size,
                                                        min(GROUP_STEPS, config.steps - step), generator)
            index = grouped.pop()
        else:
            index = torch.randint(0, len(pairs), (config.batch_size,), generator=generator)  # (B,)
        losses.append(training_step(policy, reference, optimizer, loss_fn, pairs, index, config.beta,
                                    config.uses_kl, config.precision, state, step, config.uses_tokens,
                                    config.grad_accum, scale))
    policy.eval()
    if not all(bool(torch.isfinite(param).all()) for param in policy.parameters()):
        raise CandidateError("nan", f"training diverged at beta={config.beta:g}: the parameters are not finite")
    return losses


GROUP_STEPS = 16
"""Steps whose pairs group_by_length draws at once and sorts into batches: the larger, the more alike
a batch's lengths and the less random its company (transformers' LengthGroupedSampler sorts 50
batches' worth; a quick run has 100 steps)."""


def length_grouped_batches(pairs: PairSet, batch_size: int, count: int, generator: torch.Generator
                           ) -> list[torch.Tensor]:
    """`count` batches of `batch_size` pairs drawn at random, as the steps would draw them, then batched
    with neighbours in length, in a random order.

    A batch is as wide as its longest prompt plus its longest response (prompts are padded on the left,
    responses on the right), so the pairs are sorted in two dimensions: into about sqrt(count) bands of
    similar prompt length, then within each band by response length (the longer of the pair's two).
    """
    index = torch.randint(0, len(pairs), (count * batch_size,), generator=generator)
    chosen, rejected = pairs.chosen, pairs.rejected
    prompt = (chosen.attention & ~chosen.response).sum(-1)[index]
    response = torch.maximum(chosen.response.sum(-1), rejected.response.sum(-1))[index]
    bands = max(1, round(count ** 0.5))
    by_prompt = torch.argsort(prompt, stable=True)
    batches: list[torch.Tensor] = []
    start = 0
    for band in range(bands):  # whole batches a band: count // bands, the first count % bands one more
        size = (count // bands + (band < count % bands)) * batch_size
        members = by_prompt[start:start + size]
        start += size
        members = members[torch.argsort(response[members], stable=True)]
        batches.extend(index[members].view(-1, batch_size))
    return [batches[i] for i in torch.randperm(count, generator=generator).tolist()]


@torch.no_grad()
def draw_online_pairs(policy, reference, prompts, config: RunConfig, generator: torch.Generator) -> PairSet:
    """On-policy pairs: two responses per prompt from the current policy, labelled by the task's labeller,
    whose rewards are their scores."""

    online = config.online
    assert online is not None  # drawn only in online mode
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
    wins = first_wins[:, 0]  # (N,)
    return PairSet(chosen, rejected, reference_logps[0], reference_logps[1],
                   chosen_scores=torch.where(wins, first_rewards, second_rewards),
                   rejected_scores=torch.where(wins, second_rewards, first_rewards))


# a Llama of the tasks' kind, small: the zygote warms the compact model's code paths with it at start
WARM_UP_CONFIG = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                  "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 8, "pad_token_id": 0,
                  "tie_word_embeddings": True, "max_position_embeddings": 16}


def warm_up_model(config: dict) -> None:
    """Build a model of `config` and run a training step and a sampling step, in mixed bf16 too,
    once per architecture: every config the compact Llama computes takes the same code paths."""
    import json

    from lossearch.evaluation.tasks.llama import supports

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
