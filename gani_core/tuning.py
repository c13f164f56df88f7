"""Generator tuning around a pivot, one loop for every method.

GANI trains the GMMs (only their parameters are optimised); PTI is the same loop with a free dense
update of every synthesis parameter (``form="full"``), which under Adam is exactly PTI's tuning of the
weights. Same pivot, same losses, same step budget: a comparison differs only in the method.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch.func import functional_call, stack_module_state, vmap

from gani_core.defaults import TUNE_STEPS
from gani_core.editing import sample_regulariser_latents
from gani_core.gmm import GMMForm, GMMSet
from gani_core.losses import reconstruction_loss, reconstruction_losses, regulariser_losses
from gani_core.networks import Generator
from gani_core.pivot import PROGRESS_EVERY, Progress
from gani_core.precision import Precision, autocast


@dataclass(frozen=True)
class TuneConfig:
    form: GMMForm = "param-lowrank"     # the GMM form (gmm.py); "full" is PTI
    steps: int = TUNE_STEPS             # PTI's tuning steps
    lr: float = 3e-3                    # Adam learning rate of the GMM parameters
    rank: int = 32                      # rank of low-rank GMM forms (8 until issue 11's ablations)
    hidden: int = 32                    # hidden width of the "param" form
    layers: str = "conv+torgb"          # "conv+torgb": every synthesis conv and ToRGB weight; "all": PTI's
    l2_weight: float = 1.0              # reconstruction MSE weight
    lpips_weight: float = 1.0           # reconstruction LPIPS weight
    # The regulariser (losses.regulariser_losses): the tuned generator's renders of latents around the pivot kept
    # close (MSE + LPIPS) to the original generator's. (The `locality` metric measures the same idea, after tuning.)
    reg_weight: float = 0.1             # its weight (0: off)
    reg_interval: int = 1               # apply it every this many steps
    reg_start: int = 0                  # the first step with it (before it: reconstruction only)
    reg_alpha: float = 0.5              # how far from the pivot toward random latents it looks (fraction)
    reg_samples: int = 1                # latents per evaluation
    reg_pool: int = 0                   # 0: fresh regulariser latents every step; N: N drawn once, their original
                                        # renders computed once, used in turn (one no-grad render less per step)
    precision: Precision = "fp32"       # "bf16": renders and losses under bf16 autocast


@dataclass
class TuneResult:
    deltas: dict[str, torch.Tensor]     # ΔW by parameter name, detached
    losses: list[float]                 # reconstruction loss per step
    steps: int
    gmm_parameters: int                 # number of trained parameters
    diverged_at: int | None = None      # the first step whose loss (or, after the last, weights) was not finite
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)   # ΔW after each snapshot step


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


def all_finite(deltas: dict[str, torch.Tensor]) -> bool:
    """Whether every entry of every ΔW is finite (a diverged tuning's are not)."""
    return all(bool(torch.isfinite(d).all()) for d in deltas.values())


@torch.no_grad()
def _originals(G: Generator, ws: torch.Tensor, precision: Precision) -> torch.Tensor:
    """The original generator's renders of latents ``ws`` [..., num_ws, w_dim] in one batch, float32, under the
    tuning's precision."""
    with autocast(ws.device, precision):
        return G.synthesis(ws.reshape(-1, *ws.shape[-2:]), noise_mode="const").float()


def _regulariser_pool(G: Generator, w_pivots: torch.Tensor, cfg: TuneConfig,
                      gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """``cfg.reg_pool`` draws of the regulariser's latents per image [K, N, S, num_ws, w_dim], drawn as the
    steps would draw them, and the original generator's renders of them [K, N, S, 3, R, R]."""
    k, n, s = w_pivots.shape[0], cfg.reg_pool, cfg.reg_samples
    ws = sample_regulariser_latents(G, w_pivots, n * s, gens, cfg.reg_alpha).view(k, n, s, *w_pivots.shape[1:])
    renders = torch.cat([_originals(G, chunk, cfg.precision) for chunk in ws.flatten(0, 2).split(16)])
    return ws, renders.view(k, n, s, *renders.shape[1:])


def tune(
    G: Generator,
    w_pivot: torch.Tensor,
    target: torch.Tensor,
    cfg: TuneConfig = TuneConfig(),
    seed: int = 0,
    progress: Progress | None = None,
) -> TuneResult:
    """Train the update networks so that ``G`` with ``W + ΔW`` renders ``target`` from ``w_pivot``.

    w_pivot: [num_ws, w_dim]; target: [1, 3, R, R] in [-1, 1]. G is left unchanged. :func:`tune_batch` of one.
    """
    return tune_batch(G, w_pivot[None], target, cfg, [seed], progress)[0]


def tune_batch(
    G: Generator,
    w_pivots: torch.Tensor,
    targets: torch.Tensor,
    cfg: TuneConfig = TuneConfig(),
    seeds: list[int] | None = None,
    progress: Progress | None = None,
    snapshot_steps: tuple[int, ...] = (),
) -> list[TuneResult]:
    """Tune K images at once: each its own update networks (or, for ``full``, its own copy of the weights).

    w_pivots: [K, num_ws, w_dim]; targets: [K, 3, R, R] in [-1, 1]; ``seeds`` (default 0 for all) seed each
    image's initialisation and regulariser latents. Each image gets what :func:`tune` gives it alone, within
    float32 rounding: the K sets of parameters are stacked, one vmapped render per step applies image k's
    ``W + ΔW_k`` to its own latents (StyleGAN2's modulated convolution then runs per-sample weights as a grouped
    convolution), the losses are summed over images (each image's parameters see only their own image's
    gradient) and Adam is elementwise. Losses stay on the device until the end; ``progress(step, total, mean
    loss)`` is called every PROGRESS_EVERY steps. An image whose loss stops being finite ends with
    ``diverged_at`` set; the others are unaffected. ``snapshot_steps``: the deltas after each of these steps are
    kept too (``TuneResult.snapshots``), so that one run gives the results of shorter budgets.
    """
    k = w_pivots.shape[0]
    seeds = list(seeds) if seeds is not None else [0] * k
    if targets.shape[0] != k or len(seeds) != k:
        raise ValueError(f"{k} pivots need {k} targets and seeds, got {targets.shape[0]} and {len(seeds)}")
    weights = tuned_layers(G, cfg.layers)
    sets = []
    for i in range(k):
        grads = (layer_gradients(G, list(weights), w_pivots[i : i + 1], targets[i : i + 1], cfg)
                 if cfg.form == "grad" else None)
        torch.manual_seed(seeds[i])  # nn.Linear's default init in the "param" form
        sets.append(GMMSet({n: w.detach() for n, w in weights.items()}, cfg.form, rank=cfg.rank, hidden=cfg.hidden,
                           grads=grads, seed=seeds[i]))
    params, buffers = stack_module_state(sets)          # {name: [K, ...]}: the trained leaves, and the inputs
    template = copy.deepcopy(sets[0]).to("meta")

    def deltas_of(p: dict, b: dict) -> dict[str, torch.Tensor]:
        return functional_call(template, (p, b), ())

    def render_k(p: dict, b: dict, ws: torch.Tensor) -> torch.Tensor:      # ws [M, num_ws, w_dim] -> [M, 3, R, R]
        return render_with(G, deltas_of(p, b), ws)

    opt = torch.optim.Adam(params.values(), lr=cfg.lr, betas=(0.9, 0.999))
    gens = [torch.Generator().manual_seed(s + 1) for s in seeds]
    history: list[torch.Tensor] = []                    # per step: [K] reconstruction losses, on the device
    pool = _regulariser_pool(G, w_pivots, cfg, gens) if cfg.reg_pool and cfg.reg_weight else None
    snapshots: dict[int, dict[str, torch.Tensor]] = {}  # step -> {name: [K, ...]}
    for step in range(cfg.steps):
        since = step - cfg.reg_start
        regularise = bool(cfg.reg_weight) and since >= 0 and since % cfg.reg_interval == 0
        ws = w_pivots[:, None]                                                        # [K, 1, num_ws, w_dim]
        if regularise:
            if pool is None:
                w_reg = sample_regulariser_latents(G, w_pivots, cfg.reg_samples, gens, cfg.reg_alpha)
                original = _originals(G, w_reg, cfg.precision).unflatten(0, (k, -1))  # [K, S, 3, R, R]
            else:
                turn = (since // cfg.reg_interval) % cfg.reg_pool
                w_reg, original = pool[0][:, turn], pool[1][:, turn]
            ws = torch.cat([ws, w_reg], dim=1)                                        # [K, 1 + S, num_ws, w_dim]
        with autocast(ws.device, cfg.precision):
            renders = vmap(render_k)(params, buffers, ws).float()                     # [K, M, 3, R, R]
            per_image = reconstruction_losses(renders[:, 0], targets, cfg.l2_weight, cfg.lpips_weight)
            history.append(per_image.detach())
            loss = per_image.sum()
            if regularise:
                reg = regulariser_losses(renders[:, 1:], original)                  # [K]
                loss = loss + cfg.reg_weight * reg.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step + 1 in snapshot_steps:
            with torch.no_grad():
                # cloned: the "full" form's deltas are its trained parameters, which Adam goes on updating in place
                snapshots[step + 1] = {n: d.clone() for n, d in vmap(deltas_of)(params, buffers).items()}
        if progress is not None and ((step + 1) % PROGRESS_EVERY == 0 or step + 1 == cfg.steps):
            progress(step + 1, cfg.steps, per_image.mean().item())
    with torch.no_grad():
        final = vmap(deltas_of)(params, buffers)                                       # {name: [K, ...]}
    losses = torch.stack(history).cpu() if history else torch.zeros(0, k)             # one read: [steps, K]
    results = []
    for i in range(k):
        finite = torch.isfinite(losses[:, i])
        diverged = None if bool(finite.all()) else int((~finite).nonzero()[0]) + 1
        if diverged is None and not all_finite({n: d[i] for n, d in final.items()}):
            diverged = cfg.steps        # every loss was finite, but the last update left non-finite weights
        results.append(TuneResult(deltas={n: d[i].clone() for n, d in final.items()}, losses=losses[:, i].tolist(),
                                  steps=cfg.steps, gmm_parameters=sets[i].num_parameters(), diverged_at=diverged,
                                  snapshots={s: {n: d[i].clone() for n, d in snap.items()}
                                             for s, snap in snapshots.items()}))
    return results
