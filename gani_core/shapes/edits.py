"""Edit directions with ground truth, and `edit_accuracy`.

For each `shapes` factor, a unit direction in W fitted on sampled latents (InterFaceGAN style): map
seeded z to w, render, read the factors with the probe, and fit a ridge regression from w to each
factor; the direction is the normalised coefficient vector (moving along it increases the factor).

`edit_accuracy` asks whether a tuned generator still edits like the original: at the pivot w_p, for
each factor k, move ±s_k along its direction (s_k: the spread of mapped latents along it) and measure
with the probe how much factor k changed, with the tuned generator (Δt_k) and the original (Δo_k).
    edit_accuracy = mean_k clip(1 - |Δt_k - Δo_k| / |Δo_k|, 0, 1)
1 = every edit moves its factor exactly as much as before tuning; 0 = the edits no longer work (or
overshoot by 100 % or more). The ratios Δt_k / Δo_k are reported per factor too.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import torch

from gani_core.networks import Generator, assert_shape
from gani_core.shapes.domain import FACTOR_NAMES
from gani_core.shapes.probe import FactorProbe, builtin_probe

TENSOR_PREFIX = "edits."                # how the directions are stored inside a generator's .safetensors
METADATA_KEY = "edit_factors"


@dataclass
class FactorEdits:
    names: tuple[str, ...]              # the factors, in the order of the rows below
    directions: torch.Tensor            # [K, w_dim] unit directions in W
    steps: torch.Tensor                 # [K] edit step in W units: std of mapped latents along the direction
    linear_r2: torch.Tensor             # [K] held-out R² of the linear fit w -> factor (how linear it is in W)

    def to(self, device: str | torch.device) -> FactorEdits:
        return FactorEdits(self.names, self.directions.to(device), self.steps.to(device), self.linear_r2.to(device))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{TENSOR_PREFIX}directions": self.directions.cpu().float().contiguous(),
                f"{TENSOR_PREFIX}steps": self.steps.cpu().float().contiguous(),
                f"{TENSOR_PREFIX}linear_r2": self.linear_r2.cpu().float().contiguous()}

    def metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps(list(self.names))}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> FactorEdits | None:
        """The edits stored in a generator file, or None when it holds none."""
        if METADATA_KEY not in metadata or f"{TENSOR_PREFIX}directions" not in tensors:
            return None
        names = tuple(json.loads(metadata[METADATA_KEY]))
        d = tensors[f"{TENSOR_PREFIX}directions"]
        if d.ndim != 2 or d.shape[0] != len(names):
            raise ValueError(f"stored edit directions have shape {list(d.shape)} for {len(names)} factors")
        return cls(names, d, tensors[f"{TENSOR_PREFIX}steps"], tensors[f"{TENSOR_PREFIX}linear_r2"])


@torch.no_grad()
def read_factors(G: Generator, probe: FactorProbe, ws: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """The probe's reading [N, K] of G's const-noise renders of ws [N, num_ws, w_dim]."""
    device = next(probe.parameters()).device
    out = [probe(G.synthesis(chunk, noise_mode="const").clamp(-1, 1).to(device)) for chunk in ws.split(batch_size)]
    return torch.cat(out)


@torch.no_grad()
def fit_factor_edits(G: Generator, probe: FactorProbe, count: int = 8192, seed: int = 0,
                     ridge: float = 1.0) -> FactorEdits:
    """Fit one W direction per factor on ``count`` seeded latents (80 % fit, 20 % held out for R²)."""
    device = G.mapping.w_avg.device
    z = torch.randn([count, G.z_dim], generator=torch.Generator().manual_seed(seed)).to(device)
    ws = G.mapping(z)
    y = read_factors(G, probe, ws).to(device)
    w = ws[:, 0]
    split = int(count * 0.8)
    mean_w, mean_y = w[:split].mean(0), y[:split].mean(0)
    x_fit, y_fit = w[:split] - mean_w, y[:split] - mean_y
    gram = x_fit.T @ x_fit + ridge * torch.eye(G.w_dim, device=device)
    coef = torch.linalg.solve(gram, x_fit.T @ y_fit)                        # [w_dim, K]
    pred = (w[split:] - mean_w) @ coef + mean_y
    r2 = 1 - (pred - y[split:]).square().mean(0) / y[split:].var(0)
    directions = (coef / coef.norm(dim=0, keepdim=True)).T.contiguous()    # [K, w_dim]
    steps = ((w - w.mean(0)) @ directions.T).std(dim=0)
    return FactorEdits(FACTOR_NAMES, directions, steps, r2)


@torch.no_grad()
def factor_changes(G: Generator, probe: FactorProbe, w_pivot: torch.Tensor, edits: FactorEdits,
                   strength: float = 1.0) -> torch.Tensor:
    """Δ_k: the probe's change of factor k between w_p + s·d_k and w_p - s·d_k, for each k: [K]."""
    assert_shape(w_pivot, [G.num_ws, G.w_dim], "w_pivot")
    shift = (strength * edits.steps[:, None] * edits.directions).to(w_pivot.device)   # [K, w_dim]
    ws = torch.cat([w_pivot + shift[:, None], w_pivot - shift[:, None]])             # [2K, num_ws, w_dim]
    f = read_factors(G, probe, ws)
    k = len(edits.names)
    idx = torch.arange(k)
    return f[:k][idx, idx] - f[k:][idx, idx]


def edit_accuracy(G_orig: Generator, G_tuned: Generator, w_pivot: torch.Tensor, edits: FactorEdits,
                  probe: FactorProbe | None = None, strength: float = 1.0) -> tuple[float, dict[str, float]]:
    """(edit_accuracy, {factor: Δt/Δo}) at the pivot w_p [num_ws, w_dim]; see the module docstring.

    ``probe`` defaults to the shipped shapes probe. Computed on G_orig's device.
    """
    device = G_orig.mapping.w_avg.device
    probe = copy.deepcopy(probe if probe is not None else builtin_probe()).to(device)
    edits = edits.to(device)
    w_pivot = w_pivot.to(device)
    before = factor_changes(G_orig, probe, w_pivot, edits, strength)
    after = factor_changes(G_tuned, probe, w_pivot, edits, strength)
    per_factor = (1 - (after - before).abs() / before.abs().clamp_min(1e-6)).clamp(0, 1)
    ratios = {name: float(a / b) if abs(float(b)) > 1e-6 else float("nan")
              for name, a, b in zip(edits.names, after.tolist(), before.tolist(), strict=True)}
    return float(per_factor.mean()), ratios
