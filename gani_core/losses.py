"""The losses every method shares: reconstruction (L2 + LPIPS, as PTI) and the locality regulariser."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gani_core.lpips import lpips_distance


def reconstruction_losses(
    render: torch.Tensor,
    target: torch.Tensor,
    l2_weight: float = 1.0,
    lpips_weight: float = 1.0,
) -> torch.Tensor:
    """``l2_weight * MSE + lpips_weight * LPIPS(alex)`` of each image: [N].

    render: the unclamped generator output [N, 3, R, R] (losses see it as PTI does); target: [N, 3, R, R]
    in [-1, 1].
    """
    loss = render.new_zeros(render.shape[0])
    if l2_weight:
        loss = loss + l2_weight * F.mse_loss(render, target, reduction="none").flatten(1).mean(1)
    if lpips_weight:
        loss = loss + lpips_weight * lpips_distance(render, target)
    return loss


def reconstruction_loss(
    render: torch.Tensor,
    target: torch.Tensor,
    l2_weight: float = 1.0,
    lpips_weight: float = 1.0,
) -> torch.Tensor:
    """:func:`reconstruction_losses` summed over the batch: summing, not averaging, keeps each image's gradient
    what it would be alone, whatever the batch size (the batched engine relies on it)."""
    return reconstruction_losses(render, target, l2_weight, lpips_weight).sum()
