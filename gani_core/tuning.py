"""Generator tuning around a pivot, one loop for every method.

GANI trains the GMMs (only their parameters are optimised); PTI is the same loop with a free dense
update of every synthesis parameter (``kind="full"``), which under Adam is exactly PTI's tuning of the
weights. Same pivot, same losses, same step budget: a comparison differs only in the method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import functional_call

from gani_core.editing import sample_regulariser_latents
from gani_core.gmm import GMMKind, GMMSet
from gani_core.losses import reconstruction_loss
from gani_core.lpips import lpips_distance
from gani_core.networks import Generator
from gani_core.precision import Precision, autocast

Progress = Callable[[int, int, float], None]  # (step, total, loss)


@dataclass(frozen=True)
class TuneConfig:
    kind: GMMKind = "param-lowrank"     # the GMM form (gmm.py); "full" is PTI
    steps: int = 350                    # PTI's tuning steps
    lr: float = 3e-3                    # Adam learning rate of the GMM parameters
    rank: int = 8                       # rank of low-rank GMM forms
    hidden: int = 32                    # hidden width of the "param" form
    layers: str = "conv+torgb"          # "conv+torgb": every synthesis conv and ToRGB weight; "all": PTI's
    l2_weight: float = 1.0              # reconstruction MSE weight
    lpips_weight: float = 1.0           # reconstruction LPIPS weight
    locality_weight: float = 0.1        # weight of the L2 and LPIPS locality terms (0: off)
    locality_interval: int = 1          # apply the locality term every this many steps
    locality_alpha: float = 0.5         # how far from the pivot toward random latents it looks (fraction)
    locality_samples: int = 1           # latents per locality evaluation
    precision: Precision = "fp32"       # "bf16": renders and losses under bf16 autocast
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class TuneResult:
    deltas: dict[str, torch.Tensor]     # ΔW by parameter name, detached
    losses: list[float]                 # reconstruction loss per step
    steps: int
    gmm_parameters: int                 # number of trained parameters


def tuned_layers(G: Generator, layers: str) -> dict[str, torch.Tensor]:
    """The parameters a method updates, by full name (``synthesis.b8.conv0.weight``, ...)."""
    if layers == "conv+torgb":
        return dict(G.tunable_layers())
    if layers == "all":
        return {n: p for n, p in G.named_parameters() if n.startswith("synthesis.")}
    raise ValueError(f"layers must be 'conv+torgb' or 'all', got {layers!r}")


def render_with(G: Generator, deltas: dict[str, torch.Tensor], ws: torch.Tensor) -> torch.Tensor:
    """G.synthesis(ws) with weights ``W + ΔW``, differentiable in the deltas; G itself is not modified."""
    params = {name.removeprefix("synthesis."): G.get_parameter(name) + d for name, d in deltas.items()}
    return functional_call(G.synthesis, params, (ws,), {"noise_mode": "const"})


def layer_gradients(G: Generator, names: list[str], ws: torch.Tensor, target: torch.Tensor,
                    cfg: TuneConfig) -> dict[str, torch.Tensor]:
    """The reconstruction gradient of each named weight, at the original weights and the pivot."""
    weights = {n: G.get_parameter(n).detach().clone().requires_grad_(True) for n in names}
    params = {n.removeprefix("synthesis."): w for n, w in weights.items()}
    render = functional_call(G.synthesis, params, (ws,), {"noise_mode": "const"})
    loss = reconstruction_loss(render, target, cfg.l2_weight, cfg.lpips_weight)
    grads = torch.autograd.grad(loss, list(weights.values()))
    return dict(zip(names, grads, strict=True))


def tune(
    G: Generator,
    w_pivot: torch.Tensor,
    target: torch.Tensor,
    cfg: TuneConfig = TuneConfig(),
    seed: int = 0,
    progress: Progress | None = None,
) -> TuneResult:
    """Train the update networks so that ``G`` with ``W + ΔW`` renders ``target`` from ``w_pivot``.

    w_pivot: [num_ws, w_dim]; target: [1, 3, R, R] in [-1, 1]. G is left unchanged.
    """
    ws = w_pivot.unsqueeze(0)
    weights = tuned_layers(G, cfg.layers)
    grads = layer_gradients(G, list(weights), ws, target, cfg) if cfg.kind == "grad" else None
    torch.manual_seed(seed)  # nn.Linear's default init in the "param" form
    gmms = GMMSet({n: w.detach() for n, w in weights.items()}, cfg.kind, rank=cfg.rank, hidden=cfg.hidden,
                  grads=grads, seed=seed)
    opt = torch.optim.Adam(gmms.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(seed + 1)
    losses: list[float] = []
    for step in range(cfg.steps):
        deltas = gmms.deltas()
        with autocast(ws.device, cfg.precision):
            render = render_with(G, deltas, ws).float()
            loss = reconstruction_loss(render, target, cfg.l2_weight, cfg.lpips_weight)
            losses.append(loss.item())
            if cfg.locality_weight and step % cfg.locality_interval == 0:
                w_loc = sample_regulariser_latents(G, w_pivot, cfg.locality_samples, gen, cfg.locality_alpha)
                with torch.no_grad():
                    original = G.synthesis(w_loc, noise_mode="const").float()
                tuned = render_with(G, deltas, w_loc).float()
                loc = torch.nn.functional.mse_loss(tuned, original) + lpips_distance(tuned, original).mean()
                loss = loss + cfg.locality_weight * loc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, cfg.steps, losses[-1])
    with torch.no_grad():
        final = {n: d.detach().clone() for n, d in gmms.deltas().items()}
    return TuneResult(deltas=final, losses=losses, steps=cfg.steps, gmm_parameters=gmms.num_parameters())
