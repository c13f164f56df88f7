"""Pivot, GMM tuning and the baselines through one code path; results, deltas and failed rows."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gani_core import load_generator
from gani_core.deltas import apply_deltas, decode_deltas
from gani_core.gmm import GMM_KINDS, GMMSet
from gani_core.images import load_image
from gani_core.invert import invert_image, method_config
from gani_core.lpips import lpips_distance
from gani_core.pivot import PivotConfig, find_pivot
from gani_core.tuning import TuneConfig, layer_gradients, render_with, tune, tuned_layers

from .conftest import EXAMPLES


@pytest.fixture(scope="module")
def G():
    return load_generator("builtin-random:32")


@pytest.fixture(scope="module")
def image(G):
    return load_image(EXAMPLES / "astronaut.jpg", resolution=G.img_resolution)


@pytest.fixture(scope="module")
def pivot(G, image):
    return find_pivot(G, image[None] * 2 - 1, PivotConfig(steps=30), seed=0)


def test_pivot_beats_the_average_latent(G, image, pivot):
    target = image[None] * 2 - 1
    with torch.no_grad():
        avg = G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, -1))
        piv = G.synthesis(pivot[None])
    assert pivot.shape == (G.num_ws, G.w_dim)
    assert torch.allclose(pivot, pivot[0].expand_as(pivot))  # a W pivot: one w for every layer
    assert lpips_distance(piv.clamp(-1, 1), target) < lpips_distance(avg.clamp(-1, 1), target) - 0.02


def test_wplus_pivot_differs_per_layer(G, image):
    w = find_pivot(G, image[None] * 2 - 1, PivotConfig(space="wplus", steps=5), seed=0)
    assert w.shape == (G.num_ws, G.w_dim)
    assert (w - w[0]).abs().max() > 0


@pytest.mark.parametrize("kind", GMM_KINDS)
def test_zero_initialised_gmms_leave_the_generator_unchanged(G, image, pivot, kind):
    layers = tuned_layers(G, "conv+torgb")
    grads = layer_gradients(G, list(layers), pivot[None], image[None] * 2 - 1, TuneConfig()) if kind == "grad" else None
    gmms = GMMSet({n: w.detach() for n, w in layers.items()}, kind, grads=grads)
    deltas = gmms.deltas()
    assert set(deltas) == set(layers)
    assert all(d.shape == layers[n].shape and not d.any() for n, d in deltas.items())
    with torch.no_grad():
        torch.testing.assert_close(render_with(G, deltas, pivot[None]), G.synthesis(pivot[None]), atol=0, rtol=0)


def test_gani_tuning_lowers_the_reconstruction_loss(G, image, pivot):
    before = {k: v.clone() for k, v in G.state_dict().items()}
    result = tune(G, pivot, image[None] * 2 - 1, TuneConfig(steps=25), seed=0)
    assert result.losses[-1] < 0.8 * result.losses[0]
    with torch.no_grad():
        tuned = render_with(G, result.deltas, pivot[None])
        original = G.synthesis(pivot[None])
    target = image[None] * 2 - 1
    assert lpips_distance(tuned.clamp(-1, 1), target) < lpips_distance(original.clamp(-1, 1), target)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())  # G itself untouched


def test_seeded_runs_are_reproducible_on_cpu(G, image):
    cfg = method_config("gani", pivot_steps=5, tune_steps=5, seed=3)
    a = invert_image(G, image, "a", cfg)
    b = invert_image(G, image, "a", cfg)
    assert torch.equal(a.w_pivot, b.w_pivot)
    assert [e.payload for e in a.encoded] == [e.payload for e in b.encoded]
    assert a.metrics == b.metrics


def test_stored_deltas_reproduce_the_tuned_rendering(G, image, pivot):
    cfg = method_config("gani", tune_steps=20)
    result = invert_image(G, image, "astronaut", cfg, w_pivot=pivot)
    assert result.delta_bytes > 0
    assert result.delta_lpips_change < 1e-3
    rebuilt = apply_deltas(G, decode_deltas(result.encoded))
    with torch.no_grad():
        render = (rebuilt.synthesis(pivot[None]).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(render[0], result.previews[2], atol=1 / 255, rtol=0)


def test_result_has_every_metric_and_stage(G, image, pivot):
    result = invert_image(G, image, "astronaut", method_config("gani", tune_steps=3), w_pivot=pivot)
    row = result.row()
    for name in ("mse", "psnr", "ms_ssim", "lpips", "lpips_vgg", "locality", "edit_consistency", "seconds",
                 "seconds_pivot", "seconds_tune", "delta_bytes", "peak_memory_mb", "tune_steps"):
        assert row[name] is not None, name
    assert row["pivot_steps"] == 0 and row["tune_steps"] == 3  # the pivot was given
    assert row["locality"] > 0
    assert len(row["w_pivot"]) == G.num_ws * G.w_dim
    assert result.previews.shape == (4, 3, 32, 32)


def test_pti_and_wplus_run_through_the_same_path(G, image, pivot):
    pti = invert_image(G, image, "astronaut", method_config("pti", tune_steps=5), w_pivot=pivot)
    layers = {e.layer for e in pti.encoded}
    assert "synthesis.b4.const" in layers and "synthesis.b8.conv0.affine.weight" in layers  # all weights
    gani = invert_image(G, image, "astronaut", method_config("gani", tune_steps=5), w_pivot=pivot)
    assert {e.layer for e in gani.encoded} == set(G.tunable_layers())
    wplus = invert_image(G, image, "astronaut", method_config("wplus", pivot_steps=5))
    assert wplus.encoded == [] and wplus.delta_bytes == 0
    assert wplus.metrics["locality"] == 0.0 and wplus.metrics["lpips"] > 0
    assert wplus.row()["tune_steps"] == 0 and wplus.row()["seconds_per_tune_step"] is None


def test_method_config_validates():
    with pytest.raises(ValueError, match="unknown method"):
        method_config("hyperstyle")
    with pytest.raises(ValueError, match="no tuning stage"):
        method_config("wplus", lr=1e-3)
    cfg = method_config("pti", pivot_steps=7, tune_steps=9, lr=1e-3)
    assert (cfg.pivot.steps, cfg.tune.steps, cfg.tune.lr, cfg.tune.kind) == (7, 9, 1e-3, "full")
    assert cfg.config_hash() != replace(cfg, seed=1).config_hash()


def test_image_of_wrong_size_is_refused(G):
    with pytest.raises(ValueError, match=r"image must be \[3, 32, 32\]"):
        invert_image(G, torch.zeros(3, 64, 64), "x", method_config("w", pivot_steps=1))


def test_progress_reports_every_step_of_both_stages(G, image):
    seen = []
    invert_image(G, image, "a", method_config("gani", pivot_steps=3, tune_steps=2),
                 progress=lambda s, n, loss: seen.append((s, n)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]




def test_bf16_mixed_precision_runs_and_still_fits(G, image, pivot):
    cfg = method_config("gani", tune_steps=6, precision="bf16", locality_weight=0.0)
    assert cfg.pivot.precision == cfg.tune.precision == "bf16"
    result = tune(G, pivot, image[None] * 2 - 1, cfg.tune, seed=0)
    assert all(d.dtype == torch.float32 for d in result.deltas.values())
    assert result.losses[-1] < result.losses[0]
