"""SPPO, hard labels (Wu et al., 2024, eq. 4.7): regress each log-ratio onto +-1/(2 beta).

SPPO regresses beta * log-ratio onto P(y wins) - 1/2. With hard labels the
winner's probability is 1 and the loser's 0, so the chosen log-ratio is pulled
to +1/(2 beta) and the rejected one to -1/(2 beta), each on its own.
Equals TRL's `loss_type="sppo_hard"`.
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    winner_error = (chosen_logratios - 0.5 / beta) ** 2
    loser_error = (rejected_logratios + 0.5 / beta) ** 2
    return winner_error + loser_error
