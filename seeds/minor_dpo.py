"""MinorDPO (Xie et al., 2024, "Minor DPO reject penalty"): DPO with the rejected log-ratio clamped at 0.

The rejected response's log-ratio enters the margin as max(0, r_r): once the
policy finds the rejected response no likelier than the reference does, DPO's
push to lower it further stops, and only the chosen side keeps learning. This
curbs over-penalizing the rejected response, the paper's source of DPO's
instability, and the "both likelihoods fall" drift that comes with it.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    # no gradient through the rejected side once it is below the reference
    rejected_penalty = torch.relu(policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * (chosen_logratios - rejected_penalty))
