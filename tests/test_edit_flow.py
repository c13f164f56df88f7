"""The edit-dataset flow (issue 19): what `gani edit` does, on Dask, a batch of images per task, on a run folder on
local disk or on S3; its MLflow run, resuming, bad input, an image or a task that fails alone.

Real components on 127.0.0.1: Prefect's temporary API, one 2-worker LocalCluster (processes) started after moto's S3
server, so that its workers reach it too, and sqlite MLflow stores. The run: three photos inverted with gani (2 + 3
steps) into a 32 px generator carrying factor directions and a factor probe, so that factor_change is measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.task_runners import ThreadPoolTaskRunner

from flows.edit_dataset import (
    EditBatch,
    edit_dataset,
    edit_images_on_dask,
    image_results,
    main,
    prepare_job,
)
from flows.parameters import ClusterSettings
from flows.window import Batches
from gani_core import storage
from gani_core.cli import main as gani
from gani_core.edit_runs import EDITS_SCHEMA, EditFolder
from gani_core.errors import GaniError
from gani_core.run_folder import RunFolder
from tasks import mlflow_runs
from tasks.editing import DirectionsDifferError, task_rows
from tasks.inversion import worker_generator

from .conftest import EXAMPLES, REPO, S3_BUCKET
from .support.dask_cluster import local_cluster
from .support.processes import free_port

pytestmark = pytest.mark.services

IMAGES = ("astronaut", "chelsea", "coffee")
HUE = ["factor:hue"]
STRENGTHS = [-2.0, 0.0, 2.0]
FLOAT_COLUMNS = ("lpips_to_original_edit", "factor_change", "factor_change_original")


def _quiet(argv: list[str]) -> int:
    """``gani`` in this process, what it prints swallowed (module fixtures have no capsys)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return gani(argv)


@pytest.fixture(scope="module")
def run(factor_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run folder: three photos, gani, 2 + 3 steps."""
    images = tmp_path_factory.mktemp("photos")
    for name in IMAGES:
        shutil.copy(EXAMPLES / f"{name}.jpg", images / f"{name}.jpg")
    out = tmp_path_factory.mktemp("edit-flow") / "run"
    assert _quiet(["invert", str(images), "--checkpoint", str(factor_checkpoint), "--method", "gani",
                   "--pivot-steps", "2", "--tune-steps", "3", "--batch-size", "3", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def cluster(s3, prefect_api: str) -> Iterator:
    """conftest's 2-worker LocalCluster, started once the S3 server's environment is set: its workers reach it."""
    with local_cluster(prefect_api) as client:
        yield client


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def cli_rows(run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What `gani edit` writes for the flow's inputs."""
    out = tmp_path_factory.mktemp("cli") / "edits"
    assert _quiet(["edit", str(run), "--direction", *HUE, "--strengths", "-2", "0", "2", "--out", str(out),
                   "--quiet"]) == 0
    return pq.read_table(out / "edits.parquet").to_pylist()


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture(scope="module")
def flow_runs(run: Path, cluster, db: str) -> dict:
    """The flow on the local run, two images per task; then again, with nothing left to do."""
    params = {"run_uri": str(run), "directions": HUE, "strengths": STRENGTHS, "batch_size": 2,
              "cluster": ClusterSettings(dask_address=cluster.scheduler.address), "mlflow_tracking_uri": db}
    first = edit_dataset(**params)
    before = _mtimes(run / "edits" / "strips")
    again = edit_dataset(**params)
    return {"first": first, "again": again, "mtimes": (before, _mtimes(run / "edits" / "strips"))}


def _key(row: dict) -> tuple:
    return row["image_id"], row["method"], row["direction"], row["strength"]


def assert_same_rows(rows: list[dict], expected: list[dict]) -> None:
    """The same rows (every column but ``finished``), their values within 1e-5."""
    assert [_key(r) for r in sorted(rows, key=_key)] == [_key(r) for r in sorted(expected, key=_key)]
    for a, b in zip(sorted(rows, key=_key), sorted(expected, key=_key), strict=True):
        for column in EDITS_SCHEMA.names:
            if column in FLOAT_COLUMNS:
                assert (a[column] is None) == (b[column] is None), column
                assert a[column] is None or a[column] == pytest.approx(b[column], abs=1e-5), column
            elif column != "finished":
                assert a[column] == b[column], column


# --- what it writes -------------------------------------------------------------------------------------------------


def test_the_flow_writes_what_gani_edit_writes(flow_runs: dict, run: Path, cli_rows: list[dict]) -> None:
    table = pq.read_table(run / "edits" / "edits.parquet")
    assert table.schema.equals(EDITS_SCHEMA)
    assert len(cli_rows) == len(IMAGES) * len(STRENGTHS)
    assert all(r["status"] == "ok" and r["factor_change"] is not None for r in cli_rows)
    assert_same_rows(table.to_pylist(), cli_rows)
    assert sorted(p.name for p in (run / "edits" / "strips").iterdir()) == [
        f"{i}.gani.factor-hue.png" for i in IMAGES]
    assert len(list((run / "edits" / "rows").iterdir())) == 2        # a part per task: 2 images, then 1


def test_the_summary_counts_images_and_rows(flow_runs: dict, run: Path) -> None:
    s = flow_runs["first"]
    assert (s["rows"], s["ok"], s["failed"]) == (9, 9, 0)
    assert (s["images_edited"], s["computed"], s["skipped"], s["run_failed"]) == (3, 3, 0, 0)
    assert (s["strips_written"], s["strips_kept"], s["strips_failed"]) == (3, 0, 0)   # as gani edit counts them
    assert s["written"] == {"edits.parquet": str(run / "edits" / "edits.parquet")}
    assert s["means"]["lpips_to_original_edit_mean"] > 0


def test_the_mlflow_run_holds_the_means_a_table_of_strips_and_edits_parquet(flow_runs: dict, db: str, run: Path,
                                                                           tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=db)
    mlflow_run = client.get_run(flow_runs["first"]["mlflow_run_id"])
    experiment = client.get_experiment(mlflow_run.info.experiment_id)
    assert experiment.name == "edit-dataset" and mlflow_run.info.status == "FINISHED"
    p = mlflow_run.data.params
    assert (p["run_uri"], p["directions"], p["strengths"], p["method"], p["layers"]) == (
        str(run), "factor:hue", "-2 0 2", "gani", "None")
    rows = pq.read_table(run / "edits" / "edits.parquet").to_pylist()
    m = mlflow_run.data.metrics
    for strength in STRENGTHS:
        at = [r for r in rows if r["strength"] == strength]
        for column in FLOAT_COLUMNS:
            name = f"{column}.factor-hue.s{strength:g}"
            assert m[name] == pytest.approx(sum(r[column] for r in at) / len(at), abs=1e-9), name
    assert "lpips_to_original_edit.factor-hue.s-2" in m and "lpips_to_original_edit.factor-hue.s2" in m
    assert (m["images"], m["ok"], m["failed"], m["skipped"]) == (3, 3, 0, 0)
    assert m["lpips_to_original_edit_mean"] == pytest.approx(sum(r["lpips_to_original_edit"] for r in rows) / 9)
    signed = [r["factor_change"] * (1 if r["strength"] > 0 else -1) for r in rows if r["strength"] != 0]
    assert m["factor_change_mean"] == pytest.approx(sum(signed) / len(signed))
    assert {a.path for a in client.list_artifacts(mlflow_run.info.run_id)} == {
        "edits.parquet", "per_image.json", "table_images"}
    split = json.loads(Path(client.download_artifacts(mlflow_run.info.run_id, "per_image.json",
                                                      str(tmp_path))).read_text())
    assert split["columns"] == ["image_id", "method", "direction", "shown", *FLOAT_COLUMNS, "strip"]
    table = [dict(zip(split["columns"], values, strict=True)) for values in split["data"]]
    assert sorted(r["image_id"] for r in table) == list(IMAGES)
    assert all(r["strip"]["type"] == "image" for r in table)


def test_a_rerun_computes_nothing_and_uploads_no_images(flow_runs: dict, db: str) -> None:
    s = flow_runs["again"]
    assert (s["computed"], s["skipped"], s["rows"], s["failed"]) == (0, 3, 9, 0)
    assert (s["strips_written"], s["strips_kept"], s["strips_failed"]) == (0, 3, 0)
    before, after = flow_runs["mtimes"]
    assert before == after and len(before) == 3
    client = MlflowClient(tracking_uri=db)
    rerun = client.get_run(s["mlflow_run_id"])
    assert {a.path for a in client.list_artifacts(rerun.info.run_id)} == {"edits.parquet"}
    first = flow_runs["first"]["mlflow_run_id"]
    assert rerun.data.tags["image_table"] == f"not logged: nothing computed; the latest is in run {first}"
    assert rerun.data.metrics["lpips_to_original_edit_mean"] == pytest.approx(
        client.get_run(first).data.metrics["lpips_to_original_edit_mean"])


# --- failures -------------------------------------------------------------------------------------------------------


def _flow_run_state(state):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).state


@pytest.mark.parametrize(("case", "expected"), [
    ({"directions": ["factor:nope"]}, "factor:nope: no such factor; this generator has hue, size"),
    ({"image_ids": ["nope"]}, "no image 'nope' in this run"),
    ({"strengths": [float("nan")]}, "strength 'nan' is not a finite number"),
    ({"layers": "0-99"}, "layers 0-99: beyond this generator's style inputs"),
    ({"method": "pti"}, "no successful pti result in this run"),
    ({"out_uri": "FILE"}, "out_uri FILE is a file: give a folder"),
])
def test_bad_input_fails_in_one_line_before_the_cluster_and_mlflow_start(case: dict, expected: str, run: Path,
                                                                        prefect_api: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file")
    case = {k: str(tmp_path / "file") if v == "FILE" else v for k, v in case.items()}
    store = tmp_path / "mlflow.db"
    started = time.monotonic()
    # A cluster that does not exist: asking it for anything would fail otherwise.
    state = edit_dataset(**{"run_uri": str(run), "directions": HUE, "strengths": STRENGTHS, **case,
                            "cluster": ClusterSettings(dask_address=f"tcp://127.0.0.1:{free_port()}"),
                            "mlflow_tracking_uri": f"sqlite:///{store}"}, return_state=True)
    assert time.monotonic() - started < 30
    assert state.is_failed()
    with pytest.raises((GaniError, ValueError)) as raised:
        state.result()
    assert expected.replace("FILE", str(tmp_path / "file")) in str(raised.value)
    message = _flow_run_state(state).message
    assert "\n" not in message and expected.replace("FILE", str(tmp_path / "file")) in message
    assert not store.exists()                       # no MLflow store opened
    assert not (tmp_path / "edits").exists()


def test_the_shell_refuses_bad_input_in_one_line_with_exit_2(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--run-uri", str(run), "--direction", "factor:nope", "--strengths", "-2", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("python -m flows.edit_dataset: error: factor:nope: no such factor")


def test_an_image_whose_deltas_are_unreadable_fails_alone(run: Path, cluster, db: str, tmp_path: Path) -> None:
    copied = tmp_path / "run"
    shutil.copytree(run, copied, ignore=shutil.ignore_patterns("edits", "mlflow.db"))
    (copied / "deltas" / "coffee.gani.parquet").write_bytes(b"not parquet")
    state = edit_dataset(run_uri=str(copied), directions=HUE, strengths=[-1.0, 1.0], batch_size=1,
                         cluster=ClusterSettings(dask_address=cluster.scheduler.address), mlflow_tracking_uri=db,
                         return_state=True)
    assert state.is_completed() and state.message == "1 of 3 result(s) failed"
    assert _flow_run_state(state).message == "1 of 3 result(s) failed"
    summary = state.result()
    assert (summary["run_failed"], summary["failed"], summary["ok"]) == (1, 2, 4)
    assert (summary["strips_written"], summary["strips_kept"], summary["strips_failed"]) == (2, 0, 1)
    rows = {(r["image_id"], r["strength"]): r for r in pq.read_table(copied / "edits" / "edits.parquet").to_pylist()}
    assert [rows[("coffee", s)]["status"] for s in (-1.0, 1.0)] == ["failed", "failed"]
    assert rows[("coffee", 1.0)]["error"].startswith(  # gani_core.deltas.DeltasError, naming the file
        f"{copied / 'deltas' / 'coffee.gani.parquet'}: not a readable deltas file (")
    assert all(rows[(i, s)]["status"] == "ok" for i in ("astronaut", "chelsea") for s in (-1.0, 1.0))


def test_a_task_that_raises_gives_failed_rows_for_its_images_and_the_others_complete(run: Path, tmp_path: Path,
                                                                                     prefect_api: str) -> None:
    """A batch whose worker parses a direction into another offset than the flow (here: a digest changed by hand)
    raises; after its retry its images get failed rows, written to the edits folder; the other batch completes.
    Tasks in threads of this process: the fan-out's own logic, without Dask."""
    copied = tmp_path / "run"
    shutil.copytree(run, copied, ignore=shutil.ignore_patterns("edits", "mlflow.db"))
    folder = RunFolder(str(copied))
    job = prepare_job(folder, folder.read_run().rows, HUE, [-1.0, 1.0], None)
    wrong = dataclasses.replace(job, request=dataclasses.replace(job.request, digests=(("factor-hue", "0" * 64),)))
    rows = task_rows(job.rows)
    todo = {r["image_id"]: ["factor-hue"] for r in rows}
    work = Batches([EditBatch(job, rows[:2], {i: todo[i] for i in IMAGES[:2]}),
                    EditBatch(wrong, rows[2:], {IMAGES[2]: todo[IMAGES[2]]})], size=lambda b: len(b.rows))
    results = edit_images_on_dask.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(work, 2)
    assert [r["status"] for r in image_results(results[0])] == ["ok", "ok"]
    (failed,) = image_results(results[1])
    assert failed["status"] == "failed" and failed["error"].startswith("factor-hue: DirectionsDifferError: ")
    stored = EditFolder(job.out.uri).stored_rows()
    assert [r["status"] for r in stored[("coffee", "gani", "factor-hue")]] == ["failed", "failed"]
    assert all(r["status"] == "ok" for i in IMAGES[:2] for r in stored[(i, "gani", "factor-hue")])


def test_a_worker_refuses_a_direction_parsed_otherwise_than_in_the_flow(run: Path) -> None:
    folder = RunFolder(str(run))
    job = prepare_job(folder, folder.read_run().rows, HUE, STRENGTHS, None)
    G = worker_generator(job.request.ckpt, "cpu")
    assert job.request.plan(G).digests == job.plan.digests
    wrong = dataclasses.replace(job.request, digests=(("factor-hue", "0" * 64),))
    with pytest.raises(DirectionsDifferError, match="factor-hue parsed on this worker differ from the flow's"):
        wrong.plan(G)


def test_ctrl_c_in_the_shell_on_the_temporary_api_is_one_line_and_130_within_seconds(run: Path,
                                                                                    tmp_path: Path) -> None:
    """`python -m flows.edit_dataset` as the README runs it (Prefect's temporary API, a LocalCluster), Ctrl-C from a
    terminal in the middle of the fan-out: SIGINT to the whole process group, the temporary API's server and the
    Dask workers too. It was 4 minutes of connection errors (the server gone, the flow still reporting its Crashed
    states), a traceback and exit 1; now the flow's runs are recorded Crashed, one line, 130, and nothing left."""
    copied = tmp_path / "run"
    shutil.copytree(run, copied, ignore=shutil.ignore_patterns("edits", "mlflow.db", "mlartifacts"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        # Its own process group, SIGINT handled as a terminal gives it (see tests/test_cli.py's Ctrl-C test).
        proc = subprocess.Popen([sys.executable, "-m", "flows.edit_dataset", "--run-uri", str(copied),
                                 "--directions", *HUE, "--strengths", *map(str, STRENGTHS), "--n-workers", "1"],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 300
            while "submitted at a time" not in log.read_text() and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2.0)                             # its first task still runs (the worker's start)
            assert proc.poll() is None, log.read_text()[-4000:]
            os.killpg(proc.pid, signal.SIGINT)          # what a terminal's Ctrl-C does
            interrupted = time.monotonic()
            proc.wait(timeout=120)
            took = time.monotonic() - interrupted
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    said = log.read_text()
    lines = said.splitlines()
    assert proc.returncode == 130, said[-4000:]
    assert took < 30, said[-4000:]
    assert "Error logging to API" not in said and "Connection refused" not in said, said[-4000:]
    line = f"interrupted: what was written under {copied / 'edits'} is kept; rerun the same command to continue"
    assert [x for x in lines if "interrupted:" in x] == [line]
    # after it, only the temporary API's server stopping at exit (Prefect's line): no traceback
    assert all("Stopping temporary server" in x for x in lines[lines.index(line) + 1:]), said[-4000:]
    # the flow and its fan-out subflow recorded their final states on the API (Crashed)
    assert sum("Flow run '" in x and "Finished in state" in x for x in lines) == 2, said[-4000:]
    time.sleep(1.0)
    assert _running_in_group(proc.pid) == []        # the temporary API's server and the Dask workers are gone


def _running_in_group(pgid: int) -> list[str]:
    """The processes of the process group ``pgid`` that are still running (not zombies, which a container's init may
    leave unreaped): ``PID COMMAND`` each."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            comm, fields = stat.read_text().rsplit(")", 1)
            state, _ppid, group = fields.split()[:3]
            if int(group) == pgid and state != "Z":
                running.append(f"{stat.parent.name} {comm.split('(', 1)[1]}")
    return running


# --- S3 -------------------------------------------------------------------------------------------------------------


def test_a_run_on_s3_is_edited_as_gani_edit_does_and_resumed(s3, run: Path, cluster, db: str,
                                                             cli_rows: list[dict]) -> None:
    prefix = "edit-flow-run"
    for path in run.rglob("*"):
        relative = path.relative_to(run)
        if path.is_file() and relative.parts[0] not in ("edits", "mlflow.db", "mlartifacts"):
            s3.put_object(Bucket=S3_BUCKET, Key=f"{prefix}/{relative.as_posix()}", Body=path.read_bytes())
    params = {"run_uri": f"s3://{S3_BUCKET}/{prefix}", "directions": HUE, "strengths": STRENGTHS, "batch_size": 2,
              "cluster": ClusterSettings(dask_address=cluster.scheduler.address), "mlflow_tracking_uri": db}
    first = edit_dataset(**params)
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket=S3_BUCKET, Key=f"{prefix}/edits/edits.parquet")["Body"]
                                     .read())).to_pylist()
    assert_same_rows(table, cli_rows)
    strips = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(
        Bucket=S3_BUCKET, Prefix=f"{prefix}/edits/strips/")["Contents"]}
    assert sorted(strips) == [f"{prefix}/edits/strips/{i}.gani.factor-hue.png" for i in IMAGES]
    again = edit_dataset(**params)
    assert (first["computed"], again["computed"], again["skipped"], again["failed"]) == (3, 0, 3, 0)
    assert {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(
        Bucket=S3_BUCKET, Prefix=f"{prefix}/edits/strips/")["Contents"]} == strips
    client = MlflowClient(tracking_uri=db)
    assert {a.path for a in client.list_artifacts(first["mlflow_run_id"])} == {
        "edits.parquet", "per_image.json", "table_images"}


# --- pieces ---------------------------------------------------------------------------------------------------------


def test_read_result_gives_deltas_and_pivot_from_one_read(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = RunFolder(str(run))
    deltas, pivot = folder.read_deltas("coffee", "gani"), folder.read_pivot("coffee", "gani")
    reads = []
    read_bytes = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: reads.append(uri) or read_bytes(uri))
    got_deltas, got_pivot = folder.read_result("coffee", "gani")
    assert reads == [folder.deltas_uri("coffee", "gani")]
    assert torch.equal(got_pivot, pivot) and got_deltas.keys() == deltas.keys()
    assert all(torch.equal(got_deltas[n], deltas[n]) for n in deltas)


def test_edit_metric_names_are_what_mlflow_accepts() -> None:
    assert mlflow_runs.edit_metric_name("lpips_to_original_edit", "factor-hue", 2.0) == \
        "lpips_to_original_edit.factor-hue.s2"
    assert mlflow_runs.edit_metric_name("factor_change", "pca-0", -1.5) == "factor_change.pca-0.s-1.5"
    assert mlflow_runs.edit_metric_name("factor_change", "smile+", 1e20) == "factor_change.smile_.s1e_20"
