"""The seed library's cheap evaluations, kept across campaigns (TRUSTED: the parent's side).

Every campaign opens by running each seed loss through the sanity and bandit tiers: the same code,
task and seed, campaign after campaign. Both tiers are deterministic (fixed synthetic inputs, one
torch thread, seeded training), so their metrics are kept under the cache root, keyed by all they
depend on: the loss's code, the tier, task and seed, the executor, torch's version and the CPU's
kernel family, and lossearch's own source. A change of any of them is a new key, never a stale
value. A reused evaluation says so in its metrics (`memo`). Failures are not kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

MEMO_TIERS = ("sanity", "bandit")
"""The tiers whose seed evaluations are kept: the finetune tier's depend on a task artifact and a device."""


@lru_cache(maxsize=1)
def evaluator_version() -> str:
    """A hash of lossearch's source, torch's version and the CPU kernels torch uses here."""
    import torch

    digest = hashlib.sha256(f"{torch.__version__} {platform.machine()} "
                            f"{torch.backends.cpu.get_cpu_capability()}".encode())
    package = Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def memo_path(root: Path, code_hash: str, tier: str, task: str, seed: int, executor: str) -> Path:
    key = hashlib.sha256(json.dumps([code_hash, tier, task, seed, executor, evaluator_version()]).encode())
    return root / "evaluations" / f"{tier}-{key.hexdigest()[:24]}.json"


def recall_or_run(root: Path, code_hash: str, tier: str, task: str, seed: int, executor: str,
                  run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The kept metrics of this evaluation, or `run()`'s, kept before they are returned."""
    path = memo_path(root, code_hash, tier, task, seed, executor)
    try:
        return {**json.loads(path.read_text()), "memo": path.stem}
    except (OSError, ValueError):  # not kept yet, or a file another process is replacing: run it
        pass
    metrics = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.stem}-", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        json.dump(metrics, out)
    os.replace(staging, path)  # atomic: a reader sees the old file, the new one or none
    return metrics
