"""WPO (Zhou et al., 2024, eq. 2): DPO with each pair weighted by how likely the policy finds it.

Off-policy pairs (responses the policy would rarely sample) get less weight:
the DPO loss is multiplied by w(y_c) * w(y_r), with w(y) the policy's
geometric-mean token probability exp(mean log-likelihood), detached so the
weight steers the gradient but is not trained itself. The paper's weight also
divides each token's probability by sum_v pi(v)^2 (its "alignment"); the
contract has no per-token distributions, so that factor is left out.
Equals TRL's `use_weighting=True` (with `loss_type="sigmoid"`) when TRL's
per-token log sum_v pi(v)^2 is zero.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         chosen_lengths, rejected_lengths, beta: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    # weights are constants for the gradient: they select pairs, they are not a target
    chosen_weights = torch.exp(policy_chosen_logps / chosen_lengths.clamp(min=1.0)).detach()
    rejected_weights = torch.exp(policy_rejected_logps / rejected_lengths.clamp(min=1.0)).detach()
    return chosen_weights * rejected_weights * -F.logsigmoid(beta * margin)
