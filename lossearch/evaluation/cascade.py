"""The evaluation cascade (DESIGN §3): static → sanity → bandit → finetune, cheapest first.

`evaluate` climbs the tiers up to the one asked for and stops at the first
failure. The static tier runs here (it never executes the candidate); every
later tier runs the candidate in a sandbox child and scores what comes back
with trusted code in this process. Up to the finetune tier, the bandit's child
and the finetune's first run train side by side; a bandit failure cancels the
finetune and is the one reported, as if they had run in turn.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from lossearch.choices import TIERS, USER_TASK, check_choice
from lossearch.contract import LossSpec, parse_spec
from lossearch.evaluation.finetune.config import FinetuneOptions
from lossearch.failures import CandidateError, Failure
from lossearch.fingerprint import summarize
from lossearch.policy import check_policy
from lossearch.sandbox.interface import SandboxError, SandboxLike, SandboxLimits
from lossearch.sandbox.local import Sandbox

SANITY_LIMITS = SandboxLimits(wall_seconds=10.0, cpu_seconds=20)
BANDIT_LIMITS = SandboxLimits(wall_seconds=20.0, cpu_seconds=40)


@dataclass(frozen=True)
class Evaluation:
    """The outcome of running a candidate up a cascade of tiers."""

    status: str
    """`ok`, `rejected` (static tier refused it) or `failed` (a sandboxed tier did)."""
    tier: str
    """The last tier attempted."""
    error: Failure | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    """Metrics by tier name: {"sanity": {...}, "bandit": {...}}."""
    spec: LossSpec | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "tier": self.tier,
                "error": self.error.to_dict() if self.error else None, "metrics": self.metrics}


def static_tier(source: str, name: str) -> LossSpec:
    """Parse, check the contract and the AST policy; raises CandidateError."""
    spec = parse_spec(source, name)
    check_policy(source)
    return spec


def sanity_tier(sandbox: SandboxLike, spec: LossSpec) -> dict[str, Any]:
    """Synthetic inputs and the fingerprint, in a sandbox child."""
    result = sandbox.run("sanity", {"source": spec.source, "name": spec.name}, SANITY_LIMITS)
    result.raise_for_failure()
    metrics = dict(result.value)
    metrics["fingerprint_summary"] = summarize(metrics["fingerprint"]).to_dict()
    metrics["isolation"] = result.isolation
    metrics["seconds"] = result.seconds
    return metrics


def bandit_tier(sandbox: SandboxLike, spec: LossSpec, task: str, seed: int) -> dict[str, Any]:
    """Train in a sandbox child over the beta grid; score the returned logits here."""
    from lossearch.evaluation.bandit.score import score_bandit_grid
    from lossearch.evaluation.bandit.task import make_bandit_task

    task = "sentiment" if task == USER_TASK else task  # a user's setting has no tabular twin of its own
    payload = {"source": spec.source, "name": spec.name, "task": task, "seed": seed}
    result = sandbox.run("bandit", payload, BANDIT_LIMITS)
    result.raise_for_failure()
    logits = result.value.get("logits") if isinstance(result.value, dict) else None
    if not isinstance(logits, dict) or not logits:
        raise CandidateError("crash", "the bandit child returned no logits")
    bandit_task = make_bandit_task(task, seed)
    metrics = score_bandit_grid(bandit_task, {float(beta): values for beta, values in logits.items()})
    metrics["seconds"] = result.seconds
    return metrics


def finetune_tier(sandbox: SandboxLike, spec: LossSpec, task: str, seed: int = 0,
                  options: FinetuneOptions | None = None,
                  **option_fields: Any) -> dict[str, Any]:
    """Train a small causal LM with the loss (one sandbox child per run), score it here.

    `options` is a lossearch.evaluation.finetune.FinetuneOptions; keyword arguments replace its
    fields, e.g. `finetune_tier(sandbox, spec, "sentiment", budget="standard", storage=url)`.
    """
    from lossearch.evaluation.finetune.tier import finetune_candidate  # torch and the tasks: only when needed

    return finetune_candidate(sandbox, spec, task, seed, replace(options or FinetuneOptions(), **option_fields))


def evaluate(source: str, name: str = "candidate", tier: str = "bandit", *, sandbox: SandboxLike | None = None,
             task: str = "sentiment", seed: int = 0, finetune: FinetuneOptions | None = None) -> Evaluation:
    """Run `source` up the cascade to `tier`; the first failing tier ends it.

    `finetune` (a lossearch.evaluation.finetune.FinetuneOptions) sets the finetune tier's budget,
    data mode, device, user setting and Optuna storage; None means the `quick` defaults.
    """
    check_choice(tier, TIERS, "tier")
    try:
        spec = static_tier(source, name)
    except CandidateError as error:
        return Evaluation("rejected", "static", error.failure)
    metrics: dict[str, Any] = {"static": {"inputs": list(spec.inputs), "hyperparameters": dict(spec.hyperparameters)}}
    if tier == "static":
        return Evaluation("ok", "static", None, metrics, spec)
    own_sandbox = sandbox is None
    sandbox = sandbox or Sandbox()
    current = "sanity"
    try:
        metrics["sanity"] = sanity_tier(sandbox, spec)
        if tier == "finetune":  # every SandboxLike runs jobs side by side and can cancel them
            bandit, finetuned = bandit_beside_finetune(sandbox, spec, task, seed, finetune)
            current = "bandit"
            metrics["bandit"] = bandit.result()  # its failure first: the cascade stops at the cheaper tier
            current = "finetune"
            metrics["finetune"] = finetuned.result()
        elif tier == "bandit":
            current = "bandit"
            metrics["bandit"] = bandit_tier(sandbox, spec, task, seed)
    except CandidateError as error:
        return Evaluation("failed", current, error.failure, metrics, spec)
    finally:
        if own_sandbox:
            sandbox.close()
    return Evaluation("ok", current, None, metrics, spec)


def bandit_beside_finetune(sandbox: SandboxLike, spec: LossSpec, task: str, seed: int,
                           finetune: FinetuneOptions | None) -> tuple[Future, Future]:
    """The bandit and finetune tiers side by side in one sandbox; (bandit, finetune) futures, both done.

    The finetune tier's set-up and first training run start while the bandit's child trains,
    which would otherwise be waited for: 0.9 s of a 9.0 s quick evaluation, 10% (fp32, 2-core
    Xeon, medians of 7, benchmarks/command_overheads.py). A bandit failure still ends the
    cascade there: it cancels the sandbox's jobs (the finetune's), and the caller reads the
    bandit's result first.
    """
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lossearch-bandit") as pool:
            bandit = pool.submit(bandit_tier, sandbox, spec, task, seed)
            bandit.add_done_callback(lambda done: cancel_on_failure(done, sandbox))
            finetuned: Future = Future()
            try:
                finetuned.set_result(finetune_tier(sandbox, spec, task, seed, finetune))
            except (CandidateError, SandboxError) as error:  # a cancel reaches the finetune tier as one of these
                finetuned.set_exception(error)
    finally:
        sandbox.resume()  # both are done: the caller's sandbox takes jobs again
    return bandit, finetuned


def cancel_on_failure(bandit: Future, sandbox: SandboxLike) -> None:
    """The bandit tier failed: cancel the finetune running beside it."""
    if bandit.exception() is not None:
        sandbox.cancel()
