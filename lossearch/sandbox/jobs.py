"""Trusted job code that runs inside a sandbox child (lossearch.sandbox.zygote).

Each job loads the candidate through the contract, exercises it, and returns a
JSON-able dict. Jobs compute what the candidate's gradients produce (a
fingerprint, trained logits); scores are computed afterwards by the parent,
from those results, by code the candidate never shares a process with.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file  # imported here, in the zygote: the jailed child cannot list directories

from lossearch.contract import call_loss, load_loss, parse_spec
from lossearch.evaluation.bandit.task import make_training_task
from lossearch.evaluation.bandit.train import train_bandit_grid
from lossearch.evaluation.finetune.config import RunConfig
from lossearch.evaluation.finetune.stacked import run_parameters, train_stacked
from lossearch.evaluation.finetune.train import train_policy, warm_up_model
from lossearch.evaluation.tasks.data import PairSet
from lossearch.evaluation.tasks.lm import load_parameters, make_model, safetensors_bytes, save_parameters
from lossearch.failures import CandidateError
from lossearch.fingerprint import compute_fingerprint

SANITY_BATCH = 8
WATCHED_NAMESPACES = {"torch": torch, "torch.nn.functional": F, "torch.Tensor": torch.Tensor}


def snapshot_namespaces() -> dict[str, dict[str, int]]:
    """Identity of every attribute of torch's main namespaces, to notice monkey-patching."""
    return {name: {key: id(value) for key, value in vars(space).items()} for name, space in WATCHED_NAMESPACES.items()}


def check_namespaces(before: dict[str, dict[str, int]]) -> None:
    """Refuse a candidate that changed torch's namespaces while it ran."""
    after = snapshot_namespaces()
    for name, table in before.items():
        changed = sorted(key for key in set(table) | set(after[name]) if table.get(key) != after[name].get(key))
        if changed:
            raise CandidateError("policy", f"the loss modified {name}: {', '.join(changed[:5])}")


def load_candidate(payload: dict) -> tuple[Any, Callable[..., torch.Tensor]]:
    """The candidate's spec and its loss bound as `loss_of(tensors, beta=None)`."""
    spec = parse_spec(payload["source"], payload.get("name", "candidate"))
    function = load_loss(spec.source, spec.name, restricted=not payload.get("unrestricted", False))

    def loss_of(tensors: dict[str, torch.Tensor], beta: float | None = None) -> torch.Tensor:
        return call_loss(function, spec, tensors, beta=beta, hyperparameters=payload.get("hyperparameters"))

    return spec, loss_of


def synthetic_inputs(batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Plausible contract inputs: sums of per-token log-probs over 4..30 tokens, small log-ratios; scores
    in [0, 1.5), a run halfway through with running margin mean 1 and std 2, and the (B, 30) token
    log-probs whose rows sum to the sequence log-probs (every tier's inputs, so a loss that reads any
    of them is checked here)."""
    generator = torch.Generator().manual_seed(seed)
    chosen_lengths = torch.randint(4, 31, (batch_size,), generator=generator).float()
    rejected_lengths = torch.randint(4, 31, (batch_size,), generator=generator).float()
    reference_chosen = -2.0 * chosen_lengths + torch.randn(batch_size, generator=generator)
    reference_rejected = -2.0 * rejected_lengths + torch.randn(batch_size, generator=generator)
    policy_chosen = (reference_chosen + 2.0 * torch.randn(batch_size, generator=generator)).requires_grad_(True)
    policy_rejected = (reference_rejected + 2.0 * torch.randn(batch_size, generator=generator)).requires_grad_(True)
    tensors = {
        "policy_chosen_logps": policy_chosen,
        "policy_rejected_logps": policy_rejected,
        "reference_chosen_logps": reference_chosen,
        "reference_rejected_logps": reference_rejected,
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
        "chosen_kl": torch.rand(batch_size, generator=generator),
        "rejected_kl": torch.rand(batch_size, generator=generator),
        # drawn after the older inputs, so those stay what they were
        "chosen_scores": torch.rand(batch_size, generator=generator) + 0.5,  # gaps mostly positive, some not
        "rejected_scores": torch.rand(batch_size, generator=generator),
        "progress": torch.tensor(0.5),
        "running_margin_mean": torch.tensor(1.0),
        "running_margin_std": torch.tensor(2.0),
    }
    tensors.update(synthetic_token_inputs(tensors, generator))
    return tensors


def synthetic_token_inputs(tensors: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """(B, T) token inputs consistent with the sequence inputs: each response's log-prob (and log-ratio)
    spread evenly over its tokens, plus noise that sums to zero over them, so rows sum to the sequence
    values; the policy's are functions of its sequence log-probs, so their gradients reach the leaves
    the sanity check differentiates. Drawn last, so the older inputs stay what they were."""
    width = int(max(tensors["chosen_lengths"].max(), tensors["rejected_lengths"].max()))
    token_inputs = {}
    for side in ("chosen", "rejected"):
        lengths = tensors[f"{side}_lengths"]  # (B,)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).float()  # (B, T)
        reference = tensors[f"reference_{side}_logps"]
        ratio = tensors[f"policy_{side}_logps"] - reference  # (B,), with graph
        reference_tokens = (reference / lengths)[:, None] * mask + zero_sum_noise(mask, 0.5, generator)
        token_inputs[f"reference_{side}_token_logps"] = reference_tokens
        token_inputs[f"policy_{side}_token_logps"] = (reference_tokens + (ratio / lengths)[:, None] * mask
                                                      + zero_sum_noise(mask, 0.3, generator))
        token_inputs[f"{side}_mask"] = mask
    return token_inputs


def zero_sum_noise(mask: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """(B, T) Gaussian noise on the mask's positions, each row shifted to sum to zero there."""
    noise = scale * torch.randn(mask.shape, generator=generator) * mask
    return noise - (noise.sum(-1) / mask.sum(-1))[:, None] * mask


def check_gradients(loss_of: Callable[..., torch.Tensor]) -> dict[str, float]:
    """Call the loss on synthetic inputs: finite, right shape, differentiable in the policy."""
    tensors = synthetic_inputs(SANITY_BATCH)
    per_pair = loss_of(tensors)  # (B,), checked by the contract
    if not per_pair.requires_grad:
        raise CandidateError("no_grad", "the loss does not depend on the policy log-probs (constant or detached)")
    leaves = (tensors["policy_chosen_logps"], tensors["policy_rejected_logps"])
    found = torch.autograd.grad(per_pair.mean(), leaves, allow_unused=True)
    grads = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, found)]
    if not all(bool(torch.isfinite(grad).all()) for grad in grads):
        raise CandidateError("nan", "the loss's gradients are not finite on ordinary inputs")
    if all(bool((grad == 0).all()) for grad in grads):
        raise CandidateError("no_grad", "the loss's gradients with respect to the policy log-probs are all zero")
    return {"loss_mean": float(per_pair.mean()), "grad_chosen_mean": float(grads[0].mean()),
            "grad_rejected_mean": float(grads[1].mean())}


def sanity_job(payload: dict) -> dict:
    """The sanity tier: contract checks on synthetic inputs plus the loss's fingerprint, at its
    default beta and at the rescalings of it the same-loss test looks through."""
    before = snapshot_namespaces()
    try:
        spec, loss_of = load_candidate(payload)
        metrics = check_gradients(loss_of)
        fingerprint = compute_fingerprint(loss_of, spec.hyperparameters["beta"])
        if not all(value == value and abs(value) != float("inf") for value in fingerprint):
            raise CandidateError("nan", "the loss's gradients are not finite on the fingerprint grid")
        return {**metrics, "fingerprint": fingerprint}
    finally:
        check_namespaces(before)  # after a failure too: a patched Tensor.mean makes DPO look `no_grad`


def echo_job(payload: dict) -> dict:
    """Returns its payload and the lossearch modules loaded in the child: lets tests check the
    jail itself, and what the child holds, without any candidate."""
    import sys

    return {"payload": payload, "modules": sorted(name for name in sys.modules if name.split(".")[0] == "lossearch")}


def bandit_job(payload: dict) -> dict:
    """The bandit tier's training half: one run per beta; the parent scores the logits."""
    task = make_training_task(payload["task"], int(payload["seed"]))  # no oracle rewards in reach
    before = snapshot_namespaces()
    try:
        _, loss_of = load_candidate(payload)
        logits_by_beta = train_bandit_grid(lambda tensors, beta: loss_of(tensors, beta), task, int(payload["seed"]))
        return {"logits": {str(beta): logits.tolist() for beta, logits in logits_by_beta.items()}}
    finally:
        check_namespaces(before)  # after a failure too, as in sanity_job


def prepare_finetune(payload: dict) -> None:
    """In the zygote, before the fork: import transformers and the model's architecture, and run
    the model once, so no lazy import is left for the jailed child (lossearch.sandbox.zygote.prepare)."""
    warm_up_model(payload["model_config"])


def finetune_job(payload: dict) -> dict:
    """The finetune tier's training half: train a copy of the base model with the candidate loss.

    Reads `base.safetensors` and `pairs.safetensors` from the working directory, writes the
    trained parameters to `policy.safetensors`; the parent scores them (lossearch.evaluation.finetune.score.Scorer).
    """
    config = RunConfig(**payload["run"])
    policy, reference, pairs, prompts = finetune_models(payload, config)
    before = snapshot_namespaces()
    try:
        _, loss_of = load_candidate(payload)
        started = time.perf_counter()
        losses = train_policy(loss_of, policy, reference, pairs, config, prompts)
        train_seconds = time.perf_counter() - started
    finally:
        check_namespaces(before)  # after a failure too, as in sanity_job
    save_parameters(policy, "policy.safetensors")
    return {**loss_summary(losses), "train_seconds": train_seconds}


def finetune_many_job(payload: dict) -> dict:
    """Several runs of the finetune tier in one stacked pass (lossearch.evaluation.finetune.stacked):
    `payload["runs"]` holds their configs, differing in beta and seed only. Run r's trained parameters
    go to `policy_{r}.safetensors`, unless it diverged: then its report carries the failure."""
    configs = [RunConfig(**run) for run in payload["runs"]]
    policy, reference, pairs, _ = finetune_models(payload, configs[0])
    before = snapshot_namespaces()
    try:
        _, loss_of = load_candidate(payload)
        started = time.perf_counter()
        runs = train_stacked(loss_of, policy, reference, pairs, configs)
        train_seconds = time.perf_counter() - started
    finally:
        check_namespaces(before)
    reports = []
    for index, run in enumerate(runs):
        if run.failure is None:
            with open(f"policy_{index}.safetensors", "wb") as file:
                file.write(safetensors_bytes(run_parameters(policy, index)))
        reports.append({**loss_summary(run.losses), "failure": run.failure.failure.to_dict() if run.failure else None})
    return {"runs": reports, "train_seconds": train_seconds}


def finetune_models(payload: dict, config: RunConfig):
    """(policy, reference or None, the training pairs, the online prompts or None) of a finetune job."""
    torch.manual_seed(config.seed)
    base = load_file("base.safetensors")
    tensors = load_file("pairs.safetensors")
    if config.uses_scores and not config.online:  # the parent copies them in for such a loss; online pairs
        tensors.update(load_file("scores.safetensors"))  # come with their labeller's rewards
    pairs = PairSet.from_tensors(tensors, "train", config.pairs)
    prompts = (tensors["train_prompt_ids"], tensors["train_prompt_attention"].bool()) if config.online else None
    # the reference's log-probs of the pairs come cached; its model is needed only for a KL input,
    # token inputs (its per-token log-probs of each batch) or to label online pairs
    needs_reference = config.uses_kl or config.uses_tokens or config.online is not None
    policy = make_model(payload["model_config"])
    reference = make_model(payload["model_config"]) if needs_reference else None
    for model in filter(None, (policy, reference)):
        load_parameters(model, base)
        model.to(config.device)
    if reference is not None:
        reference.eval().requires_grad_(False)
    return policy, reference, pairs, prompts


def loss_summary(losses: list[float]) -> dict[str, Any]:
    """A run's final loss (the mean of its last ten steps) and every fiftieth of its losses."""
    if not losses:
        return {"final_loss": None, "losses": []}
    return {"final_loss": sum(losses[-10:]) / len(losses[-10:]), "losses": losses[:: max(1, len(losses) // 50)]}
