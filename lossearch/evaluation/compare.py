"""Whether two loss files are the same loss: run both to the sanity tier, compare fingerprints."""

from __future__ import annotations

from typing import Any

from lossearch.evaluation.cascade import evaluate
from lossearch.failures import CandidateError
from lossearch.fingerprint import SAME_LOSS_DISTANCE, closest_rescaling, rescaling_note
from lossearch.sandbox.local import Sandbox


def compare_sources(first: str, second: str, first_name: str = "first", second_name: str = "second",
                    sandbox: Sandbox | None = None) -> dict[str, Any]:
    """Fingerprint distance between two losses, at the rescaling of beta that brings them closest,
    the verdict "same loss" or "different", and `beta_scale`: the c at which the second is closest
    to the first with its beta scaled by c; `note` says it in words (" at beta ×1.5", or "").

    Raises CandidateError when either loss does not pass the sanity tier.
    """
    own_sandbox = sandbox is None
    sandbox = sandbox or Sandbox()
    try:
        evaluations = [evaluate(source, name, "sanity", sandbox=sandbox)
                       for source, name in ((first, first_name), (second, second_name))]
    finally:
        if own_sandbox:
            sandbox.close()
    for evaluation, name in zip(evaluations, (first_name, second_name)):
        if not evaluation.ok:
            error = evaluation.error
            assert error is not None  # evaluate() sets the failure of every evaluation that is not ok
            raise CandidateError(error.kind, f"{name} did not pass the sanity tier: {error.message}")
    prints = [evaluation.metrics["sanity"]["fingerprint"] for evaluation in evaluations]
    distance, beta_scale = closest_rescaling(*prints)
    same = distance < SAME_LOSS_DISTANCE  # the same test as same_loss(), with the factor it found
    return {
        "distance": distance,
        "beta_scale": beta_scale,
        "verdict": "same loss" if same else "different",
        "note": f"{second_name} is {first_name}{rescaling_note(beta_scale)}" if same and rescaling_note(beta_scale)
        else "",
        "first": {"name": first_name, "summary": evaluations[0].metrics["sanity"]["fingerprint_summary"]["text"]},
        "second": {"name": second_name, "summary": evaluations[1].metrics["sanity"]["fingerprint_summary"]["text"]},
    }
