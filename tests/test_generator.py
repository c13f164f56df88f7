"""The generator renders what the official implementations render, and each option does what it says."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gani_core import GeneratorConfig, load_generator
from gani_core.factors import FactorProbe
from gani_core.networks import Generator

from .conftest import FIXTURES

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def nvlabs():
    return load_generator(FIXTURES / "nvlabs_32px.pkl"), np.load(FIXTURES / "nvlabs_32px.npz")


@pytest.fixture(scope="module")
def rosinality():
    return load_generator(FIXTURES / "rosinality_32px.pt"), np.load(FIXTURES / "rosinality_32px.npz")


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


@pytest.mark.parametrize("psi,key", [(1.0, "ws_psi1"), (0.7, "ws_psi07")])
def test_nvlabs_mapping_matches_official(nvlabs, psi, key):
    G, ref = nvlabs
    with torch.no_grad():
        ws = G.mapping(t(ref["z"]), None, truncation_psi=psi)
    assert ws.shape == (4, G.num_ws, G.w_dim) == (4, int(ref["num_ws"]), 64)
    torch.testing.assert_close(ws, t(ref[key]), **TOL)


@pytest.mark.parametrize("ws_key,img_key,noise_mode", [
    ("ws_psi1", "img_psi1", "const"),
    ("ws_psi07", "img_psi07", "const"),
    ("ws_plus", "img_plus", "const"),
    ("ws_psi1", "img_noise_none", "none"),
])
def test_nvlabs_synthesis_matches_official(nvlabs, ws_key, img_key, noise_mode):
    G, ref = nvlabs
    with torch.no_grad():
        img = G.synthesis(t(ref[ws_key]), noise_mode=noise_mode)
    assert img.shape == (4, 3, 32, 32)
    torch.testing.assert_close(img, t(ref[img_key]), **TOL)


def test_rosinality_renders_match_official(rosinality):
    G, ref = rosinality
    z = t(ref["z"])
    with torch.no_grad():
        torch.testing.assert_close(G.mapping(z)[:, 0], t(ref["w"]), **TOL)
        w = t(ref["w"]).unsqueeze(1).repeat(1, G.num_ws, 1)
        torch.testing.assert_close(G.synthesis(w), t(ref["img_w"]), **TOL)
        torch.testing.assert_close(G.synthesis(t(ref["wplus"])), t(ref["img_wplus"]), **TOL)
        torch.testing.assert_close(G(z), t(ref["img_z"]), **TOL)
        torch.testing.assert_close(G(z, truncation_psi=0.7), t(ref["img_trunc07"]), **TOL)


def test_noise_modes_differ_and_const_is_deterministic(nvlabs):
    G, ref = nvlabs
    ws = t(ref["ws_psi1"])
    with torch.no_grad():
        const = G.synthesis(ws, noise_mode="const")
        none = G.synthesis(ws, noise_mode="none")
        torch.manual_seed(0)
        rand1 = G.synthesis(ws, noise_mode="random")
        torch.manual_seed(0)
        rand2 = G.synthesis(ws, noise_mode="random")
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), const, atol=0, rtol=0)
    torch.testing.assert_close(rand1, rand2, atol=0, rtol=0)
    assert (const - none).abs().max() > 1e-2
    assert (const - rand1).abs().max() > 1e-2
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="fixed")


def test_truncation_psi_zero_gives_w_avg_and_cutoff_limits_it(nvlabs):
    G, _ = nvlabs
    z = torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(1))
    ws = G.mapping(z, truncation_psi=0.0)
    torch.testing.assert_close(ws, G.mapping.w_avg.expand_as(ws))
    cut = G.mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], G.mapping.w_avg.expand(3, 2, -1))
    torch.testing.assert_close(cut[:, 2:], G.mapping(z)[:, 2:])


def test_wrong_latent_shape_is_a_clear_error(nvlabs):
    G, _ = nvlabs
    with pytest.raises(ValueError, match=r"ws has shape \[2, 7, 64\], expected \[N, 8, 64\]"):
        G.synthesis(torch.zeros(2, 7, 64))
    with pytest.raises(ValueError, match="z has shape"):
        G.mapping(torch.zeros(2, 65))


@pytest.mark.parametrize("res", [4, 8, 32, 128])
def test_any_power_of_two_resolution(res):
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, img_resolution=res, mapping_layers=2,
                                  channel_base=256, channel_max=16)).eval()
    assert G.num_ws == 2 * int(np.log2(res)) - 2
    with torch.no_grad():
        img = G(torch.randn(2, 16))
    assert img.shape == (2, 3, res, res)
    assert torch.isfinite(img).all()


@pytest.mark.parametrize("res", [0, 3, 48, 2048])
def test_invalid_resolution_is_refused(res):
    with pytest.raises(ValueError, match="power of two"):
        GeneratorConfig(img_resolution=res)


def small_config(**kw) -> GeneratorConfig:
    base = dict(z_dim=32, w_dim=32, img_resolution=32, mapping_layers=2, channel_base=512, channel_max=32)
    return GeneratorConfig(**{**base, **kw})


def test_fp16_layers_compute_in_fp32_unless_asked():
    torch.manual_seed(0)
    G = Generator(small_config(num_fp16_res=2)).eval()
    ref = Generator(small_config()).eval()
    ref.load_state_dict(G.state_dict())
    ws = G.mapping(torch.randn(2, 32))
    with torch.no_grad():
        torch.testing.assert_close(G.synthesis(ws), ref.synthesis(ws), atol=0, rtol=0)
        half = G.synthesis(ws, force_fp32=False)
    assert half.dtype == torch.float32
    diff = (half - ref.synthesis(ws)).abs().max().item()
    assert 0 < diff < 0.05, diff  # fp16 rounding, not a different network


def test_conv_clamp_bounds_each_layer_output():
    torch.manual_seed(0)
    G = Generator(small_config(conv_clamp=0.05)).eval()
    free = Generator(small_config()).eval()
    free.load_state_dict(G.state_dict())
    outputs = []
    G.synthesis.b16.conv1.register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad():
        ws = G.mapping(torch.randn(2, 32))
        clamped = G.synthesis(ws)
    assert outputs[0].abs().max() <= 0.05 + 1e-7
    assert (clamped - free.synthesis(ws)).abs().max() > 1e-2


def test_conditional_mapping_needs_labels():
    G = Generator(small_config(c_dim=5)).eval()
    z = torch.randn(2, 32)
    c = torch.nn.functional.one_hot(torch.tensor([0, 3]), 5).float()
    ws = G.mapping(z, c)
    assert ws.shape == (2, G.num_ws, 32)
    assert (ws - G.mapping(z, c.flip(0))).abs().max() > 0
    with pytest.raises(ValueError, match="conditional"):
        G.mapping(z)


def test_gradients_reach_latents_and_every_tunable_weight():
    G = load_generator("builtin-random:32")
    ws = G.mapping.w_avg.expand(1, G.num_ws, -1).clone().requires_grad_(True)
    for p in G.tunable_layers().values():
        p.requires_grad_(True)
    G.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.tunable_layers().values())


def test_tunable_layers_are_the_conv_and_torgb_weights():
    G = load_generator("builtin-random:32")
    names = sorted(G.tunable_layers())
    # 32 px: b4 has conv1, b8..b32 have conv0 and conv1; every block has a ToRGB.
    assert len(names) == 1 + 2 * 3 + 4
    assert "synthesis.b4.conv1.weight" in names and "synthesis.b32.torgb.weight" in names
    assert not any("affine" in n or "mapping" in n for n in names)


def test_a_factor_probe_is_carried_beside_the_weights_not_in_them():
    G = load_generator("builtin-random:16")
    weights = G.state_dict().keys()
    G.factor_probe = FactorProbe(["x", "y"], resolution=16)
    assert G.state_dict().keys() == weights and dict(G.named_children()).keys() == {"synthesis", "mapping"}
    assert G.factor_probe.factor_names == ("x", "y")
    assert copy.deepcopy(G).factor_probe is not G.factor_probe      # a copied (e.g. tuned) generator has its own
