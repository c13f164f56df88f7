"""Out-of-domain image sets for the `shapes` domain: images the built-in generator cannot render, with truth.

The built-in generator learned one soft-edged square with a drop shadow over a lit, vignetted grey
background (`domain.py`). Each kind below breaks one part of that model and keeps the rest: the same
colour, shading, shadow and background, drawn with `domain.py`'s own pieces. `KINDS` is the registry, in
three groups, measured on the built-in generator with `benchmarks/domain_gap.py` (docs/benchmark.md):

- ``in-domain``: the reference, the domain itself;
- `OUT_OF_DOMAIN`, the kinds a W+ latent cannot reproduce (its lpips at least twice in-domain's):
  ``two-objects`` (two squares of the domain, apart), ``textured`` (the square filled with a checkerboard
  or stripes), ``cross`` and ``star`` (non-convex shapes), ``bg-gradient``, ``bg-noise``, ``bg-stripes``
  (an in-domain square over a background it never saw: a saturated two-colour gradient, grain noise,
  stripes);
- `NEAR_DOMAIN`, kinds outside the training distribution (far from every render of the domain in pixels)
  that the generator nevertheless reaches (W+ lpips at in-domain level): ``rotated``, ``disc``,
  ``triangle``. Its squares have rounded corners (docs/builtin.md), so convex blobs of any outline are
  within its range. They are controls, not out-of-domain sets.

``rotated`` is a *rectangle* (aspect 1.6 to 2.5, the square's area) at any angle in [0, pi): rotating the
square itself cannot leave the domain by a measurable amount (a square repeats every pi/2; the poses the
domain lacks, (pi/4, pi/2), are mirror images, along the diagonal that the light and the shadow share, of
poses it has; and the generator did not learn rotation, docs/builtin.md), while every training object had
equal sides. Even so, W+ draws such rectangles (and bars up to aspect 5) as well as it draws squares.

**Ground truth.** Each image comes with a JSON-serialisable dict: ``kind``, ``split``, ``seed``, ``index``;
``normalised`` and ``physical``, the six factors of `domain.FACTORS` where they apply (``None`` where they
do not: a disc has no rotation, a gradient background no ``light``); ``extra``, the kind's own factors (an
aspect, an angle, the second square, a texture period, ...). The image is a pure function of this dict
(`render_kind`).

**Splits.** Image ``i`` of ``(kind, split, seed)`` is drawn from its own generator, seeded by a hash of the
four, so ``dev`` and ``test`` are disjoint seed streams, and image i does not depend on how many were asked
for. Choose defaults on ``dev``; report on ``test``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gani_core.shapes.domain import (
    FACTOR_NAMES,
    FACTORS,
    SATURATION,
    SHADOW_OFFSET,
    Factor,
    cast_shadow,
    composite,
    edge_mask,
    hsv_to_rgb,
    lit_background,
    object_colour,
    pixel_grid,
    render,
    sample_factors,
    square_distance,
    to_image,
    to_physical,
)

SPLITS: tuple[str, ...] = ("dev", "test")
IN_DOMAIN = "in-domain"

Factors = dict      # one image's ground truth (see the module docstring)
Draw = Callable[[torch.Generator, dict[str, float]], dict[str, float]]   # (generator, in-domain physical) → extra
Paint = Callable[["_Batch"], torch.Tensor]                              # → [N, 3, R, R] in [0, 1] space


@dataclass(frozen=True)
class Kind:
    name: str
    description: str                # one line
    draw: Draw                      # edits the in-domain physical factors in place, returns the kind's extras
    paint: Paint
    not_applicable: tuple[str, ...] = ()    # in-domain factors that do not apply (None in the ground truth)
    near: bool = False              # outside the training set, yet W+ reproduces it as well as the domain


# ---- Drawing: one image's factors from its own generator ----------------------------------------------------


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand([], generator=gen).item()


def _stream(kind: str, split: str, seed: int, index: int) -> torch.Generator:
    """The generator of image ``index`` of ``(kind, split, seed)``: a hash of the four, so streams are disjoint."""
    digest = hashlib.sha256(f"gani-shapes/{kind}/{split}/{seed}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _factor(name: str) -> Factor:
    return FACTORS[FACTOR_NAMES.index(name)]


def _normalise(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    f = _factor(name)
    return (value - f.low) / (f.high - f.low)


def draw_factors(kind: str, count: int, split: str = "test", seed: int = 0) -> list[Factors]:
    """The ground truth of ``count`` images of ``kind`` from ``split``'s stream (see the module docstring)."""
    spec = get_kind(kind)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if count < 0:
        raise ValueError(f"count must be at least 0, got {count}")
    out = []
    for index in range(count):
        gen = _stream(kind, split, seed, index)
        t = sample_factors(1, gen)
        physical = dict(zip(FACTOR_NAMES, to_physical(t)[0].tolist(), strict=True))
        extra = spec.draw(gen, physical)
        for name in spec.not_applicable:
            physical[name] = None
        out.append({
            "kind": kind, "split": split, "seed": seed, "index": index,
            "normalised": {name: _normalise(name, physical[name]) for name in FACTOR_NAMES},
            "physical": physical,
            "extra": extra,
        })
    return out


def _no_extra(_gen: torch.Generator, _physical: dict[str, float]) -> dict[str, float]:
    return {}


def _draw_rotated(gen: torch.Generator, physical: dict[str, float]) -> dict[str, float]:
    return {"aspect": _uniform(gen, 1.6, 2.5), "angle": _uniform(gen, 0.0, math.pi)}


TWO_OBJECT_SIZE = (0.16, 0.26)      # both squares' half sides: the lower part of the range, so that two fit


def _draw_two_objects(gen: torch.Generator, physical: dict[str, float]) -> dict[str, float]:
    """A second square of the domain that does not touch the first (nor its shadow): rejection sampling."""
    physical["size"] = _uniform(gen, *TWO_OBJECT_SIZE)
    size2 = _uniform(gen, *TWO_OBJECT_SIZE)
    # Squares of half sides a and b at any rotation are apart when their centres are this far apart along
    # an axis (their circumscribed circles are), with room for the shadow.
    gap = (physical["size"] + size2) * math.sqrt(2) + SHADOW_OFFSET
    lo, hi = _factor("x").low, _factor("x").high
    for _ in range(200):
        x2, y2 = _uniform(gen, lo, hi), _uniform(gen, lo, hi)
        if max(abs(x2 - physical["x"]), abs(y2 - physical["y"])) >= gap:
            break
    else:  # the first square sits in the middle: move it to a corner and put the second in the opposite one
        physical["x"], physical["y"], x2, y2 = lo, lo, hi, hi
    return {"x2": x2, "y2": y2, "size2": size2, "rotation2": _uniform(gen, _factor("rotation").low,
                                                                       _factor("rotation").high),
            "hue2": _uniform(gen, _factor("hue").low, _factor("hue").high)}


def _draw_textured(gen: torch.Generator, physical: dict[str, float]) -> dict[str, float]:
    return {"pattern": "checker" if torch.rand([], generator=gen).item() < 0.5 else "stripes",
            "period": _uniform(gen, 0.08, 0.16), "contrast": _uniform(gen, 0.6, 0.8)}


def _draw_bg_gradient(gen: torch.Generator, physical: dict[str, float]) -> dict[str, float]:
    return {"hue_a": _uniform(gen, 0.0, 1.0), "hue_b": _uniform(gen, 0.0, 1.0),
            "value_a": _uniform(gen, 0.3, 0.95), "value_b": _uniform(gen, 0.3, 0.95),
            "angle": _uniform(gen, 0.0, 2 * math.pi)}


def _draw_bg_noise(gen: torch.Generator, physical: dict[str, float]) -> dict[str, float]:
    return {"amplitude": _uniform(gen, 0.2, 0.35), "cells": int(torch.randint(12, 33, [], generator=gen)),
            "noise_seed": int(torch.randint(0, 2**31 - 1, [], generator=gen))}


def _draw_bg_stripes(gen: torch.Generator, physical: dict[str, float]) -> dict[str, float]:
    return {"period": _uniform(gen, 0.15, 0.35), "angle": _uniform(gen, 0.0, math.pi),
            "contrast": _uniform(gen, 0.3, 0.5)}


def _draw_angle(period: float) -> Draw:
    """A shape's own angle, uniform over its symmetry period (radians)."""
    return lambda gen, _physical: {"angle": _uniform(gen, 0.0, period)}


# ---- Painting: a batch of one kind's factors to images -------------------------------------------------------


@dataclass
class _Batch:
    """One kind's factors as [N] tensors, and the pixel grid."""

    factors: list[Factors]
    resolution: int
    u: torch.Tensor                 # [1, R, R]
    v: torch.Tensor

    def __getattr__(self, name: str) -> torch.Tensor:   # x, y, size, ...: a physical factor or an extra, [N]
        if name.startswith("__"):                       # copy, pickle: not factors
            raise AttributeError(name)
        where = "physical" if name in FACTOR_NAMES else "extra"
        return torch.tensor([f[where][name] for f in self.factors], dtype=torch.float32, device=self.u.device)


Object = tuple[Callable[[float], torch.Tensor], torch.Tensor]     # (edge distance of a shadow offset, colour)


def _painted(b: _Batch, background: torch.Tensor, objects: list[Object]) -> torch.Tensor:
    """Objects over ``background`` [N, (3,) R, R]: every object's shadow first, then the objects in order.
    Each object is (its edge distance as a function of the shadow offset, its colour [N, 3, R, R])."""
    for distance, _ in objects:
        background = cast_shadow(background, distance(SHADOW_OFFSET))
    img = background if background.ndim == 4 else background[:, None].expand(-1, 3, -1, -1)
    for distance, colour in objects:
        img = composite(img, colour, edge_mask(distance(0.0), b.resolution))
    return img


def _square(b: _Batch, x: torch.Tensor, y: torch.Tensor, size: torch.Tensor, rotation: torch.Tensor,
            hue: torch.Tensor) -> Object:
    return (lambda dx: square_distance(b.u, b.v, x + dx, y + dx, size, rotation),
            object_colour(b.u, b.v, x, y, size, hue))


def _rotated_frame(b: _Batch, x: torch.Tensor, y: torch.Tensor, angle: torch.Tensor,
                   dx: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    du, dv = b.u - (x + dx)[:, None, None], b.v - (y + dx)[:, None, None]
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    return c * du + s * dv, -s * du + c * dv


def _one_shape(b: _Batch, distance: Callable[[float], torch.Tensor]) -> torch.Tensor:
    """One object of edge ``distance`` (a function of the shadow offset), in the square's place and colour,
    over the lit background."""
    colour = object_colour(b.u, b.v, b.x, b.y, b.size, b.hue)
    return _painted(b, lit_background(b.u, b.v, b.light), [(distance, colour)])


def _paint_in_domain(b: _Batch) -> torch.Tensor:
    return _painted(b, lit_background(b.u, b.v, b.light), [_square(b, b.x, b.y, b.size, b.rotation, b.hue)])


def _paint_rotated(b: _Batch) -> torch.Tensor:
    x, y, size, aspect, angle = b.x, b.y, b.size, b.aspect, b.angle
    half_long, half_short = size * aspect.sqrt(), size / aspect.sqrt()     # the square's area

    def distance(dx: float) -> torch.Tensor:
        ur, vr = _rotated_frame(b, x, y, angle, dx)
        return torch.maximum(ur.abs() - half_long[:, None, None], vr.abs() - half_short[:, None, None])

    return _one_shape(b, distance)


def _paint_disc(b: _Batch) -> torch.Tensor:
    x, y, size = b.x, b.y, b.size
    radius = size * 2 / math.sqrt(math.pi)                                 # the square's area

    def distance(dx: float) -> torch.Tensor:
        du, dv = b.u - (x + dx)[:, None, None], b.v - (y + dx)[:, None, None]
        return (du * du + dv * dv).sqrt() - radius[:, None, None]

    return _one_shape(b, distance)


def _paint_triangle(b: _Batch) -> torch.Tensor:
    x, y, size, angle = b.x, b.y, b.size, b.angle
    inradius = size * math.sqrt(4 / (3 * math.sqrt(3)))                   # the square's area

    def distance(dx: float) -> torch.Tensor:             # the farthest of the three sides' half-plane distances
        du, dv = b.u - (x + dx)[:, None, None], b.v - (y + dx)[:, None, None]
        sides = [torch.cos(angle + k * 2 * math.pi / 3)[:, None, None] * du
                 + torch.sin(angle + k * 2 * math.pi / 3)[:, None, None] * dv for k in range(3)]
        return torch.maximum(torch.maximum(sides[0], sides[1]), sides[2]) - inradius[:, None, None]

    return _one_shape(b, distance)


CROSS_ARM, CROSS_HALF_WIDTH = 1.3, 0.35       # in units of `size`: about the square's area
STAR_OUTER, STAR_INNER = 1.6, 0.45            # tip radius (units of `size`), notch radius (units of the tip's)


def _paint_cross(b: _Batch) -> torch.Tensor:
    x, y, size = b.x, b.y, b.size
    arm, half_width = (CROSS_ARM * size)[:, None, None], (CROSS_HALF_WIDTH * size)[:, None, None]

    def distance(dx: float) -> torch.Tensor:             # the nearer of two crossed bars
        ur, vr = _rotated_frame(b, x, y, b.angle, dx)
        return torch.minimum(torch.maximum(ur.abs() - arm, vr.abs() - half_width),
                             torch.maximum(vr.abs() - arm, ur.abs() - half_width))

    return _one_shape(b, distance)


def _paint_star(b: _Batch) -> torch.Tensor:
    x, y, size = b.x, b.y, b.size
    sector = 2 * math.pi / 5
    tip = (STAR_OUTER * size)[:, None, None]
    notch_u, notch_v = STAR_INNER * tip * math.cos(sector / 2), STAR_INNER * tip * math.sin(sector / 2)
    edge = torch.stack([notch_u - tip, notch_v]).div(((notch_u - tip) ** 2 + notch_v**2).sqrt())   # unit, tip → notch

    def distance(dx: float) -> torch.Tensor:
        # Fold every point into half a sector (the tip on the u axis), then the signed distance to the edge
        # from the tip to the notch, positive on the outside.
        du, dv = b.u - (x + dx)[:, None, None], b.v - (y + dx)[:, None, None]
        r, theta = (du * du + dv * dv).sqrt(), torch.atan2(dv, du) - b.angle[:, None, None]
        folded = (torch.remainder(theta, sector) - sector / 2).abs()
        pu, pv = r * torch.cos(folded) - tip, r * torch.sin(folded)
        return pu * edge[1] - pv * edge[0]

    return _one_shape(b, distance)


def _paint_two_objects(b: _Batch) -> torch.Tensor:
    return _painted(b, lit_background(b.u, b.v, b.light),
                    [_square(b, b.x, b.y, b.size, b.rotation, b.hue),
                     _square(b, b.x2, b.y2, b.size2, b.rotation2, b.hue2)])


def _paint_textured(b: _Batch) -> torch.Tensor:
    distance, colour = _square(b, b.x, b.y, b.size, b.rotation, b.hue)
    ur, vr = _rotated_frame(b, b.x, b.y, b.rotation)
    period = b.period[:, None, None]
    wave_u, wave_v = torch.sin(math.pi * ur / period), torch.sin(math.pi * vr / period)
    stripes = torch.tensor([f["extra"]["pattern"] == "stripes" for f in b.factors], device=b.u.device)
    wave = torch.where(stripes[:, None, None], wave_u, wave_u * wave_v)
    dark = torch.sigmoid(wave * 8)                                         # sharp but anti-aliased cells
    colour = colour * (1 - b.contrast[:, None, None, None] * dark[:, None])
    return _painted(b, lit_background(b.u, b.v, b.light), [(distance, colour)])


def _paint_bg_gradient(b: _Batch) -> torch.Tensor:
    angle = b.angle[:, None, None]
    ramp = (0.5 + 0.5 * (b.u * torch.cos(angle) + b.v * torch.sin(angle))).clamp(0, 1)[:, None]
    colour_a = hsv_to_rgb(b.hue_a, SATURATION, 1.0) * b.value_a[:, None]
    colour_b = hsv_to_rgb(b.hue_b, SATURATION, 1.0) * b.value_b[:, None]
    background = colour_a[:, :, None, None] * (1 - ramp) + colour_b[:, :, None, None] * ramp
    return _painted(b, background, [_square(b, b.x, b.y, b.size, b.rotation, b.hue)])


def _paint_bg_noise(b: _Batch) -> torch.Tensor:
    grains = []
    for f in b.factors:     # each image's grain from its own seed, drawn at its cell count, bilinearly upsampled
        cells = f["extra"]["cells"]
        noise = torch.randn([1, 1, cells, cells], generator=torch.Generator().manual_seed(f["extra"]["noise_seed"]))
        grains.append(F.interpolate(noise, size=(b.resolution, b.resolution), mode="bilinear", align_corners=False))
    grain = torch.cat(grains)[:, 0].to(b.u.device)
    background = lit_background(b.u, b.v, b.light) * (1 + b.amplitude[:, None, None] * grain)
    return _painted(b, background, [_square(b, b.x, b.y, b.size, b.rotation, b.hue)])


def _paint_bg_stripes(b: _Batch) -> torch.Tensor:
    angle, period = b.angle[:, None, None], b.period[:, None, None]
    wave = torch.sin(2 * math.pi * (b.u * torch.cos(angle) + b.v * torch.sin(angle)) / period)
    background = lit_background(b.u, b.v, b.light) * (1 - b.contrast[:, None, None] * torch.sigmoid(wave * 8))
    return _painted(b, background, [_square(b, b.x, b.y, b.size, b.rotation, b.hue)])


# ---- The registry ------------------------------------------------------------------------------------------

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind(IN_DOMAIN, "the domain itself (the reference): one square over the lit grey background",
         _no_extra, _paint_in_domain),
    Kind("two-objects", "two non-overlapping squares of the domain (the second's factors in extra)",
         _draw_two_objects, _paint_two_objects),
    Kind("textured", "the square filled with a checkerboard or stripes aligned with its sides", _draw_textured,
         _paint_textured),
    Kind("cross", "a plus-shaped cross (non-convex, about the square's area) at any angle", _draw_angle(math.pi / 2),
         _paint_cross, ("rotation",)),
    Kind("star", "a five-pointed star (non-convex, about the square's area) at any angle",
         _draw_angle(2 * math.pi / 5), _paint_star, ("rotation",)),
    Kind("bg-gradient", "an in-domain square over a saturated two-colour linear gradient", _draw_bg_gradient,
         _paint_bg_gradient, ("light",)),
    Kind("bg-noise", "an in-domain square over the lit background with grain noise", _draw_bg_noise,
         _paint_bg_noise),
    Kind("bg-stripes", "an in-domain square over the lit background with dark stripes", _draw_bg_stripes,
         _paint_bg_stripes),
    Kind("rotated", "near domain: a rectangle (aspect 1.6-2.5, the square's area) at any angle in [0, pi)",
         _draw_rotated, _paint_rotated, ("rotation",), near=True),
    Kind("disc", "near domain: a disc of the square's area instead of the square", _no_extra, _paint_disc,
         ("rotation",), near=True),
    Kind("triangle", "near domain: an equilateral triangle of the square's area, at any angle",
         _draw_angle(2 * math.pi / 3), _paint_triangle, ("rotation",), near=True),
)}
OUT_OF_DOMAIN: tuple[str, ...] = tuple(name for name, k in KINDS.items() if name != IN_DOMAIN and not k.near)
NEAR_DOMAIN: tuple[str, ...] = tuple(name for name, k in KINDS.items() if k.near)


def get_kind(kind: str) -> Kind:
    """The registered kind named ``kind``; ValueError naming every known kind otherwise."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return KINDS[kind]


def render_kind(kind: str, factors: list[Factors], resolution: int,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Images [N, 3, R, R] in [-1, 1] (float32, on ``device``) of ``kind`` from their ground truth ``factors``."""
    spec = get_kind(kind)
    if not factors:
        return torch.empty([0, 3, resolution, resolution], device=device)
    u, v = pixel_grid(resolution, device)
    return to_image(spec.paint(_Batch(factors, resolution, u, v)))


def sample_kind(kind: str, count: int, resolution: int = 64, split: str = "test",
                seed: int = 0) -> tuple[torch.Tensor, list[Factors]]:
    """``count`` seeded images of ``kind`` from ``split`` ("dev" or "test") and their ground truth:
    (float32 [count, 3, R, R] in [-1, 1] on the CPU, one JSON-serialisable dict per image)."""
    factors = draw_factors(kind, count, split, seed)
    return render_kind(kind, factors, resolution), factors


def distance_to_domain(images: torch.Tensor, bank_size: int = 2000, starts: int = 4, steps: int = 150,
                       seed: int = 0) -> torch.Tensor:
    """How far images [N, 3, R, R] in [-1, 1] are from the closest image of the domain: the RMS pixel
    difference [N] (in [-1, 1] units) to the best fit of the six factors.

    The fit starts from the ``starts`` nearest of ``bank_size`` seeded renders and runs ``steps`` of Adam on
    the normalised factors (``render`` is differentiable), clamped to [0, 1]. Images of the domain come out
    at about 1e-3 or less; every other kind, near-domain ones included, above 0.015 (at 32 px).
    """
    n, _, resolution, _ = images.shape
    device = images.device
    t_bank = sample_factors(bank_size, torch.Generator().manual_seed(seed)).to(device)
    bank = render(t_bank, resolution).flatten(1)
    nearest = torch.cdist(images.flatten(1), bank).topk(starts, largest=False).indices     # [N, starts]
    t = t_bank[nearest.flatten()].clone().requires_grad_(True)
    target = images.repeat_interleave(starts, 0)
    opt = torch.optim.Adam([t], lr=0.01)
    for _ in range(steps):
        loss = (render(t, resolution) - target).pow(2).mean(dim=[1, 2, 3]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            t.clamp_(0, 1)
    with torch.no_grad():
        rms = (render(t, resolution) - target).pow(2).mean(dim=[1, 2, 3]).sqrt()
    return rms.view(n, starts).min(dim=1).values
