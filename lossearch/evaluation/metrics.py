"""Metric formulas that more than one tier scores with (trusted: parent side)."""

from __future__ import annotations

import torch


def preference_accuracy(margin: torch.Tensor) -> float:
    """Share of held-out pairs whose implicit reward margin (chosen minus rejected) is positive;
    a tie counts half. Any beta > 0 keeps the margin's sign, so it is left out."""
    return float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean())
