"""rosinality/stylegan2-pytorch checkpoints (``g_ema`` state dict, ``latent_avg``), mapped onto our Generator.

The sizes are inferred from the tensors: resolution from the number of ToRGB layers, channels per
resolution from the convolution weights, mapping depth from the ``style.N`` layers. rosinality's mapping
learning-rate multiplier (``lr_mlp``) is not stored; its default 0.01 is assumed unless given.
"""

from __future__ import annotations

import re

import torch

from gani_core.checkpoints.nvidia import load_weights
from gani_core.errors import CheckpointError
from gani_core.networks import Generator, GeneratorConfig, make_resample_filter


def _get(sd: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{source}: not a rosinality StyleGAN2 generator (no {key!r} in g_ema)")
    return sd[key]


def _check_kernel(kernel: torch.Tensor, key: str, source: str) -> None:
    # rosinality stores the FIR kernel scaled by the upsampling gain; only the standard filter is supported.
    if kernel.shape != (4, 4) or not torch.allclose(kernel / kernel.sum(), make_resample_filter(), atol=1e-6):
        raise CheckpointError(f"{source}: {key} is not the standard [1, 3, 3, 1] filter")


def load_rosinality(ckpt: dict, source: str, lr_mlp: float = 0.01) -> Generator:
    sd = ckpt["g_ema"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{source}: 'g_ema' is a {type(sd).__name__}, expected a state dict")
    style_ids = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    if not style_ids or style_ids != list(range(1, len(style_ids) + 1)):
        raise CheckpointError(f"{source}: not a rosinality StyleGAN2 generator (no style.N mapping layers)")
    n_rgbs = sum(1 for k in sd if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
    resolution = 4 * 2**n_rgbs
    style_dim = _get(sd, "style.1.weight", source).shape[1]
    const = _get(sd, "input.input", source)
    channels = {4: int(const.shape[1])}
    for i in range(n_rgbs):
        channels[8 * 2**i] = int(_get(sd, f"convs.{2 * i}.conv.weight", source).shape[1])
    img_channels = int(_get(sd, "to_rgb1.conv.weight", source).shape[1])
    cfg = GeneratorConfig(
        z_dim=style_dim, w_dim=style_dim, img_resolution=resolution, img_channels=img_channels,
        mapping_layers=len(style_ids), mapping_lr_multiplier=lr_mlp, channels=channels,
        label=f"rosinality checkpoint {source}",
    )
    G = Generator(cfg)

    state: dict[str, torch.Tensor] = {}
    for j in style_ids:
        state[f"mapping.fc{j - 1}.weight"] = sd[f"style.{j}.weight"]
        state[f"mapping.fc{j - 1}.bias"] = _get(sd, f"style.{j}.bias", source)
    latent_avg = ckpt.get("latent_avg")
    # Without latent_avg, w_avg is estimated after loading (below).
    state["mapping.w_avg"] = latent_avg.reshape(-1) if isinstance(latent_avg, torch.Tensor) else torch.zeros(style_dim)
    state["synthesis.b4.const"] = const[0]

    def conv(src: str, dst: str, noise_idx: int) -> None:
        state[f"{dst}.weight"] = _get(sd, f"{src}.conv.weight", source)[0]
        state[f"{dst}.affine.weight"] = _get(sd, f"{src}.conv.modulation.weight", source)
        state[f"{dst}.affine.bias"] = _get(sd, f"{src}.conv.modulation.bias", source)
        state[f"{dst}.bias"] = _get(sd, f"{src}.activate.bias", source)
        state[f"{dst}.noise_strength"] = _get(sd, f"{src}.noise.weight", source).reshape([])
        state[f"{dst}.noise_const"] = _get(sd, f"noises.noise_{noise_idx}", source)[0, 0]
        state[f"{dst}.resample_filter"] = make_resample_filter()
        if f"{src}.conv.blur.kernel" in sd:
            _check_kernel(sd[f"{src}.conv.blur.kernel"], f"{src}.conv.blur.kernel", source)

    def torgb(src: str, dst: str) -> None:
        state[f"{dst}.weight"] = _get(sd, f"{src}.conv.weight", source)[0]
        state[f"{dst}.affine.weight"] = _get(sd, f"{src}.conv.modulation.weight", source)
        state[f"{dst}.affine.bias"] = _get(sd, f"{src}.conv.modulation.bias", source)
        state[f"{dst}.bias"] = _get(sd, f"{src}.bias", source).reshape(-1)
        if f"{src}.upsample.kernel" in sd:
            _check_kernel(sd[f"{src}.upsample.kernel"], f"{src}.upsample.kernel", source)

    conv("conv1", "synthesis.b4.conv1", 0)
    torgb("to_rgb1", "synthesis.b4.torgb")
    state["synthesis.b4.resample_filter"] = make_resample_filter()
    for i in range(n_rgbs):
        res = 8 * 2**i
        conv(f"convs.{2 * i}", f"synthesis.b{res}.conv0", 2 * i + 1)
        conv(f"convs.{2 * i + 1}", f"synthesis.b{res}.conv1", 2 * i + 2)
        torgb(f"to_rgbs.{i}", f"synthesis.b{res}.torgb")
        state[f"synthesis.b{res}.resample_filter"] = make_resample_filter()

    leftover = sorted(set(sd) - _used_keys(sd))
    if leftover:
        raise CheckpointError(f"{source}: g_ema has weights this loader does not understand: {leftover[:5]}")
    load_weights(G, state, source)
    if not isinstance(latent_avg, torch.Tensor):
        G.mapping.w_avg.copy_(G.mean_w())
        G.cfg.extra["w_avg"] = "estimated from 10000 seeded samples (checkpoint has no latent_avg)"
    return G.eval().requires_grad_(False)


def _used_keys(sd: dict[str, torch.Tensor]) -> set[str]:
    pattern = re.compile(
        r"style\.\d+\.(weight|bias)|input\.input|noises\.noise_\d+"
        r"|(conv1|convs\.\d+)\.(conv\.(weight|blur\.kernel|modulation\.(weight|bias))|noise\.weight|activate\.bias)"
        r"|(to_rgb1|to_rgbs\.\d+)\.(bias|upsample\.kernel|conv\.(weight|modulation\.(weight|bias)))"
    )
    return {k for k in sd if pattern.fullmatch(k)}
