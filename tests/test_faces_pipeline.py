"""Faces inside the inversion pipeline: `gani invert --align ffhq` / `--identity`, the flows' ``inversion.align`` and
``inversion.identity``, id_similarity in the rows, tables and MLflow, and the align-dataset flow.

Real photographs only (examples/faces/README.md): skimage's astronaut at 512 px (where dlib also finds the mission
patch on her suit: two faces seen) and skimage's coffee (no face). Generators: the seeded, untrained
``builtin-random:64`` for `gani invert`, the session's 32 px one for the flows; budgets of 1-2 steps. Tests that need
dlib are skipped, with the reason, where the faces extra is not installed (CI installs it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
import torch
from distributed import Client
from mlflow.tracking import MlflowClient
from PIL import Image

from flows.align_dataset import align_dataset
from flows.invert_dataset import invert_dataset
from flows.parameters import ClusterSettings, InversionSettings
from gani_core import faces
from gani_core.cli import main
from gani_core.faces import models
from gani_core.faces.align import NO_FACE_REASON
from gani_core.faces.detect import as_rgb
from gani_core.faces.ffhq import warp_quad
from gani_core.images import load_image
from gani_core.invert import method_config
from gani_core.metric_registry import names
from gani_core.run_folder import METRICS_SCHEMA, PREVIEW_CELL_MIN
from tasks import mlflow_runs

from .conftest import EXAMPLES

needs_dlib = pytest.mark.skipif(not models.available(), reason="dlib and face-recognition-models are not installed "
                                f"(the faces extra: {models.INSTALL_HINT})")

R = 64                                                      # builtin-random:64's resolution
INVERT = ["--checkpoint", f"builtin-random:{R}", "--pivot-steps", "2", "--quiet"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _photos(folder: Path) -> Path:
    """``folder`` holding astronaut.jpg (skimage's 512 px photo) and coffee.jpg (no face)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.jpg", quality=95)
    shutil.copy(EXAMPLES / "coffee.jpg", folder / "coffee.jpg")
    return folder


def _rows(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["image_id"], r["method"]): r for r in pq.read_table(out / "metrics.parquet").to_pylist()}


def _in_range(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and -1.0 <= value <= 1.0


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`gani invert --align ffhq` of the astronaut and coffee with w (2 pivot steps) and gani (2 + 1 steps)."""
    root = tmp_path_factory.mktemp("aligned-run")
    photos, out = _photos(root / "in"), root / "out"
    argv = ["invert", str(photos), *INVERT, "--method", "w", "gani", "--tune-steps", "1", "--align", "ffhq",
            "--out", str(out)]
    code = main(argv)
    return {"photos": photos, "out": out, "argv": argv, "code": code, "rows": _rows(out)}


# --- gani invert --align ffhq ----------------------------------------------------------------------------------------


@needs_dlib
def test_the_face_is_inverted_aligned_with_its_alignment_and_identity_in_the_row(aligned_run: dict) -> None:
    assert aligned_run["code"] == 1                                 # coffee failed
    for method in ("w", "gani"):
        row = aligned_run["rows"][("astronaut", method)]
        assert row["status"] == "ok" and row["align"] == "ffhq" and row["resolution"] == R
        assert row["faces_seen"] == 2                               # her face and the mission patch
        assert len(row["face_box"]) == 4 and np.array(row["face_quad"]).shape == (4, 2)
        # The untrained generator renders a blob, no face: no identity, and why (never the blob read where an
        # aligned face would be, which scored 0.82-0.97).
        assert row["id_similarity"] is None and row["id_similarity_pivot"] is None, row
        assert row["id_note"].startswith(f"the pivot render: {faces.NO_FACE} ("), row
    assert "the tuned render: no face found" in aligned_run["rows"][("astronaut", "gani")]["id_note"]
    assert "tuned" not in aligned_run["rows"][("astronaut", "w")]["id_note"]     # w tunes nothing: the pivot's


@needs_dlib
def test_a_photo_without_a_face_is_a_failed_row_no_face_found(aligned_run: dict) -> None:
    coffee = (aligned_run["photos"] / "coffee.jpg").read_bytes()
    for method in ("w", "gani"):
        row = aligned_run["rows"][("coffee", method)]
        assert row["status"] == "failed" and row["error"].startswith("NoFaceError: ")
        assert faces.NO_FACE in row["error"] and row["lpips"] is None and row["id_similarity"] is None
        assert (row["align"], row["faces_seen"], row["face_quad"]) == ("ffhq", 0, None)
        assert row["image_sha256"] is None and row["source_sha256"] == _sha256(coffee)
    assert not (aligned_run["out"] / "previews" / "coffee.w.png").exists()     # not a centre crop in disguise


@needs_dlib
def test_the_run_stores_and_hashes_the_aligned_image_which_the_row_reproduces(aligned_run: dict) -> None:
    path = aligned_run["photos"] / "astronaut.jpg"
    alignment = faces.align_file(path, R)
    row = aligned_run["rows"][("astronaut", "w")]
    assert row["image_sha256"] == _sha256(alignment.png())
    assert row["source_sha256"] == _sha256(path.read_bytes())
    # The preview's input column is the aligned face (cells upscaled by a whole factor, nearest).
    preview = np.asarray(Image.open(aligned_run["out"] / "previews" / "astronaut.w.png").convert("RGB"))
    scale = -(-PREVIEW_CELL_MIN // R)
    cell = preview[: R * scale : scale, : R * scale : scale].astype(int)
    expected = (alignment.tensor().permute(1, 2, 0).numpy() * 255).round().astype(int)
    assert np.abs(cell - expected).max() <= 1
    # The row's quad aligns the photo again, pixel for pixel.
    again = warp_quad(as_rgb(load_image(path)), np.array(row["face_quad"]), R)
    assert np.array_equal(again, alignment.image)


@needs_dlib
def test_a_row_of_a_face_run_stays_small(aligned_run: dict) -> None:
    """A million rows: the alignment columns (quad, box, faces seen) add about 200 bytes, no landmarks."""
    row = aligned_run["rows"][("astronaut", "gani")]
    assert len(json.dumps(row)) < 2048 and "face_landmarks" not in METRICS_SCHEMA.names


@needs_dlib
def test_a_rerun_keeps_every_row_without_reading_the_inputs(aligned_run: dict, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Other bytes of the same size put back with the old modification time: a read would find no image in them."""
    photos, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(aligned_run["photos"], photos, copy_function=shutil.copy2)
    shutil.copytree(aligned_run["out"], out)
    for path in photos.iterdir():
        before = path.stat()
        path.write_bytes(b"X" * before.st_size)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    capsys.readouterr()
    argv = [str(photos) if a == str(aligned_run["photos"]) else str(out) if a == str(aligned_run["out"]) else a
            for a in aligned_run["argv"]]
    assert main(argv) == 1
    assert "(2 ok, 2 failed, 4 kept from an earlier run, 2 of them an image without a face)" in capsys.readouterr().err
    assert _rows(out) == aligned_run["rows"]


@needs_dlib
def test_a_touched_input_is_read_and_kept_when_its_bytes_are_the_ones_aligned(aligned_run: dict,
                                                                            tmp_path: Path) -> None:
    """Its listing's fingerprint changed: the file is hashed and compared with the row's source_sha256 (its
    image_sha256 is the aligned face's)."""
    from gani_core.checkpoints.ref import resolve_checkpoint
    from gani_core.dataset import list_images
    from gani_core.run_folder import RunFolder

    photos = tmp_path / "in"
    shutil.copytree(aligned_run["photos"], photos, copy_function=shutil.copy)      # new times, the same bytes
    images = list_images(str(photos))
    assert all(image.stat != row["source_stat"] for image in images
               for (image_id, _), row in aligned_run["rows"].items() if image_id == image.image_id)
    hashes = {"w": method_config("w", 2, align="ffhq").resume_hashes(),
              "gani": method_config("gani", 2, 1, align="ffhq").resume_hashes()}
    checkpoint = resolve_checkpoint(f"builtin-random:{R}").sha256
    kept = RunFolder(str(aligned_run["out"])).reusable_rows(images, hashes, checkpoint)
    assert set(kept) == set(aligned_run["rows"])


@needs_dlib
def test_runs_with_and_without_alignment_are_different_configurations(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert method_config("w", 2, align="ffhq").config_hash() != method_config("w", 2).config_hash()
    assert method_config("w", 2, align="ffhq") == method_config("w", 2, align="ffhq", identity=True)
    photos, out = _photos(tmp_path / "in"), tmp_path / "out"
    (photos / "coffee.jpg").unlink()
    plain = ["invert", str(photos), *INVERT, "--method", "w", "--out", str(out)]
    assert main([*plain, "--align", "ffhq"]) == 0
    aligned = _rows(out)[("astronaut", "w")]

    assert main(plain) == 0                                         # without: computed again, centre-cropped
    err = capsys.readouterr().err
    assert "kept from an earlier run" not in err and "replaced 1 result(s) of another configuration (w 1)" in err
    row = _rows(out)[("astronaut", "w")]
    assert row["config_hash"] != aligned["config_hash"]
    assert row["image_sha256"] == _sha256((photos / "astronaut.jpg").read_bytes())
    assert (row["align"], row["faces_seen"], row["source_sha256"], row["id_similarity"]) == (None, None, None, None)

    # A run without faces: `gani show` has no identity columns (they would be `-` throughout), rows nor means.
    assert all(r["id_similarity"] is None for r in _rows(out).values())
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "lpips" in shown.splitlines()[1].split() and "id_similarity" not in shown

    assert main([*plain, "--align", "ffhq"]) == 0                   # with it again: computed again
    assert "replaced 1 result(s)" in capsys.readouterr().err
    assert _rows(out)[("astronaut", "w")]["image_sha256"] == aligned["image_sha256"]


@needs_dlib
def test_identity_on_faces_aligned_by_gani_align(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos, aligned, out = _photos(tmp_path / "in"), tmp_path / "aligned", tmp_path / "out"
    assert main(["align", str(photos), "--out", str(aligned), "--resolution", str(R), "--quiet"]) == 1   # coffee
    assert main(["invert", str(aligned), *INVERT, "--method", "w", "--identity", "--out", str(out)]) == 0
    row = _rows(out)[("astronaut", "w")]
    # Measured, and null: the input's face is found, the untrained generator's render holds none (a blob).
    assert row["id_similarity"] is None and row["id_similarity_pivot"] is None
    assert row["id_note"].startswith(f"the pivot render: {faces.NO_FACE} (")
    assert row["align"] is None and row["image_sha256"] == _sha256((aligned / "astronaut.png").read_bytes())
    assert "aligned faces (id_similarity)" in capsys.readouterr().err
    assert main(["show", str(out)]) == 0
    assert "aligned faces (id_similarity)" in capsys.readouterr().out       # its configuration says so


def _aligned_faces() -> torch.Tensor:
    """The astronaut and Grace Hopper aligned at R px, [2, 3, R, R] in [0, 1]."""
    from matplotlib import cbook

    hopper = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return torch.stack([faces.align_face(skimage.data.astronaut(), R).tensor(), faces.align_file(hopper, R).tensor()])


def _jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """``images`` [K, 3, R, R] in [0, 1] through JPEG at ``quality``: the same faces, other pixels."""
    from io import BytesIO

    def one(image: torch.Tensor) -> torch.Tensor:
        buffer = BytesIO()
        Image.fromarray(as_rgb(image)).save(buffer, "JPEG", quality=quality)
        return torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1).float() / 255

    return torch.stack([one(image) for image in images])


@needs_dlib
def test_id_similarity_is_its_formula_for_each_image_of_a_batch() -> None:
    """identity_metrics (what measure_images gives a face run) of two aligned faces whose renders are faces: each
    gets the cosine of the descriptors of its input and of its render, computed here one by one. Renders of real
    faces (their JPEG copies as the pivots', the other person as the tuned one) stand for a generator that draws
    faces, which no generator of the tests does."""
    from gani_core.faces.identity import cosine_similarity, face_embedding
    from gani_core.metrics import identity_metrics

    images = _aligned_faces()
    pivots, tuned = _jpeg(images, 50), images.flip(0)
    rows = identity_metrics(images, pivots, tuned)
    for i, row in enumerate(rows):
        e = [face_embedding(x, assume_aligned=True)[0] for x in (images[i], pivots[i], tuned[i])]
        assert row["id_similarity_pivot"] == pytest.approx(cosine_similarity(e[0], e[1]), abs=1e-4)
        assert row["id_similarity"] == pytest.approx(cosine_similarity(e[0], e[2]), abs=1e-4)
        assert row["id_similarity_pivot"] > 0.95 > row["id_similarity"] and row["id_note"] is None, row
    assert identity_metrics(images, pivots)[0]["id_similarity"] == rows[0]["id_similarity_pivot"]   # tunes nothing


@needs_dlib
def test_renders_without_a_face_have_no_identity_never_the_blob_where_a_face_would_be() -> None:
    """measure_images of the two aligned faces with the untrained generator, whose renders are blobs: null values and
    the reason in id_note. Read where an aligned face would be, the blob would have scored like a face."""
    from gani_core import build_builtin
    from gani_core.editing import random_directions
    from gani_core.faces.identity import aligned_face_box, cosine_similarity, descriptor_at, face_embedding
    from gani_core.measure import measure_images
    from gani_core.metrics import to_unit

    g64 = build_builtin(R)
    images = _aligned_faces()
    w = g64.mapping(torch.randn(2, g64.z_dim, generator=torch.Generator().manual_seed(0)), None)
    directions = random_directions(g64.w_dim, 2, seed=0)
    measured = measure_images(g64, images, w, [{}, {}], [{}, {}], directions=directions, strength=1.0,
                              preview_offset=directions[0], locality_count=4, seed=0, identity=True)
    for i, m in enumerate(measured):
        assert m.metrics["id_similarity"] is None and m.metrics["id_similarity_pivot"] is None
        assert m.id_note == f"the pivot render: {NO_FACE_REASON}"
        blob = as_rgb(to_unit(g64.synthesis(w[i : i + 1], noise_mode="const"))[0])
        face = face_embedding(images[i], assume_aligned=True)[0]
        assert cosine_similarity(face, descriptor_at(blob, aligned_face_box(blob))) > 0.8     # what it was


@needs_dlib
def test_an_input_without_a_face_has_no_identity_even_when_told_it_is_aligned(tmp_path: Path) -> None:
    """--identity on an image without a face (the coffee cup, at the generator's 64 px): null id_similarity and the
    reason, never the similarity of whatever lies where an aligned face would be."""
    from PIL import Image

    cup = tmp_path / "in" / "coffee.png"
    cup.parent.mkdir()
    Image.fromarray(skimage.data.coffee()).resize((R, R)).save(cup)
    out = tmp_path / "out"
    assert main(["invert", str(cup.parent), *INVERT, "--method", "w", "--identity", "--out", str(out)]) == 0
    row = _rows(out)[("coffee", "w")]
    assert row["status"] == "ok" and row["id_similarity"] is None and row["id_similarity_pivot"] is None
    assert row["id_note"].startswith("the input: no face found")


@pytest.mark.parametrize("flag", [["--align", "ffhq"], ["--identity"]])
def test_without_dlib_align_and_identity_are_refused_in_one_line(no_dlib: None, flag: list[str], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["invert", str(EXAMPLES / "astronaut.jpg"), *INVERT, "--method", "w", *flag, "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"gani invert: error: face alignment and id_similarity need dlib: {models.INSTALL_HINT}"]
    assert not out.exists()
    with pytest.raises(faces.FacesUnavailableError, match=r"pip install -e '\.\[faces\]'"):
        InversionSettings(align="ffhq").configs(["w"])


@needs_dlib
def test_gani_metrics_measures_small_aligned_faces_and_aligned_reads_a_missed_one_beside_a_found_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At 48 px the detector misses the aligned astronaut at her size and finds her enlarged (gani_core.faces.identity):
    measured without --aligned. Blurred, as a poor render is, she is missed even enlarged: --aligned reads her at the
    aligned place beside the sharp copy, not beside another blurred one."""
    from PIL import ImageFilter

    face = faces.align_face(skimage.data.astronaut(), 48).image
    for name, quality in (("a.jpg", 95), ("b.jpg", 40)):
        Image.fromarray(face).save(tmp_path / name, quality=quality)
    for name, radius in (("blurred.png", 1.0), ("blurred2.png", 1.5)):
        Image.fromarray(face).filter(ImageFilter.GaussianBlur(radius)).save(tmp_path / name)

    def id_similarity(a: str, b: str, *flags: str) -> float | None:
        assert main(["metrics", str(tmp_path / a), str(tmp_path / b), "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out)["id_similarity"]

    assert id_similarity("a.jpg", "b.jpg") > 0.95                           # measured 0.986
    assert id_similarity("a.jpg", "blurred.png") is None
    assert id_similarity("a.jpg", "blurred.png", "--aligned") > 0.95        # measured 0.964
    assert id_similarity("blurred.png", "blurred2.png", "--aligned") is None


# --- the flows ---------------------------------------------------------------------------------------------------


def test_align_dataset_refuses_bad_input_in_one_line_before_prefect_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.align_dataset import main as align_main

    assert align_main(["--input-uri", str(tmp_path / "missing"), "--output-uri", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "input_uri" in err[0] and str(tmp_path / "missing") in err[0]
    # Two images under the input that would be aligned to one NAME.png (as gani align refuses them).
    for folder, suffix in (("a", ".jpg"), ("b", ".png")):
        (tmp_path / "photos" / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "photos" / folder / f"face{suffix}")
    assert align_main(["--input-uri", str(tmp_path / "photos"), "--output-uri", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "a/face.jpg and b/face.png would both be aligned to face.png" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def flow_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _photos(tmp_path_factory.mktemp("flow-photos"))


@needs_dlib
@pytest.mark.services
def test_invert_dataset_aligns_on_the_worker_and_logs_id_similarity(
        flow_photos: Path, cluster: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alignment made impossible in this process (the flow's): the workers, other processes, align (at 64 px: the
    input's face must be found by the detector for an id_similarity)."""
    import gani_core.faces.align

    def not_here(*_: object, **__: object) -> None:
        raise AssertionError("aligned in the flow's process, not on a worker")

    monkeypatch.setattr(gani_core.faces.align, "align_file", not_here)
    out, db = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    s = invert_dataset(input_uri=str(flow_photos), output_uri=str(out), checkpoint=f"builtin-random:{R}",
                       method="w", inversion=InversionSettings(pivot_steps=1, align="ffhq"), mlflow_tracking_uri=db,
                       cluster=ClusterSettings(dask_address=cluster.scheduler.address))
    assert (s["ok"], s["failed"]) == (1, 1)
    monkeypatch.undo()
    rows = _rows(out)
    face = rows[("astronaut", "w")]
    assert face["image_sha256"] == _sha256(faces.align_file(flow_photos / "astronaut.jpg", R).png())
    assert face["align"] == "ffhq" and face["faces_seen"] == 2 and face["id_similarity"] is None
    assert face["id_note"].startswith("the pivot render: no face found")       # the generator renders a blob
    assert rows[("coffee", "w")]["error"].startswith("NoFaceError: ")

    run = MlflowClient(tracking_uri=db).get_run(s["mlflow_run_id"])
    assert "id_similarity_mean" not in run.data.metrics
    assert run.data.params["align"] == "ffhq"
    assert "id_similarity" in mlflow_runs.HEADLINE_METRICS and "id_similarity" in names("run")


@needs_dlib
@pytest.mark.services
def test_align_dataset_aligns_on_dask_writes_the_table_once_and_resumes(
        flow_photos: Path, cluster: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "aligned"
    common = {"input_uri": str(flow_photos), "output_uri": str(out), "resolution": R,
              "cluster": ClusterSettings(dask_address=cluster.scheduler.address)}
    s = align_dataset(**common)
    assert {k: s[k] for k in ("images", "ok", "no_face", "failed", "skipped", "computed")} == {
        "images": 2, "ok": 1, "no_face": 1, "failed": 1, "skipped": 0, "computed": 2}
    assert sorted(p.name for p in out.iterdir()) == ["alignment.parquet", "astronaut.png"]
    assert (out / "astronaut.png").read_bytes() == faces.align_file(flow_photos / "astronaut.jpg", R).png()
    table = faces.read_table(str(out))
    assert {i: r["status"] for i, r in table.items()} == {"astronaut": "ok", "coffee": "no_face"}
    from flows.cli import print_summary

    capsys.readouterr()
    print_summary(align_dataset, s)         # what the shell prints: no MLflow run, no previews (it raised before)
    said = capsys.readouterr().out
    assert f"aligned faces under {out}; invert them with:" in said and "MLflow" not in said and "previews" not in said
    assert table["astronaut"]["faces_seen"] == 2 and np.array(table["astronaut"]["landmarks"]).shape == (68, 2)

    written = (out / "alignment.parquet").stat().st_mtime_ns
    again = align_dataset(**common)
    assert (again["skipped"], again["computed"], again["ok"]) == (2, 0, 1)     # nothing read, no cluster
    assert (out / "alignment.parquet").stat().st_mtime_ns == written


def test_the_registry_carries_id_similarity_everywhere_null_safe() -> None:
    """The schema, the displayed columns, the summary's and MLflow's metrics and the runs view derive from the
    registry; a run of another domain shows `-`."""
    from gani_core.metric_registry import METRICS, summarise
    from gani_core.run_folder import DISPLAY_COLUMNS

    assert names("faces") == ("id_similarity", "id_similarity_pivot")
    for name in names("faces"):
        assert METRICS_SCHEMA.field(name).type == pa.float64() and name in DISPLAY_COLUMNS
        assert name in mlflow_runs.RUN_METRICS and METRICS[name].better == "higher"
    assert "metrics.`id_similarity_mean`" in mlflow_runs.RUNS_VIEW_COLUMNS
    assert summarise([{"status": "ok", "id_similarity": None}], names("faces"))["id_similarity"]["mean"] is None
    assert METRICS["id_similarity"].format(None) == "-"
    assert "ArcFace" in METRICS["id_similarity"].description
