"""Sample quality of a generator of the `shapes` domain, with features that install offline.

Not FID: there is no Inception network here. The features are ImageNet AlexNet's (the LPIPS backbone,
real pretrained weights), global-average-pooled from its five ReLU stages (1,152 values) at 128 px.
- ``fd_alex``: Fréchet distance between Gaussian fits of real and generated features ("FID-like";
  not comparable with published FIDs). ``fd_alex_floor``: the same between two independent real sets of
  the same size, what a perfect generator would score with this sample size.
- ``precision`` / ``recall``: Kynkäänniemi et al. 2019, k = 3 nearest neighbours, in the same features.
- ``factor_w1``: per factor, the 1-Wasserstein distance between the probe's readings of generated and of
  real images (normalised units: 0.1 = a tenth of the factor's range); ``factor_w1_floor`` likewise
  between two real sets. Says whether the generator covers every factor's range.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gani_core.factors import FactorProbe
from gani_core.lpips import get_lpips
from gani_core.networks import Generator
from gani_core.shapes.domain import FACTOR_NAMES, sample_images
from gani_core.shapes.probe import check_shapes_probe

FEATURE_RESOLUTION = 128


@torch.no_grad()
def alex_features(images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """[N, 3, R, R] in [-1, 1] → [N, 1152] pooled AlexNet features (float64, CPU)."""
    model = get_lpips("alex", images.device)
    out = []
    for chunk in images.split(batch_size):
        x = F.interpolate(chunk.float(), size=(FEATURE_RESOLUTION, FEATURE_RESOLUTION), mode="bilinear",
                          align_corners=False)
        stages = model.net(model.scaling_layer(x))
        out.append(torch.cat([s.mean(dim=[2, 3]) for s in stages], dim=1).double().cpu())
    return torch.cat(out)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^½) of two feature sets [N, D]."""
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    s_a, s_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    # Tr((S_a S_b)^½) = sum of the square roots of the eigenvalues of S_a S_b (real and >= 0 in theory).
    eig = np.linalg.eigvals(s_a @ s_b)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(np.square(mu_a - mu_b).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds) of fake against real features [N, D]."""
    def radii(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values          # the k-th neighbour (index 0 is the point itself)

    r_real, r_fake = radii(real), radii(fake)
    d = torch.cdist(fake, real)                          # [N_fake, N_real]
    precision = (d <= r_real[None]).any(dim=1).double().mean()
    recall = (r_fake[None] >= d.T).any(dim=1).double().mean()
    return float(precision), float(recall)


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per column, the 1-Wasserstein distance between two equal-size samples [N, K] → [K]."""
    return (a.sort(dim=0).values - b.sort(dim=0).values).abs().mean(dim=0)


@torch.no_grad()
def evaluate_quality(G: Generator, probe: FactorProbe, count: int = 2000, seed: int = 0) -> dict:
    """Quality of G's samples (psi 1, const noise) against the shapes domain; see the module docstring.

    ``probe``: a factor probe of the shapes domain (its factors in the domain's order).
    """
    check_shapes_probe(probe, "probe")
    device = G.mapping.w_avg.device
    probe = probe.to(device)
    res = G.img_resolution
    real_a, _ = sample_images(count, res, torch.Generator().manual_seed(seed + 1), device)
    real_b, _ = sample_images(count, res, torch.Generator().manual_seed(seed + 2), device)
    z = torch.randn([count, G.z_dim], generator=torch.Generator().manual_seed(seed + 3)).to(device)
    fake = torch.cat([G(chunk).clamp(-1, 1) for chunk in z.split(100)])
    f_a, f_b, f_fake = alex_features(real_a), alex_features(real_b), alex_features(fake)
    precision, recall = precision_recall(f_a.float(), f_fake.float())
    read_a, read_b = probe(real_a).cpu(), probe(real_b).cpu()
    read_fake = torch.cat([probe(chunk) for chunk in fake.split(250)]).cpu()
    w1, w1_floor = wasserstein_1d(read_fake, read_a), wasserstein_1d(read_b, read_a)
    return {
        "samples": count,
        "fd_alex": frechet_distance(f_a, f_fake), "fd_alex_floor": frechet_distance(f_a, f_b),
        "precision": precision, "recall": recall,
        "factor_w1": dict(zip(FACTOR_NAMES, w1.tolist(), strict=True)),
        "factor_w1_floor": dict(zip(FACTOR_NAMES, w1_floor.tolist(), strict=True)),
    }
