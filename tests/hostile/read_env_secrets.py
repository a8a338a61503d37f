# expect: policy
# contained: exception
"""Collect every secret-looking variable it can find and raise them, so they would reach the result.

The jail strips the environment, so there is nothing to find: the error says so, and the
test checks that no secret of the parent's appears anywhere in the result.
"""
import os

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    found = [f"{k}={v}" for k, v in os.environ.items() if any(m in k for m in ("KEY", "TOKEN", "SECRET"))]
    for name in ("OPENAI_API_KEY", "MY_SECRET_TOKEN"):
        if os.getenv(name):
            found.append(os.getenv(name))
    for path in ("/proc/self/environ", f"/proc/{os.getppid()}/environ", "/proc/1/environ"):
        try:
            with open(path, "rb") as environ:
                found += [v.decode() for v in environ.read().split(b"\0") if b"KEY" in v or b"TOKEN" in v]
        except OSError:
            pass
    raise RuntimeError(f"secrets found: {found}")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
