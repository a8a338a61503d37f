# expect: policy
# contained: policy
"""os.posix_spawn, which skips subprocess.Popen altogether."""
import os

import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", f"touch {MARKER_DIR}/lossearch-hostile-escape-spawn"], {})
    os.waitpid(pid, 0)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
