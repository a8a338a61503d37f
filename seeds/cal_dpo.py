"""Cal-DPO (Xiao et al., 2024): DPO plus a calibration of each implicit reward to +-1/(2 beta).

DPO only fixes the difference of the log-ratios, so both can drift down
together. Cal-DPO adds squared errors that pull the chosen log-ratio to
+1/(2 beta) and the rejected one to -1/(2 beta), so each implicit reward, not
only their difference, sits on a fixed scale. The contrastive term is -log sig
of the raw log-ratio margin (no beta, as in the authors' code): here beta sets
only the calibration targets.
Written from the authors' release (Cal-DPO/Cal-DPO, `shift=0.5`).
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    contrastive = -F.logsigmoid(chosen_logratios - rejected_logratios)
    # each response's reward is anchored on its own, not only through the margin
    calibration = (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    return contrastive + calibration
