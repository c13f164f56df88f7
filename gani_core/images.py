"""Reading and writing the images that get inverted.

Every image enters gani through `load_image`, which returns float32 RGB in [0, 1], shape [3, H, W].
Real datasets hold phone photos with EXIF rotation, greyscale scans, PNGs with alpha, CMYK JPEGs from
print workflows, 16-bit PNGs, and the occasional truncated upload; each is either converted by one
stated rule or refused with an `ImageError` that names the file and says what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from gani_core.errors import ImageError

# 8192 x 8192. Larger than any StyleGAN resolution needs, small enough that decoding cannot exhaust memory
# (a 64 Mpx image is ~200 MB as uint8 RGB, ~800 MB as float32).
DEFAULT_MAX_PIXELS = 8192 * 8192

# Modes holding one integer channel wider than 8 bits. "I" is what older Pillow gives 16-bit greyscale PNGs.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def load_image(
    source: str | Path | bytes,
    resolution: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> torch.Tensor:
    """Read an image file (or its bytes) as float32 RGB in [0, 1], shape [3, H, W].

    EXIF orientation is applied. Greyscale, palette, 1-bit, CMYK and 16-bit images become RGB; images
    with transparency are composited onto white. Multi-frame files (GIF, APNG, TIFF) give their first
    frame. With `resolution`, the largest centred square is cropped and resized (Lanczos, antialiased)
    to [3, resolution, resolution]; without it, the image keeps its own size and aspect.

    Raises `ImageError` for a missing, empty, truncated or non-image file, and for images with more than
    `max_pixels` pixels (checked from the header, before decoding). `name` is what error messages call
    the image when `source` is bytes (e.g. the URI they were read from). Pillow's own hard limit,
    2 * `PIL.Image.MAX_IMAGE_PIXELS`, still applies above that.
    """
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    default_name, data = _read_source(source)
    name = name or default_name
    img = _open_decoded(name, data, max_pixels)
    rgb = _to_rgb_array(name, img)
    if resolution is not None:
        rgb = _centre_crop_resize(rgb, resolution)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write float RGB [3, H, W] in [0, 1] as an 8-bit PNG (values outside [0, 1] are clamped).

    Returns the path written; parent folders are created.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"save_image expects [3, H, W] RGB, got shape {tuple(image.shape)}")
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).save(path, format="PNG")
    return path


def image_sha256(source: str | Path | bytes) -> str:
    """Hex SHA-256 of an image file's bytes: the identity of an input image in run records."""
    _, data = _read_source(source)
    return hashlib.sha256(data).hexdigest()


def _read_source(source: str | Path | bytes) -> tuple[str, bytes]:
    """Return (name used in error messages, file bytes)."""
    if isinstance(source, bytes | bytearray):
        name, data = "<image bytes>", bytes(source)
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise ImageError(f"{name}: no such file")
        if not path.is_file():
            raise ImageError(f"{name}: not a regular file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    return name, data


def _open_decoded(name: str, data: bytes, max_pixels: int) -> Image.Image:
    """Open, size-check, fully decode and EXIF-rotate an image."""
    # A truncated file must fail rather than decode with grey filler, which Pillow does only when this
    # process-wide flag is set. We refuse instead of flipping it back, since other code set it on purpose.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(
            f"{name}: not read because PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, "
            "so a truncated file would load silently"
        )
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image is too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"{name}: not an image Pillow can read (unknown format or damaged header; first bytes {data[:8]!r})"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: damaged image header ({exc})") from exc

    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: image declares {width} x {height} = {width * height} pixels, more than the limit of "
            f"{max_pixels} (possible decompression bomb); raise max_pixels if the image is genuine"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{name}: image has no pixels ({width} x {height})")
    try:
        img.load()  # Image.open only reads the header; truncation shows up when the pixels are decoded.
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
    try:
        # Phone photos store pixels in sensor order plus an orientation tag; apply it so faces are upright.
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"{name}: unreadable EXIF orientation ({exc})") from exc


def _to_rgb_array(name: str, img: Image.Image) -> np.ndarray:
    """Convert any supported Pillow mode to float32 RGB in [0, 1], shape [H, W, 3]."""
    if img.mode in _WIDE_GREY_MODES:
        # Scale by the 16-bit range, not the image's own maximum, so brightness is kept.
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(grey, 0.0, 1.0)[:, :, None], 3, axis=2)
    if img.mode == "F":
        # Float TIFFs carry no declared range; [0, 1] is the only one that needs no guess about the scale.
        grey = np.asarray(img, dtype=np.float32)
        return np.repeat(np.clip(grey, 0.0, 1.0)[:, :, None], 3, axis=2)
    try:
        if img.mode in _ALPHA_MODES or "transparency" in img.info:
            # The generator has no alpha, so transparent pixels need some colour. White matches how
            # browsers and viewers show such images, and keeps an object's silhouette rather than
            # whatever colour the transparent pixels happen to store (often black or garbage).
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, rgba).convert("RGB")
        else:
            # Covers L, 1, P, CMYK (Pillow undoes Adobe's inverted CMYK JPEGs) and YCbCr.
            rgb = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name}: image mode {img.mode!r} cannot be converted to RGB ({exc})") from exc
    return np.asarray(rgb, dtype=np.float32) / 255.0


def _centre_crop_resize(rgb: np.ndarray, resolution: int) -> np.ndarray:
    """Crop the largest centred square from [H, W, 3] and resize it to [resolution, resolution, 3]."""
    height, width, _ = rgb.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top : top + side, left : left + side]
    if side == resolution:
        return np.ascontiguousarray(square)
    # Resample each channel as a float image: no 8-bit rounding after resampling, and one path for 8- and
    # 16-bit sources. Lanczos overshoots at edges, hence the clip.
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(square[:, :, c])).resize(
                (resolution, resolution), Image.Resampling.LANCZOS
            )
        )
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0).astype(np.float32)
