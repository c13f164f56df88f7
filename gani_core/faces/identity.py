"""Identity: dlib's 128-d face descriptor and ``id_similarity``, the cosine similarity of two faces' descriptors.

The network is dlib's ``dlib_face_recognition_resnet_model_v1`` (a ResNet of 27 conv layers, a reduced ResNet-34,
trained by Davis King with a metric loss on about 3 million faces of 7485 people; 99.38% on LFW), fed a 150 x 150
chip that dlib cuts and aligns from the face's 68 landmarks. It is NOT the CurricularFace / ArcFace network of the
inversion papers: its values are not comparable with their published ID numbers; comparisons between methods inside
gani are. Its scale, as measured on this repository's photos: the same face re-encoded or re-aligned scores 0.997 to
0.9999, two different people (skimage's astronaut, matplotlib's Grace Hopper) 0.89. (dlib's own same-person rule is
a Euclidean distance under 0.6; those two people are 0.69 apart, their descriptors about 1.4 long.)

Which face: as gani_core.faces.detect chooses (the largest). Small images: an image under SMALL_SIDE px whose face
the detector misses at its own size (aligned faces under about 56 px) is searched again on a copy enlarged to
ENLARGED_SEARCH_SIDE px (Lanczos); the box found there, scaled back, gives the landmarks and the descriptor at the
image's own size (measured: docs/method.md). An image under MIN_SIDE px has no descriptor: there the same face and
two different people score alike.

A descriptor is only ever read from a face the detector finds (``face_embedding``: a run's inputs and renders, gani
edit's renders): an image without one has none (None, and the reason), never the descriptor of whatever lies where a
face would be (a blob rendered by a generator that cannot draw a face, read at ALIGNED_FACE_BOX, scored 0.82 to 0.97
against the astronaut). ``assume_aligned=True`` (the caller knows the images are FFHQ-aligned) searches them at most
ALIGNED_SEARCH_SIDE px wide. The one exception is ``id_similarity`` with ``assume_aligned`` (``gani metrics
--aligned``: the user asserts both images are aligned faces): an image whose face the detector misses is read at
ALIGNED_FACE_BOX, where the detector puts it on aligned faces, only when the detector found the other's: two images
without a detected face have no similarity (noise read at that place scores 0.84 to 0.88 against a real face, as
high as another person does: the box alone does not make a face).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from gani_core.faces.align import NO_FACE, NO_FACE_REASON
from gani_core.faces.detect import FaceImage, as_rgb, choose_face, find_faces, shape_in
from gani_core.faces.models import face_recognizer

EMBEDDING_DIM = 128

# Where dlib's detector boxes the face in an FFHQ-aligned image, as fractions of its width and height (left, top,
# right, bottom): measured on the aligned astronaut and Grace Hopper at 128 to 1024 px, whose boxes lie within
# 0.05 of it. The descriptor from this box is within 0.01 to 0.06 (Euclidean) of the one from the detector's box;
# from the whole image's box it is 0.45 to 0.8 away, farther than two different people are.
ALIGNED_FACE_BOX = (0.22, 0.33, 0.78, 0.88)

# An aligned face fills about half of its image: the detector searches it at most this wide (a 1024 px render took
# 0.45 s to search at full size), the landmarks and descriptor still come from the full image.
ALIGNED_SEARCH_SIDE = 256

# Aligned faces under about 56 px escape the detector at their own size (its window finds faces from about 40 px;
# an aligned face's box is 0.56 of the image). An image under SMALL_SIDE px whose face it misses is searched again
# enlarged to ENLARGED_SEARCH_SIDE px (its longer side): it then finds 19 or 20 of 20 aligned faces from 32 px and
# fires on none of ten photos without a face from 32 px (docs/method.md). The descriptor is still computed at the
# image's own size, which separates people better than the enlarged copy's (at 48 px: 0.05 against 0.02).
SMALL_SIDE = 128
ENLARGED_SEARCH_SIDE = 256

# Under MIN_SIDE px (the shorter side) a descriptor no longer tells people apart: at 32 px the astronaut against her
# own re-encoded or re-aligned copies scores as low as 0.926 and against Grace Hopper as high as 0.935; from 36 px the
# two ranges part (at 40 px: at least 0.969 against at most 0.930).
MIN_SIDE = 40


def face_embedding(image: FaceImage, assume_aligned: bool = False) -> tuple[np.ndarray | None, str | None]:
    """The face descriptor of the face the detector finds in ``image`` (gani_core.faces.detect.FaceImage), [128]
    float32, and None; or None and the reason there is none (no face found, or the image under MIN_SIDE px).
    ``assume_aligned``: an FFHQ-aligned image, searched at most ALIGNED_SEARCH_SIDE px wide; no box is ever assumed
    (the module docstring)."""
    rgb = as_rgb(image)
    too_small = _too_small(rgb)
    if too_small is not None:
        return None, too_small
    box = detected_face_box(rgb, assume_aligned)
    if box is None:
        return None, NO_FACE_REASON
    return descriptor_at(rgb, box), None


def detected_face_box(rgb: np.ndarray, assume_aligned: bool = False) -> np.ndarray | None:
    """The box [4] (left, top, right, bottom, in ``rgb``'s pixels) of the face the detector finds in ``rgb`` [H, W, 3]
    uint8 (searched at most ALIGNED_SEARCH_SIDE px wide when ``assume_aligned``; an image under SMALL_SIDE px whose
    face it misses is searched again enlarged, the module docstring), or None."""
    boxes, scores = find_faces(rgb, ALIGNED_SEARCH_SIDE) if assume_aligned else find_faces(rgb)
    height, width, _ = rgb.shape
    if not len(boxes) and max(height, width) < SMALL_SIDE:
        scale = ENLARGED_SEARCH_SIDE / max(height, width)
        size = (round(width * scale), round(height * scale))
        boxes, scores = find_faces(np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS)),
                                   ENLARGED_SEARCH_SIDE)
        boxes = boxes / np.array([size[0] / width, size[1] / height] * 2)
    return boxes[choose_face(boxes, scores)] if len(boxes) else None


def aligned_face_box(rgb: np.ndarray) -> np.ndarray:
    """ALIGNED_FACE_BOX in ``rgb``'s pixels: where an FFHQ-aligned face is."""
    height, width, _ = rgb.shape
    return np.array(ALIGNED_FACE_BOX) * [width, height, width, height]


def descriptor_at(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """dlib's descriptor [128] float32 of the face in ``box`` of ``rgb`` (its 68 landmarks placed there first)."""
    return np.asarray(face_recognizer().compute_face_descriptor(rgb, shape_in(rgb, box)), dtype=np.float32)


def cosine_similarity(u: np.ndarray, v: np.ndarray) -> float:
    """The cosine of the angle between two descriptors [128]: 1 = the same direction."""
    assert u.shape == v.shape == (EMBEDDING_DIM,), (u.shape, v.shape)
    u64, v64 = u.astype(np.float64), v.astype(np.float64)
    return float(u64 @ v64 / (np.linalg.norm(u64) * np.linalg.norm(v64)))


def id_similarity(a: FaceImage, b: FaceImage, assume_aligned: bool = False,
                  names: tuple[str, str] = ("the first image", "the second image")) -> tuple[float | None, str | None]:
    """``id_similarity`` of two images: the cosine similarity of their faces' descriptors and a note (None, or which
    image's face was read at ALIGNED_FACE_BOX); or None and why not, naming the image(s) by ``names``.
    ``assume_aligned``: an image whose face the detector misses is read at ALIGNED_FACE_BOX, provided the detector
    found the other image's face (neither found: None)."""
    rgbs = (as_rgb(a), as_rgb(b))
    small = [(name, why) for name, why in zip(names, map(_too_small, rgbs), strict=True) if why is not None]
    if small:
        return None, "; ".join(f"{name}: {why}" for name, why in small)
    detected = [detected_face_box(rgb, assume_aligned) for rgb in rgbs]
    missing = [name for name, box in zip(names, detected, strict=True) if box is None]
    if len(missing) == 2:
        why = ("; an aligned face is read at its place only beside a detected one" if assume_aligned
               else NO_FACE_REASON[len(NO_FACE):])
        return None, f"{NO_FACE} in {names[0]} or {names[1]}{why}"
    if missing and not assume_aligned:
        return None, f"{missing[0]}: {NO_FACE_REASON}"
    u, v = (descriptor_at(rgb, aligned_face_box(rgb) if box is None else box)
            for rgb, box in zip(rgbs, detected, strict=True))
    note = f"{missing[0]}: no face detected, read where an aligned face is" if missing else None
    return cosine_similarity(u, v), note


def _too_small(rgb: np.ndarray) -> str | None:
    """Why ``rgb`` is too small for a descriptor that tells people apart (under MIN_SIDE px), or None."""
    height, width, _ = rgb.shape
    if min(height, width) >= MIN_SIDE:
        return None
    return (f"the image is {width}x{height} px, under the {MIN_SIDE} px a face descriptor needs to tell people "
            "apart")
