"""AlphaDPO (Wu et al., 2024): SimPO's length-normalized margin against an adaptive, per-pair target margin.

"alpha-DPO: Adaptive Reward Margin is What Direct Preference Optimization Needs" (arXiv 2410.10148): the
implicit reference U(y|x) * (pi / pi_ref)^alpha adds to SimPO's target margin a term that grows with how far
the policy has moved from the reference on the pair (alpha 0 is SimPO). As the authors' release computes it
(junkangwu/alpha-DPO, scripts/dpo_trainer.py, AlphaDPOTrainer.dpo_loss, loss_type "alpha-dpo"; `ln: true`
in every config, so each log-prob is its response's per-token mean):
    u = log pi(y_c) / |y_c| - log pi(y_r) / |y_r|              (SimPO's margin)
    m = u - (log pi_ref(y_c) / |y_c| - log pi_ref(y_r) / |y_r|)  (the per-token log-ratio margin)
    loss = -log sigmoid(beta * (u - detach(alpha * (m - mu) / sigma + gamma_beta_ratio)))
the gradient flowing through u alone. Their mu and sigma are EMAs (momentum 0.9, from 0, no bias
correction) of the batch mean and unbiased std of m, updated by each micro-batch of 8 pairs before it is
used (update_and_sync_ref_mean_std): about the last 10 micro-batches' statistics. Ours are this batch's
own mean and unbiased std of m: the contract's running_margin_mean/_std follow the summed margin, not
this per-token one, and a loss keeps no state. Ours lacks their EMA's warm-up (from 0, its first sigmas
are a fraction of the batch's) and floors sigma at MIN_STD (a policy equal to its reference has m = 0:
0 / 0 in their form). Defaults: their Llama-3-8B-Instruct config (beta 2.5, gamma_beta_ratio 0.6,
alpha 0.2); the others use 2.5 / 0.15 / 0.05 (Mistral), 10 / 0.4 / 0.2 (Llama-3 v2), 10 / 0.4 / 0.05 (Gemma-2).
"""
import torch.nn.functional as F

# a floor on sigma: while the policy is still the reference its margins, and so their spread, are
# rounding noise, and the target margin must not follow noise
MIN_STD = 0.01


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths,
         beta: float = 2.5, gamma_beta_ratio: float = 0.6, alpha: float = 0.2):
    chosen_lengths, rejected_lengths = chosen_lengths.clamp(min=1.0), rejected_lengths.clamp(min=1.0)
    policy_margin = policy_chosen_logps / chosen_lengths - policy_rejected_logps / rejected_lengths  # (B,) u
    reference_margin = reference_chosen_logps / chosen_lengths - reference_rejected_logps / rejected_lengths
    gap = (policy_margin - reference_margin).detach()  # (B,) m, no gradient through the target
    # the batch's unbiased std (torch.std's, as theirs), 0 for a batch of one
    deviation = gap - gap.mean()
    spread = (deviation.square().sum() / max(gap.numel() - 1, 1)).sqrt().clamp(min=MIN_STD)
    target = alpha * deviation / spread + gamma_beta_ratio  # (B,) the adaptive margin, over beta
    return -F.logsigmoid(beta * (policy_margin - target))
