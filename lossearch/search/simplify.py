"""Simplifying a child before it is stored: one-use helpers inlined, terms that change nothing dropped.

A crossover of crossovers nests helper inside helper, and a term weighted down to nothing keeps
its hyperparameter. Before a child is stored, its one-use helpers are inlined (below); then each
of its additive terms (and length normalizations) is dropped in turn, and a drop is kept when the
child's fingerprint stays within the same-loss distance (lossearch.fingerprint.same_loss, which
sees through a rescaled beta), so the stored code says the same loss in fewer words. The
fingerprint is the sanity tier's, computed in the sandbox like every run of candidate code. What
the edits leave unused (hyperparameters, helpers, assignments) is pruned.

Inlining (`inline_helpers`, one fingerprint check for all of it): a crossover calls each parent
as a helper with every input spelled out as a keyword, and a crossover of crossovers nests them,
so the loss is read across three functions that repeat the margin. A helper whose body is
assignments then one `return`, called once in an assignment or a `return` (`x = helper(...)`,
`return a + w * helper(...)`), is spliced in just before that statement and its result put in the
call's place: its parameters become the arguments (an argument that is not a plain name, or a
parameter the helper reassigns, is bound once first; a parameter left to its default becomes that
constant), its own names are renamed apart from the caller's, and a value the caller already
computed under another name (the margin) is reused (`merge_repeated`). The inlined module is kept
only when its fingerprint is the same loss, so a spelling the inliner got wrong never replaces
the child.
"""

from __future__ import annotations

import ast
import copy
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from lossearch.failures import CandidateError
from lossearch.fingerprint import same_loss
from lossearch.policy import check_policy
from lossearch.search.proposers import syntax
from lossearch.search.proposers.mutation import drop_term, term_drops
from lossearch.search.proposers.syntax import LossModule

Fingerprinter = Callable[[str], Optional[Sequence[float]]]
"""A module's source -> its fingerprint, or None when it fails the sanity tier."""

MAX_CHECKS = 8
"""Fingerprints a child's simplification may compute (each a sandboxed sanity run, ~0.1 s here)."""


@dataclass(frozen=True)
class Simplified:
    source: str
    dropped: tuple[str, ...]
    """One line per term dropped, as `remove_term` describes it."""
    checks: int
    """Fingerprints computed."""


def simplify_child(source: str, name: str, fingerprint_of: Fingerprinter, max_checks: int = MAX_CHECKS) -> Simplified:
    """`source` with its one-use helpers inlined, then every term whose removal leaves the same loss
    removed, greedily, first found first: each step kept only where the fingerprint says the same loss."""
    base = fingerprint_of(source)
    try:
        module = syntax.read_module(source, name)
    except CandidateError:
        return Simplified(source, (), 1)
    if base is None:
        return Simplified(source, (), 1)
    docstring = ast.get_docstring(ast.parse(source)) or ""
    dropped: list[str] = []
    checks = 1
    inlined = module.copy()
    names = inline_helpers(inlined)
    if names:
        checks += 1
        if _same(inlined, docstring, base, fingerprint_of) is not None:
            module = inlined
            dropped.append(f"inlines the one-use helper{'s' if len(names) > 1 else ''} {', '.join(names)}")
    progress = True
    while progress and checks < max_checks:
        progress = False
        for drop in term_drops(module):
            try:
                edit = drop_term(module, drop)
            except (CandidateError, LookupError, AttributeError, TypeError, ValueError, SyntaxError, RecursionError):
                continue  # code the editor does not understand (an LLM's) is left as it is
            if edit is None:
                continue
            checks += 1
            if _same(edit.module, docstring, base, fingerprint_of) is not None:
                module, progress = edit.module, True
                dropped.append(edit.idea)
                break
            if checks >= max_checks:
                break
    if dropped:
        note = "Simplified before it was stored (the same loss by fingerprint): " + "; ".join(dropped) + "."
        source = syntax.write_module(module, f"{docstring}\n\n{note}" if docstring else note)
    return Simplified(source, tuple(dropped), checks)


def _same(module: LossModule, docstring: str, base: Sequence[float], fingerprint_of: Fingerprinter) -> str | None:
    """The edited module pruned and written, where it passes the policy and is the same loss as `base`."""
    try:
        syntax.prune(module)
        written = syntax.write_module(module, docstring)
        check_policy(written)
    except (CandidateError, LookupError, AttributeError, TypeError, ValueError, SyntaxError, RecursionError):
        return None
    fingerprint = fingerprint_of(written)
    return written if fingerprint is not None and same_loss(fingerprint, base) else None


# -- inlining ------------------------------------------------------------------------------------


def inline_helpers(module: LossModule) -> list[str]:
    """Inline, in place, every helper function called exactly once (repeatedly: inlining can leave
    another helper with one call), merging values computed twice; the inlined helpers' names."""
    inlined: list[str] = []
    while (name := _inline_one(module)) is not None:
        inlined.append(name)
    if inlined:
        for function in module.functions():
            merge_repeated(function)
            drop_suffixes(function)
    return inlined


def _inline_one(module: LossModule) -> str | None:
    helpers = {node.name: node for node in module.definitions if isinstance(node, ast.FunctionDef)}
    calls = Counter(node.func.id for root in module.functions() for node in ast.walk(root)
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers)
    for caller in module.functions():
        for index, statement in enumerate(caller.body):
            if not isinstance(statement, (ast.Assign, ast.Return)):
                continue
            for call in [node for node in ast.walk(statement) if isinstance(node, ast.Call)]:
                helper = helpers.get(call.func.id) if isinstance(call.func, ast.Name) else None
                if helper is None or helper is caller or calls[helper.name] != 1:
                    continue
                spliced = _spliced(helper, call, caller)
                if spliced is None:
                    continue
                steps, result = spliced
                # the helper's steps run just before the statement that called it; pure tensor code
                # computes the same whatever the order of the statement's other parts
                if statement.value is call:
                    statement.value = result
                else:
                    syntax.replace_node(statement, call, result)
                caller.body[index:index] = steps
                ast.fix_missing_locations(caller)
                module.definitions = [node for node in module.definitions if node is not helper]
                return helper.name
    return None


def _parameters(function: ast.FunctionDef) -> set[str]:
    arguments = function.args
    return {arg.arg for arg in arguments.posonlyargs + arguments.args + arguments.kwonlyargs}


def _bound_names(function: ast.FunctionDef) -> set[str]:
    """The names a function binds: its parameters and what it assigns."""
    return _parameters(function) | {node.id for node in ast.walk(function) if isinstance(node, ast.Name)
                                    and isinstance(node.ctx, ast.Store)}


def _spliced(helper: ast.FunctionDef, call: ast.Call, caller: ast.FunctionDef
             ) -> tuple[list[ast.stmt], ast.expr] | None:
    """The helper's statements as they read in the caller, and its returned expression; None when the
    helper is not assignments then one `return`, or the call is not one this can map."""
    body = _straight_body(helper)
    given = _arguments(helper, call)
    if body is None or given is None:
        return None
    *assignments, returned = body
    locals_ = [s.targets[0].id for s in assignments if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Name)]
    globals_ = {node.id for node in ast.walk(helper) if isinstance(node, ast.Name)} - set(given) - set(locals_)
    bound = _bound_names(caller)
    if globals_ & bound:
        return None  # a module-level name the caller hides under a name of its own
    used = bound | {node.id for node in ast.walk(caller) if isinstance(node, ast.Name)}
    steps: list[ast.stmt] = []
    mapping: dict[str, ast.expr] = {}
    for name, value in given.items():
        if isinstance(value, (ast.Name, ast.Constant)) and name not in locals_:
            mapping[name] = value
            continue
        # computed once, as the call did (and a parameter the helper reassigns starts as a copy)
        fresh = syntax.fresh_name(name, used)
        used.add(fresh)
        steps.append(ast.Assign(targets=[ast.Name(id=fresh, ctx=ast.Store())], value=copy.deepcopy(value)))
        mapping[name] = ast.Name(id=fresh, ctx=ast.Load())
    for name in dict.fromkeys(local for local in locals_ if local not in mapping):
        fresh = syntax.fresh_name(name, used)
        used.add(fresh)
        mapping[name] = ast.Name(id=fresh, ctx=ast.Load())
    substitute = _Substitute(mapping)
    steps += [substitute.visit(copy.deepcopy(statement)) for statement in assignments]
    assert isinstance(returned, ast.Return) and returned.value is not None  # _straight_body checked it
    return steps, substitute.visit(copy.deepcopy(returned.value))


def _straight_body(helper: ast.FunctionDef) -> list[ast.stmt] | None:
    """The helper's statements when they are `name = ...` assignments then one `return value`, with no
    nested function, lambda, comprehension or walrus; else None."""
    body = helper.body[1:] if ast.get_docstring(helper) is not None else helper.body
    if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
        return None
    if not all(isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
               for s in body[:-1]):
        return None
    if any(isinstance(node, (ast.Return, ast.Lambda, ast.FunctionDef, ast.NamedExpr, ast.comprehension))
           for statement in body[:-1] for node in ast.walk(statement)):
        return None
    return body


def _arguments(helper: ast.FunctionDef, call: ast.Call) -> dict[str, ast.expr] | None:
    """Each of the helper's parameters, in order, with what the call passes it (or its default); None
    for a signature or a call this cannot map (`*args`, `**kwargs`, a missing argument)."""
    arguments = helper.args
    if arguments.vararg or arguments.kwarg or arguments.posonlyargs or arguments.kwonlyargs:
        return None
    parameters = [arg.arg for arg in arguments.args]
    if len(call.args) > len(parameters) or any(isinstance(arg, ast.Starred) for arg in call.args):
        return None
    given: dict[str, ast.expr] = dict(zip(parameters, call.args))
    for keyword in call.keywords:
        if keyword.arg is None or keyword.arg not in parameters or keyword.arg in given:
            return None
        given[keyword.arg] = keyword.value
    defaults = dict(zip(parameters[len(parameters) - len(arguments.defaults):], arguments.defaults))
    if any(name not in given and name not in defaults for name in parameters):
        return None
    return {name: given[name] if name in given else defaults[name] for name in parameters}


class _Substitute(ast.NodeTransformer):
    """Names replaced by expressions (loads) or renamed (stores)."""

    def __init__(self, mapping: dict[str, ast.expr]) -> None:
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.expr:
        value = self.mapping.get(node.id)
        if value is None:
            return node
        if isinstance(node.ctx, ast.Store):
            assert isinstance(value, ast.Name)  # only locals are stored to, and they map to names
            return ast.Name(id=value.id, ctx=ast.Store())
        return copy.deepcopy(value)


def merge_repeated(function: ast.FunctionDef) -> None:
    """Where a top-level `b = E` repeats an earlier `a = E` and every name involved is bound once in the
    function (a parameter is bound by the call, so reassigning one binds it twice), drop it and read `a`
    for `b`."""
    bound = Counter(target.id for node in ast.walk(function) if isinstance(node, (ast.Assign, ast.AugAssign))
                    for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(target, ast.Name))
    bound.update(_parameters(function))
    changed = True
    while changed:
        changed = False
        seen: dict[str, str] = {}
        for index, statement in enumerate(function.body):
            if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                    and isinstance(statement.targets[0], ast.Name)):
                continue
            name = statement.targets[0].id
            reads = syntax.loaded_names(statement.value)
            if bound[name] != 1 or any(bound[read] > 1 for read in reads):
                continue
            key = ast.dump(statement.value)
            if key in seen:
                del function.body[index]
                syntax.rename(function, {name: seen[key]})
                changed = True
                break
            seen[key] = name


def drop_suffixes(function: ast.FunctionDef) -> None:
    """`margin_3` back to `margin` (and so on) where renaming apart left a suffix the function no longer
    needs; parameters keep their names (`loss`'s are its hyperparameters)."""
    for name in sorted(_bound_names(function) - _parameters(function)):
        base, _, number = name.rpartition("_")
        names = {node.id for node in ast.walk(function) if isinstance(node, ast.Name)} | _bound_names(function)
        if base and number.isdigit() and base not in names:
            syntax.rename(function, {name: base})
