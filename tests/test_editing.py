"""Latent directions, locality latents, and the `locality`, `edit_consistency` and `edit_accuracy` metrics
(measure.measure_images of one image against the formulas of its docstring, computed here by hand)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from gani_core.deltas import apply_deltas
from gani_core.editing import (
    DirectionsError,
    apply_direction,
    default_edit_strength,
    factor_changes,
    load_directions,
    locality_latents,
    random_directions,
    sample_regulariser_latents,
    w_spread,
)
from gani_core.factors import FactorEdits, FactorProbe
from gani_core.invert import preview_edit
from gani_core.lpips import lpips_distance
from gani_core.measure import Measured, measure_images
from gani_core.networks import Generator


@pytest.fixture(scope="module")
def w_pivot(G: Generator) -> torch.Tensor:
    z = torch.randn([1, G.z_dim], generator=torch.Generator().manual_seed(123))
    return G.mapping(z)[0]


@pytest.fixture(scope="module")
def latents(G: Generator, w_pivot: torch.Tensor) -> torch.Tensor:
    return locality_latents(G, w_pivot, count=8, seed=0)


LAYER = "synthesis.b16.conv1.weight"


@pytest.fixture(scope="module")
def bump(G: Generator) -> Callable[[float], dict[str, torch.Tensor]]:
    """Deltas that move the 16 px conv1 weight by `size` times a fixed Gaussian (weights are ~N(0, 1))."""
    noise = torch.randn(G.get_parameter(LAYER).shape, generator=torch.Generator().manual_seed(0))
    return lambda size: {LAYER: size * noise}


@pytest.fixture(scope="module")
def perturbed(G: Generator, bump: Callable[[float], dict[str, torch.Tensor]]) -> Callable[[float], Generator]:
    """A copy of G tuned by ``bump(size)`` (deltas.apply_deltas: the hand computations' tuned generator)."""
    return functools.cache(lambda size: apply_deltas(G, bump(size)))


def _render(G: Generator, ws: torch.Tensor) -> torch.Tensor:
    return G.synthesis(ws, noise_mode="const").clamp(-1, 1)


# ----------------------------------------------------------------------------------------------------
# Directions


def test_random_directions_are_unit_seeded_and_ignore_the_global_rng() -> None:
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = random_directions(128, 5, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not advanced
    torch.manual_seed(2)
    b = random_directions(128, 5, seed=7)
    assert a.shape == (5, 128) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, random_directions(128, 5, seed=8), atol=0.1)


@pytest.mark.parametrize(
    ("shape", "returned"),
    [((128,), (1, 128)), ((3, 128), (3, 128)), ((2, 8, 128), (2, 8, 128))],
)
def test_load_directions_accepts_each_shape(tmp_path: Path, shape: tuple, returned: tuple) -> None:
    array = np.random.default_rng(0).standard_normal(shape)  # float64 on disk
    np.save(tmp_path / "d.npy", array)
    directions = load_directions(tmp_path / "d.npy", w_dim=128, num_ws=8)
    assert directions.shape == returned and directions.dtype == torch.float32
    assert torch.allclose(directions, torch.from_numpy(array).float().reshape(returned))


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.ones((3, 64)), "shape"),  # wrong w_dim
        (np.ones((2, 7, 128)), "shape"),  # wrong num_ws
        (np.ones((1, 2, 8, 128)), "shape"),  # wrong ndim
        (np.array([[np.nan] * 128]), "NaN"),
        (np.zeros((2, 128)), "all zeros"),
    ],
)
def test_load_directions_refuses_bad_arrays_naming_the_file(tmp_path: Path, array: np.ndarray, problem: str) -> None:
    path = tmp_path / "bad_directions.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=rf"bad_directions\.npy.*{problem}"):
        load_directions(path, w_dim=128, num_ws=8)


_unpickled: list[str] = []


def _record(tag: str) -> str:
    _unpickled.append(tag)
    return tag


class _Tripwire:
    """Unpickling this calls `_record`: it shows whether a loader ran pickle code."""

    def __reduce__(self) -> tuple:
        return (_record, ("unpickled",))


def test_load_directions_refuses_a_pickled_array_without_unpickling_it(tmp_path: Path) -> None:
    path = tmp_path / "pickled.npy"
    np.save(path, np.array([_Tripwire(), 1.0], dtype=object), allow_pickle=True)
    with pytest.raises(DirectionsError, match=r"pickled\.npy"):
        load_directions(path, w_dim=128, num_ws=8)
    assert _unpickled == []
    np.load(path, allow_pickle=True)  # the tripwire works: an unsafe load would have tripped it
    assert _unpickled == ["unpickled"]


def test_apply_direction_adds_a_w_direction_at_every_layer_and_a_per_layer_one_where_given(
    G: Generator, w_pivot: torch.Tensor
) -> None:
    ws = w_pivot[None].repeat(2, 1, 1)
    d = random_directions(G.w_dim, 1, seed=0)[0]
    assert torch.equal(apply_direction(ws, d, 0.0), ws)
    assert torch.allclose(apply_direction(ws, d, 2.0) - ws, 2.0 * d.expand_as(ws), atol=1e-5)

    per_layer = torch.zeros([G.num_ws, G.w_dim])
    per_layer[3] = d
    moved = (apply_direction(ws, per_layer, 2.0) - ws).norm(dim=2)  # [2, num_ws]
    assert torch.allclose(moved[:, 3], torch.full([2], 2.0), atol=1e-5)
    assert moved[:, [0, 1, 2, 4, 5, 6, 7]].abs().max() == 0

    with pytest.raises(ValueError, match="direction has shape"):
        apply_direction(ws, torch.ones(G.w_dim + 1), 1.0)


def test_an_edit_of_default_strength_changes_the_render(G: Generator, w_pivot: torch.Tensor) -> None:
    d = random_directions(G.w_dim, 1, seed=0)[0]
    ws = w_pivot[None]
    before = _render(G, ws)
    assert torch.equal(_render(G, apply_direction(ws, d, 0.0)), before)
    after = _render(G, apply_direction(ws, d, default_edit_strength(G)))
    assert (after - before).abs().mean() > 0.01


# ----------------------------------------------------------------------------------------------------
# Latents


def test_w_spread_is_the_rms_distance_from_w_avg_and_scales_with_w(G: Generator) -> None:
    z = torch.randn([500, G.z_dim], generator=torch.Generator().manual_seed(3))
    w = G.mapping(z)[:, 0]
    expected = (w - G.mapping.w_avg).norm(dim=1).square().mean().sqrt().item()
    assert w_spread(G, num_samples=500, seed=3) == pytest.approx(expected, rel=1e-5)
    assert default_edit_strength(G) == pytest.approx(0.5 * w_spread(G), rel=1e-6)

    # Scaling W (the last mapping layer is positively homogeneous, w_avg follows) scales the spread.
    scaled = copy.deepcopy(G)
    last = getattr(scaled.mapping, f"fc{scaled.mapping.num_layers - 1}")
    for t in (last.weight, last.bias, scaled.mapping.w_avg):
        t.mul_(3.0)
    assert w_spread(scaled) == pytest.approx(3.0 * w_spread(G), rel=1e-4)


def test_locality_latents_are_mapped_z_then_points_toward_mapped_z_from_the_pivot(
    G: Generator, w_pivot: torch.Tensor
) -> None:
    torch.manual_seed(1)
    ws = locality_latents(G, w_pivot, count=8, seed=5)
    torch.manual_seed(2)
    assert torch.equal(locality_latents(G, w_pivot, count=8, seed=5), ws)
    assert ws.shape == (8, G.num_ws, G.w_dim)
    assert not torch.allclose(locality_latents(G, w_pivot, count=8, seed=6), ws)

    w_z = G.mapping(torch.randn([8, G.z_dim], generator=torch.Generator().manual_seed(5)))
    assert torch.allclose(ws[:4], w_z[:4], atol=1e-6)
    alphas = torch.tensor([0.25, 0.5, 0.75, 1.0]).view(-1, 1, 1)
    assert torch.allclose(ws[4:], w_pivot + alphas * (w_z[4:] - w_pivot), atol=1e-4)


def test_regulariser_latents_are_fresh_each_call_and_a_fraction_of_the_way_to_mapped_z(
    G: Generator, w_pivot: torch.Tensor
) -> None:
    gen = torch.Generator().manual_seed(11)
    first = sample_regulariser_latents(G, w_pivot, 4, gen, alpha=0.3)
    second = sample_regulariser_latents(G, w_pivot, 4, gen, alpha=0.3)
    assert first.shape == (4, G.num_ws, G.w_dim) and not first.requires_grad
    assert not torch.allclose(first, second)

    replay = torch.Generator().manual_seed(11)
    w_z = G.mapping(torch.randn([4, G.z_dim], generator=replay))
    assert torch.allclose(first, w_pivot + 0.3 * (w_z - w_pivot), atol=1e-4)
    with pytest.raises(ValueError, match="alpha"):
        sample_regulariser_latents(G, w_pivot, 4, gen, alpha=30.0)  # PTI's absolute step is not a fraction


# ----------------------------------------------------------------------------------------------------
# Metrics: measure.measure_images of one image (K = 1, the definition) against the formulas computed here


def _measure(G: Generator, deltas: dict[str, torch.Tensor], w_pivot: torch.Tensor,
             directions: torch.Tensor | None = None, strength: float = 1.0) -> Measured:
    """measure_images of one image (a constant grey one) inverted to ``w_pivot``, G tuned by ``deltas``; the
    locality latents are the ``latents`` fixture's (8, seed 0)."""
    directions = random_directions(G.w_dim, 2, seed=0) if directions is None else directions
    image = torch.full([1, 3, G.img_resolution, G.img_resolution], 0.5)
    (measured,) = measure_images(G, image, w_pivot[None], [deltas], [deltas], directions=directions,
                                 strength=strength, preview_offset=torch.zeros(G.w_dim), locality_count=8, seed=0)
    return measured


def test_zero_deltas_change_nothing(G: Generator, w_pivot: torch.Tensor) -> None:
    """Zero deltas take the tuned path (renders with W + 0), unlike a method without tuning."""
    metrics = _measure(G, {LAYER: torch.zeros_like(G.get_parameter(LAYER))}, w_pivot, strength=4.0).metrics
    assert abs(metrics["locality"]) < 1e-6 and abs(metrics["edit_consistency"]) < 1e-6
    assert metrics["edit_accuracy"] is None                 # no factor directions and probe: not applicable


def test_locality_grows_with_the_size_of_a_weight_perturbation(
    G: Generator, w_pivot: torch.Tensor, bump: Callable[[float], dict[str, torch.Tensor]]
) -> None:
    values = [_measure(G, bump(size), w_pivot).metrics["locality"] for size in (0.1, 0.3, 1.0)]
    assert values[0] > 1e-4
    assert values[0] < values[1] < values[2]


def test_locality_is_the_mean_lpips_of_clamped_renders_of_the_locality_latents(
    G: Generator, w_pivot: torch.Tensor, latents: torch.Tensor, perturbed: Callable[[float], Generator],
    bump: Callable[[float], dict[str, torch.Tensor]]
) -> None:
    expected = lpips_distance(_render(perturbed(1.0), latents), _render(G, latents)).mean().item()
    assert expected > 1e-3
    assert _measure(G, bump(1.0), w_pivot).metrics["locality"] == pytest.approx(expected, rel=1e-4)


def test_edit_consistency_is_the_mean_extra_gap_an_edit_opens(
    G: Generator, w_pivot: torch.Tensor, perturbed: Callable[[float], Generator],
    bump: Callable[[float], dict[str, torch.Tensor]]
) -> None:
    tuned = perturbed(1.0)
    strength = default_edit_strength(G)
    # As many directions as G has layers: a [K, w_dim] tensor is K directions, never one per-layer one.
    directions = random_directions(G.w_dim, G.num_ws, seed=0)
    edited = w_pivot + strength * directions[:, None]  # [K, num_ws, w_dim]
    unedited = lpips_distance(_render(tuned, w_pivot[None]), _render(G, w_pivot[None]))
    gaps = lpips_distance(_render(tuned, edited), _render(G, edited)) - unedited
    assert gaps.abs().max() > 1e-3
    measured = _measure(G, bump(1.0), w_pivot, directions, strength).metrics["edit_consistency"]
    assert measured == pytest.approx(gaps.mean().item(), abs=1e-5)

    per_layer = directions[:1, None].expand(1, G.num_ws, G.w_dim)  # the first direction, given per layer
    measured = _measure(G, bump(1.0), w_pivot, per_layer, strength).metrics["edit_consistency"]
    assert measured == pytest.approx(gaps[0].item(), abs=1e-5)


def _factor_edits(G: Generator, linear_r2: list[float]) -> FactorEdits:
    """Seeded factor directions for G, one per entry of ``linear_r2``, named f0, f1, ..."""
    k = len(linear_r2)
    return FactorEdits(names=tuple(f"f{i}" for i in range(k)), directions=random_directions(G.w_dim, k, seed=3),
                       steps=torch.arange(1.0, k + 1), linear_r2=torch.tensor(linear_r2))


def _probe(G: Generator, names: list[str]) -> FactorProbe:
    """An untrained factor probe, seeded (its readings still change with the image)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return FactorProbe(names, resolution=G.img_resolution)


def test_edit_accuracy_is_not_applicable_without_factor_directions_and_a_probe(
    G: Generator, w_pivot: torch.Tensor, bump: Callable[[float], dict[str, torch.Tensor]]
) -> None:
    assert G.factor_edits is None and G.factor_probe is None
    assert _measure(G, bump(1.0), w_pivot).metrics["edit_accuracy"] is None
    with_directions = copy.deepcopy(G)
    with_directions.factor_edits = _factor_edits(G, [0.5, 0.9])
    assert _measure(with_directions, bump(1.0), w_pivot).metrics["edit_accuracy"] is None   # no probe
    with_probe = copy.deepcopy(G)
    with_probe.factor_probe = _probe(G, ["f0", "f1"])
    assert _measure(with_probe, bump(1.0), w_pivot).metrics["edit_accuracy"] is None        # no directions


def test_edit_accuracy_of_the_generator_itself_is_one(G: Generator, w_pivot: torch.Tensor) -> None:
    both = copy.deepcopy(G)
    both.factor_edits = _factor_edits(G, [0.5, 0.9])
    both.factor_probe = _probe(G, ["f0", "f1"])
    change = factor_changes(both, both.factor_probe, w_pivot, both.factor_edits)
    assert change.abs().min() > 1e-3        # every edit moves its factor: the ratios below are no 0 / 0
    measured = _measure(both, {LAYER: torch.zeros_like(G.get_parameter(LAYER))}, w_pivot)
    assert measured.metrics["edit_accuracy"] == pytest.approx(1.0, abs=1e-4)
    assert measured.edit_ratios == pytest.approx({"f0": 1.0, "f1": 1.0}, abs=1e-3)
    both.factor_probe = _probe(G, ["f1", "f0"])
    with pytest.raises(ValueError, match="same factors in the same order"):
        _measure(both, {LAYER: torch.zeros_like(G.get_parameter(LAYER))}, w_pivot)


def test_edit_accuracy_compares_each_factor_change_of_the_tuned_generator_with_the_original(
    G: Generator, w_pivot: torch.Tensor, bump: Callable[[float], dict[str, torch.Tensor]]
) -> None:
    both = copy.deepcopy(G)
    edits = both.factor_edits = _factor_edits(G, [0.5, 0.9])
    probe = both.factor_probe = _probe(G, ["f0", "f1"])
    before = factor_changes(both, probe, w_pivot, edits)                               # Δo_k
    after = factor_changes(apply_deltas(both, bump(1.0)), probe, w_pivot, edits)       # Δt_k
    expected = (1 - (after - before).abs() / before.abs()).clamp(0, 1).mean().item()
    assert expected < 0.99
    measured = _measure(both, bump(1.0), w_pivot)
    assert measured.metrics["edit_accuracy"] == pytest.approx(expected, abs=1e-4)
    assert measured.edit_ratios == pytest.approx({"f0": (after[0] / before[0]).item(),
                                                  "f1": (after[1] / before[1]).item()}, rel=1e-3)


def test_the_preview_edit_is_two_steps_of_the_most_linear_factor(G: Generator) -> None:
    direction = random_directions(G.w_dim, 1, seed=0)[0]
    assert torch.equal(preview_edit(G, direction, 0.7), 0.7 * direction)    # no factor directions: the first one
    with_directions = copy.deepcopy(G)
    edits = with_directions.factor_edits = _factor_edits(G, [0.5, 0.95, 0.9])
    torch.testing.assert_close(preview_edit(with_directions, direction, 0.7), 2 * edits.steps[1] * edits.directions[1])
