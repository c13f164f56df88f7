"""Reading and writing the images that get inverted.

Every image enters gani through `load_image`, which returns float32 RGB in [0, 1], shape [3, H, W].
Real datasets hold phone photos with EXIF rotation, greyscale scans, PNGs with alpha, CMYK JPEGs from
print workflows, 16-bit PNGs, and the occasional truncated upload; each is either converted by one
stated rule or refused with an `ImageError` that names the file and says what is wrong, on one line (a run
records it as the image's failed row). docs/reliability.md lists every kind with its rule and test.
"""

from __future__ import annotations

import hashlib
import io
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from gani_core import storage
from gani_core.errors import ImageError

# 8192 x 8192. Larger than any StyleGAN resolution needs, small enough that decoding cannot exhaust memory
# (a 64 Mpx image is ~200 MB as uint8 RGB, ~800 MB as float32).
DEFAULT_MAX_PIXELS = 8192 * 8192

# With a `resolution`, the centred square may be enlarged at most this many times. Beyond it the generator would
# be fitted to interpolation, not to the picture: a 1 x 1 image is one flat colour at any size.
MAX_UPSCALE = 8

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

    Raises `ImageError` for a missing, unreadable, empty, truncated or non-image file, for images with more
    than `max_pixels` pixels (checked from the header, before decoding), and, with `resolution`, for images
    whose shorter side is under `resolution / MAX_UPSCALE`. `source` is a path, an fsspec URI
    (``s3://...``) or the file's bytes; `name` is what error messages call the image when `source` is bytes
    (e.g. the URI they were read from). Pillow's own hard limit, 2 * `PIL.Image.MAX_IMAGE_PIXELS`, still
    applies above `max_pixels`.
    """
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    name, data = _read_source(source, name)
    img = _open_decoded(name, data, max_pixels)
    if resolution is not None:
        _check_enlargement(name, img.size, resolution)
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


def read_image_bytes(uri: str | Path, name: str | None = None) -> bytes:
    """The bytes of the image file at ``uri``: a local path, or an fsspec URI such as ``s3://bucket/key``.

    Raises `ImageError` naming it (or ``name``) when it does not exist, is not a regular file (a folder, a
    pipe), cannot be read (permissions, I/O) or is empty: the reading half of `load_image`, for callers that
    hash the bytes too.
    """
    name = _one_line(name or str(uri))
    fs, path = storage.resolve(uri)
    try:
        # Look before reading: opening a named pipe would wait until something writes to it.
        if isinstance(fs, LocalFileSystem) and not stat.S_ISREG(Path(path).stat().st_mode):
            raise ImageError(f"{name}: not a regular file")
        data = storage.read_bytes(uri)      # retried while an object store cannot be reached
    except ConnectionError:
        raise       # the storage, not the image: not an ImageError (a rerun reads it again)
    except FileNotFoundError as exc:
        raise ImageError(f"{name}: no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{name}: not a regular file") from exc
    except OSError as exc:
        raise ImageError(f"{name}: cannot be read ({_one_line(exc.strerror or str(exc))})") from exc
    if not data:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    return data


def _read_source(source: str | Path | bytes, name: str | None = None) -> tuple[str, bytes]:
    """Return (name used in error messages, file bytes)."""
    if not isinstance(source, bytes | bytearray):
        return _one_line(name or str(source)), read_image_bytes(source, name)
    name = _one_line(name or "<image bytes>")
    if not source:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    return name, bytes(source)


def _one_line(text: str) -> str:
    """``text`` with control characters escaped (a newline in a file name becomes ``\\n``): a failed row's error
    and a log line stay one line whatever the file is called."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _unsupported_format(data: bytes) -> str | None:
    """The formats met in photo folders that Pillow does not decode, named from their first bytes."""
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1"):
        return "a HEIC/HEIF photo: convert it to JPEG or PNG"
    if data.startswith(b"%PDF"):
        return "a PDF document"
    if b"<svg" in data[:512]:
        return "an SVG drawing: render it to PNG"
    return None


def _check_enlargement(name: str, size: tuple[int, int], resolution: int) -> None:
    side = min(size)
    if side * MAX_UPSCALE < resolution:
        raise ImageError(
            f"{name}: {size[0]} x {size[1]} pixels is too small for {resolution} px: its centred {side} x {side} "
            f"square would be enlarged {resolution / side:.3g}x, more than the limit of {MAX_UPSCALE}x"
        )


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
        raise ImageError(f"{name}: image is too large to decode safely ({_one_line(str(exc))})") from exc
    except UnidentifiedImageError as exc:
        what = _unsupported_format(data) or "unknown format or damaged header"
        raise ImageError(f"{name}: not an image Pillow can read ({what}; first bytes {data[:8]!r})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: damaged image header ({_one_line(str(exc))})") from exc

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
        raise ImageError(f"{name}: image data is truncated or corrupt ({_one_line(str(exc))})") from exc
    try:
        # Phone photos store pixels in sensor order plus an orientation tag; apply it so faces are upright.
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"{name}: unreadable EXIF orientation ({_one_line(str(exc))})") from exc


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
        raise ImageError(f"{name}: image mode {img.mode!r} cannot be converted to RGB ({_one_line(str(exc))})") from exc
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
