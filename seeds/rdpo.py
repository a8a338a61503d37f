"""R-DPO (Park et al., 2024, "Disentangling Length from Quality in DPO", eq. 9): DPO with a length term.

The length-regularized objective max E[r - alpha*|y|] - beta*KL makes the
implicit reward beta*log(pi/pi_ref) + alpha*|y|, so alpha*(len_c - len_r) is
ADDED inside the sigmoid (as the SimPO paper's table of objectives also writes
it): the length advantage of a longer chosen response is explained by the
length term, and the policy's log-ratio no longer has to grow length to fit it.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         chosen_lengths, rejected_lengths, beta: float = 0.1, alpha: float = 0.01):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    length_term = alpha * (chosen_lengths - rejected_lengths)
    return -F.logsigmoid(beta * margin + length_term)
