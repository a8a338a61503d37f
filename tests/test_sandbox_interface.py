"""One suite for every SandboxLike: the local zygote sandbox and the Ray sandbox.

As tests/test_store.py runs one suite against SQLite and PostgreSQL, each test here runs
against every implementation: a local `Sandbox`, and a `RaySandbox` on a real local Ray
instance (skipped only where Ray is not installed). The jail itself is probed in
tests/test_sandbox.py; this suite checks what the cascade and the campaign rely on.
"""

from __future__ import annotations

import json
import textwrap
import time

import pytest
from helpers import run_in_thread
from safetensors.torch import load_file

from lossearch.contract import parse_spec
from lossearch.evaluation.cascade import evaluate
from lossearch.evaluation.finetune.config import Budget, FinetuneOptions
from lossearch.evaluation.finetune.tier import run_config, sandbox_limits, train_in_sandbox
from lossearch.sandbox.interface import SandboxError, SandboxLike, SandboxLimits
from lossearch.sandbox.local import Sandbox
from lossearch.search.seeds import seed_path

IMPLEMENTATIONS = ["local", "ray"]
LIMITS = SandboxLimits(wall_seconds=3.0, cpu_seconds=3)
SPINNER = "def loss(policy_chosen_logps):\n    while True:\n        pass\n"
TINY_BUDGET = Budget("tiny", steps=6, pairs=48, batch_size=4, trials=1, seeds=1, eval_prompts=16)
PROBE = '''
import json, os, stat

def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    with open("answer.txt", "w") as answer:
        answer.write("written in the child")
    seen = {{name: [oct(stat.S_IMODE(os.stat(name).st_mode)), open(name).read()] for name in {names!r}}}
    raise RuntimeError("probe:" + json.dumps(seen))
'''


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def implementation(request, kind: str):
    """The class of one implementation; the Ray one on the module's local Ray instance."""
    if kind == "local":
        return Sandbox
    request.getfixturevalue("local_ray")
    from lossearch.sandbox.ray_sandbox import RaySandbox

    return RaySandbox


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def sandbox(request):
    """One sandbox per implementation, shared by the tests that leave it as they found it."""
    with implementation(request, request.param)(LIMITS) as shared:
        yield shared


@pytest.fixture(params=IMPLEMENTATIONS)
def make_sandbox(request):
    """Makes fresh sandboxes of one implementation, for tests that cancel or close them; closes them after."""
    build = implementation(request, request.param)
    made: list[SandboxLike] = []

    def make() -> SandboxLike:
        made.append(build(LIMITS).start())
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_it_is_a_sandbox_like(sandbox):
    assert isinstance(sandbox, SandboxLike)
    assert sandbox.limits == LIMITS


def test_the_dpo_seed_passes_sanity_with_a_fingerprint_in_isolation(sandbox):
    result = sandbox.run("sanity", {"source": seed_path("dpo").read_text(), "name": "dpo"})
    assert result.ok, result.failure
    assert len(result.value["fingerprint"]) > 0
    assert result.isolation["audit_hook"] is True


def test_an_infinite_loop_times_out_within_its_wall_limit_and_the_next_job_works(sandbox):
    started = time.monotonic()
    looping = sandbox.run("sanity", {"source": SPINNER})
    assert looping.failure.kind == "timeout"
    assert time.monotonic() - started < LIMITS.wall_seconds + 5  # the kill, not the CPU limit, ended it
    again = sandbox.run("sanity", {"source": seed_path("ipo").read_text(), "name": "ipo"})
    assert again.ok, again.failure


def test_inputs_arrive_read_only_and_named_outputs_come_back_as_bytes(sandbox, tmp_path):
    (tmp_path / "first.txt").write_text("one")
    (tmp_path / "second.txt").write_text("two")
    inputs = {"a.txt": tmp_path / "first.txt", "b.txt": tmp_path / "second.txt"}
    payload = {"source": PROBE.format(names=["a.txt", "b.txt"]), "name": "probe", "unrestricted": True}
    for _ in range(2):  # the second run reuses whatever the first shipped
        result = sandbox.run("sanity", payload, LIMITS, inputs=inputs, outputs=("answer.txt", "missing.txt"))
        seen = json.loads(result.failure.message.removeprefix("RuntimeError: probe:"))
        assert seen == {"a.txt": ["0o444", "one"], "b.txt": ["0o444", "two"]}
        assert result.outputs == {"answer.txt": b"written in the child"}
    (tmp_path / "first.txt").write_text("changed")  # a new version of a file is shipped anew
    result = sandbox.run("sanity", payload, LIMITS, inputs=inputs, outputs=("answer.txt",))
    assert json.loads(result.failure.message.removeprefix("RuntimeError: probe:"))["a.txt"] == ["0o444", "changed"]


def test_the_finetune_job_trains_on_the_shipped_model_and_returns_its_parameters(sandbox, tiny_task, dpo_source):
    spec, options = parse_spec(dpo_source, "dpo"), FinetuneOptions(budget=TINY_BUDGET)
    limits = sandbox_limits(tiny_task, TINY_BUDGET, options, "cpu")
    config = run_config(tiny_task, spec, TINY_BUDGET, options, 0.1, 0, "cpu", "fp32")
    report, parameters = train_in_sandbox(sandbox, spec, tiny_task, config, limits)  # base and pairs go in
    assert report["final_loss"] > 0 and report["train_seconds"] is not None
    base = load_file(str(tiny_task.parameters_file))
    assert set(parameters) == set(base)
    assert any(not parameters[name].equal(base[name]) for name in base)  # it trained the base model it was sent


def test_cancel_kills_a_running_job_and_refuses_new_ones_until_resumed(make_sandbox):
    sandbox = make_sandbox()
    assert sandbox.run("echo", {"n": 1}).ok  # the zygote is up: the spinner below starts at once
    spinner, outcome = run_in_thread(sandbox, "sanity", {"source": SPINNER}, SandboxLimits(wall_seconds=60.0))
    time.sleep(2.0)
    cancelled = time.monotonic()
    sandbox.cancel()
    spinner.join(timeout=15)
    assert not spinner.is_alive() and time.monotonic() - cancelled < 15  # long before its 60 s
    ended = outcome[0]
    assert isinstance(ended, SandboxError) or ended.failure.kind == "crash", ended
    with pytest.raises(SandboxError, match="cancelled"):
        sandbox.run("echo", {})
    sandbox.resume()
    assert sandbox.run("echo", {"n": 3}).value["payload"] == {"n": 3}


def test_closing_twice_is_harmless_and_a_closed_sandbox_runs_again(make_sandbox):
    sandbox = make_sandbox()
    assert sandbox.run("echo", {"n": 1}).ok
    sandbox.close()
    sandbox.close()
    assert sandbox.run("echo", {"n": 2}).value["payload"] == {"n": 2}  # it starts afresh, as a local one does
    sandbox.close()
    sandbox.close()


def test_a_bandit_failure_cancels_the_finetune_beside_it_through_the_interface(sandbox, tiny_task, monkeypatch):
    cancels: list[float] = []
    real_cancel = sandbox.cancel

    def cancel() -> None:
        cancels.append(time.monotonic())
        real_cancel()

    monkeypatch.setattr(sandbox, "cancel", cancel)  # the cascade ran both tiers at once only if it cancels
    bandit_only_nan = textwrap.dedent("""\
        import math
        import torch.nn.functional as F
        def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
            margin = policy_chosen_logps - policy_rejected_logps
            if policy_chosen_logps.shape[0] == 256:
                return margin * math.nan
            return -F.logsigmoid(beta * margin)
        """)
    slow = Budget("slow", steps=30_000, pairs=48, batch_size=4, trials=1, seeds=1, eval_prompts=16)
    started = time.monotonic()
    evaluation = evaluate(bandit_only_nan, "bandit_only_nan", "finetune", sandbox=sandbox,
                          finetune=FinetuneOptions(budget=slow, task_data=tiny_task, device="cpu"))
    assert (evaluation.status, evaluation.tier, evaluation.error.kind) == ("failed", "bandit", "nan")
    assert len(cancels) == 1 and time.monotonic() - started < 60  # 30k steps (minutes) were not trained
    assert sandbox.run("echo", {"n": 4}).ok  # the sandbox takes jobs again
