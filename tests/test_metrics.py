"""Metric definitions (method.md, "Metrics"): values checked by hand and against pytorch_msssim."""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

from gani_core import metrics
from gani_core.metric_registry import names


def _distortions(images: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "noise": (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1),
        "shift": torch.roll(images, 3, dims=3),
        "darker": images * 0.8,
        "other photo": torch.roll(images, 1, dims=0),
    }


def test_ms_ssim_equals_pytorch_msssim_on_real_photos(example_photos: torch.Tensor) -> None:
    for name, distorted in _distortions(example_photos).items():
        ours = metrics.ms_ssim(example_photos, distorted)
        reference = pytorch_msssim.ms_ssim(example_photos, distorted, data_range=1.0, size_average=False)
        assert torch.allclose(ours, reference, atol=1e-5, rtol=0), name


def test_ms_ssim_equals_pytorch_msssim_at_odd_sizes_down_to_161_px(example_photos: torch.Tensor) -> None:
    # Odd sizes take the padded average-pooling path at every scale.
    for size in (161, 199):
        a = F.interpolate(example_photos[:2], size=size, mode="area")
        b = F.interpolate(example_photos[2:4], size=size, mode="area")
        reference = pytorch_msssim.ms_ssim(a, b, data_range=1.0, size_average=False)
        assert torch.allclose(metrics.ms_ssim(a, b), reference, atol=1e-5, rtol=0)


def test_scales_used_for_small_images() -> None:
    assert [metrics.ms_ssim_scales(s) for s in (10, 11, 20, 21, 32, 64, 128, 160, 161, 1024)] == [
        0, 1, 1, 2, 2, 3, 4, 4, 5, 5,
    ]  # fmt: skip


def test_ms_ssim_at_64_px_uses_3_scales_with_renormalised_weights(
    example_photos: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "_sizes_warned", set())
    a = F.interpolate(example_photos, size=64, mode="area")
    b = _distortions(a)["noise"]
    with pytest.warns(UserWarning, match="64 px uses 3 of 5 scales"):
        ours = metrics.ms_ssim(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call at the same size is silent
        metrics.ms_ssim(a, b)

    # The same three scales assembled from pytorch_msssim's single-scale SSIM.
    window = _fspecial_gauss_1d(11, 1.5).repeat(3, 1, 1, 1)
    weights = torch.tensor(metrics.MS_SSIM_WEIGHTS[:3])
    weights = weights / weights.sum()
    x, y, factors = a, b, []
    for scale in range(3):
        ssim_c, cs_c = _ssim(x, y, data_range=1.0, win=window, size_average=False)
        factors.append(torch.relu(cs_c if scale < 2 else ssim_c) ** weights[scale])
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    expected = (factors[0] * factors[1] * factors[2]).mean(1)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert torch.all((ours > 0.3) & (ours < 1))


def test_ms_ssim_with_one_scale_is_ssim(example_photos: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_sizes_warned", {16})
    a = F.interpolate(example_photos, size=16, mode="area")
    b = _distortions(a)["noise"]
    reference = pytorch_msssim.ssim(a, b, data_range=1.0, size_average=False, nonnegative_ssim=True)
    assert torch.allclose(metrics.ms_ssim(a, b), reference, atol=1e-6)


def test_ms_ssim_refuses_images_smaller_than_the_window() -> None:
    with pytest.raises(ValueError, match="larger than 10 px"):
        metrics.ms_ssim(torch.zeros(1, 3, 10, 10), torch.zeros(1, 3, 10, 10))


def test_mse_and_psnr_by_hand() -> None:
    a = torch.zeros(2, 3, 8, 8)
    b = torch.zeros(2, 3, 8, 8)
    b[0] += 0.1  # every value off by 0.1: mse 0.01, psnr 20 dB
    b[1, :, :4] = 0.5  # half the values off by 0.5: mse 0.125, psnr 10 log10(8)
    assert metrics.mse(a, b).tolist() == pytest.approx([0.01, 0.125], abs=1e-7)
    assert metrics.psnr(a, b).tolist() == pytest.approx([20.0, 10 * math.log10(8)], abs=1e-4)


def test_identical_images(example_photos: torch.Tensor) -> None:
    rows = metrics.image_metrics(example_photos[:2], example_photos[:2])
    for row in rows:
        assert row["mse"] == 0
        assert row["psnr"] == math.inf
        assert row["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
        assert row["lpips"] == 0
        assert row["lpips_vgg"] == 0


def test_image_metrics_rows_hold_every_metric(example_photos: torch.Tensor) -> None:
    a, b = example_photos[:2], _distortions(example_photos[:2])["noise"]
    rows = metrics.image_metrics(a, b, device="cpu")
    assert len(rows) == 2
    assert all(tuple(row) == names("image") for row in rows)
    assert names("image") == ("mse", "psnr", "ms_ssim", "lpips", "lpips_vgg")
    assert [row["psnr"] for row in rows] == pytest.approx(metrics.psnr(a, b).tolist(), abs=1e-5)
    assert [row["lpips"] for row in rows] == pytest.approx(metrics.lpips(a, b).tolist(), abs=1e-6)
    for row in rows:
        assert all(isinstance(v, float) for v in row.values())
        assert 0 < row["mse"] < 0.01 and 20 < row["psnr"] < 40
        assert 0.5 < row["ms_ssim"] < 1 and 0 < row["lpips"] < 1 and 0 < row["lpips_vgg"] < 1


def test_lpips_metrics_take_unit_range_images(example_photos: torch.Tensor) -> None:
    from gani_core.lpips import lpips_distance

    a, b = example_photos[:2], example_photos[2:4]
    assert torch.allclose(metrics.lpips(a, b), lpips_distance(a * 2 - 1, b * 2 - 1, "alex"))


def test_lpips_note_only_under_64_px_and_beside_the_ms_ssim_note() -> None:
    note = metrics.lpips_note(32)
    assert note.startswith("lpips at 32 px: ") and "0.027 at 32 px" in note and "mse/psnr" in note
    assert "scales" not in note and "\n" not in note     # one line; the ms_ssim-note filters stay one line
    assert metrics.lpips_note(63) is not None and metrics.lpips_note(64) is None and metrics.lpips_note(256) is None
    assert metrics.metric_notes(32) == [metrics.ms_ssim_note(32), note]
    assert metrics.metric_notes(64) == [metrics.ms_ssim_note(64)] and metrics.metric_notes(256) == []


def test_lpips_barely_sees_pixel_noise_at_32_px() -> None:
    """The figures of `lpips_note` (4 of its 16 images): the same Gaussian pixel noise (sigma 0.03, psnr 30 dB) on
    shapes images scores about 0.03 at 32 px and about 0.5 at 256 px, where psnr is the same."""
    from gani_core.shapes.domain import sample_images

    scores, psnrs = {}, {}
    for size in (32, 256):
        images = (sample_images(4, size, torch.Generator().manual_seed(0))[0] + 1) / 2
        noisy = (images + 0.03 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        scores[size], psnrs[size] = metrics.lpips(images, noisy).mean(), metrics.psnr(images, noisy).mean()
    assert abs(psnrs[32] - psnrs[256]) < 0.5
    assert scores[32] < 0.05 and scores[256] > 0.3 and scores[256] > 8 * scores[32]


def test_to_unit_clamps_renders_then_maps_to_unit_range() -> None:
    render = torch.tensor([-7.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    assert metrics.to_unit(render).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def test_finite_or_none() -> None:
    assert metrics.finite_or_none(31.5) == 31.5
    assert metrics.finite_or_none(math.inf) is None
    assert metrics.finite_or_none(math.nan) is None


def test_metrics_reject_mismatched_or_integer_images() -> None:
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        metrics.mse(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        metrics.psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="float"):
        metrics.mse(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
