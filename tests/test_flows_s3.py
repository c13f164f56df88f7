"""invert-dataset reading from and writing to S3: moto's S3 server on 127.0.0.1, s3fs, the flow's own LocalCluster.

The flow is given nothing but ``s3://`` URIs: credentials, region and endpoint come from the environment as for
any s3fs / boto user (``AWS_ENDPOINT_URL`` points botocore at the local server). They are set before the flow
starts its LocalCluster, whose worker processes inherit them.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
from mlflow.tracking import MlflowClient

from flows.invert_dataset import invert_dataset
from flows.parameters import ClusterSettings, InversionSettings

from .conftest import BROKEN_PNG, EXAMPLES, PHOTO_PAIR, S3_BUCKET

BUCKET = S3_BUCKET
pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def s3_env(s3, g32_file: Path):
    """The bucket with input images under in/ (one corrupt) and a generator under models/."""
    for name in PHOTO_PAIR:
        s3.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=(EXAMPLES / name).read_bytes())
    s3.put_object(Bucket=BUCKET, Key="in/broken.png", Body=BROKEN_PNG)
    s3.put_object(Bucket=BUCKET, Key="models/g32.safetensors", Body=g32_file.read_bytes())
    return s3


@pytest.fixture(scope="module")
def runs(s3_env, prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    db = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    params = {"input_uri": f"s3://{BUCKET}/in", "output_uri": f"s3://{BUCKET}/out",
              "checkpoint": f"s3://{BUCKET}/models/g32.safetensors",
              "inversion": InversionSettings(pivot_steps=3, tune_steps=3), "cluster": ClusterSettings(n_workers=2),
              "mlflow_tracking_uri": db}
    first = invert_dataset(**params)
    again = invert_dataset(**params)
    return {"db": db, "first": first, "again": again}


def _keys(s3, prefix: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}


def test_tables_read_back_from_s3_with_pyarrow(s3_env, runs):
    fs = s3fs.S3FileSystem()
    rows = {r["image_id"]: r for r in pq.read_table(f"{BUCKET}/out/metrics.parquet", filesystem=fs).to_pylist()}
    assert sorted(rows) == ["astronaut", "broken", "coffee"]
    assert [rows[i]["status"] for i in ("astronaut", "broken", "coffee")] == ["ok", "failed", "ok"]
    error = rows["broken"]["error"]
    assert error.startswith("ImageError:") and f"s3://{BUCKET}/in/broken.png" in error
    assert rows["astronaut"]["checkpoint"] == f"s3://{BUCKET}/models/g32.safetensors"
    deltas = pq.read_table(io.BytesIO(s3_env.get_object(Bucket=BUCKET, Key="out/deltas/coffee.gani.parquet")
                                      ["Body"].read()))
    assert deltas.num_rows > 0
    assert _keys(s3_env, "out/previews/") == {"out/previews/astronaut.gani.png", "out/previews/coffee.gani.png"}
    assert {"out/summary.json", "out/preview_grid.png"} <= _keys(s3_env, "out/")
    parts = [key for key in _keys(s3_env, "out/rows/") if key.startswith("out/rows/part-gani-")]
    assert len(parts) == 3      # a part per task (1 image each)


def test_counts_and_a_rerun_on_s3_computes_nothing(runs):
    first, again = runs["first"], runs["again"]
    assert (first["images"], first["ok"], first["failed"], first["computed"]) == (3, 2, 1, 3)
    assert (again["computed"], again["skipped"], again["ok"], again["failed"]) == (0, 3, 2, 1)


def test_mlflow_artifacts_are_copied_from_s3(runs):
    client = MlflowClient(tracking_uri=runs["db"])
    run = client.get_run(runs["first"]["mlflow_run_id"])
    assert run.data.params["dataset_uri"] == f"s3://{BUCKET}/in"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "metrics.parquet", "preview_grid.png", "summary.json", "per_image.json", "table_images"}
