# expect: policy
# contained: policy
"""Write a file straight into the shared temp directory."""
import torch.nn.functional as F

TMP = "@TMP@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    with open(f"{TMP}/lossearch-hostile-escape-tmp", "w") as planted:
        planted.write("import os  # would run in the next process that imports from here\n")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
