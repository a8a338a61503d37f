"""DPO (Rafailov et al., 2023, eq. 7): logistic loss on the implicit reward margin."""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    # implicit reward margin: log-ratio of the chosen minus log-ratio of the rejected
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin)
