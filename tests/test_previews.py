"""A run's previews (issue 22): each preview's columns are labelled, its edit column says which edit it shows, and
preview_grid.png says when it shows only the first PREVIEW_GRID_MAX previews."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.factors import FactorEdits
from gani_core.invert import InversionResult, method_config, preview_edit
from gani_core.measure import PREVIEW_CELLS, preview_edit_label
from gani_core.render import grid_png, stack_pngs
from gani_core.run_folder import (
    PREVIEW_CELL_MAX,
    PREVIEW_CELL_MIN,
    PREVIEW_GRID_MAX,
    RunFolder,
    complete_row,
    preview_grid_caption,
    preview_labels,
    save_preview,
)

CFG = method_config("gani", pivot_steps=2, tune_steps=2)
CKPT = resolve_checkpoint("builtin-random:32")


def _png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _result(image_id: str = "a", edit_label: str | None = None, size: int = 32) -> InversionResult:
    """An InversionResult of ``size`` px cells: input red, pivot green, tuned blue, edit grey."""
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0.5]])
    result = InversionResult(
        image_id=image_id, method="gani", w_pivot=torch.zeros(2, 4), encoded=[], metrics={},
        seconds={"pivot": 0.0, "tune": 0.0, "metrics": 0.0, "total": 0.0}, steps={"pivot": 2, "tune": 2},
        peak_memory_mb=0.0, delta_bytes=0, delta_lpips_change=0.0,
        previews=colours[:, :, None, None].expand(4, 3, size, size).clone())
    if edit_label is not None:
        result.edit_label = edit_label       # set by invert._measure (measure.preview_edit_label)
    return result


def test_grid_labels_each_column_under_the_tiles_and_keeps_the_tiles_at_the_top() -> None:
    images = torch.zeros(4, 3, 40, 40)
    plain = _png(grid_png(images, caption="cap"))
    labelled = _png(grid_png(images, caption="cap", labels=("input", "pivot", "tuned", "edit: hue +2 steps")))
    assert labelled.text["Columns"] == "input | pivot | tuned | edit: hue +2 steps"
    assert labelled.text["Description"] == "cap"
    assert labelled.height > plain.height                   # a label row between the tiles and the caption
    pixels = np.asarray(labelled.convert("RGB"))
    assert (pixels[:40] == 0).all()                         # the tiles where tasks/mlflow_runs crops them
    for column in range(4):                                 # each column's label is drawn under it
        assert (pixels[40 : 40 + 12, column * 40 : (column + 1) * 40] < 128).any(), column
    with pytest.raises(ValueError, match="5 labels for 4 columns"):
        grid_png(images, labels=("a", "b", "c", "d", "e"))


def test_a_preview_labels_its_columns_and_says_which_edit(tmp_path: Path) -> None:
    uri = str(tmp_path / "a.gani.png")
    save_preview(_result(edit_label="edit: hue +2 steps"), "builtin", uri)
    img = _png(Path(uri).read_bytes())
    assert img.text["Columns"] == "input | pivot | tuned | edit: hue +2 steps"
    assert img.text["Description"] == "a | gani | builtin"
    cell = img.width // len(PREVIEW_CELLS)
    assert cell == PREVIEW_CELL_MIN                          # 32 px cells upscaled x6
    pixels = np.asarray(img.convert("RGB"))
    assert tuple(pixels[cell // 2, cell // 2]) == (255, 0, 0) and tuple(pixels[cell // 2, 3 * cell + 5]) == (128,) * 3


def test_a_preview_of_a_large_generator_is_downscaled_to_bounded_cells(tmp_path: Path) -> None:
    """Four 1024 px cells were 0.8 s of PNG encoding and 8 MiB per image; cells are at most PREVIEW_CELL_MAX px."""
    uri = str(tmp_path / "a.gani.png")
    save_preview(_result(size=1024), "config-f", uri)
    img = _png(Path(uri).read_bytes())
    assert img.width == PREVIEW_CELL_MAX * len(PREVIEW_CELLS)
    assert tuple(np.asarray(img.convert("RGB"))[PREVIEW_CELL_MAX // 2, PREVIEW_CELL_MAX // 2]) == (255, 0, 0)


def test_a_result_that_does_not_say_which_edit_gets_a_plain_edit_label(tmp_path: Path) -> None:
    uri = str(tmp_path / "a.gani.png")
    save_preview(_result(), "builtin", uri)
    assert _png(Path(uri).read_bytes()).text["Columns"] == "input | pivot | tuned | edit"
    assert preview_labels() == PREVIEW_CELLS


def test_the_edit_label_names_the_factor_preview_edit_moves() -> None:
    w_dim = 8
    edits = FactorEdits(("size", "hue", "light"), torch.eye(3, w_dim), torch.tensor([0.5, 2.0, 1.0]),
                        torch.tensor([0.3, 0.9, 0.5]))
    G = SimpleNamespace(factor_edits=edits, w_dim=w_dim)
    assert preview_edit_label(G, 1.5, directions_given=False, seed=0) == "edit: hue +2 steps"
    assert preview_edit_label(G, 1.5, directions_given=True, seed=0) == "edit: hue +2 steps"   # files don't matter
    offset = preview_edit(G, torch.ones(w_dim), 1.5)
    assert torch.equal(offset, 2 * 2.0 * torch.eye(3, w_dim)[1])      # hue's direction, 2 of its steps


def test_without_factor_edits_the_label_says_which_direction_and_how_far() -> None:
    G = SimpleNamespace(factor_edits=None, w_dim=8)
    direction = torch.arange(8.0)
    assert torch.equal(preview_edit(G, direction, 2.5), 2.5 * direction)
    assert preview_edit_label(G, 2.5, directions_given=False, seed=3) == "edit: random direction 0 (seed 3) x2.5"
    assert preview_edit_label(G, 0.123456, directions_given=True, seed=3) == "edit: direction 0 x0.123"


def test_the_grid_caption_says_when_it_shows_only_the_first_previews() -> None:
    assert preview_grid_caption(16, 40) == "the first 16 of 40 previews (all of them are in previews/)"
    assert preview_grid_caption(3, 3) == ""
    tile = grid_png(torch.zeros(1, 3, 8, 8))
    stacked = _png(stack_pngs([tile, tile], caption="the first 2 of 5 previews"))
    assert stacked.text["Description"] == "the first 2 of 5 previews" and stacked.height > 16
    assert "Description" not in _png(stack_pngs([tile, tile])).text


@pytest.mark.parametrize(("count", "caption"), [
    (PREVIEW_GRID_MAX + 2, f"the first {PREVIEW_GRID_MAX} of {PREVIEW_GRID_MAX + 2} previews (all of them are in "
                           "previews/)"),
    (3, None),
])
def test_preview_grid_png_says_how_many_of_the_previews_it_shows(tmp_path: Path, count: int,
                                                                  caption: str | None) -> None:
    folder = RunFolder(str(tmp_path / "out"))
    rows = []
    for i in range(count):
        image_id = f"img{i:02d}"
        save_preview(_result(image_id), "builtin", folder.preview_uri(image_id, "gani"))
        rows.append(complete_row({"image_id": image_id, "method": "gani", "status": "ok", "error": None}, CFG, CKPT))
    folder.write_tables(rows, {"notes": []})
    grid = _png(Path(folder.grid_uri).read_bytes())
    assert grid.text.get("Description") == caption
    preview_height = _png(Path(folder.preview_uri("img00", "gani")).read_bytes()).height
    assert grid.height >= min(count, PREVIEW_GRID_MAX) * preview_height
