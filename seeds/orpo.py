"""ORPO (Hong et al., 2024): SFT plus a log-odds-ratio penalty, with no reference model.

With a = per-token average log-likelihood (so e^a is the geometric-mean token
probability), the odds of a response are e^a / (1 - e^a). The loss is the
chosen response's per-token NLL minus lambda * log sig(log odds_c - log odds_r),
and lambda is `beta` here, as in TRL's ORPOConfig. Matches TRL ORPOTrainer's
`odds_ratio_loss`; TRL's NLL term is over the batch's tokens, ours per pair.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         chosen_lengths, rejected_lengths, beta: float = 0.1):
    chosen_mean = policy_chosen_logps / chosen_lengths.clamp(min=1.0)
    rejected_mean = policy_rejected_logps / rejected_lengths.clamp(min=1.0)
    # log(1 - e^a) via expm1: exact near a = 0, where 1 - exp(a) would cancel; the clamp keeps
    # a response of probability 1 (a = 0) from giving log(0)
    chosen_log1m = torch.log(-torch.expm1(chosen_mean.clamp(max=-1e-6)))
    rejected_log1m = torch.log(-torch.expm1(rejected_mean.clamp(max=-1e-6)))
    log_odds_ratio = (chosen_mean - rejected_mean) - (chosen_log1m - rejected_log1m)
    return -chosen_mean - beta * F.logsigmoid(log_odds_ratio)
