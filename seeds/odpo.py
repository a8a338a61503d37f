"""ODPO (Amini et al., 2024): DPO with an offset: the chosen must win by more the larger its score gap.

"Direct Preference Optimization with an Offset": loss = -log sigmoid(beta * margin - offset), with
offset = alpha * log(score_chosen - score_rejected), as the authors' release (rycolab/odpo,
trainers.py, `preference_loss` with `offset`) computes it, alpha 1 by default: a pair whose scores
differ more must be told apart by more. The log needs a positive gap; labels drawn by a
Bradley-Terry model, or flipped, can disagree with their scores, so the gap is floored at
`min_gap` (offset alpha * log(min_gap): such a pair asks for little).
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         chosen_scores, rejected_scores, beta: float = 0.1, alpha: float = 1.0, min_gap: float = 0.01):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    offset = alpha * torch.log((chosen_scores - rejected_scores).clamp(min=min_gap))
    return -F.logsigmoid(beta * margin - offset)
