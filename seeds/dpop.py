"""DPOP, DPO-Positive (Pal et al., 2024, Smaug): DPO with a penalty for losing chosen likelihood.

DPO can raise the margin while the chosen response's own likelihood falls,
most of all when chosen and rejected differ in a few tokens. DPOP subtracts
lambda * max(0, log pi_ref(y_c) - log pi(y_c)) from the margin inside the
sigmoid, so the loss grows as soon as the chosen log-ratio drops below zero
and is plain DPO while it stays above. `penalty_weight` is the paper's lambda;
50 is the value DPOP implementations commonly default to.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, penalty_weight: float = 50.0):
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    # zero while the policy keeps the chosen response at least as likely as the reference does
    penalty = torch.relu(-chosen_logratios)
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios - penalty_weight * penalty))
