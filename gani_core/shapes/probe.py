"""Training the factor probe of the `shapes` domain: a `gani_core.factors.FactorProbe` reading its factors.

Trained on rendered images with their true factors, it is the "ground truth" measurement for images a
generator makes (whose factors are not known): edit directions are fitted on its readings of sampled
images (shapes.directions), and `edit_accuracy` reads how far an edit moved each factor. It reads images
in [-1, 1] at the resolution it was trained for and returns normalised factors (0..1 over each factor's
range), in the order of `FACTOR_NAMES`. Trained with light noise and blur so that it reads generated
images as well as rendered ones. The shipped one is ``gani_core/weights/shapes64-probe.safetensors``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gani_core.errors import CheckpointError
from gani_core.factors import FactorProbe
from gani_core.shapes.domain import FACTOR_NAMES, render, sample_factors


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise (std up to 0.05) and, for half the batch, a light 3x3 blur."""
    n = images.shape[0]
    device = images.device
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=device) / 16
    blurred = F.conv2d(F.pad(images, [1, 1, 1, 1], mode="replicate"), blur[None, None].repeat(3, 1, 1, 1), groups=3)
    pick = (torch.rand([n, 1, 1, 1], generator=gen) < 0.5).to(device)
    images = torch.where(pick, blurred, images)
    sigma = torch.rand([n, 1, 1, 1], generator=gen).to(device) * 0.05
    return images + sigma * torch.randn(images.shape, generator=gen).to(device)


@dataclass
class ProbeReport:
    steps: int
    r2: dict[str, float]                # held-out R² per factor, on clean renders
    mae: dict[str, float]               # held-out mean absolute error per factor (normalised units)


def train_probe(
    resolution: int = 64,
    steps: int = 4000,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> tuple[FactorProbe, ProbeReport]:
    """Train a probe on freshly rendered images (seeded), then evaluate it on 2,000 held-out renders."""
    torch.manual_seed(seed)
    probe = FactorProbe(FACTOR_NAMES, resolution).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        t = sample_factors(batch, gen).to(device)
        loss = F.mse_loss(probe(_augment(render(t, resolution), gen)), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step + 1) % 500 == 0:
            log(f"probe step {step + 1}/{steps}: loss {loss.item():.5f}")
    probe.eval().requires_grad_(False)
    return probe, evaluate_probe(probe, seed=seed + 10_000, device=device, steps=steps)


@torch.no_grad()
def evaluate_probe(probe: FactorProbe, seed: int, device: str | torch.device, steps: int = 0,
                   count: int = 2000) -> ProbeReport:
    """Held-out R² and MAE of a shapes probe on ``count`` seeded clean renders."""
    check_shapes_probe(probe, "probe")
    gen = torch.Generator().manual_seed(seed)
    t = sample_factors(count, gen).to(device)
    pred = torch.cat([probe(render(chunk, probe.resolution)) for chunk in t.split(250)])
    resid = (pred - t).square().mean(dim=0)
    r2 = 1 - resid / t.var(dim=0)
    mae = (pred - t).abs().mean(dim=0)
    return ProbeReport(steps=steps, r2=dict(zip(FACTOR_NAMES, r2.tolist(), strict=True)),
                       mae=dict(zip(FACTOR_NAMES, mae.tolist(), strict=True)))


def check_shapes_probe(probe: FactorProbe, source: str) -> None:
    """Raise CheckpointError unless ``probe`` reads this version of the shapes domain's factors, in order."""
    if probe.factor_names != FACTOR_NAMES:
        raise CheckpointError(f"{source}: a probe of the factors {list(probe.factor_names)}, not of this version "
                              f"of the shapes domain ({list(FACTOR_NAMES)})")
