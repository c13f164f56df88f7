"""Identity: dlib's 128-d face descriptor and ``id_similarity``, the cosine similarity of two faces' descriptors.

The network is dlib's ``dlib_face_recognition_resnet_model_v1`` (a ResNet of 27 conv layers, a reduced ResNet-34,
trained by Davis King with a metric loss on about 3 million faces of 7485 people; 99.38% on LFW), fed a 150 x 150
chip that dlib cuts and aligns from the face's 68 landmarks. It is NOT the CurricularFace / ArcFace network of the
inversion papers: its values are not comparable with their published ID numbers; comparisons between methods inside
gani are. Its scale, as measured on this repository's photos: the same face re-encoded or re-aligned scores 0.997 to
0.9999, two different people (skimage's astronaut, matplotlib's Grace Hopper) 0.89. (dlib's own same-person rule is
a Euclidean distance under 0.6; those two people are 0.69 apart, their descriptors about 1.4 long.)

Which face: as gani_core.faces.detect chooses (the largest). ``assume_aligned=True`` is for images the caller
knows to be FFHQ-aligned faces (gani's aligned inputs and their renders): where the detector finds nothing, which
happens on small, tight crops, the face is taken to be at ALIGNED_FACE_BOX, where the detector puts it on aligned
faces. Without it, an image without a detected face has no descriptor (None, and the reason).
"""

from __future__ import annotations

import numpy as np

from gani_core.faces.align import NO_FACE_REASON
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


def face_embedding(image: FaceImage, assume_aligned: bool = False,
                   fallback: bool = True) -> tuple[np.ndarray | None, str | None]:
    """The face descriptor of the face in ``image`` (gani_core.faces.detect.FaceImage), [128] float32, and None;
    or None and the reason there is none (no face found). ``assume_aligned``: the module docstring; with
    ``fallback`` False the detector must find the face even then (searched at ALIGNED_SEARCH_SIDE), no box is
    assumed: what a run's input needs, so that an image without a face never gets a similarity."""
    rgb = as_rgb(image)
    boxes, scores = find_faces(rgb, ALIGNED_SEARCH_SIDE) if assume_aligned else find_faces(rgb)
    if len(boxes):
        box = boxes[choose_face(boxes, scores)]
    elif assume_aligned and fallback:
        height, width, _ = rgb.shape
        box = np.array(ALIGNED_FACE_BOX) * [width, height, width, height]
    else:
        return None, NO_FACE_REASON
    descriptor = face_recognizer().compute_face_descriptor(rgb, shape_in(rgb, box))
    return np.asarray(descriptor, dtype=np.float32), None


def cosine_similarity(u: np.ndarray, v: np.ndarray) -> float:
    """The cosine of the angle between two descriptors [128]: 1 = the same direction."""
    assert u.shape == v.shape == (EMBEDDING_DIM,), (u.shape, v.shape)
    u64, v64 = u.astype(np.float64), v.astype(np.float64)
    return float(u64 @ v64 / (np.linalg.norm(u64) * np.linalg.norm(v64)))


def id_similarity(a: FaceImage, b: FaceImage, assume_aligned: bool = False,
                  names: tuple[str, str] = ("the first image", "the second image")) -> tuple[float | None, str | None]:
    """``id_similarity`` of two images: the cosine similarity of their faces' descriptors, and None; or None and
    why not, naming the image(s) without a face by ``names``. ``assume_aligned`` applies to both."""
    ea, reason_a = face_embedding(a, assume_aligned)
    eb, reason_b = face_embedding(b, assume_aligned)
    if ea is not None and eb is not None:
        return cosine_similarity(ea, eb), None
    missing = [name for name, e in zip(names, (ea, eb), strict=True) if e is None]
    reason = reason_a or reason_b
    return None, f"{' and '.join(missing)}: {reason}"
