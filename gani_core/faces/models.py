"""dlib and its face models, found and loaded once per process.

The models are the four files of the ``face-recognition-models`` package (the ``faces`` extra). That package's
own ``__init__`` imports ``pkg_resources``, gone from recent setuptools, so its files are located from the
package's directory (``importlib.util.find_spec``) without importing it.

    shape_predictor_68_face_landmarks.dat       the 68 landmarks from a face box, trained on iBUG 300-W, whose licence
                                                excludes commercial use (examples/faces/README.md)
    dlib_face_recognition_resnet_model_v1.dat   the 128-d face descriptor (a ResNet trained for verification)

Every function here raises :class:`FacesUnavailableError` (one line, saying what to install) when dlib or the
model files are missing: the rest of gani_core never needs them.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from gani_core.errors import GaniError

INSTALL_HINT = "pip install -e '.[faces]' (or make setup)"
LANDMARKS_MODEL = "shape_predictor_68_face_landmarks.dat"
EMBEDDING_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


class FacesUnavailableError(GaniError):
    """dlib or the face models (the ``faces`` extra) are not installed."""


def available() -> bool:
    """Whether dlib and the model files are installed (imports dlib, loads no model)."""
    try:
        require()
    except FacesUnavailableError:
        return False
    return True


def require() -> None:
    """Raise FacesUnavailableError now, before any work, when dlib or the model files are missing."""
    dlib()
    _models_dir()


@functools.cache
def dlib() -> Any:
    """The dlib module; FacesUnavailableError when it is not installed."""
    try:
        import dlib as module
    except ImportError as exc:
        raise FacesUnavailableError(f"face alignment and id_similarity need dlib: {INSTALL_HINT}") from exc
    return module


@functools.cache
def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FacesUnavailableError(f"face alignment and id_similarity need the face-recognition-models package: "
                                    f"{INSTALL_HINT}")
    folder = Path(spec.origin).parent / "models"
    missing = [name for name in (LANDMARKS_MODEL, EMBEDDING_MODEL) if not (folder / name).is_file()]
    if missing:
        raise FacesUnavailableError(f"{folder} lacks {', '.join(missing)}: reinstall the faces extra, {INSTALL_HINT}")
    return folder


def model_path(name: str) -> Path:
    """The path of one of the package's model files (LANDMARKS_MODEL, EMBEDDING_MODEL)."""
    return _models_dir() / name


@functools.cache
def face_detector() -> Any:
    """dlib's frontal face detector: HOG features and a linear SVM over an image pyramid (no model file)."""
    return dlib().get_frontal_face_detector()


@functools.cache
def landmark_predictor() -> Any:
    """dlib's 68-point shape predictor (an ensemble of regression trees); about 0.8 s to load (a 100 MB file)."""
    return dlib().shape_predictor(str(model_path(LANDMARKS_MODEL)))


@functools.cache
def face_recognizer() -> Any:
    """dlib's face recognition ResNet (27 conv layers, 128-d output); about 0.1 s to load."""
    return dlib().face_recognition_model_v1(str(model_path(EMBEDDING_MODEL)))
