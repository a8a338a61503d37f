# expect: policy
# contained: policy
"""Plant a module in the repository, found from the trusted package's own path."""
import os
import sys

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    repo = os.path.dirname(os.path.dirname(sys.modules["lossearch"].__file__))
    with open(os.path.join(repo, "lossearch-hostile-escape-repo.py"), "w") as planted:
        planted.write("raise SystemExit('planted')\n")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
