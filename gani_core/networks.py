"""The StyleGAN2 generator ("skip" architecture of config-f), in pure PyTorch.

Numerically this follows NVlabs' stylegan2-ada-pytorch: equalised learning rate through explicit gains,
weight demodulation, transposed-convolution upsampling followed by a [1, 3, 3, 1] FIR filter, noise
inputs with a learned strength, and a skip generator that sums upsampled ToRGB outputs. Parameter and
buffer names are those of NVlabs' state dict, so their checkpoints map one to one.

Shapes: z [N, z_dim]; ws [N, num_ws, w_dim]; images [N, img_channels, R, R], about [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gani_core.factors import FactorEdits, FactorProbe

NoiseMode = Literal["const", "none", "random"]

LRELU_ALPHA = 0.2
LRELU_GAIN = math.sqrt(2.0)
RESAMPLE_TAPS = (1.0, 3.0, 3.0, 1.0)


def assert_shape(tensor: torch.Tensor, shape: list[int | None], name: str) -> None:
    """Raise a ValueError naming ``name`` unless ``tensor`` has ``shape`` (``None`` matches any size)."""
    if tensor.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape, strict=True)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(tensor.shape)}, expected {want}")


# ----------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class GeneratorConfig:
    """Everything needed to build a generator; saved as JSON beside the weights in the project format."""

    z_dim: int = 512                        # input latent (Z) dimensionality
    c_dim: int = 0                          # conditioning label dimensionality, 0 = unconditional
    w_dim: int = 512                        # intermediate latent (W) dimensionality
    img_resolution: int = 1024              # output resolution, a power of two from 4 to 1024
    img_channels: int = 3                   # number of output colour channels
    mapping_layers: int = 8                 # depth of the mapping network
    mapping_lr_multiplier: float = 0.01     # equalised-lr multiplier of the mapping layers
    layer_features: int | None = None       # width of hidden mapping layers, None = w_dim
    embed_features: int | None = None       # label embedding width, None = w_dim
    channel_base: int = 32768               # overall multiplier for the number of channels
    channel_max: int = 512                  # maximum number of channels in any layer
    channels: dict[int, int] | None = None  # explicit channels per resolution; overrides base and max
    num_fp16_res: int = 0                   # number of highest resolutions whose blocks may use fp16
    conv_clamp: float | None = None         # clamp of convolution outputs, None = off
    label: str = ""                         # human-readable provenance, e.g. "built-in, untrained"
    extra: dict[str, str] = field(default_factory=dict)  # free-form provenance (source file, format)

    def __post_init__(self) -> None:
        res = self.img_resolution
        if not (isinstance(res, int) and 4 <= res <= 1024 and res & (res - 1) == 0):
            raise ValueError(f"img_resolution must be a power of two from 4 to 1024, got {self.img_resolution}")
        if self.channels is not None:
            self.channels = {int(k): int(v) for k, v in self.channels.items()}
            missing = [r for r in self.block_resolutions if r not in self.channels]
            if missing:
                raise ValueError(f"channels has no entry for resolutions {missing}")

    @property
    def block_resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.img_resolution)) + 1)]

    def channels_at(self, res: int) -> int:
        if self.channels is not None:
            return self.channels[res]
        return min(self.channel_base // res, self.channel_max)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["channels"] is not None:
            d["channels"] = {str(k): v for k, v in d["channels"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GeneratorConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown generator config fields: {unknown}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------------
# Primitive operations


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None,
    act: Literal["linear", "lrelu"] = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a per-channel bias (dim 1), apply the activation, scale by ``gain``, then clamp."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_ALPHA)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def make_resample_filter(taps: tuple[float, ...] = RESAMPLE_TAPS) -> torch.Tensor:
    """The separable low-pass filter as a normalised 2-D kernel [k, k] (sum 1)."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad (x0, x1, y0, y1), then convolve each channel with the 2-D filter ``f``."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, list(pad))
    # A true convolution flips the kernel; F.conv2d is a correlation.
    k = (f * gain).to(x.dtype).flip([0, 1])
    k = k[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x upsampling with the FIR filter, keeping the signal's mean (gain up**2 for the inserted zeros)."""
    k = f.shape[-1]
    p0, p1 = (k + up - 1) // 2, (k - up) // 2
    return upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)


def modulated_conv2d(
    x: torch.Tensor,            # input activations [N, I, H, W]
    weight: torch.Tensor,       # convolution weight [O, I, k, k]
    styles: torch.Tensor,       # per-sample input-channel scales [N, I]
    noise: torch.Tensor | None = None,  # added after the convolution, broadcast to [N, O, H', W']
    up: int = 1,                # 1, or 2 for a transposed convolution followed by the FIR filter
    padding: int = 0,           # padding of the plain convolution
    resample_filter: torch.Tensor | None = None,  # the FIR filter [4, 4] used when up == 2
    demodulate: bool = True,    # normalise each output channel's effective weight to unit norm
    fused: bool = True,         # one grouped convolution over the batch; else scale activations around a shared conv
) -> torch.Tensor:
    """StyleGAN2's modulated convolution.

    ``fused`` (inference, as the official code) modulates the weights per sample and runs one grouped
    convolution; unfused (training) scales the activations by the styles before and by the demodulation
    coefficients after a plain convolution with the shared weight, which is much faster for large batches.
    Both compute the same function.
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    assert_shape(styles, [n, in_ch], "styles")

    # In fp16, pre-scale so that the products below cannot overflow (demodulation undoes the scale).
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, k, k]
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # [N, O]

    if fused:
        if dcoefs is not None:
            w = w * dcoefs.reshape(n, -1, 1, 1, 1)
        x = x.reshape(1, -1, *x.shape[2:])
        w = w.to(x.dtype)
        if up == 1:
            x = F.conv2d(x, w.reshape(-1, in_ch, kh, kw), padding=padding, groups=n)
        else:
            # Transposed convolution with stride 2, then the FIR filter removes the aliasing.
            w = w.transpose(1, 2).reshape(n * in_ch, out_ch, kh, kw)
            x = F.conv_transpose2d(x, w, stride=up, groups=n)
        x = x.reshape(n, out_ch, *x.shape[2:])
    else:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        if up == 1:
            x = F.conv2d(x, weight.to(x.dtype), padding=padding)
        else:
            x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=up)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
    if up != 1:
        k = resample_filter.shape[-1]
        p0 = padding + (k + up - 1) // 2 - (kw - 1)
        p1 = padding + (k - up) // 2 - (kw - up)
        x = upfirdn2d(x, resample_filter, pad=(p0, p1, p0, p1), gain=up * up)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# ----------------------------------------------------------------------------------------------------
# Layers


class FullyConnectedLayer(nn.Module):
    def __init__(
        self,
        in_features: int,               # number of input features
        out_features: int,              # number of output features
        activation: Literal["linear", "lrelu"] = "linear",  # activation after the bias
        lr_multiplier: float = 1.0,     # equalised-lr multiplier
        bias_init: float = 0.0,         # initial bias value
    ) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation, gain=LRELU_GAIN)


class MappingNetwork(nn.Module):
    def __init__(self, cfg: GeneratorConfig, num_ws: int) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = cfg.z_dim, cfg.c_dim, cfg.w_dim, num_ws
        self.num_layers = cfg.mapping_layers
        embed = 0
        if cfg.c_dim > 0:
            embed = cfg.embed_features if cfg.embed_features is not None else cfg.w_dim
            self.embed = FullyConnectedLayer(cfg.c_dim, embed)
        hidden = cfg.layer_features if cfg.layer_features is not None else cfg.w_dim
        features = [cfg.z_dim + embed] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        for idx in range(cfg.mapping_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation="lrelu", lr_multiplier=cfg.mapping_lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([cfg.w_dim]))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """Map z [N, z_dim] (and labels c [N, c_dim]) to ws [N, num_ws, w_dim], truncated toward w_avg."""
        assert_shape(z, [None, self.z_dim], "z")
        x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional: pass labels c of shape [N, {self.c_dim}]")
            assert_shape(c, [z.shape[0], self.c_dim], "c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        ws = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws = torch.cat([self.w_avg.lerp(ws[:, :cutoff], truncation_psi), ws[:, cutoff:]], dim=1)
        return ws


class SynthesisLayer(nn.Module):
    def __init__(
        self,
        in_channels: int,               # number of input channels
        out_channels: int,              # number of output channels
        w_dim: int,                     # intermediate latent (W) dimensionality
        resolution: int,                # output resolution of this layer
        up: int = 1,                    # 2 for the first layer of each block after the first
        conv_clamp: float | None = None,  # clamp of the output, None = off
        kernel_size: int = 3,           # convolution kernel size
    ) -> None:
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.register_buffer("resample_filter", make_resample_filter())

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: NoiseMode = "const") -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        if noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(
            x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
            resample_filter=self.resample_filter, fused=not self.training,
        )
        return bias_act(x, self.bias, act="lrelu", gain=LRELU_GAIN, clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    def __init__(
        self,
        in_channels: int,               # number of input channels
        out_channels: int,              # number of colour channels
        w_dim: int,                     # intermediate latent (W) dimensionality
        conv_clamp: float | None = None,  # clamp of the output, None = off
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=not self.training)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,               # channels of the previous block, 0 for the 4x4 block
        out_channels: int,              # channels of this block
        cfg: GeneratorConfig,           # the generator's configuration
        resolution: int,                # resolution of this block
        use_fp16: bool,                 # whether this block may compute in fp16
    ) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.use_fp16 = in_channels, resolution, use_fp16
        self.register_buffer("resample_filter", make_resample_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, cfg.w_dim, resolution, up=2,
                                        conv_clamp=cfg.conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, cfg.w_dim, resolution,
                                    conv_clamp=cfg.conv_clamp)
        self.torgb = ToRGBLayer(out_channels, cfg.img_channels, cfg.w_dim, conv_clamp=cfg.conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "const",
        force_fp32: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            x = self.conv0(x.to(dtype), next(w_iter), noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter)).to(torch.float32)
        img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = cfg.w_dim, cfg.img_resolution, cfg.img_channels
        self.block_resolutions = cfg.block_resolutions
        log2 = int(math.log2(cfg.img_resolution))
        fp16_resolution = max(2 ** (log2 + 1 - cfg.num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = cfg.channels_at(res // 2) if res > 4 else 0
            block = SynthesisBlock(in_channels, cfg.channels_at(res), cfg, res,
                                   use_fp16=cfg.num_fp16_res > 0 and res >= fp16_resolution)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last ToRGB has a w of its own; earlier ToRGBs share the next conv's

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "const",
        force_fp32: bool = True,
    ) -> torch.Tensor:
        """Render ws [N, num_ws, w_dim] to images [N, C, R, R] (float32, about [-1, 1]).

        ``noise_mode``: "const" uses the stored noise maps (deterministic), "random" draws fresh noise,
        "none" disables noise. Blocks marked fp16 compute in fp16 only when ``force_fp32`` is False.
        """
        if noise_mode not in ("const", "none", "random"):
            raise ValueError(f"noise_mode must be 'const', 'none' or 'random', got {noise_mode!r}")
        assert_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for block in self.blocks():
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode=noise_mode, force_fp32=force_fp32)
            w_idx += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: ``G.mapping(z)`` gives ws, ``G.synthesis(ws)`` renders them.

    A generator of images with known factors also carries ``factor_edits`` (their directions in W) and
    ``factor_probe`` (the CNN that reads them), gani_core.factors. Both are kept beside the network, not
    in it: they are in neither the state dict nor ``parameters()``, and ``.to()`` does not move them
    (functions that use them move a copy), so the weights, their size and their deltas are the generator's alone.
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.img_resolution, self.img_channels = cfg.img_resolution, cfg.img_channels
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg, self.num_ws)
        self.factor_edits: FactorEdits | None = None    # factor directions in W, when the checkpoint has them
        self.factor_probe: FactorProbe | None = None    # the probe that reads those factors from images

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module would register a probe as a submodule, making it part of the generator's weights.
        if name == "factor_probe":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def label(self) -> str:
        return self.cfg.label

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        noise_mode: NoiseMode = "const",
    ) -> torch.Tensor:
        return self.synthesis(self.mapping(z, c, truncation_psi=truncation_psi), noise_mode=noise_mode)

    def mean_w(self, num_samples: int = 10_000, seed: int = 0) -> torch.Tensor:
        """The average w [w_dim] over ``num_samples`` seeded z, for generators without a tracked w_avg."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn([num_samples, self.z_dim], generator=gen).to(self.mapping.w_avg.device)
        c = None
        if self.c_dim > 0:
            c = torch.zeros([num_samples, self.c_dim], device=z.device)
        with torch.no_grad():
            return self.mapping(z, c)[:, 0].mean(dim=0)

    def tunable_layers(self) -> dict[str, nn.Parameter]:
        """The weights generator tuning acts on: every synthesis convolution and ToRGB weight, by name."""
        return {
            name: p for name, p in self.named_parameters()
            if name.startswith("synthesis.") and name.endswith(".weight") and ".affine." not in name
        }


def num_parameters(module: nn.Module) -> int:
    return int(sum(np.prod(p.shape) for p in module.parameters()))
