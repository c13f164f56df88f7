"""Generator-level drift: how far a tuned generator's samples moved from the original generator's.

``drift`` is the Fréchet distance between AlexNet features (training.quality.alex_features: the LPIPS
backbone's real ImageNet weights, pooled) of the original and the tuned generator's renders of the same
seeded latents (psi 1, const noise). 0 = the same distribution of samples; it measures "the rest of the
generator stays intact" on its distribution, where ``locality`` measures it at fixed latents. Not comparable
across sample counts (the Fréchet distance of finite samples is biased).
"""

from __future__ import annotations

import torch

from gani_core.networks import Generator
from gani_core.training.quality import alex_features, frechet_distance


class DriftReference:
    """The original generator's features at ``count`` seeded latents, computed once, for many tuned generators."""

    def __init__(self, G: Generator, count: int, seed: int = 0, batch_size: int = 64) -> None:
        if count < 2:
            raise ValueError(f"drift needs at least 2 samples, got {count}")
        self.G = G
        self.batch_size = batch_size
        z = torch.randn([count, G.z_dim], generator=torch.Generator().manual_seed(10_000 + seed))
        c = torch.zeros([count, G.c_dim]) if G.c_dim else None
        with torch.no_grad():
            self.ws = G.mapping(z.to(G.mapping.w_avg.device), None if c is None else c.to(G.mapping.w_avg.device))
        self.features = self._features(G)

    @torch.no_grad()
    def _features(self, G: Generator) -> torch.Tensor:
        renders = torch.cat([G.synthesis(chunk, noise_mode="const").clamp(-1, 1)
                             for chunk in self.ws.split(self.batch_size)])
        return alex_features(renders)

    def distance(self, G_tuned: Generator) -> float:
        """The drift of ``G_tuned`` (the original generator with tuned weights) from the original."""
        if G_tuned is self.G:
            return 0.0
        return max(0.0, frechet_distance(self.features, self._features(G_tuned)))
