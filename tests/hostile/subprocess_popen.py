# expect: policy
# contained: policy
"""subprocess.Popen a shell that writes outside the sandbox."""
import subprocess

import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    subprocess.Popen(["/bin/sh", "-c", f"echo pwned > {MARKER_DIR}/lossearch-hostile-escape-popen"]).wait()
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
