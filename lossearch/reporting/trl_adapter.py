"""Train with a lossearch loss in TRL's `DPOTrainer` (TRL 1.x).

TRL 1.16's `DPOTrainer._compute_loss` computes the sequence log-probs and then
picks a built-in loss by name inside one long function, so there is no smaller
hook to replace: the adapter overrides `_compute_loss` with one that computes
the same log-probs the same way (the fused LM head, the reference model or the
precomputed reference log-probs), calls the contract's `loss` (DESIGN §2) with
the inputs it asks for, and logs TRL's reward metrics.

    Trainer = make_dpo_trainer_class(loss)            # a DPOTrainer subclass
    trainer = Trainer(model=..., args=DPOConfig(beta=...), train_dataset=..., processing_class=...)
    patch_dpo_trainer(trainer, loss)                  # or: switch a trainer you already built

`beta` comes from `DPOConfig.beta`; the loss's other hyperparameters keep their
defaults unless given as keywords. Losses that read `chosen_kl`/`rejected_kl`
need the reference model in memory and one full-logits forward per model.
`progress` is the trainer's `global_step / max_steps`; the running margin
statistics are kept on the trainer (an EMA with momentum 0.9 of each training
batch's mean and standard deviation of the log-ratio margin, this batch's
included; evaluation batches read them without changing them). Scores come from
the batch's `chosen_scores` and `rejected_scores` tensors: TRL 1.16's preference
collator keeps only token ids and reference log-probs, so a loss that reads
scores needs a collator of yours that adds them, and fails with a ValueError without one.
The token inputs (`*_token_logps`, `chosen_mask`, `rejected_mask`) are TRL's
completion positions of the batch, (B, T-1) for its padded length T, computed as
TRL computes its own per-token log-probs (the fused LM head; the reference model
run over the batch, as for `ld_alpha`), so they need the reference model in
memory: not `precompute_ref_log_probs`, nor PEFT's adapter-off reference.

Everything below the marker is copied verbatim into every module that
`lossearch export` writes, so it imports nothing at module level: TRL and
inspect are imported when an adapter is used, and a module using it imports
with torch alone.
"""

# -- exported adapter (copied into exported modules from here on; no module-level imports) --


def make_dpo_trainer_class(loss_fn, **hyperparameters):
    """A `trl.DPOTrainer` subclass whose loss is `loss_fn` (beta from `DPOConfig.beta`)."""
    from trl import DPOTrainer

    class LossearchDPOTrainer(DPOTrainer):
        def _compute_loss(self, model, inputs, return_outputs):
            return _contract_dpo_loss(self, model, inputs, return_outputs, loss_fn, hyperparameters)

    trainer_name = f"DPOTrainer_{getattr(loss_fn, '__module__', 'loss')}"
    LossearchDPOTrainer.__name__ = LossearchDPOTrainer.__qualname__ = trainer_name
    return LossearchDPOTrainer


def patch_dpo_trainer(trainer, loss_fn, **hyperparameters):
    """Make an existing `trl.DPOTrainer` train with `loss_fn` from its next step on; returns the trainer."""
    import types

    def _compute_loss(self, model, inputs, return_outputs):
        return _contract_dpo_loss(self, model, inputs, return_outputs, loss_fn, hyperparameters)

    trainer._compute_loss = types.MethodType(_compute_loss, trainer)
    return trainer


def _contract_dpo_loss(trainer, model, inputs, return_outputs, loss_fn, hyperparameters):
    """TRL's `_compute_loss` with the loss replaced by `loss_fn(**contract inputs)`; returns its batch mean."""
    import inspect

    import torch

    if getattr(trainer, "ld_alpha", None) is not None or getattr(trainer, "use_weighting", False):
        raise ValueError("a lossearch loss defines its own weighting: leave DPOConfig.ld_alpha and use_weighting unset")
    wanted = set(inspect.signature(loss_fn).parameters)
    completion_mask = inputs["completion_mask"]  # (2B, T): 1 on response tokens; rows are [chosen..., rejected...]
    shift_mask = completion_mask[:, 1:]  # (2B, T-1): response positions of the next-token targets
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    model_kwargs = {key: value for key, value in inputs.items()
                    if key not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps", *_SCORE_KEYS)}
    model_kwargs["use_cache"] = False
    ref_per_token = kl = None
    if wanted & {"chosen_kl", "rejected_kl"}:
        per_token, ref_per_token, kl = _logps_from_full_logits(trainer, model, model_kwargs, labels, shift_mask)
    else:
        per_token = model(**model_kwargs, labels=labels, fused_lm_head=True).log_probs[:, -shift_mask.size(1):]
        if wanted & set(_TOKEN_KEYS):
            ref_per_token = _reference_token_logps(trainer, model_kwargs, labels, shift_mask.size(1))
    logps = per_token.sum(dim=1)  # (2B,) masked positions are zero
    ref_logps = _reference_logps(trainer, inputs) if ref_per_token is None else ref_per_token.sum(dim=1).chunk(2)
    chosen_logps, rejected_logps = logps.chunk(2, dim=0)  # (B,) each
    ref_chosen_logps, ref_rejected_logps = ref_logps
    lengths = shift_mask.sum(dim=1).to(logps.dtype)  # (2B,) response tokens
    tensors = {
        "policy_chosen_logps": chosen_logps, "policy_rejected_logps": rejected_logps,
        "reference_chosen_logps": ref_chosen_logps.to(logps.dtype),
        "reference_rejected_logps": ref_rejected_logps.to(logps.dtype),
        "chosen_lengths": lengths.chunk(2)[0], "rejected_lengths": lengths.chunk(2)[1],
    }
    if kl is not None:
        tensors["chosen_kl"], tensors["rejected_kl"] = kl.chunk(2, dim=0)
    if ref_per_token is not None:  # (B, T-1) each: TRL's completion positions of the batch
        mask = shift_mask.to(logps.dtype)
        token_tensors = (per_token * mask, ref_per_token.to(logps.dtype) * mask, mask)
        for key, values in zip(_TOKEN_KEYS, (half for tensor in token_tensors for half in tensor.chunk(2, dim=0))):
            tensors[key] = values
    tensors.update(_training_state(trainer, tensors))
    if wanted & set(_SCORE_KEYS):
        if not all(key in inputs for key in _SCORE_KEYS):
            raise ValueError("this loss reads chosen_scores/rejected_scores, and TRL's preference collator drops a "
                             "dataset's score columns: pass a data_collator that adds them as (B,) tensors")
        tensors.update({key: inputs[key].to(logps.dtype) for key in _SCORE_KEYS})
    kwargs = {name: tensors[name] for name in wanted if name in tensors}
    if "beta" in wanted:
        kwargs["beta"] = float(trainer.beta)
    kwargs.update({name: float(value) for name, value in hyperparameters.items() if name in wanted})
    per_pair = loss_fn(**kwargs)
    if per_pair.dim() == 0:
        per_pair = per_pair.expand(chosen_logps.shape[0])
    value = per_pair.mean()
    _log_reward_metrics(trainer, chosen_logps - tensors["reference_chosen_logps"],
                        rejected_logps - tensors["reference_rejected_logps"], chosen_logps, rejected_logps)
    if return_outputs:
        with torch.no_grad():
            return value, model(**model_kwargs)
    return value


_SCORE_KEYS = ("chosen_scores", "rejected_scores")
_TOKEN_KEYS = ("policy_chosen_token_logps", "policy_rejected_token_logps", "reference_chosen_token_logps",
               "reference_rejected_token_logps", "chosen_mask", "rejected_mask")  # lossearch.contract.TOKEN_INPUTS
_MARGIN_MOMENTUM = 0.9  # lossearch.contract.MARGIN_MOMENTUM


def _training_state(trainer, tensors):
    """`progress` and the running margin statistics, as 0-dim tensors (lossearch.contract.TrainingState)."""
    import torch

    margins = ((tensors["policy_chosen_logps"] - tensors["reference_chosen_logps"])
               - (tensors["policy_rejected_logps"] - tensors["reference_rejected_logps"])).detach()  # (B,)
    batch = (float(margins.mean()), float(margins.std(correction=0)))
    running = getattr(trainer, "_lossearch_running_margin", None)
    if trainer.model.training:
        running = batch if running is None else tuple(_MARGIN_MOMENTUM * old + (1 - _MARGIN_MOMENTUM) * new
                                                      for old, new in zip(running, batch))
        trainer._lossearch_running_margin = running
    mean, std = running if running is not None else batch
    state = getattr(trainer, "state", None)
    progress = state.global_step / state.max_steps if state is not None and state.max_steps else 0.0
    return {name: torch.tensor(value, dtype=margins.dtype, device=margins.device) for name, value in
            (("progress", progress), ("running_margin_mean", mean), ("running_margin_std", std))}


def _reference_logps(trainer, inputs):
    """(reference chosen, reference rejected) sequence log-probs, as TRL computes them."""
    if trainer.precompute_ref_logps:
        return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
    reference = trainer.ref_model if trainer.ref_model is not None else trainer.model  # PEFT: adapters off
    return trainer.compute_ref_log_probs(reference, inputs)


def _reference_token_logps(trainer, model_kwargs, labels, width):
    """(2B, width) the reference model's token log-probs of the completions, as TRL's `_compute_loss` runs it."""
    import torch

    if trainer.ref_model is None:
        raise ValueError("a loss reading token log-probs needs the reference model in memory: pass ref_model= and "
                         "keep precompute_ref_log_probs=False (a PEFT model's adapter-off reference is not supported)")
    with torch.no_grad():
        return trainer.ref_model(**model_kwargs, labels=labels, fused_lm_head=True).log_probs[:, -width:]


def _logps_from_full_logits(trainer, model, model_kwargs, labels, shift_mask):
    """(2B, T-1) policy and reference token log-probs (0 off the completion) and the (2B,) per-sequence
    KL(reference || policy), from both models' full logits (a loss reading the KL inputs gets its token
    inputs from these too)."""
    import torch

    if trainer.ref_model is None:
        raise ValueError("a loss reading chosen_kl/rejected_kl needs the reference model in memory: pass ref_model= "
                         "and keep precompute_ref_log_probs=False")
    targets = labels[:, 1:].clamp(min=0).unsqueeze(-1)  # (2B, T-1, 1)
    policy = torch.log_softmax(model(**model_kwargs).logits[:, :-1].float(), dim=-1)  # (2B, T-1, V)
    with torch.no_grad():
        reference = torch.log_softmax(trainer.ref_model(**model_kwargs).logits[:, :-1].float(), dim=-1)
    mask = shift_mask.to(policy.dtype)
    per_token = policy.gather(-1, targets).squeeze(-1) * mask  # (2B, T-1)
    ref_per_token = reference.gather(-1, targets).squeeze(-1) * mask
    token_kl = (reference.exp() * (reference - policy)).sum(dim=-1)  # (2B, T-1) KL of next-token distributions
    return per_token, ref_per_token, (token_kl * mask).sum(dim=1)


def _log_reward_metrics(trainer, chosen_logratios, rejected_logratios, chosen_logps, rejected_logps):
    """TRL's rewards/* and logps/* metrics (implicit reward = beta * log-ratio), for its `log`."""
    metrics = getattr(trainer, "_metrics", None)
    if metrics is None:
        return
    mode = "train" if trainer.model.training else "eval"
    gather = trainer.accelerator.gather_for_metrics
    chosen_rewards = trainer.beta * chosen_logratios.detach()
    rejected_rewards = trainer.beta * rejected_logratios.detach()
    metrics[mode]["rewards/chosen"].append(gather(chosen_rewards).mean().item())
    metrics[mode]["rewards/rejected"].append(gather(rejected_rewards).mean().item())
    metrics[mode]["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
    metrics[mode]["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
    metrics[mode]["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
    metrics[mode]["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
