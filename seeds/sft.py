"""SFT (the NLL term of RPO, Pang et al., 2024): token-level negative log-likelihood of the chosen responses.

Not a preference loss: it only imitates the chosen responses, ignores the
rejected ones and the reference, and has no strength parameter (so it takes no
beta). Every token of the batch weighs the same, so the loss is one number for
the batch, -sum(chosen logps) / sum(chosen lengths), broadcast to each pair.
Equals TRL's `loss_type="sft"`, the mean over the batch's chosen tokens.
"""
import torch


def loss(policy_chosen_logps, chosen_lengths):
    # token mean, not a mean of per-sequence means: long responses weigh more
    nll = -policy_chosen_logps.sum() / chosen_lengths.sum().clamp(min=1.0)
    return nll.expand_as(policy_chosen_logps)
