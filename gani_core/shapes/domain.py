"""The `shapes` domain: procedural images with known factors of variation, generated on the fly.

One soft-edged square with a drop shadow over a lit, vignetted background. Six factors, each drawn
uniformly from its range and stored normalised to [0, 1] (``t``):

- ``x``, ``y``: the square's centre, in image half-widths from the centre (y grows downwards);
- ``size``: half the side of the square, in image half-widths;
- ``rotation``: the square's rotation in radians, in [0, pi/4] (0 = axis-aligned, pi/4 = a diamond);
- ``hue``: the square's hue, from red (0) through green to blue (0.7);
- ``light``: the background's brightness.

Rendering is a pure function of the factors (no randomness), vectorised over a batch and differentiable,
on any device. Images are float32 [N, 3, R, R] in [-1, 1], the generator's scale. `render` is made of
pieces (`pixel_grid`, `lit_background`, `square_distance`, `cast_shadow`, `edge_mask`, `object_colour`,
`composite`, `to_image`) that `out_of_domain.py` reuses to draw images outside the domain with the same
colour, shadow and background model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Factor:
    name: str
    low: float
    high: float
    meaning: str


FACTORS: tuple[Factor, ...] = (
    Factor("x", -0.45, 0.45, "horizontal position of the centre (image half-widths, right is positive)"),
    Factor("y", -0.45, 0.45, "vertical position of the centre (image half-widths, down is positive)"),
    Factor("size", 0.16, 0.36, "half side of the square (image half-widths)"),
    Factor("rotation", 0.0, math.pi / 4, "rotation in radians (0 square, pi/4 diamond)"),
    Factor("hue", 0.0, 0.7, "hue of the square (0 red, 0.33 green, 0.67 blue)"),
    Factor("light", 0.2, 0.8, "brightness of the background"),
)
FACTOR_NAMES: tuple[str, ...] = tuple(f.name for f in FACTORS)
NUM_FACTORS = len(FACTORS)

SATURATION, VALUE = 0.75, 0.95      # of the square's colour
SHADOW_OFFSET, SHADOW_DEPTH = 0.06, 0.35
SHADOW_SOFTNESS = 0.05              # in image half-widths
EDGE_SOFTNESS_PX = 0.5              # anti-aliasing width of the square's edge, in pixels


def sample_factors(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` factor vectors, normalised to [0, 1]: float32 [count, NUM_FACTORS] on the CPU."""
    return torch.rand([count, NUM_FACTORS], generator=generator)


def to_physical(t: torch.Tensor) -> torch.Tensor:
    """Normalised factors [N, K] in [0, 1] → physical units (the ranges of `FACTORS`)."""
    low = torch.tensor([f.low for f in FACTORS], device=t.device)
    high = torch.tensor([f.high for f in FACTORS], device=t.device)
    return low + t * (high - low)


def hsv_to_rgb(h: torch.Tensor, s: float, v: float) -> torch.Tensor:
    """Hues [N] in [0, 1) at fixed saturation and value → RGB [N, 3] in [0, 1]."""
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device)
    k = (n + h[:, None] * 6) % 6
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def pixel_grid(resolution: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres (u right, v down) in image half-widths: two float32 [1, R, R] tensors in (-1, 1)."""
    coords = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    return u[None], v[None]


def square_distance(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: torch.Tensor,
                    rotation: torch.Tensor) -> torch.Tensor:
    """Chebyshev distance [N, R, R] (image half-widths, negative inside) to the edge of squares [N] centred at
    (x, y), of half side ``size``, rotated by ``rotation`` radians; u, v from `pixel_grid`."""
    du = u - x[:, None, None]
    dv = v - y[:, None, None]
    c, s = torch.cos(rotation)[:, None, None], torch.sin(rotation)[:, None, None]
    ur, vr = c * du + s * dv, -s * du + c * dv
    return torch.maximum(ur.abs(), vr.abs()) - size[:, None, None]


def lit_background(u: torch.Tensor, v: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """The domain's grey background [N, R, R] in [0, 1]: brightness ``light`` [N], lit from the top left,
    vignetted."""
    return light[:, None, None] * (1 + 0.25 * (-u - v) / 2) * (1 - 0.15 * (u * u + v * v) / 2)


def cast_shadow(background: torch.Tensor, shadow_distance: torch.Tensor) -> torch.Tensor:
    """``background`` [N, (C,) R, R] darkened by the soft shadow of an object whose edge distance, offset by
    (SHADOW_OFFSET, SHADOW_OFFSET), is ``shadow_distance`` [N, R, R]."""
    shadow = torch.sigmoid(-shadow_distance / SHADOW_SOFTNESS)
    if background.ndim == 4:
        shadow = shadow[:, None]
    return background * (1 - SHADOW_DEPTH * shadow)


def edge_mask(distance: torch.Tensor, resolution: int) -> torch.Tensor:
    """Coverage [N, R, R] in [0, 1] of an object from its edge distance [N, R, R], anti-aliased over
    EDGE_SOFTNESS_PX pixels."""
    return torch.sigmoid(-distance * resolution / (2 * EDGE_SOFTNESS_PX * 2))


def object_colour(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: torch.Tensor,
                  hue: torch.Tensor) -> torch.Tensor:
    """An object's colour [N, 3, R, R]: hue ``hue`` [N] at SATURATION and VALUE, shaded by the background's
    light across its extent (centre x, y and half size ``size``, all [N])."""
    du, dv = u - x[:, None, None], v - y[:, None, None]
    shade = 1 + 0.2 * (-du - dv) / (2 * size[:, None, None])
    return hsv_to_rgb(hue, SATURATION, VALUE)[:, :, None, None] * shade[:, None]


def composite(background: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``colour`` [N, 3, R, R] over ``background`` [N, R, R] (grey) or [N, 3, R, R] where ``mask`` [N, R, R]
    covers it; [N, 3, R, R] in [0, 1] space (not clamped)."""
    if background.ndim == 3:
        background = background[:, None]
    return background * (1 - mask[:, None]) + colour * mask[:, None]


def to_image(img: torch.Tensor) -> torch.Tensor:
    """[N, 3, R, R] in [0, 1] space → clamped to the generator's scale [-1, 1], contiguous."""
    return (img.clamp(0, 1) * 2 - 1).contiguous()


def render(t: torch.Tensor, resolution: int) -> torch.Tensor:
    """Render normalised factors t [N, NUM_FACTORS] to images [N, 3, R, R] in [-1, 1] on t's device."""
    if t.ndim != 2 or t.shape[1] != NUM_FACTORS:
        raise ValueError(f"factors must have shape [N, {NUM_FACTORS}], got {list(t.shape)}")
    x, y, size, rot, hue, light = to_physical(t.float()).unbind(dim=1)
    u, v = pixel_grid(resolution, t.device)
    # Background: light from the top left, a vignette, and the square's soft shadow.
    bg = lit_background(u, v, light)
    bg = cast_shadow(bg, square_distance(u, v, x + SHADOW_OFFSET, y + SHADOW_OFFSET, size, rot))
    # The square: its colour, shaded by the same light, with an anti-aliased edge.
    mask = edge_mask(square_distance(u, v, x, y, size, rot), resolution)
    return to_image(composite(bg, object_colour(u, v, x, y, size, hue), mask))


def sample_images(count: int, resolution: int, generator: torch.Generator,
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` seeded images and their normalised factors: ([N, 3, R, R] on device, [N, K] on device)."""
    t = sample_factors(count, generator).to(device)
    return render(t, resolution), t
