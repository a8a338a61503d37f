"""APO-down (D'Oosterlinck et al., 2024, eq. 8): lower both likelihoods, the rejected one more.

For data whose chosen answers are worse than the model's own: the first term
pushes the chosen log-ratio down, the second keeps the margin over the rejected
response growing, so the rejected likelihood must fall faster.
Equals TRL's `loss_type="apo_down"`.
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    chosen_term = torch.sigmoid(beta * chosen_logratios)
    margin_term = 1 - torch.sigmoid(beta * (chosen_logratios - rejected_logratios))
    return chosen_term + margin_term
