"""Bradley-Terry labelling of response pairs: the task build (parent) and online mode (child) share it."""

from __future__ import annotations

import torch


def bradley_terry_labels(first_rewards: torch.Tensor, second_rewards: torch.Tensor, temperature: float,
                         flip_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """(N,) bool, True where the first response is chosen: a Bradley-Terry draw, then exact flips."""
    p_first = torch.sigmoid((first_rewards - second_rewards) / temperature)  # (N,)
    first_wins = torch.rand(p_first.shape, generator=generator) < p_first
    flips = torch.zeros_like(first_wins)
    flips[torch.randperm(len(flips), generator=generator)[: round(flip_fraction * len(flips))]] = True
    return first_wins ^ flips
