# expect: policy
# contained: exception
"""Walk the autograd graph behind the inputs, looking for the policy's parameters."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    node = policy_chosen_logps.grad_fn
    while node.next_functions:
        node = node.next_functions[0][0]
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
