"""`gani invert` / `show` / `export`: the run's tables, a bad image as a failed row, the exported generator."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from gani_core import load_generator
from gani_core.cli import main as cli_main
from gani_core.images import load_image
from gani_core.metrics import metric_notes, ms_ssim_note, mse
from gani_core.run_folder import METRICS_SCHEMA, RunFolder

from .conftest import EXAMPLES, PHOTO_NAMES, REPO


def _argv(images: Path, out: Path) -> list[str]:
    return ["invert", *sorted(str(p) for p in images.iterdir()), "--checkpoint", "builtin-random:32",
            "--method", "gani", "wplus", "--pivot-steps", "8", "--tune-steps", "8", "--out", str(out), "--quiet"]


@pytest.fixture(scope="module")
def run(photos_with_broken: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small run: two photos and a corrupt file, gani and wplus, on the 32 px built-in generator."""
    out = tmp_path_factory.mktemp("run") / "out"
    assert cli_main(_argv(photos_with_broken, out)) == 1     # the corrupt file's rows failed, the others are ok
    return out


def test_metrics_table_has_a_row_per_image_and_method(run):
    table = pq.read_table(run / "metrics.parquet")
    assert table.schema.equals(METRICS_SCHEMA)
    rows = table.to_pylist()
    assert sorted((r["image_id"], r["method"]) for r in rows) == [
        ("astronaut", "gani"), ("astronaut", "wplus"), ("broken", "gani"), ("broken", "wplus"),
        ("coffee", "gani"), ("coffee", "wplus")]
    ok = [r for r in rows if r["image_id"] != "broken"]
    assert all(r["status"] == "ok" and r["error"] is None and 0 < r["lpips"] < 1 for r in ok)
    assert all(len(r["image_sha256"]) == 64 and r["checkpoint"] == "builtin-random:32" for r in ok)


def test_bad_image_is_a_failed_row_with_its_reason(run):
    rows = [r for r in pq.read_table(run / "metrics.parquet").to_pylist() if r["image_id"] == "broken"]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("broken.png" in r["error"] and "ImageError" in r["error"] for r in rows)
    assert rows[0]["image_sha256"] is not None and rows[0]["lpips"] is None


def test_deltas_previews_and_summary_are_written(run):
    assert sorted(p.name for p in (run / "deltas").iterdir()) == [
        "astronaut.gani.parquet", "astronaut.wplus.parquet", "coffee.gani.parquet", "coffee.wplus.parquet"]
    with Image.open(run / "previews" / "astronaut.gani.png") as preview:     # 4 cells of 32 px, upscaled 6x
        assert preview.width == 4 * 192 and preview.height > 192
    summary = json.loads((run / "summary.json").read_text())
    assert summary["images"] == 3 and summary["failed"] == 2
    assert summary["methods"]["gani"]["ok"] == 2 and "broken" in summary["methods"]["gani"]["failures"]
    assert summary["generator_label"].startswith("built-in, untrained")
    assert not list(run.rglob("*.tmp"))


def test_show_prints_the_table(run, capsys):
    assert cli_main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "astronaut  gani" in out and "failed: broken [wplus]" in out and "means over ok images" in out


def test_export_writes_a_loadable_tuned_generator(run, tmp_path):
    path = tmp_path / "astronaut.safetensors"
    assert cli_main(["export", str(run), "astronaut", "--out", str(path)]) == 0
    tuned = load_generator(path)
    assert "tuned to astronaut by gani" in tuned.label
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    w = torch.tensor(json.loads(meta["w_pivot"])).reshape(tuned.num_ws, tuned.w_dim)
    row = next(r for r in pq.read_table(run / "metrics.parquet").to_pylist()
               if (r["image_id"], r["method"]) == ("astronaut", "gani"))
    with torch.no_grad():
        render = (tuned.synthesis(w[None]).clamp(-1, 1) + 1) / 2
    target = load_image(EXAMPLES / "astronaut.jpg", resolution=32)
    assert mse(render, target[None]).item() == pytest.approx(row["mse"], rel=1e-3)


def test_export_takes_gani_else_pti_whatever_the_order_of_the_run(tmp_path):
    out = tmp_path / "run"
    assert cli_main(["invert", str(EXAMPLES / "astronaut.jpg"), "--checkpoint", "builtin-random:32", "--method",
                     "pti", "gani", "--pivot-steps", "1", "--tune-steps", "1", "--out", str(out), "--quiet"]) == 0
    assert cli_main(["export", str(out), "astronaut", "--out", str(tmp_path / "a.safetensors")]) == 0
    assert load_generator(tmp_path / "a.safetensors").label.endswith("by gani")
    assert cli_main(["export", str(out), "astronaut", "--method", "pti", "--out", str(tmp_path / "b.safetensors")]) == 0
    assert load_generator(tmp_path / "b.safetensors").label.endswith("by pti")


def test_export_of_unknown_image_is_a_clear_error(run, tmp_path, capsys):
    assert cli_main(["export", str(run), "nope", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert f"no image 'nope' in this run; `gani show {run}` lists its images" in capsys.readouterr().err
    assert cli_main(["export", str(run), "broken", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "no successful tuned result for image 'broken'" in capsys.readouterr().err


def test_show_of_a_folder_without_a_run(tmp_path, capsys):
    assert cli_main(["show", str(tmp_path)]) == 2
    assert "no metrics.parquet" in capsys.readouterr().err
    (tmp_path / "configs").mkdir()                  # a run interrupted before its first batch ended
    (tmp_path / "configs" / "0123456789abcdef.json").write_text("{}")
    assert cli_main(["show", str(tmp_path)]) == 2
    assert "a run started here but no result is done yet" in capsys.readouterr().err


def test_a_run_where_every_image_failed_does_not_claim_previews(tmp_path, capsys):
    """Stranger test of issue 22: deltas and previews are written for ok results only; a rerun says that the kept
    failure is an unreadable image's (the one kind of failure a rerun keeps)."""
    (tmp_path / "bad.png").write_bytes(b"not an image")
    argv = ["invert", str(tmp_path / "bad.png"), "--checkpoint", "builtin-random:32", "--method", "w",
            "--pivot-steps", "1", "--out", str(tmp_path / "out"), "--quiet"]
    assert cli_main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "deltas/" not in last and "previews/" not in last and "(0 ok, 1 failed)" in last
    assert cli_main(argv) == 1
    assert "1 kept from an earlier run, 1 of them an image that cannot be read" in capsys.readouterr().err


def test_a_rerun_resumes_computing_only_what_is_missing(run, photos_with_broken, capsys):
    """The same command again keeps every result (the corrupt image's failure too); a lost row is recomputed."""
    argv = _argv(photos_with_broken, run)
    files = sorted(p for sub in ("rows", "deltas", "previews") for p in (run / sub).iterdir())
    before = {p: p.stat().st_mtime_ns for p in files}
    assert cli_main(argv) == 1                          # the kept failure of the corrupt image still counts
    assert {p: p.stat().st_mtime_ns for p in files} == before
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["skipped"], summary["computed"]) == (6, 0)
    assert "6 kept from an earlier run" in capsys.readouterr().err

    # Interrupted before coffee's wplus result was done: no tables, and no part holding it.
    (run / "metrics.parquet").unlink()
    (run / "summary.json").unlink()
    part = next(p for p in (run / "rows").iterdir()
                if ("coffee", "wplus") in [(r["image_id"], r["method"]) for r in pq.read_table(p).to_pylist()])
    lost = pq.read_table(part).num_rows         # coffee, and broken, read (and failed) just before its batch
    part.unlink()
    assert cli_main(argv) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["skipped"], summary["computed"]) == (6 - lost, lost)
    assert part.is_file()                                   # the same batch again: the same part


# --- the MS-SSIM caveat, once per run -----------------------------------------------------------------------------


def _three_images(out: Path) -> list[str]:
    return ["invert", *(str(EXAMPLES / f"{name}.jpg") for name in PHOTO_NAMES[:3]), "--checkpoint",
            "builtin-random:32", "--method", "gani", "wplus", "--pivot-steps", "2", "--tune-steps", "2",
            "--out", str(out), "--quiet"]


def test_gani_invert_prints_the_ms_ssim_caveat_once(tmp_path):
    """3 images x 2 methods at 32 px: the caveat of MS-SSIM with 2 of its 5 scales is one line for the run, not a
    Python warning per process (or, before, per image in the flows' workers)."""
    gani = "import sys; from gani_core.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", gani, *_three_images(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line for line in (done.stdout + done.stderr).splitlines() if "scales" in line] == [ms_ssim_note(32)]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["notes"] == metric_notes(32)


def test_each_run_in_one_process_states_the_ms_ssim_caveat_once(tmp_path, caplog, recwarn):
    """Runs one after the other in a process (a notebook, these tests): each says it once; ms_ssim's own warning,
    once per process, is left to the runs."""
    for name in ("first", "second"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gani_core.invert_files"):
            assert cli_main(_three_images(tmp_path / name)) == 0
        assert [r.getMessage() for r in caplog.records if "scales" in r.getMessage()] == [ms_ssim_note(32)]
    assert not [w for w in recwarn if "scales" in str(w.message)]


# --- issue 22: what a run folder holds across invocations ---------------------------------------------------------


def test_a_rerun_with_other_methods_keeps_the_earlier_results_in_the_tables(tmp_path, capsys):
    """gani + pti, then gani alone with another budget: the tables keep pti (and its configuration), gani's rows
    are the new configuration's; show names each row's configuration; export still finds pti."""
    out = tmp_path / "run"
    common = [str(EXAMPLES / "astronaut.jpg"), "--checkpoint", "builtin-random:32", "--pivot-steps", "1",
              "--out", str(out), "--quiet"]
    assert cli_main(["invert", *common, "--method", "gani", "pti", "--tune-steps", "1"]) == 0
    assert cli_main(["invert", *common, "--method", "gani", "--tune-steps", "2"]) == 0
    assert "the tables also hold 1 result(s) of earlier runs" in capsys.readouterr().err
    rows = {r["method"]: r for r in pq.read_table(out / "metrics.parquet").to_pylist()}
    assert sorted(rows) == ["gani", "pti"] and rows["gani"]["tune_steps"] == 2 and rows["pti"]["tune_steps"] == 1
    gani_hash, pti_hash = rows["gani"]["config_hash"], rows["pti"]["config_hash"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows"], summary["ok"]) == (2, 2)
    assert summary["methods"]["gani"]["config_hash"] == gani_hash and list(summary["methods"]["gani"]["configs"]) \
        == [gani_hash] and summary["methods"]["gani"]["config"]["tune"]["steps"] == 2
    assert summary["methods"]["pti"]["configs"][pti_hash]["tune"]["steps"] == 1      # from configs/, once per folder
    assert summary["methods"]["pti"]["config"] == summary["methods"]["pti"]["configs"][pti_hash]
    stored = {p.stem: json.loads(p.read_text())["method"] for p in (out / "configs").iterdir()}
    assert stored[gani_hash] == "gani" and stored[pti_hash] == "pti" and len(stored) == 3
    assert cli_main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "incomplete" not in shown
    assert f"{pti_hash[:8]}  pti       pivot 1 steps, tune 1 steps" in shown
    assert f"{gani_hash[:8]}  gani      pivot 1 steps, tune 2 steps" in shown
    assert f"astronaut  pti     ok      {pti_hash[:8]}" in shown
    assert cli_main(["export", str(out), "astronaut", "--method", "pti", "--out", str(tmp_path / "p.safetensors")]) == 0
    assert load_generator(tmp_path / "p.safetensors").label.endswith("by pti")


def test_show_and_export_read_an_interrupted_run_from_its_rows(run, tmp_path, capsys):
    """Without metrics.parquet and summary.json (a run interrupted or still running, issue 22), show and export
    work from rows/ and say that the run is incomplete; the same when the tables of an earlier run lack a row."""
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "metrics.parquet").unlink()
    (out / "summary.json").unlink()
    assert cli_main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "incomplete: 6 result(s) on disk, tables not written yet (interrupted or still running" in shown
    assert "astronaut  gani" in shown and "failed: broken [wplus]" in shown and "means over ok images" in shown
    assert "3 image(s), 2 failed row(s)" in shown
    assert cli_main(["export", str(out), "coffee", "--out", str(tmp_path / "c.safetensors")]) == 0
    assert "incomplete: 6 result(s) on disk" in capsys.readouterr().err
    assert load_generator(tmp_path / "c.safetensors").label.endswith("tuned to coffee by gani")

    shutil.copy(run / "metrics.parquet", out)               # an earlier run's tables, and a row they lack
    shutil.copy(run / "summary.json", out)
    row = next(r for r in pq.read_table(out / "metrics.parquet").to_pylist()
               if (r["image_id"], r["method"]) == ("coffee", "gani"))
    shutil.copy(out / "deltas" / "coffee.gani.parquet", out / "deltas" / "later.gani.parquet")
    RunFolder(str(out)).write_part([{**row, "image_id": "later", "finished": time.time()}])
    assert cli_main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "incomplete: 7 result(s) on disk, the tables of an earlier run lack 1 of them" in shown
    assert "later      gani" in shown and "4 image(s)" in shown
    # A row as gani wrote them before issue 18 (rows/IMAGE.METHOD.json), ok without its deltas file: no result.
    (out / "rows" / "older.gani.json").write_text(json.dumps({**row, "image_id": "older"}))
    assert cli_main(["show", str(out)]) == 0
    assert "incomplete: 7 result(s) on disk" in capsys.readouterr().out


def test_images_with_one_name_in_two_folders_keep_their_source(tmp_path, capsys):
    """a/img.jpg and b/img.jpg become img and img-1; every row and table says which file each came from, a failed
    row too (issue 22)."""
    photos = tmp_path / "photos"
    for sub, name in (("a", "astronaut.jpg"), ("b", "coffee.jpg")):
        (photos / sub).mkdir(parents=True)
        shutil.copy(EXAMPLES / name, photos / sub / "img.jpg")
    (photos / "b" / "c").mkdir()
    (photos / "b" / "c" / "img.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert cli_main(["invert", str(photos), "--checkpoint", "builtin-random:32", "--method", "w", "--pivot-steps",
                     "1", "--out", str(out), "--quiet"]) == 1     # img.png is not an image: its row failed
    expected = {"img": f"{photos}/a/img.jpg", "img-1": f"{photos}/b/c/img.png", "img-2": f"{photos}/b/img.jpg"}
    table = pq.read_table(out / "metrics.parquet").to_pylist()
    assert {r["image_id"]: r["source"] for r in table} == expected
    assert {r["image_id"]: r["status"] for r in table}["img-1"] == "failed"
    rows = {r["image_id"]: r["source"] for p in (out / "rows").iterdir() for r in pq.read_table(p).to_pylist()}
    assert rows == expected
    capsys.readouterr()
    assert cli_main(["show", str(out)]) == 0
    assert f"{photos}/b/img.jpg" in capsys.readouterr().out


def test_an_id_names_one_file_across_the_runs_into_a_folder(tmp_path, capsys):
    """a/img.jpg inverted, then b/img.jpg alone into the same folder: b gets an id of its own (img-1), a's result
    stays; the run of both folders then keeps both (each file under the id its rows hold); the same file by another
    path (a copy) is the same image. Before, b took `img` and replaced a's result."""
    photos = tmp_path / "photos"
    for sub, name in (("a", "astronaut.jpg"), ("b", "coffee.jpg")):
        (photos / sub).mkdir(parents=True)
        shutil.copy(EXAMPLES / name, photos / sub / "img.jpg")
    out = tmp_path / "out"
    argv = ["--checkpoint", "builtin-random:32", "--method", "w", "--pivot-steps", "1", "--out", str(out), "--quiet"]

    def sources() -> dict[str, str]:
        return {r["image_id"]: r["source"] for r in pq.read_table(out / "metrics.parquet").to_pylist()}

    assert cli_main(["invert", str(photos / "a" / "img.jpg"), *argv]) == 0
    deltas = (out / "deltas" / "img.w.parquet").read_bytes()
    assert cli_main(["invert", str(photos / "b" / "img.jpg"), *argv]) == 0
    assert sources() == {"img": f"{photos}/a/img.jpg", "img-1": f"{photos}/b/img.jpg"}
    assert (out / "deltas" / "img.w.parquet").read_bytes() == deltas
    capsys.readouterr()
    assert cli_main(["invert", str(photos / "b"), str(photos / "a"), *argv]) == 0
    assert "2 kept from an earlier run" in capsys.readouterr().err
    assert sources() == {"img": f"{photos}/a/img.jpg", "img-1": f"{photos}/b/img.jpg"}
    (tmp_path / "moved").mkdir()
    shutil.copy(photos / "a" / "img.jpg", tmp_path / "moved" / "img.jpg")       # another path, the same bytes
    assert cli_main(["invert", str(tmp_path / "moved" / "img.jpg"), *argv]) == 0
    assert "1 kept from an earlier run" in capsys.readouterr().err and set(sources()) == {"img", "img-1"}


def test_a_run_kept_inside_its_input_folder_is_not_its_own_input(tmp_path, capsys):
    """`gani invert photos --out photos/run` twice: the second run keeps the first's result and inverts none of its
    previews (before: ids preview_grid and img.w, inverted as new images)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(EXAMPLES / "astronaut.jpg", photos / "img.jpg")
    argv = ["invert", str(photos), "--checkpoint", "builtin-random:32", "--method", "w", "--pivot-steps", "1",
            "--out", str(photos / "run"), "--quiet"]
    assert cli_main(argv) == 0
    assert (photos / "run" / "preview_grid.png").is_file()
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert "1 kept from an earlier run" in capsys.readouterr().err
    assert [r["image_id"] for r in pq.read_table(photos / "run" / "metrics.parquet").to_pylist()] == ["img"]


@pytest.mark.parametrize("under", ["", "sub"])
def test_an_output_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys, under):
    """`--out` an existing file, or a path under one (issue 22): exit 2 with one line naming the option, nothing
    loaded or written, the file untouched."""
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    out = taken / under if under else taken
    image = str(REPO / "examples" / "shapes" / "shapes-2026-000.png")
    assert cli_main(["invert", image, "--checkpoint", "builtin-random:32", "--method", "w", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gani invert: error: --out {out} ") and "Traceback" not in err[0]
    assert taken.read_text() == "mine"
