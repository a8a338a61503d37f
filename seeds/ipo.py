"""IPO (Azar et al., 2023, eq. 17): squared regression of the log-ratio margin onto 1/(2 beta).

Unlike DPO the target is finite, so the policy cannot drive the margin to
infinity on deterministic preferences. beta plays the role of the paper's tau.
Equals TRL's `loss_type="ipo"`, which divides each log-ratio by its response's
token count (clamped at 1) so the squared loss does not grow with length; we
receive summed log-probs and lengths, so the division happens here.
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         chosen_lengths, rejected_lengths, beta: float = 0.1):
    # per-token log-ratios: TRL's normalization, confirmed with the IPO authors
    chosen_logratios = (policy_chosen_logps - reference_chosen_logps) / chosen_lengths.clamp(min=1.0)
    rejected_logratios = (policy_rejected_logps - reference_rejected_logps) / rejected_lengths.clamp(min=1.0)
    margin = chosen_logratios - rejected_logratios
    return (margin - 1 / (2 * beta)) ** 2
