"""The offline proposer: edits a loss's syntax tree with operators that keep the loss contract.

One parent gets a mutation, two get a crossover or (with probability 1 - `pair_share`) a
mutation of the first, the operator chosen by its record in the campaign (`MutationProposer`):

| operator | parents | what it does |
|---|---|---|
| `swap_function` | 1 | one call for a related one of the same direction (logsigmoid -> tanh, square -> abs, ...) |
| `add_term` | 1 | the chosen response's NLL, length normalization, a target margin gamma, or a KL term |
| `remove_term` | 1 | drops one additive term (an NLL, a margin, a KL gap, a reference) or a length normalization |
| `perturb_constant` | 1 | scales one hyperparameter default or numeric literal |
| `weight_pairs` | 1 | w(margin) * L: focal (1 - sigmoid(beta m))^gamma, detached, or by the margin's sign |
| `piecewise` | 1 | clamps a shaping call's argument to [-clip, clip], or adds a squared hinge (torch.where) |
| `batch_statistic` | 1 | a shaping call's argument centred on, or scaled by, a detached batch statistic of itself |
| `gate_input` | 1 | a gate reads the chosen or rejected log-ratio, the per-token margin or the KL gap |
| `grow_term` | 1 | + w * e, e grown at random from a typed grammar over the contract's inputs (GROWTH_*) |
| `modulate` | 1 | (1 - w) L + w L', L' the parent after one other edit (mostly `swap_function`), w as in `blend` |
| `blend` | 2 | DiscoPOP's recipe: (1 - w) A + w B with the gate w = sigmoid(beta * margin / tau) |
| `cross_terms` | 2 | one additive term of A replaced by (or, for a one-term A, added to) a term of B |

Every constant an operator brings is a new float hyperparameter of the child (`focal_gamma`,
`clip`, `grown_weight`, ...), so tuning and `perturb_constant` can reach it. Each child is
written with a fresh module docstring naming the operator and its parents, must pass the static
policy, must read the policy log-probs, and must differ from its parents; otherwise the proposer
retries with another draw. Candidate code is only ever read here, never run.
"""

from __future__ import annotations

import ast
import copy
import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from lossearch.contract import TENSOR_INPUTS, source_hash
from lossearch.failures import CandidateError
from lossearch.policy import check_policy
from lossearch.search.proposers import syntax
from lossearch.search.proposers.base import ParentView, Proposal, ProposalContext
from lossearch.search.proposers.syntax import LossModule
from lossearch.search.proposers.ucb import ArmStats, ucb_choice

# -- swap_function: related functions of the same direction (X is the argument) -------------

SWAPS: dict[str, tuple[str, ...]] = {
    # increasing where the pair is lost (X < 1): -logsigmoid becomes a bounded, hinge, exponential,
    # IPO-like squared (a finite target: it pulls back past X = 1) or squared-hinge loss
    "F.logsigmoid": ("torch.sigmoid(X)", "torch.tanh(X)", "-torch.relu(1 - X)", "-torch.exp(-X)",
                     "-F.softplus(1 - X)", "-(X - 1) ** 2", "-torch.relu(1 - X) ** 2"),
    # saturating, increasing
    "torch.sigmoid": ("F.logsigmoid(X)", "torch.tanh(X)", "F.softsign(X)", "torch.atan(X)", "torch.erf(X)"),
    "torch.tanh": ("torch.sigmoid(X)", "F.softsign(X)", "torch.atan(X)", "torch.erf(X)"),
    # convex, increasing (hinge, softplus, exponential)
    "torch.relu": ("F.softplus(X)", "torch.relu(X) ** 2", "F.gelu(X)", "F.silu(X)", "torch.exp(X)"),
    "F.relu": ("F.softplus(X)", "torch.relu(X) ** 2", "F.gelu(X)", "torch.exp(X)"),
    "F.softplus": ("torch.relu(X)", "torch.exp(X)", "torch.relu(X) ** 2", "F.softplus(X) ** 2"),
    "torch.exp": ("F.softplus(X)", "torch.relu(1 + X)", "torch.exp(X) - X"),
    # even, growing with |X| (squared error, absolute error, log-cosh, pseudo-Huber)
    "square": ("torch.abs(X)", "torch.logaddexp(X, -X)", "torch.sqrt(1 + X ** 2)"),
    "torch.abs": ("X ** 2", "torch.logaddexp(X, -X)", "torch.sqrt(1 + X ** 2)"),
}
SHAPING = ("F.logsigmoid", "torch.sigmoid", "torch.tanh", "torch.relu", "F.relu", "F.softplus", "torch.exp")
SCALE_FACTORS = (0.3, 0.5, 0.7, 1.5, 2.0, 3.0)
SKIPPED_KEYWORDS = ("dim", "keepdim", "min", "max")  # clamp bounds and axes are not hyperparameters
OPERATOR_TAGS = {"swap_function": "swap", "add_term": "add", "remove_term": "drop",
                 "perturb_constant": "tune", "blend": "blend", "cross_terms": "cross"}
MUTATIONS = ("swap_function", "add_term", "remove_term", "perturb_constant", "weight_pairs", "piecewise",
             "batch_statistic", "gate_input", "grow_term", "modulate")
CROSSOVERS = ("blend", "cross_terms")
# what children's names end in: the operator's tag and six hex digits before (`dpo_swap3fa2c1`), now
# a key term and five (`dpo_tanh_3fa2c`, `dpo_blend_ipo_1b2c3`); root_name strips them all
OLD_TAG_SUFFIX = re.compile(r"(_(" + "|".join(OPERATOR_TAGS.values()) + r")[0-9a-f]{6})+$")
CROSSOVER_SUFFIX = re.compile(r"_(blend|cross)_[a-z0-9_]+_[0-9a-f]{5}$")
MUTATION_SUFFIX = re.compile(r"_[a-z][a-z0-9]*_[0-9a-f]{5}$")
SWAP_KEYS = {"-torch.relu(1 - X)": "hinge", "-torch.relu(1 - X) ** 2": "sqhinge", "torch.relu(X) ** 2": "sqrelu",
             "torch.logaddexp(X, -X)": "logcosh", "torch.sqrt(1 + X ** 2)": "huber", "torch.exp(X) - X": "expm",
             "F.softplus(X) ** 2": "sqsoftplus"}
"""Names for the swaps whose function alone would not say what they are (else the function's name)."""
ADDER_KEYS = {"add_nll": "nll", "add_length_normalization": "lennorm", "add_margin": "margin", "add_kl": "kl"}


@dataclass(frozen=True)
class Edit:
    """An operator's result: the edited module and a one-line account of the edit."""

    module: LossModule
    idea: str
    key: str = ""
    """The edit's key term for the child's name (`tanh`, `nll`, ...); the operator's tag by default."""


def _shaping_name(node: ast.AST) -> str | None:
    """The swap-table key of a call or power node, else None."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        if isinstance(node.right, ast.Constant) and node.right.value == 2:
            return "square"
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        name = syntax.dotted_name(node.func)
        return "square" if name == "torch.square" else name
    return None


def _argument(node: ast.AST) -> ast.expr:
    if isinstance(node, ast.BinOp):
        return node.left
    assert isinstance(node, ast.Call)  # every site has a `_shaping_name`: a power or a call
    return node.args[0]


def _policy_sites(module: LossModule, keep: Callable[[ast.AST], bool]) -> list[ast.AST]:
    """Nodes for which `keep` holds, in functions' bodies, whose expression reads the policy."""
    sites = []
    for function in module.functions():
        tainted = syntax.tainted_names(function)
        for node in ast.walk(function):
            if keep(node) and syntax.loaded_names(node) & tainted:
                sites.append(node)
    return sites


def swap_function(module: LossModule, rng: random.Random) -> Edit | None:
    """Replace one shaping call (or a square) by a related function of the same direction."""
    sites = _policy_sites(module, lambda node: _shaping_name(node) in SWAPS)
    if not sites:
        return None
    site = rng.choice(sites)
    shaping_name = _shaping_name(site)
    assert shaping_name is not None  # sites were kept for a name in SWAPS
    template = rng.choice(SWAPS[shaping_name])
    old = ast.unparse(site)
    replacement = syntax.fill_template(template, X=_argument(site))
    for function in module.functions():
        syntax.replace_node(function, site, replacement)
    function_name = shaping_name.split(".")[-1]
    called = re.search(r"([a-z]+)\(", template.replace("torch.", "").replace("F.", ""))
    key = SWAP_KEYS.get(template) or (called.group(1) if called else "square")
    return Edit(module, f"swaps {function_name} for {template.replace('X', 'x')} in `{_clip(old)}`", key)


# -- add_term ---------------------------------------------------------------------------------

def _require_inputs(module: LossModule, names: Sequence[str]) -> None:
    module.inputs = [item for item in TENSOR_INPUTS if item in module.inputs or item in names]


def _new_hyperparameter(module: LossModule, base: str, value: float) -> str:
    name = syntax.fresh_name(base, module.parameter_names() | module.top_level_names() | _locals(module))
    module.hyperparameters[name] = value
    return name


def _locals(module: LossModule) -> set[str]:
    names = set()
    for function in module.functions():
        names |= {node.id for node in ast.walk(function) if isinstance(node, ast.Name)}
        names |= {arg.arg for arg in ast.walk(function.args) if isinstance(arg, ast.arg)}
    return names


def _function_of(module: LossModule, node: ast.AST) -> ast.FunctionDef:
    return next(function for function in module.functions() if any(sub is node for sub in ast.walk(function)))


def thread_names(module: LossModule, function: ast.FunctionDef, names: dict[str, float | None]) -> None:
    """Make `names` (tensor inputs: None; hyperparameters: their default) reach `function`.

    `loss` gets them in its signature (`_require_inputs`/`_new_hyperparameter` did that);
    a helper gets them as parameters, and every call of it passes them on, up to `loss`.
    """
    if function is module.function:
        return
    present = {arg.arg for arg in function.args.args + function.args.kwonlyargs}
    missing = {name: value for name, value in names.items() if name not in present}
    if not missing:
        return
    tensors = [ast.arg(arg=name) for name, value in missing.items() if value is None]
    floats = [ast.arg(arg=name, annotation=ast.Name(id="float", ctx=ast.Load()))
              for name, value in missing.items() if value is not None]
    with_defaults = len(function.args.defaults)
    split = len(function.args.args) - with_defaults
    function.args.args = function.args.args[:split] + tensors + function.args.args[split:] + floats
    function.args.defaults = function.args.defaults + [ast.Constant(value=float(value))
                                                       for value in missing.values() if value is not None]
    for caller in module.functions():
        calls = [node for node in ast.walk(caller) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name) and node.func.id == function.name]
        for call in calls:
            call.keywords += [ast.keyword(arg=name, value=ast.Name(id=name, ctx=ast.Load())) for name in missing]
        if calls:
            thread_names(module, caller, names)


def _add_to_return(module: LossModule, term: str) -> bool:
    returned = syntax.last_return(module.function)
    if returned is None or returned.value is None:  # last_return gives no bare `return`: this only narrows
        return False
    returned.value = ast.BinOp(left=returned.value, op=ast.Add(), right=ast.parse(term, mode="eval").body)
    return True


def add_nll(module: LossModule, rng: random.Random) -> str | None:
    """+ weight * per-token NLL of the chosen response (CPO, RPO): keeps the chosen likelihood up."""
    weight = _new_hyperparameter(module, "nll_weight", rng.choice((0.2, 0.5, 1.0, 2.0)))
    if not _add_to_return(module, f"{weight} * (-policy_chosen_logps / chosen_lengths.clamp(min=1.0))"):
        return None
    _require_inputs(module, ("policy_chosen_logps", "chosen_lengths"))
    return f"adds {weight} * the chosen response's per-token NLL"


def add_length_normalization(module: LossModule, rng: random.Random) -> str | None:
    """Divide every log-prob by its response length first (SimPO, IPO, Tulu 3's sigmoid_norm)."""
    used = syntax.loaded_names(module.function)
    # the sequences' sums only: a (B, T) token input divided by (B,) lengths is a shape error, not a loss
    logps = [item for item in TENSOR_INPUTS if item.endswith("_logps") and "_token_" not in item
             and item in module.inputs]
    if used & set(syntax.LENGTH_INPUTS) or not logps:
        return None
    lines = []
    for item in logps:
        lengths = "chosen_lengths" if "chosen" in item else "rejected_lengths"
        lines.append(f"{item} = {item} / {lengths}.clamp(min=1.0)")
    position = 1 if ast.get_docstring(module.function) is not None else 0
    module.function.body[position:position] = ast.parse("\n".join(lines)).body
    _require_inputs(module, syntax.LENGTH_INPUTS)
    return "length-normalizes the log-probs (per-token instead of per-sequence)"


def add_margin(module: LossModule, rng: random.Random) -> str | None:
    """Shift the argument of one shaping call by a target margin gamma (SimPO's gamma, IPO's target)."""
    sites = _policy_sites(module, lambda node: _shaping_name(node) in SHAPING + ("square",))
    if not sites:
        return None
    site = rng.choice(sites)
    gamma = _new_hyperparameter(module, "gamma", rng.choice((0.25, 0.5, 1.0, 2.0)))
    thread_names(module, _function_of(module, site), {gamma: module.hyperparameters[gamma]})
    sign = rng.choice(("-", "+"))
    argument = _argument(site)
    shifted = syntax.fill_template(f"X {sign} {gamma}", X=argument)
    syntax.replace_node(site, argument, shifted)
    return f"shifts `{_clip(ast.unparse(argument))}` by {sign}{gamma} (a target margin)"


def add_kl(module: LossModule, rng: random.Random) -> str | None:
    """A sequential-KL term: TDPO's gap inside a shaping call's argument, or a plain KL penalty."""
    if _locals(module) & set(syntax.KL_INPUTS):  # already has a KL term, or local names that would shadow it
        return None
    sites = _policy_sites(module, lambda node: _shaping_name(node) in ("F.logsigmoid", "torch.sigmoid"))
    weight = _new_hyperparameter(module, "kl_weight", rng.choice((0.05, 0.1, 0.5)))
    _require_inputs(module, syntax.KL_INPUTS)
    if sites and rng.random() < 0.5:
        site = rng.choice(sites)
        thread_names(module, _function_of(module, site),
                     {"chosen_kl": None, "rejected_kl": None, weight: module.hyperparameters[weight]})
        argument = _argument(site)
        gap = syntax.fill_template(f"X - {weight} * (rejected_kl - chosen_kl.detach())", X=argument)
        syntax.replace_node(site, argument, gap)
        return (f"subtracts {weight} * the rejected-minus-chosen sequential KL gap (TDPO)"
                f" inside `{_clip(ast.unparse(argument))}`")
    if not _add_to_return(module, f"{weight} * (chosen_kl + rejected_kl)"):
        return None
    return f"adds a sequential-KL penalty {weight} * (chosen_kl + rejected_kl)"


TERM_ADDERS = (add_nll, add_length_normalization, add_margin, add_kl)


def add_term(module: LossModule, rng: random.Random) -> Edit | None:
    """Add one term from `TERM_ADDERS` (tries the others when the first drawn does not apply)."""
    adders = list(TERM_ADDERS)
    rng.shuffle(adders)
    for adder in adders:
        edited = module.copy()
        idea = adder(edited, rng)
        if idea is not None:
            return Edit(edited, idea, ADDER_KEYS[adder.__name__])
    return None


# -- remove_term ------------------------------------------------------------------------------

def _is_constant(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp):
        return _is_constant(node.operand)
    return isinstance(node, ast.Constant)


def _removals(function: ast.FunctionDef) -> list[tuple[ast.AST, ast.expr]]:
    """(node, what replaces it): one operand of a + or -, or a division by a length dropped.

    The operand kept must read a tensor: dropping `x` from `delta - x` would leave a float
    where a tensor function (`torch.relu(delta)`) expects a tensor, and no gradient.
    """
    tensors = syntax.tainted_names(function, TENSOR_INPUTS)
    options: list[tuple[ast.AST, ast.expr]] = []
    for node in ast.walk(function):
        if not isinstance(node, ast.BinOp):
            continue
        if isinstance(node.op, (ast.Add, ast.Sub)):
            if not _is_constant(node.left) and syntax.loaded_names(node.right) & tensors:
                kept = node.right if isinstance(node.op, ast.Add) else ast.UnaryOp(op=ast.USub(), operand=node.right)
                options.append((node, kept))
            if not _is_constant(node.right) and syntax.loaded_names(node.left) & tensors:
                options.append((node, node.left))
        elif isinstance(node.op, ast.Div) and syntax.loaded_names(node.right) & set(syntax.LENGTH_INPUTS):
            options.append((node, node.left))
    return options


Drop = tuple[int, ast.AST, ast.expr]
"""A term that could be dropped: (index in `module.functions()`, the node, what replaces it)."""


def term_drops(module: LossModule) -> list[Drop]:
    """Every additive term or length normalization of the module's functions that could be dropped."""
    return [(index, node, keep)
            for index, function in enumerate(module.functions()) for node, keep in _removals(function)]


def drop_term(module: LossModule, drop: Drop) -> Edit | None:
    """A copy of `module` without the term; None when the rest would no longer read the policy."""
    index, node, keep = drop
    edited = module.copy()
    target_function = edited.functions()[index]
    path = _find_same(module.functions()[index], node, target_function)
    dropped = ast.unparse(node)
    syntax.replace_node(target_function, path, syntax.simplify(copy.deepcopy(keep)))
    if not syntax.depends_on_policy(edited.function):
        return None
    return Edit(edited, f"simplifies `{_clip(dropped)}` to `{_clip(ast.unparse(keep))}`")


def remove_term(module: LossModule, rng: random.Random) -> Edit | None:
    """Drop one additive term or length normalization; the rest must still read the policy."""
    options = term_drops(module)
    rng.shuffle(options)
    for option in options[:8]:
        edit = drop_term(module, option)
        if edit is not None:
            return edit
    return None


def _find_same(original_root: ast.AST, original: ast.AST, copied_root: ast.AST) -> ast.AST:
    """The node of a deep copy that sits where `original` sits in its original tree."""
    for before, after in zip(ast.walk(original_root), ast.walk(copied_root)):
        if before is original:
            return after
    raise LookupError("node not found in the copy")


# -- perturb_constant -------------------------------------------------------------------------

def _literal_sites(function: ast.FunctionDef) -> list[ast.Constant]:
    """Numeric literals that act as constants of the loss.

    Not axes, clamp bounds, exponents, indices or defaults; an integer only as an
    operand of arithmetic (`1 - x`), never as a count or an axis (`range(3)`, `x.sum(0)`).
    """
    skipped: set[int] = set()
    arithmetic: set[int] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.keyword) and node.arg in SKIPPED_KEYWORDS:
            skipped.update(id(sub) for sub in ast.walk(node.value))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            skipped.update(id(sub) for sub in ast.walk(node.right))
        elif isinstance(node, ast.Subscript):
            skipped.update(id(sub) for sub in ast.walk(node.slice))
        elif isinstance(node, ast.arguments):
            skipped.update(id(sub) for sub in ast.walk(node))
        if isinstance(node, ast.BinOp):
            operands = [node.left, node.right]
            arithmetic.update(id(operand.operand if isinstance(operand, ast.UnaryOp) else operand)
                              for operand in operands)
    return [node for node in ast.walk(function) if isinstance(node, ast.Constant) and id(node) not in skipped
            and isinstance(node.value, (int, float)) and not isinstance(node.value, bool) and node.value != 0
            and (isinstance(node.value, float) or id(node) in arithmetic)]


def _scaled(value: float, rng: random.Random) -> float:
    return float(f"{value * rng.choice(SCALE_FACTORS):.3g}")


def perturb_constant(module: LossModule, rng: random.Random) -> Edit | None:
    """Scale one hyperparameter default or literal. `beta` only when nothing else is there:
    the search tunes beta per candidate (DESIGN §4), so a beta-only child is the same loss."""
    names = [key for key, value in module.hyperparameters.items() if key != "beta" and value != 0]
    literals = [node for function in module.functions() for node in _literal_sites(function)]
    if not names and not literals:
        names = [key for key, value in module.hyperparameters.items() if value != 0]
    choices: list[str | ast.Constant] = [*names, *literals]  # a hyperparameter's name or a literal's node
    if not choices:
        return None
    choice = rng.choice(choices)
    if isinstance(choice, str):
        old = module.hyperparameters[choice]
        module.hyperparameters[choice] = _scaled(old, rng)
        return Edit(module, f"changes the default of {choice} from {old:g} to {module.hyperparameters[choice]:g}")
    literal = choice.value
    assert isinstance(literal, (int, float))  # _literal_sites keeps numeric literals only
    choice.value = _scaled(float(literal), rng)
    return Edit(module, f"changes the constant {literal:g} to {choice.value:g}")


# -- crossovers -------------------------------------------------------------------------------

def root_name(name: str) -> str:
    """The name a child's name starts from: `name` without the suffixes children's names end in
    (`dpo_tanh_3fa2c` -> `dpo`, `dpo_blend_ipo_1b2c3` -> `dpo`), so names do not grow with the lineage."""
    name = OLD_TAG_SUFFIX.sub("", name)
    while True:
        stripped = MUTATION_SUFFIX.sub("", CROSSOVER_SUFFIX.sub("", name))
        if stripped == name or not stripped:
            return name
        name = stripped


def _stem(name: str, limit: int = 24) -> str:
    return syntax.identifier(root_name(name), fallback="parent", limit=limit)


@dataclass
class Merged:
    """Two parents' code in one module: `first`'s parts as they were, `second`'s renamed apart."""

    module: LossModule
    second: LossModule
    """The second parent after renaming its top-level names away from the first's."""
    second_values: dict[str, str]
    """Second parent's hyperparameter -> the expression the child passes it (renamed or scaled)."""


def merge(first: LossModule, second: LossModule, rng: random.Random, share_equal: bool = False) -> Merged:
    """The union of both signatures (beta once) and both parents' definitions, names kept apart.

    `share_equal`: a hyperparameter both have with the same default is one parameter of the child
    (`modulate`'s two sides are one loss and its variant); else the second's is kept apart.
    """
    second = second.copy()
    taken = first.top_level_names() | first.parameter_names() | {"loss"}
    renames: dict[str, str] = {}
    for name in sorted(second.top_level_names()):
        if name in taken:
            renames[name] = syntax.fresh_name(name, taken | second.top_level_names() | set(renames.values()))
    for node in second.definitions + [second.function]:
        syntax.rename(node, renames)
    child = first.copy()
    child.definitions = child.definitions + second.definitions
    child.inputs = [item for item in TENSOR_INPUTS if item in first.inputs or item in second.inputs]
    values = _merge_hyperparameters(child, second, share_equal)
    return Merged(child, second, values)


def _merge_hyperparameters(child: LossModule, second: LossModule, share_equal: bool = False) -> dict[str, str]:
    """Add the second parent's hyperparameters to `child`; returns how to pass each one on."""
    values: dict[str, str] = {}
    for key, value in second.hyperparameters.items():
        if share_equal and child.hyperparameters.get(key) == value:
            continue  # one parameter, passed on under its own name
        if key == "beta":
            if "beta" not in child.hyperparameters:
                child.hyperparameters = {"beta": value, **child.hyperparameters}
            elif child.hyperparameters["beta"] != value:  # keep each parent's default strength
                scale = _new_hyperparameter(child, "beta_scale", float(f"{value / child.hyperparameters['beta']:.4g}"))
                values["beta"] = f"beta * {scale}"
            continue
        name = key if key not in child.parameter_names() else _new_hyperparameter(child, key, value)
        child.hyperparameters[name] = value
        values[key] = name
    return values


def as_helper(parent: LossModule, name: str, values: dict[str, str] | None = None,
              returned: ast.expr | None = None) -> tuple[ast.FunctionDef, ast.expr]:
    """`parent`'s `loss` as a helper `name`, and the child's call of it.

    `returned` replaces what the helper returns; the helper then keeps only the
    statements and parameters that value needs.
    """
    helper = copy.deepcopy(parent.function)
    helper.name = name
    if returned is not None:
        final, _ = _ending_return(helper)
        final.value = returned
    syntax.set_docstring(helper, f"{parent.name}: {parent.summary}" if parent.summary else parent.name)
    syntax.prune_body(helper)
    used = syntax.loaded_names(helper)
    inputs = [item for item in parent.inputs if item in used]
    hyperparameters = {key: value for key, value in parent.hyperparameters.items() if key in used}
    helper.args = syntax.build_arguments(inputs, hyperparameters)
    call = ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=[],
                    keywords=syntax.call_keywords(inputs + list(hyperparameters), values))
    return helper, call


def _helper_name(base: str, module: LossModule) -> str:
    return syntax.fresh_name(base, module.top_level_names() | module.parameter_names() | _locals(module) | {"loss"})


def _gate_margin(inputs: list[str]) -> str:
    """The implicit reward margin the blend's gate reads: with the reference when the child has it."""
    if "reference_chosen_logps" in inputs and "reference_rejected_logps" in inputs:
        return ("(policy_chosen_logps - reference_chosen_logps)"
                " - (policy_rejected_logps - reference_rejected_logps)")
    return "policy_chosen_logps - policy_rejected_logps"


def gated_mix(first: LossModule, second: LossModule, rng: random.Random, helper_names: tuple[str, str],
              note: str, share_equal: bool = False) -> tuple[LossModule, str]:
    """A child computing (1 - gate) * first + gate * second per pair, each parent's `loss` a helper
    (`helper_names`, made fresh), gate = sigmoid(beta * margin / tau), `note` its `loss`'s docstring;
    returns the child and the name of tau, a new hyperparameter.

    The gate reads beta * margin over tau, as DiscoPOP's eq. 5 and TRL's `discopop` do: the child is
    then a function of beta * margin alone, so tau (not beta, which the search tunes) sets how sharp
    the switch from `first` (lost pairs) to `second` (won pairs) is.
    """
    merged = merge(first, second, rng, share_equal)
    child = merged.module
    first_helper, first_call = as_helper(first, _helper_name(helper_names[0], child))
    child.definitions = [first_helper] + child.definitions  # reserve the name before naming the second
    second_helper, second_call = as_helper(merged.second, _helper_name(helper_names[1], child), merged.second_values)
    child.definitions = child.definitions + [second_helper]
    _with_beta(child)
    _require_inputs(child, syntax.POLICY_INPUTS)
    tau = _new_hyperparameter(child, "tau", rng.choice((0.05, 0.1, 0.5, 1.0)))
    body = (f"first_losses = {ast.unparse(first_call)}\n"
            f"second_losses = {ast.unparse(second_call)}\n"
            f"margin = {_gate_margin(child.inputs)}\n"
            f"gate = torch.sigmoid(beta * margin / {tau})\n"
            f"return (1 - gate) * first_losses + gate * second_losses")
    function = ast.parse("def loss():\n" + "\n".join("    " + line for line in body.splitlines())).body[0]
    assert isinstance(function, ast.FunctionDef)  # the source parsed is one `def loss()`
    child.function = function
    syntax.set_docstring(child.function, note)
    return child, tau


def blend(first: LossModule, second: LossModule, rng: random.Random) -> Edit | None:
    """(1 - w) * first + w * second with w = sigmoid(beta * margin / tau): DiscoPOP's blend."""
    child, tau = gated_mix(first, second, rng, (f"{_stem(first.name)}_loss", f"{_stem(second.name)}_loss"),
                           f"Won pairs (margin > 0) lean to {second.name}, lost pairs to {first.name}.")
    return Edit(child, f"blends {first.name} (lost pairs) and {second.name} (won pairs) with the gate "
                       f"sigmoid(beta * margin / {tau}), as DiscoPOP blends logistic and exponential losses")


def cross_terms(first: LossModule, second: LossModule, rng: random.Random) -> Edit | None:
    """Put one additive term of the second parent's loss in place of (or next to) one of the first's."""
    first_return, second_return = syntax.last_return(first.function), syntax.last_return(second.function)
    if first_return is None or second_return is None:
        return None
    merged = merge(first, second, rng)
    child, donor = merged.module, merged.second
    _, donor_value = _ending_return(donor.function)
    donor_terms = syntax.split_terms(donor_value)
    sign, term = rng.choice(donor_terms)
    helper_name = _helper_name(f"{_stem(second.name)}_term", child)
    signed = term if sign > 0 else ast.UnaryOp(op=ast.USub(), operand=term)
    helper, call = as_helper(donor, helper_name, merged.second_values, returned=signed)
    syntax.set_docstring(helper, f"A term of {second.name}: {_clip(ast.unparse(signed))}")
    child.definitions = child.definitions + [helper]
    returned, value = _ending_return(child.function)
    terms = syntax.split_terms(value)
    if len(terms) >= 2:
        index = rng.randrange(len(terms))
        replaced = ast.unparse(terms[index][1])
        terms[index] = (1, call)
        returned.value = syntax.join_terms(terms)
        idea = (f"replaces {first.name}'s term `{_clip(replaced)}`"
                f" by {second.name}'s `{_clip(ast.unparse(term))}`")
    else:
        weight = _new_hyperparameter(child, "cross_weight", rng.choice((0.25, 0.5, 1.0)))
        returned.value = ast.BinOp(left=value, op=ast.Add(),
                                   right=ast.BinOp(left=ast.Name(id=weight, ctx=ast.Load()), op=ast.Mult(), right=call))
        idea = f"adds {weight} * {second.name}'s term `{_clip(ast.unparse(term))}` to {first.name}"
    return Edit(child, idea)


def _ending_return(function: ast.FunctionDef) -> tuple[ast.Return, ast.expr]:
    """The final `return value` of a function its caller checked ends in one, and that value."""
    returned = syntax.last_return(function)
    if returned is None or returned.value is None:  # last_return gives no bare `return`: the second test narrows
        raise LookupError(f"{function.name} does not end in `return value`")  # costs one attempt, like any edit error
    return returned, returned.value


def _clip(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- beyond recombination: per-pair weights, piecewise parts, batch statistics, gates, growth ---

def _fresh(module: LossModule, base: str) -> str:
    """A local name no parameter, definition or local of the module uses."""
    return syntax.fresh_name(base, module.parameter_names() | module.top_level_names() | _locals(module))


def _with_beta(module: LossModule) -> None:
    if "beta" not in module.hyperparameters:
        module.hyperparameters = {"beta": 0.1, **module.hyperparameters}


def _define_first(module: LossModule, line: str) -> None:
    """Put `line` at the top of `loss`'s body (after its docstring): it may read only `loss`'s parameters."""
    position = 1 if ast.get_docstring(module.function) is not None else 0
    module.function.body[position:position] = ast.parse(line).body


def _margin_local(module: LossModule) -> str:
    """A local of `loss` holding the implicit reward margin (policy and, when present, reference), for
    use in its return: the loss's own when it assigns exactly that once, else a fresh one."""
    _require_inputs(module, syntax.POLICY_INPUTS)
    expression = _gate_margin(module.inputs)
    wanted = ast.unparse(ast.parse(expression, mode="eval"))
    assignments = [node for node in module.function.body if isinstance(node, ast.Assign)]
    for node in assignments:
        target = node.targets[0]
        if (len(node.targets) == 1 and isinstance(target, ast.Name) and ast.unparse(node.value) == wanted
                and sum(1 for other in assignments for t in other.targets
                        if isinstance(t, ast.Name) and t.id == target.id) == 1):
            return target.id
    name = _fresh(module, "pair_margin")
    _define_first(module, f"{name} = {expression}")
    return name


def weight_pairs(module: LossModule, rng: random.Random) -> Edit | None:
    """w(margin) * L per pair: focal-style (1 - sigmoid(beta * margin)) ** gamma, detached, so pairs
    already won count less; or by the margin's sign, as PADLL weights won and lost pairs apart."""
    returned = syntax.last_return(module.function)
    if returned is None or returned.value is None:
        return None
    _with_beta(module)
    margin = _margin_local(module)
    if rng.random() < 0.5:
        gamma = _new_hyperparameter(module, "focal_gamma", rng.choice((0.5, 1.0, 2.0)))
        weight, key = f"(1 - torch.sigmoid(beta * {margin})).detach() ** {gamma}", "focal"
        idea = f"weights each pair by (1 - sigmoid(beta * margin)) ** {gamma}, detached: won pairs count less"
    else:
        won = _new_hyperparameter(module, "won_weight", rng.choice((0.25, 0.5, 2.0)))
        weight, key = f"torch.where({margin} > 0, {won}, 1.0)", "signweight"
        idea = f"weights won pairs (margin > 0) by {won} and lost pairs by 1"
    returned.value = syntax.fill_template(f"{weight} * (LOSS)", LOSS=returned.value)
    return Edit(module, idea, key)


def piecewise(module: LossModule, rng: random.Random) -> Edit | None:
    """A piecewise part: one shaping call's argument clamped to [-clip, clip] (no gradient past it), or a
    squared hinge added where beta * margin falls short of a target (torch.where)."""
    sites = _policy_sites(module, lambda node: _shaping_name(node) in SHAPING + ("square",))
    if sites and rng.random() < 0.5:
        site = rng.choice(sites)
        clip = _new_hyperparameter(module, "clip", rng.choice((2.0, 5.0, 10.0)))
        thread_names(module, _function_of(module, site), {clip: module.hyperparameters[clip]})
        argument = _argument(site)
        clamped = syntax.fill_template(f"torch.clamp(X, min=-{clip}, max={clip})", X=argument)
        syntax.replace_node(site, argument, clamped)
        return Edit(module, f"clamps `{_clip(ast.unparse(argument))}` to [-{clip}, {clip}]", "clamp")
    _with_beta(module)
    margin = _margin_local(module)
    target = _new_hyperparameter(module, "target", rng.choice((0.5, 1.0, 2.0)))
    weight = _new_hyperparameter(module, "hinge_weight", rng.choice((0.1, 0.5, 1.0)))
    shortfall = f"{target} - beta * {margin}"
    if not _add_to_return(module, f"{weight} * torch.where({shortfall} > 0, ({shortfall}) ** 2, "
                                  f"torch.zeros_like({margin}))"):
        return None
    return Edit(module, f"adds {weight} * a squared hinge where beta * margin is below {target}", "sqhinge")


def batch_statistic(module: LossModule, rng: random.Random) -> Edit | None:
    """One shaping call's argument read against its batch: centred on its detached batch mean, or
    divided by one plus its detached mean size (a batch-adaptive beta, in the spirit of beta-DPO)."""
    sites = _policy_sites(module, lambda node: _shaping_name(node) in SHAPING + ("square",))
    if not sites:
        return None
    site = rng.choice(sites)
    argument = _argument(site)
    if rng.random() < 0.5:
        template, key, how = "X - X.detach().mean()", "centred", "centres it on its detached batch mean"
    else:
        template, key = "X / (1 + X.detach().abs().mean())", "scaled"
        how = "divides it by 1 + its detached batch mean size"
    syntax.replace_node(site, argument, syntax.fill_template(template, X=argument))
    return Edit(module, f"reads `{_clip(ast.unparse(argument))}` against the batch: {how}", key)


GATE_READINGS = {
    "chosen log-ratio": ("policy_chosen_logps - reference_chosen_logps",
                         ("policy_chosen_logps", "reference_chosen_logps")),
    "rejected log-ratio": ("reference_rejected_logps - policy_rejected_logps",
                           ("policy_rejected_logps", "reference_rejected_logps")),
    "per-token margin": ("policy_chosen_logps / chosen_lengths.clamp(min=1.0)"
                         " - policy_rejected_logps / rejected_lengths.clamp(min=1.0)",
                         syntax.POLICY_INPUTS + syntax.LENGTH_INPUTS),
    "KL gap": ("rejected_kl - chosen_kl", syntax.KL_INPUTS),
}
"""What a gate may look at instead of the margin: the expression and the inputs it reads."""


def gate_input(module: LossModule, rng: random.Random) -> Edit | None:
    """Change what a gate looks at: a `gate... = torch.sigmoid(...)` assignment's argument becomes
    beta * (another reading of the pair) / tau, e.g. the chosen log-ratio alone or the KL gap."""
    gates = [(function, node) for function in module.functions() for node in ast.walk(function)
             if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
             and "gate" in node.targets[0].id and isinstance(node.value, ast.Call)
             and syntax.dotted_name(node.value.func) == "torch.sigmoid" and len(node.value.args) == 1]
    if not gates:
        return None
    function, assignment = rng.choice(gates)
    reading = rng.choice(sorted(GATE_READINGS))
    expression, inputs = GATE_READINGS[reading]
    _with_beta(module)
    _require_inputs(module, inputs)
    tau = _new_hyperparameter(module, "gate_tau", rng.choice((0.05, 0.1, 0.5, 1.0)))
    thread_names(module, function, {**{name: None for name in inputs}, "beta": module.hyperparameters["beta"],
                                    tau: module.hyperparameters[tau]})
    assert isinstance(assignment.value, ast.Call)  # kept above: a torch.sigmoid call
    assignment.value.args = [ast.parse(f"beta * ({expression}) / {tau}", mode="eval").body]
    return Edit(module, f"gates on the {reading} instead (sigmoid(beta * {reading} / {tau}))", "gate")


GROWTH_ATOMS = {
    "margin": None,  # the implicit reward margin (_gate_margin)
    "chosen_ratio": ("policy_chosen_logps - reference_chosen_logps", ("policy_chosen_logps", "reference_chosen_logps")),
    "rejected_ratio": ("policy_rejected_logps - reference_rejected_logps",
                       ("policy_rejected_logps", "reference_rejected_logps")),
    "per_token_margin": GATE_READINGS["per-token margin"],
}
GROWTH_UNARY = ("-F.logsigmoid(X)", "torch.sigmoid(-X)", "torch.tanh(-X)", "F.softplus(-X)", "torch.relu(-X)",
                "X ** 2", "torch.abs(X)", "torch.exp(-torch.relu(X))")
GROWTH_BINARY = ("X + Y", "X - Y", "X * Y")
"""The typed grammar of `grow_term`: atoms are (B,) readings of the pair, scaled by beta; unary shapes
are loss-like (mostly decreasing in their argument); every node is a (B,) tensor."""


def _grow(module: LossModule, rng: random.Random, depth: int) -> str:
    """A random expression of the grammar, at most `depth` operators deep; its inputs are required."""
    if depth == 0 or rng.random() < 0.3:
        name = rng.choice(sorted(GROWTH_ATOMS))
        atom = GROWTH_ATOMS[name]
        if atom is None:
            _require_inputs(module, syntax.POLICY_INPUTS)
            return f"beta * ({_gate_margin(module.inputs)})"
        _require_inputs(module, atom[1])
        return f"beta * ({atom[0]})"
    if rng.random() < 0.7:
        return "(" + rng.choice(GROWTH_UNARY).replace("X", f"({_grow(module, rng, depth - 1)})") + ")"
    first, second = _grow(module, rng, depth - 1), _grow(module, rng, depth - 1)
    return "(" + rng.choice(GROWTH_BINARY).replace("X", f"({first})").replace("Y", f"({second})") + ")"


def grow_term(module: LossModule, rng: random.Random) -> Edit | None:
    """+ w * e: a new term grown from a typed grammar over the contract's inputs (GROWTH_*), so the
    search can write what no seed holds; w is a new hyperparameter."""
    _with_beta(module)
    expression = rng.choice(GROWTH_UNARY).replace("X", f"({_grow(module, rng, 2)})")
    weight = _new_hyperparameter(module, "grown_weight", rng.choice((0.1, 0.3, 1.0)))
    if not _add_to_return(module, f"{weight} * {expression}"):
        return None
    text = ast.unparse(ast.parse(expression, mode="eval"))
    return Edit(module, f"adds {weight} * `{_clip(text)}`, a term grown from the contract's inputs", "grown")


VARIANT_SWAP_SHARE = 0.5
"""How often `modulate`'s variant is the parent's own `swap_function` edit (DiscoPOP's logistic ->
exponential is one) rather than another one-parent edit."""


def _variant(module: LossModule, rng: random.Random) -> tuple[str, Edit] | None:
    """(operator, edit): a copy of `module` changed by one other one-parent operator; `swap_function`
    first with probability VARIANT_SWAP_SHARE, else last; None when none applies."""
    others = [name for name in SINGLE_OPERATORS if name not in ("swap_function", "modulate")]
    rng.shuffle(others)
    order = ["swap_function", *others] if rng.random() < VARIANT_SWAP_SHARE else [*others, "swap_function"]
    for operator in order:
        edit = SINGLE_OPERATORS[operator](module.copy(), rng)
        if edit is not None:
            return operator, edit
    return None


def modulate(module: LossModule, rng: random.Random) -> Edit | None:
    """DiscoPOP's log-ratio modulation for any loss: (1 - gate) * L + gate * L', L' a variant of L by
    one other edit (`_variant`), gate = sigmoid(beta * margin / tau): lost pairs keep the parent, won
    pairs get the variant. DPO modulated by its exponential swap at tau 0.05 is DiscoPOP's LRML."""
    drawn = _variant(module, rng)
    if drawn is None:
        return None
    operator, variant = drawn
    variant.module.name, variant.module.summary = f"{module.name}'s variant", variant.idea  # its helper's docstring
    key = variant.key or OPERATOR_TAGS.get(operator, "variant")  # an identifier: names end `_mod<key>_<hash>`
    stem = _stem(module.name)
    child, tau = gated_mix(module, variant.module, rng, (f"{stem}_loss", f"{stem}_{key}"),
                           f"Won pairs (margin > 0) lean to {module.name}'s variant ({key}), lost pairs to "
                           f"{module.name} itself.", share_equal=True)
    return Edit(child, f"modulates {module.name} by the margin, as DiscoPOP does: lost pairs keep it, won pairs "
                       f"get a variant that {variant.idea} (`{operator}`), with the gate "
                       f"sigmoid(beta * margin / {tau})", f"mod{key}")


SINGLE_OPERATORS: dict[str, Callable[[LossModule, random.Random], Edit | None]] = {
    "swap_function": swap_function, "add_term": add_term,
    "remove_term": remove_term, "perturb_constant": perturb_constant,
    "weight_pairs": weight_pairs, "piecewise": piecewise, "batch_statistic": batch_statistic,
    "gate_input": gate_input, "grow_term": grow_term, "modulate": modulate,
}
PAIR_OPERATORS: dict[str, Callable[[LossModule, LossModule, random.Random], Edit | None]] = {
    "blend": blend, "cross_terms": cross_terms,
}
OPERATORS = tuple(SINGLE_OPERATORS) + tuple(PAIR_OPERATORS)


# -- the proposer ------------------------------------------------------------------------------

def _code_hash(source: str) -> str:
    """Hash of the code without its module docstring: a child differing only there is its parent."""
    tree = ast.parse(source)
    if ast.get_docstring(tree) is not None:
        tree.body = tree.body[1:]
    return source_hash(ast.unparse(tree))


def _describe(operator: str, parents: Sequence[ParentView], idea: str) -> str:
    names = " and ".join(parent.name for parent in parents)
    origin = ", ".join(f"{parent.name} (candidate {parent.id})" for parent in parents)
    kind = "Crossover" if len(parents) > 1 else "Mutation"
    return (f"{kind} of {names} (operator `{operator}`): {idea}.\n\n"
            f"Written by lossearch's offline mutation proposer from {origin}.")


class MutationProposer:
    """The default, offline proposer: syntax-tree operators over one parent or two.

    Given two parents, a two-parent operator (`CROSSOVERS`) is drawn with probability
    `pair_share`, else a one-parent operator (`MUTATIONS`) of the first; an operator that cannot
    edit these parents yields to another of its family, and a family none of whose operators can,
    to the other family. One parent gets a mutation; no parent,
    a mutation of a candidate drawn from `context.top`. Within a family the operator is chosen by
    UCB1 over the campaign's record of each operator (`context.operators`: the share of its
    children that improved on their parents, lossearch.ranking.operator_stats), so the operators
    that have worked in this campaign are tried more, and every one is tried once first. The
    record is the store's, so a resumed campaign chooses as the uninterrupted one would. Every
    random choice comes from the `rng` passed in, so a seed fixes the children.
    """

    name = "mutation"

    def __init__(self, operators: Sequence[str] | None = None, max_attempts: int = 24, pair_share: float = 0.4,
                 exploration: float = 1.0) -> None:
        """`operators` limits the draw to these names (of `OPERATORS`); `max_attempts` bounds the retries;
        `pair_share` is the chance of a two-parent operator when two parents are given; `exploration`
        is UCB1's weight on operators tried less."""
        chosen = tuple(operators) if operators is not None else OPERATORS
        unknown = [name for name in chosen if name not in OPERATORS]
        if unknown or not chosen:
            raise ValueError(f"unknown mutation operators {unknown}; choose from {', '.join(OPERATORS)}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= pair_share <= 1:
            raise ValueError("pair_share must be between 0 and 1")
        self.operators = chosen
        self.max_attempts = max_attempts
        self.pair_share = pair_share
        self.exploration = exploration

    def propose(self, parents: Sequence[ParentView], context: ProposalContext,
                rng: random.Random) -> list[Proposal]:
        """One child of `parents` (see the class docstring), or [] when every attempt failed."""
        parents = list(parents)[:2]
        if not parents:
            if not context.top:
                return []
            parents = [rng.choice(list(context.top))]
        modules = self._read(parents)
        if modules is None:
            return []
        parent_hashes = {_code_hash(parent.source) for parent in parents}
        for _ in range(self.max_attempts):
            try:
                proposal = self._attempt(parents, modules, context, rng)
            except (LookupError, AttributeError, TypeError, ValueError, RecursionError):
                # an operator met code it does not understand (parents may be LLM-written): this
                # attempt is lost, the campaign is not
                continue
            if proposal is not None and _code_hash(proposal.source) not in parent_hashes:
                return [proposal]
        return []

    def choose_operator(self, family: Sequence[str], context: ProposalContext, rng: random.Random) -> str:
        """UCB1 over `family` by the campaign's record of each operator (untried ones first, in random order)."""
        arms = {}
        for name in rng.sample(list(family), len(family)):
            record = context.operators.get(name)
            arms[name] = (ArmStats() if record is None else
                          ArmStats(selections=record.children, outcomes=record.scored, improvement=record.gain))
        return ucb_choice(arms, rng, self.exploration)

    def _read(self, parents: list[ParentView]) -> list[LossModule] | None:
        try:
            return [syntax.read_module(parent.source, parent.name) for parent in parents]
        except CandidateError:
            return None  # a parent that breaks the contract cannot be edited safely

    def _attempt(self, parents: list[ParentView], modules: list[LossModule], context: ProposalContext,
                 rng: random.Random) -> Proposal | None:
        """Draw a family and an operator, apply it, and check the child statically; None when any step fails."""
        pair = [name for name in self.operators if name in PAIR_OPERATORS] if len(modules) == 2 else []
        single = [name for name in self.operators if name in SINGLE_OPERATORS]
        families = (pair, single) if pair and rng.random() < self.pair_share else (single, pair)
        for family in families:
            remaining = list(family)
            while remaining:  # an operator that cannot edit these parents (no gate to move) yields to the next
                operator = self.choose_operator(remaining, context, rng)
                remaining.remove(operator)
                if operator in PAIR_OPERATORS:
                    edit = PAIR_OPERATORS[operator](modules[0].copy(), modules[1].copy(), rng)
                    used = parents
                else:
                    edit = SINGLE_OPERATORS[operator](modules[0].copy(), rng)
                    used = parents[:1]
                if edit is not None:
                    return self._finish(edit, operator, used)
        return None

    def _finish(self, edit: Edit, operator: str, parents: list[ParentView]) -> Proposal | None:
        for function in edit.module.functions():
            syntax.simplify(function)
        syntax.prune(edit.module)
        if not edit.module.inputs or not syntax.depends_on_policy(edit.module.function):
            return None
        try:
            source = syntax.write_module(edit.module, _describe(operator, parents, edit.idea))
            check_policy(source)
        except (CandidateError, ValueError, SyntaxError):
            return None
        # short and stable: the first parent's root, the edit's key term (a crossover's: its operator
        # and the second parent's root), five hex digits of the code; the rest is in the lineage
        key = edit.key or OPERATOR_TAGS[operator]
        if len(parents) == 2:
            key = f"{key}_{_stem(parents[1].name, 16)}"
        name = f"{_stem(parents[0].name, 16)}_{key}_{_code_hash(source)[:5]}"
        relation = "crossover" if len(parents) == 2 else "mutation"
        return Proposal(source=source, name=name, idea=edit.idea, parent_ids=tuple(parent.id for parent in parents),
                        relation=relation, operator=operator, proposer=self.name, model=operator)
