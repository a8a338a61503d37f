"""The Ray executor: candidate evaluations run on a Ray cluster, still inside the sandbox.

A `RaySandbox` has the `Sandbox` interface (`run`, `close`, `limits`), but its
`run` is executed by a Ray actor that owns an ordinary `Sandbox` on a worker
node: the zygote, the jail and every limit of DESIGN §3 apply there as here.
The campaign driver stays one process that owns the store; only jobs and their
JSON results cross the cluster. Each actor asks for one GPU where the cluster
has GPUs, one CPU otherwise.

Ray is an optional extra: `pip install "lossearch[ray]"`.
"""

from __future__ import annotations

from typing import Any

from lossearch.errors import UserError
from lossearch.sandbox.interface import SandboxLimits, SandboxResult
from lossearch.sandbox.local import Sandbox

INSTALL_HINT = 'the ray executor needs Ray: pip install "lossearch[ray]"'


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


class _SandboxActor:
    """Lives on a Ray worker; owns a local Sandbox (and so a zygote there)."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.sandbox = Sandbox(limits)

    def run(self, job: str, payload: dict, limits: SandboxLimits | None) -> SandboxResult:
        return self.sandbox.run(job, payload, limits)

    def close(self) -> None:
        self.sandbox.close()


class RaySandbox:
    """A Sandbox whose jobs run on a Ray worker node."""

    def __init__(self, limits: SandboxLimits | None = None, address: str | None = None) -> None:
        ray = _ray()
        resources = connect(address)
        self.limits = limits or SandboxLimits()
        actor_class = ray.remote(**worker_resources(resources))(_SandboxActor)
        self._actor: Any = actor_class.remote(self.limits)

    def run(self, job: str, payload: dict, limits: SandboxLimits | None = None) -> SandboxResult:
        """Run `job` in a jailed child on the actor's node; the same result a local Sandbox gives."""
        ray = _ray()
        return ray.get(self._actor.run.remote(job, payload, limits))

    def close(self) -> None:
        if self._actor is not None:
            ray = _ray()
            try:
                ray.get(self._actor.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a dead actor has nothing left to close
                pass
            ray.kill(self._actor)
            self._actor = None

    def __enter__(self) -> "RaySandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
