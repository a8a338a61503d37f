"""CPO (Xu et al., 2024): reference-free DPO plus an NLL term on the chosen response.

Dropping the reference model from DPO gives -log sig(beta (pi_c - pi_r)); the
behaviour-cloning term alpha * NLL(chosen) keeps the chosen likelihood from
falling while the margin grows. The NLL is per token for each pair; TRL's
CPOTrainer averages it over all chosen tokens of the batch instead (and over
the full sequence), so only the preference term equals TRL's `loss_type="sigmoid"`.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths,
         beta: float = 0.1, alpha: float = 1.0):
    preference = -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
    # per-token NLL so the regularizer's scale does not depend on response length
    nll = -policy_chosen_logps / chosen_lengths.clamp(min=1.0)
    return preference + alpha * nll
