"""``gani metrics``: the image metrics of two images of equal size, and ``id_similarity`` when both hold a face.

Notes, one line each on stderr: the MS-SSIM caveat of small images; why id_similarity is missing (a face not found
in an image, an image under 40 px, or dlib not installed: the faces extra; its value is then null in --json and ``-``
in the table), or, with --aligned, which image's face the detector missed and was read where an aligned face is
(gani_core.faces.identity.id_similarity: only beside a face the detector found in the other image).
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from gani_core.cli.common import note, resolve_device
from gani_core.errors import GaniError
from gani_core.images import load_image
from gani_core.metrics import ReducedScalesWarning, finite_or_none, image_metrics

ID_SIMILARITY = "id_similarity"


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    a = load_image(args.a)
    b = load_image(args.b)
    if a.shape != b.shape:
        raise GaniError(f"images differ in size: {args.a} is {a.shape[2]}x{a.shape[1]}, "
                        f"{args.b} is {b.shape[2]}x{b.shape[1]}; metrics compare images of equal size")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReducedScalesWarning)
        values = image_metrics(a.unsqueeze(0), b.unsqueeze(0), device=device)[0]
    for w in caught:        # a Python warning prints its source line: a person needs only what it says
        if issubclass(w.category, ReducedScalesWarning):
            note(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    # JSON has no infinity: identical images have an unbounded PSNR, written as null.
    values = {k: finite_or_none(v) for k, v in values.items()}
    values[ID_SIMILARITY] = _id_similarity(a, b, args)
    if args.json:
        print(json.dumps(values))
    else:
        width = max(len(name) for name in values)
        for name, value in values.items():
            shown = ("-" if name == ID_SIMILARITY else "inf") if value is None else f"{value:.6g}"
            print(f"{name:>{width}}  {shown}")
    return 0


def _id_similarity(a: torch.Tensor, b: torch.Tensor, args: argparse.Namespace) -> float | None:
    """id_similarity of the two images (gani_core.faces.identity), or None with a note saying why not."""
    from gani_core import faces
    from gani_core.faces.models import INSTALL_HINT

    if not faces.available():
        note(f"{ID_SIMILARITY}: needs dlib and its face models: {INSTALL_HINT}")
        return None
    value, reason = faces.id_similarity(a, b, assume_aligned=getattr(args, "aligned", False), names=(args.a, args.b))
    if reason is not None:
        note(f"{ID_SIMILARITY}: {'not computed: ' if value is None else ''}{reason}")
    return value
