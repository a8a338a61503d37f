"""f-DPO, alpha-divergence (Wang et al., 2023): DPO with an alpha-divergence regularizer.

For an f-divergence the implicit reward is beta * f'(pi / pi_ref); the
alpha-divergence has f'(t) = (1 - t^-alpha) / alpha, so each log-ratio r
becomes (1 - exp(-alpha r)) / alpha. alpha -> 0 gives reverse KL (DPO),
alpha = 1 forward KL; in between it trades mode-seeking against mass-covering.
Equals TRL's `loss_type="sigmoid"` with `f_divergence_type="alpha_divergence"`
and `f_alpha_divergence_coef=1 - alpha`: TRL 1.16 writes f'(t) = (t^(a-1) - 1)/(a - 1),
the paper's f' with a = 1 - alpha (TRL's default a = 0.5 is alpha = 0.5).
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, alpha: float = 0.5):
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    # f'(pi / pi_ref) = (1 - exp(-alpha r)) / alpha; exp overflows fp32 for very negative r, so the
    # exponent is capped at 80, as TRL does
    chosen_scores = (1 - torch.exp((-alpha * chosen_logratios).clamp(max=80.0))) / alpha
    rejected_scores = (1 - torch.exp((-alpha * rejected_logratios).clamp(max=80.0))) / alpha
    return -F.logsigmoid(beta * (chosen_scores - rejected_scores))
