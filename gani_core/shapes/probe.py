"""The factor probe: a small CNN that measures the `shapes` factors of an image.

Trained on rendered images with their true factors, it is the "ground truth" measurement for images a
generator makes (whose factors are not known): edit directions are fitted on its readings of sampled
images, and `edit_accuracy` reads how far an edit moved each factor. It reads images in [-1, 1] at
the resolution it was trained for and returns normalised factors (0..1 over each factor's range).
Trained with light noise and blur so that it reads generated images as well as rendered ones.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as st_save
from torch import nn

from gani_core.errors import CheckpointError
from gani_core.shapes.domain import FACTOR_NAMES, NUM_FACTORS, render, sample_factors

PROBE_FORMAT = "gani-shapes-probe/1"
# The shipped probe of the 64 px domain (trained by `gani train-builtin`, beside the built-in generator).
PROBE_FILE = Path(__file__).resolve().parents[1] / "weights" / "shapes64-probe.safetensors"


class FactorProbe(nn.Module):
    def __init__(self, resolution: int = 64, width: int = 16) -> None:
        super().__init__()
        self.resolution = resolution
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)]
        ch, res = width, resolution
        while res > 4:
            out = min(ch * 2, 8 * width)
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch, res = out, res // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * 16, 128), nn.LeakyReLU(0.2), nn.Linear(128, NUM_FACTORS))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, R, R] in [-1, 1] → normalised factors [N, NUM_FACTORS] (about 0..1)."""
        if images.shape[-1] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="area")
        return self.head(self.features(images)) + 0.5


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
    probe = FactorProbe(resolution).to(device)
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
    gen = torch.Generator().manual_seed(seed)
    t = sample_factors(count, gen).to(device)
    pred = torch.cat([probe(render(chunk, probe.resolution)) for chunk in t.split(250)])
    resid = (pred - t).square().mean(dim=0)
    r2 = 1 - resid / t.var(dim=0)
    mae = (pred - t).abs().mean(dim=0)
    return ProbeReport(steps=steps, r2=dict(zip(FACTOR_NAMES, r2.tolist(), strict=True)),
                       mae=dict(zip(FACTOR_NAMES, mae.tolist(), strict=True)))


def probe_to_bytes(probe: FactorProbe, report: ProbeReport | None = None) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items()}
    meta = {"format": PROBE_FORMAT, "resolution": str(probe.resolution), "factors": json.dumps(FACTOR_NAMES)}
    if report is not None:
        meta["report"] = json.dumps({"steps": report.steps, "r2": report.r2, "mae": report.mae})
    return st_save(tensors, metadata=meta)


def probe_from_bytes(data: bytes, source: str) -> FactorProbe:
    from gani_core.checkpoints.native import read_native

    meta, tensors = read_native(data, source)
    if meta.get("format") != PROBE_FORMAT or json.loads(meta.get("factors", "[]")) != list(FACTOR_NAMES):
        raise CheckpointError(f"{source}: not a factor probe of this version of the shapes domain")
    probe = FactorProbe(int(meta["resolution"]))
    probe.load_state_dict(tensors)
    return probe.eval().requires_grad_(False)


@functools.cache
def builtin_probe() -> FactorProbe:
    """The shipped factor probe (on the CPU; move a copy where it is needed)."""
    if not PROBE_FILE.is_file():
        raise CheckpointError(f"the shapes factor probe is missing ({PROBE_FILE}); `gani train-builtin` writes it")
    return probe_from_bytes(PROBE_FILE.read_bytes(), str(PROBE_FILE))
