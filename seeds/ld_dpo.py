"""LD-DPO (Liu et al., 2024): DPO whose likelihoods count a response's tokens past the shorter one's length at alpha.

"Length Desensitization in Direct Preference Optimization" (§4, the length-desensitized likelihood):
with l_p = min(l_chosen, l_rejected), the public length of a pair, each response's log-likelihood is
sum_{i <= l_p} log p(y_i) + alpha * sum_{i > l_p} log p(y_i), for the policy and the reference alike,
and the loss is DPO's on those: -log sigmoid(beta * margin). The excess tokens of the longer response
are damped, so the margin no longer grows with its length alone; alpha 1 is DPO. TRL (DPOConfig.ld_alpha,
DPOTrainer._compute_loss) computes the same; tests/test_trl_adapter.py compares the two.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_token_logps, policy_rejected_token_logps,
         reference_chosen_token_logps, reference_rejected_token_logps,
         chosen_mask, rejected_mask, beta: float = 0.1, alpha: float = 0.5):
    public = torch.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1))[:, None]  # (B, 1) l_p
    chosen_weights = desensitizing_weights(chosen_mask, public, alpha)  # (B, T)
    rejected_weights = desensitizing_weights(rejected_mask, public, alpha)
    chosen = ((policy_chosen_token_logps - reference_chosen_token_logps) * chosen_weights).sum(-1)  # (B,)
    rejected = ((policy_rejected_token_logps - reference_rejected_token_logps) * rejected_weights).sum(-1)
    return -F.logsigmoid(beta * (chosen - rejected))


def desensitizing_weights(mask, public, alpha):
    """(B, T) 1 on a response's first `public` tokens, alpha on the rest of them, 0 off the response."""
    shared = mask * (mask.cumsum(-1) <= public).float()
    return shared + alpha * (mask - shared)

