"""``gani render``: a captioned grid of seeded samples of a generator, as PNG, JPEG or WebP by the file's suffix."""

from __future__ import annotations

import argparse
import io
from pathlib import PurePosixPath

from PIL import Image

from gani_core import storage
from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.cli.common import check_output_file, resolve_device
from gani_core.errors import GaniError
from gani_core.render import grid_png, render_samples

# What --out's suffix writes: Pillow's format name and its options (the caption is drawn in the image either way;
# a PNG also stores it as text).
FORMATS: dict[str, tuple[str, dict]] = {
    ".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"lossless": True}),
}


def run(args: argparse.Namespace) -> int:
    check_output_file(args.out, what=f"an image file name ({', '.join(FORMATS)})")
    image_format = output_format(args.out)
    device = resolve_device(args.device)
    G = resolve_checkpoint(args.checkpoint).load(device)
    images = render_samples(G, seeds=range(args.seed, args.seed + args.count), truncation_psi=args.truncation,
                            noise_mode=args.noise_mode)
    caption = f"{G.label or args.checkpoint} | seeds {args.seed}-{args.seed + args.count - 1} | psi {args.truncation}"
    storage.write_bytes(args.out, encode(grid_png(images, caption=caption), image_format))
    print(f"rendered {args.count} samples of {G.label or args.checkpoint} to {args.out}")
    return 0


def output_format(out: str) -> str:
    """The suffix of ``out`` that says which format to write; anything else is refused (it would be a PNG under
    another name)."""
    suffix = PurePosixPath(out.split("?", 1)[0]).suffix.lower()
    if suffix not in FORMATS:
        given = f"a {suffix} file" if suffix else "a name without a suffix"
        raise GaniError(f"--out {out}: {given}; gani render writes {', '.join(FORMATS)}")
    return suffix


def encode(png: bytes, suffix: str) -> bytes:
    """The grid's PNG bytes in the format of ``suffix`` (FORMATS)."""
    name, options = FORMATS[suffix]
    if name == "PNG":
        return png
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format=name, **options)
    return buf.getvalue()
