"""EXO, pairwise (Ji et al., 2024, eq. 16): reverse KL from the label distribution to the policy's.

Over the two responses of a pair, the policy's distribution is the softmax of
the scaled implicit rewards, q = (sig(beta m), sig(-beta m)), and the labels are
smoothed to p = (1 - eps, eps). The loss is KL(q || p); minimizing the reverse
KL makes the policy mode-seeking, unlike DPO's forward (cross-entropy) form.
Equals TRL's `loss_type="exo_pair"` with `label_smoothing=epsilon` (the paper
recommends 1e-3).
"""
import math

import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, epsilon: float = 1e-3):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    logits = beta * margin
    # KL(q || p) = sum_i q_i (log q_i - log p_i) over {chosen, rejected}
    chosen_term = torch.sigmoid(logits) * (F.logsigmoid(logits) - math.log1p(-epsilon))
    rejected_term = torch.sigmoid(-logits) * (F.logsigmoid(-logits) - math.log(epsilon))
    return chosen_term + rejected_term
