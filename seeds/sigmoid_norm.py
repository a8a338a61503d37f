"""Length-normalized DPO (Lambert et al., 2024, Tulu 3): DPO on per-token log-ratios.

Dividing each log-ratio by its response length removes DPO's incentive to
prefer longer answers just because their summed log-ratios are larger.
Equals TRL's `loss_type="sigmoid_norm"`, which divides by the token count
clamped at 1; we receive summed log-probs and lengths, so we divide here.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         chosen_lengths, rejected_lengths, beta: float = 0.1):
    chosen_logratios = (policy_chosen_logps - reference_chosen_logps) / chosen_lengths.clamp(min=1.0)
    rejected_logratios = (policy_rejected_logps - reference_rejected_logps) / rejected_lengths.clamp(min=1.0)
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
