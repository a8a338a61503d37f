"""The static tier's AST policy: what a candidate loss module may contain.

A loss is tensor arithmetic. Anything that reaches outside it (files, processes,
the autograd graph, interpreter internals, torch's global state) is refused
before the code ever runs. The policy is a deny-list over a small language:

- module level: a docstring, imports, function definitions, `NAME = constant`;
- imports: only `torch`, `torch.nn.functional` and `math` (`from __future__` too);
- names: no builtins that reach the interpreter (`eval`, `exec`, `open`,
  `getattr`, `globals`, `type`, ...), no dunder names;
- attributes: none starting with `_` (dunders, `_C`), no in-place methods
  (a trailing `_`, e.g. `add_`), none of `FORBIDDEN_ATTRIBUTES` (`grad_fn`,
  `backward`, `register_hook`, `data`, `storage`, ...), no torch namespace in
  `FORBIDDEN_TORCH_PREFIXES` (`torch.load`, `torch.utils`, `torch.set_*`, ...),
  no module outside `MATH_MODULES` that an allowed one happens to hold
  (`torch.os`, `torch.sys`, `F.importlib`: each reaches the whole interpreter);
- statements: no assignment to attributes or subscripts, no `global`/`nonlocal`,
  no classes, `del`, `async`, `yield`, `await`;
- a module name is only used as the base of an attribute (`torch.sigmoid`),
  never passed around as a value (`t = torch`).

The sandbox (lossearch.sandbox.local) backs the policy up at run time: what slips
through here still cannot reach the network, other files or the scorer.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import types

from lossearch.contract import ALLOWED_MODULES, find_loss_function, parse_module, read_signature
from lossearch.failures import CandidateError

FORBIDDEN_NAMES = frozenset(
    "eval exec compile open __import__ globals locals vars getattr setattr delattr hasattr dir "
    "type object super classmethod staticmethod property memoryview bytearray breakpoint input "
    "help exit quit id callable iter next issubclass".split()
)
FORBIDDEN_ATTRIBUTES = frozenset(
    "grad_fn grad register_hook register_post_accumulate_grad_hook retain_grad backward data "
    "data_ptr storage untyped_storage storage_offset set_ share_memory_ requires_grad_ "
    "numpy tolist apply_ map_ map2_ record_stream pin_memory to cuda cpu register_forward_hook "
    "next_functions variable saved_tensors f_globals f_locals f_back gi_frame cr_frame "
    "im_func func_globals".split()
)
FORBIDDEN_TORCH_PREFIXES = (
    "torch.load", "torch.save", "torch.hub", "torch.ops", "torch.library", "torch.utils",
    "torch.classes", "torch.jit", "torch.compile", "torch.compiler", "torch.autograd",
    "torch.cuda", "torch.mps", "torch.xpu", "torch.backends", "torch.distributed",
    "torch.multiprocessing", "torch.fx", "torch.package", "torch.onnx", "torch.export",
    "torch.serialization", "torch.overrides", "torch.testing", "torch.profiler", "torch.random",
    "torch.inference_mode", "torch.no_grad", "torch.enable_grad", "torch.set_", "torch.manual_seed",
    "torch.seed", "torch.use_deterministic", "torch.from_file", "torch.Storage", "torch.storage",
    "torch.nn.Module", "torch.nn.Parameter", "torch.nn.modules", "torch.nn.parameter",
    "torch.nn.utils", "torch.nn.init", "torch.nn.parallel", "torch.sparse", "torch.futures",
    "torch.signal", "torch.func", "torch.empty", "torch.Generator", "torch.dynamo",
)
# the only modules a loss may reach through an attribute chain or `from ... import`
MATH_MODULES = frozenset({"torch", "torch.nn", "torch.nn.functional", "torch.linalg", "torch.special", "torch.fft",
                          "math"})
ALLOWED_MODULE_STATEMENTS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.Assign, ast.AnnAssign, ast.Expr)
REFUSED_NODES = {
    ast.Global: "`global`", ast.Nonlocal: "`nonlocal`", ast.ClassDef: "class definitions",
    ast.Delete: "`del`", ast.AsyncFunctionDef: "async code", ast.Await: "`await`",
    ast.Yield: "`yield`", ast.YieldFrom: "`yield from`", ast.AsyncFor: "async code",
    ast.AsyncWith: "async code", ast.With: "`with` blocks", ast.Try: "`try` blocks",
    ast.Raise: "`raise`", ast.Import: None, ast.ImportFrom: None,
}


def dotted_name(node: ast.AST) -> str | None:
    """`torch.nn.functional.x` for an attribute chain rooted at a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _escaping_module(dotted: str) -> str | None:
    """The first prefix of `dotted` that is a module outside MATH_MODULES (`torch.os`), else None.

    Looks the chain up on the real, trusted modules without running anything of the
    candidate's: getattr_static neither calls properties nor a module's lazy __getattr__.
    """
    parts = dotted.split(".")
    value = importlib.import_module(parts[0])  # torch or math: the chain's root is an allowed import
    for index in range(1, len(parts)):
        value = inspect.getattr_static(value, parts[index], None)
        if value is None:
            return None
        if isinstance(value, types.ModuleType) and value.__name__ not in MATH_MODULES:
            return ".".join(parts[: index + 1])
    return None


class _PolicyVisitor(ast.NodeVisitor):
    """Walks a parsed module and raises a `policy` CandidateError at the first violation."""

    def __init__(self) -> None:
        self.module_aliases: dict[str, str] = {}  # local name -> module path, e.g. F -> torch.nn.functional

    def refuse(self, node: ast.AST, reason: str) -> None:
        line = getattr(node, "lineno", "?")
        raise CandidateError("policy", f"line {line}: {reason}")

    # -- imports ---------------------------------------------------------------------------
    def record_imports(self, tree: ast.Module) -> None:
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self.check_module(node, alias.name)
                    local = alias.asname or alias.name.split(".")[0]
                    self.module_aliases[local] = alias.name if alias.asname else local
            elif isinstance(node, ast.ImportFrom):
                self.record_import_from(node)
        for nested in ast.walk(tree):
            if isinstance(nested, (ast.Import, ast.ImportFrom)) and nested not in tree.body:
                self.refuse(nested, "imports belong at the top of the module")

    def record_import_from(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self.refuse(node, "relative imports are not allowed")
        if module == "__future__":
            return
        for alias in node.names:
            full = f"{module}.{alias.name}"
            if alias.name == "*":
                self.refuse(node, "`import *` is not allowed")
            if full in ALLOWED_MODULES:
                self.module_aliases[alias.asname or alias.name] = full
                continue
            self.check_module(node, module)
            self.check_torch_name(node, full)
            if alias.name.startswith("_") or alias.name in FORBIDDEN_NAMES:
                self.refuse(node, f"importing `{alias.name}` is not allowed")

    def check_module(self, node: ast.AST, module: str) -> None:
        if module not in ALLOWED_MODULES or module == "__future__":
            allowed = "torch, torch.nn.functional, math"
            self.refuse(node, f"import of `{module}` is not allowed (allowed: {allowed})")

    def check_torch_name(self, node: ast.AST, dotted: str) -> None:
        if dotted.startswith(FORBIDDEN_TORCH_PREFIXES):
            self.refuse(node, f"`{dotted}` reaches outside tensor arithmetic")
        escaping = _escaping_module(dotted)
        if escaping:
            self.refuse(node, f"`{escaping}` is a module outside tensor arithmetic")

    # -- expressions -----------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in FORBIDDEN_NAMES or node.id.startswith("__"):
            self.refuse(node, f"the name `{node.id}` is not allowed in a loss")
        if node.id in self.module_aliases:
            self.refuse(node, f"the module `{node.id}` may only be used as `{node.id}.something`")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.check_attribute(node, node.attr)
        dotted = dotted_name(node)
        if dotted and dotted.split(".")[0] in self.module_aliases:
            root, *parts = dotted.split(".")
            for part in parts:
                self.check_attribute(node, part)
            self.check_torch_name(node, self.module_aliases[root] + dotted[len(root):])
            return  # the module name at the root is fine here: do not visit it as a bare Name
        self.generic_visit(node)

    def check_attribute(self, node: ast.AST, attr: str) -> None:
        if attr.startswith("_"):
            self.refuse(node, f"private or dunder attribute `.{attr}` is not allowed")
        if attr.endswith("_"):
            self.refuse(node, f"in-place method `.{attr}` is not allowed: write `x = x.{attr[:-1]}(...)`")
        if attr in FORBIDDEN_ATTRIBUTES:
            self.refuse(node, f"`.{attr}` reaches outside tensor arithmetic")

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, (bytes, str)) and len(node.value) > 2000:
            self.refuse(node, "string constants over 2000 characters are not allowed")

    # -- statements ------------------------------------------------------------------------
    def check_target(self, target: ast.expr) -> None:
        if isinstance(target, (ast.Attribute, ast.Subscript)):
            self.refuse(target, "assigning to attributes or items is not allowed: build new tensors instead")
        if isinstance(target, ast.Starred):
            self.check_target(target.value)
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.check_target(element)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self.check_target(target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.check_target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.check_target(node.target)
        self.generic_visit(node)

    def generic_visit(self, node: ast.AST) -> None:
        for refused, what in REFUSED_NODES.items():
            if isinstance(node, refused) and what is not None:
                verb = "are" if what.endswith("s") else "is"
                self.refuse(node, f"{what} {verb} not allowed in a loss")
        super().generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.decorator_list:
            self.refuse(node, "decorators are not allowed")
        if node.name.startswith("_") and node.name.startswith("__"):
            self.refuse(node, f"the name `{node.name}` is not allowed")
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:  # checked in record_imports
        return

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        return


def check_module_shape(tree: ast.Module, visitor: _PolicyVisitor) -> None:
    """Module level holds only a docstring, imports, defs and NAME = constant."""
    for index, node in enumerate(tree.body):
        if not isinstance(node, ALLOWED_MODULE_STATEMENTS):
            visitor.refuse(node, f"`{type(node).__name__}` statements are not allowed at module level")
        if isinstance(node, ast.Expr) and not (index == 0 and isinstance(node.value, ast.Constant)):
            visitor.refuse(node, "module-level expressions are not allowed (only the docstring)")
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not all(isinstance(target, ast.Name) for target in targets):
                visitor.refuse(node, "module-level assignments must bind a plain name")
            if node.value is not None and any(isinstance(sub, ast.Call) for sub in ast.walk(node.value)):
                visitor.refuse(node, "module-level assignments must be constants, not calls")


def check_policy(source: str) -> None:
    """Raise a `syntax` or `policy` CandidateError unless the source obeys the static policy."""
    tree = parse_module(source)
    read_signature(find_loss_function(tree))
    visitor = _PolicyVisitor()
    visitor.record_imports(tree)
    check_module_shape(tree, visitor)
    visitor.visit(tree)
