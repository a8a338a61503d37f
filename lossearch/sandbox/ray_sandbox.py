"""The Ray executor: candidate evaluations run on a Ray cluster, still inside the sandbox.

A `RaySandbox` implements `SandboxLike`, but its jobs are run by a Ray actor that owns an
ordinary `Sandbox` on a worker node: the zygote, the jail and every limit of DESIGN §3
apply there as here. The campaign driver stays one process that owns the store; only jobs,
their input files and their results cross the cluster:

- input files (the base model's parameters, the pairs) are read on the driver, put in
  Ray's object store once per file version (path, size and mtime), and fetched by the
  actor only the first time it sees that version; it keeps them in a folder of its own
  for the runs that follow, so a campaign's hundreds of runs ship its two files once;
- the output files come back as bytes in `SandboxResult.outputs`, as locally;
- the actor is threaded (`max_concurrency`), so a `cancel` reaches it while a job runs,
  and the cascade's bandit and finetune jobs run side by side there.

Each actor asks for one GPU where the cluster has GPUs, one CPU otherwise.
Ray is an optional extra: `pip install "lossearch[ray]"`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lossearch.errors import UserError
from lossearch.sandbox.interface import SandboxError, SandboxLimits, SandboxResult
from lossearch.sandbox.local import Sandbox

INSTALL_HINT = 'the ray executor needs Ray: pip install "lossearch[ray]"'
ACTOR_CONCURRENCY = 8
"""Calls one actor serves at once: side-by-side jobs, and a cancel or resume while they run."""
CONTROL_TIMEOUT = 30.0
"""Seconds a cancel, resume or close waits for the actor before giving up on it."""


class RayUnavailable(UserError):
    """Ray is not installed, or the cluster cannot be reached."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable(INSTALL_HINT) from None
    return ray


def connect(address: str | None = None) -> dict[str, float]:
    """Join the cluster at `address`, or start a local Ray instance; return its resources."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = address or "a local instance"
            raise RayUnavailable(f"cannot reach the Ray cluster at {where}: {error}") from None
    return dict(ray.cluster_resources())


def worker_resources(resources: dict[str, float]) -> dict[str, float]:
    """What one evaluation actor asks for: a GPU where the cluster has them, else a CPU."""
    return {"num_gpus": 1, "num_cpus": 1} if resources.get("GPU", 0) >= 1 else {"num_cpus": 1}


def file_version(path: str | os.PathLike) -> str:
    """A name for this version of the file at `path`: its real path, size and mtime, hashed."""
    real = os.path.realpath(path)
    info = os.stat(real)
    return hashlib.sha256(f"{real}\0{info.st_size}\0{info.st_mtime_ns}".encode()).hexdigest()[:32]


class _SandboxActor:
    """Lives on a Ray worker; owns a local Sandbox (and so a zygote there) and its input files."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.sandbox = Sandbox(limits)
        self.folder = tempfile.mkdtemp(prefix="lossearch-ray-inputs-")
        self.files: dict[str, str] = {}  # file version -> its copy in `folder`
        self.fetching = threading.Lock()  # one thread fetches a version; the others wait for it

    def start(self) -> None:
        self.sandbox.start()

    def run(self, job: str, payload: dict, limits: SandboxLimits | None, inputs: dict[str, tuple[str, list]],
            outputs: Sequence[str]) -> SandboxResult:
        local = {name: self.local_copy(version, holder) for name, (version, holder) in inputs.items()}
        return self.sandbox.run(job, payload, limits, inputs=local, outputs=outputs)

    def local_copy(self, version: str, holder: list) -> str:
        """This node's copy of a file version; `holder` is [the object ref of its bytes], fetched
        only when the version is new here (a ref inside a list is not fetched by Ray itself)."""
        with self.fetching:
            if version not in self.files:
                import ray

                path = os.path.join(self.folder, version)
                Path(path + ".part").write_bytes(ray.get(holder[0]))
                os.replace(path + ".part", path)  # a half-written copy is never taken for the file
                self.files[version] = path
            return self.files[version]

    def cancel(self) -> None:
        self.sandbox.cancel()

    def resume(self) -> None:
        self.sandbox.resume()

    def close(self) -> None:
        self.sandbox.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.files.clear()


class RaySandbox:
    """A sandbox whose jobs run on a Ray worker node; see the module docstring."""

    def __init__(self, limits: SandboxLimits | None = None, address: str | None = None) -> None:
        ray = _ray()
        self.limits = limits or SandboxLimits()
        self._actor_class = ray.remote(max_concurrency=ACTOR_CONCURRENCY,
                                       **worker_resources(connect(address)))(_SandboxActor)
        self._lock = threading.Lock()
        self._actor: Any = None
        self._shipped: dict[str, tuple[str, Any]] = {}  # real path -> (file version, object ref of its bytes)
        self._cancelled = False
        self._live_actor()  # asks the cluster for a worker now; its start-up overlaps the caller's

    def __enter__(self) -> "RaySandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live_actor(self) -> Any:
        """The actor, created anew after a `close` (a local Sandbox restarts its zygote alike)."""
        with self._lock:
            if self._actor is None:
                self._actor = self._actor_class.remote(self.limits)
            return self._actor

    def start(self) -> "RaySandbox":
        """Start the actor's zygote, without waiting for it."""
        self._live_actor().start.remote()
        return self

    def run(self, job: str, payload: dict, limits: SandboxLimits | None = None, *,
            inputs: Mapping[str, str | os.PathLike] | None = None, outputs: Sequence[str] = ()) -> SandboxResult:
        """Run `job` in a jailed child on the actor's node; the same result a local Sandbox gives.

        `inputs` ({name: path on this machine}) are shipped to the actor's node (once per file
        version) and copied read-only into the child's working directory there.
        """
        if self._cancelled:
            raise SandboxError("the sandbox's jobs were cancelled")
        shipped = {name: self._ship(path) for name, path in (inputs or {}).items()}
        actor = self._live_actor()
        return self._wait(actor.run.remote(job, payload, limits, shipped, tuple(outputs)))

    def _ship(self, path: str | os.PathLike) -> tuple[str, list]:
        """(file version, [object ref of its bytes]); the file is put in the object store once per version."""
        ray = _ray()
        real, version = os.path.realpath(path), file_version(path)
        with self._lock:
            known = self._shipped.get(real)
            if known is None or known[0] != version:  # new, or changed since: the old bytes are let go
                known = self._shipped[real] = (version, ray.put(Path(real).read_bytes()))
        return known[0], [known[1]]

    def _wait(self, reference: Any, timeout: float | None = None) -> Any:
        """The value of an actor call; its failures become the ones a local Sandbox raises."""
        ray = _ray()
        try:
            return ray.get(reference, timeout=timeout)
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            raise (cause if isinstance(cause, Exception) else SandboxError(str(cause))) from None
        except ray.exceptions.RayActorError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else "no reason given"
            raise SandboxError(f"the sandbox's Ray actor died: {first_line}") from None
        except ray.exceptions.GetTimeoutError:
            raise SandboxError(f"the sandbox's Ray actor did not answer within {timeout:g} s") from None

    def cancel(self) -> None:
        """Kill the jobs the actor runs now and refuse new ones until `resume`; callable from any thread."""
        self._cancelled = True
        self._control("cancel")

    def resume(self) -> None:
        """Take jobs again after `cancel`."""
        self._cancelled = False
        self._control("resume")

    def _control(self, method: str) -> None:
        actor = self._actor
        if actor is not None:
            try:
                self._wait(getattr(actor, method).remote(), CONTROL_TIMEOUT)
            except SandboxError:  # a dead actor runs nothing and will be replaced by the next run
                pass

    def close(self) -> None:
        """Stop the actor (its zygote, its children, its copies of the inputs); twice does nothing."""
        with self._lock:
            actor, self._actor = self._actor, None
            self._shipped.clear()
        if actor is None:
            return
        ray = _ray()
        if not ray.is_initialized():  # Ray shut down first: its actors went with it
            return
        try:
            self._wait(actor.close.remote(), CONTROL_TIMEOUT)
        except Exception:  # noqa: BLE001 - a dead actor has nothing left to close
            pass
        ray.kill(actor)
