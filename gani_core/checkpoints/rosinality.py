"""rosinality/stylegan2-pytorch checkpoints (``g_ema`` state dict, ``latent_avg``), mapped onto our Generator and back.

Reading (:func:`load_rosinality`): the sizes are inferred from the tensors: resolution from the number of ToRGB
layers, channels per resolution from the convolution weights, mapping depth from the ``style.N`` layers.
rosinality's mapping learning-rate multiplier (``lr_mlp``) is not stored; its default 0.01 is assumed unless given.

Writing (:func:`rosinality_state`, :func:`save_rosinality`) undoes every step of the reading, so that e4e,
HyperStyle, ReStyle and StyleCLIP, which build rosinality's ``Generator`` and load ``torch.load(f)["g_ema"]``,
render what our generator renders:

==============================  =======================  ===============================================
rosinality key                  ours                     layout
==============================  =======================  ===============================================
``style.{j}.weight`` / ``bias`` ``mapping.fc{j-1}.*``    same; scaled by ``mapping_lr_multiplier / lr_mlp``
``input.input``                 ``synthesis.b4.const``   ``[1, C, 4, 4]`` (ours ``[C, 4, 4]``)
``*.conv.weight``               ``*.weight``             ``[1, O, I, k, k]`` (ours ``[O, I, k, k]``)
``*.conv.modulation.*``         ``*.affine.*``           same
``*.activate.bias``             ``*.bias`` (convs)       same
``to_rgb*.bias``                ``*.torgb.bias``         ``[1, C, 1, 1]`` (ours ``[C]``)
``*.noise.weight``              ``*.noise_strength``     ``[1]`` (ours ``[]``)
``noises.noise_{i}``            ``*.noise_const``        ``[1, 1, R, R]`` (ours ``[R, R]``); i counts the convs
``*.blur.kernel``,              ``resample_filter``      buffers: the [1, 3, 3, 1] filter times the
``*.upsample.kernel``                                    upsampling gain 4 (ours: normalised to sum 1)
``latent_avg`` (beside g_ema)   ``mapping.w_avg``        ``[w_dim]``
==============================  =======================  ===============================================

Every rosinality tensor has its counterpart here (its noise buffers are our ``noise_const``): nothing is made up.
Ours without a rosinality key: the ``resample_filter`` buffers, which rosinality rebuilds from its ``blur_kernel``
argument. What rosinality's generator cannot be is refused before writing (:func:`check_rosinality`).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from gani_core import storage
from gani_core.checkpoints.nvidia import load_weights
from gani_core.errors import CheckpointError
from gani_core.networks import Generator, GeneratorConfig, SynthesisLayer, ToRGBLayer, make_resample_filter

# rosinality's FIR kernels are the normalised filter times the upsampling gain (``make_kernel(k) * factor ** 2``).
_UPSAMPLE_GAIN = 4.0


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


# ----------------------------------------------------------------------------------------------------
# Writing


def rosinality_state(G: Generator, lr_mlp: float = 0.01) -> dict[str, torch.Tensor]:
    """``G`` as rosinality's ``g_ema`` state dict: its keys, in its order, its layouts (module docstring), float32
    on the CPU. ``lr_mlp`` is the mapping lr multiplier the reader's ``Generator`` is built with (rosinality's
    default 0.01, which e4e, HyperStyle, ReStyle and StyleCLIP keep). Raises CheckpointError when ``G`` is a
    generator rosinality's cannot be (:func:`check_rosinality`)."""
    check_rosinality(G)
    sd: dict[str, torch.Tensor] = {}
    scale = G.cfg.mapping_lr_multiplier / lr_mlp     # the same effective weights under rosinality's multiplier
    for idx in range(G.cfg.mapping_layers):
        fc = getattr(G.mapping, f"fc{idx}")
        sd[f"style.{idx + 1}.weight"] = fc.weight * scale
        sd[f"style.{idx + 1}.bias"] = fc.bias * scale
    b4, *blocks = G.synthesis.blocks()
    sd["input.input"] = b4.const[None]
    _write_conv(sd, "conv1", b4.conv1, up=False)
    _write_torgb(sd, "to_rgb1", b4.torgb, up=False)
    for i, block in enumerate(blocks):
        _write_conv(sd, f"convs.{2 * i}", block.conv0, up=True)
        _write_conv(sd, f"convs.{2 * i + 1}", block.conv1, up=False)
    for i, block in enumerate(blocks):
        _write_torgb(sd, f"to_rgbs.{i}", block.torgb, up=True)
    layers = [b4.conv1] + [layer for block in blocks for layer in (block.conv0, block.conv1)]
    for i, layer in enumerate(layers):
        sd[f"noises.noise_{i}"] = layer.noise_const[None, None]
    # Copies: a view would carry its whole storage into torch.save.
    return {k: v.detach().to("cpu", torch.float32).clone().contiguous() for k, v in sd.items()}


def _write_conv(sd: dict[str, torch.Tensor], key: str, layer: SynthesisLayer, up: bool) -> None:
    """A StyledConv's tensors, in the order of rosinality's state dict."""
    sd[f"{key}.conv.weight"] = layer.weight[None]
    if up:
        sd[f"{key}.conv.blur.kernel"] = make_resample_filter() * _UPSAMPLE_GAIN
    sd[f"{key}.conv.modulation.weight"] = layer.affine.weight
    sd[f"{key}.conv.modulation.bias"] = layer.affine.bias
    sd[f"{key}.noise.weight"] = layer.noise_strength.reshape(1)
    sd[f"{key}.activate.bias"] = layer.bias


def _write_torgb(sd: dict[str, torch.Tensor], key: str, layer: ToRGBLayer, up: bool) -> None:
    """A ToRGB's tensors, in the order of rosinality's state dict."""
    sd[f"{key}.bias"] = layer.bias.reshape(1, -1, 1, 1)
    if up:
        sd[f"{key}.upsample.kernel"] = make_resample_filter() * _UPSAMPLE_GAIN
    sd[f"{key}.conv.weight"] = layer.weight[None]
    sd[f"{key}.conv.modulation.weight"] = layer.affine.weight
    sd[f"{key}.conv.modulation.bias"] = layer.affine.bias


def check_rosinality(G: Generator) -> None:
    """Raise CheckpointError, in one line, unless rosinality's ``Generator`` can compute what ``G`` computes: no
    labels, one latent width (its ``style_dim`` is z, w and the mapping's width), three colour channels, the
    standard [1, 3, 3, 1] filter. Channels per resolution are free (the state dict's shapes say them); fp16 blocks
    are an execution option (rosinality computes in float32, as ``G`` does by default). ``conv_clamp`` (256 in every
    stylegan2-ada-pytorch snapshot, against fp16 overflow) is not refused: rosinality has no clamp, and the two agree
    wherever no activation reaches it (:func:`clamp_note`)."""
    cfg = G.cfg
    hidden = cfg.layer_features if cfg.layer_features is not None else cfg.w_dim
    reasons = [
        (cfg.c_dim > 0, f"it is conditional (c_dim {cfg.c_dim}); rosinality's generator takes no labels"),
        (cfg.z_dim != cfg.w_dim or hidden != cfg.w_dim,
         f"its z, mapping and w widths differ ({cfg.z_dim}, {hidden}, {cfg.w_dim}); rosinality's style_dim is all "
         "three"),
        (cfg.img_channels != 3, f"it makes {cfg.img_channels}-channel images; rosinality's ToRGB makes 3"),
        (any(not torch.allclose(b.cpu(), make_resample_filter(), atol=1e-6)
             for name, b in G.named_buffers() if name.endswith("resample_filter")),
         "its resampling filter is not the standard [1, 3, 3, 1]"),
    ]
    refused = [why for wrong, why in reasons if wrong]
    if refused:
        raise CheckpointError(f"{G.label or 'this generator'} cannot be written as a rosinality checkpoint: "
                              f"{'; '.join(refused)}")


def clamp_note(G: Generator) -> str | None:
    """What a person exporting ``G`` to rosinality's format should know about its ``conv_clamp`` (None: no clamp)."""
    if G.cfg.conv_clamp is None:
        return None
    return (f"note: {G.label or 'this generator'} clamps its convolutions' outputs at {G.cfg.conv_clamp:g} "
            "(conv_clamp), rosinality's generator does not: their renders agree wherever no activation reaches it "
            "(the clamp guards fp16; float32 renders of a trained generator rarely do)")


def save_rosinality(G: Generator, path: str | Path, lr_mlp: float = 0.01) -> Path:
    """Write ``G`` atomically to ``path`` as :func:`rosinality_bytes`."""
    storage.write_bytes(path, rosinality_bytes(G, lr_mlp))
    return Path(path)


def rosinality_bytes(G: Generator, lr_mlp: float = 0.01) -> bytes:
    """``G`` as ``{"g_ema": rosinality_state(G), "latent_avg": w_avg [w_dim]}`` with ``torch.save``: tensors only,
    so ``torch.load(path, weights_only=True)`` reads it, and so does :func:`load_rosinality` (``load_generator``)."""
    ckpt = {"g_ema": rosinality_state(G, lr_mlp),
            "latent_avg": G.mapping.w_avg.detach().to("cpu", torch.float32).clone()}
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue()
