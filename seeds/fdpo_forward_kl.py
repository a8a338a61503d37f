"""f-DPO, forward KL (Wang et al., 2023): DPO with the forward KL in place of the reverse KL regularizer.

For an f-divergence the implicit reward is beta * f'(pi / pi_ref); forward KL
has f'(t) = 1 - 1/t, so each log-ratio r becomes 1 - exp(-r). The forward KL
is mass-covering: it punishes the policy for dropping the reference's
responses, so it keeps more diversity than DPO.
Equals TRL's `loss_type="sigmoid"` with `f_divergence_type="forward_kl"`.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    # f'(pi / pi_ref) with f'(t) = 1 - 1/t
    chosen_scores = 1 - torch.exp(-(policy_chosen_logps - reference_chosen_logps))
    rejected_scores = 1 - torch.exp(-(policy_rejected_logps - reference_rejected_logps))
    return -F.logsigmoid(beta * (chosen_scores - rejected_scores))
