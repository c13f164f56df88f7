"""Faces (gani_core/faces): detection, the FFHQ alignment, id_similarity, `gani align` and `gani metrics`.

Real photographs only (examples/faces/README.md: sources and licences): skimage's astronaut (Eileen Collins, NASA,
public domain), matplotlib's Grace Hopper (U.S. Navy portrait), skimage's coffee as a photo without a face. Every
transformed photo (rotated, scaled, cut, grey, EXIF-rotated, two faces side by side) is made from them here.
Tests that need dlib are skipped, with the reason, where the faces extra is not installed (CI installs it).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.data
from matplotlib import cbook
from PIL import Image, ImageFilter

from gani_core import faces, storage
from gani_core.cli import main
from gani_core.dataset import list_images
from gani_core.errors import ImageError
from gani_core.faces import models
from gani_core.faces.align import NO_FACE_REASON
from gani_core.faces.detect import choose_face, shape_in
from gani_core.faces.ffhq import eye_centres
from gani_core.faces.files import NOT_STORED
from gani_core.faces.identity import ALIGNED_FACE_BOX, MIN_SIDE, cosine_similarity

from .conftest import EXAMPLES, REPO, S3_BUCKET

needs_dlib = pytest.mark.skipif(not models.available(), reason="dlib and face-recognition-models are not installed "
                                f"(the faces extra: {models.INSTALL_HINT})")

# The astronaut's eye centres, picked by eye on the 512 px photo enlarged 10x with a 2 px grid: the middle of each
# eye's opening (left eye from x 193 to 212, y 97 to 105; right eye from x 237 to 257, y 100 to 106).
ASTRONAUT_EYES = np.array([[202.5, 101.0], [247.0, 103.0]])
EYE_TOLERANCE = 3.0     # px: dlib's eye centres are the means of 6 contour points, not the pupils
R = 256                 # the alignment resolution of the tests (64 to 1024 behave alike; 256 is fast)


def _astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def _hopper() -> np.ndarray:
    return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))


def _resized(rgb: np.ndarray, scale: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS))


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, in 0-255 levels."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _eyes(alignment: faces.Alignment) -> np.ndarray:
    return np.stack(eye_centres(alignment.detection.landmarks))


@pytest.fixture(scope="module")
def astronaut_aligned() -> faces.Alignment:
    return faces.align_face(_astronaut(), R)


@pytest.fixture(scope="module")
def hopper_aligned() -> faces.Alignment:
    return faces.align_face(_hopper(), R)


# --- 1. detection and the choice of a face -------------------------------------------------------------------------


@needs_dlib
def test_the_astronauts_eye_centres_land_where_a_person_sees_them(astronaut_aligned: faces.Alignment) -> None:
    assert np.abs(_eyes(astronaut_aligned) - ASTRONAUT_EYES).max() < EYE_TOLERANCE
    assert astronaut_aligned.detection.landmarks.shape == (68, 2)


@needs_dlib
def test_of_two_detections_in_one_photo_the_confident_largest_is_chosen(astronaut_aligned: faces.Alignment) -> None:
    """The detector also fires on the mission patch on the astronaut's suit: a box as large as her face, a tenth of
    its score."""
    detection = astronaut_aligned.detection
    assert detection.faces_seen == 2
    left, top, right, bottom = detection.box
    assert left < ASTRONAUT_EYES[:, 0].min() and ASTRONAUT_EYES[:, 0].max() < right
    assert top < ASTRONAUT_EYES[:, 1].min() and ASTRONAUT_EYES[:, 1].max() < bottom
    assert detection.scores[detection.chosen] > 5 * detection.scores.min()


def test_choose_face_takes_the_largest_of_the_faces_scoring_at_least_half_the_best() -> None:
    boxes = np.array([[0, 0, 90, 90], [0, 0, 100, 100], [0, 0, 50, 50]], dtype=np.float64)
    assert choose_face(boxes, np.array([1.0, 0.6, 1.2])) == 1       # largest, and 0.6 >= 0.5 * 1.2
    assert choose_face(boxes, np.array([1.0, 0.4, 1.2])) == 0       # 0.4 < 0.6: the largest left is box 0


@needs_dlib
def test_of_two_real_faces_the_larger_is_picked() -> None:
    """The astronaut at half size on the left, at full size on the right: the right one is chosen."""
    big, small = _astronaut(), _resized(_astronaut(), 0.5)
    canvas = np.full((512, 256 + 512, 3), 255, dtype=np.uint8)
    canvas[:256, :256] = small
    canvas[:, 256:] = big
    alignment = faces.align_face(canvas, R)
    assert alignment.status == "ok" and alignment.detection.faces_seen >= 2
    assert np.abs(_eyes(alignment) - (ASTRONAUT_EYES + np.array([256.0, 0.0]))).max() < EYE_TOLERANCE


# --- 2. the alignment: the same crop whatever the pose and size of the photo -----------------------------------------


# Where the recipe puts the eyes: the quad's side is 4 eye distances when the eyes are farther apart than 0.9 of
# the eye-to-mouth distance (as in both photos here), centred 0.1 eye-to-mouth below the eyes' midpoint: the eyes
# land at x = 3/8 and 5/8 of the side, y = 1/2 - 0.1 eye_to_mouth / side (0.474 for the astronaut).
FFHQ_EYES = np.array([[0.375, 0.475], [0.625, 0.475]])


@needs_dlib
def test_the_aligned_crop_puts_the_eyes_where_ffhq_puts_them(astronaut_aligned: faces.Alignment,
                                                              hopper_aligned: faces.Alignment) -> None:
    """Found again by the detector in the output; and the two people's crops differ by ~73 levels (the control of
    the tolerances below)."""
    for alignment in (astronaut_aligned, hopper_aligned):
        assert alignment.image.shape == (R, R, 3) and alignment.image.dtype == np.uint8
        found = np.stack(eye_centres(faces.detect_faces(alignment.image).landmarks)) / R
        assert np.abs(found - FFHQ_EYES).max() < 0.015          # measured at most 0.010
    assert _mad(astronaut_aligned.image, hopper_aligned.image) > 50


@needs_dlib
@pytest.mark.parametrize("degrees", [10, -10])
def test_the_aligned_crop_is_the_same_when_the_photo_is_rotated(astronaut_aligned: faces.Alignment,
                                                                degrees: float) -> None:
    centre = (220.0, 120.0)
    photo = _astronaut()
    rotated = np.asarray(Image.fromarray(photo).rotate(degrees, center=centre, resample=Image.Resampling.BICUBIC))
    alignment = faces.align_face(rotated, R)
    # Pillow turns the photo counter-clockwise on screen: turn the eyes found back clockwise about the same centre.
    t = np.radians(degrees)
    back = (_eyes(alignment) - centre) @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) + centre
    assert np.abs(back - _eyes(astronaut_aligned)).max() < 1.5     # measured 0.6 px
    assert _mad(rotated, photo) > 40                                # the photos differ...
    assert _mad(alignment.image, astronaut_aligned.image) < 8       # ...their aligned crops hardly (measured 2.8-4.5)


@needs_dlib
@pytest.mark.parametrize("scale", [0.6, 1.5])
def test_the_aligned_crop_is_the_same_when_the_photo_is_scaled(astronaut_aligned: faces.Alignment,
                                                               scale: float) -> None:
    alignment = faces.align_face(_resized(_astronaut(), scale), R)
    assert np.abs(_eyes(alignment) / scale - _eyes(astronaut_aligned)).max() < 1.5     # measured 0.6 px
    assert _mad(alignment.image, astronaut_aligned.image) < 8                         # measured 4.5 and 6.0


@needs_dlib
def test_the_output_has_the_requested_resolution() -> None:
    for resolution in (64, 1024):
        assert faces.align_face(_astronaut(), resolution).image.shape == (resolution, resolution, 3)


# --- 3. bad input: each a documented behaviour (docs/reliability.md) -------------------------------------------------


@needs_dlib
def test_a_photo_without_a_face_is_no_face_found() -> None:
    alignment = faces.align_face(skimage.data.coffee(), R)
    assert alignment.status == "no_face" and alignment.reason.startswith(faces.NO_FACE)
    assert alignment.image is None and alignment.quad is None and alignment.detection.faces_seen == 0
    with pytest.raises(faces.NoFaceError, match=r"^coffee\.png: no face found"):
        alignment.check("coffee.png")


@needs_dlib
def test_a_face_below_the_detectors_size_is_no_face_found() -> None:
    """The astronaut photo at 128 px: her face is about 22 px across, under the detector's ~40 px."""
    alignment = faces.align_face(_resized(_astronaut(), 0.25), 64)
    assert alignment.status == "no_face" and alignment.reason.startswith(faces.NO_FACE)


@needs_dlib
def test_a_face_found_but_too_small_for_the_resolution_fails_with_the_enlargement() -> None:
    """At 1024 px, a quad of 85 px would be enlarged 12x: refused as load_image refuses such enlargements."""
    alignment = faces.align_face(_resized(_astronaut(), 0.5), 1024)
    assert alignment.status == "failed" and alignment.image is None
    assert alignment.reason.startswith("the face is too small for 1024 px") and "limit of 8x" in alignment.reason


@needs_dlib
@pytest.mark.parametrize("cut", ["top", "left"])
def test_a_face_cut_by_the_border_still_aligns_with_reflected_padding(astronaut_aligned: faces.Alignment,
                                                                      cut: str) -> None:
    """The forehead cut off just above the eyebrows (at y 90; the eyes are at y ~101), or the left cheek and outer
    corner of the left eye (at x 195). The quad reaches outside the photo; the part of the crop that the photo
    holds is the same as the uncut photo's."""
    photo = _astronaut()
    offset = np.array([0, 90]) if cut == "top" else np.array([195, 0])
    alignment = faces.align_face(photo[offset[1]:, offset[0]:], R)
    assert alignment.status == "ok"
    assert alignment.quad.min() < 0                                          # reaches outside: padded
    assert np.abs(_eyes(alignment) + offset - ASTRONAUT_EYES).max() < 2 * EYE_TOLERANCE
    held = (slice(R // 3, None), slice(None)) if cut == "top" else (slice(None), slice(R // 2, None))
    assert _mad(alignment.image[held], astronaut_aligned.image[held]) < 12    # measured 7.1 and 9.1


@needs_dlib
def test_a_greyscale_photo_aligns_as_rgb(astronaut_aligned: faces.Alignment) -> None:
    buf = io.BytesIO()
    Image.fromarray(_astronaut()).convert("L").save(buf, format="PNG")
    alignment = faces.align_file(buf.getvalue(), R)
    assert alignment.status == "ok"
    assert np.array_equal(alignment.image[..., 0], alignment.image[..., 1])
    assert np.array_equal(alignment.image[..., 0], alignment.image[..., 2])
    assert np.abs(_eyes(alignment) - _eyes(astronaut_aligned)).max() < 1.5
    grey_of_colour = np.asarray(Image.fromarray(astronaut_aligned.image).convert("L"))
    assert _mad(alignment.image[..., 0], grey_of_colour) < 6      # measured 3.3 (landmarks 0.7 px apart)


@needs_dlib
def test_a_photo_with_exif_rotation_is_turned_upright_before_detection(astronaut_aligned: faces.Alignment) -> None:
    """Pixels stored turned a quarter to the left with orientation 6 ("turn right to view"), as phones write."""
    stored = Image.fromarray(_astronaut()).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif)
    alignment = faces.align_file(buf.getvalue(), R, name="phone.jpg")
    assert alignment.status == "ok"
    assert np.abs(_eyes(alignment) - _eyes(astronaut_aligned)).max() < 1.5
    assert _mad(alignment.image, astronaut_aligned.image) < 4
    sideways = faces.align_face(np.asarray(stored), R)                     # the same pixels, the tag ignored
    assert sideways.status == "no_face"


def test_an_unreadable_file_is_an_image_error() -> None:
    with pytest.raises(ImageError, match=r"^broken\.png: "):
        faces.align_file(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, R, name="broken.png")


# --- 4. identity ----------------------------------------------------------------------------------------------------


@needs_dlib
def test_the_face_embedding_is_128_floats() -> None:
    embedding, reason = faces.face_embedding(_astronaut())
    assert reason is None and embedding.shape == (128,) and embedding.dtype == np.float32


@needs_dlib
def test_id_similarity_is_near_1_for_one_face_at_two_jpeg_qualities_and_lower_for_another_person(
        astronaut_aligned: faces.Alignment, hopper_aligned: faces.Alignment) -> None:
    q95, q30 = (_decoded(_jpeg(astronaut_aligned.image, q)) for q in (95, 30))
    same, reason = faces.id_similarity(q95, q30)
    other, _ = faces.id_similarity(q95, hopper_aligned.image)
    assert reason is None
    assert same > 0.99              # measured 0.996
    assert other < 0.95             # measured 0.887
    assert same - other > 0.05


@needs_dlib
def test_id_similarity_against_a_photo_without_a_face_is_none_with_the_reason(
        astronaut_aligned: faces.Alignment) -> None:
    value, reason = faces.id_similarity(astronaut_aligned.image, skimage.data.coffee(), names=("a.png", "coffee.png"))
    assert value is None and reason.startswith(f"coffee.png: {faces.NO_FACE}")


def _blurred(rgb: np.ndarray, radius: float = 1.0) -> np.ndarray:
    """What a poor render of a small face looks like: the detector misses it even enlarged."""
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))


@needs_dlib
def test_assume_aligned_measures_small_aligned_crops_the_detector_misses(astronaut_aligned: faces.Alignment,
                                                                        hopper_aligned: faces.Alignment) -> None:
    """A blurred 48 px aligned crop: no face detected, even enlarged; with assume_aligned its face is taken at
    ALIGNED_FACE_BOX (the other image's face is detected), with a note saying so."""
    small = _blurred(_resized(astronaut_aligned.image, 48 / R))
    assert faces.face_embedding(small) == (None, NO_FACE_REASON)
    assert faces.id_similarity(small, astronaut_aligned.image)[0] is None
    same, note = faces.id_similarity(small, astronaut_aligned.image, assume_aligned=True, names=("small", "big"))
    other, _ = faces.id_similarity(small, hopper_aligned.image, assume_aligned=True)
    assert same > 0.93 and same - other > 0.03      # measured 0.944 and 0.901
    assert note == "small: no face detected, read where an aligned face is"


@needs_dlib
def test_assume_aligned_needs_a_face_the_detector_finds_in_one_of_the_two_images(
        astronaut_aligned: faces.Alignment, hopper_aligned: faces.Alignment) -> None:
    """Noise read where an aligned face would be: beside a detected face it scores no higher than another person
    (measured 0.848 against the astronaut's 0.886 with Grace Hopper); two images without a detected face: None."""
    noise = [np.random.default_rng(seed).integers(0, 256, (R, R, 3), dtype=np.uint8) for seed in (0, 1)]
    face, _ = faces.id_similarity(astronaut_aligned.image, noise[0], assume_aligned=True)
    other, _ = faces.id_similarity(astronaut_aligned.image, hopper_aligned.image, assume_aligned=True)
    assert face < other < 0.9
    value, reason = faces.id_similarity(*noise, assume_aligned=True, names=("a.png", "b.png"))
    assert value is None and reason.startswith(f"{faces.NO_FACE} in a.png or b.png; ")
    blurred = [_blurred(_resized(astronaut_aligned.image, side / R)) for side in (48, 40)]
    assert faces.id_similarity(*blurred, assume_aligned=True)[0] is None


@needs_dlib
def test_two_detected_aligned_faces_score_the_same_with_or_without_assume_aligned(
        astronaut_aligned: faces.Alignment, hopper_aligned: faces.Alignment) -> None:
    both = faces.id_similarity(astronaut_aligned.image, hopper_aligned.image, assume_aligned=True)
    assert both == faces.id_similarity(astronaut_aligned.image, hopper_aligned.image)
    assert both[0] == pytest.approx(0.886, abs=0.005) and both[1] is None


def _same_and_other(side: int) -> tuple[list[float], list[float]]:
    """id_similarity at ``side`` px of the aligned astronaut with copies of her (JPEG at 75 and 50; the photo turned
    10 degrees either way, then aligned) and of every one of these with Grace Hopper aligned the same way."""
    def turned(rgb: np.ndarray, degrees: float) -> np.ndarray:
        return np.asarray(Image.fromarray(rgb).rotate(degrees, Image.Resampling.BICUBIC, expand=True,
                                                      fillcolor=(128, 128, 128)))

    astronaut = faces.align_face(_astronaut(), side).image
    copies = [_decoded(_jpeg(astronaut, 75)), _decoded(_jpeg(astronaut, 50)),
              *(faces.align_face(turned(_astronaut(), d), side).image for d in (10, -10))]
    hopper = faces.align_face(_hopper(), side).image
    embed = {k: faces.face_embedding(im) for k, im in enumerate([astronaut, *copies, hopper])}
    assert all(reason is None for _, reason in embed.values()), [r for _, r in embed.values()]
    same = [cosine_similarity(embed[0][0], embed[k][0]) for k in range(1, 5)]
    other = [cosine_similarity(embed[k][0], embed[5][0]) for k in range(5)]
    return same, other


@needs_dlib
@pytest.mark.parametrize("side", [48, 64])
def test_small_aligned_faces_are_found_on_an_enlarged_copy_and_people_still_told_apart(side: int) -> None:
    """Aligned at 48 px the astronaut escapes the detector at her own size; searched enlarged to 256 px she is found
    (as is every copy of her and Grace Hopper), and the same face still scores clearly above another person:
    measured at 48 px at least 0.964 against at most 0.907, at 64 px 0.980 against 0.902."""
    if side == 48:
        assert faces.detect_faces(faces.align_face(_astronaut(), side).image).faces_seen == 0
    same, other = _same_and_other(side)
    assert min(same) > max(other) + 0.03


@needs_dlib
def test_under_40_px_a_face_has_no_descriptor(astronaut_aligned: faces.Alignment) -> None:
    """At 32 px the same face and two people score alike (as low as 0.926 against as high as 0.935): no value."""
    tiny = _resized(astronaut_aligned.image, 32 / R)
    reason = f"the image is 32x32 px, under the {MIN_SIDE} px a face descriptor needs to tell people apart"
    assert faces.face_embedding(tiny, assume_aligned=True) == (None, reason)
    assert faces.id_similarity(tiny, astronaut_aligned.image, names=("tiny.png", "a.png")) == (None,
                                                                                            f"tiny.png: {reason}")


@needs_dlib
def test_the_aligned_face_box_is_where_the_detector_finds_aligned_faces_and_the_whole_image_is_not(
        astronaut_aligned: faces.Alignment, hopper_aligned: faces.Alignment) -> None:
    """Why assume_aligned uses ALIGNED_FACE_BOX and not the whole image: from the whole image's box the descriptor is
    farther from the detector's than two different people's descriptors are from each other."""
    def descriptor(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        return np.asarray(models.face_recognizer().compute_face_descriptor(rgb, shape_in(rgb, box)))

    for alignment in (astronaut_aligned, hopper_aligned):
        rgb = alignment.image
        detected = descriptor(rgb, faces.detect_faces(rgb).box)
        fixed = descriptor(rgb, np.array(ALIGNED_FACE_BOX) * R)
        whole = descriptor(rgb, np.array([0, 0, R - 1, R - 1]))
        assert np.linalg.norm(fixed - detected) < 0.1          # measured 0.02 and 0.05
        assert np.linalg.norm(whole - detected) > 0.4          # measured 0.80 and 0.56


# --- 5. gani align ---------------------------------------------------------------------------------------------------


def _faces_folder(folder: Path) -> Path:
    """astronaut.jpg (examples/photos), grace_hopper.jpg (matplotlib's) and coffee.jpg, without a face."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / "astronaut.jpg", folder / "astronaut.jpg")
    shutil.copy(EXAMPLES / "coffee.jpg", folder / "coffee.jpg")
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), folder / "grace_hopper.jpg")
    return folder


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@needs_dlib
def test_gani_align_writes_an_image_per_face_a_table_and_one_line_per_image_without_a_face(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, out = _faces_folder(tmp_path / "in"), tmp_path / "out"
    assert main(["align", str(images), "--out", str(out), "--resolution", "128", "--quiet"]) == 1
    err = capsys.readouterr().err
    no_face = [line for line in _lines(err) if line.startswith("gani align: no face: ")]
    assert no_face == [f"gani align: no face: {images}/coffee.jpg: {NO_FACE_REASON}"]
    assert _lines(err)[-1] == (f"gani align: 2 aligned, 1 without a face, 0 failed; table "
                               f"{out}/alignment.parquet")
    assert sorted(p.name for p in out.iterdir()) == ["alignment.parquet", "astronaut.png", "grace_hopper.png"]
    assert Image.open(out / "astronaut.png").size == (128, 128)

    table = pd.read_parquet(out / "alignment.parquet").set_index("image_id")
    assert table["status"].to_dict() == {"astronaut": "ok", "coffee": "no_face", "grace_hopper": "ok"}
    ok = table.loc["astronaut"]
    assert np.stack(ok["landmarks"]).shape == (68, 2) and np.stack(ok["quad"]).shape == (4, 2)
    assert ok["faces_seen"] == len(ok["boxes"]) and ok["output"] == "astronaut.png" and ok["resolution"] == 128
    assert ok["aligned_sha256"] == hashlib.sha256((out / "astronaut.png").read_bytes()).hexdigest()
    assert table.loc["coffee"]["reason"].startswith(faces.NO_FACE) and pd.isna(table.loc["coffee"]["output"])


@needs_dlib
def test_gani_align_resumes_keeping_outputs_of_the_same_bytes_and_resolution(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, out = _faces_folder(tmp_path / "in"), tmp_path / "out"
    argv = ["align", str(images), "--out", str(out), "--resolution", "64", "--quiet"]
    assert main(argv) == 1
    written = {name: (out / name).stat().st_mtime_ns for name in ("astronaut.png", "grace_hopper.png")}
    capsys.readouterr()

    assert main(argv) == 1
    assert "gani align: 2 aligned (2 of them kept from before), 1 without a face, 0 failed" in capsys.readouterr().err
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written

    # New bytes under the same name are aligned again; the same bytes touched (a new mtime) are kept.
    (images / "astronaut.jpg").write_bytes(_jpeg(_decoded((images / "astronaut.jpg").read_bytes()), 80))
    os.utime(images / "grace_hopper.jpg", ns=(1, 1))
    assert main(argv) == 1
    assert "gani align: 2 aligned (1 of them kept from before), 1 without a face" in capsys.readouterr().err
    assert (out / "astronaut.png").stat().st_mtime_ns != written["astronaut.png"]
    assert (out / "grace_hopper.png").stat().st_mtime_ns == written["grace_hopper.png"]

    # Another resolution: every image again, and the table says the new one.
    assert main([*argv[:-2], "128", "--quiet"]) == 1
    assert "kept from before" not in capsys.readouterr().err
    assert set(pd.read_parquet(out / "alignment.parquet")["resolution"]) == {128}


@needs_dlib
def test_gani_align_counts_add_up_to_the_images_and_a_failed_line_says_its_path_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rerun over the astronaut, Grace Hopper, coffee and a truncated JPEG: the last line's counts add up to the 4
    images, the kept ones counted among the aligned; the failed line names the file once."""
    images, out = _faces_folder(tmp_path / "in"), tmp_path / "out"
    (images / "broken.jpg").write_bytes((images / "astronaut.jpg").read_bytes()[:5000])
    argv = ["align", str(images), "--out", str(out), "--resolution", "64", "--quiet"]
    for kept in ("", " (2 of them kept from before)"):
        assert main(argv) == 1
        err = _lines(capsys.readouterr().err)
        assert err[-1] == f"gani align: 2 aligned{kept}, 1 without a face, 1 failed; table {out}/alignment.parquet"
        (failed,) = [line for line in err if line.startswith("gani align: failed: ")]
        assert failed.startswith(f"gani align: failed: {images}/broken.jpg: ") and failed.count("broken.jpg") == 1


@needs_dlib
def test_gani_align_into_a_folder_inside_its_input_leaves_its_own_outputs_out_of_the_inputs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`gani align photos --out photos/aligned` run again (the output folder spelt another way too): the aligned
    faces under photos/aligned are not inputs, no name clash; an output folder beside the input changes nothing."""
    monkeypatch.chdir(tmp_path)
    _faces_folder(tmp_path / "photos")
    for out in ("photos/aligned", "photos/aligned", "./photos/../photos/aligned/", str(tmp_path / "photos/aligned")):
        assert main(["align", "photos", "--out", out, "--resolution", "64", "--quiet"]) == 1      # coffee
        err = _lines(capsys.readouterr().err)
        assert err[0].startswith("gani align: 3 image(s) at 64 px"), err
        assert err[-1].startswith("gani align: 2 aligned"), err
    assert sorted(faces.read_table("photos/aligned")) == ["astronaut", "coffee", "grace_hopper"]
    assert main(["align", "photos/aligned", "--out", "photos/aligned", "--quiet"]) == 2    # nothing outside it
    assert _lines(capsys.readouterr().err)[-1] == ("gani align: error: photos/aligned: no image files under it but "
                                                   "in the output folder photos/aligned")


@needs_dlib
def test_gani_align_exits_0_when_every_image_has_a_face_and_2_on_bad_usage(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _faces_folder(tmp_path / "in")
    (images / "coffee.jpg").unlink()
    assert main(["align", str(images), "--out", str(tmp_path / "out"), "--resolution", "64", "--quiet"]) == 0
    assert main(["align", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert _lines(capsys.readouterr().err)[-1] == f"gani align: error: {tmp_path}/missing: no such file or folder"
    with pytest.raises(SystemExit) as exited:
        main(["align", str(images), "--out", str(tmp_path / "out"), "--resolution", "0"])
    assert exited.value.code == 2


def test_gani_align_without_dlib_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    """dlib hidden (sys.modules["dlib"] = None makes its import fail): exit 2, one line, no traceback."""
    code = "import sys; sys.modules['dlib'] = None; from gani_core.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "align", str(EXAMPLES / "astronaut.jpg"), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert _lines(done.stderr) == [f"gani align: error: face alignment and id_similarity need dlib: "
                                   f"{models.INSTALL_HINT}"]


def test_every_faces_entry_point_without_dlib_raises_one_line_saying_what_to_install(no_dlib: None) -> None:
    for call in (lambda: faces.align_face(_astronaut(), 64), lambda: faces.face_embedding(_astronaut()),
                 lambda: faces.id_similarity(_astronaut(), _astronaut()), faces.require):
        with pytest.raises(faces.FacesUnavailableError, match=r"pip install -e '\.\[faces\]'"):
            call()
    assert not faces.available()


@needs_dlib
@pytest.mark.services
def test_gani_align_reads_and_writes_s3_and_align_sources_is_the_task_body(
        s3, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("astronaut.jpg", "coffee.jpg"):
        s3.put_object(Bucket=S3_BUCKET, Key=f"faces-in/{name}", Body=(EXAMPLES / name).read_bytes())
    source, out = f"s3://{S3_BUCKET}/faces-in", f"s3://{S3_BUCKET}/faces-out"
    assert main(["align", source, "--out", out, "--resolution", "64", "--quiet"]) == 1
    assert storage.names_under(out) == {"alignment.parquet", "astronaut.png"}
    assert Image.open(io.BytesIO(storage.read_bytes(f"{out}/astronaut.png"))).size == (64, 64)
    assert {r["image_id"]: r["status"] for r in faces.read_table(out).values()} == {"astronaut": "ok",
                                                                                   "coffee": "no_face"}

    # What a flow's task runs: rows back, the table untouched (the flow writes it once); both reused here.
    seen: list[bool] = []
    rows = faces.align_sources(list_images(source), out, 64, on_row=lambda row, reused: seen.append(reused))
    assert [r["image_id"] for r in rows] == ["astronaut", "coffee"] and seen == [True, True]

    # Another photo named astronaut.jpg under another prefix: refused, the face and its row stay.
    s3.put_object(Bucket=S3_BUCKET, Key="faces-other/astronaut.jpg",
                  Body=Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes())
    face = storage.read_bytes(f"{out}/astronaut.png")
    other = f"s3://{S3_BUCKET}/faces-other"
    capsys.readouterr()
    assert main(["align", other, "--out", out, "--resolution", "64", "--quiet"]) == 1
    assert _lines(capsys.readouterr().err)[1] == (
        f"gani align: failed: {other}/astronaut.jpg: "
        f"{_refusal(out, 'astronaut.png', f'{source}/astronaut.jpg', f'{other}/astronaut.jpg')}")
    assert storage.read_bytes(f"{out}/astronaut.png") == face
    assert faces.read_table(out)["astronaut"]["source_uri"] == f"{source}/astronaut.jpg"


def _refusal(out: str, output: str, theirs: str, ours: str) -> str:
    return (f"{output} in {out} was aligned from {theirs}; {ours} would replace it: use another output folder or "
            "remove it")


@needs_dlib
def test_gani_align_never_replaces_the_face_of_another_photo_of_the_same_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """a/face.jpg (the astronaut) then b/face.jpg (Grace Hopper) into one folder: b is refused in one line, face.png
    and its row stay a's, the others complete (exit 1); at another resolution too. The same photo from another path
    is kept (the face stays a's: c's copy changed later is refused); a/face.jpg edited in place is aligned again;
    face.png removed frees the name."""
    monkeypatch.chdir(tmp_path)
    for folder in ("a", "b", "c"):
        Path(folder).mkdir()
    shutil.copy(EXAMPLES / "astronaut.jpg", "a/face.jpg")
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "b/face.jpg")
    shutil.copy(EXAMPLES / "astronaut.jpg", "b/astronaut.jpg")
    assert main(["align", "a/face.jpg", "--out", "out", "--resolution", "64", "--quiet"]) == 0
    ours = (Path("out/face.png").read_bytes(), faces.read_table("out")["face"])
    capsys.readouterr()

    refused = f"gani align: failed: b/face.jpg: {_refusal('out', 'face.png', 'a/face.jpg', 'b/face.jpg')}"
    for resolution in ("64", "128"):
        assert main(["align", "b", "--out", "out", "--resolution", resolution, "--quiet"]) == 1
        err = _lines(capsys.readouterr().err)
        assert [line for line in err if "face.jpg" in line] == [refused]
        assert err[-1].startswith("gani align: 1 aligned, 0 without a face, 1 failed; ")
        assert (Path("out/face.png").read_bytes(), faces.read_table("out")["face"]) == ours
    assert Path("out/astronaut.png").exists()

    Path("a/face.jpg").write_bytes(_jpeg(_decoded(Path("a/face.jpg").read_bytes()), 80))     # edited in place
    assert main(["align", str(tmp_path / "a/face.jpg"), "--out", "out", "--resolution", "64", "--quiet"]) == 0
    assert Path("out/face.png").read_bytes() != ours[0]
    shutil.copy("a/face.jpg", "c/face.jpg")                         # the same photo from another path: kept
    assert main(["align", "c/face.jpg", "--out", "out", "--resolution", "64", "--quiet"]) == 0
    assert "gani align: 1 aligned (1 of them kept from before), 0 without" in capsys.readouterr().err
    assert faces.read_table("out")["face"]["source"] == str(tmp_path / "a/face.jpg")   # the face is still a's
    Path("c/face.jpg").write_bytes(_jpeg(_decoded(Path("c/face.jpg").read_bytes()), 60))     # c's copy changed
    assert main(["align", "c/face.jpg", "--out", "out", "--resolution", "64", "--quiet"]) == 1
    assert "would replace it" in capsys.readouterr().err
    assert faces.read_table("out")["face"]["source"] == str(tmp_path / "a/face.jpg")
    Path("out/face.png").unlink()                                   # removed: the name is free
    assert main(["align", "b/face.jpg", "--out", "out", "--resolution", "64", "--quiet"]) == 0
    assert faces.read_table("out")["face"]["source"] == "b/face.jpg"


@needs_dlib
def test_inputs_of_one_call_that_would_get_the_same_name_are_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for folder in ("a", "b"):
        Path(folder).mkdir()
    shutil.copy(EXAMPLES / "astronaut.jpg", "a/face.jpg")
    Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).save("b/face.png")
    assert main(["align", "a/face.jpg", "b/face.png", "--out", "out", "--quiet"]) == 2
    assert _lines(capsys.readouterr().err) == ["gani align: error: a/face.jpg and b/face.png would both be aligned "
                                               "to face.png in out: align them into different folders, or rename one"]
    Image.open("b/face.png").save("b/Face.jpg")         # a folder holding both, in folders under it
    assert main(["align", ".", "--out", "out", "--quiet"]) == 2
    assert "./a/face.jpg and ./b/Face.jpg would both be aligned to face.png in out (and 1 more input(s) " in (
        capsys.readouterr().err)
    assert not Path("out").exists()


@needs_dlib
def test_align_sources_refuses_the_same_path_under_another_folder_naming_both_uris(tmp_path: Path) -> None:
    """What the align-dataset flow's tasks run: rows name images by their path under the input folder, so a/face.jpg
    and b/face.jpg are both face.jpg; their URIs tell them apart. The refused row is not stored."""
    for folder, photo in (("a", EXAMPLES / "astronaut.jpg"),
                          ("b", cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))):
        (tmp_path / folder).mkdir()
        shutil.copy(photo, tmp_path / folder / "face.jpg")
    out = str(tmp_path / "out")
    faces.write_table(out, faces.align_sources(list_images(str(tmp_path / "a")), out, 64))
    [row] = faces.align_sources(list_images(str(tmp_path / "b")), out, 64)
    assert row["status"] == "failed" and row[NOT_STORED]
    assert row["reason"] == _refusal(out, "face.png", f"file://{tmp_path}/a/face.jpg", f"file://{tmp_path}/b/face.jpg")
    faces.write_table(out, [row])
    assert faces.read_table(out)["face"]["source_uri"] == f"file://{tmp_path}/a/face.jpg"


# --- 6. gani metrics ------------------------------------------------------------------------------------------------


@needs_dlib
def test_gani_metrics_reports_id_similarity_of_two_faces_and_says_why_not_otherwise(
        tmp_path: Path, astronaut_aligned: faces.Alignment, capsys: pytest.CaptureFixture[str]) -> None:
    for name, quality in (("a.jpg", 95), ("b.jpg", 30)):
        (tmp_path / name).write_bytes(_jpeg(astronaut_aligned.image, quality))
    Image.fromarray(_resized(skimage.data.coffee()[:, :400], R / 400)).save(tmp_path / "coffee.png")
    assert main(["metrics", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "--json"]) == 0
    said = capsys.readouterr()
    assert pd.read_json(io.StringIO(said.out), typ="series")["id_similarity"] > 0.99
    assert "id_similarity" not in said.err

    assert main(["metrics", str(tmp_path / "a.jpg"), str(tmp_path / "coffee.png")]) == 0
    said = capsys.readouterr()
    assert [line for line in _lines(said.out) if "id_similarity" in line] == ["id_similarity  -"]
    assert f"note: id_similarity: not computed: {tmp_path}/coffee.png: {faces.NO_FACE}" in said.err


@needs_dlib
def test_gani_metrics_aligned_needs_the_detector_to_find_a_face_in_one_of_the_two(
        tmp_path: Path, astronaut_aligned: faces.Alignment, hopper_aligned: faces.Alignment,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--aligned: a face against noise is read at the aligned place beside the detected face and scores below
    another person (a note says which image), noise against noise has no value, two aligned faces score as without
    --aligned."""
    for name, rgb in (("a.png", astronaut_aligned.image), ("hopper.png", hopper_aligned.image),
                      *((f"noise{seed}.png", np.random.default_rng(seed).integers(0, 256, (R, R, 3), dtype=np.uint8))
                        for seed in (0, 1))):
        Image.fromarray(rgb).save(tmp_path / name)

    def id_similarity(a: str, b: str, *flags: str) -> tuple[float | None, list[str]]:
        assert main(["metrics", str(tmp_path / a), str(tmp_path / b), "--json", *flags]) == 0
        said = capsys.readouterr()
        return pd.read_json(io.StringIO(said.out), typ="series")["id_similarity"], _lines(said.err)

    faces_apart, notes = id_similarity("a.png", "hopper.png", "--aligned")
    assert (faces_apart, notes) == id_similarity("a.png", "hopper.png")
    assert faces_apart == pytest.approx(0.886, abs=0.005) and notes == []
    noise, notes = id_similarity("a.png", "noise0.png", "--aligned")
    assert noise < faces_apart
    assert notes == [f"note: id_similarity: {tmp_path}/noise0.png: no face detected, read where an aligned face is"]
    none, notes = id_similarity("noise0.png", "noise1.png", "--aligned")
    assert pd.isna(none) and notes == [f"note: id_similarity: not computed: {faces.NO_FACE} in {tmp_path}/noise0.png "
                                       f"or {tmp_path}/noise1.png; an aligned face is read at its place only beside "
                                       "a detected one"]


def test_gani_metrics_without_dlib_gives_the_other_metrics_and_a_note(
        no_dlib: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / name)
    assert main(["metrics", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]) == 0
    said = capsys.readouterr()
    assert any(line.strip().startswith("lpips ") for line in _lines(said.out))
    assert f"note: id_similarity: needs dlib and its face models: {models.INSTALL_HINT}" in _lines(said.err)
