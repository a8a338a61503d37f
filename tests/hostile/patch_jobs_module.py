# expect: policy
# contained: ok
"""Disarm the trusted job code in its own child through sys.modules, then patch torch undetected.

Unrestricted code owns the child's memory, so this works there (`ok`): what the child reports
is untrusted. The test checks that it stops at the child: the parent's modules and the next
child are untouched.
"""
import sys

import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    sys.modules["lossearch.sandbox.jobs"].check_namespaces = lambda before: None
    torch.sigmoid = lambda x: x * 0 + 0.5
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
