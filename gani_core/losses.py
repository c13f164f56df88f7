"""The losses of the tuning (gani_core.tuning.tune_batch): reconstruction (L2 + LPIPS, as PTI), which every method
shares, and GANI's regulariser (TuneConfig.reg_*), which keeps renders of latents around the pivot as the original
generator made them."""

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


def regulariser_losses(tuned: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """The regulariser of each image: ``MSE + LPIPS(alex)`` between the tuned generator's renders of its S
    regulariser latents and the original generator's, each averaged over the S latents: [K].

    tuned: the unclamped renders [K, S, 3, R, R] (differentiable in the tuned weights); original: the original
    generator's renders of the same latents [K, S, 3, R, R] (no gradient). tune_batch weights the sum over images by
    ``TuneConfig.reg_weight``; the latents come from editing.sample_regulariser_latents.
    """
    k = tuned.shape[0]
    tuned, original = tuned.flatten(0, 1), original.flatten(0, 1)
    return (F.mse_loss(tuned, original, reduction="none").view(k, -1).mean(1)
            + lpips_distance(tuned, original).view(k, -1).mean(1))
