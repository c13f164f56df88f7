"""``gani metrics``: the image metrics of two images of equal size; the MS-SSIM caveat of small images as one note."""

from __future__ import annotations

import argparse
import json
import warnings

from gani_core.cli.common import note, resolve_device
from gani_core.errors import GaniError
from gani_core.images import load_image
from gani_core.metrics import ReducedScalesWarning, finite_or_none, image_metrics


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
    if args.json:
        print(json.dumps(values))
    else:
        for name, value in values.items():
            print(f"{name:>10}  {'inf' if value is None else f'{value:.6g}'}")
    return 0
