"""Faces: FFHQ alignment before inversion and the ``id_similarity`` metric after it, with dlib (the ``faces`` extra).

    models.py       dlib and its model files, loaded once per process; FacesUnavailableError says what to install
    detect.py       the HOG detector, which face is chosen (the largest), its 68 landmarks
    ffhq.py         the FFHQ recipe: landmarks -> quad -> shrink, crop, reflect padding, transform (no dlib)
    align.py        one photo aligned: Alignment (status ok / no_face / failed, reason, landmarks, quad, image)
    identity.py     dlib's 128-d face descriptor and id_similarity (cosine similarity of two faces' descriptors)
    files.py        image files aligned into a folder: NAME.png each and alignment.parquet; align_sources (a task)

Importing this package needs no dlib: the first call that detects a face raises FacesUnavailableError (one line:
``pip install -e '.[faces]'``) when it is missing. No orchestration imports (Prefect, Dask, MLflow).
"""

from gani_core.faces.align import NO_FACE, Alignment, NoFaceError, align_face, align_file
from gani_core.faces.detect import FaceDetection, detect_faces
from gani_core.faces.ffhq import ffhq_quad, warp_quad
from gani_core.faces.files import align_sources, align_to_folder, read_table, reusable_rows, write_table
from gani_core.faces.identity import cosine_similarity, face_embedding, id_similarity
from gani_core.faces.models import FacesUnavailableError, available, require

__all__ = [
    "NO_FACE", "Alignment", "FaceDetection", "FacesUnavailableError", "NoFaceError", "align_face", "align_file",
    "align_sources", "align_to_folder", "available", "cosine_similarity", "detect_faces", "face_embedding",
    "ffhq_quad", "id_similarity", "read_table", "require", "reusable_rows", "warp_quad", "write_table",
]
