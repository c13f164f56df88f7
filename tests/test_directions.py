"""Edit direction specs (gani_core/directions.py): factor:NAME, pca:K and FILE.npy become latent offsets of
strength 1, on the layers asked for; every bad spec, layer range or strength is a one-line DirectionsError."""

from __future__ import annotations

import math
import os
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from gani_core.checkpoints import load_generator
from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.directions import (
    PCA_SAMPLES,
    EditDirection,
    compute_principal_directions,
    parse_direction,
    parse_directions,
    parse_layers,
    parse_strengths,
    pca_cache_path,
    principal_directions,
)
from gani_core.editing import DirectionsError
from gani_core.invert import preview_edit
from gani_core.measure import preview_edit_label
from gani_core.networks import Generator

SHA32 = resolve_checkpoint("builtin-random:32").sha256     # G's checkpoint (conftest: builtin-random:32)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh checkpoint cache for each test: the principal directions are computed there."""
    monkeypatch.setenv("GANI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def trained() -> Generator:
    """The built-in trained generator: it carries factor directions (x, y, size, rotation, hue, light)."""
    return load_generator("builtin")


def save(folder: Path, name: str, array: np.ndarray) -> str:
    np.save(folder / name, array)
    return str(folder / name)


def parse(spec: str, G: Generator, **options: object) -> EditDirection:
    return parse_direction(spec, G, SHA32, **options)


# ----------------------------------------------------------------------------------------------------
# factor:NAME


def test_factor_is_one_step_of_the_factor_the_previews_edit_by_two(trained: Generator) -> None:
    sha = resolve_checkpoint("builtin").sha256
    label = preview_edit_label(trained, 1.0, directions_given=False, seed=0)
    assert label == "edit: hue +2 steps"
    hue = parse_direction("factor:hue", trained, sha)
    assert (hue.spec, hue.name, hue.unit) == ("factor:hue", "factor-hue", "step")
    assert hue.offset.shape == (trained.num_ws, trained.w_dim) and hue.offset.dtype == torch.float32
    shown = preview_edit(trained, torch.zeros(trained.w_dim), 0.0)     # [w_dim]: +2 steps of hue at every layer
    assert torch.allclose(2 * hue.offset, shown.expand_as(hue.offset), atol=1e-6)
    k = trained.factor_edits.names.index("hue")
    assert hue.offset[0].norm().item() == pytest.approx(float(trained.factor_edits.steps[k]), rel=1e-5)


def test_factor_edit_at_strength_s_adds_s_steps_to_the_pivot(trained: Generator) -> None:
    size = parse_direction("factor:size", trained, resolve_checkpoint("builtin").sha256)
    w_p = trained.mapping(torch.randn([1, trained.z_dim], generator=torch.Generator().manual_seed(1)))[0]
    edits = trained.factor_edits
    k = edits.names.index("size")
    moved = ((w_p + 1.5 * size.offset) - w_p) @ edits.directions[k]     # [num_ws]: along the factor's direction
    assert torch.allclose(moved, torch.full([trained.num_ws], 1.5 * float(edits.steps[k])), atol=1e-5)


def test_unknown_factor_lists_the_generators_factors(trained: Generator) -> None:
    with pytest.raises(DirectionsError, match=r"^factor:smile: no such factor; this generator has "
                                              r"x, y, size, rotation, hue, light$"):
        parse_direction("factor:smile", trained, resolve_checkpoint("builtin").sha256)


def test_factor_of_a_generator_without_factors_suggests_pca_or_a_file(G: Generator) -> None:
    assert G.factor_edits is None
    with pytest.raises(DirectionsError, match=r"factor:hue: this generator carries no factor directions; "
                                              r"use pca:K .* or a direction saved in a \.npy file"):
        parse("factor:hue", G)


# ----------------------------------------------------------------------------------------------------
# pca:K


def test_principal_directions_are_orthonormal_by_decreasing_variance(G: Generator) -> None:
    stds, components = principal_directions(G, SHA32)
    assert stds.shape == (G.w_dim,) and components.shape == (G.w_dim, G.w_dim)
    assert np.allclose(components @ components.T, np.eye(G.w_dim), atol=1e-5)
    assert (np.diff(stds) <= 0).all() and stds[0] > 2 * stds[-1] > 0
    largest = np.abs(components).argmax(axis=1)
    assert (components[np.arange(G.w_dim), largest] > 0).all()      # the sign convention


def test_pca_strength_one_is_one_standard_deviation_of_w_along_the_component(G: Generator) -> None:
    stds, components = principal_directions(G, SHA32)
    first = parse("pca:0", G)
    assert (first.name, first.unit) == ("pca-0", "sigma")
    assert torch.allclose(first.offset, torch.from_numpy(stds[0] * components[0]).expand_as(first.offset))
    # Latents the components were not computed from spread along it by one such step.
    w = G.mapping(torch.randn([4000, G.z_dim], generator=torch.Generator().manual_seed(99)))[:, 0]
    unit = first.offset[0] / first.offset[0].norm()
    assert float((w @ unit).std()) == pytest.approx(float(first.offset[0].norm()), rel=0.05)
    # ... and more than along any other direction: a random one, or the last component.
    random = torch.randn(G.w_dim, generator=torch.Generator().manual_seed(5))
    assert float((w @ (random / random.norm())).std()) < 0.8 * float(stds[0])
    assert parse(f"pca:{G.w_dim - 1}", G).offset[0].norm() < first.offset[0].norm() / 2


def test_principal_directions_are_computed_once_and_the_cache_reused(G: Generator) -> None:
    path = pca_cache_path(SHA32)
    assert path.name == f"{SHA32}-pca-{PCA_SAMPLES}.npy" and not path.exists()
    first = parse("pca:3", G)
    written = path.stat()
    second = parse("pca:3", G)
    assert torch.equal(first.offset, second.offset)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)     # not written again


def test_a_cached_result_is_what_pca_uses(G: Generator) -> None:
    # A valid cache file of made-up directions is used as they are: the cache is read, not recomputed.
    made_up = np.zeros([G.w_dim + 1, G.w_dim], dtype=np.float32)
    made_up[0] = np.arange(G.w_dim, 0, -1)                 # stds
    made_up[1:] = np.eye(G.w_dim)[::-1]                    # component k = unit vector w_dim - 1 - k
    pca_cache_path(SHA32).parent.mkdir(parents=True)
    np.save(pca_cache_path(SHA32), made_up)
    offset = parse("pca:2", G).offset
    expected = torch.zeros(G.w_dim)
    expected[G.w_dim - 3] = G.w_dim - 2
    assert torch.equal(offset, expected.expand_as(offset))


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY garbage", b"PK\x03\x04 not a zip", "wrong shape"])
def test_a_corrupt_cache_is_computed_again(G: Generator, content: bytes | str) -> None:
    path = pca_cache_path(SHA32)
    path.parent.mkdir(parents=True)
    if content == "wrong shape":
        np.save(path, np.ones([3, G.w_dim], dtype=np.float32))
    else:
        path.write_bytes(content)
    offset = parse("pca:0", G).offset
    stds, components = compute_principal_directions(G)
    assert torch.allclose(offset[0], torch.from_numpy(stds[0] * components[0]))
    assert np.load(path).shape == (G.w_dim + 1, G.w_dim)                # rewritten
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_principal_directions_are_deterministic(G: Generator, cache: Path) -> None:
    a_stds, a_components = compute_principal_directions(G)
    b_stds, b_components = compute_principal_directions(G)
    assert np.array_equal(a_stds, b_stds) and np.array_equal(a_components, b_components)
    stds, components = principal_directions(G, SHA32)               # computed, then cached
    assert np.array_equal(stds, a_stds) and np.array_equal(components, a_components)


@pytest.mark.parametrize(("spec", "message"), [
    ("pca:128", r"^pca:128: out of range; W has 128 principal directions, pca:0 to pca:127$"),
    ("pca:-1", r"^pca:-1: out of range; W has 128 principal directions"),
    ("pca:x", r"^pca:x: K must be an integer"),
    ("pca:1.5", r"^pca:1\.5: K must be an integer"),
    ("pca:", r"^pca:: K must be an integer"),
])
def test_pca_index_must_be_a_component_of_w(G: Generator, spec: str, message: str, cache: Path) -> None:
    with pytest.raises(DirectionsError, match=message):
        parse(spec, G)
    assert not cache.exists()                                        # refused before anything is computed


# ----------------------------------------------------------------------------------------------------
# FILE.npy


@pytest.mark.parametrize("shape", [(128,), (1, 128)])
def test_a_w_direction_is_normalised_and_added_at_every_layer(G: Generator, tmp_path: Path, shape: tuple) -> None:
    array = np.random.default_rng(0).standard_normal(shape) * 7      # float64, length about 80
    smile = parse(save(tmp_path, "smile.npy", array), G)
    assert (smile.name, smile.unit) == ("smile", "W unit")
    assert smile.offset.shape == (8, 128) and smile.offset.dtype == torch.float32
    unit = torch.from_numpy(array.reshape(128) / np.linalg.norm(array)).float()
    assert torch.allclose(smile.offset, unit.expand(8, 128), atol=1e-6)
    assert torch.allclose(smile.offset.norm(dim=1), torch.ones(8))


@pytest.mark.parametrize("shape", [(8, 128), (1, 8, 128)])
def test_a_wplus_direction_is_normalised_over_all_its_elements(G: Generator, tmp_path: Path, shape: tuple) -> None:
    array = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    offset = parse(save(tmp_path, "per_layer.npy", array), G).offset
    assert float(offset.norm()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(offset, torch.from_numpy(array.reshape(8, 128) / np.linalg.norm(array)), atol=1e-6)


def test_raw_keeps_the_vector_as_stored(G: Generator, tmp_path: Path) -> None:
    array = np.full(128, 0.5, dtype=np.float32)
    boundary = parse(save(tmp_path, "boundary.npy", array[None]), G, raw=True)
    assert boundary.unit == "raw"
    assert torch.equal(boundary.offset, torch.full([8, 128], 0.5))


def test_a_direction_is_read_from_a_uri(G: Generator) -> None:
    array = np.arange(1, 129, dtype=np.float32)
    with fsspec.open("memory://gani-test/directions/age.npy", "wb") as f:
        np.save(f, array)
    age = parse("memory://gani-test/directions/age.npy", G)
    assert age.name == "age"
    assert torch.allclose(age.offset[5], torch.from_numpy(array / np.linalg.norm(array)))


@pytest.mark.parametrize(("array", "message"), [
    (np.ones(64), r"bad\.npy: a direction of shape \[64\]; expected one direction, \[128\] or \[1, 128\] in W, "
                  r"\[8, 128\] or \[1, 8, 128\] in W\+ \(this generator: num_ws 8, w_dim 128\)"),
    (np.ones((3, 128)), r"bad\.npy: a direction of shape \[3, 128\]; expected one direction"),
    (np.ones((2, 8, 128)), r"bad\.npy: a direction of shape \[2, 8, 128\]; expected one direction"),
    (np.ones((1, 10, 128)), r"bad\.npy: a direction of shape \[1, 10, 128\]; .*num_ws 8, w_dim 128"),
    (np.array([np.nan] * 128), r"bad\.npy: the direction holds NaN or infinite values"),
    (np.array([np.inf] + [0.0] * 127), r"bad\.npy: the direction holds NaN or infinite values"),
    (np.array([1e39] * 128), r"bad\.npy: the direction holds NaN or infinite values \(as float32\)"),
    (np.zeros(128), r"bad\.npy: the direction is all zeros and would edit nothing"),
    (np.array(["a"] * 128), r"bad\.npy: directions must be real numbers, got dtype <U1"),
])
def test_bad_arrays_are_refused_saying_what_is_expected(G: Generator, tmp_path: Path, array: np.ndarray,
                                                         message: str) -> None:
    with pytest.raises(DirectionsError, match=message):
        parse(save(tmp_path, "bad.npy", array), G)


def test_missing_and_non_npy_files_are_refused(G: Generator, tmp_path: Path) -> None:
    with pytest.raises(DirectionsError, match=r"^directions file not found: .*nowhere\.npy$"):
        parse(str(tmp_path / "nowhere.npy"), G)
    with pytest.raises(DirectionsError, match=r"^directions file not found: memory://gani-test/nowhere\.npy$"):
        parse("memory://gani-test/nowhere.npy", G)
    (tmp_path / "text.npy").write_text("0.1 0.2 0.3")
    with pytest.raises(DirectionsError, match=r"text\.npy: not a \.npy file \(it starts with b'0\.1 0\.'\)"):
        parse(str(tmp_path / "text.npy"), G)
    (tmp_path / "folder.npy").mkdir()
    with pytest.raises(DirectionsError, match=r"folder\.npy is not a file"):
        parse(str(tmp_path / "folder.npy"), G)
    np.savez(tmp_path / "two.npz", a=np.ones(128))
    (tmp_path / "two.npz").rename(tmp_path / "two.npy")
    with pytest.raises(DirectionsError, match=r"two\.npy: an \.npz archive \(\['a'\]\)"):
        parse(str(tmp_path / "two.npy"), G)


_unpickled: list[str] = []


def _record(tag: str) -> str:
    _unpickled.append(tag)
    return tag


class _Tripwire:
    """Unpickling this calls `_record`: it shows whether a loader ran pickle code."""

    def __reduce__(self) -> tuple:
        return (_record, ("unpickled",))


def test_a_pickled_object_array_is_refused_without_unpickling_it(G: Generator, tmp_path: Path) -> None:
    np.save(tmp_path / "pickled.npy", np.array([_Tripwire()] * 128, dtype=object), allow_pickle=True)
    with pytest.raises(DirectionsError, match=r"pickled\.npy: not a plain \.npy array .*pickled array\), never loaded"):
        parse(str(tmp_path / "pickled.npy"), G)
    assert _unpickled == []
    np.load(tmp_path / "pickled.npy", allow_pickle=True)       # the tripwire works: an unsafe load trips it
    assert _unpickled == ["unpickled"]                              # one object, pickled once


# ----------------------------------------------------------------------------------------------------
# Spec forms, names, layers, strengths


@pytest.mark.parametrize("spec", ["smile", "smile.pt", "hue", "pca", "FACTOR:hue", "random:3", ""])
def test_a_spec_of_no_known_form_names_the_three_forms(G: Generator, spec: str) -> None:
    with pytest.raises(DirectionsError, match=rf"^{spec!r} is not a direction: expected factor:NAME .*, pca:K .* "
                                              r"or FILE\.npy \(a direction saved with numpy\.save, a path or URI\)$"):
        parse(spec, G)


def test_one_name_one_direction_within_a_list(G: Generator, tmp_path: Path) -> None:
    """Two files of one stem would be one name (in file names and the resume rule): refused, whichever order; names
    that differ stay."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        save(tmp_path / folder, "smile.npy", np.ones(128))
    save(tmp_path, "my smile!.npy", np.ones(128))
    specs = [str(tmp_path / "a/smile.npy"), "pca:0", str(tmp_path / "my smile!.npy")]
    assert [d.name for d in parse_directions(specs, G, SHA32)] == ["smile", "pca-0", "my-smile"]
    for pair in ([specs[0], str(tmp_path / "b/smile.npy")], [str(tmp_path / "b/smile.npy"), specs[0]]):
        with pytest.raises(DirectionsError, match=f"^{pair[0]} and {pair[1]} would both be the direction 'smile': "
                                                  "rename one of the files$"):
            parse_directions(pair, G, SHA32)


def test_a_local_file_is_recorded_by_its_absolute_path(G: Generator, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """As a checkpoint's: the same file named by another relative path (from another folder) is the same spec, and
    given twice that way it is one direction; a URI stays as given."""
    (tmp_path / "d").mkdir()
    absolute = save(tmp_path / "d", "smile.npy", np.ones(128))
    monkeypatch.chdir(tmp_path)
    assert parse("d/smile.npy", G).spec == absolute
    directions = parse_directions(["d/smile.npy", "./d/smile.npy", "pca:0", absolute, "d/../d/smile.npy"], G, SHA32)
    assert [(d.spec, d.name) for d in directions] == [(absolute, "smile"), ("pca:0", "pca-0")]
    monkeypatch.chdir(tmp_path / "d")
    assert parse("smile.npy", G).spec == absolute
    with fsspec.open("memory://gani-test/directions/smile.npy", "wb") as f:
        np.save(f, np.ones(128))
    assert parse("memory://gani-test/directions/smile.npy", G).spec == "memory://gani-test/directions/smile.npy"


def test_a_spec_given_twice_is_parsed_once(G: Generator, tmp_path: Path) -> None:
    smile = save(tmp_path, "smile.npy", np.ones(128))
    directions = parse_directions(["pca:0", smile, "pca:0", f" {smile} ", "pca:1", " pca:0"], G, SHA32)
    assert [(d.spec, d.name) for d in directions] == [("pca:0", "pca-0"), (smile, "smile"), ("pca:1", "pca-1")]


def test_raw_without_a_file_is_refused_and_accepted_with_one(G: Generator, trained: Generator,
                                                           tmp_path: Path) -> None:
    with pytest.raises(DirectionsError, match=r"^--raw applies to \.npy directions only; factor:hue is in steps, "
                                              r"pca:0 in sigmas$"):
        parse_directions(["factor:hue", "pca:0"], trained, SHA32, raw=True)
    with pytest.raises(DirectionsError, match=r"^--raw applies to \.npy directions only; pca:3 is in sigmas$"):
        parse_directions(["pca:3"], G, SHA32, raw=True)
    smile = save(tmp_path, "smile.npy", 2 * np.ones(128))
    directions = parse_directions(["pca:0", smile], G, SHA32, raw=True)
    assert [d.unit for d in directions] == ["sigma", "raw"]
    assert torch.allclose(directions[1].offset, torch.full((8, 128), 2.0))


@pytest.mark.parametrize(("text", "layers"), [
    (None, None), ("0-5", range(0, 6)), ("3", range(3, 4)), ("4-", range(4, 8)), (" 2 - 7 ", range(2, 8)),
    ("7", range(7, 8)),
])
def test_parse_layers(text: str | None, layers: range | None) -> None:
    assert parse_layers(text, num_ws=8) == layers


@pytest.mark.parametrize(("text", "message"), [
    ("0-8", r"^layers 0-8: beyond this generator's style inputs \(num_ws 8: 0 to 7\)$"),
    ("8", r"^layers 8: beyond this generator's style inputs \(num_ws 8: 0 to 7\)$"),
    ("9-", r"^layers 9-: beyond this generator's style inputs \(num_ws 8: 0 to 7\)$"),
    ("5-3", r"^layers 5-3: no style inputs \(the first is after the last\); expected A-B with A <= B$"),
    ("-3", r"^layers '-3': expected A-B, A or A- \(.*num_ws 8: 0 to 7\)$"),
    ("coarse", r"^layers 'coarse': expected A-B, A or A-"),
    ("", r"^layers '': expected A-B, A or A-"),
])
def test_bad_layers_are_refused_naming_num_ws(text: str, message: str) -> None:
    with pytest.raises(DirectionsError, match=message):
        parse_layers(text, num_ws=8)


def test_layers_edit_those_style_inputs_only(G: Generator, tmp_path: Path) -> None:
    everywhere = parse("pca:1", G).offset
    coarse = parse("pca:1", G, layers=parse_layers("0-2", G.num_ws)).offset
    assert torch.equal(coarse[:3], everywhere[:3]) and coarse[:3].abs().sum() > 0
    assert not coarse[3:].any()
    # A file is normalised before its rows are chosen: a W direction keeps length 1 on each layer edited.
    path = save(tmp_path, "smile.npy", np.ones(128))
    fine = parse(path, G, layers=range(6, 8)).offset
    assert not fine[:6].any() and torch.allclose(fine[6:].norm(dim=1), torch.ones(2))


def test_an_edit_of_some_layers_is_named_with_them(G: Generator, tmp_path: Path) -> None:
    smile = save(tmp_path, "my smile.npy", np.ones(128))
    every = parse_directions([smile, "pca:1"], G, SHA32)
    coarse = parse_directions([smile, "pca:1"], G, SHA32, layers=parse_layers("0-2", G.num_ws))
    assert [(d.name, d.layers) for d in every] == [("my-smile", None), ("pca-1", None)]
    assert [(d.name, d.layers) for d in coarse] == [("my-smile.L0-2", "0-2"), ("pca-1.L0-2", "0-2")]
    one, rest = parse(smile, G, layers=parse_layers("5", G.num_ws)), parse("pca:1", G, layers=parse_layers("4-", 8))
    assert (one.name, one.layers, rest.name, rest.layers) == ("my-smile.L5", "5", "pca-1.L4-7", "4-7")
    # Every style input is no restriction: the edit of all layers, under its name.
    whole = parse("pca:1", G, layers=parse_layers("0-", G.num_ws))
    assert (whole.name, whole.layers) == ("pca-1", None) and torch.equal(whole.offset, every[1].offset)


def test_a_direction_zero_on_the_layers_edited_is_refused(G: Generator, tmp_path: Path) -> None:
    array = np.zeros((8, 128))
    array[:2] = 1
    with pytest.raises(DirectionsError, match=r"coarse\.npy: the direction is zero at layers 4-7 and would edit"):
        parse(save(tmp_path, "coarse.npy", array), G, layers=range(4, 8))


def test_layers_beyond_num_ws_are_refused_for_any_spec(G: Generator) -> None:
    with pytest.raises(DirectionsError, match=r"^layers 4-9: beyond this generator's style inputs \(num_ws 8"):
        parse("pca:0", G, layers=range(4, 10))


def test_parse_strengths() -> None:
    assert parse_strengths(["-2", "0", "1.5", " 3 ", "1e-1"]) == [-2.0, 0.0, 0.1, 1.5, 3.0]


def test_strengths_are_a_set_in_ascending_order() -> None:
    """The order given changes neither the strip (most negative first) nor the edit key; a repeat adds nothing."""
    assert parse_strengths(["1", "-1"]) == parse_strengths(["-1", "1", "1.0", "-1"]) == [-1.0, 1.0]
    zero = parse_strengths(["-0", "0", "0.0"])
    assert zero == [0.0] and math.copysign(1.0, zero[0]) == 1.0       # -0 is 0 (one column, one key)
    assert parse_strengths(["1000", "-1000"]) == [-1000.0, 1000.0]


@pytest.mark.parametrize("value", ["two", "nan", "inf", "-inf", "", "1,5", "1e999"])
def test_strengths_must_be_finite_numbers(value: str) -> None:
    with pytest.raises(DirectionsError, match=rf"^strength {value!r} is not a finite number: expected numbers"):
        parse_strengths(["1", value])


@pytest.mark.parametrize("value", ["1e300", "-1e300", "1000.5", "-1001"])
def test_strengths_beyond_a_thousand_are_refused(value: str) -> None:
    """1e300 is finite, but its edit overflows float32: a black strip of NaN metrics, which replaced a good edit."""
    with pytest.raises(DirectionsError, match=rf"^strength {value!r} is beyond ±1000: an edit that far leaves"):
        parse_strengths(["1", value])


def test_no_strengths_is_an_error() -> None:
    with pytest.raises(DirectionsError, match=r"^no edit strengths given"):
        parse_strengths([])


def test_directions_error_is_a_value_error_of_one_line(G: Generator, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as raised:
        parse(save(tmp_path, "bad.npy", np.ones((3, 3))), G)
    assert isinstance(raised.value, DirectionsError) and "\n" not in str(raised.value)
    assert os.fspath(tmp_path) in str(raised.value)
