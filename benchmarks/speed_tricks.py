"""Each speed trick of the training and sampling core, timed with and without it, in one script.

A trick that makes the core harder to read stays only if it saves at least 5% of the work it
speeds up (the project's rule); the figure beside each kept trick in the code, and beside the
code that replaced a removed one, comes from this script. No switch is left in the package for
it: a variant patches one module attribute, with the plain code a kept trick replaced, or with
the code of a removed trick (kept here, so the figure can be measured again). Variants alternate
within every round; a time is the CPU time of the thread doing the work (time.thread_time;
process CPU time in the fresh processes), so other processes on a busy machine slow the variants
alike and little; the saving is the median over rounds of the paired saving (same work in both),
as a share of the work without the trick. Everything runs in float32 on one torch thread, as
the sandbox child trains. A saving within a point or two of 5% is within the noise of a loaded
2-core machine: run it more than once.

    python benchmarks/speed_tricks.py [--task sentiment] [--steps 100] [--repeats 7] [--only steps,sampling]

The units: a training step (one AdamW step of the quick budget's shape, 16 pairs, DPO through
the contract: lossearch.evaluation.finetune.train.training_step); a quick training run (train_policy,
100 steps); sampling 256 responses with the sampler's log-probs (what the scorer does per 256
held-out prompts); a bandit run (the bandit tier's 5 betas x 200 steps); a fresh process (import
the training code, warm up the model, make the first call).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from typing import NamedTuple
from unittest import mock

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import lossearch.evaluation.bandit.train as bandit_train
import lossearch.evaluation.finetune.train as finetune_train
import lossearch.evaluation.tasks.llama as llama
from lossearch.contract import call_loss, load_loss, read_spec
from lossearch.evaluation.bandit.task import BanditConfig, make_training_task
from lossearch.evaluation.finetune.config import BUDGETS, RunConfig
from lossearch.evaluation.tasks.lm import load_parameters, make_model, positions, sample_responses
from lossearch.evaluation.tasks.load import load_task
from lossearch.search.seeds import seed_path

# -----------------------------------------------------------------------------
# kept tricks: the plain code each one replaced


def forward_logits_of_every_column(model, batch, first_target: int = 1):
    """forward_logits without logits_to_keep: the last block and the head compute every column."""
    logits = model(input_ids=batch.ids, attention_mask=batch.attention.long(),
                   position_ids=positions(batch.attention)).logits  # (N, T, V)
    return logits[:, first_target - 1:-1]


def token_logps_by_log_softmax(logits, batch):
    """token_logps through a full (N, K, V) log-softmax instead of gather - logsumexp."""
    first_target = batch.ids.shape[1] - logits.shape[1]
    picked = F.log_softmax(logits, dim=-1).gather(-1, batch.ids[:, first_target:, None])[..., 0]
    return picked * batch.response[:, first_target:]


def torch_adam_step():
    """The bandit's adam_step replaced by torch.optim.Adam (made on the first call, kept after)."""
    optimizers = {}

    def step(param, moments, step, lr, betas=(0.9, 0.999), eps=1e-8):
        if id(param) not in optimizers:
            optimizers[id(param)] = torch.optim.Adam([param], lr=lr, betas=betas, eps=eps)
        optimizers[id(param)].step()
    return step


# -----------------------------------------------------------------------------
# removed tricks: their code as it was in the package


class FusedAdamW(finetune_train.AdamW):
    """AdamW whose step is torch's private fused kernel, the one torch.optim.AdamW(fused=True) calls:
    one pass over each tensor's parameter, gradient and moments."""

    def __init__(self, params, **options) -> None:
        super().__init__(params, **options)
        self.step_tensors = [torch.zeros((), device=param.device) for param in self.params]  # the kernel's form

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, param in enumerate(self.params) if param.grad is not None]
        if not live:
            return
        steps = [self.step_tensors[i] for i in live]
        torch._foreach_add_(steps, 1.0)
        beta1, beta2 = self.betas
        torch._fused_adamw_([self.params[i] for i in live], [self.params[i].grad for i in live],
                            [self.exp_avg[i] for i in live], [self.exp_avg_sq[i] for i in live], [], steps,
                            lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=self.weight_decay, eps=self.eps,
                            amsgrad=False, maximize=False)


def rotate_by_roll(x, cos, sin):
    """RoPE by one roll and a signed sine (-s, s), instead of two slices, a negation and a concatenation.
    (The package multiplied the sign in once per forward; here once per rotation, a few microseconds.)"""
    half = x.shape[-1] // 2
    sign = torch.ones(x.shape[-1], dtype=sin.dtype, device=sin.device)
    sign[:half] = -1.0
    return x * cos + x.roll(half, dims=-1) * (sin * sign)


def additive_attention_mask(keys, T):
    """The boolean mask turned into an additive float one, once per forward (SDPA converts a
    boolean mask at every layer)."""
    allowed = llama_attention_mask_of(keys, T)
    return torch.zeros(allowed.shape, device=keys.device).masked_fill_(~allowed, float("-inf"))


llama_attention_mask_of = llama.attention_mask_of


class DoublingCache:
    """A KV cache whose per-layer buffer grows by doubling; a step writes only its own columns."""

    def __init__(self, layers: int) -> None:
        self.keys, self.values, self.length = [None] * layers, [None] * layers, 0

    def extend(self, layer, keys, values):
        start, end = self.length, self.length + keys.shape[2]
        if self.keys[layer] is None or self.keys[layer].shape[2] < end:
            self.keys[layer] = self.grown(self.keys[layer], keys, start, max(16, 2 * end))
            self.values[layer] = self.grown(self.values[layer], values, start, max(16, 2 * end))
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    @staticmethod
    def grown(buffer, like, filled: int, capacity: int):
        N, KV, _, D = like.shape
        bigger = like.new_empty(N, KV, capacity, D)
        if buffer is not None:
            bigger[:, :, :filled] = buffer[:, :, :filled]
        return bigger


# -----------------------------------------------------------------------------
# timing


def alternate(variants: dict, rounds: int, warm_up: int = 3) -> dict[str, list[float]]:
    """Seconds of each variant's call in each round, the variants taking turns (order rotated each round)."""
    names, times = list(variants), {name: [] for name in variants}
    for round_ in range(warm_up + rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.thread_time()
            variants[name]()
            if round_ >= warm_up:
                times[name].append(time.thread_time() - started)
    return times


def report(trick: str, unit: str, with_trick: list[float], without: list[float], scale: float = 1000.0,
           units: str = "ms", note: str = "") -> None:
    """Medians with and without; the saving is the median of the rounds' paired savings (same work in both)."""
    saving = 100 * statistics.median((b - a) / b for a, b in zip(with_trick, without))
    print(f"{trick:<34} {unit:<30} {statistics.median(with_trick) * scale:9.2f} "
          f"{statistics.median(without) * scale:9.2f} {units:<3} {saving:6.1f}%  {note}")


def dpo_loss():
    spec = read_spec(seed_path("dpo"))
    function = load_loss(spec.source, spec.name)
    return lambda tensors, beta: call_loss(function, spec, tensors, beta=beta)


def base_model(task):
    model = make_model(task.model_config)
    load_parameters(model, load_file(str(task.parameters_file)))
    return model


# -----------------------------------------------------------------------------
# the tricks of a training step and of sampling


class Trick(NamedTuple):
    patches: dict
    """{(module, attribute): value} while the variant runs."""
    in_package: bool
    """True: the package has the trick and the variant is the plain code; False: the variant is the trick."""
    optimizer: type = finetune_train.AdamW


STEP_TRICKS = {
    "fused AdamW kernel": Trick({}, False, FusedAdamW),
    "logits_to_keep (response columns)": Trick({(finetune_train, "forward_logits"): forward_logits_of_every_column},
                                               True),
    "RoPE by one roll, signed sine": Trick({(llama, "rotate"): rotate_by_roll}, False),
    "additive mask built once": Trick({(llama, "attention_mask_of"): additive_attention_mask}, False),
    "gather - logsumexp log-probs": Trick({(finetune_train, "token_logps"): token_logps_by_log_softmax}, True),
}

SAMPLING_TRICKS = {
    "KV cache grows by doubling": Trick({(llama, "KVCache"): DoublingCache}, False),
    "RoPE by one roll, signed sine": Trick({(llama, "rotate"): rotate_by_roll}, False),
    "additive mask built once": Trick({(llama, "attention_mask_of"): additive_attention_mask}, False),
}


def all_removed(tricks: dict) -> Trick:
    """The removed tricks of `tricks` at once (each under 5% alone: together they may not be)."""
    removed = [trick for trick in tricks.values() if not trick.in_package]
    optimizers = [trick.optimizer for trick in removed if trick.optimizer is not finetune_train.AdamW]
    return Trick({key: value for trick in removed for key, value in trick.patches.items()}, False,
                 optimizers[0] if optimizers else finetune_train.AdamW)


STEP_TRICKS["the removed ones together"] = all_removed(STEP_TRICKS)
SAMPLING_TRICKS["the removed ones together"] = all_removed(SAMPLING_TRICKS)


def patched(patches: dict):
    stack = contextlib.ExitStack()
    for (module, name), value in patches.items():
        stack.enter_context(mock.patch.object(module, name, value))
    return stack


def report_tricks(tricks: dict, unit: str, times: dict, results: dict, same: str) -> None:
    """One line per trick: the package's times against its variant's, the trick's side first."""
    for name, trick in tricks.items():
        package, variant = times["package"], times[name]
        with_trick, without = (package, variant) if trick.in_package else (variant, package)
        note = "" if trick.in_package else "removed; "
        if results[name] == results["package"]:
            note += f"bitwise {same}"
        else:
            note += f"{same} differ by {max(abs(a - b) for a, b in zip(results[name], results['package'])):.1e}"
        report(name, unit, with_trick, without, note=note)


def measure_training_steps(task, steps: int) -> None:
    loss_fn, pairs = dpo_loss(), task.train.prefix(BUDGETS["quick"].pairs)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(pairs), (BUDGETS["quick"].batch_size,), generator=generator)
               for _ in range(steps + 3)]
    runs, losses = {}, {}
    for name, trick in {"package": Trick({}, True), **STEP_TRICKS}.items():
        model = base_model(task).train()
        optimizer = trick.optimizer(model.parameters(), lr=6e-4, betas=(0.9, 0.95))
        losses[name], batch_of = [], iter(batches)

        def run(model=model, optimizer=optimizer, patches=trick.patches, name=name, batch_of=batch_of):
            with patched(patches):
                losses[name].append(finetune_train.training_step(model, None, optimizer, loss_fn, pairs,
                                                                 next(batch_of), 0.1, False))
        runs[name] = run
    times = alternate(runs, steps)
    report_tricks(STEP_TRICKS, "training step", times, losses, "losses")
    measure_optimizer_step(task, steps, statistics.median(times["package"]))


def measure_optimizer_step(task, steps: int, training_step: float) -> None:
    """The AdamW step alone, fused and plain, and the difference as a share of a training step."""
    model = base_model(task)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    fused, plain = FusedAdamW(model.parameters(), lr=1e-9), finetune_train.AdamW(model.parameters(), lr=1e-9)
    times = alternate({"fused": fused.step, "plain": plain.step}, 5 * steps)
    difference = statistics.median(times["plain"]) - statistics.median(times["fused"])
    report("fused AdamW kernel", "AdamW step alone", times["fused"], times["plain"],
           note=f"removed; difference = {100 * difference / training_step:.1f}% of a training step")


def measure_quick_runs(task, repeats: int) -> float:
    budget = BUDGETS["quick"]
    config = RunConfig(beta=0.1, seed=0, steps=budget.steps, pairs=budget.pairs, batch_size=budget.batch_size,
                       lr=budget.lr, uses_kl=False)
    loss_fn, pairs = dpo_loss(), task.train.prefix(budget.pairs)
    losses = {}

    def run(optimizer: type):
        with mock.patch.object(finetune_train, "AdamW", optimizer):
            losses[optimizer] = finetune_train.train_policy(loss_fn, base_model(task), None, pairs, config)
    plain = finetune_train.AdamW
    times = alternate({"fused": lambda: run(FusedAdamW), "plain": lambda: run(plain)}, repeats, warm_up=1)
    gap = max(abs(a - b) for a, b in zip(losses[FusedAdamW], losses[plain]))
    report("fused AdamW kernel", "quick run (100 steps)", times["fused"], times["plain"], 1.0, "s",
           f"removed; losses differ by at most {gap:.1e}")
    return statistics.median(times["plain"])


def measure_sampling(task, repeats: int) -> None:
    ids, attention = (tensor[:256] for tensor in task.heldout_prompts)
    model, runs, samples = base_model(task).eval(), {}, {}
    for name, trick in {"package": Trick({}, True), **SAMPLING_TRICKS}.items():

        def run(patches=trick.patches, name=name):
            generator = torch.Generator().manual_seed(0)
            with patched(patches):
                batch, logps = sample_responses(model, ids, attention, task.max_new_tokens, task.eos_id,
                                                task.pad_id, generator, step_logps=True)
            samples[name] = batch.ids.flatten().tolist() + logps.flatten().tolist()
        runs[name] = run
    times = alternate(runs, repeats, warm_up=1)
    report_tricks(SAMPLING_TRICKS, "sampling 256 responses", times, samples, "samples and log-probs")


# -----------------------------------------------------------------------------
# the bandit tier


def measure_bandit(repeats: int) -> None:
    task, loss_fn, config = make_training_task("sentiment"), dpo_loss(), BanditConfig()
    results = {}

    def stacked():
        results["stacked"] = bandit_train.train_bandit_grid(loss_fn, task, 0, config)

    def one_per_beta():
        results["one per beta"] = {beta: bandit_train.train_bandit(loss_fn, task, beta, 0, config)
                                   for beta in config.betas}

    def torch_adam():
        with mock.patch.object(bandit_train, "adam_step", torch_adam_step()):
            results["torch adam"] = bandit_train.train_bandit_grid(loss_fn, task, 0, config)
    times = alternate({"stacked": stacked, "one per beta": one_per_beta, "torch adam": torch_adam}, repeats,
                      warm_up=1)
    for name, trick in (("one per beta", "all betas in one stacked tensor"), ("torch adam", "own Adam step (bandit)")):
        gap = max(float((results[name][beta] - results["stacked"][beta]).abs().max()) for beta in config.betas)
        report(trick, f"bandit run ({len(config.betas)} betas x {config.steps})", times["stacked"], times[name],
               note=f"logits differ by at most {gap:.1e}")


# -----------------------------------------------------------------------------
# imports saved once per fresh process (the sandbox's zygote, or a child that is first to call)

FRESH_PROCESS = """
import sys, time
started = time.process_time()
import torch
torch.set_num_threads(1)
from lossearch.contract import backpropagate
from lossearch.evaluation.finetune.train import WARM_UP_CONFIG, AdamW, warm_up_model
warm_up_model(WARM_UP_CONFIG)
weights = torch.randn(3, 4, requires_grad=True)
outputs, grads = [weights.sum(0), (weights ** 2).sum(1)], [torch.randn(4), torch.randn(3)]
before = time.process_time()
if sys.argv[1] == "backpropagate":
    backpropagate(outputs, grads)
elif sys.argv[1] == "torch.autograd.backward":
    torch.autograd.backward(outputs, grads)
else:
    weights.grad = torch.ones_like(weights)
    AdamW([weights], lr=0.1).step() if sys.argv[1] == "our AdamW" else torch.optim.AdamW([weights], lr=0.1).step()
ended = time.process_time()
print(ended - before, ended - started, "sympy" in sys.modules, "torch._dynamo" in sys.modules)
"""

FRESH_TRICKS = {  # trick -> (the package's call, the public one it replaced)
    "backpropagate (no sympy import)": ("backpropagate", "torch.autograd.backward"),
    "own AdamW (no torch._dynamo)": ("our AdamW", "torch.optim.AdamW"),
}


def measure_fresh_processes(repeats: int, quick_run: float | None) -> None:
    """The first call in a fresh process that has imported the training code and warmed up the model."""
    runs = {how: [] for pair in FRESH_TRICKS.values() for how in pair}
    for _ in range(repeats):
        for how in runs:
            out = subprocess.run([sys.executable, "-c", FRESH_PROCESS, how], capture_output=True, text=True, check=True)
            first_call, total, sympy, dynamo = out.stdout.split()
            runs[how].append((float(first_call), float(total), f"sympy {sympy}, dynamo {dynamo}"))
    for trick, (ours, theirs) in FRESH_TRICKS.items():
        first = [statistics.median(run[0] for run in runs[how]) for how in (ours, theirs)]
        saved = first[1] - first[0]
        of_quick = f" = {100 * saved / quick_run:.0f}% of a quick run" if quick_run else ""
        report(trick, "fresh process, to 1st call", *([run[1] for run in runs[how]] for how in (ours, theirs)), 1.0,
               "s", f"1st call {first[0] * 1000:.1f} vs {first[1] * 1000:.0f} ms ({runs[theirs][0][2]}): "
               f"{saved:.2f} s once{of_quick}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per variant")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant of the longer units")
    parser.add_argument("--only", default="steps,quick,sampling,bandit,fresh")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task, parts = load_task(args.task), args.only.split(",")
    print(f"task {args.task}, float32, 1 thread, torch {torch.__version__}; medians, with / without the trick")
    print(f"{'trick':<34} {'work':<30} {'with':>9} {'without':>9}     {'saving':>7}")
    if "steps" in parts:
        measure_training_steps(task, args.steps)
    quick_run = measure_quick_runs(task, args.repeats) if "quick" in parts else None
    if "sampling" in parts:
        measure_sampling(task, args.repeats)
    if "bandit" in parts:
        measure_bandit(args.repeats)
    if "fresh" in parts:
        measure_fresh_processes(args.repeats, quick_run)


if __name__ == "__main__":
    main()
