"""The training loop of the built-in generator: discriminator, losses, snapshots, resume, quality metrics."""

from __future__ import annotations

import json

import pytest
import torch

from gani_core import load_generator
from gani_core.networks import make_resample_filter, modulated_conv2d
from gani_core.training.discriminator import Discriminator
from gani_core.training.loop import TrainConfig, TrainingError, train
from gani_core.training.quality import frechet_distance, precision_recall, wasserstein_1d

TINY = dict(resolution=16, batch=4, channel_base=256, channel_max=32, z_dim=16, w_dim=16, mapping_layers=2,
            r1_interval=2, pl_interval=2, log_kimg=0.004, snapshot_kimg=0.008)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_unfused_modulated_conv_equals_fused(up, demodulate):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([4, 8, 8, 8], generator=gen)
    weight = torch.randn([6, 8, 3, 3], generator=gen)
    styles = torch.randn([4, 8], generator=gen) + 1
    kw = dict(up=up, padding=1, resample_filter=make_resample_filter(), demodulate=demodulate)
    fused = modulated_conv2d(x, weight, styles, fused=True, **kw)
    unfused = modulated_conv2d(x, weight, styles, fused=False, **kw)
    assert fused.shape == (4, 6, 8 * up, 8 * up)
    torch.testing.assert_close(unfused, fused, atol=1e-5, rtol=1e-5)


def test_generator_renders_the_same_in_train_and_eval_mode():
    G = load_generator("builtin-random:32")
    z = torch.randn([3, G.z_dim], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = G(z)
        b = G.train()(z)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_discriminator_shapes_and_gradients():
    D = Discriminator(32, channel_base=512, channel_max=64)
    img = torch.randn([4, 3, 32, 32], requires_grad=True)
    logits = D(img)
    assert logits.shape == (4, 1)
    (grad,) = torch.autograd.grad(logits.sum(), img)
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in D.parameters())


def test_training_runs_snapshots_and_resumes(tmp_path):
    cfg = TrainConfig(total_kimg=0.008, **TINY)
    tr = train(cfg, tmp_path)
    assert tr.step == 2 and tr.images_seen == 8
    for name in ("state.pt", "G_ema.safetensors", "curves.jsonl", "samples.png", "config.json"):
        assert (tmp_path / name).is_file(), name
    lines = [json.loads(line) for line in (tmp_path / "curves.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2
    assert {"loss_G", "loss_D", "r1_penalty", "pl_penalty"} <= set().union(*lines)
    assert all(torch.isfinite(torch.tensor(v)) for line in lines for v in line.values())
    G = load_generator(tmp_path / "G_ema.safetensors")
    assert G.img_resolution == 16 and "trained on shapes" in G.label
    # The state file is plain data: it loads with torch's restricted unpickler.
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 2

    # Resuming continues where the run stopped; a longer total is allowed, other changes are refused.
    longer = TrainConfig(total_kimg=0.016, **TINY)
    tr = train(longer, tmp_path)
    assert tr.step == 4 and tr.images_seen == 16
    with pytest.raises(TrainingError, match=r"differs in \['batch'\]"):
        train(TrainConfig(total_kimg=0.016, **{**TINY, "batch": 8}), tmp_path)


def test_a_run_stopped_at_its_time_limit_resumes_where_it_stopped(tmp_path):
    cfg = TrainConfig(total_kimg=0.016, **TINY)                      # 4 steps of 4 images
    stopped = train(cfg, tmp_path / "resumed", max_seconds=0.0)     # out of time after its first step
    assert stopped.step == 1 and stopped.images_seen == 4
    saved = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)
    assert (saved["step"], saved["images_seen"]) == (1, 4)

    resumed = train(cfg, tmp_path / "resumed")
    assert resumed.step == 4 and resumed.images_seen == 16
    # Networks, optimisers, counters and RNG states all came back: the same run as an uninterrupted one.
    whole = train(cfg, tmp_path / "whole")
    for name in ("G", "G_ema", "D"):
        ours, theirs = getattr(resumed, name).state_dict(), getattr(whole, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    curves = {run: [json.loads(line) for line in (tmp_path / run / "curves.jsonl").read_text().splitlines()]
              for run in ("resumed", "whole")}
    assert [line["step"] for line in curves["resumed"]] == [1, 2, 3, 4]
    for ours, theirs in zip(curves["resumed"], curves["whole"], strict=True):
        assert {k: v for k, v in ours.items() if k != "seconds"} == {k: v for k, v in theirs.items() if k != "seconds"}


def test_frechet_distance_and_precision_recall():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn([500, 8], generator=gen, dtype=torch.float64)
    b = torch.randn([500, 8], generator=gen, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    same, shifted = frechet_distance(a, b), frechet_distance(a, b + 3)
    assert 0 < same < 0.5 and shifted == pytest.approx(8 * 9, rel=0.1)
    assert precision_recall(a.float(), b.float()) > (0.8, 0.8)
    assert precision_recall(a.float(), (b + 10).float()) == (0.0, 0.0)
    x = torch.rand([1000, 2], generator=gen)
    torch.testing.assert_close(wasserstein_1d(x, x + 0.25), torch.full([2], 0.25))


def test_cli_writes_domain_images_and_trains(tmp_path, capsys):
    from gani_core.cli import main

    assert main(["shapes", str(tmp_path / "data"), "--count", "2", "--seed", "3"]) == 0
    factors = json.loads((tmp_path / "data" / "factors.json").read_text())
    assert sorted(factors) == ["shapes-3-000.png", "shapes-3-001.png"]
    assert set(factors["shapes-3-000.png"]["normalised"]) == {"x", "y", "size", "rotation", "hue", "light"}
    out = tmp_path / "run"
    argv = ["train-builtin", "--out", str(out), "--resolution", "16", "--batch", "4", "--kimg", "0.008",
            "--device", "cpu", "--no-finish"]
    assert main(argv) == 0
    assert "finished:" in capsys.readouterr().out
    assert load_generator(out / "G_ema.safetensors").img_resolution == 16
    assert main(["train-builtin", "--out", str(out), "--resolution", "32", "--batch", "4", "--kimg", "0.008",
                 "--no-finish"]) == 2
    assert "differs in ['resolution']" in capsys.readouterr().err


def test_training_is_reproducible_on_cpu(tmp_path):
    cfg = TrainConfig(total_kimg=0.008, **TINY)
    a = train(cfg, tmp_path / "a").G_ema.state_dict()
    b = train(cfg, tmp_path / "b").G_ema.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train(TrainConfig(total_kimg=0.008, **{**TINY, "seed": 1}), tmp_path / "c").G_ema.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
