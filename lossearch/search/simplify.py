"""Simplifying a child before it is stored: the terms that do not change the loss go.

A crossover of crossovers nests helper inside helper, and a term weighted down to nothing keeps
its hyperparameter. Before a child is stored, each of its additive terms (and length
normalizations) is dropped in turn; a drop is kept when the child's fingerprint stays within the
same-loss distance (lossearch.fingerprint.same_loss, which sees through a rescaled beta), so the
stored code says the same loss in fewer words. The fingerprint is the sanity tier's, computed in
the sandbox like every run of candidate code. What the drops leave unused (hyperparameters,
helpers, assignments) is pruned. One-use helpers are not inlined: a helper with several
statements and its own names cannot be spliced into `loss` without renaming, and the call
documents where the term came from.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from lossearch.failures import CandidateError
from lossearch.fingerprint import same_loss
from lossearch.policy import check_policy
from lossearch.search.proposers import syntax
from lossearch.search.proposers.mutation import drop_term, term_drops

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
    """`source` with every term whose removal leaves the same loss removed, greedily, first found first."""
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
    progress = True
    while progress and checks < max_checks:
        progress = False
        for drop in term_drops(module):
            try:
                edit = drop_term(module, drop)
                if edit is None:
                    continue
                syntax.prune(edit.module)
                shorter = syntax.write_module(edit.module, docstring)
                check_policy(shorter)
            except (CandidateError, LookupError, AttributeError, TypeError, ValueError, SyntaxError, RecursionError):
                continue  # code the editor does not understand (an LLM's) is left as it is
            checks += 1
            fingerprint = fingerprint_of(shorter)
            if fingerprint is not None and same_loss(fingerprint, base):
                module, source, progress = edit.module, shorter, True
                dropped.append(edit.idea)
                break
            if checks >= max_checks:
                break
    if dropped:
        note = "Simplified before it was stored (the same loss by fingerprint): " + "; ".join(dropped) + "."
        source = syntax.write_module(module, f"{docstring}\n\n{note}" if docstring else note)
    return Simplified(source, tuple(dropped), checks)
