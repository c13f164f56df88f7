"""`gani edit` (issue 19): a run's images edited along latent directions, each through its own tuned generator and the
original one: strips, GIFs and edits.parquet; exact renders, batches, resuming, bad input, S3."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from gani_core import Generator, load_generator
from gani_core import edit_runs as edit_runs_mod
from gani_core.cli import main
from gani_core.deltas import apply_deltas
from gani_core.directions import parse_directions
from gani_core.edit_runs import EDITS_SCHEMA, render_edits, stack_deltas
from gani_core.run_folder import RunFolder

from .conftest import BROKEN_PNG, EXAMPLES, S3_BUCKET

STRENGTHS = ["-2", "0", "2"]


@dataclass
class Said:
    code: int
    out: str
    err: str

    @property
    def last(self) -> str:
        return [line for line in self.err.splitlines() if line.strip()][-1]


def _run(argv: list[str]) -> Said:
    """``main(argv)`` in this process, what it printed captured (module fixtures have no capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:       # argparse's errors
            code = int(exc.code or 0)
    return Said(code, out.getvalue(), err.getvalue())


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def run(factor_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run: astronaut, coffee and a corrupt PNG, gani and w, on the factor-carrying 32 px generator."""
    images = tmp_path_factory.mktemp("edit-images")
    for name in ("astronaut.jpg", "coffee.jpg"):
        shutil.copy(EXAMPLES / name, images / name)
    (images / "broken.png").write_bytes(BROKEN_PNG)
    out = tmp_path_factory.mktemp("edit-run") / "run"
    said = _run(["invert", str(images), "--checkpoint", str(factor_checkpoint), "--method", "gani", "w",
                 "--pivot-steps", "2", "--tune-steps", "3", "--batch-size", "3", "--out", str(out), "--quiet"])
    assert said.code == 1, said.err        # the corrupt PNG's rows failed, the others are ok
    return out


@pytest.fixture(scope="module")
def smile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A direction in W saved with numpy.save: [128], the 32 px generator's w_dim."""
    path = tmp_path_factory.mktemp("directions") / "smile.npy"
    np.save(path, np.random.default_rng(0).standard_normal(128).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def edited(run: Path, smile: Path) -> Said:
    """`gani edit RUN` of every ok image: the .npy direction and a factor, three strengths, GIFs, into RUN/edits."""
    return _run(["edit", str(run), "--direction", str(smile), "--direction", "factor:hue", "--strengths", *STRENGTHS,
                 "--gif", "--quiet"])


def _copy(run: Path, tmp_path: Path) -> Path:
    """A copy of the run (without its edits) that a test may change."""
    copied = tmp_path / "run"
    shutil.copytree(run, copied, ignore=shutil.ignore_patterns("edits"))
    return copied


# --- outputs -------------------------------------------------------------------------------------------------------


def test_every_ok_image_gets_a_labelled_strip_per_direction(edited: Said, run: Path) -> None:
    assert edited.code == 0, edited.err
    assert edited.last == f"4 strip(s) written, 0 kept, 0 failed -> {run / 'edits'}"
    strips = run / "edits" / "strips"
    assert sorted(p.name for p in strips.iterdir()) == [
        "astronaut.gani.factor-hue.png", "astronaut.gani.smile.png", "coffee.gani.factor-hue.png",
        "coffee.gani.smile.png"]
    with Image.open(strips / "astronaut.gani.smile.png") as strip:
        assert strip.text["Columns"] == "input | -2 W units | 0 W units | +2 W units"
        assert strip.text["Rows"] == "original | tuned (gani)"
        assert strip.text["Description"].startswith(f"astronaut | gani | {smile_spec(run)}")
        assert strip.width > 4 * 192 and strip.height > 2 * 192      # 32 px cells, upscaled 6x, and the labels
    with Image.open(strips / "coffee.gani.factor-hue.png") as strip:
        assert strip.text["Columns"] == "input | -2 steps | 0 steps | +2 steps"


def smile_spec(run: Path) -> str:
    return next(r["spec"] for r in _rows(run / "edits" / "edits.parquet") if r["direction"] == "smile")


def test_the_strip_shows_the_input_from_the_runs_preview(edited: Said, run: Path) -> None:
    with Image.open(run / "previews" / "astronaut.gani.png") as preview:
        cell = preview.width // 4
        expected = np.asarray(preview.convert("RGB").crop((0, 0, cell, cell)))
    with Image.open(run / "edits" / "strips" / "astronaut.gani.smile.png") as strip:
        label_width = strip.width - 4 * cell
        for row in range(2):        # the input at the left of both rows
            box = (label_width, row * cell, label_width + cell, (row + 1) * cell)
            assert np.array_equal(np.asarray(strip.convert("RGB").crop(box)), expected)


def test_a_gif_goes_through_the_strengths_and_back(edited: Said, run: Path) -> None:
    gifs = run / "edits" / "gifs"
    assert sorted(p.name for p in gifs.iterdir()) == [
        "astronaut.gani.factor-hue.gif", "astronaut.gani.smile.gif", "coffee.gani.factor-hue.gif",
        "coffee.gani.smile.gif"]
    with Image.open(gifs / "astronaut.gani.smile.gif") as gif:
        assert gif.n_frames == 4 and gif.info["loop"] == 0       # -2, 0, 2, 0
        assert gif.width == 192


def test_edits_table_has_a_row_per_image_direction_and_strength(edited: Said, run: Path) -> None:
    table = pq.read_table(run / "edits" / "edits.parquet")
    assert table.schema.equals(EDITS_SCHEMA)
    rows = table.to_pylist()
    assert sorted((r["image_id"], r["direction"], r["strength"]) for r in rows) == sorted(
        (i, d, s) for i in ("astronaut", "coffee") for d in ("smile", "factor-hue") for s in (-2.0, 0.0, 2.0))
    assert all(r["status"] == "ok" and r["error"] is None and r["method"] == "gani" for r in rows)
    assert {r["unit"] for r in rows if r["direction"] == "smile"} == {"W unit"}
    assert all(r["strip"] == f"strips/{r['image_id']}.gani.{r['direction']}.png" for r in rows)
    assert all(r["gif"] == f"gifs/{r['image_id']}.gani.{r['direction']}.gif" for r in rows)


def test_factor_change_is_read_for_a_factor_direction_only(edited: Said, run: Path) -> None:
    rows = _rows(run / "edits" / "edits.parquet")
    smile = [r for r in rows if r["direction"] == "smile"]
    assert all(r["factor_change"] is None and r["factor_change_original"] is None for r in smile)
    hue = {(r["image_id"], r["strength"]): r for r in rows if r["direction"] == "factor-hue"}
    assert all(hue[(i, 0.0)]["factor_change"] == 0 and hue[(i, 0.0)]["factor_change_original"] == 0
               for i in ("astronaut", "coffee"))
    assert all(abs(r["factor_change_original"]) > 0 for (_, s), r in hue.items() if s != 0)


def test_factor_change_is_what_the_probe_reads_by_hand(edited: Said, run: Path, factor_checkpoint: Path) -> None:
    G = load_generator(factor_checkpoint)
    folder = RunFolder(run)
    w = folder.read_pivot("coffee", "gani")
    tuned = apply_deltas(G, folder.read_deltas("coffee", "gani"))
    step = G.factor_edits.steps[0] * G.factor_edits.directions[0]
    ws = torch.stack([w, w + 2 * step])
    with torch.no_grad():
        hue = G.factor_probe(tuned.synthesis(ws, noise_mode="const").clamp(-1, 1))[:, 0]
        hue_original = G.factor_probe(G.synthesis(ws, noise_mode="const").clamp(-1, 1))[:, 0]
    row = next(r for r in _rows(run / "edits" / "edits.parquet")
               if (r["image_id"], r["direction"], r["strength"]) == ("coffee", "factor-hue", 2.0))
    assert row["factor_change"] == pytest.approx(float(hue[1] - hue[0]), abs=1e-5)
    assert row["factor_change_original"] == pytest.approx(float(hue_original[1] - hue_original[0]), abs=1e-5)


def test_the_header_and_last_line_go_to_stderr(edited: Said) -> None:
    assert edited.out == ""
    assert edited.err.startswith("gani edit: 2 image(s) [gani] x 2 direction(s) (smile, factor-hue) at strengths "
                                 "-2 0 2")


# --- exact renders, batches -----------------------------------------------------------------------------------------


def _inputs(run: Path, G: Generator, ids: list[str], method: str = "gani") -> tuple[torch.Tensor, list[dict]]:
    folder = RunFolder(run)
    return (torch.stack([folder.read_pivot(i, method) for i in ids]),
            [folder.read_deltas(i, method) for i in ids])


def test_an_edit_is_the_render_through_apply_deltas_by_hand(run: Path, smile: Path, factor_checkpoint: Path) -> None:
    G = load_generator(factor_checkpoint)
    (direction,) = parse_directions([str(smile)], G, "0" * 64)
    pivots, deltas = _inputs(run, G, ["astronaut", "coffee"])
    strengths = [-2.0, 0.0, 1.5]
    original, tuned = render_edits(G, pivots, stack_deltas(deltas), direction.offset, strengths)
    assert tuned.shape == original.shape == (2, 3, 3, 32, 32)
    for k in range(2):
        by_hand = apply_deltas(G, deltas[k])
        ws = torch.stack([pivots[k] + s * direction.offset for s in strengths])
        with torch.no_grad():
            assert (tuned[k] - by_hand.synthesis(ws, noise_mode="const")).abs().max() <= 1e-5
            assert (original[k] - G.synthesis(ws, noise_mode="const")).abs().max() <= 1e-5
    assert (tuned - original).abs().max() > 1e-2        # the tuning changed the renders: the comparison means something


def test_a_batch_of_k_renders_what_each_image_alone_does(run: Path, smile: Path, factor_checkpoint: Path) -> None:
    G = load_generator(factor_checkpoint)
    (direction,) = parse_directions([str(smile)], G, "0" * 64)
    pivots, deltas = _inputs(run, G, ["astronaut", "coffee"])
    together = render_edits(G, pivots, stack_deltas(deltas), direction.offset, [-1.0, 1.0])
    for k in range(2):
        alone = render_edits(G, pivots[k : k + 1], stack_deltas(deltas[k : k + 1]), direction.offset, [-1.0, 1.0])
        assert (together[0][k] - alone[0][0]).abs().max() <= 1e-5
        assert (together[1][k] - alone[1][0]).abs().max() <= 1e-5


def test_the_table_of_batches_of_one_is_the_table_of_one_batch(edited: Said, run: Path, smile: Path,
                                                               tmp_path: Path) -> None:
    said = _run(["edit", str(run), "--direction", str(smile), "--direction", "factor:hue", "--strengths", *STRENGTHS,
                 "--batch-size", "1", "--out", str(tmp_path / "one"), "--quiet"])
    assert said.code == 0, said.err
    assert len(list((tmp_path / "one" / "rows").iterdir())) == 2         # a part per batch

    def key(r: dict) -> tuple:
        return r["image_id"], r["direction"], r["strength"]

    batched = sorted(_rows(run / "edits" / "edits.parquet"), key=key)
    alone = sorted(_rows(tmp_path / "one" / "edits.parquet"), key=key)
    for a, b in zip(batched, alone, strict=True):
        assert key(a) == key(b) and a["edit_key"] == b["edit_key"]
        assert a["lpips_to_original_edit"] == pytest.approx(b["lpips_to_original_edit"], abs=1e-5)
        for column in ("factor_change", "factor_change_original"):
            assert (a[column] is None) == (b[column] is None)
            assert a[column] is None or a[column] == pytest.approx(b[column], abs=1e-5)


def test_lpips_to_the_original_edit_is_zero_when_nothing_was_tuned(edited: Said, run: Path, smile: Path,
                                                                  tmp_path: Path) -> None:
    """Method w keeps the original generator: its edits are the original's at every strength. gani's are not (the
    check can fail)."""
    said = _run(["edit", str(run), "--method", "w", "--direction", str(smile), "--direction", "factor:hue",
                 "--strengths", *STRENGTHS, "--out", str(tmp_path / "w"), "--quiet"])
    assert said.code == 0, said.err
    rows = _rows(tmp_path / "w" / "edits.parquet")
    assert len(rows) == 2 * 2 * 3 and {r["method"] for r in rows} == {"w"}
    assert all(abs(r["lpips_to_original_edit"]) < 1e-4 for r in rows)
    assert all(r["factor_change"] == pytest.approx(r["factor_change_original"], abs=1e-5) for r in rows
               if r["direction"] == "factor-hue")
    gani = _rows(run / "edits" / "edits.parquet")
    assert all(r["lpips_to_original_edit"] > 1e-3 for r in gani)
    with Image.open(tmp_path / "w" / "strips" / "astronaut.w.smile.png") as strip:
        assert strip.text["Rows"] == "original | pivot (w), no tuning"      # w tunes nothing: not "tuned (w)"


# --- resuming -------------------------------------------------------------------------------------------------------


def _edit(run: Path, out: Path, direction: Path | str, strengths: list[str], *more: str) -> Said:
    return _run(["edit", str(run), "--direction", str(direction), "--strengths", *strengths, "--out", str(out),
                 "--quiet", *more])


def _edit_one(run: Path, out: Path, direction: Path | str, strengths: list[str]) -> Said:
    """`_edit` of the astronaut alone."""
    return _run(["edit", str(run), "astronaut", "--direction", str(direction), "--strengths", *strengths, "--out",
                 str(out), "--quiet"])


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_a_rerun_keeps_what_was_made_for_the_same_inputs(run: Path, smile: Path, tmp_path: Path) -> None:
    out = tmp_path / "edits"
    assert _edit(run, out, smile, ["-1", "1"]).code == 0
    before = _mtimes(out / "strips")
    said = _edit(run, out, smile, ["-1", "1"])
    assert said.code == 0 and said.last == f"0 strip(s) written, 2 kept, 0 failed -> {out}"
    assert _mtimes(out / "strips") == before
    assert len(_rows(out / "edits.parquet")) == 4


def test_an_interrupted_edit_is_resumed_from_its_parts(run: Path, smile: Path, tmp_path: Path) -> None:
    """Without edits.parquet (written last), the rerun keeps what the parts under rows/ hold."""
    out = tmp_path / "edits"
    assert _edit(run, out, smile, ["-1", "1"], "--batch-size", "1").code == 0
    (out / "edits.parquet").unlink()
    said = _edit(run, out, smile, ["-1", "1"])
    assert said.last == f"0 strip(s) written, 2 kept, 0 failed -> {out}"
    assert len(_rows(out / "edits.parquet")) == 4


REPLACED = "2 strip(s) written (2 replacing an earlier edit of the same image and direction), 0 kept, 0 failed"


def test_other_strengths_another_direction_file_or_gif_recompute(run: Path, smile: Path, tmp_path: Path) -> None:
    """Each replaces the group of its image x direction (the newest wins), and the last line says so."""
    out = tmp_path / "edits"
    changed = tmp_path / "smile.npy"
    shutil.copy(smile, changed)
    assert _edit(run, out, changed, ["-1", "1"]).code == 0
    said = _edit(run, out, changed, ["-1", "0", "1"])
    assert said.last == f"{REPLACED} -> {out}"
    rows = _rows(out / "edits.parquet")       # the strengths of before are gone with their strips
    assert sorted({r["strength"] for r in rows}) == [-1.0, 0.0, 1.0] and len(rows) == 6

    np.save(changed, -np.load(smile))         # the same file, another direction in it
    said = _edit(run, out, changed, ["-1", "0", "1"])
    assert said.last == f"{REPLACED} -> {out}"
    said = _edit(run, out, changed, ["-1", "0", "1"], "--gif")      # no GIF was made: made now
    assert said.last == f"{REPLACED} -> {out}"
    said = _edit(run, out, changed, ["-1", "0", "1"], "--layers", "0-3")     # another direction: replaces nothing
    assert said.last == f"2 strip(s) written, 0 kept, 0 failed -> {out}"


def test_an_edit_of_some_layers_is_another_direction_beside_the_edit_of_all(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "edits"
    assert _edit(run, out, "factor:hue", ["-1", "1"]).code == 0
    all_layers = (out / "strips" / "astronaut.gani.factor-hue.png").read_bytes()
    said = _edit(run, out, "factor:hue", ["-1", "1"], "--layers", "0-3")
    assert said.code == 0 and said.last == f"2 strip(s) written, 0 kept, 0 failed -> {out}"
    assert sorted(p.name for p in (out / "strips").iterdir()) == [
        "astronaut.gani.factor-hue.L0-3.png", "astronaut.gani.factor-hue.png", "coffee.gani.factor-hue.L0-3.png",
        "coffee.gani.factor-hue.png"]
    assert (out / "strips" / "astronaut.gani.factor-hue.png").read_bytes() == all_layers     # not overwritten
    with Image.open(out / "strips" / "astronaut.gani.factor-hue.L0-3.png") as strip:
        assert strip.text["Description"].startswith("astronaut | gani | factor:hue at layers 0-3 | ")
    table = pq.read_table(out / "edits.parquet")
    assert table.schema.equals(EDITS_SCHEMA)
    rows = table.to_pylist()
    assert sorted((r["image_id"], r["direction"], r["layers"], r["spec"]) for r in rows if r["strength"] == 1) == [
        (i, d, layers, "factor:hue") for i in ("astronaut", "coffee")
        for d, layers in (("factor-hue", None), ("factor-hue.L0-3", "0-3"))]
    assert all(r["strip"] == f"strips/{r['image_id']}.gani.{r['direction']}.png" for r in rows)
    for more in ((), ("--layers", "0-")):      # every layer: the edit of all, under its name
        said = _edit(run, out, "factor:hue", ["-1", "1"], *more)
        assert said.last == f"0 strip(s) written, 2 kept, 0 failed -> {out}"
    said = _edit(run, out, "factor:hue", ["-1", "1"], "--layers", "0-3")
    assert said.last == f"0 strip(s) written, 2 kept, 0 failed -> {out}"


def test_tables_written_before_the_layers_column_still_read(run: Path, smile: Path, tmp_path: Path) -> None:
    """edits.parquet and parts without ``layers`` (gani before it): their rows are kept, the column reads null."""
    out = tmp_path / "edits"
    assert _edit(run, out, smile, ["-1", "1"], "--batch-size", "1").code == 0
    for path in [out / "edits.parquet", *(out / "rows").iterdir()]:
        times = path.stat()
        pq.write_table(pq.read_table(path).drop_columns(["layers"]), path)
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    said = _edit(run, out, smile, ["-1", "1"])
    assert said.last == f"0 strip(s) written, 2 kept, 0 failed -> {out}"
    table = pq.read_table(out / "edits.parquet")
    assert table.schema.equals(EDITS_SCHEMA) and table.num_rows == 4
    assert set(table["layers"].to_pylist()) == {None}
    (out / "edits.parquet").unlink()        # from the parts alone
    said = _edit(run, out, smile, ["-1", "1"])
    assert said.last == f"0 strip(s) written, 2 kept, 0 failed -> {out}"


def test_two_files_of_one_stem_never_overwrite_each_others_edits(run: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """d1/dir.npy and d2/dir.npy in one call are refused (one name, one direction); d2's after d1's is refused too
    (one line, exit 2, nothing written) rather than overwrite d1's strip and rows. A spec is the file's absolute
    path: the same file from another folder is the same direction (kept); new content in it is recomputed."""
    for folder, seed in (("d1", 1), ("d2", 2)):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "dir.npy", np.random.default_rng(seed).standard_normal(128).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "edits"
    said = _run(["edit", str(run), "astronaut", "--direction", "d1/dir.npy", "--direction", "d2/dir.npy",
                 "--strengths", "1", "--out", str(out), "--quiet"])
    assert said.code == 2 and "would both be the direction 'dir'" in said.err and not out.exists(), said.err
    said = _edit_one(run, out, "d1/dir.npy", ["1"])
    assert {(r["direction"], r["spec"]) for r in _rows(out / "edits.parquet")} == {
        ("dir", str(tmp_path / "d1/dir.npy"))}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    said = _run(["edit", str(run), "astronaut", "--direction", "d2/dir.npy", "--strengths", "1", "--out", str(out)])
    lines = [line for line in said.err.splitlines() if line.strip()]
    assert said.code == 2 and len(lines) == 1, said.err
    assert lines[0] == (f"gani edit: error: direction name 'dir' in {out} is {tmp_path / 'd1/dir.npy'}'s; "
                        f"{tmp_path / 'd2/dir.npy'} would replace it: rename the file or edit into another --out")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before      # nothing written

    monkeypatch.chdir(tmp_path / "d1")      # the same file by another relative path: the same direction
    said = _edit_one(run, out, "dir.npy", ["1"])
    assert said.last == f"0 strip(s) written, 1 kept, 0 failed -> {out}"
    np.save(tmp_path / "d1/dir.npy", -np.load(tmp_path / "d1/dir.npy"))       # its content changed: recomputed
    said = _edit_one(run, out, "./dir.npy", ["1"])
    assert said.last == (f"1 strip(s) written (1 replacing an earlier edit of the same image and direction), 0 kept, "
                         f"0 failed -> {out}")


def test_a_direction_recorded_by_a_relative_path_is_still_its_file(run: Path, smile: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows written before specs were absolute name the file relative to where gani ran: read from here, the same
    file is no other direction (it is computed again under the absolute spec, not refused)."""
    shutil.copy(smile, tmp_path / "smile.npy")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "edits"
    assert _edit_one(run, out, "smile.npy", ["1"]).code == 0
    for path in [out / "edits.parquet", *(out / "rows").iterdir()]:
        table = pq.read_table(path)
        for column, value in (("spec", "smile.npy"), ("edit_key", "made-from-the-relative-spec")):
            table = table.set_column(table.schema.get_field_index(column), column,
                                     pa.array([value] * table.num_rows, pa.string()))
        pq.write_table(table, path)
    said = _edit_one(run, out, tmp_path / "smile.npy", ["1"])
    assert said.code == 0 and said.last.startswith("1 strip(s) written (1 replacing"), said.err
    assert {r["spec"] for r in _rows(out / "edits.parquet")} == {str(tmp_path / "smile.npy")}


def test_repeated_strengths_add_up_as_a_set_in_ascending_order(run: Path, smile: Path, tmp_path: Path) -> None:
    """--strengths 1 --strengths -1 is -1 1 (argparse's extend); given in another order or with a repeat, it is the
    same edit, kept."""
    out = tmp_path / "edits"
    said = _run(["edit", str(run), "astronaut", "--direction", str(smile), "--strengths", "1", "--strengths", "-1",
                 "--out", str(out), "--quiet"])
    assert said.code == 0, said.err
    assert said.err.startswith("gani edit: 1 image(s) [gani] x 1 direction(s) (smile) at strengths -1 1,")
    with Image.open(out / "strips" / "astronaut.gani.smile.png") as strip:
        assert strip.text["Columns"] == "input | -1 W unit | +1 W unit"
    assert [r["strength"] for r in _rows(out / "edits.parquet")] == [-1.0, 1.0]
    for strengths in (["-1", "1"], ["1", "-1", "1.0"]):
        said = _edit_one(run, out, smile, strengths)
        assert said.last == f"0 strip(s) written, 1 kept, 0 failed -> {out}"


def test_a_render_that_is_not_finite_fails_that_edit_alone(run: Path, tmp_path: Path) -> None:
    """A raw direction of 1e37 per element at strength 1000 overflows float32: that image x direction fails (no
    strip, no NaN metrics), never ok with a black strip; another direction of the request is ok."""
    huge = tmp_path / "huge.npy"
    np.save(huge, np.full(128, 1e37, dtype=np.float32))
    out = tmp_path / "edits"
    said = _run(["edit", str(run), "astronaut", "--direction", str(huge), "--direction", "factor:hue", "--raw",
                 "--strengths", "0", "1000", "--out", str(out), "--quiet"])
    assert said.code == 1, said.err
    assert said.last == f"1 strip(s) written, 0 kept, 1 failed -> {out}"
    assert "failed: astronaut [gani] huge: the render at strength 1000 is not finite" in said.err.splitlines()
    rows = {(r["direction"], r["strength"]): r for r in _rows(out / "edits.parquet")}
    for strength in (0.0, 1000.0):
        row = rows[("huge", strength)]
        assert row["status"] == "failed" and row["error"] == "the render at strength 1000 is not finite"
        assert row["strip"] is None and row["lpips_to_original_edit"] is None
    assert {rows[("factor-hue", s)]["status"] for s in (0.0, 1000.0)} == {"ok"}
    assert [p.name for p in (out / "strips").iterdir()] == ["astronaut.gani.factor-hue.png"]


def test_the_same_direction_twice_is_edited_once(run: Path, smile: Path, tmp_path: Path) -> None:
    out = tmp_path / "edits"
    said = _run(["edit", str(run), "astronaut", "--direction", "factor:hue", "--direction", "factor:hue",
                 "--direction", " factor:hue ", "--strengths", "-1", "1", "--out", str(out), "--quiet"])
    assert said.code == 0, said.err
    assert said.err.startswith("gani edit: 1 image(s) [gani] x 1 direction(s) (factor-hue) at strengths -1 1")
    assert said.last == f"1 strip(s) written, 0 kept, 0 failed -> {out}"
    assert [p.name for p in (out / "strips").iterdir()] == ["astronaut.gani.factor-hue.png"]
    assert len(_rows(out / "edits.parquet")) == 2


def test_a_rerun_without_gif_deletes_the_gif_of_what_it_replaces(run: Path, smile: Path, tmp_path: Path) -> None:
    out = tmp_path / "edits"
    assert _edit(run, out, smile, ["-1", "1"], "--gif").code == 0
    assert sorted(p.name for p in (out / "gifs").iterdir()) == ["astronaut.gani.smile.gif", "coffee.gani.smile.gif"]
    said = _edit(run, out, smile, ["-1", "1"])         # the same edit: kept, with its GIF
    assert said.last == f"0 strip(s) written, 2 kept, 0 failed -> {out}" and len(list((out / "gifs").iterdir())) == 2
    said = _edit(run, out, smile, ["-1", "0", "1"])    # replaced without a GIF: the old one goes
    assert list((out / "gifs").iterdir()) == []
    assert said.last == f"{REPLACED} -> {out}"
    assert {r["gif"] for r in _rows(out / "edits.parquet")} == {None}


def test_a_new_direction_is_computed_and_the_others_kept(run: Path, smile: Path, tmp_path: Path) -> None:
    out = tmp_path / "edits"
    assert _edit(run, out, smile, ["-1", "1"]).code == 0
    said = _edit(run, out, smile, ["-1", "1"], "--direction", "factor:size")
    assert said.last == f"2 strip(s) written, 2 kept, 0 failed -> {out}"
    assert {r["direction"] for r in _rows(out / "edits.parquet")} == {"smile", "factor-size"}


def test_ctrl_c_says_how_many_strips_are_kept_and_a_rerun_continues(run: Path, smile: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "edits"
    calls = []
    edit_batch = edit_runs_mod._edit_loaded

    def interrupted_second(*args: object, **kwargs: object) -> list[dict]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return edit_batch(*args, **kwargs)

    monkeypatch.setattr(edit_runs_mod, "_edit_loaded", interrupted_second)
    said = _edit(run, out, smile, ["-1", "1"], "--batch-size", "1")
    assert said.code == 130
    assert said.err.strip().splitlines()[-1] == (f"gani edit: interrupted: 1 strip(s) kept in {out}; rerun the same "
                                                 "command to continue")
    monkeypatch.undo()
    said = _edit(run, out, smile, ["-1", "1"], "--batch-size", "1")
    assert said.last == f"1 strip(s) written, 1 kept, 0 failed -> {out}"


def test_ctrl_c_in_the_middle_of_a_batch_keeps_the_strips_it_finished(run: Path, smile: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of 2 images x 2 directions interrupted in its second direction: the first's 2 strips are on disk,
    said and kept."""
    out = tmp_path / "edits"
    calls = []
    edit_direction = edit_runs_mod._edit_direction

    def interrupted_second(*args: object, **kwargs: object) -> list[dict]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return edit_direction(*args, **kwargs)

    monkeypatch.setattr(edit_runs_mod, "_edit_direction", interrupted_second)
    said = _edit(run, out, smile, ["-1", "1"], "--direction", "factor:hue", "--batch-size", "2")
    assert said.code == 130
    assert sorted(p.name for p in (out / "strips").iterdir()) == ["astronaut.gani.smile.png", "coffee.gani.smile.png"]
    assert said.err.strip().splitlines()[-1] == (f"gani edit: interrupted: 2 strip(s) kept in {out}; rerun the same "
                                                 "command to continue")
    monkeypatch.undo()
    said = _edit(run, out, smile, ["-1", "1"], "--direction", "factor:hue", "--batch-size", "2")
    assert said.last == f"2 strip(s) written, 2 kept, 0 failed -> {out}"


# --- an image that fails, alone -------------------------------------------------------------------------------------


def test_an_image_whose_deltas_are_unreadable_fails_alone_naming_its_file(run: Path, smile: Path,
                                                                           tmp_path: Path) -> None:
    copied = _copy(run, tmp_path)
    deltas = copied / "deltas" / "coffee.gani.parquet"
    good = deltas.read_bytes()
    deltas.write_bytes(np.random.default_rng(0).bytes(len(good)))      # garbage of the same size
    said = _edit(copied, copied / "edits", smile, ["-1", "1"], "--direction", "factor:hue")
    assert said.code == 1 and said.last == f"2 strip(s) written, 0 kept, 2 failed -> {copied / 'edits'}"
    failed = [line for line in said.err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1, said.err      # one line for the image, its directions joined
    assert failed[0].startswith(f"failed: coffee [gani] smile, factor-hue: {deltas}: not a readable deltas file (")
    assert "<Buffer>" not in said.err and "Traceback" not in said.err
    rows = {(r["image_id"], r["direction"], r["strength"]): r for r in _rows(copied / "edits" / "edits.parquet")}
    assert {r["status"] for (i, _, _), r in rows.items() if i == "astronaut"} == {"ok"}
    assert {r["status"] for (i, _, _), r in rows.items() if i == "coffee"} == {"failed"}
    row = rows[("coffee", "smile", 1.0)]
    assert row["error"].startswith(f"{deltas}: not a readable deltas file (") and row["strip"] is None
    deltas.write_bytes(good)     # repaired: the failure is computed again
    said = _edit(copied, copied / "edits", smile, ["-1", "1"], "--direction", "factor:hue")
    assert said.code == 0 and said.last == f"2 strip(s) written, 2 kept, 0 failed -> {copied / 'edits'}"


def test_an_image_without_its_deltas_file_fails_alone(run: Path, smile: Path, tmp_path: Path) -> None:
    copied = _copy(run, tmp_path)
    (copied / "deltas" / "coffee.gani.parquet").unlink()
    said = _edit(copied, copied / "edits", smile, ["-1", "1"])
    assert said.code == 1 and said.last == f"1 strip(s) written, 0 kept, 1 failed -> {copied / 'edits'}"
    failed = [r for r in _rows(copied / "edits" / "edits.parquet") if r["status"] == "failed"]
    assert {r["image_id"] for r in failed} == {"coffee"}
    assert failed[0]["error"].startswith("FileNotFoundError: ") and "coffee.gani.parquet" in failed[0]["error"]


# --- bad input: one line, exit 2, nothing written -------------------------------------------------------------------


def _refused(argv: list[str], out: Path) -> str:
    said = _run(argv)
    lines = [line for line in said.err.splitlines() if line.strip()]
    assert said.code == 2, said.err
    assert len(lines) == 1 and "Traceback" not in said.err, said.err
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize(("args", "said"), [
    (["nope", "--direction", "SMILE", "--strengths", "1"], "no image 'nope' in this run; `gani show "),
    (["broken", "--direction", "SMILE", "--strengths", "1"], "no successful tuned result (gani, pti) for image(s) "
                                                              "'broken'; --method w or wplus edits a pivot alone"),
    (["astronaut", "broken", "--direction", "SMILE", "--strengths", "1"], "no successful gani result for image "
                                                                          "'broken'"),
    (["--direction", "factor:nope", "--strengths", "1"], "factor:nope: no such factor; this generator has hue, size"),
    (["--direction", "smile", "--strengths", "1"], "'smile' is not a direction: expected factor:NAME"),
    (["--direction", "missing.npy", "--strengths", "1"], "directions file not found: missing.npy"),
    (["--direction", "SMILE", "--strengths", "1", "x"], "strength 'x' is not a finite number"),
    (["--direction", "SMILE", "--strengths", "1", "1e300"], "strength '1e300' is beyond ±1000: an edit that far"),
    (["--direction", "SMILE", "--strengths", "1", "--layers", "0-99"], "layers 0-99: beyond this generator's style"),
    (["--direction", "factor:hue", "--direction", "pca:0", "--strengths", "1", "--raw"],
     "--raw applies to .npy directions only; factor:hue is in steps, pca:0 in sigmas"),
])
def test_bad_input_is_one_line_and_nothing_is_written(args: list[str], said: str, run: Path, smile: Path,
                                                      tmp_path: Path) -> None:
    argv = ["edit", str(run), *(str(smile) if a == "SMILE" else a for a in args), "--out", str(tmp_path / "o")]
    line = _refused(argv, tmp_path / "o")
    assert line.startswith("gani edit: error: ") and said in line, line


def test_a_method_without_results_is_one_line(run: Path, smile: Path, tmp_path: Path) -> None:
    line = _refused(["edit", str(run), "--method", "pti", "--direction", str(smile), "--strengths", "1", "--out",
                     str(tmp_path / "o")], tmp_path / "o")
    assert f"{run}: no successful pti result in this run" in line


def test_a_run_folder_without_deltas_is_one_line(run: Path, smile: Path, tmp_path: Path) -> None:
    copied = _copy(run, tmp_path)
    shutil.rmtree(copied / "deltas")
    line = _refused(["edit", str(copied), "--direction", str(smile), "--strengths", "1"], copied / "edits")
    assert "no deltas/ file for the 2 result(s) to edit" in line


def test_named_images_without_their_deltas_file_are_one_line_naming_them(run: Path, smile: Path,
                                                                         tmp_path: Path) -> None:
    copied = _copy(run, tmp_path)
    (copied / "deltas" / "coffee.gani.parquet").unlink()
    line = _refused(["edit", str(copied), "coffee", "--direction", str(smile), "--strengths", "1"], copied / "edits")
    assert line == (f"gani edit: error: {copied}: no deltas file for image(s) 'coffee' (deltas/coffee.gani.parquet: "
                    "the weight deltas and pivot to edit); rerun the `gani invert` command of this run: it computes "
                    "again a result whose deltas file is gone"), line


def test_raw_with_a_npy_direction_among_others_is_accepted(run: Path, smile: Path, tmp_path: Path) -> None:
    said = _run(["edit", str(run), "astronaut", "--direction", str(smile), "--direction", "factor:hue", "--raw",
                 "--strengths", "1", "--out", str(tmp_path / "o"), "--quiet"])
    assert said.code == 0, said.err
    assert {(r["direction"], r["unit"]) for r in _rows(tmp_path / "o" / "edits.parquet")} == {("smile", "raw"),
                                                                                            ("factor-hue", "step")}


def test_a_folder_that_is_no_run_is_one_line(smile: Path, tmp_path: Path) -> None:
    line = _refused(["edit", str(tmp_path), "--direction", str(smile), "--strengths", "1"], tmp_path / "edits")
    assert "no metrics.parquet and no rows/ here" in line


def test_a_checkpoint_that_is_not_the_one_the_run_tuned_is_one_line(run: Path, smile: Path, g32_file: Path,
                                                                   tmp_path: Path) -> None:
    """The rows name a file that now holds another generator (here: rows pointed at another file)."""
    copied = _copy(run, tmp_path)
    shutil.rmtree(copied / "rows")
    table = pq.read_table(copied / "metrics.parquet")
    column = table.schema.get_field_index("checkpoint")
    table = table.set_column(column, "checkpoint", pa.array([str(g32_file)] * table.num_rows, pa.string()))
    pq.write_table(table, copied / "metrics.parquet")
    line = _refused(["edit", str(copied), "--direction", str(smile), "--strengths", "1"], copied / "edits")
    assert f"{g32_file} is not the checkpoint this run tuned" in line and "its deltas would not apply" in line


def test_a_run_folder_as_the_edits_folder_is_one_line(run: Path, smile: Path, tmp_path: Path) -> None:
    """--out RUN (or any run folder, even one of rows/ parts alone) would read the run's rows as edits: refused, not
    `failed: KeyError: 'direction'`; nothing is written there."""
    copied = _copy(run, tmp_path)
    parts_only = tmp_path / "parts-only"
    shutil.copytree(copied / "rows", parts_only / "rows")
    for out in (copied, parts_only):
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        said = _run(["edit", str(copied), "--direction", str(smile), "--strengths", "1", "--out", str(out)])
        lines = [line for line in said.err.splitlines() if line.strip()]
        assert said.code == 2 and len(lines) == 1 and "Traceback" not in said.err, said.err
        assert lines[0] == (f"gani edit: error: --out {out} is a run folder; edits go to a folder of their own "
                            "(default RUN/edits)")
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    with pytest.raises(edit_runs_mod.NotEditRowsError, match=r"^.*/rows/part-.*\.parquet holds no edit rows \(no "
                                                             r"direction, strength, edit_key column\): a run's rows\?"):
        edit_runs_mod.EditFolder(str(parts_only)).stored_rows()


def test_align_refuses_a_resolution_no_generator_has(tmp_path: Path) -> None:
    """`gani align --resolution` is a generator's side: a power of two of at least 4 (argparse: one line, exit 2,
    before dlib is imported)."""
    for value in ("3", "0", "1000", "-8", "x"):
        said = _run(["align", str(tmp_path), "--out", str(tmp_path / "out"), "--resolution", value])
        lines = [line for line in said.err.splitlines() if line.strip()]
        assert said.code == 2 and len(lines) == 1, said.err
        assert f"argument --resolution: a generator's resolution: a power of two of at least 4 (4, 8, ..., 256, 512, " \
               f"1024), got '{value}'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_a_file_is_one_line(run: Path, smile: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    said = _run(["edit", str(run), "--direction", str(smile), "--strengths", "1", "--out", str(tmp_path / "file")])
    assert said.code == 2 and "--out" in said.err and "is a file" in said.err


def test_the_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--direction", "--strengths", "--method", "--layers", "--raw", "--out", "--gif", "--batch-size",
                   "--device"):
        assert option in out


# --- S3 -------------------------------------------------------------------------------------------------------------


@pytest.mark.services
def test_a_run_on_s3_is_edited_and_resumed(s3, run: Path, smile: Path) -> None:
    prefix = "edit-run"
    for path in run.rglob("*"):
        if path.is_file() and "edits" not in path.relative_to(run).parts:
            s3.put_object(Bucket=S3_BUCKET, Key=f"{prefix}/{path.relative_to(run).as_posix()}", Body=path.read_bytes())
    uri = f"s3://{S3_BUCKET}/{prefix}"
    said = _run(["edit", uri, "astronaut", "--direction", str(smile), "--strengths", "-1", "1", "--gif", "--quiet"])
    assert said.code == 0, said.err
    assert said.last == f"1 strip(s) written, 0 kept, 0 failed -> {uri}/edits"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}/edits/")["Contents"]}
    assert {f"{prefix}/edits/strips/astronaut.gani.smile.png", f"{prefix}/edits/gifs/astronaut.gani.smile.gif",
            f"{prefix}/edits/edits.parquet"} <= keys
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket=S3_BUCKET, Key=f"{prefix}/edits/edits.parquet")["Body"]
                                     .read())).to_pylist()
    assert [(r["image_id"], r["strength"], r["status"]) for r in table] == [("astronaut", -1.0, "ok"),
                                                                            ("astronaut", 1.0, "ok")]
    said = _run(["edit", uri, "astronaut", "--direction", str(smile), "--strengths", "-1", "1", "--gif", "--quiet"])
    assert said.last == f"0 strip(s) written, 1 kept, 0 failed -> {uri}/edits"
    said = _run(["edit", uri, "astronaut", "--direction", str(smile), "--strengths", "-1", "0", "1", "--quiet"])
    assert said.last == (f"1 strip(s) written (1 replacing an earlier edit of the same image and direction), 0 kept, "
                         f"0 failed -> {uri}/edits")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}/edits/")["Contents"]}
    assert f"{prefix}/edits/strips/astronaut.gani.smile.png" in keys     # replaced without a GIF: the old one goes
    assert not any(k.startswith(f"{prefix}/edits/gifs/") for k in keys)
