"""The loss contract (DESIGN §2): the one module that knows what a candidate loss is.

A candidate is a Python module defining `loss`. Its parameters are chosen by
name from `CONTRACT_INPUTS`; any other keyword parameter must have a float
default and is a hyperparameter. `parse_spec` reads the signature without
running anything; `load_loss` executes the module (only ever inside a sandbox
child, or for our own trusted seeds); `call_loss` binds inputs by name, calls
the function and checks what it returns.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from lossearch.failures import CandidateError

# name -> meaning; a tensor input is shape (B,) unless its meaning says "()" (a 0-dim tensor) or "(B, T)"
# (one entry per response position: T is the batch's widest response, the same for all six token inputs)
CONTRACT_INPUTS: Mapping[str, str] = MappingProxyType(
    {
        "policy_chosen_logps": "sum of the policy's token log-probs of the chosen response",
        "policy_rejected_logps": "the same for the rejected response",
        "reference_chosen_logps": "the frozen reference model's, chosen",
        "reference_rejected_logps": "the frozen reference model's, rejected",
        "chosen_lengths": "number of chosen response tokens (float)",
        "rejected_lengths": "number of rejected response tokens (float)",
        "chosen_kl": "sum over response positions of KL(reference || policy), chosen (TDPO)",
        "rejected_kl": "the same for the rejected response",
        "chosen_scores": "the data's score of the chosen response (the task's labelling reward; a user dataset's "
                         "`chosen_score`), for offset losses (ODPO)",
        "rejected_scores": "the same for the rejected response",
        "progress": "() share of training done: step / steps, 0 at the first step (schedule-aware losses)",
        "running_margin_mean": "() running mean of the log-ratio margin (policy - reference, chosen minus "
                               "rejected): an EMA (momentum 0.9) of its batch means, this batch's included, "
                               "kept by trusted code, detached (adaptive-beta losses: beta-DPO)",
        "running_margin_std": "() the same EMA of the margin's batch standard deviations",
        "policy_chosen_token_logps": "(B, T) the policy's log-prob of each chosen response token, in order, "
                                     "0 off the response (its row sums to policy_chosen_logps); token-level "
                                     "losses (SamPO, LD-DPO)",
        "policy_rejected_token_logps": "(B, T) the same for the rejected response",
        "reference_chosen_token_logps": "(B, T) the reference model's, chosen",
        "reference_rejected_token_logps": "(B, T) the reference model's, rejected",
        "chosen_mask": "(B, T) float: 1 on the chosen response's tokens, 0 on padding (its row sums to "
                       "chosen_lengths)",
        "rejected_mask": "(B, T) the same for the rejected response",
        "beta": "the strength hyperparameter that every loss receives (float)",
    }
)
TENSOR_INPUTS = tuple(name for name in CONTRACT_INPUTS if name != "beta")
"""Every contract input but beta: all of them are tensors, (B,), (B, T) or 0-dim."""
SCORE_INPUTS = ("chosen_scores", "rejected_scores")
"""Inputs only data with scores has: a tier without them fails a loss that asks (`missing_scores`)."""
TRAINING_STATE_INPUTS = ("progress", "running_margin_mean", "running_margin_std")
"""0-dim inputs that trusted code keeps over a run (`TrainingState`); the same for every pair of a batch."""
POLICY_TOKEN_INPUTS = ("policy_chosen_token_logps", "policy_rejected_token_logps")
"""(B, T) policy-side token inputs: the training tiers carry their gradients back like the sequence log-probs'."""
TOKEN_INPUTS = (*POLICY_TOKEN_INPUTS, "reference_chosen_token_logps", "reference_rejected_token_logps",
                "chosen_mask", "rejected_mask")
"""Every (B, T) input: the finetune tier runs the reference model over each batch for a loss that reads one."""
LossFn = Callable[[Mapping[str, Any], float], Any]
"""loss_fn(tensors, beta) -> (B,) per-pair losses: trusted code's binding of `call_loss` to one candidate."""
DEFAULT_BETA = 0.1
MAX_SOURCE_CHARS = 20_000


@dataclass(frozen=True)
class LossSpec:
    """What the contract knows about a candidate without running it."""

    name: str
    source: str
    summary: str
    inputs: tuple[str, ...]
    """Contract inputs the function asks for, in signature order (beta included)."""
    hyperparameters: Mapping[str, float] = field(default_factory=dict)
    """Hyperparameter defaults by name; `beta` is always present."""
    path: str | None = None

    @property
    def code_hash(self) -> str:
        return source_hash(self.source)

    @property
    def uses_kl(self) -> bool:
        return "chosen_kl" in self.inputs or "rejected_kl" in self.inputs

    @property
    def uses_scores(self) -> bool:
        return any(name in self.inputs for name in SCORE_INPUTS)

    @property
    def uses_tokens(self) -> bool:
        return any(name in self.inputs for name in TOKEN_INPUTS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "summary": self.summary,
            "hyperparameters": dict(self.hyperparameters),
            "inputs": list(self.inputs),
        }


def source_hash(source: str) -> str:
    """Hash of the source with comments and formatting normalized away."""
    try:
        canonical = ast.dump(ast.parse(source), annotate_fields=False)
    except SyntaxError:
        canonical = source
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_module(source: str) -> ast.Module:
    """Parse candidate source or raise a `syntax` CandidateError."""
    if len(source) > MAX_SOURCE_CHARS:
        raise CandidateError("policy", f"source is {len(source)} characters; the limit is {MAX_SOURCE_CHARS}")
    try:
        return ast.parse(source)
    except SyntaxError as error:
        raise CandidateError("syntax", f"line {error.lineno}: {error.msg}") from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise CandidateError("syntax", f"cannot parse: {error}") from None


def find_loss_function(tree: ast.Module) -> ast.FunctionDef:
    """The module-level `def loss`; exactly one is required."""
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "loss"]
    if not found:
        raise CandidateError("policy", "the module must define a function named `loss`")
    if len(found) > 1:
        raise CandidateError("policy", "the module defines `loss` more than once")
    return found[0]


def _float_default(node: ast.expr) -> float | None:
    """The value of a numeric literal default (with an optional sign), else None."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_signature(function: ast.FunctionDef) -> tuple[tuple[str, ...], dict[str, float]]:
    """Split `loss`'s parameters into contract inputs and hyperparameter defaults."""
    args = function.args
    if args.vararg or args.kwarg or args.posonlyargs:
        raise CandidateError("policy", "`loss` may not take *args, **kwargs or positional-only parameters")
    params = args.args + args.kwonlyargs
    defaults: dict[str, ast.expr] = {}
    for arg, positional_default in zip(reversed(args.args), reversed(args.defaults)):
        defaults[arg.arg] = positional_default
    for arg, keyword_default in zip(args.kwonlyargs, args.kw_defaults):
        if keyword_default is not None:
            defaults[arg.arg] = keyword_default

    inputs: list[str] = []
    hyperparameters: dict[str, float] = {"beta": DEFAULT_BETA}
    for arg in params:
        name = arg.arg
        default = _float_default(defaults[name]) if name in defaults else None
        if name in defaults and default is None:
            raise CandidateError("policy", f"parameter `{name}` must have a numeric (float) default")
        if name in TENSOR_INPUTS:
            if name in defaults:
                raise CandidateError("policy", f"contract input `{name}` may not have a default")
            inputs.append(name)
        elif name == "beta":
            inputs.append(name)
            if default is not None:
                hyperparameters["beta"] = default
        elif default is None:
            known = ", ".join(CONTRACT_INPUTS)
            raise CandidateError("policy",
                                 f"unknown parameter `{name}`: use one of {known}, or give it a float default")
        else:
            hyperparameters[name] = default
    if not any(name in TENSOR_INPUTS for name in inputs):
        raise CandidateError("policy", "`loss` takes no log-probability input, so it cannot train anything")
    return tuple(inputs), hyperparameters


def parse_spec(source: str, name: str = "candidate", path: str | None = None) -> LossSpec:
    """Read a candidate's contract from its source, without executing it."""
    tree = parse_module(source)
    function = find_loss_function(tree)
    inputs, hyperparameters = read_signature(function)
    docstring = ast.get_docstring(tree) or ast.get_docstring(function) or ""
    summary = docstring.strip().splitlines()[0] if docstring.strip() else ""
    return LossSpec(name, source, summary, inputs, MappingProxyType(hyperparameters), path)


EXPORTED_ADAPTER_MARKER = "# -- exported adapter"
"""The line after which a module written by `lossearch export` carries its TRL adapter."""


def loss_source(text: str) -> str:
    """The candidate in a loss file: all of it, or, in a module `lossearch export` wrote, what precedes
    its TRL adapter (trusted code of ours that no candidate may contain, so no tier sees it)."""
    for start, line in _line_starts(text):
        if line.startswith(EXPORTED_ADAPTER_MARKER):
            return text[:start].rstrip("\n") + "\n"
    return text


def _line_starts(text: str) -> list[tuple[int, str]]:
    starts, position = [], 0
    for line in text.splitlines(keepends=True):
        starts.append((position, line))
        position += len(line)
    return starts


def read_spec(path: str | Path) -> LossSpec:
    """Read a candidate's contract from a file (`loss_source` of it); its name is the file's stem."""
    path = Path(path)
    return parse_spec(loss_source(path.read_text(encoding="utf-8")), name=path.stem, path=str(path))


# -- running a loss: only inside the sandbox child, or for our own seeds -----------------

ALLOWED_MODULES = frozenset({"torch", "torch.nn", "torch.nn.functional", "math", "__future__"})
SAFE_BUILTINS = (
    "abs all any bool dict enumerate filter float int isinstance len list map max min "
    "pow range reversed round sorted sum tuple zip True False None "
    "ArithmeticError Exception IndexError KeyError RuntimeError TypeError ValueError ZeroDivisionError"
).split()


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level != 0 or name not in ALLOWED_MODULES:
        raise CandidateError("policy", f"import of {name!r} is not allowed in a loss")
    return builtins.__import__(name, globals, locals, fromlist, level)


def restricted_builtins() -> dict[str, Any]:
    """The builtins a candidate module sees: arithmetic helpers and guarded imports only."""
    table = {name: getattr(builtins, name) for name in SAFE_BUILTINS}
    table["__import__"] = _guarded_import
    table["__build_class__"] = None
    return table


def load_loss(source: str, name: str = "candidate", restricted: bool = True) -> Callable[..., Any]:
    """Execute a candidate module in a fresh namespace and return its `loss`.

    `restricted` gives the module only `restricted_builtins()`; the sandbox's
    own tests turn it off to show that the jail holds without it.
    """
    code = compile(parse_module(source), f"<{name}>", "exec")
    table = restricted_builtins() if restricted else builtins.__dict__
    namespace: dict[str, Any] = {"__name__": f"lossearch_candidate_{name}", "__builtins__": table}
    try:
        exec(code, namespace)  # noqa: S102 - this is the point: the sandbox child runs candidate code
    except CandidateError:
        raise
    except Exception as error:
        raise CandidateError("exception", f"importing the module raised {type(error).__name__}: {error}") from None
    function = namespace.get("loss")
    if not callable(function):
        raise CandidateError("policy", "the module must define a function named `loss`")
    return function


def bind_inputs(spec: LossSpec, tensors: Mapping[str, Any], beta: float | None = None,
                hyperparameters: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The keyword arguments `loss` asks for: contract inputs, beta, hyperparameter overrides."""
    kwargs: dict[str, Any] = {}
    for name in spec.inputs:
        if name == "beta":
            kwargs["beta"] = float(spec.hyperparameters["beta"] if beta is None else beta)
        elif name in tensors:
            kwargs[name] = tensors[name]
        else:  # a tier that cannot supply an input says so before it calls; this is the backstop
            raise CandidateError("policy", f"the loss reads `{name}`, which this evaluation does not supply")
    for name, value in (hyperparameters or {}).items():
        if name != "beta" and name in spec.hyperparameters:
            kwargs[name] = float(value)
    return kwargs


def check_output(value: Any, batch_size: int):
    """The per-pair loss as a (B,) tensor; raises `shape`/`nan` CandidateErrors."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise CandidateError("shape",
                             f"`loss` returned {type(value).__name__}, expected a tensor of shape ({batch_size},)")
    if value.dim() == 0:
        value = value.expand(batch_size)
    if tuple(value.shape) != (batch_size,):
        raise CandidateError("shape",
                             f"`loss` returned shape {tuple(value.shape)}, expected ({batch_size},) or a scalar")
    if not value.is_floating_point():
        raise CandidateError("shape", f"`loss` returned dtype {value.dtype}, expected a floating-point tensor")
    if not bool(torch.isfinite(value).all()):
        raise CandidateError("nan", "`loss` returned non-finite values (nan or inf)")
    return value


def call_loss(function: Callable[..., Any], spec: LossSpec, tensors: Mapping[str, Any],
              beta: float | None = None, hyperparameters: Mapping[str, float] | None = None):
    """Call `loss` with the inputs it asks for and return its checked (B,) output."""
    batch_size = int(tensors["policy_chosen_logps"].shape[0])
    kwargs = bind_inputs(spec, tensors, beta, hyperparameters)
    try:
        value = function(**kwargs)
    except CandidateError:
        raise
    except MemoryError:
        raise CandidateError("memory", "the loss ran out of memory") from None
    except RecursionError:
        raise CandidateError("exception", "RecursionError: maximum recursion depth exceeded") from None
    except Exception as error:  # the candidate's own bug
        message = str(error)
        if "can't allocate memory" in message or "out of memory" in message.lower():
            raise CandidateError("memory", f"the loss ran out of memory: {message}") from None
        raise CandidateError("exception", f"{type(error).__name__}: {message}") from None
    return check_output(value, batch_size)


def loss_input_gradients(loss_fn: LossFn, policy_side: Mapping[str, Any], fixed: Mapping[str, Any],
                         beta: float) -> tuple[Any, dict[str, Any]]:
    """(mean loss, detached; {input: d mean loss / d input, None where the loss ignores it}).

    The candidate sees fresh copies only: its policy-side inputs are new leaf tensors, so no
    `.grad_fn` leads it to the model, and whatever it does to any input in place stays in the
    copies (and out of the next call's inputs). Both training tiers call the loss through this.
    """
    leaves = {name: value.detach().clone().requires_grad_() for name, value in policy_side.items()}
    copies = {name: value.detach().clone() for name, value in fixed.items()}
    loss = loss_fn({**leaves, **copies}, beta).mean()
    if not loss.requires_grad:
        raise CandidateError("no_grad", "the loss does not depend on the policy's log-probabilities")
    import torch

    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return loss.detach(), dict(zip(leaves, grads))


def backpropagate(outputs: Sequence[Any], grads: Sequence[Any]) -> None:
    """Carry a loss's input gradients `grads` back through whatever computed its inputs `outputs`.

    The same as torch.autograd.backward(outputs, grads), gradient for gradient (the backward
    of sum(output * grad) hands each output exactly its grad), without the import of
    torch.fx.experimental.symbolic_shapes (and sympy) that call makes on first use: about 0.45 s
    of CPU in every fresh process that would call it, 6-7% of a quick run (fp32, 2-core Xeon,
    benchmarks/speed_tricks.py). The zygote never imports sympy, so each forked child would pay it.
    """
    sum((output * grad.detach()).sum() for output, grad in zip(outputs, grads)).backward()


MARGIN_MOMENTUM = 0.9
"""Weight of the old value in the running margin statistics' EMA (beta-DPO's m, Wu et al. 2024, §4.2)."""


def missing_scores(spec: LossSpec, reason: str) -> CandidateError:
    """The failure of a loss that reads scores where the data has none; `reason` says which data and why."""
    return CandidateError("policy", f"the loss reads {', '.join(n for n in SCORE_INPUTS if n in spec.inputs)}, "
                                    f"but {reason}")


@dataclass
class TrainingState:
    """What trusted code keeps over one training run for the loss to read: how far the run is, and
    the running mean and standard deviation of the log-ratio margin.

    The loss itself keeps no state (it is a pure function of tensors); each training step calls
    `inputs`, which folds the step's batch into the running statistics first, so the first step
    sees its own batch's mean and std, and every later step an EMA that includes its batch.
    """

    steps: int
    """Steps the run takes: `progress` is step / steps."""
    momentum: float = MARGIN_MOMENTUM
    margin_mean: float | None = None
    """EMA of the batch means of the margin; None before the first step."""
    margin_std: float | None = None
    """EMA of the batch standard deviations (population: a batch of one has std 0)."""

    def inputs(self, step: int, policy_side: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
        """The 0-dim TRAINING_STATE_INPUTS of step `step` (0-based) on this batch's contract inputs."""
        import torch

        margins = log_ratio_margins(policy_side, fixed)  # (B,), detached
        self.update(float(margins.mean()), float(margins.std(correction=0)))
        values = {"progress": step / self.steps, "running_margin_mean": self.margin_mean,
                  "running_margin_std": self.margin_std}
        return {name: torch.tensor(value, dtype=margins.dtype, device=margins.device) for name, value in values.items()}

    def update(self, batch_mean: float, batch_std: float) -> None:
        if self.margin_mean is None or self.margin_std is None:
            self.margin_mean, self.margin_std = batch_mean, batch_std
            return
        self.margin_mean = self.momentum * self.margin_mean + (1 - self.momentum) * batch_mean
        self.margin_std = self.momentum * self.margin_std + (1 - self.momentum) * batch_std


def log_ratio_margins(policy_side: Mapping[str, Any], fixed: Mapping[str, Any]):
    """(B,) the log-ratio margin (policy - reference, chosen minus rejected), detached."""
    tensors = {**fixed, **policy_side}
    chosen = tensors["policy_chosen_logps"].detach() - tensors["reference_chosen_logps"]
    rejected = tensors["policy_rejected_logps"].detach() - tensors["reference_rejected_logps"]
    return chosen - rejected
