"""Pivot inversion: the latent in W (or W+) whose render is closest to the image, found by Adam.

The schedule is PTI's projector's (itself stylegan2-ada-pytorch's): start at the average latent, a cosine
learning-rate ramp-down with a short warm-up, and Gaussian noise on the latent that decays over the first
three quarters of the run. The loss is L2 + LPIPS on the render (``losses.reconstruction_loss``).
Optionally the noise maps are optimised too, with the multi-scale noise regulariser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from gani_core.defaults import PIVOT_STEPS
from gani_core.losses import reconstruction_loss
from gani_core.networks import Generator
from gani_core.precision import Precision, autocast

Progress = Callable[[int, int, float], None]  # (step, total, loss)


@dataclass(frozen=True)
class PivotConfig:
    space: Literal["w", "wplus"] = "w"  # one w for all layers (PTI), or one per layer (W+)
    steps: int = PIVOT_STEPS            # PTI's first-inversion steps
    lr: float = 0.05                    # peak learning rate of the ramp
    lr_rampup: float = 0.05             # fraction of steps warming up
    lr_rampdown: float = 0.25           # fraction of steps cooling down (cosine)
    noise_factor: float = 0.05          # initial latent noise, in units of the w spread
    noise_ramp: float = 0.75            # fraction of steps over which latent noise decays to 0
    l2_weight: float = 1.0              # weight of the MSE term
    lpips_weight: float = 1.0           # weight of the LPIPS term
    optimize_noise: bool = False        # also optimise the noise maps (then rendered with them)
    noise_regularize: float = 1e5       # weight of the noise autocorrelation regulariser
    precision: Precision = "fp32"       # "bf16": renders and losses under bf16 autocast


def lr_at(step: int, steps: int, peak: float, rampup: float, rampdown: float) -> float:
    t = step / max(steps, 1)
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp *= min(1.0, t / rampup)
    return peak * ramp


def _noise_regularizer(noises: list[torch.Tensor]) -> torch.Tensor:
    """Penalise spatial autocorrelation of each noise map at every scale (as the official projector)."""
    loss = noises[0].new_zeros(())
    for n in noises:
        n = n[None, None]
        while True:
            loss = loss + (n * torch.roll(n, 1, dims=3)).mean() ** 2 + (n * torch.roll(n, 1, dims=2)).mean() ** 2
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return loss


PROGRESS_EVERY = 10     # steps between progress reports: reading a loss back waits for the device


def find_pivot(
    G: Generator,
    target: torch.Tensor,
    cfg: PivotConfig = PivotConfig(),
    seed: int = 0,
    w_std: float | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Invert ``target`` [1, 3, R, R] in [-1, 1] to a pivot latent ws [num_ws, w_dim] (:func:`find_pivots` of one).

    With ``cfg.optimize_noise`` the optimised noise maps are written into G's ``noise_const`` buffers (call it
    on a copy if the original must stay intact).
    """
    return find_pivots(G, target, cfg, [seed], w_std, progress)[0]


def find_pivots(
    G: Generator,
    targets: torch.Tensor,
    cfg: PivotConfig = PivotConfig(),
    seeds: list[int] | None = None,
    w_std: float | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Invert K images ``targets`` [K, 3, R, R] in [-1, 1] at once: pivots ws [K, num_ws, w_dim].

    Each image gets what :func:`find_pivot` gives it alone with its seed (``seeds``, default 0 for all), within
    float32 rounding: one render and one backward per step for the batch, the loss summed over images (so each
    latent's gradient is its own image's), Adam elementwise, each image's latent noise from its own seeded
    generator. ``w_std`` is the spread of W around ``w_avg`` (RMS distance), estimated from seeded samples when
    not given; it scales the latent noise. ``progress(step, total, mean loss)`` is called every PROGRESS_EVERY
    steps and at the end. Noise-map optimisation (``cfg.optimize_noise``) works on one image at a time.
    """
    k = targets.shape[0]
    seeds = list(seeds) if seeds is not None else [0] * k
    if targets.shape[1:] != (G.img_channels, G.img_resolution, G.img_resolution) or len(seeds) != k:
        raise ValueError(f"targets must be [K, 3, {G.img_resolution}, {G.img_resolution}] with K seeds, got "
                         f"{list(targets.shape)} and {len(seeds)} seed(s)")
    if cfg.optimize_noise and k != 1:
        raise ValueError("optimize_noise changes G's noise maps: invert one image at a time with it")
    device = targets.device
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    w_avg = G.mapping.w_avg.detach()
    spreads = [w_std] * k if w_std is not None else _w_std(G, seeds, gens)
    num = 1 if cfg.space == "w" else G.num_ws
    w_opt = w_avg.reshape(1, 1, -1).repeat(k, num, 1).clone().requires_grad_(True)
    params: list[torch.Tensor] = [w_opt]
    noises: list[torch.Tensor] = []
    if cfg.optimize_noise:
        for name, buf in G.synthesis.named_buffers():
            if name.endswith("noise_const"):
                buf.copy_(torch.randn(buf.shape, generator=gens[0]).to(device))
                noises.append(buf.requires_grad_(True))
        params += noises
    opt = torch.optim.Adam(params, betas=(0.9, 0.999), lr=cfg.lr)
    for step in range(cfg.steps):
        t = step / max(cfg.steps, 1)
        decay = cfg.noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp) ** 2
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.lr_rampup, cfg.lr_rampdown)
        w_noise = torch.cat([torch.randn([1, num, G.w_dim], generator=g) * (spread * decay)     # one copy to the
                             for g, spread in zip(gens, spreads, strict=True)]).to(device)   # device per step
        ws = (w_opt + w_noise).expand(k, G.num_ws, -1) if num == 1 else w_opt + w_noise
        with autocast(device, cfg.precision):
            render = G.synthesis(ws, noise_mode="const")
            loss = reconstruction_loss(render.float(), targets, cfg.l2_weight, cfg.lpips_weight)
        if noises:
            loss = loss + cfg.noise_regularize * _noise_regularizer(noises)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if noises:
            with torch.no_grad():  # keep each noise map zero-mean, unit-variance
                for n in noises:
                    n.sub_(n.mean()).div_(n.square().mean().sqrt())
        if progress is not None and ((step + 1) % PROGRESS_EVERY == 0 or step + 1 == cfg.steps):
            progress(step + 1, cfg.steps, loss.item() / k)
    for n in noises:
        n.requires_grad_(False)
    return w_opt.detach().expand(k, G.num_ws, -1).clone()


def _w_std(G: Generator, seeds: list[int], gens: list[torch.Generator]) -> list[float]:
    """Per image, the RMS distance from w_avg of 2000 latents mapped from its generator's first draws (computed once
    per distinct seed; every generator advances as in a run of its image alone)."""
    by_seed: dict[int, float] = {}
    for seed, g in zip(seeds, gens, strict=True):
        z = torch.randn([2000, G.z_dim], generator=g).to(G.mapping.w_avg.device)
        if seed not in by_seed:
            with torch.no_grad():
                by_seed[seed] = (G.mapping(z)[:, 0] - G.mapping.w_avg).square().sum(1).mean().sqrt().item()
    return [by_seed[s] for s in seeds]
