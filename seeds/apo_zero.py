"""APO-zero (D'Oosterlinck et al., 2024, eq. 7): raise the chosen likelihood, lower the rejected one.

Anchored to the reference: each response's implicit reward is pushed through
its own sigmoid, so the chosen log-ratio goes up and the rejected one goes down
independently. Use it when the chosen answers are better than the model's own.
Equals TRL's `loss_type="apo_zero"`.
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)
    return (1 - torch.sigmoid(chosen_rewards)) + torch.sigmoid(rejected_rewards)
