"""Hostile candidate losses (tests/hostile): the cascade classifies each one, the jail contains each one.

Every file in tests/hostile starts with two header lines:

    # expect: KIND      what `evaluate(source, name, "sanity")` reports: static policy, restricted
                        builtins and sandbox together
    # contained: KIND   what the sandbox's sanity job reports with the policy and the restricted
                        builtins bypassed (`unrestricted: True`): the jail on its own. `ok` where
                        the hostile act stays in the child's own memory, `-` where the file does
                        not parse (there is nothing to run)

Files name what they attack through placeholders filled in here: @MARKER_DIR@ (a world-writable
directory outside the sandbox holding victim.txt and secret.txt, so that only the jail, not file
permissions, stands in the way), @TMP@ (the shared temp directory) and @PORT@ (a TCP server on
the host's loopback). Anything a file manages to create is named lossearch-hostile-escape-*.

After every run: the sandbox's working directory is gone, nothing escaped, the server got no
connection, no secret of the parent's reached the result, and the next evaluation (DPO) passes.
"""

from __future__ import annotations

import ast
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import lossearch.evaluation.cascade
from lossearch.evaluation.cascade import evaluate
from lossearch.failures import FAILURE_KINDS
from lossearch.sandbox.local import Sandbox, SandboxLimits
from lossearch.search.seeds import seed_path

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"
HOSTILE_FILES = sorted(HOSTILE_DIR.glob("*.py"))
REPO = Path(__file__).resolve().parent.parent
SYSTEM_TMP = Path(tempfile.gettempdir())
# small limits keep the suite fast; the cascade's sanity tier gets the same ones. The wall clock has room over the
# CPU limit: a memory-hungry loss reached its 1 GiB limit in 1.6-3.3 s here, and at 3 s it was once a timeout
LIMITS = SandboxLimits(wall_seconds=5.0, cpu_seconds=3, memory_bytes=1 << 30)
SECRETS = {"OPENAI_API_KEY": "sk-lossearch-canary-5f1c9e", "MY_SECRET_TOKEN": "tok-lossearch-canary-77ad03"}
VICTIM_TEXT = "the test's file: a hostile loss must not delete or change it\n"
SECRET_TEXT = "canary-file-contents-4b2e91\n"
HEADER = re.compile(r"\A# expect: (\S+)\n# contained: (\S+)\n")


def read_headers(path: Path) -> tuple[str, str]:
    match = HEADER.match(path.read_text())
    if match is None:
        raise AssertionError(f"{path.name} must start with '# expect: KIND' and '# contained: KIND'")
    return match.group(1), match.group(2)


@dataclass
class World:
    """Everything outside the sandbox that a hostile loss might try to touch."""

    sandbox: Sandbox
    workdirs: Path  # where the sandbox makes its working directories (tempfile.tempdir while here)
    markers: Path
    server: socket.socket
    dpo_source: str

    def fill_in(self, source: str) -> str:
        port = str(self.server.getsockname()[1])
        return (source.replace("@MARKER_DIR@", str(self.markers)).replace("@TMP@", str(SYSTEM_TMP))
                .replace("@PORT@", port))


@pytest.fixture(scope="module")
def world():
    workdirs = Path(tempfile.mkdtemp(prefix="lossearch-hostile-tmp-"))
    workdirs.chmod(0o711)  # the child runs as nobody and must reach its own working directory
    markers = Path(tempfile.mkdtemp(prefix="lossearch-hostile-markers-"))
    markers.chmod(0o777)  # world-writable: only the jail keeps a hostile loss out
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)  # before the sandbox's zygote starts
        patch.setattr(tempfile, "tempdir", str(workdirs))
        patch.setattr(lossearch.evaluation.cascade, "SANITY_LIMITS", LIMITS)
        with Sandbox(LIMITS) as sandbox:
            yield World(sandbox, workdirs, markers, server, seed_path("dpo").read_text())
    server.close()
    for path in sorted(markers.glob("*")):
        path.unlink()
    markers.rmdir()
    workdirs.rmdir()  # fails if a sandbox working directory was left behind


def reset_markers(world: World) -> None:
    for path in world.markers.iterdir():
        path.unlink()
    victim = world.markers / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    victim.chmod(0o666)
    (world.markers / "secret.txt").write_text(SECRET_TEXT)
    (world.markers / "secret.txt").chmod(0o644)


def escapes(world: World) -> list[Path]:
    places = (SYSTEM_TMP, REPO, REPO / "lossearch", world.markers, world.workdirs)
    return sorted(path for place in places for path in place.glob("lossearch-hostile-escape*"))


def assert_contained(world: World, outcome: object) -> None:
    """Nothing left behind, nothing escaped, no connection, no secret in the outcome, sandbox still fine."""
    assert list(world.workdirs.glob("lossearch-sandbox-*")) == []
    assert escapes(world) == []
    assert sorted(path.name for path in world.markers.iterdir()) == ["secret.txt", "victim.txt"]
    assert (world.markers / "victim.txt").read_text() == VICTIM_TEXT
    with pytest.raises(BlockingIOError):
        world.server.accept()
    text = repr(outcome)
    assert not any(value in text for value in SECRETS.values()), "a secret of the parent's reached the result"
    assert SECRET_TEXT.strip() not in text, "a file outside the sandbox was read"
    assert evaluate(world.dpo_source, "dpo", "sanity", sandbox=world.sandbox).ok, "the next evaluation failed"


def test_there_are_enough_hostile_files_and_each_has_both_headers():
    assert len(HOSTILE_FILES) >= 30
    for path in HOSTILE_FILES:
        expect, contained = read_headers(path)
        assert expect in FAILURE_KINDS, f"{path.name}: unknown kind {expect!r}"
        assert contained in FAILURE_KINDS + ("ok", "-"), f"{path.name}: unknown kind {contained!r}"
        assert (contained == "-") == (expect == "syntax"), f"{path.name}: `-` is for files that do not parse"


@pytest.mark.parametrize("path", HOSTILE_FILES, ids=lambda path: path.stem)
def test_the_cascade_classifies_the_hostile_loss(world, path):
    expect, _ = read_headers(path)
    reset_markers(world)
    evaluation = evaluate(world.fill_in(path.read_text()), path.stem, "sanity", sandbox=world.sandbox)
    assert not evaluation.ok and evaluation.error.kind == expect, evaluation.error
    assert_contained(world, evaluation)


@pytest.mark.parametrize("path", HOSTILE_FILES, ids=lambda path: path.stem)
def test_the_jail_alone_contains_the_hostile_loss(world, path):
    _, contained = read_headers(path)
    reset_markers(world)
    source = world.fill_in(path.read_text())
    if contained == "-":
        with pytest.raises(SyntaxError):
            ast.parse(source)
        return
    payload = {"source": source, "name": path.stem, "unrestricted": True}
    result = world.sandbox.run("sanity", payload, LIMITS)
    assert (result.failure.kind if result.failure else "ok") == contained, result.failure
    assert_contained(world, result)


def test_no_secret_is_in_the_child_environment(world):
    source = world.fill_in((HOSTILE_DIR / "read_env_secrets.py").read_text())
    result = world.sandbox.run("sanity", {"source": source, "name": "env", "unrestricted": True}, LIMITS)
    assert result.failure.message == "RuntimeError: secrets found: []"  # it ran and found nothing

