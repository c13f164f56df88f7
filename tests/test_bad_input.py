"""Issue 12's catalogue of bad input: every kind a real dataset holds, generated here, each converted by its
stated rule or refused with one line, and a run over all of them completes (docs/reliability.md, "Bad input:
the catalogue", lists them with their tests). Image conversions already tested in test_images.py are referred
to there, not repeated; here they go through a whole `gani invert` run."""

from __future__ import annotations

import io
import os
import shutil
import struct
import sys
import tempfile
import traceback
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from flows.cli import parse_flow_args
from flows.invert_dataset import invert_dataset
from flows.parameters import ImageLimit, InversionSettings
from gani_core.cli import main as cli_main
from gani_core.dataset import MAX_ID_LENGTH, image_ids, list_images
from gani_core.errors import ImageError
from gani_core.images import MAX_UPSCALE, load_image, read_image_bytes
from gani_core.run_folder import RunFolder

from .conftest import BROKEN_PNG, S3_BUCKET
from .test_images import _png_declaring

FAST = ["--checkpoint", "builtin-random:32", "--method", "wplus", "--pivot-steps", "2", "--quiet"]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
NOBODY = 65534      # the unprivileged user and group of Debian-like systems


# --- the files: each kind generated, never stored --------------------------------------------------------------


def _encoded(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def _noise(size: int = 32, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return _encoded(Image.fromarray(pixels), "PNG")


def _panorama() -> bytes:
    """256 x 16, red with a green 16 x 16 centre: what a centre crop keeps."""
    pixels = np.zeros((16, 256, 3), np.uint8)
    pixels[:] = RED
    pixels[:, 120:136] = GREEN
    return _encoded(Image.fromarray(pixels), "PNG")


def _rgb48_png(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow writes none itself), from uint16 [H, W, 3]."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _animated_gif() -> bytes:
    """Two frames: red, then blue."""
    red, blue = Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)
    return _encoded(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)


def _exif_rotated_jpeg() -> bytes:
    """Stored 40 x 20 (red left, blue right) with orientation 6: displayed 20 x 40, red on top."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20], pixels[:, 20:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)


def _truncated_png() -> bytes:
    data = _noise(64)
    return data[: len(data) // 2]


def _palette_gif_with_transparency() -> bytes:
    palette = Image.new("P", (32, 32))
    palette.putpalette([*RED, *GREEN])
    palette.paste(1, (0, 0, 16, 32))
    return _encoded(palette, "GIF", transparency=1)


HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)     # an iPhone photo's first box
LONG_NAME = "x" * 250 + ".png"                                              # 254 bytes: the most a disk allows

# name -> bytes: the files of the catalogue run's input folder.
CATALOGUE: dict[str, Callable[[], bytes]] = {
    # refused, each with one line
    "empty.jpg": lambda: b"",
    "truncated.png": _truncated_png,
    "notes.jpg": lambda: b"shopping list: eggs, milk\n",
    "bomb.png": lambda: _png_declaring(100_000, 100_000),                  # 30 GB of pixels declared in 100 bytes
    "one-pixel.png": lambda: _encoded(Image.new("RGB", (1, 1), RED), "PNG"),
    "sliver.png": lambda: _encoded(Image.new("RGB", (300, 3), RED), "PNG"),
    "iphone.jpg": lambda: HEIC,                                            # HEIC saved with a .jpg name
    "line\nbreak.jpg": lambda: b"not pixels",
    # converted, then inverted
    "panorama.png": _panorama,
    "cmyk.jpg": lambda: _encoded(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95),
    "grey16.png": lambda: _encoded(Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60), "PNG"),
    "rgb48.png": lambda: _rgb48_png(np.full((32, 32, 3), (65535, 1000, 0), np.uint16)),
    "palette.gif": _palette_gif_with_transparency,
    "rgba.png": lambda: _encoded(Image.new("RGBA", (32, 32), (255, 0, 0, 128)), "PNG"),
    "la.png": lambda: _encoded(Image.new("LA", (32, 32), (0, 128)), "PNG"),
    "animated.gif": _animated_gif,
    "phone.jpg": _exif_rotated_jpeg,
    "my photo.png": lambda: _noise(seed=1),
    "ünïcode.png": lambda: _noise(seed=2),
    "v1..final.png": lambda: _noise(seed=3),
    "twin-a.png": lambda: _noise(seed=4),
    "twin-b.png": lambda: _noise(seed=4),
    LONG_NAME: lambda: _noise(seed=5),
    "album.jpg/inner.png": lambda: _noise(seed=6),                         # a folder named like an image
    # not listed: hidden, or not an image extension
    "._phone.jpg": lambda: b"\x00\x05\x16\x07" + bytes(4092),             # macOS's AppleDouble companion
    ".thumbnails/phone.png": lambda: _noise(8),
    "notes.txt": lambda: b"not an image\n",
    "raw.heic": lambda: HEIC,
}
REFUSED = {"empty", "truncated", "notes", "bomb", "one-pixel", "sliver", "iphone", "line_break"}
CONVERTED = {"panorama", "cmyk", "grey16", "rgb48", "palette", "rgba", "la", "animated", "phone"}


def _write(folder: Path, files: dict[str, Callable[[], bytes]]) -> Path:
    for name, make in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(make())
    return folder


@dataclass
class Run:
    inputs: Path
    exit_code: int
    rows: dict[str, dict]           # by image_id (one method)


def _invert(inputs: Path, out: Path, *extra: str) -> Run:
    code = cli_main(["invert", str(inputs), "--out", str(out), *FAST, *extra])
    rows = pq.read_table(out / "metrics.parquet").to_pylist() if (out / "metrics.parquet").exists() else []
    return Run(inputs, code, {r["image_id"]: r for r in rows})


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One `gani invert` of a folder holding every kind in CATALOGUE (wplus, 2 steps, 32 px, 8 per batch)."""
    inputs = _write(tmp_path_factory.mktemp("catalogue"), CATALOGUE)
    return _invert(inputs, tmp_path_factory.mktemp("catalogue-run"), "--batch-size", "8")


def _error(run: Run, image_id: str) -> str:
    row = run.rows[image_id]
    assert row["status"] == "failed" and row["lpips"] is None
    return row["error"]


# --- a run over the catalogue -----------------------------------------------------------------------------------


def test_a_run_over_the_catalogue_completes_with_exit_code_1(catalogue: Run) -> None:
    assert catalogue.exit_code == 1                 # the run completed; some of its images failed
    assert {i for i, r in catalogue.rows.items() if r["status"] == "failed"} == REFUSED
    assert all(r["status"] == "ok" and 0 < r["lpips"] < 1 for i, r in catalogue.rows.items() if i not in REFUSED)


def test_every_refusal_is_one_line_naming_the_file(catalogue: Run) -> None:
    for image_id in REFUSED:
        error = _error(catalogue, image_id)
        assert error.startswith(f"ImageError: {catalogue.inputs}/") and "\n" not in error


def test_zero_bytes(catalogue: Run) -> None:
    assert _error(catalogue, "empty") == f"ImageError: {catalogue.inputs}/empty.jpg: file is empty (0 bytes)"


def test_truncated_file(catalogue: Run) -> None:
    assert _error(catalogue, "truncated").startswith(
        f"ImageError: {catalogue.inputs}/truncated.png: image data is truncated or corrupt")


def test_text_named_jpg(catalogue: Run) -> None:
    assert _error(catalogue, "notes") == (f"ImageError: {catalogue.inputs}/notes.jpg: not an image Pillow can read "
                                          "(unknown format or damaged header; first bytes b'shopping')")


def test_decompression_bomb_is_refused_from_its_header(catalogue: Run) -> None:
    assert (catalogue.inputs / "bomb.png").stat().st_size < 200
    assert _error(catalogue, "bomb").startswith(f"ImageError: {catalogue.inputs}/bomb.png: image is too large")


def test_one_by_one_image_is_too_small_to_invert(catalogue: Run) -> None:
    assert _error(catalogue, "one-pixel") == (
        f"ImageError: {catalogue.inputs}/one-pixel.png: 1 x 1 pixels is too small for 32 px: its centred 1 x 1 "
        f"square would be enlarged 32x, more than the limit of {MAX_UPSCALE}x")


def test_sliver_thinner_than_an_eighth_of_the_resolution_is_too_small(catalogue: Run) -> None:
    assert "300 x 3 pixels is too small for 32 px" in _error(catalogue, "sliver")
    assert load_image(catalogue.inputs / "sliver.png", resolution=3 * MAX_UPSCALE).shape == (3, 24, 24)


def test_extreme_aspect_ratio_is_centre_cropped(catalogue: Run) -> None:
    assert catalogue.rows["panorama"]["status"] == "ok"
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 32, 32)
    assert torch.allclose(load_image(catalogue.inputs / "panorama.png", resolution=32), green, atol=1e-4)


@pytest.mark.parametrize("image_id", sorted(CONVERTED))
def test_converted_kinds_invert_like_any_image(catalogue: Run, image_id: str) -> None:
    """CMYK, 16-bit, palette, alpha, animated and EXIF-rotated files: converted (test_images.py pins each rule)."""
    row = catalogue.rows[image_id]
    assert row["status"] == "ok" and row["error"] is None and 0 < row["lpips"] < 1


def test_sixteen_bit_rgb_png_is_read_at_8_bits(catalogue: Run) -> None:
    # Pillow decodes 48-bit PNGs to 8-bit RGB (16-bit greyscale keeps its precision: test_images.py).
    image = load_image(catalogue.inputs / "rgb48.png")
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 1000 / 65535, 0.0]), atol=1 / 255)


def test_animated_gif_gives_its_first_frame(catalogue: Run) -> None:
    image = load_image(catalogue.inputs / "animated.gif")
    assert image.shape == (3, 32, 32) and torch.equal(image[:, 16, 16], torch.tensor([1.0, 0.0, 0.0]))


def test_heic_photo_named_jpg_is_refused_by_name(catalogue: Run) -> None:
    assert "not an image Pillow can read (a HEIC/HEIF photo: convert it to JPEG or PNG;" in _error(catalogue, "iphone")


def test_unsupported_extensions_and_hidden_files_are_not_listed(catalogue: Run) -> None:
    # raw.heic, notes.txt (extensions), ._phone.jpg (hidden) and .thumbnails/ (a hidden folder): no row.
    assert set(catalogue.rows) == REFUSED | CONVERTED | {
        "my_photo", "_n_code", "v1..final", "twin-a", "twin-b", "x" * MAX_ID_LENGTH, "inner"}


def test_names_with_spaces_unicode_and_dots_get_safe_ids(catalogue: Run) -> None:
    for image_id in ("my_photo", "_n_code", "v1..final"):
        assert catalogue.rows[image_id]["status"] == "ok"
    assert image_ids(["in/../up.png", "in/..", "x/...png", "a/.hidden.png", "/"]) == [
        "up", "image", "image-1", "hidden", "image-2"]


def test_same_image_under_two_names_gives_two_rows_with_one_sha256(catalogue: Run) -> None:
    a, b = catalogue.rows["twin-a"], catalogue.rows["twin-b"]
    assert a["status"] == b["status"] == "ok" and a["image_sha256"] == b["image_sha256"]
    assert a["lpips"] == pytest.approx(b["lpips"])


def test_a_name_too_long_for_the_run_folder_is_cut(catalogue: Run) -> None:
    assert catalogue.rows["x" * MAX_ID_LENGTH]["status"] == "ok"


def test_a_newline_in_a_name_stays_one_line(catalogue: Run) -> None:
    assert _error(catalogue, "line_break").startswith(f"ImageError: {catalogue.inputs}/line\\nbreak.jpg: not an image")


def test_ids_are_unique_ignoring_case_and_existing_suffixes() -> None:
    assert image_ids(["a.png", "a.jpg", "a-1.png", "A.png"]) == ["a", "a-1", "a-1-1", "A-2"]


# --- files that cannot be read -----------------------------------------------------------------------------------


def _without_read_rights(fn: Callable[[], int], locked: Path) -> int:
    """``fn()`` where ``locked`` (mode 000) cannot be read: here, or, where this process reads it anyway (root),
    in a forked child that first becomes the unprivileged user NOBODY."""
    if not os.access(locked, os.R_OK):
        return fn()
    if os.geteuid() != 0:
        pytest.skip("this process reads mode-000 files (CAP_DAC_OVERRIDE) and, not being root, cannot change user")
    pid = os.fork()
    if pid == 0:                                    # the child: never returns into pytest
        code = 70
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = fn()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@contextmanager
def _folder_anyone_reaches() -> Iterator[Path]:
    """A new folder outside pytest's, whose own may be private: a child that becomes NOBODY must reach it."""
    top = Path(tempfile.mkdtemp(prefix="gani-bad-input-"))
    try:
        top.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top)


@pytest.fixture(scope="module")
def unreadable(catalogue: Run) -> Iterator[Run]:
    """A run of good.png, locked.png (mode 000), gone.png (a link to nothing) and a::b.png (a valid image).

    ``catalogue`` runs first so that every module a run imports is loaded: NOBODY may not be able to read the
    Python installation.
    """
    with _folder_anyone_reaches() as top:
        inputs = _write(top / "in", {"good.png": _noise, "locked.png": _noise, "a::b.png": _noise})
        (inputs / "gone.png").symlink_to(top / "nowhere.png")
        (inputs / "locked.png").chmod(0)
        (top / "out").mkdir(mode=0o777)
        (top / "out").chmod(0o777)                  # whatever the umask
        code = _without_read_rights(lambda: cli_main(["invert", str(inputs), "--out", str(top / "out"), *FAST]),
                                    inputs / "locked.png")
        rows = pq.read_table(top / "out" / "metrics.parquet").to_pylist()
        yield Run(inputs, code, {r["image_id"]: r for r in rows})


def test_an_unreadable_file_is_a_failed_row_and_the_others_complete(unreadable: Run) -> None:
    assert unreadable.exit_code == 1 and unreadable.rows["good"]["status"] == "ok"
    error = _error(unreadable, "locked")
    assert f"{unreadable.inputs}/locked.png" in error and "Permission denied" in error and "\n" not in error


def test_a_link_to_nothing_is_a_failed_row(unreadable: Run) -> None:
    error = _error(unreadable, "gone")
    assert f"{unreadable.inputs}/gone.png" in error and "\n" not in error


def test_read_failures_are_image_errors(unreadable: Run) -> None:
    locked = unreadable.inputs / "locked.png"
    assert _error(unreadable, "locked") == f"ImageError: {locked}: cannot be read (Permission denied)"
    assert _error(unreadable, "gone") == f"ImageError: {unreadable.inputs}/gone.png: no such file"


def test_a_double_colon_in_a_name_is_read_from_that_file(unreadable: Run) -> None:
    assert unreadable.rows["a_b"]["status"] == "ok"


def test_load_image_reads_a_double_colon_name_as_a_path(tmp_path: Path) -> None:
    (tmp_path / "a::b.png").write_bytes(_noise())
    assert load_image(tmp_path / "a::b.png").shape == (3, 32, 32)
    assert [i.image_id for i in list_images(str(tmp_path))] == ["a_b"]


def test_load_image_refuses_an_unreadable_file() -> None:
    with _folder_anyone_reaches() as top:
        locked = top / "locked.png"
        locked.write_bytes(_noise())
        locked.chmod(0)

        def load() -> int:
            try:
                load_image(locked)
            except ImageError as exc:
                return 0 if str(exc) == f"{locked}: cannot be read (Permission denied)" else 1
            return 2

        assert _without_read_rights(load, locked) == 0


# --- the whole run, and arguments refused before anything runs ---------------------------------------------------


def test_exit_code_is_1_when_every_row_failed(tmp_path: Path) -> None:
    inputs = _write(tmp_path / "in", {"empty.jpg": lambda: b"", "notes.png": lambda: b"text"})
    run = _invert(inputs, tmp_path / "out")
    assert run.exit_code == 1 and {r["status"] for r in run.rows.values()} == {"failed"}


def test_cli_refuses_a_path_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["invert", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "out"), *FAST]) == 2
    assert capsys.readouterr().err == f"gani invert: error: {tmp_path}/nope.jpg: no such file or folder\n"
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    assert cli_main(["invert", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gani invert: error: {tmp_path}/in: no image files (.bmp, .gif,") and \
        err.count("\n") == 1


def test_a_folder_of_files_that_are_not_images_is_refused_naming_one(tmp_path: Path) -> None:
    (tmp_path / "IMG_0001.HEIC").write_bytes(HEIC)
    with pytest.raises(FileNotFoundError, match=r"no image files .* 1 other file\(s\), such as 'IMG_0001.HEIC'"):
        list_images(str(tmp_path))


def test_an_input_uri_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope: no such folder or object"):
        list_images(str(tmp_path / "nope"))


@pytest.mark.parametrize("limit", [0, -3])
def test_a_limit_below_1_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match=rf"limit must be at least 1 \(or None for every image\), got {limit}"):
        list_images("examples/photos", limit)


@pytest.mark.parametrize(("option", "least"), [("--pivot-steps", "a number of steps is a whole number of at least 0"),
                                             ("--tune-steps", "tuning steps are a whole number of at least 1")])
def test_cli_refuses_negative_steps(option: str, least: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["invert", "x.png", "--out", str(tmp_path), "--method", "gani", option, "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"gani invert: error: argument {option}: {least}, "
                                                                "got '-1'")


def test_cli_refuses_an_unknown_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["invert", "x.png", "--out", str(tmp_path), "--method", "x"])
    assert exit_info.value.code == 2
    assert "argument --method: invalid choice: 'x'" in capsys.readouterr().err.splitlines()[-1]


def test_flow_shell_refuses_an_unknown_method(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_flow_args(invert_dataset, ["--method", "x"])
    assert exit_info.value.code == 2
    assert "argument --method: invalid choice: 'x'" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("batch_size", [0, -1])
def test_flow_settings_refuse_a_batch_size_below_1(batch_size: int) -> None:
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        InversionSettings(batch_size=batch_size)


def test_the_flows_limit_type_refuses_0_and_below() -> None:
    limit = TypeAdapter(ImageLimit | None)
    assert limit.validate_python(1) == 1 and limit.validate_python(None) is None
    for bad in (0, -1):
        with pytest.raises(ValidationError, match="greater than or equal to 1"):
            limit.validate_python(bad)


def test_flow_shell_refuses_a_limit_below_1_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_flow_args(invert_dataset, ["--limit", "0"])
    assert exit_info.value.code == 2 and "--limit" in capsys.readouterr().err.splitlines()[-1]


def test_flow_shell_refuses_negative_steps_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_flow_args(invert_dataset, ["--pivot-steps", "-1"])
    assert exit_info.value.code == 2 and "--pivot-steps" in capsys.readouterr().err.splitlines()[-1]


# --- S3 ------------------------------------------------------------------------------------------------------------

ODD_KEYS = ["with space.png", "ünï code.png", "a+b=c&d.png", "100%.png", "100%20.png", "hash#tag.png", "q?mark.png",
            "semi;colon,comma.png", "[brackets].png", "star*.png", "tab\there.png", "double//slash.png",
            "dir/../dots.png"]


@pytest.mark.services
def test_s3_keys_with_odd_characters_are_listed_and_read(s3) -> None:
    for n, key in enumerate([*ODD_KEYS, "a::b.png"]):
        s3.put_object(Bucket=S3_BUCKET, Key=f"odd/{key}", Body=_noise(seed=n))
    images = list_images(f"s3://{S3_BUCKET}/odd")
    assert sorted(image.source for image in images) == sorted(f"s3://{S3_BUCKET}/odd/{k}" for k in
                                                              [*ODD_KEYS, "a::b.png"])
    for n, key in enumerate([*ODD_KEYS, "a::b.png"]):
        assert read_image_bytes(f"s3://{S3_BUCKET}/odd/{key}") == _noise(seed=n)


@pytest.mark.services
def test_gani_invert_of_an_s3_prefix_with_odd_keys(s3, tmp_path: Path) -> None:
    for n, key in enumerate(ODD_KEYS):
        s3.put_object(Bucket=S3_BUCKET, Key=f"inv/{key}", Body=_noise(seed=n))
    s3.put_object(Bucket=S3_BUCKET, Key="inv/broken.png", Body=BROKEN_PNG)
    assert cli_main(["invert", f"s3://{S3_BUCKET}/inv", "--out", str(tmp_path / "out"), *FAST,
                     "--batch-size", "8"]) == 1         # broken.png failed, the others completed
    rows = {r["image_id"]: r for r in pq.read_table(tmp_path / "out" / "metrics.parquet").to_pylist()}
    assert sorted(rows) == sorted(["with_space", "_n_code", "a_b_c_d", "100_", "100_20", "hash_tag", "q_mark",
                                   "semi_colon_comma", "_brackets_", "star_", "tab_here", "slash", "dots", "broken"])
    assert all(r["status"] == "ok" for i, r in rows.items() if i != "broken")
    assert rows["broken"]["error"].startswith(f"ImageError: s3://{S3_BUCKET}/inv/broken.png: ")



@pytest.mark.services
def test_gani_invert_of_an_s3_key_with_a_double_colon(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=S3_BUCKET, Key="colon/a::b.png", Body=_noise())
    assert cli_main(["invert", f"s3://{S3_BUCKET}/colon", "--out", str(tmp_path / "out"), *FAST]) == 0


@pytest.mark.services
def test_a_run_folder_on_s3_with_double_colons_resumes_and_reads_its_rows_back(s3) -> None:
    """Inputs ``a::b.png`` and ``c::d::e.png``, the run folder ``runs/r::1``, both on S3: the rerun reads the rows
    (gani_core.storage), finds the inputs unchanged by their listing's ETags, keeps both results and computes
    nothing."""
    keys = ["a::b.png", "c::d::e.png"]
    for n, key in enumerate(keys):
        s3.put_object(Bucket=S3_BUCKET, Key=f"colons/{key}", Body=_noise(seed=n))
    out = f"s3://{S3_BUCKET}/runs/r::1"
    for _ in range(2):
        assert cli_main(["invert", f"s3://{S3_BUCKET}/colons", "--out", out, *FAST]) == 0
    folder = RunFolder(out)
    summary = folder.read_summary()
    assert (summary["skipped"], summary["computed"], summary["ok"]) == (2, 0, 2)
    assert sorted((r["image_id"], r["status"]) for r in folder.read_rows()) == [("a_b", "ok"), ("c_d_e", "ok")]
    stored = {o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix="runs/r::1/")["Contents"]}
    assert "runs/r::1/metrics.parquet" in stored
    assert any(key.startswith("runs/r::1/rows/part-wplus-") for key in stored)
