"""Image metrics, one definition used everywhere (docs: method.md, "Metrics").

All functions compare float RGB images in [0, 1], shape [N, 3, H, W], pairwise along N, and return one
value per image, shape [N]. Renders get there through `to_unit`. `image_metrics` gives all five as rows, under the
names of the registry's ``image`` group (gani_core.metric_registry). `identity_metrics` gives the ``faces`` group
(id_similarity, id_similarity_pivot) of aligned faces, with dlib (gani_core.faces, imported when called), from its two
pieces `aligned_face_descriptor` and `cosine_or_none`, which gani_core.edit_runs uses too (id_similarity_edit).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from gani_core.lpips import lpips_distance
from gani_core.metric_registry import names

# MS-SSIM as Wang et al. 2003 define it and pytorch_msssim implements it.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN_SIZE = 11
_WIN_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03
_DATA_RANGE = 1.0

_sizes_warned: set[int] = set()       # the sizes whose MS-SSIM caveat this process has given (or a run took over)


class ReducedScalesWarning(UserWarning):
    """MS-SSIM of images under 161 px, computed with fewer than its 5 scales (`ms_ssim_note`)."""


def to_unit(render: torch.Tensor) -> torch.Tensor:
    """Map a generator render (about [-1, 1]) to [0, 1] for metrics, clamping first. Any shape."""
    return (render.clamp(-1.0, 1.0) + 1.0) / 2.0


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image on [0, 1] values: [N, 3, H, W] x 2 -> [N]."""
    _check_pair(a, b)
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, 10 * log10(1 / mse), per image: [N] (inf for identical images).

    JSON has no infinity: write values through `finite_or_none`.
    """
    return 10.0 * torch.log10(1.0 / mse(a, b))


def ms_ssim_scales(size: int) -> int:
    """How many MS-SSIM scales an image whose smaller side is `size` px supports (at most 5).

    The coarsest of L scales is the image downsampled 2^(L-1) times and must be larger than the 11-tap
    window's reach, as pytorch_msssim requires: size > 10 * 2^(L-1). So 161 px and up get all 5 scales,
    64 px gets 3, 32 px gets 2, 11..20 px gets 1 (plain SSIM), and below 11 px there is none.
    """
    scales = 0
    while scales < len(MS_SSIM_WEIGHTS) and size > (_WIN_SIZE - 1) * 2**scales:
        scales += 1
    return scales


def ms_ssim_note(size: int) -> str | None:
    """The caveat of MS-SSIM on images whose smaller side is `size` px, one line; None where all 5 scales fit
    (161 px and up) or none does (10 px and below, refused by `ms_ssim`)."""
    scales = ms_ssim_scales(size)
    if not 0 < scales < len(MS_SSIM_WEIGHTS):
        return None
    return (f"ms_ssim at {size} px uses {scales} of {len(MS_SSIM_WEIGHTS)} scales (weights renormalised): "
            f"comparable with ms_ssim at {size} px, not with 5-scale MS-SSIM")


# LPIPS below this size says little: AlexNet's first layer strides 4 with an 11 px kernel, so a 32 px image is
# 7 x 7 after it and 1 x 1 by conv3-5; pixel noise barely reaches the features. Measured with gani_core.shapes
# images and Gaussian pixel noise of sigma 0.03 (psnr 30 dB), mean of 16 (docs/method.md, "Metrics"): lpips 0.027
# at 32 px, 0.15 at 64 px, 0.49 at 256 px; lpips_vgg 0.32, 0.42, 0.56.
LPIPS_RESOLVES_FROM = 64


def lpips_note(size: int) -> str | None:
    """The caveat of LPIPS on images whose smaller side is `size` px, one line; None from `LPIPS_RESOLVES_FROM`
    (64 px) up."""
    if size >= LPIPS_RESOLVES_FROM:
        return None
    return (f"lpips at {size} px: AlexNet's features barely resolve an image under {LPIPS_RESOLVES_FROM} px: the "
            "same pixel noise (sigma 0.03, psnr 30 dB) scored lpips 0.027 at 32 px, 0.15 at 64 px and 0.49 at 256 px "
            "(lpips_vgg 0.32, 0.42, 0.56), so a visibly noisy render can score 0.02; compare lpips only between runs "
            "at the same size, and read it with mse/psnr")


def metric_notes(size: int) -> list[str]:
    """What the image metrics of `size` px images leave out, one line each (`ms_ssim_note`, `lpips_note`): a run's
    summary states them once (run_folder.summarise, ``notes``)."""
    return [n for n in (ms_ssim_note(size), lpips_note(size)) if n is not None]


def take_over_ms_ssim_note(size: int) -> str | None:
    """`ms_ssim_note(size)`, for a caller that states it once for a whole run (gani_core.invert_files, the flows'
    summary): `ms_ssim` no longer warns about `size` px in this process, so that a run does not say it once per image
    batch, per method or per worker process."""
    _sizes_warned.add(size)
    return ms_ssim_note(size)


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM per image on [0, 1] values: [N, 3, H, W] x 2 -> [N] in [0, 1], 1 = identical.

    Gaussian window 11 px, sigma 1.5, data range 1, K = (0.01, 0.03), weights `MS_SSIM_WEIGHTS`.
    At 161 px and above this is exactly pytorch_msssim's `ms_ssim`. Smaller images use the first
    `ms_ssim_scales(min(H, W))` scales with their weights rescaled to sum to 1, and warn (`ReducedScalesWarning`)
    once per size and process: such values are comparable with each other, not with 5-scale values.
    """
    _check_pair(a, b)
    side = min(a.shape[-2:])
    scales = ms_ssim_scales(side)
    if scales == 0:
        raise ValueError(f"MS-SSIM needs images larger than {_WIN_SIZE - 1} px, got {tuple(a.shape[-2:])}")
    if side not in _sizes_warned and (note := ms_ssim_note(side)) is not None:
        _sizes_warned.add(side)
        warnings.warn(note, ReducedScalesWarning, stacklevel=2)
    x, y = a.float(), b.float()
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype, device=x.device)
    if scales < len(MS_SSIM_WEIGHTS):
        # The standard weights sum to 1.0001; they are used as published, only truncated ones are rescaled.
        weights = weights / weights.sum()
    window = _gaussian_window(x.device, x.dtype)

    factors = []
    for scale in range(scales):
        ssim_per_channel, cs_per_channel = _ssim_and_cs(x, y, window)
        if scale < scales - 1:
            # Negative contrast-structure terms would make the fractional powers below undefined.
            factors.append(torch.relu(cs_per_channel))
            # Odd sizes are padded by one so no row or column is dropped (pytorch_msssim does the same).
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim_per_channel))
    per_channel = torch.prod(torch.stack(factors) ** weights.view(-1, 1, 1), dim=0)  # [N, 3]
    return per_channel.mean(1)


def lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1, AlexNet backbone, per image: [0, 1] inputs [N, 3, H, W] x 2 -> [N], 0 = identical."""
    _check_pair(a, b)
    return lpips_distance(a * 2 - 1, b * 2 - 1, net="alex")


def lpips_vgg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1, VGG16 backbone, per image: [0, 1] inputs [N, 3, H, W] x 2 -> [N], 0 = identical."""
    _check_pair(a, b)
    return lpips_distance(a * 2 - 1, b * 2 - 1, net="vgg")


# The function of each metric of the registry's image group.
_METRICS = {"mse": mse, "psnr": psnr, "ms_ssim": ms_ssim, "lpips": lpips, "lpips_vgg": lpips_vgg}


def image_metrics(a: torch.Tensor, b: torch.Tensor, device: str | torch.device | None = None) -> list[dict[str, float]]:
    """Every metric of ``names("image")`` for each image pair, in that order: [0, 1] inputs [N, 3, H, W] x 2 -> N
    rows of floats.

    Computed on `device` (default: a's device), without gradients. `psnr` is inf for identical images
    (see `finite_or_none`).
    """
    _check_pair(a, b)
    if device is not None:
        a, b = a.to(device), b.to(device)
    with torch.no_grad():
        columns = {name: _METRICS[name](a, b).cpu().tolist() for name in names("image")}
    return [{name: float(columns[name][i]) for name in names("image")} for i in range(a.shape[0])]


def identity_metrics(inputs: torch.Tensor, pivots: torch.Tensor, tuned: torch.Tensor | None = None
                     ) -> list[dict[str, float | str | None]]:
    """The registry's ``faces`` metrics of K aligned faces, and ``id_note``: [0, 1] inputs, pivot renders and tuned
    renders [K, 3, R, R] -> K rows.

    ``id_similarity`` = cos(e(input), e(tuned)), ``id_similarity_pivot`` = cos(e(input), e(pivot)), e being dlib's
    128-d face descriptor (`aligned_face_descriptor`). Each image's descriptor is computed once; ``tuned`` None (a
    method that tunes nothing: its render is the pivot's) gives both the pivot's value. Each image's face, the
    input's and the renders', must be found by the detector (an image under 128 px whose face it misses is searched
    again enlarged, which finds aligned faces from about 40 px): an input without one (a coffee cup given
    ``--identity``) or a render without one (a generator that cannot draw a face renders a blob) gets null values
    and the reason, never a similarity of whatever lies where a face would be. An image under 40 px has no
    descriptor (gani_core.faces.identity.MIN_SIDE: there people are no longer told apart).
    ``id_note``: None, or why a value is null (which image has no descriptor, and the reason:
    ``the tuned render: no face found …``).
    """
    rows: list[dict[str, float | str | None]] = []
    for k in range(inputs.shape[0]):
        images = {"the input": inputs[k], "the pivot render": pivots[k],
                  **({"the tuned render": tuned[k]} if tuned is not None else {})}
        embedded = {name: aligned_face_descriptor(image) for name, image in images.items()}
        source = embedded["the input"][0]
        pivot = cosine_or_none(source, embedded["the pivot render"][0])
        final = pivot if tuned is None else cosine_or_none(source, embedded["the tuned render"][0])
        missing = [f"{name}: {why}" for name, (descriptor, why) in embedded.items() if descriptor is None]
        rows.append({"id_similarity": final, "id_similarity_pivot": pivot, "id_note": "; ".join(missing) or None})
    return rows


def aligned_face_descriptor(image: torch.Tensor) -> tuple[np.ndarray | None, str | None]:
    """dlib's 128-d face descriptor of an aligned face [3, R, R] in [0, 1] (any device), [128] float32, and None; or
    None and why there is none (gani_core.faces.identity.face_embedding, ``assume_aligned``): the face must be one
    the detector finds, never read where an aligned face would be (a render that is no face gets no descriptor).
    FacesUnavailableError without dlib."""
    from gani_core.faces.identity import face_embedding

    return face_embedding(image, assume_aligned=True)


def cosine_or_none(u: np.ndarray | None, v: np.ndarray | None) -> float | None:
    """The cosine similarity of two face descriptors [128] (gani_core.faces.identity), in [-1, 1] (a descriptor
    against itself gives 1.0000000000000002 before the clip); None where one is missing."""
    from gani_core.faces.identity import cosine_similarity

    return None if u is None or v is None else min(1.0, max(-1.0, cosine_similarity(u, v)))


def finite_or_none(value: object) -> object:
    """`value`, or None where it is a float inf or nan (JSON, Parquet rows and MLflow take no infinities).

    The one rule for non-finite numbers in everything gani writes; other values pass through unchanged.
    """
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 4 or a.shape[1] != 3 or a.shape != b.shape:
        raise ValueError(f"metrics expect two [N, 3, H, W] RGB tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"metrics expect float images in [0, 1], got {a.dtype} and {b.dtype}")


def _gaussian_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1-D Gaussian, shape [11]."""
    coords = torch.arange(_WIN_SIZE, dtype=torch.float32) - _WIN_SIZE // 2
    g = torch.exp(-(coords**2) / (2 * _WIN_SIGMA**2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur without padding ('valid'), per channel: [N, C, H, W] -> [N, C, H-10, W-10]."""
    channels = x.shape[1]
    rows = window.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    cols = window.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    return F.conv2d(F.conv2d(x, rows, groups=channels), cols, groups=channels)


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term per image and channel, each [N, C]."""
    c1 = (_K1 * _DATA_RANGE) ** 2
    c2 = (_K2 * _DATA_RANGE) ** 2
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x**2
    var_y = _blur(y * y, window) - mu_y**2
    cov = _blur(x * y, window) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)
