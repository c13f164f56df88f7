"""Forward and forward+backward time of the generator on this machine (CPU unless --device says otherwise).

    .venv/bin/python benchmarks/generator_speed.py --checkpoint builtin-random:64 builtin-random:256 paper:256 --batch 1

A checkpoint is anything ``load_generator`` reads, or ``paper:RES``: a randomly initialised generator of
stylegan2-ada-pytorch's paper256 size (z/w 512, 8 mapping layers, channel_base 16384, channel_max 512),
what a real FFHQ/AFHQ 256 px model costs.

Backward is taken with respect to the latents and every tunable weight, as in generator tuning.
Reports the median of --repeats runs after a warm-up, and the backward/forward ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gani_core import GeneratorConfig, load_generator
from gani_core.networks import Generator, num_parameters


def make_generator(spec: str, device: str) -> Generator:
    if spec.startswith("paper:"):
        cfg = GeneratorConfig(img_resolution=int(spec.split(":")[1]), channel_base=16384, channel_max=512)
        G = Generator(cfg).eval().requires_grad_(False)
        G.mapping.w_avg.copy_(G.mean_w(1000))
        return G.to(device)
    return load_generator(spec, device=device)


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", default=["builtin-random:64", "builtin-random:256", "paper:256"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, batch {args.batch}")
    print(f"{'checkpoint':<14} {'params':>9} {'forward s':>10} {'fwd+bwd s':>10} {'ratio':>6}")
    for spec in args.checkpoint:
        G = make_generator(spec, args.device)
        ws = G.mapping.w_avg.expand(args.batch, G.num_ws, -1).clone()

        def forward(G=G, ws=ws) -> None:
            with torch.no_grad():
                G.synthesis(ws)

        def forward_backward(G=G, ws=ws) -> None:
            w = ws.clone().requires_grad_(True)
            params = list(G.tunable_layers().values())
            for p in params:
                p.requires_grad_(True)
            G.synthesis(w).square().mean().backward()
            for p in params:
                p.grad = None
                p.requires_grad_(False)

        f = timed(forward, args.repeats, args.device)
        fb = timed(forward_backward, args.repeats, args.device)
        print(f"{spec:<14} {num_parameters(G):>9} {f:>10.4f} {fb:>10.4f} {fb / f:>6.2f}")


if __name__ == "__main__":
    main()
