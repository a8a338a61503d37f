"""Many training runs of one loss in one pass (UNTRUSTED process: runs in the sandbox child).

The runs of one candidate that do not depend on each other (its seeds, its opening betas) differ
only in beta and seed. Here R of them train together: the compact Llama's weights carry a leading
run dimension (lossearch.evaluation.tasks.llama.stack_runs), every step's batch is each run's own
B pairs (drawn by the run's own generator, as its sequential run draws them) stacked into one
forward and backward pass of batched matrix products, and the candidate's loss is called once per
run, on that run's batch alone and at its beta, so a loss that reads batch statistics sees only
its own run's. Clipping is per run, AdamW is elementwise, and a run that diverges fails alone:
from then on its gradients are zero, and the others go on.

Whether this is faster than the runs one after another depends on the hardware: on a 2-core
CPU the step is bound by matrix-product arithmetic, which stacking cannot reduce (see
benchmarks/multi_run.py and lossearch.evaluation.finetune.tier.stacks_runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from lossearch.contract import LossFn, TrainingState, backpropagate, loss_input_gradients
from lossearch.evaluation.finetune.config import RunConfig
from lossearch.evaluation.finetune.train import (
    AdamW,
    checked_grads,
    fixed_inputs,
    learning_rate_scale,
    sequence_outputs,
)
from lossearch.evaluation.tasks.data import PairSet
from lossearch.evaluation.tasks.llama import CompactLlama, stack_runs
from lossearch.evaluation.tasks.lm import Sequences, concat_sequences
from lossearch.failures import CandidateError

SHARED_FIELDS = ("steps", "pairs", "batch_size", "lr", "uses_kl", "online", "device", "precision", "uses_scores",
                 "uses_tokens", "grad_accum", "group_by_length")
"""What the stacked runs must share: they may differ in beta and seed only."""


@dataclass
class StackedRun:
    """One run of a stacked pass: its losses so far, its failure once it has diverged, and its own
    running margin statistics (as its sequential run keeps them)."""

    config: RunConfig
    losses: list[float] = field(default_factory=list)
    failure: Optional[CandidateError] = None
    state: TrainingState = field(init=False)

    def __post_init__(self) -> None:
        self.state = TrainingState(self.config.steps)


def can_stack(model, configs: Sequence[RunConfig]) -> bool:
    """Whether `configs` can train as one stacked pass of `model`: a compact Llama, offline pairs drawn
    at random in whole batches, no fp16 (no loss scaling here), and runs that differ in beta and seed only."""
    first = configs[0]
    return (isinstance(model, CompactLlama) and first.online is None and first.grad_accum == 1
            and not first.group_by_length and first.precision != "fp16"
            and all(getattr(config, name) == getattr(first, name) for config in configs for name in SHARED_FIELDS))


def train_stacked(loss_fn: LossFn, policy: CompactLlama, reference, pairs: PairSet,
                  configs: Sequence[RunConfig]) -> list[StackedRun]:
    """Train len(configs) copies of `policy` in place, run r as `configs[r]` says; afterwards `policy`'s
    parameters are stacked, run r's at index r (`run_parameters`). `reference` as in train_policy."""
    if not can_stack(policy, configs):
        raise ValueError("stacked runs need a compact Llama, offline pairs in whole random batches, and configs "
                         "that differ in beta and seed only")
    first = configs[0]
    runs = [StackedRun(config) for config in configs]
    stack_runs(policy, len(runs))
    optimizer = AdamW(policy.parameters(), lr=first.lr, betas=(0.9, 0.95), weight_decay=0.0)
    generators = [torch.Generator().manual_seed(config.seed) for config in configs]
    warmup = max(1, first.steps // 10)
    policy.train()
    for step in range(first.steps):
        optimizer.lr = first.lr * learning_rate_scale(step, first.steps, warmup)
        indexes = [torch.randint(0, len(pairs), (first.batch_size,), generator=generator)
                   for generator in generators]  # (B,) each, as each run's sequential training draws them
        stacked_step(policy, reference, optimizer, loss_fn, pairs, indexes, runs, step)
    policy.eval()
    for index, run in enumerate(runs):
        finite = all(bool(torch.isfinite(param[index]).all()) for param in policy.parameters())
        if run.failure is None and not finite:
            run.failure = CandidateError("nan", f"training diverged at beta={run.config.beta:g}: the parameters "
                                                "are not finite")
    return runs


def stacked_step(policy, reference, optimizer: AdamW, loss_fn: LossFn, pairs: PairSet,
                 indexes: Sequence[torch.Tensor], runs: Sequence[StackedRun], step: int = 0) -> None:
    """Step `step` (AdamW) of every stacked run on its own pairs `indexes[r]`; a run whose gradients are not
    finite gets its failure and no update."""
    config = runs[0].config
    device = next(policy.parameters()).device
    both = stacked_rows(pairs, indexes).to(device)  # (R * 2B, T): run r's chosen rows, then its rejected
    outputs, reference_side = sequence_outputs(policy, reference, both, config.uses_kl, config.precision,
                                               runs=len(runs), uses_tokens=config.uses_tokens)  # (R, B), (R, B, K)
    input_grads = {name: torch.zeros_like(value) for name, value in outputs.items()}
    for r, (run, index) in enumerate(zip(runs, indexes)):
        if run.failure is not None:
            continue
        run_outputs = {name: value[r] for name, value in outputs.items()}  # (B,) each, (B, K) token inputs
        fixed = fixed_inputs(pairs, index, device)
        fixed.update({name: value[r] for name, value in reference_side.items()})
        fixed.update(run.state.inputs(step, run_outputs, fixed))
        try:
            loss, all_grads = loss_input_gradients(loss_fn, run_outputs, fixed, run.config.beta)
            grads = checked_grads(all_grads, run.config.beta)
        except CandidateError as error:  # non-finite values end this run only; any other failure ends all,
            if error.failure.kind != "nan":  # as it ends the evaluation of runs one after another
                raise
            run.failure = error
            continue
        for name, grad in grads.items():
            input_grads[name][r] = grad
        run.losses.append(float(loss))
    optimizer.zero_grad()
    backpropagate(list(outputs.values()), list(input_grads.values()))
    clip_grad_norm_per_run(policy.parameters(), len(runs), 1.0)
    optimizer.step()


def stacked_rows(pairs: PairSet, indexes: Sequence[torch.Tensor]) -> Sequences:
    """Every run's chosen rows, then its rejected rows, run after run, in the columns some row uses
    (the layout keeps every prompt's last token in one column, so the runs' rows line up)."""
    groups = [concat_sequences(pairs.chosen.rows(index), pairs.rejected.rows(index)) for index in indexes]
    rows = Sequences(*(torch.cat([getattr(group, name) for group in groups]) for name in ("ids", "attention",
                                                                                          "response")))
    return rows.select(slice(None))


def clip_grad_norm_per_run(parameters, runs: int, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ for each run's slice of the stacked gradients separately."""
    grads = [param.grad for param in parameters if param.grad is not None]
    norms = torch.stack([grad.reshape(runs, -1).norm(dim=1) for grad in grads]).norm(dim=0)  # (R,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(scale.view(runs, *([1] * (grad.dim() - 1))))


def run_parameters(policy, run: int) -> dict[str, torch.Tensor]:
    """Run `run`'s parameters of a stacked policy, under the unstacked model's names."""
    return {name: param[run].detach().to("cpu").contiguous() for name, param in policy.named_parameters()}
