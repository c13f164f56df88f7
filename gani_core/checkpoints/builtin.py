"""The built-in generators.

- ``builtin`` (``builtin:64``): a StyleGAN2 trained on the procedural `shapes` domain (gani_core.shapes),
  shipped in ``gani_core/weights/`` with its factor edit directions and, in a file of its own, the factor
  probe that reads the domain's factors (loading attaches it); `gani train-builtin` reproduces both.
- ``builtin-random`` / ``builtin-random:RES``: a seeded, deterministic, untrained generator of any
  resolution, for fidelity tests and fast checks; labelled "built-in, untrained" wherever it appears.

Random generator: every path matters: noise strengths, biases, label-free affine offsets and ``w_avg``
are all non-trivial, so a loader or an inversion that drops one of them changes what it renders. The output layers are
scaled so that renders have the statistics of a trained generator (mostly within [-1, 1]).
"""

from __future__ import annotations

from pathlib import Path

import torch

from gani_core.networks import Generator, GeneratorConfig

BUILTIN_SEED = 20230222
BUILTIN_RESOLUTION = 64
BUILTIN_LABEL = "built-in, untrained"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
TRAINED_RESOLUTION = 64
TRAINED_FILE = WEIGHTS_DIR / f"shapes{TRAINED_RESOLUTION}.safetensors"
PROBE_FILE = WEIGHTS_DIR / f"shapes{TRAINED_RESOLUTION}-probe.safetensors"
TARGET_RENDER_STD = 0.5


def builtin_config(resolution: int = BUILTIN_RESOLUTION) -> GeneratorConfig:
    return GeneratorConfig(
        z_dim=128, w_dim=128, img_resolution=resolution, mapping_layers=4,
        channel_base=4096, channel_max=128, label=f"{BUILTIN_LABEL} ({resolution} px)",
    )


@torch.no_grad()
def build_builtin(resolution: int = BUILTIN_RESOLUTION, seed: int = BUILTIN_SEED) -> Generator:
    """A deterministic StyleGAN2 of ``resolution`` px, the same on every machine for a given seed."""
    cfg = builtin_config(resolution)
    G = Generator(cfg)
    gen = torch.Generator().manual_seed(seed)
    for name, t in sorted(G.state_dict().items()):
        randn = torch.randn(t.shape, generator=gen)
        if name.endswith("resample_filter"):
            continue
        if name.endswith("affine.bias"):
            t.copy_(1 + 0.1 * randn)            # styles stay around 1, as after training
        elif name.endswith("noise_strength"):
            t.copy_(0.05 + 0.1 * randn.abs())
        elif name.endswith(".bias"):
            t.copy_(0.1 * randn)
        elif name.endswith("w_avg"):
            continue
        elif "mapping" in name:
            t.copy_(randn / cfg.mapping_lr_multiplier)
        else:
            t.copy_(randn)                      # conv weights, ToRGB weights, const, noise_const
    G.mapping.w_avg.copy_(G.mean_w(num_samples=4096, seed=seed))
    # Scale the ToRGB layers so that renders have roughly the spread of a trained generator's.
    z = torch.randn([16, cfg.z_dim], generator=gen)
    std = G(z).std().item()
    for block in G.synthesis.blocks():
        block.torgb.weight.mul_(TARGET_RENDER_STD / std)
        block.torgb.bias.mul_(TARGET_RENDER_STD / std)
    return G.eval().requires_grad_(False)
