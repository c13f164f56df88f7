"""Pivot, GMM tuning and the baselines through one code path; results, deltas and metrics.parquet rows.

One small inversion per method on the astronaut photo and the shared builtin-random:32 generator (10 + 10
steps, seed 0) is computed once for the module and read by most tests: GANI with its progress calls, PTI
from GANI's pivot (the same pivot, the same step budget), and the pivot-only baselines w and wplus.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, field, fields, make_dataclass, replace
from itertools import pairwise

import pyarrow as pa
import pytest
import torch

from gani_core import Generator, build_builtin
from gani_core.deltas import apply_deltas, decode_deltas, delta_bytes
from gani_core.gmm import GMM_FORMS, GMMSet
from gani_core.images import load_image
from gani_core.invert import (
    HASH_BASELINE,
    InversionResult,
    InvertConfig,
    invert_image,
    method_config,
    scheme1_config_hash,
)
from gani_core.lpips import lpips_distance
from gani_core.metric_registry import names
from gani_core.metrics import image_metrics
from gani_core.pivot import PivotConfig
from gani_core.run_folder import METRICS_SCHEMA
from gani_core.tuning import TuneConfig, layer_gradients, render_with, tune, tuned_layers

from .conftest import EXAMPLES

PIVOT_STEPS, TUNE_STEPS = 10, 10
# The columns a run adds to InversionResult.row() (the image's hash, run_folder.complete_row): not the result's.
RUN_COLUMNS = {"image_sha256", "source", "source_stat", "finished", "checkpoint", "checkpoint_sha256",
               "generator_label", "resolution", "config_hash", "seed", "device", "gani_version",
               "source_sha256", "align", "faces_seen", "face_box", "face_quad",   # the file's alignment (invert_files)
               "deltas_file_bytes"}                                                # the written file's (invert_files)
TIMING_COLUMNS = {"seconds", "seconds_pivot", "seconds_tune", "seconds_metrics", "seconds_per_tune_step",
                  "peak_memory_mb"}


@pytest.fixture(scope="module")
def image(G: Generator) -> torch.Tensor:
    """The astronaut photo at G's resolution, [3, 32, 32] in [0, 1]."""
    return load_image(EXAMPLES / "astronaut.jpg", resolution=G.img_resolution)


@pytest.fixture(scope="module")
def progress_calls() -> list[tuple[int, int, float]]:
    """(step, total, loss) of every progress call of the `gani` inversion, filled by that fixture."""
    return []


@pytest.fixture(scope="module")
def gani(G: Generator, image: torch.Tensor, progress_calls: list) -> InversionResult:
    cfg = method_config("gani", pivot_steps=PIVOT_STEPS, tune_steps=TUNE_STEPS, seed=0)
    return invert_image(G, image, "astronaut", cfg, progress=lambda s, n, loss: progress_calls.append((s, n, loss)))


@pytest.fixture(scope="module")
def pti(G: Generator, image: torch.Tensor, gani: InversionResult) -> InversionResult:
    """PTI from GANI's pivot with GANI's step budget. Not asserted: that GANI is the more local of the two. At
    this budget, on an untrained generator, it is not (measured locality 0.038 against PTI's 0.020, while its
    lpips is 0.071 against 0.119); docs/method.md compares them at 200 steps on the trained generator."""
    cfg = method_config("pti", tune_steps=TUNE_STEPS, seed=0)
    return invert_image(G, image, "astronaut", cfg, w_pivot=gani.w_pivot)


@pytest.fixture(scope="module")
def pivot_only(G: Generator, image: torch.Tensor) -> dict[str, InversionResult]:
    """The w and wplus baselines, 5 pivot steps each."""
    return {m: invert_image(G, image, "astronaut", method_config(m, pivot_steps=5, seed=0)) for m in ("w", "wplus")}


def target_of(image: torch.Tensor) -> torch.Tensor:
    """The photo as the generator's target: [1, 3, R, R] in [-1, 1]."""
    return image[None] * 2 - 1


# --------------------------------------------------------------------------------------------------------
# The pivot.


def test_pivot_beats_the_average_latent(G: Generator, image: torch.Tensor, gani: InversionResult) -> None:
    with torch.no_grad():
        avg = G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, -1), noise_mode="const").clamp(-1, 1)
        piv = G.synthesis(gani.w_pivot[None], noise_mode="const").clamp(-1, 1)
    # Measured: 0.227 against 0.354 for the average latent (10 steps).
    assert lpips_distance(piv, target_of(image)) < lpips_distance(avg, target_of(image)) - 0.05


def test_w_pivot_is_one_latent_for_every_layer_and_wplus_one_per_layer(
    G: Generator, pivot_only: dict[str, InversionResult]
) -> None:
    w, wplus = pivot_only["w"].w_pivot, pivot_only["wplus"].w_pivot
    assert w.shape == wplus.shape == (G.num_ws, G.w_dim)
    assert torch.equal(w, w[0].expand_as(w))
    assert (wplus - wplus[0]).abs().amax(dim=1)[1:].min() > 0      # every layer differs from the first


# --------------------------------------------------------------------------------------------------------
# Tuning.


@pytest.mark.parametrize("form", GMM_FORMS)
def test_zero_initialised_gmms_leave_the_generator_unchanged(
    G: Generator, image: torch.Tensor, gani: InversionResult, form: str
) -> None:
    pivot = gani.w_pivot
    layers = tuned_layers(G, "conv+torgb")
    grads = layer_gradients(G, list(layers), pivot[None], target_of(image), TuneConfig()) if form == "grad" else None
    gmms = GMMSet({n: w.detach() for n, w in layers.items()}, form, grads=grads)
    deltas = gmms.deltas()
    assert set(deltas) == set(layers)
    assert all(d.shape == layers[n].shape and not d.any() for n, d in deltas.items())
    with torch.no_grad():
        torch.testing.assert_close(render_with(G, deltas, pivot[None]), G.synthesis(pivot[None]), atol=0, rtol=0)


def test_tuning_lowers_the_reconstruction_loss(gani: InversionResult) -> None:
    assert len(gani.losses) == TUNE_STEPS
    assert gani.losses[-1] < 0.8 * gani.losses[0]           # measured: 0.54 of the first step's loss


def test_tuned_render_reconstructs_the_photo_better_than_the_pivot(
    image: torch.Tensor, gani: InversionResult
) -> None:
    photo, pivot_render, tuned_render = gani.previews[0], gani.previews[1], gani.previews[2]
    assert torch.equal(photo, image)
    at_pivot = image_metrics(pivot_render[None], image[None])[0]
    tuned = image_metrics(tuned_render[None], image[None])[0]
    assert (tuned["lpips"], tuned["mse"]) == pytest.approx((gani.metrics["lpips"], gani.metrics["mse"]), abs=1e-6)
    # Measured: lpips 0.071 against 0.227 at the pivot, mse 0.060 against 0.093.
    assert tuned["lpips"] < 0.5 * at_pivot["lpips"]
    assert tuned["mse"] < 0.9 * at_pivot["mse"]


def test_inversion_leaves_the_generator_unchanged(
    G: Generator, gani: InversionResult, pti: InversionResult, pivot_only: dict
) -> None:
    fresh = build_builtin(32)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in G.state_dict().items())


def test_stored_deltas_reproduce_the_in_memory_tuning(G: Generator, gani: InversionResult) -> None:
    # Measured: 1e-6. The encoding keeps every layer within 2% relative error, far below what LPIPS sees.
    assert gani.delta_lpips_change < 1e-3
    rebuilt = apply_deltas(G, decode_deltas(gani.encoded))
    with torch.no_grad():
        render = (rebuilt.synthesis(gani.w_pivot[None], noise_mode="const").clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(render[0], gani.previews[2], atol=1 / 255, rtol=0)


def test_gani_changes_the_tunable_layers_and_pti_every_synthesis_weight(
    G: Generator, gani: InversionResult, pti: InversionResult
) -> None:
    assert [e.layer for e in gani.encoded] == list(G.tunable_layers())
    synthesis = [n for n, _ in G.named_parameters() if n.startswith("synthesis.")]
    assert [e.layer for e in pti.encoded] == synthesis
    assert {"synthesis.b4.const", "synthesis.b8.conv0.affine.weight"} <= set(synthesis)


def test_gani_stores_a_small_fraction_of_ptis_bytes(gani: InversionResult, pti: InversionResult) -> None:
    assert gani.delta_bytes == delta_bytes(gani.encoded) and pti.delta_bytes == delta_bytes(pti.encoded)
    # Measured: 380,976 bytes against 2,081,830 (rank-32 GMM deltas against PTI's full-rank ones; 101,918 at rank 8).
    assert gani.delta_bytes < 0.25 * pti.delta_bytes


@pytest.mark.parametrize("method", ["w", "wplus"])
def test_pivot_only_methods_leave_the_generator_unchanged(
    pivot_only: dict[str, InversionResult], method: str
) -> None:
    result = pivot_only[method]
    assert result.encoded == [] and result.delta_bytes == 0 and result.delta_lpips_change == 0.0
    assert result.metrics["locality"] == 0.0 and result.metrics["edit_consistency"] == 0.0
    assert torch.equal(result.previews[2], result.previews[1])     # the "tuned" render is the pivot's
    assert result.metrics["lpips"] > 0
    row = result.row()
    assert (row["pivot_steps"], row["tune_steps"], row["seconds_per_tune_step"]) == (5, 0, None)


def test_bf16_mixed_precision_runs_and_still_fits(G: Generator, image: torch.Tensor, gani: InversionResult) -> None:
    cfg = method_config("gani", tune_steps=6, precision="bf16", reg_weight=0.0)
    assert cfg.pivot.precision == cfg.tune.precision == "bf16"
    result = tune(G, gani.w_pivot, target_of(image), cfg.tune, seed=0)
    assert all(d.dtype == torch.float32 for d in result.deltas.values())
    assert result.losses[-1] < result.losses[0]


# --------------------------------------------------------------------------------------------------------
# The result and its row.


def test_row_has_every_column_of_the_schema_with_its_type(G: Generator, gani: InversionResult) -> None:
    row = gani.row()
    assert set(row) == set(METRICS_SCHEMA.names) - RUN_COLUMNS
    python_type = {pa.string(): str, pa.float64(): float, pa.int64(): int, pa.list_(pa.float32()): list}
    for name, value in row.items():
        if value is not None:
            assert type(value) is python_type[METRICS_SCHEMA.field(name).type], name
    # builtin-random has no factor edit directions: edit_accuracy does not apply; no faces: no id_similarity.
    nulls = {name for name, value in row.items() if value is None}
    assert nulls == {"error", "edit_accuracy", *names("faces"), "id_note"}
    assert (row["image_id"], row["method"], row["status"]) == ("astronaut", "gani", "ok")
    assert (row["pivot_steps"], row["tune_steps"]) == (PIVOT_STEPS, TUNE_STEPS)
    assert row["seconds_per_tune_step"] == pytest.approx(row["seconds_tune"] / TUNE_STEPS)
    assert "w_pivot" not in row and gani.w_pivot.shape == (G.num_ws, G.w_dim)    # binary, in the deltas file
    assert row["delta_bytes"] == gani.delta_bytes and row["lpips"] == gani.metrics["lpips"]
    assert gani.previews.shape == (4, 3, 32, 32)


def test_same_seed_gives_identical_rows(G: Generator, image: torch.Tensor) -> None:
    cfg = method_config("gani", pivot_steps=3, tune_steps=3, seed=3)
    a, b = (invert_image(G, image, "astronaut", cfg).row() for _ in range(2))
    assert {k: v for k, v in a.items() if k not in TIMING_COLUMNS} == {
        k: v for k, v in b.items() if k not in TIMING_COLUMNS}
    assert all(math.isfinite(a[k]) for k in ("lpips", "mse", "locality", "edit_consistency"))


def test_progress_reports_rising_steps_through_both_stages_up_to_the_total(
    progress_calls: list, gani: InversionResult
) -> None:
    total = PIVOT_STEPS + TUNE_STEPS
    steps = [step for step, _, _ in progress_calls]
    assert all(a < b for a, b in pairwise(steps)) and steps[-1] == total
    assert PIVOT_STEPS in steps                 # the pivot stage's last step, then the tuning's continue the count
    assert all(n == total for _, n, _ in progress_calls)
    tuning = [(step - PIVOT_STEPS, loss) for step, _, loss in progress_calls if step > PIVOT_STEPS]
    assert [loss for _, loss in tuning] == pytest.approx([gani.losses[step - 1] for step, _ in tuning])
    assert all(isinstance(loss, float) and math.isfinite(loss) for _, _, loss in progress_calls)


# --------------------------------------------------------------------------------------------------------
# Configuration and input errors.


def test_method_config_validates() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        method_config("hyperstyle")
    with pytest.raises(ValueError, match="no tuning stage"):
        method_config("wplus", lr=1e-3)
    cfg = method_config("pti", pivot_steps=7, tune_steps=9, lr=1e-3)
    assert (cfg.pivot.steps, cfg.tune.steps, cfg.tune.lr, cfg.tune.form) == (7, 9, 1e-3, "full")
    assert cfg.config_hash() != replace(cfg, seed=1).config_hash()


def test_the_hash_covers_the_differences_from_the_baseline() -> None:
    assert InvertConfig().differences() == {}
    pti = method_config("pti", pivot_steps=7)
    assert pti.differences() == {"method": "pti", "pivot.steps": 7, "tune.form": "full", "tune.lr": 3e-4,
                                 "tune.layers": "all", "tune.reg_weight": 0.0}
    assert method_config("w").differences() == {"method": "w", "tune": None}
    # Pinned: the baseline is frozen (a change of it, or of the scheme, would orphan every stored row).
    assert hashlib.sha256(json.dumps(HASH_BASELINE, sort_keys=True).encode()).hexdigest()[:16] == "b2f930c9dc607370"
    assert (InvertConfig().config_hash(), pti.config_hash()) == ("47a910067da3d6ef", "40f290a3e7dfe5ac")
    later = method_config("gani", pivot_steps=7, tune_steps=9, reg_start=5)
    assert later.config_hash() != method_config("gani", pivot_steps=7, tune_steps=9).config_hash()


def test_a_field_added_with_a_default_changes_no_hash() -> None:
    """A field added to TuneConfig, PivotConfig or InvertConfig (here by subclassing): at its default every hash is
    what it was, with no list kept by hand; at another value the hash changes."""
    def plus(cls: type, name: str) -> type:
        return make_dataclass(f"{cls.__name__}Plus", [(name, int, field(default=7))], bases=(cls,), frozen=True)

    TunePlus, PivotPlus, InvertPlus = plus(TuneConfig, "new_tune"), plus(PivotConfig, "new_pivot"), \
        plus(InvertConfig, "new_top")
    for cfg in (method_config("gani", 7, 9), method_config("pti"), method_config("wplus"), InvertConfig()):
        tune = None if cfg.tune is None else TunePlus(**asdict(cfg.tune))
        same = InvertPlus(**{**{f.name: getattr(cfg, f.name) for f in fields(cfg)},
                             "tune": tune, "pivot": PivotPlus(**asdict(cfg.pivot))})
        assert (same.config_hash(), same.resume_hashes()) == (cfg.config_hash(), cfg.resume_hashes())
        for changed in (replace(same, new_top=8), replace(same, pivot=replace(same.pivot, new_pivot=8)),
                        *([replace(same, tune=replace(tune, new_tune=8))] if tune is not None else [])):
            assert changed.config_hash() != cfg.config_hash()
            assert changed.resume_hashes() == (changed.config_hash(),)     # no row written before can be its


def test_rows_written_before_issue_17_keep_their_hashes() -> None:
    """Hashes stored by gani before issue 17 (scheme 1, the fields' old names; tests/fixtures/run-before-issue17
    and the rows of commit 45e5f67) are still recognised by the resume rule, beside today's."""
    stored = {method_config("gani", 5, 3): "f6c0b8b6423e8af0", method_config("w", 5): "322161a9c25b5a67",
              method_config("gani", 7, 9): "7e7c416f371c241e", method_config("pti"): "fbde17625a029ead",
              method_config("wplus"): "0c472692c5e0c5b0", method_config("gani", 7, 9, reg_start=5): "0b70840e0112e26a",
              method_config("gani", reg_pool=16): "c504314a982b5d59",
              method_config("pti", 20, 10, reg_weight=0.1): "31fe44d96a784881"}
    for cfg, old in stored.items():
        assert scheme1_config_hash(cfg) == old
        assert cfg.resume_hashes() == (cfg.config_hash(), old) and cfg.config_hash() != old


def test_image_of_wrong_size_is_refused(G: Generator) -> None:
    with pytest.raises(ValueError, match=r"32, 32\].*64, 64\]"):     # what it must be, what it was
        invert_image(G, torch.zeros(3, 64, 64), "x", method_config("w", pivot_steps=1))
