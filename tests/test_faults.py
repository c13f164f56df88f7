"""Faults on the real components (issue 12): what a run does when a worker, the flow's process, the S3 endpoint,
the disk, the optimisation or the checkpoint fails, and that no secret ends up in anything it writes.

Services, all on 127.0.0.1: Prefect's temporary API (prefect_test_harness); one 2-worker Dask LocalCluster reached
through ``dask_address`` and warmed before each test (its workers have loaded the generator and LPIPS: a killed
worker's replacement starts cold); moto's S3 server, which the tests stop and start again
(tests/support/s3.py's S3Endpoint; its buckets survive a stop); sqlite MLflow stores. Generator
``builtin-random:32``; wplus with 12 pivot steps (about half a second an image), gani 10 + 10 where a task must last.

botocore's own retries are off (``AWS_MAX_ATTEMPTS=1``) and gani's are short (5 retries from 0.2 s, about 6 s):
an outage meets gani_core.storage's retries, not botocore's. Every run has a canary secret in its environment
(``AWS_SECRET_ACCESS_KEY=CANARY``, also in every worker), which test_no_secret_in_anything_a_run_writes looks for.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import UUID

import boto3
import pytest
import s3fs
from distributed import Client
from mlflow.tracking import MlflowClient
from PIL import Image
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.fan_out import invert_dataset_on_dask
from flows.invert_dataset import invert_dataset
from flows.parameters import ClusterSettings, InversionSettings
from flows.reports import EveryResultFailedError
from gani_core import CheckpointError, storage
from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.dataset import list_images
from gani_core.images import read_image_bytes
from gani_core.invert import method_config
from gani_core.metrics import metric_notes, ms_ssim_note
from gani_core.run_folder import RunFolder
from tasks.inversion import warm_worker

from .conftest import BROKEN_PNG, REPO
from .support.dask_cluster import kill_busy_worker, times_scheduled, wait_until_idle
from .support.faults import SPEC, FaultInjector, soak, write_shapes
from .support.prefect_api import flow_run_ids, flush_prefect_logs, prefect_logs, storage_retries, task_run_states
from .support.s3 import SHORT_RETRIES, S3Endpoint, s3_service

pytestmark = pytest.mark.services

CANARY = "canary-5f0c2e9a-this-secret-must-never-be-written"
BUCKET = "gani-faults"
IMAGES = 8
FAST = InversionSettings(pivot_steps=12)    # wplus: about half a second per image, so that faults meet running tasks
SLOW = InversionSettings(pivot_steps=10, tune_steps=10)    # gani: a task long enough to kill in its middle
S3_RUNS: list = []                                          # flow run ids of the runs with S3 and the canary


# ----------------------------------------------------------------------------------------------------------------
# Services


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server with the bucket BUCKET; the environment (set before any worker starts) reaches it with the
    canary as its secret, and has the short retries (SHORT_RETRIES)."""
    with s3_service(BUCKET, tmp_path_factory.mktemp("cache"), secret=CANARY, env=SHORT_RETRIES) as ep:
        yield ep


@pytest.fixture(scope="module")
def cluster(endpoint: S3Endpoint, cluster: Client) -> Client:
    """conftest's cluster, started after ``endpoint``: its workers inherit the S3 environment and the canary."""
    return cluster


@pytest.fixture
def dask(cluster: Client) -> Client:
    """The cluster with its two workers up and warm."""
    cluster.wait_for_workers(2, timeout=120)
    cluster.run(warm_worker, resolve_checkpoint(SPEC))
    return cluster


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory, endpoint) -> Path:
    """IMAGES seeded 32 px shapes images in a local folder, and the same under s3://BUCKET/in/."""
    folder = tmp_path_factory.mktemp("shapes")
    write_shapes(str(folder), IMAGES)
    for path in sorted(folder.iterdir()):
        storage.write_bytes(f"s3://{BUCKET}/in/{path.name}", path.read_bytes())
    return folder


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of every MLflow store of this module (test_no_secret... reads all of it)."""
    return tmp_path_factory.mktemp("mlflow")


def mlflow_uri(output_uri: str, mlflow_dir: Path) -> str:
    """The MLflow store of the runs into ``output_uri``."""
    return f"sqlite:///{mlflow_dir / re.sub(r'[^A-Za-z0-9]+', '-', output_uri)}.db"


def mlflow_runs(output_uri: str, mlflow_dir: Path) -> list:
    client = MlflowClient(tracking_uri=mlflow_uri(output_uri, mlflow_dir))
    experiment = client.get_experiment_by_name("invert-dataset")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def run_flow(input_uri: str, output_uri: str, dask: Client, mlflow_dir: Path, settings: InversionSettings = FAST,
             method: str = "wplus", checkpoint: str = SPEC, limit: int | None = None):
    """invert-dataset on the cluster; its final state (``.result()`` is the summary, or raises its error)."""
    state = invert_dataset(input_uri=input_uri, output_uri=output_uri, checkpoint=checkpoint, method=method,
                           inversion=settings, cluster=ClusterSettings(dask_address=dask.scheduler.address),
                           mlflow_tracking_uri=mlflow_uri(output_uri, mlflow_dir), limit=limit, return_state=True)
    if output_uri.startswith("s3://") or input_uri.startswith("s3://"):
        S3_RUNS.append(state.state_details.flow_run_id)
    return state


def image_ids(n: int = IMAGES) -> list[str]:
    return [f"shape-{i:04d}" for i in range(n)]


def metrics_rows(folder: RunFolder) -> dict[str, dict]:
    rows = storage.read_parquet(folder.metrics_uri).to_pylist()
    assert len(rows) == len({r["image_id"] for r in rows}), "an image with more than one row"
    return {r["image_id"]: r for r in rows}


def whole_outputs(folder: RunFolder, method: str = "wplus") -> dict[str, dict]:
    """Every result file under ``folder``, read back whole: rows parse, deltas are Parquet tables, previews decode;
    no temporary file anywhere (local). The rows by image id; an ok row's deltas and preview are there."""
    if not folder.uri.startswith("s3://"):
        temp = [str(p) for p in Path(folder.uri).rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
        assert not temp, f"temporary files left: {temp}"
    rows = {}
    for name in storage.names_under(folder.path("rows")):     # the parts: each a whole Parquet file of rows
        assert name.startswith(f"part-{method}-") and name.endswith(".parquet"), name
        for row in storage.read_parquet(folder.path("rows", name)).to_pylist():
            assert row["method"] == method
            rows[row["image_id"]] = row
    deltas, previews = storage.names_under(folder.path("deltas")), storage.names_under(folder.path("previews"))
    for name in deltas:     # wplus stores no weight deltas: an empty table
        assert storage.read_parquet(folder.path("deltas", name)).num_rows > 0 or method == "wplus"
    for name in previews:
        with Image.open(io.BytesIO(storage.read_bytes(folder.path("previews", name)))) as img:
            img.load()
    for image_id, row in rows.items():
        if row["status"] == "ok":
            assert f"{image_id}.{method}.parquet" in deltas and f"{image_id}.{method}.png" in previews
    return rows


# ----------------------------------------------------------------------------------------------------------------
# gani_core.storage against a dropped endpoint


def _retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gani_core.storage"]


def test_storage_rides_out_a_short_outage_and_logs_each_retry(endpoint, caplog):
    uri = f"s3://{BUCKET}/unit/short-outage.bin"
    storage.write_bytes(uri, b"kept")
    with endpoint.outage(0.5), caplog.at_level(logging.WARNING, logger="gani_core.storage"):
        assert storage.read_bytes(uri) == b"kept"
    retries = _retries(caplog)
    assert retries, "the read met no outage"
    for k, message in enumerate(retries, 1):
        assert re.fullmatch(rf"{re.escape(uri)}: read failed \(EndpointConnectionError: Could not connect to the "
                            rf"endpoint URL: .*\); retry {k} of 5 in [\d.]+ s", message), message


def test_storage_gives_up_after_bounded_attempts_with_a_clear_error(endpoint, monkeypatch):
    monkeypatch.setenv("GANI_STORAGE_RETRIES", "2")
    uri = f"s3://{BUCKET}/unit/never-written.bin"
    with endpoint.down():
        with pytest.raises(ConnectionError, match=rf"^{re.escape(uri)}: write failed after 3 attempt\(s\) over "
                                                  r"[\d.]+ s: EndpointConnectionError: Could not connect"):
            storage.write_bytes(uri, b"lost")
        with pytest.raises(ConnectionError, match="read failed after 3 attempt"):
            storage.read_bytes(uri)
        # Unreachable is not missing: s3fs's own exists() would say False here, and a listing would look empty.
        with pytest.raises(ConnectionError, match="exists failed after 3 attempt"):
            storage.exists(uri)
        with pytest.raises(ConnectionError, match="list failed after 3 attempt"):
            storage.names_under(f"s3://{BUCKET}/unit")
        with pytest.raises(ConnectionError, match="read of 1 object"):
            storage.read_many([uri])
    assert not storage.exists(uri)         # nothing partial: the PUT never happened


def test_a_missing_object_is_never_retried(endpoint, caplog):
    there, missing = f"s3://{BUCKET}/unit/there.bin", f"s3://{BUCKET}/unit/missing.bin"
    storage.write_bytes(there, b"1")
    with caplog.at_level(logging.WARNING, logger="gani_core.storage"):
        with pytest.raises(FileNotFoundError):
            storage.read_bytes(missing)
        assert storage.read_many([there, missing]) == {there: b"1", missing: None}
        assert not storage.exists(missing)
    assert _retries(caplog) == []


def test_an_image_read_from_s3_rides_out_a_short_outage(endpoint, shapes):
    uri = f"s3://{BUCKET}/in/shape-0000.png"
    with endpoint.outage(0.5):
        assert read_image_bytes(uri) == (shapes / "shape-0000.png").read_bytes()


def test_a_listing_sees_what_other_processes_wrote_since(endpoint):
    folder = f"s3://{BUCKET}/unit/listing"
    storage.write_bytes(f"{folder}/a.json", b"{}")
    assert storage.names_under(folder) == {"a.json"}
    boto3.client("s3").put_object(Bucket=BUCKET, Key="unit/listing/b.json", Body=b"{}")    # a worker's write
    assert storage.names_under(folder) == {"a.json", "b.json"}


@pytest.mark.parametrize("prefix", ["in", ""], ids=["prefix", "bucket"])
def test_listing_the_input_while_s3_is_down_says_it_cannot_be_reached_not_that_it_is_missing(endpoint, shapes,
                                                                                              prefix, monkeypatch):
    """A prefix, and a bucket's root (for which s3fs's own ``exists`` answers False when the endpoint is down)."""
    bucket = f"{BUCKET}-listing"
    boto3.client("s3").create_bucket(Bucket=bucket)
    for path in sorted(shapes.iterdir()):
        boto3.client("s3").put_object(Bucket=bucket, Key=f"in/{path.name}", Body=path.read_bytes())
    input_uri = f"s3://{bucket}/{prefix}".rstrip("/")
    s3fs.S3FileSystem.clear_instance_cache()        # as in a new flow process: nothing listed yet
    with endpoint.outage(0.5):
        assert [i.image_id for i in list_images(input_uri)] == image_ids()     # a short outage is ridden out
    monkeypatch.setenv("GANI_STORAGE_RETRIES", "2")
    s3fs.S3FileSystem.clear_instance_cache()
    with endpoint.down(), pytest.raises(ConnectionError) as raised:
        list_images(input_uri)
    assert re.fullmatch(rf"input_uri {re.escape(input_uri)}: list failed after 3 "
                        r"attempt\(s\) over [\d.]+ s: EndpointConnectionError: Could not connect to the endpoint "
                        r"URL: .*", str(raised.value))


def test_orphaned_temp_files_are_removed_and_live_writers_left_alone(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    host = storage._host()
    (tmp_path / "rows").mkdir()
    orphan = tmp_path / "rows" / f".a.gani.json.~{dead.stdout.strip()}@{host}~x1y2.tmp"
    live = tmp_path / "rows" / f".b.gani.json.~{os.getpid()}@{host}~x1y2.tmp"
    elsewhere = tmp_path / ".metrics.parquet.~1@another-host~x1y2.tmp"
    for path in (orphan, live, elsewhere):
        path.write_bytes(b"half")
    (tmp_path / "rows" / "c.gani.json").write_bytes(b"{}")
    assert storage.remove_orphaned_temp_files(str(tmp_path)) == [str(orphan)]
    os.utime(elsewhere, (time.time() - storage.ORPHAN_AGE - 1,) * 2)
    assert storage.remove_orphaned_temp_files(str(tmp_path)) == [str(elsewhere)]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [live.name, "c.gani.json"]


# ----------------------------------------------------------------------------------------------------------------
# A lost worker, a lost flow process


def test_a_worker_killed_in_the_middle_of_a_task_loses_and_duplicates_nothing(dask, shapes, mlflow_dir, tmp_path):
    folder = RunFolder(str(tmp_path / "out"))
    killed: dict = {}

    def kill() -> None:
        killed["worker"] = kill_busy_worker(dask, timeout=120, settle=0.5)
        killed["rows"] = len(storage.names_under(folder.path("rows")))

    killer = threading.Thread(target=kill)
    killer.start()
    state = run_flow(str(shapes), folder.uri, dask, mlflow_dir, settings=SLOW, method="gani", limit=4)
    killer.join()
    summary = state.result()
    assert killed["worker"] is not None and killed["rows"] < 4     # killed while a result was still missing

    assert (summary["images"], summary["ok"], summary["failed"], summary["computed"]) == (4, 4, 0, 4)
    rows = metrics_rows(folder)
    assert sorted(rows) == image_ids(4) and all(r["status"] == "ok" for r in rows.values())
    assert sorted(whole_outputs(folder, "gani")) == image_ids(4)
    # The lost task ran again on the other worker: the scheduler sent it to a worker twice. (Prefect's history of
    # that task run may lack the first Running: the killed worker can die before its events reach the API.)
    _, _, lost_keys = killed["worker"]
    assert lost_keys and all(times_scheduled(dask, key) >= 2 for key in lost_keys)
    flush_prefect_logs(dask)
    states = task_run_states(state.state_details.flow_run_id)
    inversions = {name: names for name, names in states.items() if name.startswith("invert-shape-")}
    assert len(inversions) == 4 and all(names[-1] == "Completed" for names in inversions.values()), states


def test_the_flow_process_killed_mid_run_is_resumed_with_only_the_missing_images(dask, shapes, prefect_api,
                                                                                  mlflow_dir, tmp_path):
    folder = RunFolder(str(tmp_path / "out"))
    command = [sys.executable, "-m", "flows.invert_dataset", "--input-uri", str(shapes), "--output-uri", folder.uri,
               "--checkpoint", SPEC, "--method", "wplus", "--pivot-steps", str(FAST.pivot_steps),
               "--dask-address", dask.scheduler.address, "--mlflow-tracking-uri", mlflow_uri(folder.uri, mlflow_dir)]
    log = tmp_path / "flow.log"
    with log.open("wb") as out:
        flow_process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PREFECT_API_URL": prefect_api},
                                        stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while len(storage.names_under(folder.path("rows"))) < 2 and flow_process.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            flow_process.send_signal(signal.SIGKILL)
            flow_process.wait()
    assert flow_process.returncode == -signal.SIGKILL, log.read_text()[-4000:]
    wait_until_idle(dask)       # the workers finish the tasks they were running when the flow died
    done = whole_outputs(folder)
    assert 2 <= len(done) < IMAGES and all(r["status"] == "ok" for r in done.values())
    assert not storage.exists(folder.metrics_uri)       # the killed run never got to its tables
    [killed] = mlflow_runs(folder.uri, mlflow_dir)
    assert killed.info.status == "RUNNING"              # nothing runs at SIGKILL
    killed_flow_run = UUID(killed.data.tags["prefect_flow_run_id"])
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(killed_flow_run).state.type.value == "RUNNING"

    rerun = run_flow(str(shapes), folder.uri, dask, mlflow_dir)
    summary = rerun.result()
    assert (summary["skipped"], summary["computed"]) == (len(done), IMAGES - len(done))
    assert (summary["images"], summary["ok"], summary["failed"]) == (IMAGES, IMAGES, 0)
    assert sorted(metrics_rows(folder)) == image_ids() == sorted(whole_outputs(folder))
    # The rerun into the same folder found the killed run's leftovers: its MLflow run KILLED, its flow run Crashed.
    assert [r.info.status for r in mlflow_runs(folder.uri, mlflow_dir)] == ["KILLED", "FINISHED"]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(killed_flow_run).state.type.value == "CRASHED"
    flush_prefect_logs(dask)                            # the flow's last lines may still be in its log worker
    logs = prefect_logs(rerun.state_details.flow_run_id)
    said = [m for m in logs if killed.info.run_id in m]
    assert len(said) == 1 and "marked KILLED" in said[0] and f"flow run {killed_flow_run} marked Crashed" in said[0]
    # The caveat of MS-SSIM at 32 px, once for the run (the workers leave it to the flow).
    assert [m for m in logs if "scales" in m] == [ms_ssim_note(32)]
    assert summary["notes"] == metric_notes(32)


# ----------------------------------------------------------------------------------------------------------------
# The S3 endpoint gone for a while


def _set_worker_env(dask: Client, name: str, value: str) -> None:
    dask.run(lambda: os.environ.__setitem__(name, value))


def test_an_s3_outage_shorter_than_the_retries_is_ridden_out(dask, shapes, endpoint, mlflow_dir):
    folder = RunFolder(f"s3://{BUCKET}/out-ridden-out")
    with FaultInjector(folder.path("deltas"), dask.scheduler.address, total=IMAGES, endpoint=endpoint, outage=1.5,
                       outage_at=1) as injector:
        state = run_flow(str(shapes), folder.uri, dask, mlflow_dir)
    summary = state.result()
    assert injector.count("s3-outage") == 1
    assert (summary["images"], summary["ok"], summary["failed"]) == (IMAGES, IMAGES, 0)
    assert sorted(metrics_rows(folder)) == image_ids() == sorted(whole_outputs(folder))
    flush_prefect_logs(dask)
    assert storage_retries(prefect_logs(state.state_details.flow_run_id)) >= 1     # it met the run, and was retried


def test_an_s3_outage_longer_than_the_retries_fails_those_images_clearly_and_the_rerun_completes(
        dask, shapes, endpoint, mlflow_dir):
    folder = RunFolder(f"s3://{BUCKET}/out-outage")
    # The workers give up after one retry (about 0.25 s); this process, which writes the run's tables, keeps 5
    # (about 6 s) and so outlasts the 3 s outage.
    _set_worker_env(dask, "GANI_STORAGE_RETRIES", "1")
    try:
        with FaultInjector(folder.path("deltas"), dask.scheduler.address, total=IMAGES, endpoint=endpoint, outage=3.0,
                           outage_at=1):
            summary = run_flow(str(shapes), folder.uri, dask, mlflow_dir).result()
    finally:
        _set_worker_env(dask, "GANI_STORAGE_RETRIES", os.environ["GANI_STORAGE_RETRIES"])
    rows = metrics_rows(folder)
    assert sorted(rows) == image_ids()
    failed = {image_id: r["error"] for image_id, r in rows.items() if r["status"] != "ok"}
    assert failed and summary["failed"] == len(failed)
    for error in failed.values():
        assert re.fullmatch(rf"ConnectionError: s3://{BUCKET}/\S+: \w+ failed after 2 attempt\(s\) over [\d.]+ s: "
                            r"EndpointConnectionError: Could not connect to the endpoint URL: .*", error), error
    on_storage = whole_outputs(folder)      # nothing partial: what is there reads back whole
    assert all(on_storage[i]["status"] == "ok" for i in rows if i not in failed)

    again = run_flow(str(shapes), folder.uri, dask, mlflow_dir).result()
    assert (again["skipped"], again["computed"]) == (IMAGES - len(failed), len(failed))
    assert (again["ok"], again["failed"]) == (IMAGES, 0)
    assert sorted(whole_outputs(folder)) == image_ids()


# ----------------------------------------------------------------------------------------------------------------
# The output disk full


class FullDisk:
    """An output folder whose storage fills up on demand: a small tmpfs filled by a file (ENOSPC), or, where this
    process may not mount one, a file size limit of 0 bytes in the worker processes (RLIMIT_FSIZE: EFBIG; CPython
    ignores SIGXFSZ, so a write fails instead of killing the worker)."""

    def __init__(self, how: str, root: Path, dask: Client) -> None:
        self.how, self.root, self.dask = how, root, dask
        self.filler = root / "filler"
        if how == "tmpfs":
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)],
                                     capture_output=True, text=True)
            if mounted.returncode:
                pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the file-size-limit case runs")
        self.error = r"\[Errno 28\] No space left on device" if how == "tmpfs" else r"\[Errno 27\] File too large"

    def fill(self) -> None:
        if self.how == "tmpfs":
            with self.filler.open("wb", buffering=0) as f:      # unbuffered: closing it has nothing left to write
                for chunk in (1 << 20, 4096, 1):
                    try:
                        while True:
                            f.write(b"\0" * chunk)
                    except OSError:
                        pass
        else:
            self.dask.run(lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                     (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1])))

    def free(self) -> None:
        if self.how == "tmpfs":
            self.filler.unlink(missing_ok=True)
        else:
            self.dask.run(lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                     (resource.getrlimit(resource.RLIMIT_FSIZE)[1],) * 2))

    def close(self) -> None:
        self.free()
        if self.how == "tmpfs":
            subprocess.run(["umount", "-l", str(self.root)], check=False)


@pytest.fixture(params=["tmpfs", "file-size-limit"])
def full_disk(request, dask: Client, tmp_path: Path):
    (tmp_path / "disk").mkdir()
    disk = FullDisk(request.param, tmp_path / "disk", dask)
    try:
        yield disk
    finally:
        disk.close()


def test_a_full_disk_fails_the_images_it_meets_naming_the_path_and_keeps_what_was_written(full_disk, dask, shapes,
                                                                                          mlflow_dir):
    folder = RunFolder(str(full_disk.root / "out"))

    def fill_after_two_rows() -> None:
        while len(storage.names_under(folder.path("rows"))) < 2:
            time.sleep(0.05)
        full_disk.fill()

    filler = threading.Thread(target=fill_after_two_rows, daemon=True)
    filler.start()
    state = run_flow(str(shapes), folder.uri, dask, mlflow_dir)
    filler.join(timeout=60)
    if full_disk.how == "tmpfs":      # the run's own tables do not fit either: the flow fails, saying where
        with pytest.raises(OSError, match=rf"{full_disk.error}: '{re.escape(folder.metrics_uri)}'"):
            state.result()
        assert [r.info.status for r in mlflow_runs(folder.uri, mlflow_dir)] == ["FAILED"]
    else:                             # the flow's process has no limit: its table holds the failed rows
        failures = {i: r["error"] for i, r in metrics_rows(folder).items() if r["status"] != "ok"}
        assert failures and all(re.fullmatch(rf"OSError: {full_disk.error}: '{re.escape(folder.uri)}/\S+'", e)
                                for e in failures.values()), failures
    # Each image that met the full disk failed saying what and where (the flow's log, one line per image).
    flush_prefect_logs(dask)
    failed_lines = [m for m in prefect_logs(state.state_details.flow_run_id) if " [wplus]: failed: " in m]
    assert failed_lines and all(re.search(rf"failed: OSError: {full_disk.error}: '{re.escape(folder.uri)}/", m)
                                for m in failed_lines), failed_lines
    # What was written before is whole, and no temporary file is left.
    done = whole_outputs(folder)
    assert 2 <= len(done) < IMAGES and all(r["status"] == "ok" for r in done.values())

    full_disk.free()
    summary = run_flow(str(shapes), folder.uri, dask, mlflow_dir).result()
    assert (summary["skipped"], summary["computed"], summary["ok"]) == (len(done), IMAGES - len(done), IMAGES)
    assert sorted(metrics_rows(folder)) == image_ids() == sorted(whole_outputs(folder))


# ----------------------------------------------------------------------------------------------------------------
# A diverging optimisation; a checkpoint the workers cannot read


@flow(name="invert-with-an-exploding-method")
def exploding_run(input_uri: str, output_uri: str, dask_address: str) -> dict:
    """The flows' body (flows/fan_out.py) with gani at an absurd tuning lr next to wplus, 2 images per task."""
    configs = {"gani": method_config("gani", pivot_steps=2, tune_steps=3, lr=1e6), "wplus": method_config("wplus", 2)}
    return invert_dataset_on_dask(input_uri, list_images(input_uri, 4), RunFolder(output_uri),
                                  resolve_checkpoint(SPEC), configs, InversionSettings(batch_size=2),
                                  ClusterSettings(dask_address=dask_address)).summary


def test_an_exploding_loss_fails_its_images_with_the_reason_and_the_others_complete(dask, shapes, tmp_path):
    folder = RunFolder(str(tmp_path / "out"))
    summary = exploding_run(str(shapes), folder.uri, dask.scheduler.address)
    rows = storage.read_parquet(folder.metrics_uri).to_pylist()
    assert sorted((r["image_id"], r["method"]) for r in rows) == sorted(
        (i, m) for i in image_ids(4) for m in ("gani", "wplus"))
    for r in rows:
        if r["method"] == "gani":
            assert r["status"] == "failed" and r["lpips"] is None
            assert re.fullmatch(rf"InversionError: {r['image_id']}: the tuning diverged \(non-finite loss or weights "
                                r"at step \d of 3\); try a lower tuning lr", r["error"]), r["error"]
        else:
            assert r["status"] == "ok" and 0 < r["lpips"] < 1
    assert summary["methods"]["gani"]["failures"].keys() == set(image_ids(4))
    assert (summary["methods"]["wplus"]["ok"], summary["methods"]["wplus"]["failed"]) == (4, 0)
    assert not any(name.endswith(".gani.parquet") for name in storage.names_under(folder.path("deltas")))


def test_a_missing_checkpoint_fails_the_flow_up_front_with_a_clear_error(dask, shapes, mlflow_dir, tmp_path):
    missing = tmp_path / "models" / "missing.safetensors"
    state = run_flow(str(shapes), str(tmp_path / "out"), dask, mlflow_dir, checkpoint=str(missing))
    assert state.is_failed()
    with pytest.raises(CheckpointError, match=rf"^checkpoint not found: {re.escape(str(missing))}$"):
        state.result()
    assert not (tmp_path / "out").exists()         # nothing was started


class _RunsCode:
    """Pickles as a call of os.system: what a hostile checkpoint holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("kind", ["corrupt", "hostile"])
def test_a_checkpoint_the_workers_cannot_read_fails_each_image_with_the_reason(kind, dask, shapes, g32_file,
                                                                              mlflow_dir, tmp_path):
    marker = tmp_path / "the-checkpoint-ran-code"
    if kind == "corrupt":           # a download cut in half: its header is whole, its tensors are not
        path = tmp_path / "g32-truncated.safetensors"
        path.write_bytes(g32_file.read_bytes()[: g32_file.stat().st_size // 2])
        reason = rf"CheckpointError: {re.escape(str(path))}: corrupt safetensors file \(.+\)"
    else:                           # a network pickle that runs a command when unpickled
        path = tmp_path / "network-snapshot.pkl"
        path.write_bytes(pickle.dumps(_RunsCode(f"touch {marker}"), protocol=2))
        reason = r"UnsafeCheckpointError: refused an unsafe checkpoint.*system.*"
    folder = RunFolder(str(tmp_path / "out"))
    state = run_flow(str(shapes), folder.uri, dask, mlflow_dir, checkpoint=str(path), limit=2)
    assert state.is_failed()
    if kind == "corrupt":           # its header says how long it is: refused up front (check_format), issue 22
        with pytest.raises(CheckpointError, match=rf"^{reason.removeprefix('CheckpointError: ')}$"):
            state.result()
        assert not (tmp_path / "out").exists()
        return
    with pytest.raises(EveryResultFailedError, match=r"^every image failed \(2 of 2\)") as every:
        state.result()              # every image failed: the flow run is Failed, after its tables (issue 22)
    summary = every.value.summary
    assert (summary["images"], summary["ok"], summary["failed"]) == (2, 0, 2)
    rows = metrics_rows(folder)
    assert sorted(rows) == image_ids(2)
    assert all(re.fullmatch(reason, r["error"]) for r in rows.values()), [r["error"] for r in rows.values()]
    assert {i: r["error"] for i, r in whole_outputs(folder).items()} == {i: r["error"] for i, r in rows.items()}
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# Load; secrets


def test_soak_every_image_ends_with_exactly_one_row(dask, endpoint, mlflow_dir):
    write_shapes(f"s3://{BUCKET}/soak-in", 20, seed=1)
    f = soak(f"s3://{BUCKET}/soak-in", f"s3://{BUCKET}/soak-out", dask.scheduler.address, endpoint, kill_every=8,
             outage=1.5, mlflow_tracking_uri=f"sqlite:///{mlflow_dir / 'soak.db'}")
    S3_RUNS.extend(UUID(i) for i in f["flow_run_ids"])
    assert f["kills"] >= 1 and f["outages"] == 1, f["events"]
    # Under faults: one row per image, none lost, none twice; a failure names what it could not reach.
    assert (f["rows"], f["lost"], f["duplicated"], f["unexpected"]) == (20, [], [], []), f
    assert all(f"{BUCKET}/soak-" in error for error in f["failures"].values()), f["failures"]
    # The rerun computes at most what failed, and then every image has its one ok row.
    assert f["rerun_computed"] <= f["failed"] and f["rerun_computed"] + f["rerun_skipped"] == 20
    assert (f["rerun_ok"], f["rerun_failed"], f["rerun_lost"], f["rerun_duplicated"], f["row_files"]) == \
        (20, 0, [], [], 20)


def test_no_secret_in_anything_a_run_writes(dask, shapes, endpoint, mlflow_dir):
    # The canary is the secret this process and every worker use.
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == CANARY
    assert set(dask.run(lambda: os.environ["AWS_SECRET_ACCESS_KEY"]).values()) == {CANARY}
    s3 = boto3.client("s3")
    for name in ("shape-0000.png", "shape-0001.png"):
        s3.put_object(Bucket=BUCKET, Key=f"in-secrets/{name}", Body=(shapes / name).read_bytes())
    s3.put_object(Bucket=BUCKET, Key="in-secrets/broken.png", Body=BROKEN_PNG)
    summary = run_flow(f"s3://{BUCKET}/in-secrets", f"s3://{BUCKET}/out-secrets", dask, mlflow_dir).result()
    assert (summary["ok"], summary["failed"]) == (2, 1)      # it read and wrote with those credentials; one error row
    missing = run_flow(f"s3://{BUCKET}/in-secrets", f"s3://{BUCKET}/out-secrets-2", dask, mlflow_dir,
                       checkpoint=f"s3://{BUCKET}/models/missing.safetensors")
    with pytest.raises(CheckpointError):
        missing.result()
    flush_prefect_logs(dask)

    found: list[str] = []
    # Every object in the bucket: rows, errors, deltas, previews, tables and summaries of every S3 run here.
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    found += [key for key in keys if CANARY.encode() in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()]
    # Every file of the MLflow stores: params, tags, metrics, artifacts.
    files = [p for p in mlflow_dir.rglob("*") if p.is_file()]
    found += [str(p) for p in files if CANARY.encode() in p.read_bytes()]
    # Prefect: the logs, artifacts, parameters and states of every S3 run here (and their subflows).
    ids = [i for root in S3_RUNS for i in flow_run_ids(root)]
    texts = [m for root in S3_RUNS for m in prefect_logs(root)]
    with get_client(sync_client=True) as client:
        runs = FlowRunFilter(id=FlowRunFilterId(any_=ids))
        texts += [a.model_dump_json() for a in client.read_artifacts(flow_run_filter=runs)]
        texts += [r.model_dump_json() for r in client.read_flow_runs(flow_run_filter=runs)]
        texts += [s.model_dump_json() for i in ids for s in client.read_flow_run_states(i)]
    texts.append(json.dumps(summary, default=str))
    found += [t[:300] for t in texts if CANARY in t]
    # What was searched is what the runs wrote (a search of nothing finds no secret either).
    assert f"s3://{BUCKET}/in-secrets/broken.png" in "".join(texts) and len(keys) > 20 and len(files) > 3
    assert any("CheckpointError" in t and "missing.safetensors" in t for t in texts)
    assert found == []
