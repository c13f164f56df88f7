"""RunFolder: the paths of a run, the row schema, the resume rule, and the tables read back."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.dataset import image_sources, list_images
from gani_core.deltas import deltas_table, write_deltas_parquet
from gani_core.errors import GaniError
from gani_core.invert import method_config
from gani_core.metric_registry import METRICS, names
from gani_core.metrics import lpips_note, ms_ssim_note
from gani_core.run_folder import (
    DISPLAY_COLUMNS,
    METRICS_SCHEMA,
    RunFolder,
    complete_row,
    failed_row,
    rows_table,
    summarise,
)

CFG = method_config("gani", pivot_steps=2, tune_steps=2)
CKPT = resolve_checkpoint("builtin-random:32")


@pytest.fixture
def images(tmp_path: Path) -> list:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.png").write_bytes(f"bytes of {name}".encode())
    return list_images(str(folder))


def _ok_row(folder: RunFolder, image, cfg=CFG, ckpt=CKPT) -> dict:
    """An ok result of ``image`` as a run writes it: its deltas file, then its row in a part."""
    sha = hashlib.sha256(Path(image.source).read_bytes()).hexdigest()
    row = complete_row({"image_id": image.image_id, "source_stat": image.stat, "image_sha256": sha,
                        "method": cfg.method, "status": "ok", "error": None, "lpips": 0.1,
                        "deltas_file_bytes": 4}, cfg, ckpt)
    Path(folder.deltas_uri(image.image_id, cfg.method)).parent.mkdir(parents=True, exist_ok=True)
    Path(folder.deltas_uri(image.image_id, cfg.method)).write_bytes(b"PAR1")
    folder.write_part([row])
    return rows_table([row]).to_pylist()[0]     # as read back: every column, null where the row has none


def _legacy_row(folder: RunFolder, row: dict, **extra: object) -> None:
    """``row`` as gani wrote rows before issue 18: rows/IMAGE.METHOD.json, the pivot as text in it."""
    Path(folder.row_uri(row["image_id"], row["method"])).parent.mkdir(parents=True, exist_ok=True)
    Path(folder.row_uri(row["image_id"], row["method"])).write_text(json.dumps({**row, **extra}))


def test_paths_of_a_result_are_named_by_image_and_method(tmp_path: Path) -> None:
    folder = RunFolder(str(tmp_path) + "/")
    assert folder.row_uri("cat", "gani") == f"{tmp_path}/rows/cat.gani.json"
    assert folder.deltas_uri("cat", "pti") == f"{tmp_path}/deltas/cat.pti.parquet"
    assert folder.preview_uri("cat", "w") == f"{tmp_path}/previews/cat.w.png"
    assert (folder.metrics_uri, folder.summary_uri) == (f"{tmp_path}/metrics.parquet", f"{tmp_path}/summary.json")
    assert RunFolder("s3://bucket/runs/r1/").row_uri("x", "gani") == "s3://bucket/runs/r1/rows/x.gani.json"


def test_a_row_gets_the_run_columns_and_no_infinities() -> None:
    row = complete_row({"image_id": "x", "method": "gani", "status": "ok", "psnr": math.inf, "mse": math.nan,
                        "lpips": 0.25}, CFG, CKPT, device="cpu")
    assert row["psnr"] is None and row["mse"] is None and row["lpips"] == 0.25
    assert (row["checkpoint"], row["checkpoint_sha256"], row["config_hash"]) == (
        "builtin-random:32", CKPT.sha256, CFG.config_hash())
    assert row["generator_label"] == CKPT.label and row["device"] == "cpu"
    assert set(row) <= set(METRICS_SCHEMA.names)


def test_rows_table_has_the_schema_and_nulls_for_missing_columns() -> None:
    table = rows_table([failed_row("x", CFG, CKPT, "ImageError: x.png: file is empty (0 bytes)")])
    assert table.schema.equals(METRICS_SCHEMA)
    row = table.to_pylist()[0]
    assert row["status"] == "failed" and row["lpips"] is None and row["error"].startswith("ImageError")
    assert rows_table([]).num_rows == 0


def test_the_registry_drives_the_schema() -> None:
    """Every metric a run reports is a column, typed as the registry says; the quality metrics in its order."""
    for name in names("run"):
        expected = pa.int64() if METRICS[name].integer else pa.float64()
        assert METRICS_SCHEMA.field(name).type == expected, name
        assert name in DISPLAY_COLUMNS
    first = METRICS_SCHEMA.names.index(names("result")[0])
    assert tuple(METRICS_SCHEMA.names[first : first + len(names("result"))]) == names("result")
    assert METRICS_SCHEMA.field("delta_bytes").type == pa.int64()


def test_rows_table_refuses_a_misspelt_column() -> None:
    row = complete_row({"image_id": "x", "method": "gani", "status": "ok", "lpips": 0.1}, CFG, CKPT)
    assert rows_table([row]).to_pylist()[0]["lpips"] == 0.1
    with pytest.raises(KeyError, match=r"metrics\.parquet: unknown column\(s\) \['lpip', 'psnr_db'\]"):
        rows_table([row, {**row, "lpip": 0.1, "psnr_db": 30.0}])


def test_summary_means_are_over_ok_rows_with_a_value() -> None:
    rows = [complete_row({"image_id": i, "method": "gani", "status": status, "error": None, "lpips": lpips,
                          "delta_bytes": size, "edit_accuracy": None}, CFG, CKPT)
            for i, status, lpips, size in (("a", "ok", 0.1, 100), ("b", "ok", 0.4, 200), ("c", "ok", None, 600),
                                           ("d", "failed", 9.0, 5000))]
    means = summarise(rows, {"gani": CFG}, CKPT, "out", started=0.0)["methods"]["gani"]["mean"]
    assert tuple(means) == names("run")
    assert means["lpips"] == pytest.approx(0.25) and means["delta_bytes"] == pytest.approx(300.0)
    assert means["edit_accuracy"] is None and means["mse"] is None


@pytest.mark.parametrize(("sizes", "notes"), [
    ((32,), [ms_ssim_note(32), lpips_note(32)]),
    ((256,), []),
    ((64,), [ms_ssim_note(64)]),
    ((32, 32, 256, 64), [ms_ssim_note(32), lpips_note(32), ms_ssim_note(64)]),      # one note per size, once
])
def test_summary_notes_say_once_per_size_what_its_metrics_leave_out(sizes: tuple[int, ...], notes: list) -> None:
    rows = [complete_row({"image_id": f"i{n}", "method": "gani", "status": "ok", "error": None, "resolution": size},
                         CFG, CKPT) for n, size in enumerate(sizes)]
    assert summarise(rows, {"gani": CFG}, CKPT, "out", started=0.0)["notes"] == notes


def test_resume_keeps_ok_rows_with_deltas_for_the_same_bytes_checkpoint_and_config(images, tmp_path: Path) -> None:
    folder = RunFolder(str(tmp_path / "out"))
    a, b, c = images
    kept_row = _ok_row(folder, a)
    # An ok row of gani before issue 18 without its deltas file was cut short: computed again.
    sha = hashlib.sha256(Path(b.source).read_bytes()).hexdigest()
    _legacy_row(folder, complete_row({"image_id": "b", "image_sha256": sha, "method": "gani", "status": "ok"},
                                     CFG, CKPT))
    folder.write_part([failed_row(c.image_id, CFG, CKPT, "OSError: disk full")])   # not the image's fault: again
    kept = folder.reusable_rows(images, {"gani": CFG.resume_hashes()}, CKPT.sha256)
    assert kept == {("a", "gani"): kept_row}


def test_resume_keeps_a_failure_of_the_image_itself(images, tmp_path: Path) -> None:
    folder = RunFolder(str(tmp_path / "out"))
    sha = hashlib.sha256(Path(images[0].source).read_bytes()).hexdigest()
    folder.write_part([failed_row("a", CFG, CKPT, "ImageError: a.png: truncated", sha)])
    assert set(folder.reusable_rows(images, {"gani": CFG.resume_hashes()}, CKPT.sha256)) == {("a", "gani")}


@pytest.mark.parametrize("change", ["bytes", "checkpoint", "config", "method"])
def test_resume_recomputes_when_anything_in_the_key_changed(images, tmp_path: Path, change: str) -> None:
    folder = RunFolder(str(tmp_path / "out"))
    _ok_row(folder, images[0])
    hashes, sha = {"gani": CFG.resume_hashes()}, CKPT.sha256
    if change == "bytes":
        Path(images[0].source).write_bytes(b"other bytes under the same name")
        images = list_images(str(Path(images[0].source).parent))      # the rerun lists its input again
    elif change == "checkpoint":
        sha = resolve_checkpoint("builtin-random:64").sha256
    elif change == "config":
        hashes = {"gani": method_config("gani", pivot_steps=3, tune_steps=2).resume_hashes()}
    else:
        hashes = {"pti": method_config("pti", pivot_steps=2, tune_steps=2).resume_hashes()}
    assert folder.reusable_rows(images, hashes, sha) == {}


def test_resume_reads_no_input_whose_listing_is_unchanged(images, tmp_path: Path) -> None:
    """The row's fingerprint of the file (size, modification time) equals the listing's: kept without reading it.
    Shown by other bytes of the same size put back with the old modification time: a read would see them."""
    folder = RunFolder(str(tmp_path / "out"))
    kept_row = _ok_row(folder, images[0])
    source = Path(images[0].source)
    before = source.stat()
    source.write_bytes(b"X" * before.st_size)
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = list_images(str(source.parent))
    assert again[0].stat == images[0].stat
    assert folder.reusable_rows(again, {"gani": CFG.resume_hashes()}, CKPT.sha256) == {("a", "gani"): kept_row}


def test_resume_of_a_touched_file_reads_it_and_keeps_the_row_when_its_bytes_are_the_same(images, tmp_path) -> None:
    """A copied or touched file (another modification time): its bytes decide; the same bytes keep the row, other
    bytes of the same size do not."""
    folder = RunFolder(str(tmp_path / "out"))
    kept_row = _ok_row(folder, images[0])
    source = Path(images[0].source)
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    again = list_images(str(source.parent))
    assert again[0].stat != images[0].stat
    assert folder.reusable_rows(again, {"gani": CFG.resume_hashes()}, CKPT.sha256) == {("a", "gani"): kept_row}
    source.write_bytes(b"Y" * source.stat().st_size)
    assert folder.reusable_rows(list_images(str(source.parent)), {"gani": CFG.resume_hashes()}, CKPT.sha256) == {}


def test_an_ok_row_whose_deltas_file_is_gone_is_computed_again(images, tmp_path: Path) -> None:
    """The result is its deltas file: a row whose file was deleted or moved is not kept (deltas/ listed once)."""
    folder = RunFolder(str(tmp_path / "out"))
    kept_row = _ok_row(folder, images[0])
    hashes = {"gani": CFG.resume_hashes()}
    assert folder.reusable_rows(images[:1], hashes, CKPT.sha256) == {("a", "gani"): kept_row}
    Path(folder.deltas_uri("a", "gani")).unlink()
    assert folder.reusable_rows(images[:1], hashes, CKPT.sha256) == {}


@pytest.mark.parametrize("damage", ["truncated", "empty", "overwritten"])
def test_an_ok_row_whose_deltas_file_is_not_the_one_written_is_computed_again(images, tmp_path: Path,
                                                                             damage: str) -> None:
    """A deltas file the listing shows at another size than its row recorded (or empty) is not the result: computed
    again, without reading any deltas file. A row written before the size was recorded keeps a non-empty file."""
    folder = RunFolder(str(tmp_path / "out"))
    _ok_row(folder, images[0])
    deltas = Path(folder.deltas_uri("a", "gani"))
    deltas.write_bytes({"truncated": b"PA", "empty": b"", "overwritten": b"garbage bytes"}[damage])
    hashes = {"gani": CFG.resume_hashes()}
    assert folder.reusable_rows(images[:1], hashes, CKPT.sha256) == {}
    older = _ok_row(RunFolder(str(tmp_path / "older")), images[0])
    older_folder = RunFolder(str(tmp_path / "older2"))
    older_folder.write_part([{**older, "deltas_file_bytes": None}])
    Path(older_folder.deltas_uri("a", "gani")).parent.mkdir(parents=True)
    Path(older_folder.deltas_uri("a", "gani")).write_bytes(b"" if damage == "empty" else b"any size")
    kept = older_folder.reusable_rows(images[:1], hashes, CKPT.sha256)
    assert set(kept) == (set() if damage == "empty" else {("a", "gani")})


def test_the_newest_row_of_a_result_wins_and_parts_older_than_the_table_are_not_read(images, tmp_path) -> None:
    folder = RunFolder(str(tmp_path / "out"))
    old = folder.write_part([failed_row("a", CFG, CKPT, "ConnectionError: s3 down")])
    new = _ok_row(folder, images[0])                                 # computed again later: its part wins
    assert folder.stored_rows()[("a", "gani")] == new
    summary = summarise([new], {"gani": CFG}, CKPT, folder.uri, started=0.0)
    folder.write_tables([new], summary)
    # A part older than the tables is in them already: not read (a part that says otherwise shows it).
    Path(old).write_bytes(b"not parquet")
    past = Path(folder.metrics_uri).stat().st_mtime - 60
    os.utime(old, (past, past))
    run = folder.read_run()
    assert run.complete and [r["status"] for r in run.rows] == ["ok"]
    folder.write_part([failed_row("b", CFG, CKPT, "ImageError: b.png: not an image")])   # written since
    run = folder.read_run()
    assert not run.complete and run.on_disk == 1 and [r["image_id"] for r in run.rows] == ["a", "b"]


def test_rows_of_gani_before_issue_18_are_read_and_their_pivot_too(images, tmp_path: Path) -> None:
    """rows/IMAGE.METHOD.json with the pivot as text in it: read as rows (the pivot column dropped), and
    read_pivot finds the pivot in it when the deltas file has none."""
    folder = RunFolder(str(tmp_path / "out"))
    sha = hashlib.sha256(Path(images[0].source).read_bytes()).hexdigest()
    row = complete_row({"image_id": "a", "image_sha256": sha, "method": "gani", "status": "ok"}, CFG, CKPT)
    _legacy_row(folder, row, w_pivot=[0.5, -1.0, 2.0])
    Path(folder.deltas_uri("a", "gani")).parent.mkdir(parents=True)
    write_deltas_parquet(deltas_table("a", []), folder.deltas_uri("a", "gani"))
    stored = folder.stored_rows()[("a", "gani")]
    assert "w_pivot" not in stored and stored["image_sha256"] == sha
    assert folder.read_pivot("a", "gani").tolist() == [0.5, -1.0, 2.0]
    assert set(folder.reusable_rows(images, {"gani": CFG.resume_hashes()}, CKPT.sha256)) == {("a", "gani")}


def test_the_pivot_is_stored_with_the_deltas_and_a_row_stays_small(tmp_path: Path) -> None:
    """The pivot is binary, in the deltas file; a row holds no pivot (before issue 18 it was ~21 KB of text)."""
    folder = RunFolder(str(tmp_path))
    pivot = torch.randn(18, 512)
    Path(folder.deltas_uri("a", "gani")).parent.mkdir(parents=True)
    write_deltas_parquet(deltas_table("a", []), folder.deltas_uri("a", "gani"), pivot)
    assert torch.equal(folder.read_pivot("a", "gani"), pivot)
    row = complete_row({"image_id": "a" * 120, "source": "x/" * 100, "source_stat": "123:etag:" + "f" * 32,
                        "image_sha256": "0" * 64, "method": "gani", "status": "ok",
                        **{n: 0.123456789 for n in names("result")}}, CFG, CKPT, device="cuda:0")
    assert len(json.dumps(row)) < 2048


def test_tables_are_written_and_read_back(images, tmp_path: Path) -> None:
    folder = RunFolder(str(tmp_path / "out"))
    rows = [_ok_row(folder, images[0]), failed_row("b", CFG, CKPT, "ImageError: b.png: not an image")]
    summary = summarise(rows, {"gani": CFG}, CKPT, folder.uri, started=0.0, skipped=0)
    written = folder.write_tables(rows, summary)
    assert set(written) == {"metrics.parquet", "summary.json"}        # no preview of the ok row: no grid
    assert [r["image_id"] for r in folder.read_rows()] == ["a", "b"]
    back = folder.read_summary()
    assert (back["images"], back["ok"], back["failed"], back["skipped"]) == (2, 1, 1, 0)
    assert back["methods"]["gani"]["mean"]["lpips"] == pytest.approx(0.1)
    assert back["methods"]["gani"]["failures"] == {"b": "ImageError: b.png: not an image"}
    assert json.loads(Path(folder.summary_uri).read_text()) == back


def test_reading_a_folder_without_a_run_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no metrics\.parquet"):
        RunFolder(str(tmp_path)).read_rows()


def test_list_images_keeps_each_path_relative_to_the_input_root(tmp_path: Path) -> None:
    """a/img.jpg and b/img.jpg get the ids img and img-1, and keep where each came from (issue 22)."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "img.jpg").write_bytes(b"not read here")
    found = list_images(str(tmp_path))
    assert [(i.image_id, i.input_path, i.source_path) for i in found] == [("img", "a/img.jpg", "a/img.jpg"),
                                                                         ("img-1", "b/img.jpg", "b/img.jpg")]
    assert list_images(str(tmp_path / "b" / "img.jpg"))[0].input_path == "img.jpg"
    assert image_sources(["x/cat.png"])[0].source_path == "x/cat.png"


def test_image_ids_are_stems_made_unique_and_safe() -> None:
    ids = [s.image_id for s in image_sources(["x/cat.png", "y/cat.jpg", "z/a b#c.png", "../.png", "..x.png"])]
    assert ids == ["cat", "cat-1", "a_b_c", "png", "x"]


def test_written_files_follow_the_umask_not_mkstemps_owner_only_mode(tmp_path: Path) -> None:
    """A run folder is readable by the other users the umask allows (mkstemp alone gives 0600)."""
    import os
    import stat

    from gani_core import storage

    storage.write_bytes(tmp_path / "summary.json", b"{}")
    mode = stat.S_IMODE(os.stat(tmp_path / "summary.json").st_mode)
    assert mode == 0o666 & ~storage._UMASK       # 0644 under the usual umask 022


def test_the_registry_formats_a_mean_of_an_integer_metric_as_a_whole_number() -> None:
    """delta_bytes is an integer column; its mean over images (a float) is shown rounded, wherever it is shown."""
    from gani_core.metric_registry import METRICS

    assert METRICS["delta_bytes"].format(479626.7) == "479,627"
    assert METRICS["delta_bytes"].format(426166) == "426,166"
    assert METRICS["lpips"].format(float("nan")) == METRICS["delta_bytes"].format(None) == "-"


@pytest.mark.parametrize("table", ["metrics.parquet", "summary.json"])
def test_a_damaged_table_is_made_again_from_the_rows_and_said_once(images, tmp_path: Path, table: str) -> None:
    """A table cut short (or overwritten) locks nothing: the rows come from rows/ (metrics.parquet) or the table
    (summary.json), the summary is made from them, and the note names the file."""
    folder = RunFolder(str(tmp_path / "out"))
    rows = [_ok_row(folder, image) for image in images[:2]]
    folder.write_tables(rows, summarise(rows, {"gani": CFG}, CKPT, folder.uri, started=0.0))
    damaged = Path(folder.uri) / table
    damaged.write_bytes(damaged.read_bytes()[:20])
    run = folder.read_run()
    assert sorted(r["image_id"] for r in run.rows) == ["a", "b"] and run.summary["images"] == 2
    assert not run.complete and str(damaged) in run.incomplete_note and "<Buffer>" not in run.incomplete_note
    assert "\n" not in run.incomplete_note


def test_an_edits_folder_or_a_file_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "edits").mkdir()
    (tmp_path / "edits" / "edits.parquet").write_bytes(b"PAR1")
    with pytest.raises(GaniError, match=r"is an edits folder \(gani edit's output\); give the run folder"):
        RunFolder(str(tmp_path / "edits")).read_run()
    with pytest.raises(GaniError, match="is a file; give a run folder"):
        RunFolder(str(tmp_path / "edits" / "edits.parquet")).read_run()
    with pytest.raises(FileNotFoundError, match="no such folder; give a run folder"):
        RunFolder(str(tmp_path / "nowhere")).read_run()
