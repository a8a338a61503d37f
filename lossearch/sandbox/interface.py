"""What a sandbox offers, whatever runs it: the interface, its limits, its results.

A sandbox runs trusted job code (lossearch.sandbox.jobs) on an untrusted candidate in a
jailed child process and says how it ended. Two implementations keep this contract:
`lossearch.sandbox.local.Sandbox` (a zygote on this machine) and
`lossearch.sandbox.ray_sandbox.RaySandbox` (the same, owned by a Ray actor on a worker
node). tests/test_sandbox_interface.py runs one suite against both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lossearch.failures import CandidateError, Failure


@dataclass(frozen=True)
class SandboxLimits:
    """What one child may use before it is stopped."""

    wall_seconds: float = 20.0
    """Wall-clock limit; the whole process group is killed when it passes."""
    cpu_seconds: int = 60
    """CPU-time limit (RLIMIT_CPU), summed over the child's threads."""
    memory_bytes: int = 2 << 30
    """Address space the child may add on top of what the zygote already maps (RLIMIT_AS)."""
    file_bytes: int = 64 << 20
    """Largest file the child may write (RLIMIT_FSIZE)."""
    max_processes: int = 256
    """Processes and threads of the sandbox user (RLIMIT_NPROC): a fork bomb stops here."""
    threads: int = 1
    """Torch intra-op threads in the child."""
    result_bytes: int = 32 << 20
    """Largest result the child may send back; more is a `crash`."""

    def __post_init__(self) -> None:
        if self.wall_seconds <= 0 or self.cpu_seconds <= 0:
            raise ValueError("wall_seconds and cpu_seconds must be positive")
        if self.memory_bytes < 64 << 20 or self.file_bytes < 1 << 16:
            raise ValueError("memory_bytes must be at least 64 MiB and file_bytes at least 64 KiB")
        if self.max_processes < 8 or self.threads < 1:
            raise ValueError("max_processes must be at least 8 and threads at least 1")


@dataclass(frozen=True)
class SandboxResult:
    """How one job ended: a value, or a classified failure."""

    value: Any = None
    failure: Failure | None = None
    seconds: float = 0.0
    isolation: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    """{name: bytes} of the files named in `run(outputs=...)` that the child left in its workdir."""

    @property
    def ok(self) -> bool:
        return self.failure is None

    def raise_for_failure(self) -> None:
        """Raise the candidate's failure as a CandidateError, for tier code that stops at it."""
        if self.failure is not None:
            raise CandidateError(self.failure.kind, self.failure.message)


class SandboxError(RuntimeError):
    """The sandbox itself (not a candidate) broke: the zygote died or would not start."""



@runtime_checkable
class SandboxLike(Protocol):
    """The interface every sandbox implements; the cascade and the campaign take any of them."""

    limits: SandboxLimits
    """The limits a job gets when `run` is given none."""

    def start(self) -> "SandboxLike":
        """Begin starting whatever runs the jobs, without waiting for it; `run` starts it otherwise."""
        ...

    def run(self, job: str, payload: dict, limits: SandboxLimits | None = None, *,
            inputs: Mapping[str, str | os.PathLike] | None = None, outputs: Sequence[str] = ()) -> SandboxResult:
        """Run `job` on `payload` in a jailed child; `inputs` ({name: path}) are copied read-only
        into its working directory first, the files named in `outputs` come back as bytes."""
        ...

    def cancel(self) -> None:
        """Kill every job running now and refuse new ones until `resume`; callable from any thread."""
        ...

    def resume(self) -> None:
        """Take jobs again after `cancel`."""
        ...

    def close(self) -> None:
        """Stop everything the sandbox started; closing twice does nothing."""
        ...

    def __enter__(self) -> "SandboxLike":
        ...

    def __exit__(self, *exc: object) -> None:
        ...
