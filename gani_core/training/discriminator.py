"""StyleGAN2's residual discriminator, sized for the small generators trained here.

Equalised learning rate through explicit weight gains, [1, 3, 3, 1] low-pass filtering before every
stride-2 convolution, residual blocks scaled by sqrt(1/2), and a minibatch-standard-deviation epilogue.
Images in: [N, C, R, R] in [-1, 1]; logits out: [N, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gani_core.networks import LRELU_GAIN, FullyConnectedLayer, bias_act, make_resample_filter, upfirdn2d


class Conv2dLayer(nn.Module):
    def __init__(
        self,
        in_channels: int,               # number of input channels
        out_channels: int,              # number of output channels
        kernel_size: int,               # width and height of the kernel
        activation: str = "lrelu",      # "lrelu" or "linear"
        down: bool = False,             # low-pass filter, then a stride-2 convolution
        bias: bool = True,              # whether to add a learned bias
        gain: float = 1.0,              # extra output gain (sqrt(1/2) on residual paths)
    ) -> None:
        super().__init__()
        self.activation, self.down, self.gain = activation, down, gain
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.register_buffer("resample_filter", make_resample_filter())
        # Padding of the blur so that a stride-2 convolution without padding halves the size exactly.
        self.blur_pad = (kernel_size + 1) // 2 if down else 0
        self.padding = 0 if down else kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            p = self.blur_pad
            x = upfirdn2d(x, self.resample_filter, pad=(p, p, p, p))
        x = F.conv2d(x, self.weight * self.weight_gain, stride=2 if self.down else 1, padding=self.padding)
        act_gain = LRELU_GAIN if self.activation == "lrelu" else 1.0
        return bias_act(x, self.bias, act=self.activation, gain=act_gain * self.gain)  # type: ignore[arg-type]


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convolutions (the second halves the resolution) plus a 1x1 strided skip."""

    def __init__(self, in_channels: int, out_channels: int, img_channels: int, first: bool) -> None:
        super().__init__()
        self.fromrgb = Conv2dLayer(img_channels, in_channels, 1) if first else None
        self.conv0 = Conv2dLayer(in_channels, in_channels, 3)
        self.conv1 = Conv2dLayer(in_channels, out_channels, 3, down=True, gain=math.sqrt(0.5))
        self.skip = Conv2dLayer(in_channels, out_channels, 1, activation="linear", down=True, bias=False,
                                gain=math.sqrt(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        y = self.skip(x)
        return y + self.conv1(self.conv0(x))


class Discriminator(nn.Module):
    def __init__(
        self,
        img_resolution: int,            # input resolution, a power of two
        img_channels: int = 3,          # input colour channels
        channel_base: int = 4096,       # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 128,
        mbstd_group: int = 4,           # group size of the minibatch standard deviation
    ) -> None:
        super().__init__()
        self.img_resolution, self.mbstd_group = img_resolution, mbstd_group
        resolutions = [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in resolutions}
        self.resolutions = [r for r in sorted(ch, reverse=True) if r > 4]
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(ch[r], ch[r // 2], img_channels, first=(r == img_resolution)) for r in self.resolutions
        )
        c4 = ch[4]
        self.epilogue_conv = Conv2dLayer(c4 + 1, c4, 3)
        self.epilogue_fc = FullyConnectedLayer(c4 * 16, c4, activation="lrelu")
        self.out = FullyConnectedLayer(c4, 1)

    def minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.mbstd_group, n)
        if n % g:
            g = 1
        y = x.reshape(g, -1, c, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()   # [N/g, C, H, W]
        y = y.mean(dim=[1, 2, 3]).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img
        for block in self.blocks:
            x = block(x)
        x = self.epilogue_conv(self.minibatch_std(x))
        return self.out(self.epilogue_fc(x.flatten(1)))
