"""The identity an edit keeps (issue 20): ``id_similarity_edit`` in edits.parquet, the cosine similarity of dlib's face
descriptors of the tuned generator's edit at a strength and of its unedited render (strength 0), for runs that measured
identity; null for the others, and where dlib is missing. With it, the edit metrics' one definition in the registry.

A real photograph (skimage's astronaut, as tests/test_faces_pipeline.py), inverted with ``--align ffhq`` on the seeded,
untrained ``builtin-random:64`` (budgets of 1-2 steps), then edited along ``pca:0``. Tests that need dlib are skipped,
with the reason, where the faces extra is not installed.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
import torch
from PIL import Image

from gani_core import load_generator
from gani_core.cli import main
from gani_core.directions import parse_directions
from gani_core.edit_runs import EDITS_SCHEMA, EditFolder, EditPlan, edit_images
from gani_core.evaluation.report import ROWS_SCHEMA
from gani_core.faces import models
from gani_core.faces.detect import as_rgb
from gani_core.faces.identity import cosine_similarity, face_embedding
from gani_core.metric_registry import METRICS, names
from gani_core.metrics import to_unit
from gani_core.run_folder import METRICS_SCHEMA, RunFolder
from tasks import mlflow_runs
from tasks.editing import task_rows

needs_dlib = pytest.mark.skipif(not models.available(), reason="dlib and face-recognition-models are not installed "
                                f"(the faces extra: {models.INSTALL_HINT})")

CHECKPOINT = "builtin-random:64"
INVERT = ["--checkpoint", CHECKPOINT, "--method", "gani", "--pivot-steps", "2", "--tune-steps", "1", "--quiet"]
STRENGTHS = (-2.0, 0.0, 2.0, 8.0)          # 8: far enough along pca:0 that the face changes
R = 64                                     # its resolution
EDIT = ["--direction", "pca:0", "--strengths", *(f"{s:g}" for s in STRENGTHS), "--quiet"]


def _main(argv: list[str]) -> int:
    """``main(argv)`` with its output swallowed (module fixtures have no capsys)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def _edits(folder: Path) -> dict[float, dict]:
    """The astronaut's rows of ``folder``/edits.parquet, by strength."""
    rows = pq.read_table(folder / "edits.parquet").to_pylist()
    return {r["strength"]: r for r in rows if r["image_id"] == "astronaut"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("edit-identity-photos")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.jpg", quality=95)
    return folder


@pytest.fixture(scope="module")
def face_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`gani invert --align ffhq` of the astronaut with gani, then `gani edit` along pca:0 into RUN/edits."""
    out = tmp_path_factory.mktemp("face-run") / "run"
    assert _main(["invert", str(photos), *INVERT, "--align", "ffhq", "--out", str(out)]) == 0
    assert _main(["edit", str(out), *EDIT]) == 0
    return out


# --- face runs -------------------------------------------------------------------------------------------------------


@needs_dlib
def test_an_edit_whose_renders_hold_no_face_has_a_null_identity(face_run: Path) -> None:
    """The untrained generator renders blobs, no face: the run's id_similarity is null (id_note says which render),
    and so is every edit's id_similarity_edit (never the blob read where an aligned face would be: 0.90-0.97)."""
    run_row = next(r for r in RunFolder(face_run).read_run().rows if r["image_id"] == "astronaut")
    assert run_row["id_similarity"] is None and "the tuned render: no face found" in run_row["id_note"]
    rows = _edits(face_run / "edits")
    assert sorted(rows) == list(STRENGTHS) and all(r["status"] == "ok" for r in rows.values())
    assert all(r["id_similarity_edit"] is None for r in rows.values())
    assert "id_similarity_edit_mean" not in mlflow_runs.edit_metrics(list(rows.values()))


@needs_dlib
def test_id_similarity_edit_is_the_cosine_of_the_two_renders_descriptors_and_null_without_a_face() -> None:
    """edit_runs' id_similarity_edit of one image's renders [S, 3, R, R] along strengths, strength 0 first, renders
    of real faces standing for a generator that draws them (none of the tests' does): the astronaut aligned, her JPEG
    copy, Grace Hopper, and a blob (the untrained generator's render). 1 unedited, the same person high, another
    person lower, each the cosine computed by hand; the blob null."""
    from matplotlib import cbook

    from gani_core import faces
    from gani_core.edit_runs import _identity_kept

    hopper = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    face = faces.align_face(skimage.data.astronaut(), R).tensor()
    buffer = io.BytesIO()
    Image.fromarray(as_rgb(face)).save(buffer, "JPEG", quality=50)
    copy = torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1).float() / 255
    G = load_generator(CHECKPOINT)
    with torch.no_grad():
        z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0))
        blob = to_unit(G.synthesis(G.mapping(z, None), noise_mode="const"))[0]
    renders = torch.stack([face, copy, faces.align_file(hopper, R).tensor(), blob])
    kept = _identity_kept(renders[None] * 2 - 1, 0, [True])[0]
    e = [face_embedding(r, assume_aligned=True)[0] for r in renders]
    assert e[3] is None
    assert kept[:3] == pytest.approx([cosine_similarity(x, e[0]) for x in e[:3]], abs=1e-4)
    assert kept[0] >= 0.999 and kept[1] > 0.95 > kept[2] and math.isnan(kept[3]), kept


@needs_dlib
def test_the_flows_task_rows_carry_what_the_identity_needs(face_run: Path, tmp_path: Path) -> None:
    """What an edit-dataset task is sent (tasks.editing.task_rows, not the whole row) gives the same values (here
    null: the renders hold no face)."""
    folder = RunFolder(face_run)
    rows = [r for r in folder.read_run().rows if r["status"] == "ok"]
    G = load_generator(CHECKPOINT)
    plan = EditPlan(tuple(parse_directions(["pca:0"], G, rows[0]["checkpoint_sha256"])), STRENGTHS)
    new = edit_images(G, folder, EditFolder(str(tmp_path / "edits")), task_rows(rows), plan)
    cli = _edits(face_run / "edits")
    assert {r["strength"]: r["id_similarity_edit"] for r in new} == {s: cli[s]["id_similarity_edit"] for s in STRENGTHS}


@needs_dlib
def test_the_edit_means_leave_strength_0_out_of_id_similarity_edit(face_run: Path) -> None:
    """The face run's edit rows, given values (its renders have none: no face)."""
    rows = [{**r, "id_similarity_edit": 1.0 if r["strength"] == 0 else 0.9 - 0.01 * r["strength"]}
            for r in _edits(face_run / "edits").values()]
    moved = [r["id_similarity_edit"] for r in rows if r["strength"] != 0]
    means = mlflow_runs.edit_metrics(rows)
    assert means["id_similarity_edit_mean"] == pytest.approx(sum(moved) / len(moved))
    assert means["id_similarity_edit.pca-0.s0"] == pytest.approx(1.0)


@needs_dlib
def test_without_dlib_an_edit_of_a_face_run_has_a_null_identity_and_no_error(face_run: Path, no_dlib: None,
                                                                             tmp_path: Path) -> None:
    out = tmp_path / "edits"
    assert _main(["edit", str(face_run), *EDIT, "--out", str(out)]) == 0
    rows = _edits(out)
    assert all(r["status"] == "ok" and r["id_similarity_edit"] is None for r in rows.values())
    assert all(r["lpips_to_original_edit"] is not None for r in rows.values())


@needs_dlib
def test_an_edits_folder_written_before_the_column_reads_it_as_null_and_is_resumed(face_run: Path,
                                                                                  tmp_path: Path) -> None:
    old = tmp_path / "edits"
    shutil.copytree(face_run / "edits", old, ignore=shutil.ignore_patterns("rows"))
    table = pq.read_table(old / "edits.parquet")
    pq.write_table(table.drop_columns(["id_similarity_edit"]), old / "edits.parquet")
    assert _main(["edit", str(face_run), *EDIT, "--out", str(old)]) == 0
    assert not (old / "rows").exists()                     # nothing computed again: every edit kept
    after = pq.read_table(old / "edits.parquet")
    assert after.schema.equals(EDITS_SCHEMA)
    assert after.column("id_similarity_edit").null_count == after.num_rows


# --- runs that did not measure identity ------------------------------------------------------------------------------


def test_an_edit_of_a_run_without_identity_has_a_null_id_similarity_edit(photos: Path, tmp_path: Path) -> None:
    """The same photo, inverted without --align or --identity: its row's id_similarity is null, and so is the edit's."""
    out = tmp_path / "run"
    assert _main(["invert", str(photos), *INVERT, "--out", str(out)]) == 0
    assert _main(["edit", str(out), *EDIT]) == 0
    rows = _edits(out / "edits")
    assert sorted(rows) == list(STRENGTHS)
    assert all(r["status"] == "ok" and r["id_similarity_edit"] is None for r in rows.values())
    assert "id_similarity_edit_mean" not in mlflow_runs.edit_metrics(list(rows.values()))


# --- one definition per metric ---------------------------------------------------------------------------------------


def test_the_edit_metrics_are_defined_once_in_the_registry_and_only_in_edit_tables() -> None:
    edit = ("lpips_to_original_edit", "factor_change", "factor_change_original", "id_similarity_edit")
    assert names("edit") == mlflow_runs.EDIT_METRICS == edit
    assert tuple(n for n in EDITS_SCHEMA.names if n in METRICS) == edit      # edits.parquet's metric columns
    assert {f"metrics.`{n}_mean`" for n in edit} <= set(mlflow_runs.EDIT_VIEW_COLUMNS)
    for group in ("result", "run", "benchmark", "headline", "curve"):
        assert not set(edit) & set(names(group)), group
    assert not set(edit) & set(METRICS_SCHEMA.names) and not set(edit) & set(ROWS_SCHEMA.names)
    assert METRICS["lpips_to_original_edit"].better == "lower"
    assert all(METRICS[n].better == "higher" for n in edit[1:])
    assert METRICS["factor_change"].over_strengths == "signed"
    assert METRICS["id_similarity_edit"].over_strengths == "nonzero"


def test_the_domain_benchmark_has_no_face_columns() -> None:
    """No faces in its domain: id_similarity would be a column always null there."""
    assert not set(names("faces")) & set(names("benchmark")) and not set(names("faces")) & set(ROWS_SCHEMA.names)
    assert set(names("faces")) <= set(names("run"))          # where face runs report them
