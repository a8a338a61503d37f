"""Dr. DPO (Wu et al., 2024, Distributionally Robustifying DPO): -beta' log mean exp(-L_DPO / beta') over the batch.

A distributionally robust version of DPO: the batch loss is a soft minimum of
the pairs' DPO losses, which is the same as reweighting each pair by
softmax(-L_i / beta'). Pairs with a large loss, likely mislabelled, weigh
less, so it resists flipped labels; beta' -> infinity gives DPO back.
beta' = 1 as in the authors' example command. The batch loss is one number; we return it
for every pair, so the evaluator's mean is exactly it (a batch of one gives
that pair's DPO loss).
"""
import math

import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, beta_prime: float = 1.0):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    dpo_losses = -F.logsigmoid(beta * margin)  # (B,)
    # log mean exp via logsumexp: exp(-L / beta') underflows to 0 for a badly lost pair
    log_mean = torch.logsumexp(-dpo_losses / beta_prime, dim=0) - math.log(dpo_losses.shape[0])
    return (-beta_prime * log_mean).expand_as(dpo_losses)
