# expect: policy
# contained: policy
"""Call libc's system() through ctypes, beneath every Python-level check."""
import ctypes

import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    ctypes.CDLL(None).system(f"touch {MARKER_DIR}/lossearch-hostile-escape-ctypes".encode())
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
