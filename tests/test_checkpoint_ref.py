"""CheckpointRef: one parse of a checkpoint spec, its hash and label without loading, and S3 checkpoints."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gani_core import CheckpointError
from gani_core.checkpoints.builtin import PROBE_FILE, TRAINED_FILE
from gani_core.checkpoints.ref import cache_dir, parse_spec, recorded_checkpoint, resolve_checkpoint
from gani_core.cli import main as cli_main

from .conftest import EXAMPLES, S3_BUCKET


@pytest.mark.parametrize(("spec", "origin", "resolution"), [
    ("builtin", "builtin", 64), ("builtin:64", "builtin", 64), ("builtin-random", "builtin-random", 64),
    ("builtin-random:32", "builtin-random", 32), ("models/g.pkl", "file", None),
    ("file:///m/g.pt", "file", None), ("s3://bucket/g.pkl", "uri", None)])
def test_a_spec_is_parsed_into_its_origin(spec: str, origin: str, resolution: int | None) -> None:
    got_origin, location, got_res = parse_spec(spec)
    assert (got_origin, got_res) == (origin, resolution)
    if origin == "file":
        assert not location.startswith("file://")


@pytest.mark.parametrize(("spec", "message"), [
    ("builtin:128", "the trained built-in generator is 64 px"),
    ("builtin-random:48", "power of two"),
    ("no/such/file.pkl", "checkpoint not found: no/such/file.pkl")])
def test_a_bad_spec_is_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        resolve_checkpoint(spec)


def test_an_empty_file_is_refused_before_any_worker_sees_it(tmp_path: Path) -> None:
    (tmp_path / "g.pkl").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        resolve_checkpoint(tmp_path / "g.pkl")


def test_builtin_is_keyed_by_its_weights_and_probe_and_labelled_from_its_config() -> None:
    ref = resolve_checkpoint("builtin")
    weights, probe = (hashlib.sha256(f.read_bytes()).hexdigest() for f in (TRAINED_FILE, PROBE_FILE))
    assert ref.sha256 == hashlib.sha256((weights + probe).encode()).hexdigest()
    assert ref.label.startswith("built-in, trained on shapes") and ref.resolution == 64


def test_builtin_random_is_keyed_by_its_definition_and_resolution() -> None:
    a, b = resolve_checkpoint("builtin-random:32"), resolve_checkpoint("builtin-random:64")
    assert a.sha256 == resolve_checkpoint("builtin-random:32").sha256 and a.sha256 != b.sha256
    assert a.label == "built-in, untrained (32 px)"
    assert a.load().img_resolution == 32


def test_a_file_is_keyed_by_its_bytes_and_a_copy_has_the_same_key(g32_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    shutil.copy(g32_file, copy)
    ref = resolve_checkpoint(str(g32_file))
    assert ref.sha256 == hashlib.sha256(g32_file.read_bytes()).hexdigest() == resolve_checkpoint(copy).sha256
    assert ref.label == "built-in, untrained (32 px)"            # read from the file's header, not by loading it
    copy.write_bytes(copy.read_bytes()[:-1] + b"\0")
    assert resolve_checkpoint(copy).sha256 != ref.sha256


@pytest.mark.services
def test_an_s3_checkpoint_is_downloaded_once_and_checked(s3, g32_file: Path) -> None:
    s3.put_object(Bucket=S3_BUCKET, Key="models/g32.safetensors", Body=g32_file.read_bytes())
    uri = f"s3://{S3_BUCKET}/models/g32.safetensors"
    ref = resolve_checkpoint(uri)
    assert (ref.origin, ref.sha256) == ("uri", resolve_checkpoint(g32_file).sha256)
    cached = ref.local_path()
    assert cached.is_relative_to(cache_dir()) and cached.read_bytes() == g32_file.read_bytes()
    mtime = cached.stat().st_mtime_ns
    assert resolve_checkpoint(uri) == ref and cached.stat().st_mtime_ns == mtime     # no second download
    cached.unlink()                                     # another machine: the worker downloads and checks it
    s3.put_object(Bucket=S3_BUCKET, Key="models/g32.safetensors", Body=b"replaced since the run started")
    with pytest.raises(CheckpointError, match="changed since this run resolved it"):
        ref.local_path()


@pytest.mark.services
def test_gani_invert_takes_an_s3_checkpoint(s3, g32_file: Path, tmp_path: Path) -> None:
    s3.put_object(Bucket=S3_BUCKET, Key="models/gen.safetensors", Body=g32_file.read_bytes())
    uri = f"s3://{S3_BUCKET}/models/gen.safetensors"
    out = f"s3://{S3_BUCKET}/runs/cli"
    argv = ["invert", str(EXAMPLES / "coffee.jpg"), "--checkpoint", uri, "--method", "wplus",
            "--pivot-steps", "2", "--out", out, "--quiet"]
    assert cli_main(argv) == 0
    body = s3.get_object(Bucket=S3_BUCKET, Key="runs/cli/metrics.parquet")["Body"].read()
    (row,) = pq.read_table(pa.BufferReader(body)).to_pylist()
    assert (row["status"], row["checkpoint"]) == ("ok", uri)
    assert row["checkpoint_sha256"] == hashlib.sha256(g32_file.read_bytes()).hexdigest()


def test_a_relative_checkpoint_path_is_recorded_absolute(g32_file: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A run made with ``--checkpoint models/g.safetensors`` is exported (its checkpoint read again) from another
    working directory: its rows name the file by its absolute path."""
    (tmp_path / "work" / "models").mkdir(parents=True)
    shutil.copy(g32_file, tmp_path / "work" / "models" / "g.safetensors")
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_checkpoint("models/g.safetensors").spec == str(tmp_path / "work" / "models" / "g.safetensors")
    argv = ["invert", str(EXAMPLES / "coffee.jpg"), "--checkpoint", "models/g.safetensors", "--method", "gani",
            "--pivot-steps", "2", "--tune-steps", "1", "--out", "run", "--quiet"]
    assert cli_main(argv) == 0
    monkeypatch.chdir(tmp_path)
    assert cli_main(["export", "work/run", "coffee", "--out", "coffee.safetensors"]) == 0
    assert (tmp_path / "coffee.safetensors").stat().st_size > 0


def test_a_recorded_checkpoint_must_be_found_and_hold_the_same_bytes(g32_file: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sha = hashlib.sha256(g32_file.read_bytes()).hexdigest()
    assert recorded_checkpoint(str(g32_file), sha).sha256 == sha
    with pytest.raises(CheckpointError, match="is not the checkpoint this run tuned"):
        recorded_checkpoint(str(g32_file), "0" * 64)
    monkeypatch.chdir(tmp_path)         # a run of before recorded a relative path: where to run from
    with pytest.raises(CheckpointError, match=r"^checkpoint not found: models/g.safetensors: the run recorded this "
                                              r"path relative to the folder it was run from"):
        recorded_checkpoint("models/g.safetensors", sha)
