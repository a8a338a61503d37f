# expect: policy
# contained: exception
"""_posixsubprocess.fork_exec raises no audit event: only the seccomp filter stops the exec.

If the shell ran (exit status 0) the loss returns normally and the test sees `ok` plus
a file in the marker directory; if it was refused the loss says so by raising.
"""
import os
import _posixsubprocess

import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    command = f"echo escaped > {MARKER_DIR}/lossearch-hostile-escape-forkexec; sleep 60".encode()
    read_end, write_end = os.pipe()
    pid = _posixsubprocess.fork_exec(
        [b"/bin/sh", b"-c", command], (b"/bin/sh",), True, (write_end,), None, None,
        -1, -1, -1, -1, -1, -1, read_end, write_end, True, True, -1, None, None, None, -1, None, False)
    os.close(write_end)
    refused = os.read(read_end, 200)  # the exec error, if the child could not run the program
    if refused:
        os.waitpid(pid, 0)
        raise RuntimeError(f"could not run the shell: {refused!r}")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
