"""CUDA checks for a GPU worker: fixture renders, fp16 blocks, GMM/PTI tuning steps and throughput.

    python benchmarks/cuda_check.py [--json OUT.json]

Prints one line per check; exits 1 if a correctness check fails. Needs a CUDA device (and the LPIPS
alex weights for the tuning checks). Timings are on whatever GPU runs it; they are not compared with
the CPU here, only reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gani_core.checkpoints import load_generator  # noqa: E402
from gani_core.checkpoints.builtin import build_builtin  # noqa: E402
from gani_core.networks import Generator, GeneratorConfig  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
results: dict[str, object] = {}
failures: list[str] = []


def report(name: str, value: object, ok: bool = True) -> None:
    results[name] = value
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {value}", flush=True)
    if not ok:
        failures.append(name)


def fixture_renders(dev: torch.device) -> None:
    G = load_generator(FIXTURES / "nvlabs_32px.pkl", device=dev)
    ref = np.load(FIXTURES / "nvlabs_32px.npz")
    with torch.no_grad():
        for key, img_key in (("ws_psi1", "img_psi1"), ("ws_psi07", "img_psi07"), ("ws_plus", "img_plus")):
            out = G.synthesis(torch.from_numpy(ref[key]).to(dev)).cpu().numpy()
            err = float(np.abs(out - ref[img_key]).max())
            report(f"nvlabs {img_key} max|diff| (cuda fp32, TF32 off)", f"{err:.2e}", err < 1e-4)
    G = load_generator(FIXTURES / "rosinality_32px.pt", device=dev)
    ref = np.load(FIXTURES / "rosinality_32px.npz")
    with torch.no_grad():
        out = G(torch.from_numpy(ref["z"]).to(dev)).cpu().numpy()
    err = float(np.abs(out - ref["img_z"]).max())
    report("rosinality img_z max|diff| (cuda fp32)", f"{err:.2e}", err < 1e-4)


def fp16_blocks(dev: torch.device) -> None:
    cfg = GeneratorConfig(z_dim=128, w_dim=128, img_resolution=64, mapping_layers=4, channel_base=4096,
                          channel_max=128, num_fp16_res=2, conv_clamp=256)
    G = Generator(cfg)
    G.load_state_dict(build_builtin(64).state_dict())
    G = G.to(dev).eval()
    z = torch.randn([8, 128], generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        ws = G.mapping(z)
        a = G.synthesis(ws, force_fp32=True)
        b = G.synthesis(ws, force_fp32=False)
    err = (a - b).abs()
    report(f"fp16 blocks vs fp32: max / mean |diff| (render std {a.std().item():.2f})",
           f"{err.max().item():.3e} / {err.mean().item():.3e}", bool(torch.isfinite(b).all()) and err.mean() < 2e-2)


def tuning(dev: torch.device) -> None:
    from gani_core.invert import method_config
    from gani_core.pivot import find_pivot
    from gani_core.tuning import tune

    G = build_builtin(64).to(dev)
    with torch.no_grad():
        target = G(torch.randn([1, G.z_dim], generator=torch.Generator().manual_seed(123)).to(dev))
        target = target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1)).to(dev)
    cfg = method_config("gani", pivot_steps=50, tune_steps=60, seed=0)
    w = find_pivot(G, target, cfg.pivot)
    for method in ("gani", "pti"):
        for precision in ("fp32", "bf16"):
            tcfg = method_config(method, pivot_steps=50, tune_steps=60, seed=0, precision=precision).tune
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = tune(G, w, target, tcfg)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / tcfg.steps
            first, last = res.losses[0], res.losses[-1]
            report(f"tune {method} {precision}: loss {first:.4f} -> {last:.4f}, {dt * 1000:.1f} ms/step",
                   {"first": first, "last": last, "ms_per_step": dt * 1000}, last < first and np.isfinite(last))


def _render_step(G: Generator, ws: torch.Tensor, backward: bool) -> None:
    img = G.synthesis(ws)
    if backward:
        img.square().mean().backward()


def throughput(dev: torch.device) -> None:
    configs = {
        "builtin-random:64": build_builtin(64).cfg,
        "paper256": GeneratorConfig(z_dim=512, w_dim=512, img_resolution=256, channel_base=16384, channel_max=512),
    }
    for name, cfg in configs.items():
        G = Generator(cfg).to(dev)
        for batch in (1, 16):
            ws = G.mapping(torch.randn([batch, cfg.z_dim], device=dev)).detach().requires_grad_(True)
            for mode in ("fwd", "fwd+bwd"):
                for _ in range(3):
                    _render_step(G, ws, backward=mode == "fwd+bwd")
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                n = 20
                for _ in range(n):
                    _render_step(G, ws, backward=mode == "fwd+bwd")
                torch.cuda.synchronize()
                report(f"{name} batch {batch} {mode}", f"{(time.perf_counter() - t0) / n * 1000:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("cuda_check: no CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report("device", torch.cuda.get_device_name(dev))
    for check in (fixture_renders, fp16_blocks, tuning, throughput):
        try:
            check(dev)
        except Exception as exc:  # report and go on: one broken check must not hide the others
            report(check.__name__, f"raised {type(exc).__name__}: {exc}", ok=False)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
