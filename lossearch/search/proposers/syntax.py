"""Loss modules as syntax trees: read a candidate into parts an operator can edit, write it back.

`read_module` parses a candidate without running it and rewrites every
reference to an imported module into one canonical spelling (`torch.x`,
`F.x`, `math.x`), so code from two parents can be combined. `write_module`
rebuilds `loss`'s signature from `inputs` and `hyperparameters`, adds the
imports the code uses and a fresh module docstring. `prune` removes what an
edit left unused; `depends_on_policy` is the cheap static stand-in for the
sanity tier's "has a gradient" check.
"""

from __future__ import annotations

import ast
import copy
import functools
import re
from dataclasses import dataclass, field
from typing import Sequence, overload

from lossearch.contract import POLICY_TOKEN_INPUTS, TENSOR_INPUTS, find_loss_function, parse_module, read_signature
from lossearch.policy import dotted_name

POLICY_INPUTS = ("policy_chosen_logps", "policy_rejected_logps")
POLICY_SOURCES = POLICY_INPUTS + POLICY_TOKEN_INPUTS
"""Every input that carries the policy's gradient: what a site must read for an operator to edit it."""
LENGTH_INPUTS = ("chosen_lengths", "rejected_lengths")
KL_INPUTS = ("chosen_kl", "rejected_kl")
IMPORT_LINES = {"math": "import math", "torch": "import torch", "F": "import torch.nn.functional as F"}


@dataclass
class LossModule:
    """A candidate split into the parts operators edit; `loss`'s signature lives in the two fields."""

    name: str
    summary: str
    """First line of the module docstring (what the loss is)."""
    definitions: list[ast.stmt]
    """Module-level helper functions and constants, in order (imports and `loss` excluded)."""
    function: ast.FunctionDef
    """`def loss`; its `args` are rebuilt by `write_module`."""
    inputs: list[str]
    """Contract tensor inputs `loss` takes, in contract order."""
    hyperparameters: dict[str, float] = field(default_factory=dict)
    """Keyword parameters with float defaults, `beta` first when `loss` takes it."""

    def copy(self) -> "LossModule":
        return copy.deepcopy(self)

    def functions(self) -> list[ast.FunctionDef]:
        """`loss` and every helper function: the places operators may edit."""
        return [self.function] + [node for node in self.definitions if isinstance(node, ast.FunctionDef)]

    def top_level_names(self) -> set[str]:
        names = {node.name for node in self.definitions if isinstance(node, ast.FunctionDef)}
        for node in self.definitions:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(target.id for target in targets if isinstance(target, ast.Name))
        return names

    def parameter_names(self) -> set[str]:
        return set(self.inputs) | set(self.hyperparameters)


# -- reading ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=65_536)  # parent selection sizes every pool member at every proposal
def code_size(source: str) -> int:
    """Syntax-tree nodes of a module's code, docstrings left out: what parsimony pressure counts."""
    tree = ast.parse(source)
    documented = [node.body[0] for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef)) and ast.get_docstring(node) is not None]
    skipped = {id(part) for statement in documented for part in ast.walk(statement)}
    return sum(1 for node in ast.walk(tree) if id(node) not in skipped)


def canonical_spelling(full: str) -> str:
    """How a full dotted path is written in a child: `F.x` for torch.nn.functional, else unchanged."""
    if full == "torch.nn.functional" or full.startswith("torch.nn.functional."):
        return "F" + full[len("torch.nn.functional"):]
    return full


def import_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the full dotted path it was imported as."""
    aliases: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                aliases[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


class _Canonicalizer(ast.NodeTransformer):
    """Rewrites `nnf.logsigmoid`, `logsigmoid` (imported by name), ... as `F.logsigmoid`."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases

    def rewrite(self, node: ast.expr, full: str) -> ast.expr:
        return ast.copy_location(ast.parse(canonical_spelling(full), mode="eval").body, node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        dotted = dotted_name(node)
        if dotted is not None and isinstance(node.ctx, ast.Load):
            root = dotted.split(".")[0]
            if root in self.aliases:
                return self.rewrite(node, self.aliases[root] + dotted[len(root):])
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in self.aliases and isinstance(node.ctx, ast.Load):
            return self.rewrite(node, self.aliases[node.id])
        return node


def docstring_summary(tree: ast.Module) -> str:
    text = (ast.get_docstring(tree) or "").strip()
    return text.splitlines()[0] if text else ""


def read_module(source: str, name: str) -> LossModule:
    """Split a candidate into a `LossModule`; raises CandidateError like the static tier."""
    tree = parse_module(source)
    function = find_loss_function(tree)
    inputs, hyperparameters = read_signature(function)
    summary = docstring_summary(tree)
    tree = _Canonicalizer(import_aliases(tree)).visit(tree)
    function = find_loss_function(tree)
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    definitions = [node for node in body if not isinstance(node, (ast.Import, ast.ImportFrom)) and node is not function]
    hyper = {"beta": hyperparameters["beta"]} if "beta" in inputs else {}
    hyper.update((key, value) for key, value in hyperparameters.items() if key != "beta")
    tensor_inputs = [item for item in TENSOR_INPUTS if item in inputs]
    return LossModule(name, summary, definitions, function, tensor_inputs, hyper)


# -- writing ---------------------------------------------------------------------------------

def build_arguments(inputs: list[str], hyperparameters: dict[str, float]) -> ast.arguments:
    """`loss`'s parameters: tensor inputs in contract order, then `name: float = default`."""
    ordered = [item for item in TENSOR_INPUTS if item in inputs]
    names = sorted(hyperparameters, key=lambda key: key != "beta")  # stable: beta first
    return ast.arguments(
        posonlyargs=[], args=[ast.arg(arg=item) for item in ordered]
        + [ast.arg(arg=key, annotation=ast.Name(id="float", ctx=ast.Load())) for key in names],
        vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None,
        defaults=[ast.Constant(value=float(hyperparameters[key])) for key in names])


def used_modules(nodes: Sequence[ast.AST]) -> list[str]:
    found = {node.id for root in nodes for node in ast.walk(root)
             if isinstance(node, ast.Name) and node.id in IMPORT_LINES and isinstance(node.ctx, ast.Load)}
    return [key for key in IMPORT_LINES if key in found]


def quote_docstring(text: str) -> str:
    text = text.replace("\\", "\\\\").replace('"""', "'''").strip()
    return f'"""{text}\n"""' if "\n" in text else f'"""{text}"""'


def write_module(module: LossModule, docstring: str) -> str:
    """The module's source: docstring, the imports it needs, definitions, `loss`."""
    function = copy.deepcopy(module.function)
    function.args = build_arguments(module.inputs, module.hyperparameters)
    body = list(module.definitions) + [function]
    tree = ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))
    imports = "".join(IMPORT_LINES[key] + "\n" for key in used_modules(body))
    return f"{quote_docstring(docstring)}\n{imports}\n\n{ast.unparse(tree)}\n"


def call_keywords(names: list[str], values: dict[str, str] | None = None) -> list[ast.keyword]:
    """`name=value` keywords passing the child's parameters on to a helper."""
    values = values or {}
    return [ast.keyword(arg=name, value=ast.parse(values.get(name, name), mode="eval").body) for name in names]


# -- analysis --------------------------------------------------------------------------------

def loaded_names(node: ast.AST) -> set[str]:
    return {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load)}


def tainted_names(function: ast.FunctionDef, sources: tuple[str, ...] = POLICY_SOURCES) -> set[str]:
    """Names whose value may depend on `sources` (flow-insensitive, to a fixed point)."""
    tainted = set(sources)
    assignments = [node for node in ast.walk(function) if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))]
    changed = True
    while changed:
        changed = False
        for node in assignments:
            if node.value is None or not loaded_names(node.value) & tainted:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in (sub.id for sub in ast.walk(target) if isinstance(sub, ast.Name)):
                    if name not in tainted:
                        tainted.add(name)
                        changed = True
    return tainted


def depends_on_policy(function: ast.FunctionDef) -> bool:
    """Whether some `return` of the function reads a value computed from the policy log-probs."""
    tainted = tainted_names(function)
    returned = [node.value for node in ast.walk(function) if isinstance(node, ast.Return) and node.value is not None]
    return any(loaded_names(value) & tainted for value in returned)


def last_return(function: ast.FunctionDef) -> ast.Return | None:
    """The function's final statement when it is a `return value`."""
    last = function.body[-1] if function.body else None
    return last if isinstance(last, ast.Return) and last.value is not None else None


def split_terms(expression: ast.expr) -> list[tuple[int, ast.expr]]:
    """The additive terms of `a + b - c` with their signs: [(+1, a), (+1, b), (-1, c)]."""
    if isinstance(expression, ast.BinOp) and isinstance(expression.op, (ast.Add, ast.Sub)):
        sign = 1 if isinstance(expression.op, ast.Add) else -1
        right = [(sign * inner_sign, term) for inner_sign, term in split_terms(expression.right)]
        return split_terms(expression.left) + right
    return [(1, expression)]


def join_terms(terms: list[tuple[int, ast.expr]]) -> ast.expr:
    """Inverse of `split_terms`."""
    sign, result = terms[0]
    if sign < 0:
        result = ast.UnaryOp(op=ast.USub(), operand=result)
    for sign, term in terms[1:]:
        result = ast.BinOp(left=result, op=ast.Add() if sign > 0 else ast.Sub(), right=term)
    return result


# -- editing ---------------------------------------------------------------------------------

class _Replacer(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.AST) -> None:
        self.target, self.replacement = target, replacement

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return ast.copy_location(self.replacement, node)
        return super().visit(node)


def replace_node(root: ast.AST, target: ast.AST, replacement: ast.AST) -> None:
    """Put `replacement` where `target` (found by identity) sits under `root`."""
    _Replacer(target, replacement).visit(root)
    ast.fix_missing_locations(root)


def fill_template(template: str, **holes: ast.expr) -> ast.expr:
    """Parse an expression template and put a fresh copy of each hole's expression in place of its name."""
    tree = ast.parse(template, mode="eval")

    class Fill(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            return copy.deepcopy(holes[node.id]) if node.id in holes else node

    return simplify(Fill().visit(tree).body)


def _number(node: ast.AST) -> float | int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    return None


FOLDED = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


class _Simplifier(ast.NodeTransformer):
    """`--x` -> `x`, `x - -y` -> `x + y`, `x + -y` -> `x - y`, `2.0 * 0.5` -> `1.0`, `1 * x` and
    `x * 1` -> `x`, `x + 0` -> `x`: keeps edited code readable."""

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        self.generic_visit(node)
        operand = node.operand
        if isinstance(node.op, ast.USub) and isinstance(operand, ast.UnaryOp) and isinstance(operand.op, ast.USub):
            return operand.operand
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        left, right_value = _number(node.left), _number(node.right)
        fold = FOLDED.get(type(node.op))
        if fold is not None and left is not None and right_value is not None:
            value = fold(left, right_value)
            return ast.Constant(value=value) if value >= 0 else ast.UnaryOp(op=ast.USub(), operand=ast.Constant(-value))
        if isinstance(node.op, ast.Mult) and (left == 1 or right_value == 1):
            return node.right if left == 1 else node.left
        if isinstance(node.op, (ast.Add, ast.Sub)) and right_value == 0:
            return node.left
        right = node.right
        if (isinstance(node.op, (ast.Add, ast.Sub))
                and isinstance(right, ast.UnaryOp) and isinstance(right.op, ast.USub)):
            op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
            return ast.BinOp(left=node.left, op=op, right=right.operand)
        return node


@overload
def simplify(node: ast.expr) -> ast.expr: ...
@overload
def simplify(node: ast.AST) -> ast.AST: ...
def simplify(node: ast.AST) -> ast.AST:
    """The node simplified in place; an expression's root may be replaced, so use the result."""
    return ast.fix_missing_locations(_Simplifier().visit(node))


def rename(root: ast.AST, mapping: dict[str, str]) -> None:
    """Rename every `Name` and function definition found in `mapping` (parameters are left alone)."""
    for node in ast.walk(root):
        if isinstance(node, ast.Name) and node.id in mapping:
            node.id = mapping[node.id]
        elif isinstance(node, ast.FunctionDef) and node.name in mapping:
            node.name = mapping[node.name]


def fresh_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_2`, `base_3`, ... whichever is not taken."""
    if base not in taken:
        return base
    index = 2
    while f"{base}_{index}" in taken:
        index += 1
    return f"{base}_{index}"


def identifier(text: str, fallback: str = "candidate", limit: int = 40) -> str:
    """A lowercase Python identifier made from free text."""
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()[:limit].strip("_")
    if not slug:
        return fallback
    return f"loss_{slug}" if slug[0].isdigit() else slug


def set_docstring(function: ast.FunctionDef, text: str) -> None:
    node = ast.Expr(value=ast.Constant(value=text))
    if ast.get_docstring(function) is not None:
        function.body[0] = node
    else:
        function.body.insert(0, node)


# -- pruning ---------------------------------------------------------------------------------

def prune_body(function: ast.FunctionDef) -> None:
    """Drop `x = x` and top-level assignments whose value nothing after them reads."""
    changed = True
    while changed:
        changed = False
        for index, node in enumerate(function.body):
            if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                continue
            target = node.targets[0].id
            is_self = isinstance(node.value, ast.Name) and node.value.id == target
            later = set().union(*(loaded_names(after) for after in function.body[index + 1:]))
            if is_self or target not in later:
                del function.body[index]
                changed = True
                break


def prune(module: LossModule) -> None:
    """Remove dead assignments, parameters `loss` no longer reads, and unused definitions."""
    for function in module.functions():
        prune_body(function)
    used = loaded_names(module.function)
    module.inputs = [item for item in module.inputs if item in used]
    module.hyperparameters = {key: value for key, value in module.hyperparameters.items() if key in used}
    needed = set(used)
    changed = True
    while changed:  # keep the definitions `loss` reaches, directly or through other definitions
        changed = False
        for node in module.definitions:
            defined = _defined_name(node)
            if defined in needed and not loaded_names(node) <= needed:
                needed |= loaded_names(node)
                changed = True
    module.definitions = [node for node in module.definitions if _defined_name(node) in needed]


def _defined_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.FunctionDef):
        return node.name
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None
