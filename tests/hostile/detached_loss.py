# expect: no_grad
# contained: no_grad
"""The right DPO value, computed on detached inputs: no gradient ever reaches the policy."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    margin = policy_chosen_logps.detach() - policy_rejected_logps.detach()
    return -F.logsigmoid(beta * margin)
