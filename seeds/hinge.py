"""Hinge (Zhao et al., 2023, SLiC; Liu et al., 2024, RSO hinge-norm): max(0, 1 - beta * margin).

The margin is DPO's implicit reward margin. Pairs whose scaled margin already
exceeds 1 contribute no gradient, so training stops pushing pairs it has won.
Equals TRL's `loss_type="hinge"`.
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    # 1/beta acts as the target margin: beyond it the pair is left alone
    return torch.relu(1 - beta * margin)
