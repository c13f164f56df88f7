"""Prefect tasks over a run's input and its folder (gani_core.dataset, gani_core.run_folder): thin wrappers, so
that listing, the resume check and the tables show as task runs with their own logs and states."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from gani_core.dataset import ImageSource
from gani_core.dataset import list_images as _list_images
from gani_core.run_folder import RunFolder


@task(name="list-images", cache_policy=NO_CACHE)
def list_images(input_uri: str, limit: int | None = None) -> list[ImageSource]:
    """The images under ``input_uri``, sorted, with their ids (gani_core.dataset.list_images)."""
    return _list_images(input_uri, limit)


@task(name="find-existing-results", cache_policy=NO_CACHE)
def reusable_rows(folder: RunFolder, images: list[ImageSource], config_hashes: dict[str, str],
                  checkpoint_sha256: str) -> dict[tuple[str, str], dict]:
    """The rows a rerun keeps, by (image_id, method): RunFolder.reusable_rows (the resume rule)."""
    return folder.reusable_rows(images, config_hashes, checkpoint_sha256)


@task(name="write-run-tables", cache_policy=NO_CACHE)
def write_tables(folder: RunFolder, rows: list[dict], summary: dict) -> dict[str, str]:
    """metrics.parquet, summary.json and preview_grid.png; their URIs by name."""
    return folder.write_tables(rows, summary)
