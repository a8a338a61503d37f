"""The seed library: the known losses of the DPO family, one module each.

The modules live in the repository's top-level `seeds/` folder and are copied
into the wheel as `lossearch/seeds/`, so an installed package finds them too.
"""

from __future__ import annotations

from pathlib import Path

from lossearch.contract import LossSpec, read_spec

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # lossearch/


def seeds_dir() -> Path:
    """The folder holding the seed modules: inside the installed package, else the checkout's."""
    for candidate in (_PACKAGE_DIR / "seeds", _PACKAGE_DIR.parent / "seeds"):
        if candidate.is_dir() and any(candidate.glob("*.py")):
            return candidate
    raise FileNotFoundError("the seed library is missing: reinstall lossearch (`pip install .`)")


def seed_paths() -> list[Path]:
    """Every seed module, sorted by name."""
    return sorted(path for path in seeds_dir().glob("*.py") if not path.name.startswith("_"))


def load_seed_specs() -> list[LossSpec]:
    """The contract of every seed, read without executing any of them."""
    return [read_spec(path) for path in seed_paths()]


def seed_path(name: str) -> Path:
    """The module of the seed called `name` (e.g. "dpo")."""
    path = seeds_dir() / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no seed called {name!r}")
    return path
