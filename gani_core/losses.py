"""The losses every method shares: reconstruction (L2 + LPIPS, as PTI) and the locality regulariser."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gani_core.lpips import lpips_distance


def reconstruction_loss(
    render: torch.Tensor,
    target: torch.Tensor,
    l2_weight: float = 1.0,
    lpips_weight: float = 1.0,
) -> torch.Tensor:
    """``l2_weight * MSE + lpips_weight * LPIPS(alex)``, summed over the batch.

    render: the unclamped generator output [N, 3, R, R] (losses see it as PTI does); target: [N, 3, R, R]
    in [-1, 1]. Summing over N keeps each image's gradient independent of the batch size.
    """
    loss = render.new_zeros(())
    if l2_weight:
        loss = loss + l2_weight * F.mse_loss(render, target, reduction="none").flatten(1).mean(1).sum()
    if lpips_weight:
        loss = loss + lpips_weight * lpips_distance(render, target).sum()
    return loss
