"""The batched engine: K images in one forward and backward per step give each image what a run of it alone gives.

Equal within float32 rounding: the batched modulated convolution (per-sample weights as a grouped convolution)
sums in another order than K separate ones. Adam's first steps move each parameter by about ±lr whatever the
size of its gradient, so a gradient component within rounding of zero can take the other sign: in the ``param``
form (whose output layer starts at zero) that makes renders differ by up to 4e-4 (of a [-1, 1] range; an 8-bit
level is 8e-3) after a few steps; the other forms agree to about 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.dataset import list_images
from gani_core.editing import default_edit_strength
from gani_core.invert import InversionError, invert_image, invert_images, method_config, preview_edit
from gani_core.invert_files import invert_sources
from gani_core.measure import measure_images
from gani_core.metric_registry import names
from gani_core.pivot import PivotConfig, find_pivot, find_pivots
from gani_core.run_folder import RunFolder
from gani_core.tuning import TuneConfig, render_with, tune, tune_batch

SEEDS = [0, 1, 0]       # two images with the same seed, one with another


@pytest.fixture(scope="module")
def targets() -> torch.Tensor:
    return torch.rand([3, 3, 32, 32], generator=torch.Generator().manual_seed(5)) * 2 - 1


@pytest.mark.parametrize("space", ["w", "wplus"])
def test_pivots_of_a_batch_are_the_pivots_of_each_image_alone(G, targets, space) -> None:
    cfg = PivotConfig(space=space, steps=4)
    batch = find_pivots(G, targets, cfg, SEEDS)
    alone = torch.stack([find_pivot(G, targets[i : i + 1], cfg, seed=s) for i, s in enumerate(SEEDS)])
    assert batch.shape == (3, G.num_ws, G.w_dim)
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone[0], alone[2])       # same seed, other image: another pivot


@pytest.mark.parametrize(("form", "layers"), [("param-lowrank", "conv+torgb"), ("lowrank", "conv+torgb"),
                                              ("param", "conv+torgb"), ("grad", "conv+torgb"), ("full", "all")])
def test_tuning_a_batch_is_tuning_each_image_alone(G, targets, form, layers) -> None:
    w = G.mapping(torch.randn([3, G.z_dim], generator=torch.Generator().manual_seed(1)))
    cfg = TuneConfig(form=form, layers=layers, steps=3, reg_weight=0.1)
    batch = tune_batch(G, w, targets, cfg, SEEDS)
    for i, seed in enumerate(SEEDS):
        alone = tune(G, w[i], targets[i : i + 1], cfg, seed=seed)
        assert batch[i].losses == pytest.approx(alone.losses, rel=1e-4, abs=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(render_with(G, batch[i].deltas, w[i : i + 1]),
                                       render_with(G, alone.deltas, w[i : i + 1]), atol=1e-3, rtol=0)
        assert batch[i].diverged_at is None


def test_an_inverted_batch_has_each_image_row_of_a_run_alone(G, targets) -> None:
    images = (targets + 1) / 2
    cfg = method_config("gani", pivot_steps=3, tune_steps=3)
    batch = invert_images(G, images, ["a", "b", "c"], cfg)
    for i, image_id in enumerate("abc"):
        alone = invert_image(G, images[i], image_id, cfg)
        row = batch[i].row()
        for name in ("mse", "lpips", "locality", "edit_consistency", "delta_bytes"):
            assert row[name] == pytest.approx(alone.row()[name], rel=2e-3, abs=1e-5), name
        torch.testing.assert_close(batch[i].w_pivot, alone.w_pivot, atol=1e-5, rtol=0)


def test_batched_metrics_are_three_one_image_calls() -> None:
    """measure.measure_images of K = 3 images in shared renders against three K = 1 calls (the definition, which
    tests/test_editing.py and tests/test_shapes.py check against hand computations): the trained built-in generator,
    with factor edits and a probe, so edit_accuracy is measured too; each image its own pivot and seeded deltas on
    every tunable layer, stored ones slightly off the in-memory ones (delta_lpips_change)."""
    G = resolve_checkpoint("builtin").load()
    gen = torch.Generator().manual_seed(7)
    images = torch.rand([3, 3, 64, 64], generator=gen)
    w_pivots = G.mapping(torch.randn([3, G.z_dim], generator=gen))
    stored = [{n: 0.05 * p.detach().std() * torch.randn(p.shape, generator=gen) for n, p in G.tunable_layers().items()}
              for _ in range(3)]
    deltas = [{n: d * 1.01 for n, d in s.items()} for s in stored]
    directions = G.factor_edits.directions
    strength = default_edit_strength(G)
    options = {"directions": directions, "strength": strength, "locality_count": 16, "seed": 2,
               "preview_offset": preview_edit(G, directions[0], strength)}
    batch = measure_images(G, images, w_pivots, deltas, stored, **options)
    for i, measured in enumerate(batch):
        (alone,) = measure_images(G, images[i : i + 1], w_pivots[i : i + 1], deltas[i : i + 1], stored[i : i + 1],
                                  **options)
        assert measured.metrics["locality"] > 1e-4 and measured.metrics["edit_consistency"] != 0
        assert measured.metrics["edit_accuracy"] is not None and measured.delta_lpips_change > 0
        for name in names("result"):        # the faces metrics: None, these are no faces (tests/test_faces_pipeline)
            expected = alone.metrics[name]
            close = expected if expected is None else pytest.approx(expected, rel=1e-3, abs=2e-5)
            assert measured.metrics[name] == close, name
        assert measured.delta_lpips_change == pytest.approx(alone.delta_lpips_change, rel=1e-3, abs=2e-5)
        assert measured.edit_ratios == pytest.approx(alone.edit_ratios, rel=1e-3, abs=2e-5)
        torch.testing.assert_close(measured.previews, alone.previews, atol=1e-4, rtol=0)
    assert batch[0].metrics["lpips"] != pytest.approx(batch[1].metrics["lpips"])    # three images, not one


def test_untuned_methods_measure_an_unchanged_generator(G, targets) -> None:
    (result,) = invert_images(G, (targets[:1] + 1) / 2, ["a"], method_config("wplus", pivot_steps=2))
    assert (result.metrics["locality"], result.metrics["edit_consistency"]) == (0.0, 0.0)
    assert result.delta_bytes == 0 and result.delta_lpips_change == 0.0
    torch.testing.assert_close(result.previews[1], result.previews[2])      # tuned is the pivot's render


def test_a_pool_of_regulariser_latents_is_per_image_and_used_in_turn(G, targets) -> None:
    w = G.mapping(torch.randn([3, G.z_dim], generator=torch.Generator().manual_seed(1)))
    cfg = TuneConfig(steps=5, reg_weight=0.1, reg_pool=2)
    batch = tune_batch(G, w, targets, cfg, SEEDS)
    for i, seed in enumerate(SEEDS):
        assert batch[i].losses == pytest.approx(tune(G, w[i], targets[i : i + 1], cfg, seed=seed).losses, rel=1e-4)
    fresh = tune_batch(G, w, targets, TuneConfig(steps=5, reg_weight=0.1), SEEDS)
    assert batch[0].losses[:1] == pytest.approx(fresh[0].losses[:1])    # the first step: no update yet
    assert batch[0].losses != pytest.approx(fresh[0].losses, rel=1e-6)  # then other regulariser latents


def test_the_regulariser_starts_at_its_step(G, targets) -> None:
    w = G.mapping(torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(1)))
    late = tune_batch(G, w, targets[:2], TuneConfig(steps=5, reg_weight=0.5, reg_start=3), [0, 1])
    never = tune_batch(G, w, targets[:2], TuneConfig(steps=5, reg_weight=0.0), [0, 1])
    always = tune_batch(G, w, targets[:2], TuneConfig(steps=5, reg_weight=0.5), [0, 1])
    for i in range(2):
        assert late[i].losses[:4] == pytest.approx(never[i].losses[:4], rel=1e-6)   # 3 updates without it
        assert late[i].losses[4] != pytest.approx(never[i].losses[4], rel=1e-6)     # then the regulariser's update
        assert late[i].losses[3] != pytest.approx(always[i].losses[3], rel=1e-6)   # which changes steps 2 and 3


def test_weights_left_non_finite_by_the_last_step_are_a_divergence(G, targets) -> None:
    # At lr 1e15 both losses are finite (the second about 1e31) but the second update leaves NaN weights.
    w = G.mapping(torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(1)))
    results = tune_batch(G, w, targets[:2], TuneConfig(steps=2, lr=1e15, reg_weight=0.0), [0, 1])
    for r in results:
        assert all(loss < float("inf") for loss in r.losses)
        assert r.diverged_at == 2 and not all(bool(torch.isfinite(d).all()) for d in r.deltas.values())


def test_a_diverging_image_fails_alone_and_the_batch_goes_on(G, targets) -> None:
    images = ((targets + 1) / 2).clone()
    images[1, 0, 0, 0] = float("nan")
    cfg = method_config("gani", pivot_steps=2, tune_steps=2)
    a, b, c = invert_images(G, images, ["a", "b", "c"], cfg)
    assert isinstance(b, InversionError) and "diverged" in str(b)
    assert a.metrics["lpips"] > 0 and c.metrics["lpips"] > 0
    alone = invert_image(G, images[2], "c", cfg)
    assert c.metrics["lpips"] == pytest.approx(alone.metrics["lpips"], rel=2e-3)


def test_sources_fail_before_joining_a_batch_and_rows_are_written_per_batch(photos_with_broken: Path,
                                                                            tmp_path: Path) -> None:
    images = list_images(str(photos_with_broken))                  # astronaut, broken, coffee
    ckpt = resolve_checkpoint("builtin-random:32")
    folder = RunFolder(str(tmp_path))
    rows = invert_sources(ckpt.load(), images, method_config("wplus", pivot_steps=2), folder, ckpt, batch_size=2)
    assert [(r["image_id"], r["status"]) for r in rows] == [("astronaut", "ok"), ("broken", "failed"),
                                                            ("coffee", "ok")]
    assert rows[1]["error"].startswith("ImageError")
    # One part for the batch (astronaut, coffee), with the failure of the image read before it.
    parts = [pq.read_table(p).to_pylist() for p in (tmp_path / "rows").iterdir()]
    assert [[r["image_id"] for r in part] for part in parts] == [["broken", "astronaut", "coffee"]]


def test_a_batch_out_of_memory_is_split_and_nothing_is_lost(photos_with_broken: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that holds one image at a time (the out-of-memory error a GPU raises, injected for K > 1)."""
    import gani_core.invert_files as invert_files

    calls: list[int] = []
    real = invert_files.invert_images

    def one_at_a_time(G, images, *args, **kwargs):
        calls.append(len(images))
        if len(images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(G, images, *args, **kwargs)

    monkeypatch.setattr(invert_files, "invert_images", one_at_a_time)
    (tmp_path / "in").mkdir()
    for name in ("astronaut.jpg", "coffee.jpg"):
        (tmp_path / "in" / name).write_bytes((photos_with_broken / name).read_bytes())
    ckpt = resolve_checkpoint("builtin-random:32")
    rows = invert_sources(ckpt.load(), list_images(str(tmp_path / "in")), method_config("w", pivot_steps=2),
                          RunFolder(str(tmp_path / "out")), ckpt, batch_size=2)
    assert calls == [2, 1, 1]
    assert [(r["image_id"], r["status"]) for r in rows] == [("astronaut", "ok"), ("coffee", "ok")]


def test_batch_size_must_be_positive(tmp_path: Path) -> None:
    ckpt = resolve_checkpoint("builtin-random:32")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        invert_sources(ckpt.load(), [], method_config("w"), RunFolder(str(tmp_path)), ckpt, batch_size=0)

