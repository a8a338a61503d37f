"""SamPO (Lu et al., 2024): DPO on down-sampled token log-ratios, so both responses count as many tokens.

"Eliminating Biased Length Reliance of Direct Preference Optimization via Down-Sampled KL Divergence"
(§3, the down-sampled implicit reward): each response's implicit reward sums its per-token log-ratios
log pi(y_t) / pi_ref(y_t) over T_m = min(T_chosen, T_rejected) of its tokens drawn at random, so the
longer response no longer wins by its length; the loss is DPO's on those sums. A loss here is a pure
function, so the draw is kept in expectation: T_m of a response's T tokens drawn uniformly sum, on
average, to T_m / T of all its log-ratios. In expectation SamPO therefore reduces to a length scaling,
the longer response's log-ratio times T_m / T (inside the sigmoid, not the expected loss of the draws);
it reads the token inputs, and would equal the same formula on sequence log-ratios and lengths.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_token_logps, policy_rejected_token_logps,
         reference_chosen_token_logps, reference_rejected_token_logps,
         chosen_mask, rejected_mask, beta: float = 0.1):
    chosen_tokens = chosen_mask.sum(-1).clamp(min=1.0)  # (B,) T_chosen
    rejected_tokens = rejected_mask.sum(-1).clamp(min=1.0)
    sampled = torch.minimum(chosen_tokens, rejected_tokens)  # (B,) T_m
    chosen = ((policy_chosen_token_logps - reference_chosen_token_logps) * chosen_mask).sum(-1)  # (B,)
    rejected = ((policy_rejected_token_logps - reference_rejected_token_logps) * rejected_mask).sum(-1)
    return -F.logsigmoid(beta * (sampled / chosen_tokens * chosen - sampled / rejected_tokens * rejected))
