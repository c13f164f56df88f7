"""Latent directions in W, the latents the after-tuning metrics render, and factor edits read by a probe.

The metrics themselves (``locality``, ``edit_consistency``, ``edit_accuracy``) are defined and computed in one
place, gani_core/measure.py (``measure_images``; names, directions and formats in gani_core/metric_registry.py).
This module gives them their inputs: `locality_latents` (the latents ``locality`` renders), `random_directions`
(``edit_consistency``'s directions for a generator without factor directions) and `default_edit_strength` (its
strength), and for ``edit_accuracy`` `factor_tools` (a generator's factor directions and probe) and
`accuracy_of_changes` (the score from the probe's readings). `read_factors` and `factor_changes` read one
generator's renders with a probe (the shapes domain fits and checks its directions with them).

Distances in W are measured in units of `w_spread(G)` (the RMS distance of mapped latents from
`G.mapping.w_avg`), which is what makes edit strengths comparable across generators whose W spaces have
different scales (the locality latents need no such unit: they lie between the pivot and mapped latents).
Every function keeps its tensors on G's device; random draws come from a seeded CPU `torch.Generator`
(never the global RNG), so results do not depend on the device or on RNG calls made elsewhere.

Shapes: ws [N, num_ws, w_dim]; a pivot w_p [num_ws, w_dim]; a direction [w_dim] (the same at every layer)
or [num_ws, w_dim] (per layer); a set of directions [K, w_dim] or [K, num_ws, w_dim]; factor readings
[N, K].
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from gani_core import storage
from gani_core.errors import GaniError
from gani_core.factors import FactorEdits, FactorProbe
from gani_core.networks import Generator, assert_shape

# Share of the locality latents drawn around the pivot; the rest are plain mapped latents.
LOCALITY_AROUND_PIVOT = 0.5
# Default edit strength in units of w_spread (see `default_edit_strength`).
DEFAULT_EDIT_SPREADS = 0.5


class DirectionsError(GaniError, ValueError):
    """A directions file could not be used: missing, not a plain .npy array, wrong shape or non-finite."""


# ----------------------------------------------------------------------------------------------------
# Latents and directions


def w_spread(G: Generator, num_samples: int = 1000, seed: int = 0) -> float:
    """RMS Euclidean distance of mapped latents from `G.mapping.w_avg`, in W units (a float > 0).

    sqrt(mean_i ||w_i - w_avg||^2) over `num_samples` latents mapped from seeded z (psi 1; zero labels
    for a conditional generator). The scale of a generator's W space: edit strengths are expressed as
    fractions of it so that they mean the same on generators of different scales.
    """
    ws = mapped_ws(G, num_samples, torch.Generator().manual_seed(seed))[:, 0]
    return float((ws - G.mapping.w_avg).square().sum(dim=1).mean().sqrt())


def default_edit_strength(G: Generator) -> float:
    """The edit strength `edit_consistency` uses when none is given: 0.5 * `w_spread(G)`, in W units.

    Half the typical distance of a latent from the average one: a clearly visible edit that stays in the
    region the mapping network populates. Along a unit direction roughly orthogonal to w - w_avg it moves
    a typical latent from 1.0 to about 1.12 spreads from w_avg, well inside the spread of mapped latents.
    """
    return DEFAULT_EDIT_SPREADS * w_spread(G)


def random_directions(w_dim: int, count: int, seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """`count` seeded random unit directions in W: float32 [count, w_dim], each of L2 norm 1.

    Drawn from an isotropic Gaussian with a `torch.Generator` seeded with `seed` (the global RNG is
    neither used nor advanced), so the same seed gives the same directions everywhere.
    """
    if w_dim < 1 or count < 1:
        raise ValueError(f"random_directions needs w_dim >= 1 and count >= 1, got w_dim={w_dim}, count={count}")
    d = torch.randn([count, w_dim], generator=torch.Generator().manual_seed(seed))
    return (d / d.norm(dim=1, keepdim=True)).to(device)


def load_directions(path: str | Path, w_dim: int, num_ws: int) -> torch.Tensor:
    """Read latent directions from a `.npy` file, as data only (a pickled array is refused, never loaded).

    Accepted arrays: [w_dim] (one direction), [K, w_dim], or [K, num_ws, w_dim] (per-layer directions;
    a single one is saved as [1, num_ws, w_dim], since a 2-D array always means K directions in W).
    Returns float32 [K, w_dim] or [K, num_ws, w_dim] on the CPU, values as stored (not renormalised: a
    direction's length multiplies the edit strength). Raises `DirectionsError` (a `ValueError`) naming
    the file when it is missing, not a plain numeric .npy array, of another shape, all-zero in some
    direction, or not finite.
    """
    path = Path(path)
    expected = f"expected [{w_dim}], [K, {w_dim}] or [K, {num_ws}, {w_dim}]"
    wanted = f"a NumPy array saved with numpy.save, shape [K, {w_dim}] or [K, {num_ws}, {w_dim}] (w_dim {w_dim})"
    array = read_npy_array(path, wanted, expected)
    shape = tuple(array.shape)
    if array.ndim == 1 and shape == (w_dim,):
        array = array[None]
    elif not (array.ndim == 2 and shape[1] == w_dim) and not (array.ndim == 3 and shape[1:] == (num_ws, w_dim)):
        raise DirectionsError(f"{path}: directions of shape {list(shape)}, {expected}")
    if array.shape[0] == 0:
        raise DirectionsError(f"{path}: holds no directions (shape {list(shape)}), {expected}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are refused just below
        directions = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.isfinite(directions).all():
        raise DirectionsError(f"{path}: directions contain NaN or infinite values (as float32)")
    zero = (directions.flatten(1).abs().amax(dim=1) == 0).nonzero().flatten().tolist()
    if zero:
        raise DirectionsError(f"{path}: directions {zero} are all zeros and would edit nothing")
    return directions


def read_npy_array(source: str | Path, wanted: str, expected: str) -> np.ndarray:
    """A real-valued array read from the `.npy` file `source`, as data only (a pickled array is refused, never loaded).

    `source` is a local path (a `Path`, or a string without ``://``) or a URI read through gani_core.storage
    (``s3://bucket/smile.npy``). Raises `DirectionsError` naming it when it is missing, not a file, not a .npy file,
    an object array (a pickle), an .npz archive or not real numbers; `wanted` (what the file should hold) and
    `expected` (the shapes accepted) finish those messages. The shape and values are the caller's to check.
    """
    data = _read_directions_file(source, wanted)
    # numpy would read anything else as a pickle, and say only that allow_pickle is off: name what is expected.
    if not data.startswith(b"\x93NUMPY") and not data.startswith(b"PK"):
        what = "an empty file" if not data else f"it starts with {data[:6]!r}"
        raise DirectionsError(f"{source}: not a .npy file ({what}); the directions are {wanted}")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # numpy raises ValueError for object arrays (they would need unpickling), OSError/EOFError for
        # truncated headers.
        why = "it holds Python objects (a pickled array), never loaded" if "allow_pickle" in str(exc) else exc
        raise DirectionsError(f"{source}: not a plain .npy array of directions ({why}); they are {wanted}") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        names = list(loaded.files)
        loaded.close()
        raise DirectionsError(f"{source}: an .npz archive ({names}); save one array with np.save, {expected}")
    if loaded.dtype.kind not in "fiu":
        raise DirectionsError(f"{source}: directions must be real numbers, got dtype {loaded.dtype}; {expected}")
    return loaded


def _read_directions_file(source: str | Path, wanted: str) -> bytes:
    """The bytes of a directions file, local or by URI; a missing one (or a folder) is a `DirectionsError`."""
    if isinstance(source, Path) or "://" not in source:
        path = Path(source)
        if not path.is_file():
            raise DirectionsError(f"directions file not found: {source}" if not path.exists()
                                  else f"{source} is not a file; the directions are {wanted}")
        return path.read_bytes()
    try:
        return storage.read_bytes(source)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise DirectionsError(f"directions file not found: {source}") from exc


def apply_direction(ws: torch.Tensor, direction: torch.Tensor, strength: float) -> torch.Tensor:
    """Edit latents: `ws + strength * direction`, ws [N, num_ws, w_dim] -> [N, num_ws, w_dim].

    `direction` is [w_dim] (added at every layer) or [num_ws, w_dim] (per layer); `strength` is in W
    units for a unit direction (see `default_edit_strength`). Differentiable in ws and direction.
    """
    assert_shape(ws, [None, None, None], "ws")
    num_ws, w_dim = ws.shape[1:]
    if direction.shape not in ((w_dim,), (num_ws, w_dim)):
        raise ValueError(f"direction has shape {list(direction.shape)}, expected [{w_dim}] or [{num_ws}, {w_dim}]")
    return ws + strength * direction.to(device=ws.device, dtype=ws.dtype)


def locality_latents(G: Generator, w_pivot: torch.Tensor, count: int = 16, seed: int = 0) -> torch.Tensor:
    """The fixed set of latents `locality` renders: float32 [count, num_ws, w_dim] on G's device.

    z = randn([count, z_dim]) from `torch.Generator().manual_seed(seed)` (CPU; the global RNG is not
    touched), mapped with psi 1 (zero labels for a conditional generator) to w_z. Then:
    - the first `count - h` are the mapped w_z themselves: the generator's domain at large;
    - the last h = count // 2 lie between the pivot and their own w_z: w_p + alpha_i (w_z - w_p) with
      alpha_i = i / h, i = 1..h, evenly over (0, 1]: from next to the image out to a plain mapped latent,
      so that changes made close to the pivot, where edits of the image land, weigh as much as far ones.
    The pivot itself is left out: its rendering is what the tuning is meant to change.
    """
    if count < 1:
        raise ValueError(f"locality_latents needs count >= 1, got {count}")
    w_pivot = _as_pivot(G, w_pivot)
    ws = mapped_ws(G, count, torch.Generator().manual_seed(seed))
    around = int(count * LOCALITY_AROUND_PIVOT)
    if around:
        alphas = torch.arange(1, around + 1, device=ws.device, dtype=ws.dtype) / around
        ws[count - around :] = w_pivot + alphas.view(-1, 1, 1) * (ws[count - around :] - w_pivot)
    return ws


def sample_regulariser_latents(
    G: Generator,
    w_pivot: torch.Tensor,
    count: int,
    generator: torch.Generator | list[torch.Generator],
    alpha: float,
    truncation_psi: float = 1.0,
) -> torch.Tensor:
    """Latents for the tuning loss's locality term: float32 [count, num_ws, w_dim] on G's device, no grad.

    w_p + alpha * (w_z - w_p), with fresh z = randn([count, z_dim]) drawn from `generator` at each call
    (on the generator's own device, so a fixed seed gives a fixed sequence) and mapped with
    `truncation_psi` (PTI maps them with 0.5) to w_z. PTI instead steps an absolute 30 W units along
    the normalised direction (w_z - w_p), a value tuned to FFHQ's W scale; a fraction `alpha` in (0, 1]
    of the distance to a mapped latent is generator-agnostic and never leaves the segment between the
    pivot and the generator's domain. The result is detached: the regulariser moves weights, not latents.

    Batched: K pivots [K, num_ws, w_dim] and K generators (one per image) give [K, count, num_ws, w_dim], each
    image's z drawn from its own generator and all of them mapped at once.
    """
    if not 0 < alpha <= 1:
        raise ValueError(
            f"alpha is a fraction of the distance from the pivot to a mapped latent, in (0, 1]; got {alpha}"
        )
    if count < 1:
        raise ValueError(f"sample_regulariser_latents needs count >= 1, got {count}")
    if isinstance(generator, list):
        if w_pivot.ndim != 3 or len(generator) != w_pivot.shape[0]:
            raise ValueError(f"{len(generator)} generators need pivots [K, num_ws, w_dim], got {list(w_pivot.shape)}")
        z = torch.cat([torch.randn([count, G.z_dim], generator=g, device=g.device) for g in generator]).to(_device(G))
        ws = _map(G, z, truncation_psi).view(len(generator), count, G.num_ws, G.w_dim)
        return w_pivot.detach()[:, None] + alpha * (ws - w_pivot.detach()[:, None])
    w_pivot = _as_pivot(G, w_pivot).detach()
    ws = mapped_ws(G, count, generator, truncation_psi)
    return w_pivot + alpha * (ws - w_pivot)


# ----------------------------------------------------------------------------------------------------
# Factor edits: directions with ground truth, read by the generator's factor probe


@torch.no_grad()
def read_factors(G: Generator, probe: FactorProbe, ws: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """The probe's reading [N, K] of G's const-noise renders of ws [N, num_ws, w_dim], on the probe's device."""
    device = next(probe.parameters()).device
    out = [probe(G.synthesis(chunk, noise_mode="const").clamp(-1, 1).to(device)) for chunk in ws.split(batch_size)]
    return torch.cat(out)


@torch.no_grad()
def factor_changes(G: Generator, probe: FactorProbe, w_pivot: torch.Tensor, edits: FactorEdits,
                   strength: float = 1.0) -> torch.Tensor:
    """Δ_k: the probe's change of factor k between w_p + s·d_k and w_p - s·d_k, for each k: [K].

    s = ``strength`` steps of d_k (``edits.steps[k]``); w_pivot [num_ws, w_dim] on G's device.
    """
    assert_shape(w_pivot, [G.num_ws, G.w_dim], "w_pivot")
    shift = (strength * edits.steps[:, None] * edits.directions).to(w_pivot.device)   # [K, w_dim]
    ws = torch.cat([w_pivot + shift[:, None], w_pivot - shift[:, None]])             # [2K, num_ws, w_dim]
    f = read_factors(G, probe, ws)
    k = len(edits.names)
    idx = torch.arange(k)
    return f[:k][idx, idx] - f[k:][idx, idx]


def factor_tools(G: Generator) -> tuple[FactorEdits, FactorProbe] | None:
    """G's factor edit directions and factor probe (what edit_accuracy needs); None when it lacks either.

    Raises ValueError when the probe does not read the directions' factors in the same order.
    """
    edits, probe = G.factor_edits, G.factor_probe
    if edits is None or probe is None:
        return None
    if probe.factor_names != edits.names:
        raise ValueError(f"the factor probe reads {list(probe.factor_names)}, the edit directions are "
                         f"{list(edits.names)}: edit_accuracy needs the same factors in the same order")
    return edits, probe


def accuracy_of_changes(before: torch.Tensor, after: torch.Tensor,
                        names: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    """(edit_accuracy, {factor: Δt/Δo}) from the factor changes [F] of the original (Δo) and tuned (Δt) generator:
    mean_k clip(1 - |Δt_k - Δo_k| / |Δo_k|, 0, 1) (measure.py's docstring)."""
    before, after = before.cpu(), after.cpu()
    per_factor = (1 - (after - before).abs() / before.abs().clamp_min(1e-6)).clamp(0, 1)
    ratios = {name: float(a / b) if abs(float(b)) > 1e-6 else float("nan")
              for name, a, b in zip(names, after.tolist(), before.tolist(), strict=True)}
    return float(per_factor.mean()), ratios


# ----------------------------------------------------------------------------------------------------
# Helpers


def _device(G: Generator) -> torch.device:
    return G.mapping.w_avg.device


def _as_pivot(G: Generator, w_pivot: torch.Tensor) -> torch.Tensor:
    """The pivot as float32 [num_ws, w_dim] on G's device ([1, num_ws, w_dim] is accepted too)."""
    if w_pivot.ndim == 3 and w_pivot.shape[0] == 1:
        w_pivot = w_pivot[0]
    assert_shape(w_pivot, [G.num_ws, G.w_dim], "w_pivot")
    return w_pivot.to(device=_device(G), dtype=torch.float32)


def mapped_ws(G: Generator, count: int, generator: torch.Generator, truncation_psi: float = 1.0) -> torch.Tensor:
    """Map `count` z drawn from `generator` (on its own device): [count, num_ws, w_dim] on G's device."""
    z = torch.randn([count, G.z_dim], generator=generator, device=generator.device).to(_device(G))
    return _map(G, z, truncation_psi)


def _map(G: Generator, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
    # A conditional generator gets zero labels, as `Generator.mean_w` does.
    c = torch.zeros([z.shape[0], G.c_dim], device=z.device) if G.c_dim > 0 else None
    with torch.no_grad():
        return G.mapping(z, c, truncation_psi=truncation_psi)
