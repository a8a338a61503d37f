"""SLiC-HF (Zhao et al., 2023): a rank-calibration hinge plus a cross-entropy regularizer.

The calibration term asks the policy's own sequence log-likelihood of the
chosen response to beat the rejected one's by at least delta (no reference
model). The regularizer is the per-token NLL of the chosen response, standing
in for the paper's SFT target; its weight lambda is `beta` here, the strength
knob every loss receives.
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths,
         beta: float = 0.1, delta: float = 1.0):
    calibration = torch.relu(delta - (policy_chosen_logps - policy_rejected_logps))
    nll = -policy_chosen_logps / chosen_lengths.clamp(min=1.0)
    return calibration + beta * nll
