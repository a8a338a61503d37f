"""The artifact cache: build once, keyed by configuration, safe under concurrent builders.

An artifact is a folder named `{kind}-{key}` under the cache root, where `key` hashes
everything that determines its content. Building takes an exclusive file lock on
`{kind}-{key}.lock`, builds into a private temporary folder and renames it into place,
so a reader sees either no folder or a complete one, and two processes asking for the
same artifact at once build it once: the second waits on the lock, then finds it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# bump when a change of code (not of configuration) changes what an artifact holds
CACHE_VERSION = 1


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $LOSSEARCH_CACHE, else ~/.cache/lossearch."""
    root = cache_dir or os.environ.get("LOSSEARCH_CACHE") or Path.home() / ".cache" / "lossearch"
    return Path(root).expanduser()


def config_key(*configs: Any) -> str:
    """A short stable hash of dataclasses / JSON-able values and the cache version."""
    plain = [dataclasses.asdict(config) if dataclasses.is_dataclass(config) and not isinstance(config, type)
             else config for config in configs]
    text = json.dumps([CACHE_VERSION, plain], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_artifact(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `root/name`, built by `build(folder)` first if it does not exist yet."""
    target = root / name
    if target.is_dir():
        return target
    with locked(root / f"{name}.lock"):
        if target.is_dir():  # another process built it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            build(staging)
            os.rename(staging, target)  # atomic on one filesystem: complete or absent
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def list_artifacts(root: Path) -> list[dict[str, Any]]:
    """Every complete artifact under `root`: name, bytes on disk, and its meta.json if any."""
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        size = sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        found.append({"name": folder.name, "path": str(folder), "bytes": size, "meta": meta})
    return found
