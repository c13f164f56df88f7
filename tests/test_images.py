"""Image loading: every kind of file a real dataset holds is converted by one rule or refused clearly."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from gani_core.errors import ImageError
from gani_core.images import image_sha256, load_image, save_image

from .conftest import EXAMPLES


def _save(img: Image.Image, path: Path, **params: object) -> Path:
    img.save(path, **params)
    return path


def test_example_photos_load_as_rgb_in_unit_range() -> None:
    for path in sorted(EXAMPLES.glob("*.jpg")):
        image = load_image(path)
        assert image.shape == (3, 256, 256) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1 and image.std() > 0.05
    camera = load_image(EXAMPLES / "camera.jpg")  # stored as single-channel greyscale
    assert torch.equal(camera[0], camera[1]) and torch.equal(camera[1], camera[2])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored as a 40 x 20 landscape, red left half, blue right half, with orientation 6 ("rotate 90 CW
    # to display"): displayed it is a 20 x 40 portrait, red on top.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(pixels), tmp_path / "phone.jpg", quality=95, exif=exif)
    image = load_image(path)
    assert image.shape == (3, 40, 20)
    assert torch.allclose(image[:, 5, 10], torch.tensor([1.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose(image[:, 35, 10], torch.tensor([0.0, 0.0, 1.0]), atol=0.05)


def test_greyscale_and_one_bit_images_become_grey_rgb(tmp_path: Path) -> None:
    grey = _save(Image.new("L", (8, 6), 51), tmp_path / "grey.png")
    assert torch.allclose(load_image(grey), torch.full((3, 6, 8), 0.2))
    bits = Image.new("1", (8, 6), 0)
    bits.putpixel((0, 0), 1)
    image = load_image(_save(bits, tmp_path / "bits.png"))
    assert image[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and image[:, 1, 1].tolist() == [0.0, 0.0, 0.0]


def test_transparency_is_composited_onto_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 1))
    rgba.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 128)])
    image = load_image(_save(rgba, tmp_path / "rgba.png"))
    assert image[:, 0, 0].tolist() == [1.0, 0.0, 0.0]  # opaque: unchanged
    assert image[:, 0, 1].tolist() == [1.0, 1.0, 1.0]  # transparent: white, whatever colour it stored
    assert image[:, 0, 2].tolist() == [1.0, 1.0, 1.0]
    assert torch.allclose(image[:, 0, 3], torch.full((3,), 127 / 255), atol=1 / 255)  # half: blended

    la = Image.new("LA", (2, 1))
    la.putdata([(0, 255), (0, 0)])
    image = load_image(_save(la, tmp_path / "la.png"))
    assert image[:, 0, 0].tolist() == [0.0, 0.0, 0.0] and image[:, 0, 1].tolist() == [1.0, 1.0, 1.0]


def test_palette_images_with_and_without_transparency(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.putdata([0, 1])
    image = load_image(_save(palette, tmp_path / "palette.png"))
    assert image[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and image[:, 0, 1].tolist() == [0.0, 1.0, 0.0]

    image = load_image(_save(palette, tmp_path / "palette.gif", transparency=1))
    assert image[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and image[:, 0, 1].tolist() == [1.0, 1.0, 1.0]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    # Pillow writes CMYK JPEGs the way Photoshop does (Adobe marker, inverted); red is C0 M100 Y100 K0.
    path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "print.jpg", quality=95)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
    image = load_image(path)
    assert torch.allclose(image[:, 8, 8], torch.tensor([1.0, 0.0, 0.0]), atol=0.03)


def test_sixteen_bit_png_keeps_its_precision(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 32768, 65535]], np.uint16)  # 1000/65535 lies between two 8-bit levels
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")
    image = load_image(path)
    assert torch.allclose(image[0, 0], torch.tensor(values[0] / 65535.0, dtype=torch.float32), atol=1e-6)
    assert torch.equal(image[0], image[2])


def test_centre_crop_and_resize_geometry(tmp_path: Path) -> None:
    # 60 x 30 landscape: red 15 px bands either side of a green 30 x 30 centre.
    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, :15] = pixels[:, 45:] = (255, 0, 0)
    pixels[:, 15:45] = (0, 255, 0)
    path = _save(Image.fromarray(pixels), tmp_path / "wide.png")
    assert load_image(path).shape == (3, 30, 60)  # no resolution: own size and aspect
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    assert torch.equal(load_image(path, resolution=30), green.expand(3, 30, 30))
    small = load_image(path, resolution=16)
    assert small.shape == (3, 16, 16) and torch.allclose(small, green.expand(3, 16, 16), atol=1e-4)
    tall = _save(Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 0, 2))), tmp_path / "tall.png")
    assert torch.allclose(load_image(tall, resolution=64), green.expand(3, 64, 64), atol=1e-4)


def test_resize_is_antialiased(tmp_path: Path) -> None:
    # A one-pixel checkerboard downsampled 8x must average to grey, not alias to black or white.
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    image = load_image(_save(Image.fromarray(checker), tmp_path / "checker.png"), resolution=8)
    assert torch.allclose(image, torch.full((3, 8, 8), 0.5), atol=0.02)


def test_bytes_and_paths_give_the_same_image(tmp_path: Path) -> None:
    data = (EXAMPLES / "chelsea.jpg").read_bytes()
    assert torch.equal(load_image(data, resolution=64), load_image(EXAMPLES / "chelsea.jpg", resolution=64))
    assert torch.equal(load_image(str(EXAMPLES / "chelsea.jpg")), load_image(EXAMPLES / "chelsea.jpg"))


def test_save_image_round_trip(tmp_path: Path) -> None:
    image = load_image(EXAMPLES / "coffee.jpg", resolution=32)
    path = save_image(image, tmp_path / "out" / "coffee.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (load_image(path) - image).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        save_image(image[None], tmp_path / "batch.png")


def test_image_sha256_is_of_the_file_bytes() -> None:
    data = (EXAMPLES / "rocket.jpg").read_bytes()
    assert image_sha256(EXAMPLES / "rocket.jpg") == image_sha256(data) == hashlib.sha256(data).hexdigest()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.png: no such file"):
        load_image(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: file is empty"):
        load_image(tmp_path / "empty.jpg")


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("these are not pixels\n")
    with pytest.raises(ImageError, match=r"notes\.png: not an image"):
        load_image(tmp_path / "notes.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused_not_padded(tmp_path: Path, fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.\w+: image data is truncated"):
        load_image(path)
    if fmt == "JPEG":  # only the end-of-image marker missing
        path.write_bytes(data[:-2])
        with pytest.raises(ImageError, match="truncated"):
            load_image(path)


def test_refuses_to_run_if_truncated_images_are_allowed_process_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(EXAMPLES / "coffee.jpg")


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height, followed by a few bytes of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(100_000, 100_000))  # 30 GB of RGB declared in ~100 bytes
    assert path.stat().st_size < 200
    with pytest.raises(ImageError, match=r"bomb\.png: .*too large"):
        load_image(path)
    path.write_bytes(_png_declaring(10_000, 9_000))  # under Pillow's own limit, over ours
    with pytest.raises(ImageError, match=r"10000 x 9000 .* more than the limit"):
        load_image(path)


def test_max_pixels_is_a_parameter() -> None:
    with pytest.raises(ImageError, match="more than the limit of 1000"):
        load_image(EXAMPLES / "coffee.jpg", max_pixels=1000)
    assert load_image(EXAMPLES / "coffee.jpg", max_pixels=256 * 256).shape == (3, 256, 256)


def test_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        load_image(EXAMPLES / "coffee.jpg", resolution=0)
