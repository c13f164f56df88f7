"""Out-of-domain image sets of the shapes domain: seeded, split, far from the domain, with their ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gani_core.checkout import REPO
from gani_core.cli import main
from gani_core.shapes.domain import FACTOR_NAMES, hsv_to_rgb, render, sample_factors, to_physical
from gani_core.shapes.out_of_domain import (
    IN_DOMAIN,
    KINDS,
    NEAR_DOMAIN,
    OUT_OF_DOMAIN,
    distance_to_domain,
    draw_factors,
    render_kind,
    sample_kind,
)

SHAPES = REPO / "examples" / "shapes"


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """[N, 3, R, R] in [-1, 1] → uint8 [N, R, R, 3], as the PNGs store them."""
    return ((images.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_domain_render_still_draws_the_committed_examples():
    """domain.render, now built from reusable pieces, draws examples/shapes/ pixel for pixel."""
    truth = json.loads((SHAPES / "factors.json").read_text())
    names = sorted(truth)
    t = torch.tensor([[truth[n]["normalised"][k] for k in FACTOR_NAMES] for n in names])
    pixels = to_pixels(render(t, 64))
    for i, name in enumerate(names):
        np.testing.assert_array_equal(pixels[i], read_png(SHAPES / name), err_msg=name)


def test_in_domain_kind_is_the_domain_render_bit_for_bit():
    t = sample_factors(8, torch.Generator().manual_seed(1))
    truth = [{"physical": dict(zip(FACTOR_NAMES, row, strict=True)), "extra": {}} for row in to_physical(t).tolist()]
    assert torch.equal(render_kind(IN_DOMAIN, truth, 32), render(t, 32))


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_kind_is_a_pure_function_of_its_seed(kind):
    images, truth = sample_kind(kind, 3, 32, "test", seed=5)
    again, truth_again = sample_kind(kind, 3, 32, "test", seed=5)
    assert images.dtype == torch.float32 and images.shape == (3, 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    assert images.numpy().tobytes() == again.numpy().tobytes() and truth == truth_again
    # Image i does not depend on how many were asked for; another seed gives other images.
    assert torch.equal(sample_kind(kind, 1, 32, "test", seed=5)[0][0], images[0])
    assert not torch.equal(sample_kind(kind, 1, 32, "test", seed=6)[0][0], images[0])


@pytest.mark.parametrize("kind", list(KINDS))
def test_dev_and_test_splits_are_different_images(kind):
    dev, dev_truth = sample_kind(kind, 6, 32, "dev")
    test, test_truth = sample_kind(kind, 6, 32, "test")
    assert torch.cdist(dev.flatten(1), test.flatten(1)).min() > 0
    assert not {json.dumps(f["physical"]) for f in dev_truth} & {json.dumps(f["physical"]) for f in test_truth}
    with pytest.raises(ValueError, match="unknown split"):
        draw_factors(kind, 1, "train")


def test_every_kind_is_far_from_the_domain_and_in_domain_is_on_it():
    """The closest image of the domain (its six factors fitted from the nearest of 2,000 renders) reproduces
    an in-domain image; for every other kind, near-domain ones included, it stays visibly different."""
    images = torch.cat([sample_kind(kind, 4, 32, "dev")[0] for kind in KINDS])
    far = dict(zip(KINDS, distance_to_domain(images, starts=2, steps=80).view(len(KINDS), 4), strict=True))
    assert far[IN_DOMAIN].max() < 0.003, far[IN_DOMAIN]                 # RMS, in [-1, 1] units
    closest = {kind: round(far[kind].min().item(), 3) for kind in OUT_OF_DOMAIN + NEAR_DOMAIN}
    assert min(closest.values()) > 0.012, closest                       # the disc is the closest, about 0.017


@pytest.mark.parametrize("kind", list(KINDS))
def test_ground_truth_is_json_and_redraws_the_image(kind):
    images, truth = sample_kind(kind, 4, 32, "dev")
    loaded = json.loads(json.dumps(truth, allow_nan=False))
    assert torch.equal(render_kind(kind, loaded, 32), images)
    for f in loaded:
        assert (f["kind"], f["split"]) == (kind, "dev")
        assert set(f["physical"]) == set(f["normalised"]) == set(FACTOR_NAMES)
        assert all((f["physical"][k] is None) == (f["normalised"][k] is None) for k in FACTOR_NAMES)


def test_factors_that_do_not_apply_are_none():
    assert all(f["physical"]["rotation"] is None and f["normalised"]["rotation"] is None
               for kind in ("rotated", "disc", "triangle", "cross", "star") for f in draw_factors(kind, 4))
    assert all(f["physical"]["light"] is None for f in draw_factors("bg-gradient", 4))
    assert all(0 <= v <= 1 for kind in (IN_DOMAIN, "textured", "bg-noise") for f in draw_factors(kind, 8)
               for v in f["normalised"].values())
    assert all(1.6 <= f["extra"]["aspect"] <= 2.5 for f in draw_factors("rotated", 8))


def test_the_registry_groups_every_kind_once():
    assert set(OUT_OF_DOMAIN) | set(NEAR_DOMAIN) | {IN_DOMAIN} == set(KINDS)
    assert not set(OUT_OF_DOMAIN) & set(NEAR_DOMAIN) and IN_DOMAIN not in OUT_OF_DOMAIN + NEAR_DOMAIN
    assert {"two-objects", "textured", "bg-gradient", "bg-noise", "bg-stripes"} <= set(OUT_OF_DOMAIN)
    assert all(KINDS[k].description and "\n" not in KINDS[k].description for k in KINDS)
    with pytest.raises(ValueError, match="unknown kind 'hexagon'; known kinds: in-domain, "):
        sample_kind("hexagon", 1)


@pytest.mark.parametrize("kind", ["in-domain", "two-objects", "cross", "star", "bg-gradient", "bg-noise",
                                  "bg-stripes", "rotated", "disc", "triangle"])
def test_the_object_sits_where_its_factors_say(kind):
    """At each object's centre (x, y) the pixel has the object's colour (hue at SATURATION, VALUE)."""
    resolution = 128            # the narrowest arms of a cross are 7 px wide at 128 px
    images, truth = sample_kind(kind, 6, resolution, "test")
    for image, f in zip(images, truth, strict=True):
        objects = [("x", "y", "hue", f["physical"])]
        if kind == "two-objects":
            objects.append(("x2", "y2", "hue2", f["extra"]))
        for x, y, hue, where in objects:
            col = int((where[x] + 1) / 2 * resolution)
            row = int((where[y] + 1) / 2 * resolution)
            expected = hsv_to_rgb(torch.tensor([where[hue]]), 0.75, 0.95)[0] * 2 - 1
            torch.testing.assert_close(image[:, row, col], expected, atol=0.1, rtol=0)


def test_two_objects_do_not_overlap():
    for f in draw_factors("two-objects", 16):
        p, e = f["physical"], f["extra"]
        assert max(abs(p["x"] - e["x2"]), abs(p["y"] - e["y2"])) > (p["size"] + e["size2"]) * 2 ** 0.5


def test_cli_writes_a_split_of_a_kind_with_its_factors(tmp_path):
    out = tmp_path / "disc"
    assert main(["shapes", str(out), "--kind", "disc", "--split", "dev", "--count", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["disc-dev-000.png", "disc-dev-001.png", "factors.json"]
    truth = json.loads((out / "factors.json").read_text())
    images, expected = sample_kind("disc", 2, 64, "dev")
    assert truth == {f"disc-dev-{i:03d}.png": f for i, f in enumerate(expected)}
    assert truth["disc-dev-000.png"]["kind"] == "disc" and truth["disc-dev-000.png"]["split"] == "dev"
    np.testing.assert_array_equal(read_png(out / "disc-dev-001.png"), to_pixels(images)[1])
    # --split defaults to test.
    assert main(["shapes", str(tmp_path / "t"), "--kind", "disc", "--count", "1"]) == 0
    assert (tmp_path / "t" / "disc-test-000.png").exists()


def test_cli_kinds_written_into_one_folder_keep_every_ground_truth(tmp_path):
    """star, then cross, then star again into one folder (issue 22): factors.json merges by file name; an image
    written again replaces its entry, the others stay."""
    assert main(["shapes", str(tmp_path), "--kind", "star", "--count", "2"]) == 0
    first = json.loads((tmp_path / "factors.json").read_text())
    assert main(["shapes", str(tmp_path), "--kind", "cross", "--count", "1"]) == 0
    assert main(["shapes", str(tmp_path), "--kind", "star", "--count", "1", "--split-seed", "3"]) == 0
    truth = json.loads((tmp_path / "factors.json").read_text())
    assert sorted(truth) == ["cross-test-000.png", "star-test-000.png", "star-test-001.png"]
    assert truth["cross-test-000.png"]["kind"] == "cross"
    assert truth["star-test-001.png"] == first["star-test-001.png"]
    assert truth["star-test-000.png"] == sample_kind("star", 1, 64, "test", seed=3)[1][0] != first["star-test-000.png"]
    assert main(["shapes", str(tmp_path), "--count", "1"]) == 0          # the plain images merge too
    assert len(json.loads((tmp_path / "factors.json").read_text())) == 4


def test_cli_plain_shapes_is_unchanged(tmp_path):
    """Without --kind or --split, `gani shapes OUT` writes what it always did (examples/shapes/ came from it)."""
    assert main(["shapes", str(tmp_path), "--count", "2"]) == 0
    truth = json.loads((tmp_path / "factors.json").read_text())
    reference = json.loads((SHAPES / "factors.json").read_text())
    assert sorted(truth) == ["shapes-2026-000.png", "shapes-2026-001.png"]
    for name in truth:
        assert truth[name] == reference[name]
        np.testing.assert_array_equal(read_png(tmp_path / name), read_png(SHAPES / name))


def test_cli_has_one_seed_for_plain_images_and_one_for_a_split(tmp_path, capsys):
    """--seed names the plain images' seed (shapes-SEED-NNN.png), --split-seed a kind's split stream; each is
    refused where it does not apply."""
    assert main(["shapes", str(tmp_path / "p"), "--count", "1", "--seed", "3"]) == 0
    assert (tmp_path / "p" / "shapes-3-000.png").exists()
    assert main(["shapes", str(tmp_path / "d"), "--kind", "disc", "--count", "1", "--split-seed", "5"]) == 0
    images, truth = sample_kind("disc", 1, 64, "test", seed=5)
    assert json.loads((tmp_path / "d" / "factors.json").read_text())["disc-test-000.png"] == truth[0]
    np.testing.assert_array_equal(read_png(tmp_path / "d" / "disc-test-000.png"), to_pixels(images)[0])
    capsys.readouterr()
    assert main(["shapes", str(tmp_path / "x"), "--kind", "disc", "--seed", "5"]) == 2
    assert "takes --split-seed" in capsys.readouterr().err
    assert main(["shapes", str(tmp_path / "y"), "--split-seed", "5"]) == 2
    assert "the plain images take --seed" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_rejects_an_unknown_kind_and_lists_the_kinds(tmp_path, capsys):
    assert main(["shapes", str(tmp_path / "x"), "--kind", "hexagon"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown kind 'hexagon'" in err
    assert all(kind in err for kind in KINDS)
    assert not (tmp_path / "x").exists()
    assert main(["shapes", "--list-kinds"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(KINDS)
