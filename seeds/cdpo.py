"""cDPO, conservative DPO (Mitchell, 2023, "A note on DPO with noisy preferences", eq. 3): DPO with label smoothing.

If each label is flipped with probability epsilon, the expected target is
(1 - eps, eps), and the loss is the cross-entropy against it:
    -(1 - eps) log sig(beta m) - eps log sig(-beta m).
Unlike DPO its optimum is a finite margin (log((1 - eps)/eps) / beta), so it
stops pushing pairs it has won. Robust DPO (`robust`) instead debiases for eps.
Equals TRL CPOTrainer's `loss_type="sigmoid"` with `label_smoothing=epsilon`
fed the log-ratios in place of the log-probs (TRL 1.16's DPOTrainer has no
label smoothing).
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, epsilon: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    logits = beta * margin
    return -(1 - epsilon) * F.logsigmoid(logits) - epsilon * F.logsigmoid(-logits)
