# expect: policy
# contained: policy
"""The sandbox-escape classic: walk object's subclasses to find Popen without importing anything."""
import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    popen = [cls for cls in ().__class__.__bases__[0].__subclasses__() if cls.__name__ == "Popen"][0]
    popen(["touch", f"{MARKER_DIR}/lossearch-hostile-escape-subclasses"]).wait()
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
