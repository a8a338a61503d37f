"""SimPER (Xiao et al., 2025): raise the chosen and lower the rejected inverse perplexity, no hyperparameters.

The inverse perplexity of a response is exp(mean token log-likelihood), its
geometric-mean token probability, a number in (0, 1]. The loss is
-exp(mean_c) + exp(mean_r): reference-free, bounded, and with no strength
parameter at all, so it takes no beta (like `sft`). The paper shows it
approximately minimizes the total variation distance to the data.
Written from the authors' release (tengxiao1/SimPER, `loss_type="SimPER"`).
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths):
    chosen_mean = policy_chosen_logps / chosen_lengths.clamp(min=1.0)
    rejected_mean = policy_rejected_logps / rejected_lengths.clamp(min=1.0)
    return -torch.exp(chosen_mean) + torch.exp(rejected_mean)
