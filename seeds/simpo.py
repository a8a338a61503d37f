"""SimPO (Meng et al., 2024): reference-free DPO on average log-likelihood with a target margin.

The implicit reward is the policy's own per-token log-likelihood scaled by
beta, which matches how a response is generated and removes the length bias
and the reference model; gamma is a target reward margin the chosen response
must clear. The paper's betas are large (2.0 to 2.5).
Equals the preference loss of TRL CPOTrainer's `loss_type="simpo"`, which
TRL writes as beta * (mean_c - mean_r - gamma / beta), the same thing; SimPO
has no NLL term (set `cpo_alpha=0` in TRL to train it alone).
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         chosen_lengths, rejected_lengths, beta: float = 2.0, gamma: float = 0.5):
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths.clamp(min=1.0)
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths.clamp(min=1.0)
    return -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
