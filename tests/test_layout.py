"""The layout keeps its promises: the jailed child imports only child-side code, and each fact has one home.

docs/architecture.md draws the packages; these tests hold the two rules it states.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lossearch
from lossearch import choices
from lossearch.sandbox import zygote

PACKAGE = Path(lossearch.__file__).resolve().parent

CHILD_SIDE = frozenset({
    # what the sandbox child runs: the zygote, the jobs, the tiers' training halves
    "lossearch.sandbox.zygote", "lossearch.sandbox.jobs",
    "lossearch.evaluation.bandit.task", "lossearch.evaluation.bandit.train",
    "lossearch.evaluation.finetune.config", "lossearch.evaluation.finetune.device",
    "lossearch.evaluation.finetune.train", "lossearch.evaluation.finetune.stacked", "lossearch.evaluation.threads",
    "lossearch.evaluation.tasks.catalog", "lossearch.evaluation.tasks.text", "lossearch.evaluation.tasks.data",
    "lossearch.evaluation.tasks.lm", "lossearch.evaluation.tasks.llama", "lossearch.evaluation.tasks.labels",
    # what every layer shares: the contract and its vocabularies
    "lossearch.contract", "lossearch.failures", "lossearch.fingerprint", "lossearch.choices", "lossearch.errors",
    "lossearch.progress",
    # packages on the way (their __init__ holds a docstring only)
    "lossearch", "lossearch.sandbox", "lossearch.evaluation", "lossearch.evaluation.bandit",
    "lossearch.evaluation.finetune", "lossearch.evaluation.tasks",
})
"""Every lossearch module the sandbox child may import; the rest (the store, the search, the
reporting, the cascade and the tiers' scoring halves) is the trusted parent's."""


def module_path(name: str) -> Path | None:
    """The file of lossearch module `name`, or None when no such module exists."""
    path = PACKAGE.parent / name.replace(".", "/")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(name: str) -> set[str]:
    """The lossearch modules `name` imports anywhere in its code, function bodies included,
    with the packages on their way."""
    path = module_path(name)
    assert path is not None, name
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package_parts = package.split(".")
                base = ".".join(package_parts[: len(package_parts) - node.level + 1] + ([base] if base else []))
            # `from lossearch.x import y` imports lossearch.x, and lossearch.x.y when y is a module
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names
                                if module_path(f"{base}.{alias.name}") is not None] \
                if base.startswith("lossearch") else [base]
        else:
            continue
        for target in targets:
            if target == "lossearch" or target.startswith("lossearch."):
                parts = target.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def child_closure() -> set[str]:
    """Every lossearch module reachable from what the zygote loads: its preloads, its jobs and their set-up."""
    entry = {"lossearch.sandbox.zygote"} | {m for m in zygote.PRELOAD if m.startswith("lossearch")}
    entry |= {target.split(":")[0] for target in (*zygote.JOB_FUNCTIONS.values(), *zygote.JOB_PREPARE.values())}
    seen: set[str] = set()
    todo = list(entry)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(name) - seen)
    return seen


def test_the_child_imports_nothing_from_the_parents_side():
    closure = child_closure()
    assert closure <= CHILD_SIDE, f"the sandbox child would import parent-side code: {sorted(closure - CHILD_SIDE)}"
    assert {"lossearch.sandbox.jobs", "lossearch.evaluation.finetune.train",
            "lossearch.evaluation.bandit.train"} <= closure


def test_the_zygote_really_loads_only_child_side_modules(sandbox):
    """The same, watched in a running zygote's child (the echo job reports what is loaded)."""
    result = sandbox.run("echo", {"hello": 1})
    assert result.ok, result.failure
    loaded = set(result.value["modules"])
    assert "lossearch.evaluation.finetune.train" in loaded
    assert loaded <= CHILD_SIDE, sorted(loaded - CHILD_SIDE)


PACKAGES_ON_THE_CHILDS_WAY = ["lossearch.sandbox", "lossearch.evaluation", "lossearch.evaluation.bandit",
                              "lossearch.evaluation.finetune", "lossearch.evaluation.tasks"]


@pytest.mark.parametrize("package", PACKAGES_ON_THE_CHILDS_WAY)
def test_packages_on_the_childs_way_import_nothing(package):
    tree = ast.parse(module_path(package).read_text())
    assert all(isinstance(node, ast.Expr) for node in tree.body), f"{package}/__init__.py must hold only its docstring"


SHARED_LISTS = {
    "tiers": choices.TIERS, "tasks": choices.TASK_NAMES, "proposers": choices.PROPOSERS,
    "executors": choices.EXECUTORS, "budgets": choices.BUDGET_NAMES, "data modes": choices.DATA_MODES,
    "precisions": choices.PRECISIONS,
}
HOMES = {"choices.py", "evaluation/tasks/catalog.py", "evaluation/finetune/config.py"}


def literal_strings(node: ast.AST) -> tuple[str, ...] | None:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
            isinstance(element, ast.Constant) and isinstance(element.value, str) for element in node.elts):
        return tuple(sorted(element.value for element in node.elts))  # type: ignore[attr-defined]
    return None


@pytest.mark.parametrize("what", SHARED_LISTS)
def test_each_shared_list_is_written_once(what):
    """No module but the list's home spells out the tiers, tasks, proposers, ... again: they import them."""
    wanted = tuple(sorted(SHARED_LISTS[what]))
    copies = []
    for path in PACKAGE.rglob("*.py"):
        if str(path.relative_to(PACKAGE)) in HOMES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if literal_strings(node) == wanted:
                copies.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not copies, f"the {what} are spelled out again in {copies}; import them from lossearch.choices"


def test_the_cli_offers_exactly_the_shared_choices():
    import typer

    from lossearch.cli import app

    command = typer.main.get_command(app)
    options = {param.name: param for param in command.commands["run"].params}  # type: ignore[attr-defined]
    assert options["task"].metavar == "[" + "|".join(choices.TASK_NAMES) + "]"
    assert options["proposer"].metavar == "[" + "|".join(choices.PROPOSERS) + "]"
    assert options["executor"].metavar == "[" + "|".join(choices.EXECUTORS) + "]"
    assert options["budget"].metavar == "[" + "|".join(choices.BUDGET_NAMES) + "]"
