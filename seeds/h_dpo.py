"""H-DPO (Omura et al., 2024, Entropy Controllable DPO): DPO with the policy's log-probs scaled by alpha.

Writing the reverse KL as cross-entropy minus entropy and weighting the
entropy by alpha gives the optimum pi ~ pi_ref^(1/alpha) exp(r / (alpha beta)),
so the implicit reward is alpha beta log pi - beta log pi_ref. alpha < 1
sharpens the policy (lower entropy, more mode-seeking), alpha > 1 spreads it,
alpha = 1 is DPO. The default 0.95 is ours: any alpha below 1, to differ from DPO.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, alpha: float = 0.95):
    policy_margin = policy_chosen_logps - policy_rejected_logps
    reference_margin = reference_chosen_logps - reference_rejected_logps
    return -F.logsigmoid(beta * (alpha * policy_margin - reference_margin))
