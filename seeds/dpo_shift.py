"""DPO-Shift (Yang et al., 2025): DPO with the rejected log-ratio scaled by lambda < 1.

The margin is r_c - lambda * r_r. With lambda < 1 the rejected side counts
for less, which shifts the trained distribution toward a higher chosen
likelihood (less likelihood displacement) at some cost in reward margin;
lambda = 1 is DPO. `rejected_scale` is the paper's lambda; 0.95 is one of the
fixed values it sweeps.
Written from the authors' release (Meaquadddd/DPO-Shift, `dpo_lambda_strategy="fixed"`).
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, rejected_scale: float = 0.95):
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    return -F.logsigmoid(beta * (chosen_logratios - rejected_scale * rejected_logratios))
