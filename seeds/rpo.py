"""RPO (Pang et al., 2024, Iterative Reasoning Preference Optimization): DPO plus alpha times the chosen NLL.

The NLL term keeps the chosen (correct) reasoning traces likely while DPO
separates them from the rejected ones: the paper finds it is what makes the
model actually generate the winning traces. As in TRL the NLL is one number
for the batch, -sum(chosen logps) / sum(chosen lengths), added to each pair's
DPO loss, so every output holds the whole batch's NLL and only the mean is the
loss. alpha = 1 as the paper recommends.
Equals TRL's `loss_type=["sigmoid", "sft"]` with `loss_weights=[1.0, alpha]`.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         chosen_lengths, beta: float = 0.1, alpha: float = 1.0):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    preference = -F.logsigmoid(beta * margin)
    # token mean over the batch's chosen responses, broadcast to every pair
    nll = -policy_chosen_logps.sum() / chosen_lengths.sum().clamp(min=1.0)
    return preference + alpha * nll
