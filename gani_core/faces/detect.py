"""Faces in a photo: dlib's HOG detector, the choice of one face, and its 68 landmarks.

Which face: the largest by box area among the confident ones, those scoring at least MIN_RELATIVE_SCORE of the best
score. The detector's weak detections are set aside because they are often not faces: on skimage's astronaut photo
it also fires on the mission patch on her suit, with a box as large as her face and a tenth of its score, and when
her forehead is cut off by the border her own box shrinks below the patch's. Every face seen is reported
(``FaceDetection.boxes``, ``scores``), the chosen one by index.

Sizes: the detector upsamples once, so it finds faces from about 40 px across (its window is 80 px). A photo whose
longer side exceeds DETECT_MAX_SIDE is searched at that size (faces under about 40 / DETECT_MAX_SIDE of the longer
side are then not found): upsampling a 12 Mpx phone photo would take tens of seconds. The landmarks are always
found at the photo's own resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from gani_core.faces.models import dlib, face_detector, landmark_predictor

UPSAMPLE = 1                # the detector's upsampling steps: faces from about 40 px rather than 80
DETECT_MAX_SIDE = 1024      # longer side, in pixels, at which a larger photo is searched
MIN_RELATIVE_SCORE = 0.5    # a face scoring under this fraction of the best score is not chosen

# What a face image may be: uint8 [H, W, 3] or [H, W] (grey), float [H, W, 3] in [0, 1], a float torch tensor
# [3, H, W] in [0, 1] (gani_core.images.load_image's and a generator's renders), or a Pillow image.
FaceImage = Any


@dataclass(frozen=True)
class FaceDetection:
    boxes: np.ndarray               # [N, 4] float64 left, top, right, bottom in pixels of every face seen, N >= 0
    scores: np.ndarray              # [N] the detector's scores (higher: more face-like; it reports those above 0)
    chosen: int | None              # index into boxes of the face chosen (the module docstring's rule); None: none
    landmarks: np.ndarray | None    # [68, 2] float64 x, y in pixels of the chosen face; None: no face

    @property
    def faces_seen(self) -> int:
        return len(self.boxes)

    @property
    def box(self) -> np.ndarray | None:
        """The chosen face's box [4] (left, top, right, bottom), or None."""
        return None if self.chosen is None else self.boxes[self.chosen]


def as_rgb(image: FaceImage) -> np.ndarray:
    """``image`` as contiguous uint8 RGB [H, W, 3] (a Pillow image is EXIF-rotated first, grey becomes RGB)."""
    if isinstance(image, Image.Image):
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    if hasattr(image, "detach"):        # a torch tensor [3, H, W] in [0, 1]: gani's images and renders
        assert image.ndim == 3 and image.shape[0] == 3, tuple(image.shape)
        image = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    assert array.ndim == 3 and array.shape[2] == 3, array.shape
    return np.ascontiguousarray(array)


def detect_faces(image: FaceImage) -> FaceDetection:
    """Every face dlib's detector finds in ``image``, the one chosen and its 68 landmarks (no face: N = 0)."""
    rgb = as_rgb(image)
    boxes, scores = find_faces(rgb)
    if not len(boxes):
        return FaceDetection(boxes, scores, None, None)
    chosen = choose_face(boxes, scores)
    return FaceDetection(boxes, scores, chosen, landmarks_in(rgb, boxes[chosen]))


def find_faces(rgb: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """The detector's boxes [N, 4] (left, top, right, bottom, in ``rgb``'s pixels) and scores [N] in ``rgb``
    [H, W, 3] uint8, searched at most ``max_side`` px wide or high."""
    height, width, _ = rgb.shape
    scale = min(1.0, max_side / max(height, width))
    searched = rgb if scale == 1.0 else np.asarray(
        Image.fromarray(rgb).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                    Image.Resampling.LANCZOS))
    rects, scores, _ = face_detector().run(searched, UPSAMPLE, 0.0)
    boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], dtype=np.float64).reshape(-1, 4)
    return boxes / scale, np.asarray(scores, dtype=np.float64)


def choose_face(boxes: np.ndarray, scores: np.ndarray) -> int:
    """The index of the face to use among ``boxes`` [N, 4] (N >= 1) with ``scores`` [N]: the largest box among those
    scoring at least MIN_RELATIVE_SCORE of the best (scores are above 0: the detector's threshold)."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    confident = np.flatnonzero(scores >= MIN_RELATIVE_SCORE * scores.max())
    return int(confident[np.argmax(areas[confident])])


def landmarks_in(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The 68 landmarks [68, 2] (x, y) dlib's shape predictor places for the face in ``box`` of ``rgb``."""
    return points(shape_in(rgb, box))


def shape_in(rgb: np.ndarray, box: np.ndarray) -> Any:
    """dlib's full_object_detection (68 parts) for the face in ``box``: what its recognition network takes."""
    return landmark_predictor()(rgb, _rectangle(box))


def _rectangle(box: np.ndarray) -> Any:
    left, top, right, bottom = (round(float(v)) for v in box)
    return dlib().rectangle(left, top, right, bottom)


def points(shape: Any) -> np.ndarray:
    """The parts of a dlib full_object_detection as [N, 2] float64 x, y."""
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
