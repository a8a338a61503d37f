# expect: timeout
# contained: timeout
"""Burns CPU inside torch: a long chain of large matmuls the loss never needed."""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    x = torch.ones(512, 512) / 512
    for step in range(10**9):
        x = torch.tanh(x @ x)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)) + x.mean()
