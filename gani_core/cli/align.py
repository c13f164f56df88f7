"""``gani align``: faces aligned the FFHQ way into a folder (gani_core.faces.files), with a progress bar.

What it says, on stderr: a header (images, resolution, folder), a progress bar, one line per image without a face
(``gani align: no face: SOURCE: reason``) or that failed (``gani align: failed: SOURCE: reason``, the path said
once), and a last line whose counts add up to the images: ``N aligned (K of them kept from before), J without a
face, F failed; table URI``. The output folder may lie inside an input folder (``gani align photos --out
photos/aligned``): the files under it are not inputs (a rerun would align its own outputs). An image that would
replace the aligned face of another photo of the same name in the folder is a failed row saying so
(gani_core.faces.files: one name, one photo). Exit code 1 when any image has no aligned output; 2 on bad usage (a
path that does not exist, no dlib, two inputs that would be aligned to the same NAME.png, no input outside the
output folder), before anything is written.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from gani_core import faces, storage
from gani_core.cli.common import Interrupted, check_output_folder, input_images
from gani_core.faces.files import TABLE, check_names


def run(args: argparse.Namespace) -> int:
    faces.require()                 # no dlib: one line saying what to install, before anything is read
    images = input_images(args.images, exclude=args.out)     # an output inside an input: not an input
    check_output_folder(args.out)
    check_names(images, args.out)
    print(f"gani align: {len(images)} image(s) at {args.resolution} px into {args.out}", file=sys.stderr)
    counts = {"ok": 0, "no_face": 0, "failed": 0, "kept": 0}
    bar = tqdm(total=len(images), unit="image", disable=args.quiet, dynamic_ncols=True)

    def on_row(row: dict, reused: bool) -> None:
        counts[row["status"]] += 1
        counts["kept"] += reused and row["status"] == "ok"
        if row["status"] != "ok":
            what = "no face" if row["status"] == "no_face" else "failed"
            tqdm.write(f"gani align: {what}: {row['source']}: {_reason(row)}", file=sys.stderr)
        bar.update()

    try:
        faces.align_to_folder(images, args.out, args.resolution, on_row)
    except KeyboardInterrupt:
        raise Interrupted(f"{counts['ok']} aligned image(s) kept in {args.out}; rerun the same command to "
                          "continue") from None
    finally:
        bar.close()
    kept = f" ({counts['kept']} of them kept from before)" if counts["kept"] else ""
    print(f"gani align: {counts['ok']} aligned{kept}, {counts['no_face']} without a face, {counts['failed']} failed; "
          f"table {storage.join(args.out, TABLE)}", file=sys.stderr)
    return 0 if counts["ok"] == len(images) else 1


def _reason(row: dict) -> str:
    """A row's reason without the path the line already gives (errors name the file they read)."""
    reason: str = row["reason"]
    for path in (row["source"], row.get("source_uri")):
        if path and reason.startswith(f"{path}: "):
            return reason[len(path) + 2:]
    return reason
