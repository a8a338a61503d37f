"""Loss fingerprints: how a loss pushes the chosen and rejected log-ratios.

The fingerprint is the gradient of the loss with respect to ρc (the chosen
log-ratio, policy − reference), ρr (the rejected one) and the two KL inputs on a
fixed grid of (ρc, ρr) at the loss's default beta. Gradient descent moves ρc by −∂L/∂ρc, so
the signs say whether a loss raises the chosen likelihood, lowers the rejected
one, or lets both fall (the failure mode the "3D properties" analysis of DPO,
Feng et al. 2024, points at). Two losses whose unit-normalized fingerprints
nearly coincide push the policy the same way: the search treats them as one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# log-ratio values (nats) on each axis; symmetric, denser near zero
GRID_VALUES = (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
CHOSEN_LENGTHS = (6.0, 10.0, 16.0)
REJECTED_LENGTHS = (8.0, 12.0, 20.0)
CHOSEN_KL = (0.1, 2.0, 0.5, 4.0)  # cycles of 4 against the lengths' 3, so the pairs vary
REJECTED_KL = (3.0, 0.2, 1.0, 6.0)
TOKEN_LOGP = -2.0  # reference log-prob per token on the grid
SAME_LOSS_DISTANCE = 0.02
GRADIENT_TOLERANCE = 1e-9


def grid_inputs() -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Contract inputs for the fingerprint grid, and the leaves to differentiate: ρc, ρr, chosen_kl, rejected_kl."""
    chosen_ratio, rejected_ratio = torch.meshgrid(
        torch.tensor(GRID_VALUES, dtype=torch.float64), torch.tensor(GRID_VALUES, dtype=torch.float64), indexing="ij")
    chosen_ratio = chosen_ratio.reshape(-1).clone().requires_grad_(True)  # (G*G,)
    rejected_ratio = rejected_ratio.reshape(-1).clone().requires_grad_(True)  # (G*G,)
    size = chosen_ratio.shape[0]
    cycle = lambda values: torch.tensor(values, dtype=torch.float64).repeat(size // len(values) + 1)[:size]  # noqa: E731
    chosen_lengths, rejected_lengths = cycle(CHOSEN_LENGTHS), cycle(REJECTED_LENGTHS)
    # the KL inputs are functions of the policy in training, so they are leaves here too
    chosen_kl = cycle(CHOSEN_KL).requires_grad_(True)
    rejected_kl = cycle(REJECTED_KL).requires_grad_(True)
    reference_chosen = TOKEN_LOGP * chosen_lengths
    reference_rejected = TOKEN_LOGP * rejected_lengths
    tensors = {
        "policy_chosen_logps": reference_chosen + chosen_ratio,
        "policy_rejected_logps": reference_rejected + rejected_ratio,
        "reference_chosen_logps": reference_chosen,
        "reference_rejected_logps": reference_rejected,
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
        "chosen_kl": chosen_kl,
        "rejected_kl": rejected_kl,
    }
    return tensors, [chosen_ratio, rejected_ratio, chosen_kl, rejected_kl]


def compute_fingerprint(loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> list[float]:
    """∂(Σ loss)/∂ρc, ∂/∂ρr, ∂/∂chosen_kl, ∂/∂rejected_kl on the grid: one flat list of 4·G² floats.

    `loss_of(tensors)` returns the checked (B,) per-pair loss. The KL blocks are
    zero for losses that do not read the KL inputs; they tell a KL-penalized
    child from its parent.
    """
    tensors, leaves = grid_inputs()
    total = loss_of(tensors).sum()
    if not total.requires_grad:
        return [0.0] * (len(leaves) * leaves[0].shape[0])
    raw_grads = torch.autograd.grad(total, leaves, allow_unused=True)  # None for a leaf the loss does not read
    grads = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, raw_grads)]
    return torch.cat(grads).detach().tolist()


@dataclass(frozen=True)
class FingerprintSummary:
    """What a person reads off a fingerprint: shares of the grid where each push happens."""

    raises_chosen: float
    """Share of the grid where a descent step raises the chosen log-ratio."""
    lowers_rejected: float
    """Share where it lowers the rejected log-ratio."""
    both_fall: float
    """Share where it lowers both (the chosen likelihood falls with the rejected one)."""
    pulls_margin_back: float
    """Share where it shrinks the margin ρc − ρr (a bounded, IPO-like loss does this past its target)."""
    rejected_to_chosen: float
    """Median |∂L/∂ρr| / |∂L/∂ρc| where the chosen gradient is not zero (DPO: 1)."""

    def describe(self) -> str:
        ratio = "inf" if math.isinf(self.rejected_to_chosen) else f"{self.rejected_to_chosen:.2f}"
        return (f"raises chosen on {self.raises_chosen:.0%} of the grid, lowers rejected on "
                f"{self.lowers_rejected:.0%}, both fall on {self.both_fall:.0%}, pulls the margin back "
                f"on {self.pulls_margin_back:.0%}; rejected/chosen gradient ratio {ratio}")

    def to_dict(self) -> dict[str, float | str | None]:
        """JSON-ready: an undefined ratio (no chosen gradient anywhere) becomes None."""
        values = {key: (value if math.isfinite(value) else None) for key, value in self.__dict__.items()}
        return {**values, "text": self.describe()}


def split(fingerprint: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ρc and ρr blocks of a fingerprint."""
    values = torch.tensor(list(fingerprint), dtype=torch.float64)
    block = len(GRID_VALUES) ** 2
    return values[:block], values[block:2 * block]


def summarize(fingerprint: Sequence[float]) -> FingerprintSummary:
    """Read the pushes off a fingerprint (descent moves ρ by −gradient)."""
    chosen_grad, rejected_grad = split(fingerprint)
    chosen_step, rejected_step = -chosen_grad, -rejected_grad
    tol = GRADIENT_TOLERANCE
    share = lambda mask: float(mask.double().mean())  # noqa: E731
    moving = chosen_grad.abs() > tol
    ratios = (rejected_grad.abs()[moving] / chosen_grad.abs()[moving])
    median_ratio = float(ratios.median()) if ratios.numel() else math.inf
    return FingerprintSummary(
        raises_chosen=share(chosen_step > tol),
        lowers_rejected=share(rejected_step < -tol),
        both_fall=share((chosen_step < -tol) & (rejected_step < -tol)),
        pulls_margin_back=share(chosen_step - rejected_step < -tol),
        rejected_to_chosen=median_ratio,
    )


def fingerprint_distance(first: Sequence[float], second: Sequence[float]) -> float:
    """Euclidean distance between unit-normalized fingerprints: 0 same push, up to 2 opposite.

    Normalizing removes a loss's overall scale (which the optimizer's step size
    absorbs); what remains is the direction and shape of the push over the grid.
    """
    a = torch.tensor(list(first), dtype=torch.float64)
    b = torch.tensor(list(second), dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError("fingerprints come from different grids")
    norm_a, norm_b = a.norm(), b.norm()
    if norm_a == 0 or norm_b == 0:
        return 0.0 if norm_a == norm_b else math.sqrt(2.0)
    return float((a / norm_a - b / norm_b).norm())


def same_loss(first: Sequence[float], second: Sequence[float]) -> bool:
    """Whether two fingerprints are near enough to count as one loss."""
    return fingerprint_distance(first, second) < SAME_LOSS_DISTANCE
