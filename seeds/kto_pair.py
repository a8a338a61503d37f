"""KTO, paired (Ethayarajh et al., 2024): prospect-theoretic loss on preference pairs.

Each response's implicit reward is compared with a reference point z0, an
estimate of KL(policy || reference) taken as the batch mean of the log-ratios
clamped at 0; as in TRL 0.8, the chosen responses are scored against the
rejected half's estimate and the rejected ones against the chosen half's.
Equals TRL 0.8's `loss_type="kto_pair"`, which concatenates the 2B losses and
averages them; half the sum per pair gives the same mean. TRL 0.8 does not
detach z0 (gradients flow through the batch mean); the KTO paper treats it as
a constant, so the two differ in gradient but not in value.
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    # batch estimates of the reference point: a KL is never negative
    chosen_kl = chosen_logratios.mean().clamp(min=0)
    rejected_kl = rejected_logratios.mean().clamp(min=0)
    chosen_losses = 1 - torch.sigmoid(beta * (chosen_logratios - rejected_kl))
    rejected_losses = 1 - torch.sigmoid(beta * (chosen_kl - rejected_logratios))
    return 0.5 * (chosen_losses + rejected_losses)
