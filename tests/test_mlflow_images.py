"""The per-image table a flow run logs to MLflow (tasks.mlflow_runs.log_image_table, issue 18): bounded whatever the
number of images, the worst and best results by lpips beside the first ones, each row saying why it is there, and
nothing uploaded again by a rerun that computed nothing. On a local sqlite store, with previews written by the
run folder's own preview code."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from gani_core.run_folder import RunFolder, save_preview
from tasks import mlflow_runs
from tasks.mlflow_runs import (
    IMAGE_TABLE,
    IMAGE_TABLE_BEST,
    IMAGE_TABLE_FIRST,
    IMAGE_TABLE_MAX,
    IMAGE_TABLE_WORST,
    PREVIEW_CELLS,
    image_table_rows,
    log_image_table,
)

N = 200
FAILED = {3, 10, 57, 120, 199}      # among the first images too: the first shown are the first ok ones


def _lpips(i: int) -> float:
    return ((i * 37) % N + 1) / (N + 1)     # a permutation of the images: every value once


def _rows() -> list[dict]:
    rows = []
    for i in range(N):
        ok = i not in FAILED
        rows.append({"image_id": f"img{i:03d}", "method": "gani", "status": "ok" if ok else "failed",
                     "error": None if ok else "ImageError: broken", "lpips": _lpips(i) if ok else None,
                     "psnr": 30 - 10 * _lpips(i) if ok else None, "seconds": 1.0})
    return rows


def _ids(rows: list[dict]) -> list[str]:
    return [r["image_id"] for r in rows]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run folder with 200 rows (5 failed) and the previews of the ok ones; an MLflow store next to it."""
    root = tmp_path_factory.mktemp("mlflow-images")
    folder = RunFolder(str(root / "out"))
    rows = _rows()
    for i, row in enumerate(rows):
        if row["status"] == "ok":
            shade = torch.linspace(0, 1, 4).view(4, 1, 1, 1) * (i + 1) / N     # each cell of each image its own
            result = SimpleNamespace(image_id=row["image_id"], method="gani", edit_label="edit",
                                     previews=shade.expand(4, 3, 16, 16).clone())
            save_preview(result, "test", folder.preview_uri(row["image_id"], "gani"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp = mlflow_runs.experiment_id(uri, "invert-dataset")
    return {"root": root, "folder": folder, "rows": rows, "uri": uri, "exp": exp}


def _start(store: dict, name: str) -> str:
    return mlflow_runs.start_run(store["uri"], store["exp"], name, tags={"output_uri": store["folder"].uri})


def _files(store: dict, run_id: str) -> list[Path]:
    artifacts = store["root"] / "mlartifacts" / "invert-dataset" / run_id / "artifacts"
    return sorted(p for p in artifacts.rglob("*") if p.is_file()) if artifacts.exists() else []


@pytest.fixture(scope="module")
def logged(store: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run that computed every image, then a rerun that computed none, into the same output folder."""
    first = _start(store, "computed")
    assert log_image_table(store["uri"], first, store["rows"], store["folder"], computed=N - len(FAILED))
    rerun = _start(store, "rerun")
    assert not log_image_table(store["uri"], rerun, store["rows"], store["folder"], computed=0)
    client = MlflowClient(tracking_uri=store["uri"])
    path = client.download_artifacts(first, IMAGE_TABLE, str(tmp_path_factory.mktemp("download")))
    split = json.loads(Path(path).read_text())
    table = [dict(zip(split["columns"], values, strict=True)) for values in split["data"]]
    return {"first": first, "rerun": rerun, "columns": split["columns"], "table": table, "client": client}


def test_the_table_is_bounded_whatever_the_number_of_images(store, logged):
    files = _files(store, logged["first"])
    images = [p for p in files if p.suffix == ".png"]
    assert len(images) == len(logged["table"]) * len(PREVIEW_CELLS) <= len(PREVIEW_CELLS) * IMAGE_TABLE_MAX == 4 * 48
    # MLflow stores each image twice (the .png and a compressed .webp), plus the table itself
    assert len(files) == 2 * len(images) + 1 <= 2 * 4 * 48 + 1
    shared = [r["shown"] for r in logged["table"] if "," in r["shown"]]     # first and worst, or first and best
    assert shared and len(logged["table"]) == IMAGE_TABLE_WORST + IMAGE_TABLE_BEST + IMAGE_TABLE_FIRST - len(shared)


def test_the_worst_the_best_and_the_first_each_saying_why(store, logged):
    table, ok = logged["table"], [r for r in store["rows"] if r["status"] == "ok"]
    ranked = sorted(ok, key=lambda r: r["lpips"])
    by_reason = {why: [r["image_id"] for r in table if why in r["shown"].split(", ")]
                 for why in ("worst lpips", "best lpips", "first")}
    assert by_reason["worst lpips"] == _ids(ranked[::-1][:IMAGE_TABLE_WORST])     # the worst first
    assert by_reason["best lpips"] == _ids(ranked[:IMAGE_TABLE_BEST])
    assert sorted(by_reason["first"]) == _ids(ok[:IMAGE_TABLE_FIRST])     # those also worst or best: up there
    assert not {f"img{i:03d}" for i in FAILED} & {r["image_id"] for r in table}
    assert len({r["image_id"] for r in table}) == len(table)                      # each row once
    assert logged["columns"] == ["image_id", "method", "shown", *mlflow_runs.HEADLINE_METRICS, *PREVIEW_CELLS]
    lpips = {r["image_id"]: r["lpips"] for r in ok}
    assert all(r["lpips"] == pytest.approx(lpips[r["image_id"]]) for r in table)
    assert all(r[cell]["type"] == "image" for r in table for cell in PREVIEW_CELLS)
    tags = logged["client"].get_run(logged["first"]).data.tags
    assert tags["image_table"] == (f"{IMAGE_TABLE}: {len(table)} rows (16 worst lpips, 16 best lpips, 16 first) "
                                   f"of {N}; all in metrics.parquet")
    assert tags["image_table_run_id"] == logged["first"]


def test_a_rerun_that_computed_nothing_uploads_no_image(store, logged):
    assert _files(store, logged["rerun"]) == []
    tags = logged["client"].get_run(logged["rerun"]).data.tags
    assert tags["image_table"] == f"not logged: nothing computed; the latest is in run {logged['first']}"
    assert tags["image_table_run_id"] == logged["first"]
    # and a second one still points at the run that has the table
    again = _start(store, "rerun-again")
    log_image_table(store["uri"], again, store["rows"], store["folder"], computed=0)
    assert logged["client"].get_run(again).data.tags["image_table_run_id"] == logged["first"]


def test_no_pointer_where_no_run_of_the_folder_has_a_table(store):
    other = RunFolder(str(store["root"] / "elsewhere"))
    run_id = mlflow_runs.start_run(store["uri"], store["exp"], "nothing", tags={"output_uri": other.uri})
    assert not log_image_table(store["uri"], run_id, [], other, computed=0)
    tags = MlflowClient(tracking_uri=store["uri"]).get_run(run_id).data.tags
    assert tags["image_table"] == "not logged: nothing computed" and "image_table_run_id" not in tags


def test_few_results_are_split_between_worst_and_best_and_shown_once():
    rows = [{"image_id": i, "status": "ok", "lpips": v} for i, v in (("a", 0.3), ("b", 0.1), ("c", 0.2))]
    rows.insert(1, {"image_id": "bad", "status": "failed", "lpips": None})
    rows.append({"image_id": "nan", "status": "ok", "lpips": float("nan")})     # first, but not ranked
    shown = [(r["image_id"], why) for r, why in image_table_rows(rows)]
    assert shown == [("a", "first, worst lpips"), ("c", "first, worst lpips"), ("b", "first, best lpips"),
                     ("nan", "first")]


def test_an_artifact_given_twice_is_uploaded_once(store, tmp_path):
    parquet = tmp_path / "metrics.parquet"
    parquet.write_bytes(b"PAR1")
    run_id = _start(store, "artifacts")
    mlflow_runs.log_results(store["uri"], run_id, {}, {}, artifacts=[str(parquet), str(parquet)])
    assert [p.name for p in _files(store, run_id)] == ["metrics.parquet"]
