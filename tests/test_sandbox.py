"""The jail itself (lossearch.sandbox.local, lossearch.sandbox.zygote), probed from inside a real child.

A probe is an unrestricted candidate (no AST policy, full builtins) whose loss raises
`RuntimeError("probe:" + json)`: the JSON is what the child saw, and it comes back as the
failure's message through the same path every result takes.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import run_in_thread

from lossearch.evaluation.bandit.score import score_bandit_grid
from lossearch.evaluation.bandit.task import make_bandit_task
from lossearch.evaluation.cascade import evaluate
from lossearch.sandbox.local import SECRET_MARKERS, Sandbox, SandboxLimits, clean_environment
from lossearch.search.seeds import seed_path

LIMITS = SandboxLimits(wall_seconds=3.0, cpu_seconds=3, memory_bytes=1 << 30)
SECRETS = {"OPENAI_API_KEY": "sk-lossearch-canary-5f1c9e", "MY_SECRET_TOKEN": "tok-lossearch-canary-77ad03",
           "DB_PASSWORD": "pw-lossearch-canary-0c1d"}
DPO = seed_path("dpo").read_text()
PROBE = '''
import json, os, stat, sys
import torch
import torch.nn.functional as F

def report():
{body}

def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    raise RuntimeError("probe:" + json.dumps(report()))
'''


@pytest.fixture(scope="module")
def sandbox():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)  # the parent has secrets when the zygote starts
        with Sandbox(LIMITS) as shared:
            yield shared


def unrestricted(source: str, name: str = "candidate") -> dict:
    return {"source": source, "name": name, "unrestricted": True}


def probe(sandbox: Sandbox, body: str):
    """Run `body` (the statements of a function returning something JSON-able) in a child."""
    source = PROBE.format(body=textwrap.indent(textwrap.dedent(body).strip(), "    "))
    result = sandbox.run("sanity", unrestricted(source, "probe"), LIMITS)
    assert result.failure is not None and result.failure.message.startswith("RuntimeError: probe:"), result
    return json.loads(result.failure.message.removeprefix("RuntimeError: probe:"))


def dpo_fingerprint(sandbox: Sandbox) -> list[float]:
    evaluation = evaluate(DPO, "dpo", "sanity", sandbox=sandbox)
    assert evaluation.ok, evaluation.error
    return evaluation.metrics["sanity"]["fingerprint"]


def looks_secret(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS + ("PASSWORD",))


# -- environment, working directory, descriptors ---------------------------------------------

def test_the_child_environment_has_no_secrets(sandbox):
    seen = probe(sandbox, "return {'environ': dict(os.environ), 'zygote': os.getppid()}")
    assert not [name for name in seen["environ"] if looks_secret(name)]
    assert not set(SECRETS.values()) & set(seen["environ"].values())
    # the zygote the child was forked from never had them either (its /proc environ is the original block)
    zygote_environ = Path(f"/proc/{seen['zygote']}/environ").read_bytes().decode(errors="replace")
    assert not any(value in zygote_environ for value in SECRETS.values())


def test_clean_environment_keeps_no_secret_even_on_the_allow_list(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/opt/x")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    env = clean_environment()
    assert not [name for name in env if looks_secret(name)]
    assert env["PYTHONPATH"].endswith("/opt/x")


def test_the_child_works_in_a_fresh_directory_that_is_removed_afterwards(sandbox):
    body = "return {'cwd': os.getcwd(), 'entries': sorted(os.listdir('.')), 'home': os.environ.get('HOME')}"
    first, second = probe(sandbox, body), probe(sandbox, body)
    assert first["cwd"] != second["cwd"]
    for seen in (first, second):
        assert Path(seen["cwd"]).name.startswith("lossearch-sandbox-")
        assert Path(seen["cwd"]).parent == Path(tempfile.gettempdir()).resolve()
        assert seen["entries"] == [".child.log"] and Path(seen["home"]).resolve() == Path(seen["cwd"])
        assert not Path(seen["cwd"]).exists()


def test_the_child_holds_no_descriptor_but_its_result_pipe(sandbox):
    seen = probe(sandbox, """
        fds = []
        for fd in range(256):
            try:
                fds.append([fd, stat.S_ISFIFO(os.fstat(fd).st_mode)])
            except OSError:
                pass
        return fds
    """)
    assert [fd for fd, _ in seen][:3] == [0, 1, 2]
    assert [is_pipe for fd, is_pipe in seen[3:]] == [True], "only the result pipe: not the zygote's protocol pipe"


def test_a_sandbox_started_early_does_not_wait_for_its_zygote():
    with Sandbox() as sandbox:
        sandbox.start()  # returns without reading the zygote's "ready": it imports torch meanwhile
        assert not sandbox._ready and sandbox._zygote.poll() is None
        assert sandbox.run("echo", {"x": 1}).value["payload"] == {"x": 1}
        assert sandbox._ready


def test_a_zygote_that_died_between_jobs_is_replaced_and_its_pipes_closed():
    with Sandbox(LIMITS) as sandbox:
        assert sandbox.run("echo", {"x": 1}).ok
        descriptors = sorted(os.listdir("/proc/self/fd"))
        dead = sandbox._zygote.pid
        os.kill(dead, signal.SIGKILL)
        while sandbox._zygote.poll() is None:
            time.sleep(0.01)
        assert sandbox.run("echo", {"x": 2}).value["payload"] == {"x": 2}
        assert sandbox._zygote.pid != dead
        assert sorted(os.listdir("/proc/self/fd")) == descriptors  # the new zygote's pipes took the old ones' place


def test_isolation_is_reported(sandbox):
    result = sandbox.run("echo", {"hello": [1, 2]}, LIMITS)
    assert result.ok and result.value["payload"] == {"hello": [1, 2]}
    assert result.isolation["network"] in ("network-namespace", "audit-hook")
    assert result.isolation["audit_hook"] is True
    assert result.isolation["user"] == ("nobody" if os.geteuid() == 0 else "same")
    assert result.isolation["seccomp"] is (os.uname().machine in ("x86_64", "aarch64"))


# -- limits and the process group ------------------------------------------------------------

def alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2:].split()[0] != "Z"


def processes_under(root: int) -> set[int]:
    """Live (non-zombie) descendants of `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        try:
            text = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, frontier = set(), [root]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found.update(frontier)
    return found


GRANDCHILD = '''
import os, time, _posixsubprocess
import torch.nn.functional as F

def linger():
    for fd in range(3, 256):  # let the zygote see the child's result pipe close
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.setsid()  # escape the process group (seccomp refuses)
    except OSError:
        pass
    time.sleep(600)

forked = []


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    # once per child: the sanity tier calls the loss dozens of times (its fingerprint alone at 9 betas)
    if not forked:
        forked.append(True)
        # _posixsubprocess.fork_exec raises no audit event; preexec_fn runs in the forked grandchild
        read_end, write_end = os.pipe()
        _posixsubprocess.fork_exec([b"/bin/true"], (b"/bin/true",), False, (), None, None, -1, -1, -1, -1, -1, -1,
                                   read_end, write_end, False, False, -1, None, None, None, -1, linger, False)
        os.close(read_end)
        os.close(write_end)
        time.sleep(SLEEP)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
'''


@pytest.mark.parametrize("sleep, kind", [(600, "timeout"), (0.5, None)], ids=["timed-out", "finished"])
def test_nothing_the_child_started_outlives_it(sandbox, sleep, kind):
    zygote = probe(sandbox, "return os.getppid()")
    seen: set[int] = set()
    running = True

    def watch():
        while running:
            seen.update(processes_under(zygote))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = sandbox.run("sanity", unrestricted(GRANDCHILD.replace("SLEEP", str(sleep))), LIMITS)
    finally:
        running = False
        watcher.join()
    assert (result.failure.kind if result.failure else None) == kind, result.failure
    assert len(seen) >= 2, "the child and its grandchild were both seen running"
    deadline = time.monotonic() + 2
    while any(map(alive, seen)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in seen if alive(pid)] == []  # a grandchild no longer under the zygote included


def test_cpu_time_limit_is_a_timeout(sandbox):
    busy = "def loss(policy_chosen_logps):\n    while True:\n        pass\n"
    limits = SandboxLimits(wall_seconds=30.0, cpu_seconds=1)
    started = time.monotonic()
    result = sandbox.run("sanity", unrestricted(busy), limits)
    assert result.failure.kind == "timeout" and "CPU" in result.failure.message
    assert time.monotonic() - started < 10


def test_an_oversize_result_is_a_crash(sandbox):
    limits = SandboxLimits(wall_seconds=10.0, cpu_seconds=10, result_bytes=1 << 16)
    result = sandbox.run("echo", {"blob": "x" * (1 << 17)}, limits)
    assert result.failure.kind == "crash" and "oversize" in result.failure.message
    assert sandbox.run("echo", {"small": 1}, LIMITS).ok


# -- what a candidate changes stays in its child -----------------------------------------------

PATCHER = '''
import sys
import torch
import torch.nn.functional as F

def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    torch.sigmoid = lambda x: x * 0 + 0.5
    F.logsigmoid = lambda x: x * 0
    torch.Tensor.mean = lambda self, *args, **kwargs: self.sum() * 0
    sys.modules["lossearch.sandbox.jobs"].check_namespaces = lambda before: None  # disarm the check in this child
    return -torch.log(torch.sigmoid(beta * (policy_chosen_logps - policy_rejected_logps)))
'''


def test_a_monkey_patch_stays_in_its_child(sandbox):
    originals = (torch.sigmoid, F.logsigmoid, torch.Tensor.mean)
    before = dpo_fingerprint(sandbox)
    sandbox.run("sanity", unrestricted(PATCHER), LIMITS)
    assert (torch.sigmoid, F.logsigmoid, torch.Tensor.mean) == originals  # the parent
    assert dpo_fingerprint(sandbox) == before  # the next child, forked from the same zygote


def test_a_monkey_patch_that_makes_a_check_fail_is_refused_as_such(sandbox):
    mean_patch = PATCHER.replace('    sys.modules["lossearch.sandbox.jobs"].check_namespaces = lambda before: None', "")
    result = sandbox.run("sanity", unrestricted(mean_patch), LIMITS)
    assert result.failure.kind == "policy" and "modified" in result.failure.message


SCORE_PATCHER = '''
import sys
import torch
import torch.nn.functional as F

def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    bandit = sys.modules["lossearch.evaluation.bandit"]
    perfect = {"reward": 1e9, "reference_reward": 0.0, "kl": 0.0, "pref_acc": 1.0, "fitness": 1e9}
    bandit.score_bandit = lambda task, logits: dict(perfect)
    bandit.score_bandit_grid = lambda task, logits: {"task": task.name, "seed": task.seed, "beta": 0.1, **perfect}
    torch.optim.Adam.step = lambda self, closure=None: None
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin)
'''


def test_a_candidate_cannot_change_its_score_but_through_its_gradients(sandbox):
    honest = evaluate(DPO, "dpo", "bandit", sandbox=sandbox)
    assert honest.ok, honest.error
    result = sandbox.run("bandit", unrestricted(SCORE_PATCHER) | {"task": "sentiment", "seed": 0},
                         SandboxLimits(wall_seconds=60.0, cpu_seconds=60))
    assert result.ok, result.failure
    # the parent scores the returned logits with its own code, as the bandit tier does
    task = make_bandit_task("sentiment", 0)
    scored = score_bandit_grid(task, {float(beta): logits for beta, logits in result.value["logits"].items()})
    assert scored["fitness"] == pytest.approx(honest.metrics["bandit"]["fitness"], abs=1e-9)
    assert scored["fitness"] < 1e9


# -- jobs side by side ---------------------------------------------------------------------------

SPINNER = "def loss(policy_chosen_logps):\n    while True:\n        pass\n"
PIPE_CLOSER = '''
import os, time

def loss(policy_chosen_logps):
    os.closerange(3, 1024)  # the result pipe among them: the zygote sees end-of-file, the child lives on
    time.sleep(600)
'''


def wait_for_child(sandbox: Sandbox) -> int:
    """The pid of a child the sandbox is running, once one exists."""
    while not any(sandbox._running.values()):
        time.sleep(0.01)
    return next(pid for pid in sandbox._running.values() if pid)


def test_jobs_from_two_threads_run_side_by_side():
    with Sandbox(LIMITS) as sandbox:
        slow, slow_outcome = run_in_thread(sandbox, "sanity", unrestricted(SPINNER), LIMITS)  # spins until killed
        wait_for_child(sandbox)
        quick = sandbox.run("echo", {"n": 1}, LIMITS)
        assert quick.value["payload"] == {"n": 1}
        assert slow.is_alive(), "the echo job ended while the spinning one still ran"
        slow.join()
        assert slow_outcome[0].failure.kind == "timeout"
        assert sandbox.run("echo", {"n": 2}, LIMITS).ok


def test_a_child_that_closes_its_pipe_and_lives_on_blocks_no_other_job():
    with Sandbox(LIMITS) as sandbox:
        closer, closer_outcome = run_in_thread(sandbox, "sanity", unrestricted(PIPE_CLOSER), LIMITS)
        time.sleep(0.3)  # it has closed its pipe by now and sleeps
        assert sandbox.run("echo", {"n": 1}, LIMITS).ok  # the zygote still serves
        closer.join()
        assert closer_outcome[0].failure.kind == "timeout"  # its end reported once the wall-clock kill came


def test_cancel_kills_running_jobs_and_refuses_new_ones_until_resumed():
    from lossearch.sandbox.local import SandboxError

    with Sandbox(LIMITS) as sandbox:
        spinner, outcome = run_in_thread(sandbox, "sanity", unrestricted(SPINNER), SandboxLimits(wall_seconds=60.0))
        wait_for_child(sandbox)
        sandbox.cancel()
        spinner.join(timeout=10)
        assert not spinner.is_alive() and outcome[0].failure.kind == "crash"  # killed long before its 60 s
        with pytest.raises(SandboxError, match="cancelled"):
            sandbox.run("echo", {}, LIMITS)
        sandbox.resume()
        assert sandbox.run("echo", {"n": 3}, LIMITS).value["payload"] == {"n": 3}


def hold_pipe_open(pid: int, our_end: int) -> int:
    """A descriptor, writing into the pipe whose other end is `our_end`, opened through process
    `pid`'s own end of it: the pipe then stays open, whatever `pid` does."""
    pipe = os.readlink(f"/proc/self/fd/{our_end}")
    for name in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{name}") == pipe:
            return os.open(f"/proc/{pid}/fd/{name}", os.O_WRONLY)
    raise AssertionError(f"process {pid} holds no end of {pipe}")


def test_closing_a_sandbox_wakes_its_reader_even_when_no_end_of_file_comes():
    """A child forked a moment before `close` may still hold the zygote's end of the pipe, so the
    zygote's death need not reach a thread waiting on the pipe as end-of-file."""
    from lossearch.sandbox.local import SandboxError

    sandbox = Sandbox(LIMITS)
    spinner, outcome = run_in_thread(sandbox, "sanity", unrestricted(SPINNER), SandboxLimits(wall_seconds=60.0))
    wait_for_child(sandbox)
    writer = hold_pipe_open(sandbox._zygote.pid, sandbox._zygote.stdout.fileno())
    try:
        time.sleep(0.2)  # the thread running the job now waits in select() for its end
        sandbox.close()
        spinner.join(timeout=10)
        assert not spinner.is_alive() and isinstance(outcome[0], SandboxError)
    finally:
        os.close(writer)
        spinner.join()


def test_closing_a_sandbox_ends_the_children_it_is_running():
    from lossearch.sandbox.local import SandboxError

    sandbox = Sandbox(LIMITS)
    spinner, outcome = run_in_thread(sandbox, "sanity", unrestricted(SPINNER), SandboxLimits(wall_seconds=60.0))
    child = wait_for_child(sandbox)
    sandbox.close()  # what Ctrl-C on a command does through its `with Sandbox()`
    spinner.join(timeout=10)
    assert not spinner.is_alive() and isinstance(outcome[0], SandboxError)
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)  # killed, though its own session kept it out of the zygote's group
