# expect: policy
# contained: crash
"""Write a forged 'job done, all fine' line to every inherited pipe, then vanish.

Had the child kept the zygote's pipe to the parent, the parent would read the forged line
as this job's result and every later job's messages would be off by one.
"""
import json
import os
import stat

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    forged = json.dumps({"ok": True, "value": {"loss_mean": 0.0, "fingerprint": [0.0]}, "isolation": {}})
    line = (json.dumps({"status": 0, "result": forged}) + "\n").encode()
    for fd in range(3, 256):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, line)
        except OSError:
            pass
    os._exit(0)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
