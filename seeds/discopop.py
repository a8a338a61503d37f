"""DiscoPOP (Lu et al., 2024, eq. 5): log-ratio modulated loss, a sigmoid blend of logistic and exponential.

Found by an LLM-driven search like ours. With logits = beta * margin and the
gate g = sig(logits / tau): (1 - g) * (-log sig(logits)) + g * exp(-logits).
Lost pairs get the DPO (logistic) loss, won pairs the exponential loss, which
decays faster and so lets up on pairs already won.
Equals TRL's `loss_type="discopop"` with `discopop_tau=tau`. We compute
g * exp(-logits) as exp(log g - logits): the same value, but a badly lost pair
gives 0 instead of 0 * inf = nan.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, tau: float = 0.05):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    logits = beta * margin
    gate = torch.sigmoid(logits / tau)
    logistic = -F.logsigmoid(logits)
    # gate * exp(-logits) in log space: exp(-logits) alone overflows for very negative logits
    exponential = torch.exp(F.logsigmoid(logits / tau) - logits)
    return (1 - gate) * logistic + exponential
