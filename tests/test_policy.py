"""The static tier's AST policy: legitimate losses pass, reaches outside tensor arithmetic do not."""

from __future__ import annotations

import pytest

from lossearch.failures import CandidateError
from lossearch.policy import check_policy
from lossearch.search.seeds import seed_paths

HEADER = "import torch\nimport torch.nn.functional as F\nimport math\n"


@pytest.mark.parametrize("path", seed_paths(), ids=lambda path: path.stem)
def test_every_seed_obeys_the_policy(path):
    check_policy(path.read_text())


def test_ordinary_tensor_code_passes():
    check_policy(HEADER + "from torch.nn import functional as G\nSCALE = 2.0\n"
                 "def helper(x):\n    return G.softplus(-x)\n"
                 "def loss(policy_chosen_logps, reference_chosen_logps, beta: float = 0.1):\n"
                 "    ratio = (policy_chosen_logps - reference_chosen_logps).detach() * 0 + policy_chosen_logps\n"
                 "    total = 0\n    for i in range(3):\n"
                 "        total = total + helper(beta * ratio) * math.log(SCALE)\n"
                 "    return torch.where(ratio > 0, total, total.clamp(min=0.0))")


@pytest.mark.parametrize("body", [
    "import os", "import subprocess", "from os import system", "import torch.utils", "from torch import load",
    "import torch as t\nX = t", "import importlib",
])
def test_imports_outside_the_allow_list_are_refused(body):
    with pytest.raises(CandidateError) as caught:
        check_policy(body + "\ndef loss(policy_chosen_logps):\n    return policy_chosen_logps")
    assert caught.value.failure.kind == "policy"


@pytest.mark.parametrize("statement", [
    "x = eval('1')", "x = getattr(policy_chosen_logps, 'sum')", "x = policy_chosen_logps.__class__",
    "x = policy_chosen_logps.grad_fn", "policy_chosen_logps.backward()", "x = policy_chosen_logps.data",
    "x = policy_chosen_logps.add_(1)", "x = torch._C", "torch.sigmoid = F.relu", "policy_chosen_logps[0] = 1",
    "x = torch.load('f')", "x = torch.autograd.grad", "torch.set_grad_enabled(False)", "x = open('f')",
    "x = type(policy_chosen_logps)", "global y", "x = globals()", "x = vars()", "x = torch.nn.Module",
    "x = policy_chosen_logps.register_hook(print)", "x = policy_chosen_logps.untyped_storage()",
    "x = torch", "with torch.no_grad():\n        pass", "x = __builtins__",
    "x = policy_chosen_logps.data_ptr()", "x = torch.utils.data",
])
def test_reaches_outside_tensor_arithmetic_are_refused(statement):
    source = HEADER + f"def loss(policy_chosen_logps):\n    {statement}\n    return policy_chosen_logps"
    with pytest.raises(CandidateError) as caught:
        check_policy(source)
    assert caught.value.failure.kind == "policy"
    assert caught.value.failure.message.startswith("line ")


@pytest.mark.parametrize("module_level", [
    "print('hi')", "torch.manual_seed(0)", "X = torch.zeros(3)", "class A:\n    pass",
    "for i in range(3):\n    pass",
])
def test_module_level_holds_only_definitions(module_level):
    with pytest.raises(CandidateError) as caught:
        check_policy(HEADER + module_level + "\ndef loss(policy_chosen_logps):\n    return policy_chosen_logps")
    assert caught.value.failure.kind == "policy"
