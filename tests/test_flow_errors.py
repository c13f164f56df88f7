"""Issue 22: the flows' and the storage's failures, each in one line (docs/reliability.md).

Bad input to the invert-dataset flow and to its shell (``python -m flows.invert_dataset``): S3 without credentials
or with refused ones (moto's server on 127.0.0.1, told to check signatures), an unreachable endpoint, an output
that is a file, a checkpoint that is not one; the flow run's final state when some or all of its results fail;
the shell's help and exit codes.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client

from flows.cli import flow_main
from flows.invert_dataset import invert_dataset, main
from flows.parameters import ClusterSettings, InversionSettings
from flows.reports import EveryResultFailedError
from gani_core import storage
from gani_core.checkout import REPO
from gani_core.checkpoints.ref import check_format, resolve_checkpoint
from gani_core.errors import CheckpointError, GaniError, StorageAccessError

from .conftest import BROKEN_PNG, FIXTURES, S3_BUCKET
from .support.faults import write_shapes
from .support.processes import free_port

pytestmark = pytest.mark.services

SPEC = "builtin-random:32"
FAST = InversionSettings(pivot_steps=1)
NO_CREDENTIALS = "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), " \
                 "and AWS_ENDPOINT_URL for an S3-compatible store"


@pytest.fixture
def no_credentials(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 endpoint of ``s3`` with no credentials anywhere in botocore's chain (no metadata endpoint either)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("GANI_STORAGE_BACKOFF", "5")         # a retry would show in the time taken
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def refused_credentials(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials moto's server does not know, and the server checking them (it accepts any by default)."""
    from moto import settings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    monkeypatch.setenv("GANI_STORAGE_BACKOFF", "5")
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shapes")
    write_shapes(str(folder), 2)
    return folder


# --- storage -------------------------------------------------------------------------------------------------------


def test_no_credentials_is_one_line_at_once_for_every_call(s3, no_credentials) -> None:
    uri = f"s3://{S3_BUCKET}/in"
    started = time.monotonic()
    for call in (lambda: storage.exists(uri), lambda: storage.read_bytes(f"{uri}/a.png"),
                 lambda: storage.write_bytes(f"{uri}/b.png", b"x"), lambda: storage.names_under(uri),
                 lambda: storage.read_many([f"{uri}/a.png"])):       # not "missing": unreadable
        with pytest.raises(StorageAccessError, match=rf"^s3://{S3_BUCKET}/in[/\w.]*: {re.escape(NO_CREDENTIALS)}$"):
            call()
    assert time.monotonic() - started < 5        # never retried (a retry waits 5 s here)


def test_refused_credentials_are_one_line_and_never_retried(s3, refused_credentials) -> None:
    started = time.monotonic()
    with pytest.raises(StorageAccessError, match=r"^s3://gani-test/out/x: the store does not know the AWS access "
                                                 r"key id \(InvalidAccessKeyId\): check AWS_ACCESS_KEY_ID"):
        storage.write_bytes(f"s3://{S3_BUCKET}/out/x", b"x")
    with pytest.raises(StorageAccessError, match=r"^output_uri s3://gani-test/out: the store refused access "
                                                 r"\(HTTP 403 Forbidden\): check AWS_ACCESS_KEY_ID"):
        storage.check_folder(f"s3://{S3_BUCKET}/out")
    assert time.monotonic() - started < 5


# --- checkpoints ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["g.pkl", "g.safetensors", "g.pt"])
def test_a_text_file_named_like_a_checkpoint_is_refused_from_its_first_bytes(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text("hello, I am not a generator\n")
    with pytest.raises(CheckpointError, match=rf"^{path}: not a checkpoint this tool reads \(it starts with "
                                              r"b'hello, I am not '; expected an NVIDIA network pickle"):
        check_format(resolve_checkpoint(str(path)))


def test_checkpoints_cut_short_are_refused_and_whole_ones_pass(g32_file: Path, tmp_path: Path) -> None:
    for whole in (g32_file, FIXTURES / "nvlabs_32px.pkl", FIXTURES / "rosinality_32px.pt"):
        check_format(resolve_checkpoint(str(whole)))
    for spec in ("builtin", SPEC):
        check_format(resolve_checkpoint(spec))
    for whole, said in ((g32_file, r"corrupt safetensors file \(truncated: its header describes \d+ bytes, the "
                                   r"file has \d+\)"),
                        (FIXTURES / "nvlabs_32px.pkl", r"a pickle cut short \(no STOP opcode at its end, \d+ bytes\)"),
                        (FIXTURES / "rosinality_32px.pt", r"a torch zip file without its end record: truncated")):
        cut = tmp_path / f"cut-{whole.name}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        with pytest.raises(CheckpointError, match=rf"^{cut}: {said}"):
            check_format(resolve_checkpoint(str(cut)))


def test_the_flows_precision_default_is_the_pivots() -> None:
    from gani_core.pivot import PivotConfig
    from gani_core.tuning import TuneConfig

    settings = InversionSettings()
    assert (settings.precision, settings.pivot_steps) == (PivotConfig.precision, PivotConfig.steps)
    assert str(TuneConfig.steps) in InversionSettings.model_fields["tune_steps"].description


# --- the shell: python -m flows.invert_dataset ---------------------------------------------------------------------


def _shell(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_shell_help_says_how_it_is_started_what_it_does_and_its_exit_codes() -> None:
    out = subprocess.run([sys.executable, "-m", "flows.invert_dataset", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.startswith("usage: python -m flows.invert_dataset ")
    text = " ".join(out.split())
    assert "Invert every image under --input-uri into the generator --checkpoint on Dask" in text
    assert "exit status: 0 every result ok; 1 some or all results failed" in text and "130 interrupted" in text


def test_shell_output_that_is_a_file_is_one_line_and_exit_2(shapes: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for out, where in ((notes, "is a file"), (notes / "run", f"is under {notes}, a file")):
        code, err = _shell(["--input-uri", str(shapes), "--output-uri", str(out), "--checkpoint", SPEC], capsys)
        assert (code, err) == (2, [f"python -m flows.invert_dataset: error: output_uri {out} {where}: give a "
                                   "folder (new, or one of an earlier run to resume)"])
    assert notes.read_text() == "keep me"


def test_shell_text_checkpoint_is_one_line_and_exit_2(shapes: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "g.pkl"
    ckpt.write_text("not a pickle")
    code, err = _shell(["--input-uri", str(shapes), "--output-uri", str(tmp_path / "out"), "--checkpoint",
                        str(ckpt)], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"python -m flows.invert_dataset: error: {ckpt}: not "
                                                             "a checkpoint this tool reads")
    assert not (tmp_path / "out").exists()


def test_shell_without_credentials_is_one_line_and_exit_2(s3, no_credentials, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _shell(["--input-uri", f"s3://{S3_BUCKET}/in", "--output-uri", f"s3://{S3_BUCKET}/out",
                        "--checkpoint", SPEC], capsys)
    assert (code, err) == (2, [f"python -m flows.invert_dataset: error: output_uri s3://{S3_BUCKET}/out: "
                               f"{NO_CREDENTIALS}"])


def test_gani_invert_refuses_an_s3_out_without_credentials_before_any_work(s3, no_credentials, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Stranger test of issue 22: the --out is checked before the generator loads (before, the header was printed
    and the error named configs/HASH.json)."""
    from gani_core.cli import main as cli_main

    image = tmp_path / "a.png"
    image.write_bytes(BROKEN_PNG)
    assert cli_main(["invert", str(image), "--out", f"s3://{S3_BUCKET}/out", "--checkpoint", SPEC]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gani invert: error: --out s3://{S3_BUCKET}/out: {NO_CREDENTIALS}"]


def test_shell_with_an_unreachable_endpoint_is_one_line_and_exit_2(shapes: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")      # nothing listens there
    for name, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_MAX_ATTEMPTS": "1", "GANI_STORAGE_RETRIES": "1", "GANI_STORAGE_BACKOFF": "0.05"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    code, err = _shell(["--input-uri", str(shapes), "--output-uri", "s3://nowhere/out", "--checkpoint", SPEC], capsys)
    s3fs.S3FileSystem.clear_instance_cache()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("python -m flows.invert_dataset: error: output_uri s3://nowhere/out: check failed "
                             "after 2 attempt(s) over ")


def test_shell_interrupted_is_one_line_and_exit_130(shapes: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def interrupt(**_: object) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "out"
    code = flow_main(invert_dataset, ["--input-uri", str(shapes), "--output-uri", str(out)], check=interrupt)
    assert (code, capsys.readouterr().err.strip().splitlines()) == (130, [
        f"interrupted: what was written under {out} is kept; rerun the same command to continue"])


@flow(name="swallows-ctrl-c")
def _swallows_ctrl_c(output_uri: str = "out") -> dict:
    """Ctrl-C caught in the flow and raised as another error (as pydantic's serialisation of a task's parameters
    does when the KeyboardInterrupt lands in it): the flow run fails with that error."""
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt as exc:
        raise RuntimeError("Error calling function `ser_model`: KeyboardInterrupt") from exc
    return {}


def test_shell_ctrl_c_that_the_flow_turned_into_an_error_is_still_one_line_and_exit_130(
        prefect_api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was exit 1 and ``error: RuntimeError: ...``: the shell remembers the Ctrl-C, whatever became of it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)     # a terminal's, even in a background job
    try:
        code = flow_main(_swallows_ctrl_c, ["--output-uri", str(tmp_path)])
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and [line for line in err if "interrupted" in line or "error:" in line] == [
        f"interrupted: what was written under {tmp_path} is kept; rerun the same command to continue"]
    assert signal.getsignal(signal.SIGINT) is previous


# --- the flow: its state -------------------------------------------------------------------------------------------


def _flow_run(state):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


def _run(prefect_api: str, input_uri: str, out: Path | str, db: str, **kw):
    return invert_dataset(input_uri=input_uri, output_uri=str(out), method="wplus", inversion=FAST,
                          mlflow_tracking_uri=db, return_state=True, **{"checkpoint": SPEC, **kw})


@pytest.mark.parametrize("case", ["output-is-a-file", "text-checkpoint"])
def test_bad_input_fails_the_flow_before_its_mlflow_run_and_cluster(case: str, prefect_api: str, shapes: Path,
                                                                    tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out, ckpt = tmp_path / "out", SPEC
    if case == "output-is-a-file":
        out.write_text("a file")
        expected = rf"^output_uri {out} is a file: give a folder"
    else:
        ckpt = str(tmp_path / "g.safetensors")
        Path(ckpt).write_text("not tensors")
        expected = rf"^{ckpt}: not a checkpoint this tool reads"
    started = time.monotonic()
    # A cluster that does not exist: asking it for anything would fail otherwise.
    state = _run(prefect_api, str(shapes), out, db, checkpoint=ckpt,
                 cluster=ClusterSettings(dask_address=f"tcp://127.0.0.1:{free_port()}"))
    assert time.monotonic() - started < 30
    assert state.is_failed()
    with pytest.raises(GaniError, match=expected):
        state.result()
    run = _flow_run(state)
    assert run.state.is_failed() and "Error: " in run.state.message and "\n" not in run.state.message
    assert MlflowClient(tracking_uri=db).get_experiment_by_name("invert-dataset") is None     # no MLflow run


def test_some_results_failed_is_completed_saying_how_many(prefect_api: str, cluster, shapes: Path,
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a-good.png").write_bytes((shapes / sorted(p.name for p in shapes.iterdir())[0]).read_bytes())
    (folder / "b-broken.png").write_bytes(BROKEN_PNG)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = _run(prefect_api, str(folder), tmp_path / "out", db,
                 cluster=ClusterSettings(dask_address=cluster.scheduler.address))
    assert state.is_completed() and state.message == "1 of 2 result(s) failed"
    summary = state.result()
    assert (summary["ok"], summary["failed"], summary["run_failed"]) == (1, 1, 1)
    run = _flow_run(state)
    assert run.state.is_completed() and run.state.message == "1 of 2 result(s) failed"


def test_every_result_failed_fails_the_flow_after_its_tables_and_mlflow_run(prefect_api: str, cluster,
                                                                           tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_bytes(BROKEN_PNG)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = _run(prefect_api, str(folder), tmp_path / "out", db,
                 cluster=ClusterSettings(dask_address=cluster.scheduler.address))
    assert state.is_failed()
    assert state.message.startswith("every image failed (1 of 1): first error ImageError: ")
    with pytest.raises(EveryResultFailedError, match=r"^every image failed \(1 of 1\)") as raised:
        state.result()
    assert (raised.value.summary["ok"], raised.value.summary["failed"]) == (0, 1)
    assert (tmp_path / "out" / "metrics.parquet").is_file()
    run = _flow_run(state)
    assert run.state.is_failed() and run.state.message == state.message
    client = MlflowClient(tracking_uri=db)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("invert-dataset").experiment_id])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.metrics["failed"] == 1
