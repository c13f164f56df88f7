"""One photo aligned the FFHQ way (gani_core.faces.ffhq), with what was found, or why it could not be.

    alignment = align_file("photo.jpg", 1024)      # or align_face(pixels, 1024)
    alignment.status                               # "ok", "no_face" or "failed" (with .reason)
    alignment.tensor()                             # [3, 1024, 1024] float in [0, 1], as load_image gives
    alignment.record()                             # faces_seen, boxes, box, landmarks, quad: a row's fields

What each kind of photo gives (docs/reliability.md; tests/test_faces.py):

- EXIF orientation is applied before detection (through gani_core.images.load_image, or ImageOps.exif_transpose
  for a Pillow image); a greyscale photo is aligned as RGB (its three channels equal).
- No face, or a face below the detector's size (about 40 px across): status ``no_face``, reason NO_FACE. Never a
  centre crop in disguise.
- Several faces: the largest (gani_core.faces.detect); every box is kept in ``record()["boxes"]``.
- A face cut by the photo's border: aligned; the missing part is the reflected, blurred padding of the recipe.
- A face found but so small that the output would enlarge its crop more than gani_core.images.MAX_UPSCALE times:
  status ``failed`` (the generator would be fitted to interpolation, as load_image refuses for whole images).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from gani_core.errors import ImageError
from gani_core.faces.detect import FaceDetection, FaceImage, as_rgb, detect_faces
from gani_core.faces.ffhq import ffhq_quad, quad_side, warp_quad
from gani_core.images import MAX_UPSCALE, load_image

if TYPE_CHECKING:
    import torch

Status = Literal["ok", "no_face", "failed"]
NO_FACE = "no face found"
NO_FACE_REASON = f"{NO_FACE} (dlib's frontal face detector finds roughly frontal faces from about 40 px across)"


class NoFaceError(ImageError):
    """No face could be aligned in an image: a failed row (an ImageError: the same bytes fail the same way)."""


@dataclass(frozen=True)
class Alignment:
    status: Status
    reason: str | None              # why not ok, one line; None when ok
    resolution: int                 # the output's side, in pixels
    detection: FaceDetection        # every face seen, the chosen one and its landmarks
    quad: np.ndarray | None         # [4, 2] the FFHQ quad in the photo's pixels (ffhq.ffhq_quad); None: no face
    image: np.ndarray | None        # [resolution, resolution, 3] uint8, the aligned face; None unless ok

    def tensor(self) -> torch.Tensor:
        """The aligned face as float32 [3, R, R] in [0, 1], what load_image gives for an image file."""
        import torch

        assert self.image is not None, "no aligned image: status is not ok"
        return torch.from_numpy(self.image.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()

    def png(self) -> bytes:
        """The aligned face as PNG bytes (what `gani align` writes)."""
        assert self.image is not None, "no aligned image: status is not ok"
        buf = io.BytesIO()
        Image.fromarray(self.image).save(buf, format="PNG")
        return buf.getvalue()

    def record(self) -> dict:
        """What was found, as plain lists (for a Parquet row or JSON): faces_seen, boxes [N][4], box [4] (the
        chosen face), landmarks [68][2] and quad [4][2] in the photo's pixels; None where there is none."""
        d = self.detection
        return {
            "faces_seen": d.faces_seen,
            "boxes": d.boxes.tolist(),
            "box": None if d.box is None else d.box.tolist(),
            "landmarks": None if d.landmarks is None else d.landmarks.tolist(),
            "quad": None if self.quad is None else self.quad.tolist(),
        }

    def check(self, name: str) -> Alignment:
        """This alignment when it is ok; else NoFaceError ``<name>: <reason>``."""
        if self.status != "ok":
            raise NoFaceError(f"{name}: {self.reason}")
        return self


def align_face(image: FaceImage, resolution: int) -> Alignment:
    """The FFHQ alignment of the largest face in ``image`` (any gani_core.faces.detect.FaceImage) at
    ``resolution`` px; the module docstring says what each kind of photo gives."""
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    rgb = as_rgb(image)
    detection = detect_faces(rgb)
    if detection.landmarks is None:
        return Alignment("no_face", NO_FACE_REASON, resolution, detection, None, None)
    quad = ffhq_quad(detection.landmarks)
    side = quad_side(quad)
    if side * MAX_UPSCALE < resolution:
        return Alignment("failed", f"the face is too small for {resolution} px: its crop is {side:.0f} px across, "
                         f"enlarged {resolution / side:.3g}x, more than the limit of {MAX_UPSCALE}x",
                         resolution, detection, quad, None)
    return Alignment("ok", None, resolution, detection, quad, warp_quad(rgb, quad, resolution))


def align_file(source: str | Path | bytes, resolution: int, name: str | None = None) -> Alignment:
    """``align_face`` of an image file, its bytes or URI, read by gani_core.images.load_image (EXIF orientation,
    greyscale, alpha and the other modes by its rules). Raises ImageError when the file cannot be read."""
    return align_face(load_image(source, name=name), resolution)
