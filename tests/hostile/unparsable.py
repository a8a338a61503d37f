# expect: syntax
# contained: -
"""Does not parse: an unclosed signature."""
import torch


def loss(policy_chosen_logps, policy_rejected_logps:
    return policy_chosen_logps
