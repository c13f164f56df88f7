"""Training a small StyleGAN2 on the `shapes` domain: non-saturating loss, lazy R1, EMA, style mixing,
optional path-length regularisation. Resumable: everything lives in one folder.

Folder layout (``out``):
    state.pt            G, G_ema, D, both optimisers, counters and RNG states (tensors and numbers only;
                        read back with ``torch.load(weights_only=True)``, never as code)
    G_ema.safetensors   the EMA generator in the project's format (what `load_generator` reads)
    curves.jsonl        one JSON line per log tick: kimg, step, seconds, and each loss and regulariser averaged
                        since the previous line (sample quality is measured after training: shapes/build.py)
    samples.png         a fixed grid of samples from G_ema, rewritten at every snapshot
    config.json         the TrainConfig of the run (a resume with a different config is refused)

The images are rendered on the fly on the training device, so there is no data loading at all.
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gani_core import storage
from gani_core.checkpoints.native import save_generator
from gani_core.errors import GaniError
from gani_core.networks import Generator, GeneratorConfig
from gani_core.render import save_grid
from gani_core.shapes.domain import render, sample_factors
from gani_core.training.discriminator import Discriminator

SAMPLE_SEED = 7                         # z of the sample grid
SAMPLE_COUNT = 32
# Settings a resumed run may change: how long it trains and how often it reports.
RESUMABLE = ("total_kimg", "log_kimg", "snapshot_kimg")


@dataclass
class TrainConfig:
    resolution: int = 64                # image resolution (a power of two, 8 to 256)
    batch: int = 32                     # images per step
    total_kimg: float = 400.0           # length of training, in thousands of real images shown
    g_lr: float = 0.0025                # Adam learning rates (betas 0, 0.99)
    d_lr: float = 0.0025
    r1_gamma: float = 0.05              # R1 weight, applied every r1_interval steps
    r1_interval: int = 16
    pl_weight: float = 2.0              # path-length regulariser weight (0 = off; StyleGAN2 config-f: 2)
    pl_interval: int = 4
    style_mixing: float = 0.9           # probability of mixing two latents in a generated batch
    ema_kimg: float = 10.0              # half-life of the generator EMA
    ema_rampup: float = 0.05            # EMA half-life ramp (fraction of kimg seen), None-like when 0
    channel_base: int = 4096            # G and D widths: min(channel_base // res, channel_max)
    channel_max: int = 128
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 4
    seed: int = 0
    log_kimg: float = 4.0               # a curves.jsonl line every log_kimg
    snapshot_kimg: float = 40.0         # state.pt, G_ema.safetensors and samples.png every snapshot_kimg

    def generator_config(self, label: str = "") -> GeneratorConfig:
        return GeneratorConfig(
            z_dim=self.z_dim, w_dim=self.w_dim, img_resolution=self.resolution, mapping_layers=self.mapping_layers,
            channel_base=self.channel_base, channel_max=self.channel_max, label=label,
        )


class TrainingError(GaniError):
    """A training run could not start or resume (e.g. a folder holding a run with another config)."""


@dataclass
class Trainer:
    cfg: TrainConfig
    device: torch.device
    G: Generator
    G_ema: Generator
    D: Discriminator
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    factor_rng: torch.Generator         # CPU RNG of the real images' factors
    step: int = 0
    images_seen: int = 0
    seconds: float = 0.0                # training time before this process (from earlier runs)
    pl_mean: torch.Tensor | None = None  # running mean of path lengths (on the device)

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000


def _adam(params: object, lr: float, interval: int) -> torch.optim.Adam:
    # Lazy regularisation: the regulariser runs every `interval` steps, so the optimiser's hyperparameters
    # are rescaled as in StyleGAN2 to keep the effective schedule of the main loss.
    ratio = interval / (interval + 1) if interval > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0, 0.99**ratio), eps=1e-8)  # type: ignore[arg-type]


def new_trainer(cfg: TrainConfig, device: torch.device) -> Trainer:
    torch.manual_seed(cfg.seed)
    G = Generator(cfg.generator_config()).to(device).train()
    D = Discriminator(cfg.resolution, channel_base=cfg.channel_base, channel_max=cfg.channel_max).to(device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    return Trainer(
        cfg=cfg, device=device, G=G, G_ema=G_ema, D=D,
        opt_G=_adam(G.parameters(), cfg.g_lr, cfg.pl_interval if cfg.pl_weight > 0 else 0),
        opt_D=_adam(D.parameters(), cfg.d_lr, cfg.r1_interval),
        factor_rng=torch.Generator().manual_seed(cfg.seed + 1),
    )


# ----------------------------------------------------------------------------------------------------
# One step


def _generated_ws(tr: Trainer, n: int) -> torch.Tensor:
    G = tr.G
    ws = G.mapping(torch.randn([n, G.z_dim], device=tr.device))
    if tr.cfg.style_mixing > 0 and torch.rand([]).item() < tr.cfg.style_mixing:
        cutoff = int(torch.randint(1, G.num_ws, []).item())
        ws2 = G.mapping(torch.randn([n, G.z_dim], device=tr.device))
        ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
    return ws


def _real_images(tr: Trainer, n: int) -> torch.Tensor:
    return render(sample_factors(n, tr.factor_rng).to(tr.device), tr.cfg.resolution)


def train_step(tr: Trainer) -> dict[str, torch.Tensor]:
    """One generator and one discriminator update (plus due regularisers); returns the losses (detached
    0-d tensors on the device: reading them would wait for the GPU, so the loop reads them once per log)."""
    cfg, G, D, n = tr.cfg, tr.G, tr.D, tr.cfg.batch
    logs: dict[str, torch.Tensor] = {}

    # Generator: non-saturating loss.
    D.requires_grad_(False)
    ws = _generated_ws(tr, n)
    with torch.no_grad():   # track the average w, as the official code does, for truncation and pivots
        G.mapping.w_avg.copy_(ws[:, 0].mean(dim=0).lerp(G.mapping.w_avg, 0.995))
    loss_G = F.softplus(-D(G.synthesis(ws, noise_mode="random"))).mean()
    tr.opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    tr.opt_G.step()
    logs["loss_G"] = loss_G.detach()

    # Generator: path-length regulariser (lazy).
    if cfg.pl_weight > 0 and tr.step % cfg.pl_interval == 0:
        pl_n = max(n // 2, 1)
        ws = _generated_ws(tr, pl_n).detach().requires_grad_(True)
        img = G.synthesis(ws, noise_mode="random")
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
        if tr.pl_mean is None:
            tr.pl_mean = torch.zeros([], device=tr.device)
        tr.pl_mean = tr.pl_mean.lerp(lengths.mean().detach(), 0.01)
        penalty = (lengths - tr.pl_mean).square().mean()
        tr.opt_G.zero_grad(set_to_none=True)
        (penalty * cfg.pl_weight * cfg.pl_interval).backward()
        tr.opt_G.step()
        logs["pl_penalty"] = penalty.detach()

    # Discriminator: logistic loss on generated and real images.
    D.requires_grad_(True)
    with torch.no_grad():
        fake = G.synthesis(_generated_ws(tr, n), noise_mode="random")
    real = _real_images(tr, n)
    logits_fake, logits_real = D(fake), D(real)
    loss_D = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
    tr.opt_D.zero_grad(set_to_none=True)
    loss_D.backward()
    tr.opt_D.step()
    logs.update(loss_D=loss_D.detach(), score_real=logits_real.mean().detach(),
                score_fake=logits_fake.mean().detach())

    # Discriminator: R1 gradient penalty on real images (lazy).
    if cfg.r1_gamma > 0 and tr.step % cfg.r1_interval == 0:
        real = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
        r1 = grad.square().sum(dim=[1, 2, 3]).mean()
        tr.opt_D.zero_grad(set_to_none=True)
        (r1 * (cfg.r1_gamma / 2) * cfg.r1_interval).backward()
        tr.opt_D.step()
        logs["r1_penalty"] = r1.detach()

    # EMA of the generator, with StyleGAN2-ADA's half-life ramp-up.
    tr.images_seen += n
    ema_nimg = cfg.ema_kimg * 1000
    if cfg.ema_rampup > 0:
        ema_nimg = min(ema_nimg, tr.images_seen * cfg.ema_rampup)
    beta = 0.5 ** (n / max(ema_nimg, 1e-8))
    with torch.no_grad():
        torch._foreach_lerp_(list(tr.G_ema.parameters()), list(G.parameters()), 1 - beta)
        for b_ema, b in zip(tr.G_ema.buffers(), G.buffers(), strict=True):
            b_ema.copy_(b)
    tr.step += 1
    return logs


def measure_rate(cfg: TrainConfig, device: str | torch.device, steps: int = 24, warmup: int = 6) -> float:
    """Training throughput in images per second on ``device`` (a throwaway trainer; regularisers included)."""
    device = torch.device(device)
    _configure_backends(device)
    tr = new_trainer(cfg, device)
    for _ in range(warmup):
        train_step(tr)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(tr)
    _sync(device)
    return steps * cfg.batch / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


# ----------------------------------------------------------------------------------------------------
# Snapshots and resume


def save_training_state(tr: Trainer, out: Path) -> None:
    """Write ``out``/state.pt: the networks, optimisers, counters and RNG states a resume needs."""
    state = {
        "G": tr.G.state_dict(), "G_ema": tr.G_ema.state_dict(), "D": tr.D.state_dict(),
        "opt_G": tr.opt_G.state_dict(), "opt_D": tr.opt_D.state_dict(),
        "step": tr.step, "images_seen": tr.images_seen, "seconds": tr.seconds,
        "pl_mean": torch.zeros([]) if tr.pl_mean is None else tr.pl_mean.cpu(),
        "factor_rng": tr.factor_rng.get_state(), "torch_rng": torch.get_rng_state(),
    }
    if tr.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(tr.device)
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(out / "state.pt", buf.getvalue())


def load_training_state(tr: Trainer, out: Path) -> None:
    """Restore ``tr`` from ``out``/state.pt (written by ``save_training_state``)."""
    state = torch.load(out / "state.pt", map_location=tr.device, weights_only=True)
    tr.G.load_state_dict(state["G"])
    tr.G_ema.load_state_dict(state["G_ema"])
    tr.D.load_state_dict(state["D"])
    tr.opt_G.load_state_dict(state["opt_G"])
    tr.opt_D.load_state_dict(state["opt_D"])
    tr.step, tr.images_seen = int(state["step"]), int(state["images_seen"])
    tr.seconds, tr.pl_mean = float(state["seconds"]), state["pl_mean"].to(tr.device)
    tr.factor_rng.set_state(state["factor_rng"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if "cuda_rng" in state and tr.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), tr.device)


def snapshot(tr: Trainer, out: Path, label: str) -> None:
    """Write state.pt, G_ema.safetensors and samples.png (each atomically)."""
    save_training_state(tr, out)
    G_ema = copy.deepcopy(tr.G_ema).cpu()
    G_ema.cfg.label = label
    save_generator(G_ema, out / "G_ema.safetensors", extra={"kimg": f"{tr.kimg:.1f}", "domain": "shapes"})
    gen = torch.Generator().manual_seed(SAMPLE_SEED)
    z = torch.randn([SAMPLE_COUNT, G_ema.z_dim], generator=gen)
    with torch.no_grad():
        samples = (G_ema(z).clamp(-1, 1) + 1) / 2
    save_grid(samples, out / "samples.png", caption=f"{label}: samples, psi 1", columns=8)


# ----------------------------------------------------------------------------------------------------
# The loop


def train(
    cfg: TrainConfig,
    out: str | Path,
    device: str | torch.device = "cpu",
    max_seconds: float | None = None,
    log: Callable[[dict], None] | None = None,
) -> Trainer:
    """Train (or resume the run in ``out``) until ``cfg.total_kimg`` or ``max_seconds`` of this call.

    Returns the trainer; ``out`` holds a snapshot of the last step. Raises `TrainingError` when ``out``
    holds a run with a different config.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    _configure_backends(device)
    config_path = out / "config.json"
    if config_path.exists():
        saved, wanted = json.loads(config_path.read_text()), asdict(cfg)
        changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k) and k not in RESUMABLE)
        if changed:
            raise TrainingError(f"{out} holds a training run with another config (differs in {changed}); "
                                "resume with the same settings or use a new folder")
    storage.write_bytes(config_path, json.dumps(asdict(cfg), indent=2).encode())
    tr = new_trainer(cfg, device)
    if (out / "state.pt").exists():
        load_training_state(tr, out)

    def label() -> str:
        return f"built-in, trained on shapes ({cfg.resolution} px, {tr.kimg:.0f} kimg)"

    call_start = seg_start = time.perf_counter()
    next_log = (math.floor(tr.kimg / cfg.log_kimg) + 1) * cfg.log_kimg
    next_snap = (math.floor(tr.kimg / cfg.snapshot_kimg) + 1) * cfg.snapshot_kimg
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    while tr.kimg < cfg.total_kimg:
        for k, v in train_step(tr).items():
            sums[k] = sums[k] + v if k in sums else v
            counts[k] = counts.get(k, 0) + 1
        now = time.perf_counter()
        out_of_time = max_seconds is not None and now - call_start >= max_seconds
        done = tr.kimg >= cfg.total_kimg or out_of_time
        if tr.kimg >= next_log or done:
            line = {"kimg": round(tr.kimg, 3), "step": tr.step, "seconds": round(tr.seconds + now - seg_start, 1),
                    **{k: round(sums[k].item() / counts[k], 5) for k in sums}}
            with open(out / "curves.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            if log is not None:
                log(line)
            sums, counts = {}, {}
            next_log += cfg.log_kimg
        if tr.kimg >= next_snap or done:
            tr.seconds += now - seg_start
            seg_start = now
            snapshot(tr, out, label())
            next_snap += cfg.snapshot_kimg
        if out_of_time:
            break
    return tr
