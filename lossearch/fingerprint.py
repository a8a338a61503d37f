"""Loss fingerprints: how a loss pushes the chosen and rejected log-ratios.

The fingerprint is the gradient of the loss with respect to ρc (the chosen
log-ratio, policy − reference), ρr (the rejected one) and the two KL inputs on a
fixed grid of (ρc, ρr) at the loss's default beta. Gradient descent moves ρc by −∂L/∂ρc, so
the signs say whether a loss raises the chosen likelihood, lowers the rejected
one, or lets both fall (the failure mode the "3D properties" analysis of DPO,
Feng et al. 2024, points at). Two losses whose unit-normalized fingerprints
nearly coincide push the policy the same way: the search treats them as one.

Beta only sets the scale of the margin a loss reads, and the search tunes it per
candidate (DESIGN §4), so DPO with its beta scaled by 1.5 is DPO. The fingerprint
therefore also holds the loss's prints at a few rescalings of its default beta,
and two losses are compared at the rescaling that brings them closest
(`closest_rescaling`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lossearch.failures import CandidateError

# log-ratio values (nats) on each axis; symmetric, denser near zero
GRID_VALUES = (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
CHOSEN_LENGTHS = (6.0, 10.0, 16.0)
REJECTED_LENGTHS = (8.0, 12.0, 20.0)
CHOSEN_KL = (0.1, 2.0, 0.5, 4.0)  # cycles of 4 against the lengths' 3, so the pairs vary
REJECTED_KL = (3.0, 0.2, 1.0, 6.0)
TOKEN_LOGP = -2.0  # reference log-prob per token on the grid
# the data's scores cycle like the lengths; gaps 0.6, 0.1, 1.5: all positive, of several sizes
CHOSEN_SCORES = (0.8, 0.3, 1.0)
REJECTED_SCORES = (0.2, 0.2, -0.5)
# the run's state on the grid: halfway through, with running margin statistics a trained policy
# might have; fixed values, since no gradient flows into them in training either
GRID_PROGRESS = 0.5
GRID_MARGIN_MEAN = 2.0
GRID_MARGIN_STD = 4.0
SAME_LOSS_DISTANCE = 0.02
GRADIENT_TOLERANCE = 1e-9
PRINT_SIZE = 4 * len(GRID_VALUES) ** 2  # one print: the ρc, ρr, chosen_kl and rejected_kl blocks
# Factors of the default beta the prints are taken at: closed under 1/s, so a match found one way
# is found the other way too; exact at the factors people and the mutator write (1.5, 2, 3 and
# their inverses, SCALE_FACTORS in lossearch.search.proposers.mutation), whatever the loss; between
# neighbours (ratio at most 1.5) the comparison interpolates (`curve_distances`).
BETA_FACTORS = (1 / 4, 1 / 3, 1 / 2, 2 / 3, 1.0, 3 / 2, 2.0, 3.0, 4.0)
RESCALED_FACTORS = tuple(factor for factor in BETA_FACTORS if factor != 1.0)
FINGERPRINT_SIZE = PRINT_SIZE * len(BETA_FACTORS)
RESCALED_DECIMALS = 5  # a unit print rounded so: the distance moves by at most 0.5e-5·√484 ≈ 1e-4
INTERPOLATION_STEPS = 32  # points per interval between neighbouring factors


def grid_inputs() -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Contract inputs for the fingerprint grid, and the leaves to differentiate: ρc, ρr, chosen_kl, rejected_kl.

    The inputs that do not depend on the policy are fixed values: lengths and scores cycle through
    CHOSEN_/REJECTED_LENGTHS and CHOSEN_/REJECTED_SCORES, `progress` is GRID_PROGRESS and the
    running margin statistics are GRID_MARGIN_MEAN and GRID_MARGIN_STD (a loss reading them is
    printed as it pushes halfway through a run whose margins have grown to about 2 nats). The token
    inputs spread each response evenly over its tokens (`grid_token_inputs`).
    """
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
        "chosen_scores": cycle(CHOSEN_SCORES),
        "rejected_scores": cycle(REJECTED_SCORES),
        **{name: torch.tensor(value, dtype=torch.float64) for name, value in (
            ("progress", GRID_PROGRESS), ("running_margin_mean", GRID_MARGIN_MEAN),
            ("running_margin_std", GRID_MARGIN_STD))},
    }
    tensors.update(grid_token_inputs(tensors))
    return tensors, [chosen_ratio, rejected_ratio, chosen_kl, rejected_kl]


def grid_token_inputs(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(G*G, T) token inputs of the grid, T the longest grid length: every response token has the
    reference log-prob TOKEN_LOGP and its share ρ / length of the response's log-ratio, so rows sum to
    the sequence inputs and the policy's are functions of the ρ leaves. Only losses that read them see
    them, so no other loss's print changes."""
    width = int(max(CHOSEN_LENGTHS + REJECTED_LENGTHS))
    token_inputs = {}
    for side in ("chosen", "rejected"):
        lengths = tensors[f"{side}_lengths"]  # (G*G,)
        mask = (torch.arange(width, dtype=torch.float64)[None, :] < lengths[:, None]).to(torch.float64)  # (G*G, T)
        ratio = tensors[f"policy_{side}_logps"] - tensors[f"reference_{side}_logps"]  # (G*G,) ρ, with graph
        token_inputs[f"reference_{side}_token_logps"] = TOKEN_LOGP * mask
        token_inputs[f"policy_{side}_token_logps"] = (TOKEN_LOGP + ratio / lengths)[:, None] * mask
        token_inputs[f"{side}_mask"] = mask
    return token_inputs


def gradient_print(loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> torch.Tensor:
    """∂(Σ loss)/∂ρc, ∂/∂ρr, ∂/∂chosen_kl, ∂/∂rejected_kl on the grid: one flat (4·G²,) tensor.

    `loss_of(tensors)` returns the checked (B,) per-pair loss. The KL blocks are
    zero for losses that do not read the KL inputs; they tell a KL-penalized
    child from its parent.
    """
    tensors, leaves = grid_inputs()
    total = loss_of(tensors).sum()
    if not total.requires_grad:
        return torch.zeros(len(leaves) * leaves[0].shape[0], dtype=torch.float64)
    raw_grads = torch.autograd.grad(total, leaves, allow_unused=True)  # None for a leaf the loss does not read
    grads = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, raw_grads)]
    return torch.cat(grads).detach()


def rescaled_print(loss_of: Callable[[dict[str, torch.Tensor], float], torch.Tensor], beta: float) -> list[float]:
    """The unit-normalized print at `beta`, rounded; zeros where there is none (the loss fails
    there, or its gradient is not finite or vanishes): such a rescaling is left out of comparisons."""
    try:
        values = gradient_print(lambda tensors: loss_of(tensors, beta))
    except CandidateError:
        return [0.0] * PRINT_SIZE
    norm = values.norm()
    if not bool(torch.isfinite(values).all()) or norm == 0:
        return [0.0] * PRINT_SIZE
    return (values / norm).round(decimals=RESCALED_DECIMALS).tolist()


def compute_fingerprint(loss_of: Callable[[dict[str, torch.Tensor], float], torch.Tensor],
                        beta: float) -> list[float]:
    """The fingerprint of a loss whose default strength is `beta`: FINGERPRINT_SIZE floats.

    Layout: block 0 is the print at `beta` as it comes (`gradient_print`; the summary and the
    report's heatmaps read it), then one unit-normalized print per factor of RESCALED_FACTORS, in
    that order, at beta × factor. `loss_of(tensors, beta)` returns the checked (B,) per-pair loss.
    """
    fingerprint = gradient_print(lambda tensors: loss_of(tensors, beta)).tolist()
    for factor in RESCALED_FACTORS:
        fingerprint += rescaled_print(loss_of, beta * factor)
    return fingerprint


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
    """The ρc and ρr blocks of a fingerprint's print at the default beta."""
    values = default_print(fingerprint)
    block = len(GRID_VALUES) ** 2
    return values[:block], values[block:2 * block]


def summarize(fingerprint: Sequence[float]) -> FingerprintSummary:
    """Read the pushes off a fingerprint at its default beta (descent moves ρ by −gradient)."""
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


def default_print(fingerprint: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """The print at the default beta: block 0 of a fingerprint, or all of one stored by a version
    before the rescalings (PRINT_SIZE floats)."""
    values = torch.as_tensor(fingerprint, dtype=torch.float64)
    return values[:PRINT_SIZE] if values.shape[0] == FINGERPRINT_SIZE else values


def unit_prints(fingerprint: Sequence[float] | torch.Tensor) -> torch.Tensor | None:
    """(K, PRINT_SIZE) unit prints by increasing factor of BETA_FACTORS, a zero row where the
    loss has no print; None for a fingerprint without rescalings."""
    if len(fingerprint) != FINGERPRINT_SIZE:
        return None
    return batch_unit_prints(torch.as_tensor(fingerprint, dtype=torch.float64)[None])[0]


def batch_unit_prints(fingerprints: torch.Tensor) -> torch.Tensor:
    """`unit_prints` of each row of (N, FINGERPRINT_SIZE): (N, K, PRINT_SIZE)."""
    stored = fingerprints.reshape(fingerprints.shape[0], len(BETA_FACTORS), PRINT_SIZE)
    order = [0 if factor == 1.0 else 1 + RESCALED_FACTORS.index(factor) for factor in BETA_FACTORS]
    blocks = stored[:, order]  # (N, K, D), by increasing factor
    return blocks / blocks.norm(dim=2, keepdim=True).clamp_min(1e-300)


def curve_factors() -> torch.Tensor:
    """(M,) the factors of beta the comparison samples: INTERPOLATION_STEPS per interval between
    neighbouring BETA_FACTORS, evenly in log, then the last factor. The set is closed under 1/c
    (as BETA_FACTORS is), and reversing it maps each c to 1/c."""
    log_factors = torch.tensor(BETA_FACTORS, dtype=torch.float64).log()
    weights = torch.arange(INTERPOLATION_STEPS, dtype=torch.float64) / INTERPOLATION_STEPS  # (W,)
    inner = (1 - weights) * log_factors[:-1, None] + weights * log_factors[1:, None]  # (K-1, W)
    return torch.cat([inner.reshape(-1), log_factors[-1:]]).exp()


def curve_distances(units: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., M) distance from the unit print `target` (..., D) to the loss's print (units: (..., K, D))
    at each factor of `curve_factors()`; between two factors the print is taken as the normalized
    blend of its neighbours' (within 0.004 of the true print on smooth losses). 2 where there is no
    print. Leading dimensions broadcast: one loss against many targets, or many against one."""
    present = units.norm(dim=-1) > 0  # (..., K)
    cosines = torch.matmul(units, target.unsqueeze(-1)).squeeze(-1)  # (..., K) cosine of each print with the target
    neighbours = (units[..., :-1, :] * units[..., 1:, :]).sum(dim=-1)  # (..., K-1) between neighbouring prints
    w = torch.arange(INTERPOLATION_STEPS, dtype=torch.float64) / INTERPOLATION_STEPS  # (W,)
    # the blend (1 - w) u + w v of unit prints u, v: its dot with the target over its norm
    dot = (1 - w) * cosines[..., :-1, None] + w * cosines[..., 1:, None]  # (..., K-1, W)
    norm = ((1 - w) ** 2 + w ** 2 + 2 * w * (1 - w) * neighbours[..., :, None]).clamp_min(1e-300).sqrt()
    valid = present[..., :-1, None] & (present[..., 1:, None] | (w == 0))  # (..., K-1, W)
    blended = torch.where(valid, dot / norm, torch.tensor(-1.0, dtype=torch.float64))
    last = torch.where(present[..., -1:], cosines[..., -1:], torch.tensor(-1.0, dtype=torch.float64))
    return (2 - 2 * torch.cat([blended.flatten(-2), last], dim=-1)).clamp_min(0).sqrt()


def closest_rescaling(first: Sequence[float], second: Sequence[float]) -> tuple[float, float]:
    """(distance, factor): how far the second loss is from being the first with its beta scaled,
    and the factor c of the closest such reading (DPO against DPO written with `1.5 * beta`: c = 1.5).

    "The second is the first at beta × c" is tested at two betas, both of which it claims: the
    second at its default beta against the first at its default × c, and the first at its default
    against the second at its default / c. The distance is the worse of the two, minimized over c,
    and never more than the plain distance at the default betas (c = 1). A loss that merely
    resembles another at one beta fails at the other (IPO at beta / 4 is the small-margin
    expansion of length-normalized DPO, and only where margins are small). Symmetric:
    d(a, b) = d(b, a), c(b, a) = 1 / c(a, b). A fingerprint without rescalings (stored before
    them) is compared by the plain distance.
    """
    distances, factors = closest_rescalings(first, [second])
    return distances[0], factors[0]


DISTANCE_CHUNK = 256
"""Fingerprints compared at once by `closest_rescalings` (each is 9 prints of 484 float64s)."""


def closest_rescalings(first: Sequence[float], others: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """`closest_rescaling(first, other)` for each of `others`, in tensor batches of DISTANCE_CHUNK:
    one candidate against a whole store in one pass (the duplicate check and parent selection ask
    this of every stored candidate; one pair at a time it costs ~16 ms). Fingerprints stored before
    the rescalings (PRINT_SIZE floats) may be among `others`: they compare by the plain distance."""
    first_values = torch.as_tensor(first, dtype=torch.float64)
    distances = [0.0] * len(others)
    factors = [1.0] * len(others)
    for size in {len(values) for values in others}:
        indices = [index for index, values in enumerate(others) if len(values) == size]
        for start in range(0, len(indices), DISTANCE_CHUNK):
            chunk = indices[start:start + DISTANCE_CHUNK]
            found, factor = _rescalings(first_values, torch.as_tensor([list(others[i]) for i in chunk],
                                                                      dtype=torch.float64))
            for index, distance, scale in zip(chunk, found.tolist(), factor.tolist()):
                distances[index], factors[index] = distance, scale
    return distances, factors


def _rescalings(first: torch.Tensor, seconds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) distances and factors of `closest_rescaling` from `first` to each row of `seconds` (N, F)."""
    a = default_print(first)  # (D,)
    if seconds.shape[1] not in (PRINT_SIZE, FINGERPRINT_SIZE) or a.shape[0] != PRINT_SIZE:
        raise ValueError("fingerprints come from different grids")
    b = seconds[:, :PRINT_SIZE]  # (N, D) the prints at the default beta
    a_norm, b_norm = a.norm(), b.norm(dim=1)  # (), (N,)
    plain = unit_distances(a, b)
    zero = (a_norm == 0) | (b_norm == 0)
    first_units = unit_prints(first)
    if first_units is None or a_norm == 0 or seconds.shape[1] != FINGERPRINT_SIZE:
        return plain, torch.ones_like(plain)
    first_scaled = curve_distances(first_units, b / b_norm.clamp_min(1e-300)[:, None])  # the first at beta × c
    second_scaled = curve_distances(batch_unit_prints(seconds), (a / a_norm)[None]).flip(-1)  # the second at beta / c
    worse = torch.maximum(first_scaled, second_scaled)  # (N, M)
    best = worse.argmin(dim=1)  # (N,)
    closest = worse.gather(1, best[:, None]).squeeze(1)
    better = (closest < plain) & ~zero
    return torch.where(better, closest, plain), torch.where(better, curve_factors()[best], torch.ones_like(plain))


def unit_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Euclidean distance between unit-normalized prints: 0 same push, up to 2 opposite.

    Normalizing removes a loss's overall scale (which the optimizer's step size
    absorbs); what remains is the direction and shape of the push over the grid.
    """
    return float(unit_distances(a, b[None])[0])


def unit_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) `unit_distance` from the print `a` (D,) to each row of `b` (N, D); a zero print is 0 from
    another zero print and √2 from any other."""
    a_norm, b_norm = a.norm(), b.norm(dim=1)
    plain = (a / a_norm.clamp_min(1e-300) - b / b_norm.clamp_min(1e-300)[:, None]).norm(dim=1)
    both_zero = torch.where((a_norm == 0) & (b_norm == 0), torch.zeros_like(plain),
                            torch.full_like(plain, math.sqrt(2.0)))
    return torch.where((a_norm == 0) | (b_norm == 0), both_zero, plain)


def fingerprint_distance(first: Sequence[float], second: Sequence[float]) -> float:
    """The distance of `closest_rescaling`: 0 same push (at some rescaling of beta), up to 2 opposite."""
    return closest_rescaling(first, second)[0]


def fingerprint_distances(first: Sequence[float], others: Sequence[Sequence[float]]) -> list[float]:
    """`fingerprint_distance` from `first` to each of `others`, batched (`closest_rescalings`)."""
    return closest_rescalings(first, others)[0]


def same_loss(first: Sequence[float], second: Sequence[float]) -> bool:
    """Whether two fingerprints are near enough, at some rescaling of beta, to count as one loss."""
    return fingerprint_distance(first, second) < SAME_LOSS_DISTANCE


def rescaling_note(factor: float) -> str:
    """The words " at beta ×1.5" for a match away from the default beta; nothing at it."""
    shown = f"{factor:.3g}"
    return "" if shown == "1" else f" at beta ×{shown}"


# -- the store's print index: which stored prints could be twins, without decoding their fingerprints --

INDEX_SLACK = 0.005
"""Added to SAME_LOSS_DISTANCE before a bound rules a print out: the index holds float32 directions (a
distance moves by about 1e-6 with them), so nothing within the same-loss distance is ever ruled out."""
INDEX_CHUNK = 8192


def index_print(fingerprint: Sequence[float]) -> bytes:
    """The print at the default beta, unit-normalized, as float32 bytes (the store's `print_index`): 1.9 KB
    against a fingerprint's 4,356 floats of JSON. b"" for a loss without a print, zeros for a zero print."""
    if not fingerprint:
        return b""
    values = default_print(fingerprint)
    norm = values.norm()
    unit = values / norm if norm > 0 else values
    return unit.to(torch.float32).numpy().tobytes()


def twin_bounds(first: Sequence[float], indexed: Sequence[bytes]) -> torch.Tensor:
    """(N,) lower bounds of `fingerprint_distance(first, b)` for stored prints b known only by `index_print`.

    Every print the comparison reads of the first loss, at its default beta, at a rescaled one or a
    normalized blend of two neighbours, is a unit vector in the span of its unit prints. The distance
    from a unit vector b to any unit v of that span is sqrt(2 - 2 <b, v>) >= sqrt(2 - 2 |P b|), P the
    projection on the span; the distance at the beta rescalings is the worse of two, one of which is
    that one, so it is bounded below as well. A zero print is 0 from another zero print and sqrt(2)
    from the rest. An index of another grid's size bounds nothing (0)."""
    a = default_print(first)
    bounds = torch.zeros(len(indexed), dtype=torch.float64)
    units = unit_prints(first)
    span = (a / a.norm().clamp_min(1e-300))[None] if units is None else units  # (K, D)
    basis = torch.linalg.qr(span.T).Q  # (D, K): orthonormal, spanning at least the prints
    sized = [i for i, value in enumerate(indexed) if len(value) == 4 * a.shape[0]]
    for start in range(0, len(sized), INDEX_CHUNK):
        rows = sized[start:start + INDEX_CHUNK]
        stored = torch.frombuffer(bytearray(b"".join(indexed[i] for i in rows)), dtype=torch.float32)
        stored = stored.reshape(len(rows), a.shape[0]).to(torch.float64)  # (n, D) unit prints, or zero rows
        norms = stored.norm(dim=1)
        zero = norms == 0
        if a.norm() == 0:
            bound = torch.where(zero, 0.0, math.sqrt(2.0)).to(torch.float64)
        else:  # renormalized: float32's rounding of a unit norm would move a bound near 0 by sqrt(1e-7)
            projected = ((stored / norms.clamp_min(1e-300)[:, None]) @ basis).norm(dim=1).clamp(max=1.0)  # (n,)
            bound = torch.where(zero, math.sqrt(2.0), (2 - 2 * projected).clamp_min(0).sqrt())
        bounds[rows] = bound
    return bounds


def possible_twins(first: Sequence[float], indexed: Sequence[bytes]) -> list[bool]:
    """Which of the indexed prints could be the same loss as `first` (`twin_bounds` under the same-loss
    distance, with `INDEX_SLACK`): only these need their whole fingerprints read and compared."""
    return (twin_bounds(first, indexed) < SAME_LOSS_DISTANCE + INDEX_SLACK).tolist()
