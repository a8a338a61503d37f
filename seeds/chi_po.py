"""chi-PO (Huang et al., 2024, "Correcting the Mythos of KL-Regularization"): DPO with the link z + log z.

DPO's implicit reward is beta * log(pi / pi_ref); chi-PO uses
beta * phi(pi / pi_ref) with phi(z) = z + log z, which comes from regularizing
with chi^2 + KL instead of KL alone. The linear term grows fast once the
policy puts more mass on a response than the reference, so the loss is
pessimistic about responses the data covers poorly: its guard against
overoptimization. We receive log-ratios r, so phi is exp(r) + r.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    # phi(pi / pi_ref) = pi / pi_ref + log(pi / pi_ref); the clamp keeps exp finite in fp32,
    # far past where the sigmoid has saturated
    chosen_scores = torch.exp(chosen_logratios.clamp(max=30.0)) + chosen_logratios
    rejected_scores = torch.exp(rejected_logratios.clamp(max=30.0)) + rejected_logratios
    return -F.logsigmoid(beta * (chosen_scores - rejected_scores))
