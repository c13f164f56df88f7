"""Fitting the factor edit directions of a generator of the `shapes` domain (InterFaceGAN style).

For each factor, a unit direction in W fitted on sampled latents: map seeded z to w, render, read the
factors with the factor probe, and fit a ridge regression from w to each factor; the direction is the
normalised coefficient vector (moving along it increases the factor). The result, a
`gani_core.factors.FactorEdits`, is stored in the generator file; `gani_core.editing.edit_accuracy`
uses it.
"""

from __future__ import annotations

import torch

from gani_core.editing import read_factors
from gani_core.factors import FactorEdits, FactorProbe
from gani_core.networks import Generator


@torch.no_grad()
def fit_factor_edits(G: Generator, probe: FactorProbe, count: int = 8192, seed: int = 0,
                     ridge: float = 1.0) -> FactorEdits:
    """Fit one W direction per factor the probe reads, on ``count`` seeded latents (80 % fit, 20 % held out
    for the R²)."""
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
    return FactorEdits(probe.factor_names, directions, steps, r2)
