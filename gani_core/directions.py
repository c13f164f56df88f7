"""Edit directions named on the command line, parsed once into latent offsets: `parse_direction(s)`.

A spec takes one of three forms; each becomes an `EditDirection` whose ``offset`` [num_ws, w_dim] is the edit of
strength 1, so that a pivot w_p [num_ws, w_dim] edited with strength s is ``w_p + s * offset``:

    spec            the direction                                       strength 1 (unit)
    factor:NAME     a factor direction the generator carries            one step of the factor ("step"): the std
                    (``G.factor_edits``, gani_core/factors.py)          of mapped latents along it, as in the
                                                                        previews' "+2 steps" (invert.preview_edit)
    pca:K           the K-th principal direction of W (GANSpace): the   one standard deviation of mapped latents
                    eigenvectors of the covariance of PCA_SAMPLES       along it ("sigma", GANSpace's convention)
                    mapped latents, by decreasing variance
    FILE.npy        a direction saved with numpy.save, a local path or  length 1 in W ("W unit"): the file is
                    a URI: [w_dim] or [1, w_dim] in W (InterFaceGAN's   normalised to unit L2 length (a W+ one
                    boundary files), [num_ws, w_dim] or                 over all its elements); with ``raw`` the
                    [1, num_ws, w_dim] in W+                            vector as stored ("raw")

A direction in W is added at every style input; ``layers`` (`parse_layers`: ``"0-5"``, ``"3"``, ``"4-"``, both
ends included) keeps the style inputs in its range and zeroes the rest, as GANSpace and InterFaceGAN users do to
edit coarse or fine features only. Such an edit is another direction: its name carries the layers
(``factor-hue.L0-3``, ``smile.L5``; the range of every style input is no restriction: no suffix) and its
``layers`` says them ("0-3"; None for all). A file is normalised over all its rows before they are chosen, so
strength 1 is the same step whichever layers are edited. ``raw`` concerns files only: a factor's step and a
component's sigma are the generator's own units, and ``raw`` with no file among the specs is refused.
A local file's spec is recorded as its absolute path (as a checkpoint's is), so that the same file named by
another relative path is the same spec. `parse_directions` gives each distinct spec once (an exact repeat, spaces
and relative paths aside, is dropped); two specs that differ keep a direction each, their names made unique, even
when their offsets are equal. `parse_strengths` gives the strengths as a set, in ascending order.

The principal directions are computed once per checkpoint and cached, a float32 array [w_dim + 1, w_dim] (row 0
the standard deviations, rows 1.. the unit components, both by decreasing variance) in
``cache_dir() / "directions" / f"{sha256}-pca-{PCA_SAMPLES}.npy"``, written atomically; a cache file that cannot
be read or has the wrong shape is computed again. Every bad spec is a one-line `DirectionsError`.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gani_core import storage
from gani_core.checkpoints.ref import cache_dir
from gani_core.editing import DirectionsError, mapped_ws, read_npy_array
from gani_core.networks import Generator

log = logging.getLogger(__name__)

PCA_SAMPLES = 10_000        # mapped latents the principal directions are computed from (psi 1)
PCA_SEED = 0                # seed of their z (a CPU torch.Generator: the same latents on every device)
PCA_CHUNK = 1_000           # latents mapped at once: [chunk, num_ws, w_dim] at a time, not [PCA_SAMPLES, ...]

MAX_STRENGTH = 1000.0      # |strength| beyond this is refused: the render would overflow or leave W altogether
NATIVE_UNITS = {"step": "steps", "sigma": "sigmas"}    # the units of factor: and pca:, which --raw does not change

FORMS = "factor:NAME (a factor direction the generator carries), pca:K (the K-th principal direction of W) " \
        "or FILE.npy (a direction saved with numpy.save, a path or URI)"


@dataclass(frozen=True, eq=False)
class EditDirection:
    spec: str               # as the user gave it: "factor:hue", "pca:0", "path/to/smile.npy"
    name: str               # a short safe label for tables and file names: "factor-hue", "pca-0", "smile"
    offset: torch.Tensor    # [num_ws, w_dim] float32 on G's device: the latent offset of strength 1
                            # (zero rows outside the layers edited)
    unit: str               # what strength 1 means: "step" (factor), "sigma" (pca), "W unit" (.npy), "raw" (raw .npy)
    layers: str | None = None   # the style inputs edited, both ends included ("0-3", "5"); None: every one


# ----------------------------------------------------------------------------------------------------
# Specs


def parse_directions(specs: Sequence[str], G: Generator, checkpoint_sha256: str, layers: range | None = None,
                     raw: bool = False) -> list[EditDirection]:
    """`parse_direction` of each distinct spec, in order (an exact repeat, spaces or relative paths aside, is
    dropped: it would edit the same again). Raises `DirectionsError` for two specs of one name (``d1/smile.npy``,
    ``d2/smile.npy``: a name is a direction's, in file names and in the resume rule, whichever call gives it) and for
    ``raw`` when no spec is a file (``raw`` concerns files only)."""
    unique: dict[str, EditDirection] = {}
    for spec in dict.fromkeys(s.strip() for s in specs):
        parsed = parse_direction(spec, G, checkpoint_sha256, layers, raw)
        unique.setdefault(parsed.spec, parsed)      # one file by two relative paths: once
    directions = list(unique.values())
    if raw and directions and all(d.unit in NATIVE_UNITS for d in directions):
        units = ", ".join(f"{d.spec} {'is ' if i == 0 else ''}in {NATIVE_UNITS[d.unit]}"
                          for i, d in enumerate(directions))
        raise DirectionsError(f"--raw applies to .npy directions only; {units}")
    named: dict[str, EditDirection] = {}
    for d in directions:        # one name, one direction: a name is in file names and resumes (never "smile-2")
        if (other := named.setdefault(d.name, d)) is not d:
            raise DirectionsError(f"{other.spec} and {d.spec} would both be the direction {d.name!r}: rename one "
                                  "of the files")
    return directions


def parse_direction(spec: str, G: Generator, checkpoint_sha256: str, layers: range | None = None,
                    raw: bool = False) -> EditDirection:
    """The edit direction ``spec`` names (see the module docstring), its offset [num_ws, w_dim] on G's device.

    ``layers``: the style inputs to edit (`parse_layers`), None for all; ``raw``: a file's vector as stored instead
    of normalised to length 1. ``checkpoint_sha256`` keys the cache of G's principal directions. Raises
    `DirectionsError` (one line) for a spec of no known form, an unknown factor, a component out of range, or a
    file that is missing, not a plain .npy, of another shape, not finite or zero.
    """
    spec = spec.strip()
    if layers is not None:
        _check_layers(layers, G.num_ws)
    if spec.startswith("factor:"):
        row, name, unit = _factor(G, spec.removeprefix("factor:")), f"factor-{spec.removeprefix('factor:')}", "step"
    elif spec.startswith("pca:"):
        k = _component_index(spec.removeprefix("pca:"), G.w_dim)
        row, name, unit = _principal(G, checkpoint_sha256, k), f"pca-{k}", "sigma"
    elif spec.lower().endswith(".npy"):     # errors name the file as given; rows record it absolute
        row, name, unit = _from_file(spec, G, raw), _file_stem(spec), "raw" if raw else "W unit"
        spec = local_spec(spec)
    else:
        raise DirectionsError(f"{spec!r} is not a direction: expected {FORMS}")
    offset = row.to(device=G.mapping.w_avg.device, dtype=torch.float32).expand(G.num_ws, G.w_dim).clone()
    if layers is not None and len(layers) == G.num_ws:
        layers = None           # every style input: the edit without layers, under its name
    if layers is not None:
        offset[_outside(layers, offset)] = 0
        if not offset.any():
            raise DirectionsError(f"{spec}: the direction is zero at layers {_describe(layers)} and would edit "
                                  "nothing there")
        return EditDirection(spec, f"{safe_name(name)}.L{_describe(layers)}", offset, unit, _describe(layers))
    return EditDirection(spec, safe_name(name), offset, unit)


def parse_layers(text: str | None, num_ws: int) -> range | None:
    """The style inputs ``text`` names, both ends included: "0-5" -> range(0, 6), "3" -> range(3, 4), "4-" -> from 4
    to num_ws - 1; None (no text) -> None, every layer. Raises `DirectionsError` for another form or a range
    beyond the generator's ``num_ws`` style inputs."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(-\s*(\d*))?\s*", text)
    if match is None:
        raise DirectionsError(f"layers {text!r}: expected A-B, A or A- (style inputs, both ends included; "
                              f"this generator has num_ws {num_ws}: 0 to {num_ws - 1})")
    start = int(match[1])
    stop = num_ws if match[2] and not match[3] else int(match[3] or start) + 1
    layers = range(start, stop)
    _check_layers(layers, num_ws, text)
    return layers


def parse_strengths(values: Sequence[str]) -> list[float]:
    """The edit strengths ``values`` give, as floats (units: each direction's ``unit``): a set, in ascending order
    (a repeat is dropped, -0 is 0), so that a strip goes from the most negative to the most positive whatever order
    they were given in. Raises `DirectionsError` when there are none, or one is not a finite number or is beyond
    ±MAX_STRENGTH."""
    if not values:
        raise DirectionsError("no edit strengths given: expected numbers such as -2 0 2")
    strengths = set()
    for value in values:
        try:
            strength = float(value)
        except (TypeError, ValueError):
            strength = math.nan
        if not math.isfinite(strength):
            raise DirectionsError(f"strength {value!r} is not a finite number: expected numbers such as -2, 0 or 1.5")
        if abs(strength) > MAX_STRENGTH:
            raise DirectionsError(f"strength {value!r} is beyond ±{MAX_STRENGTH:g}: an edit that far leaves the "
                                  "generator's latent space (a few units is a strong edit)")
        strengths.add(strength + 0.0)       # -0.0 + 0.0 is 0.0
    return sorted(strengths)


def local_spec(spec: str) -> str:
    """A file's spec as rows record it: a local path made absolute (another cwd names the same file), a URI as
    given."""
    return spec if "://" in spec else os.path.abspath(spec)


def safe_name(text: str) -> str:
    """``text`` as a label safe in file names: runs of characters other than letters, digits, '.', '_' and '-'
    become '-'; "direction" if nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "direction"


# ----------------------------------------------------------------------------------------------------
# The three forms: each gives one row, [w_dim] (the same at every style input) or [num_ws, w_dim]


def _factor(G: Generator, name: str) -> torch.Tensor:
    """One step of the factor ``name``: steps[k] * directions[k], [w_dim] (invert.preview_edit's +2 steps / 2)."""
    edits = G.factor_edits
    if edits is None:
        raise DirectionsError(f"factor:{name}: this generator carries no factor directions; use pca:K (a principal "
                              "direction of W) or a direction saved in a .npy file")
    if name not in edits.names:
        raise DirectionsError(f"factor:{name}: no such factor; this generator has {', '.join(edits.names)}")
    k = edits.names.index(name)
    return edits.steps[k] * edits.directions[k]


def _component_index(text: str, w_dim: int) -> int:
    if re.fullmatch(r"\s*-?\d+\s*", text) is None:
        raise DirectionsError(f"pca:{text}: K must be an integer, 0 for the direction of largest variance")
    k = int(text)
    if not 0 <= k < w_dim:
        raise DirectionsError(f"pca:{k}: out of range; W has {w_dim} principal directions, pca:0 to pca:{w_dim - 1}")
    return k


def _principal(G: Generator, checkpoint_sha256: str, k: int) -> torch.Tensor:
    """One standard deviation along the k-th principal direction of G's W: stds[k] * components[k], [w_dim]."""
    stds, components = principal_directions(G, checkpoint_sha256)
    return torch.from_numpy(stds[k] * components[k])


def _from_file(spec: str, G: Generator, raw: bool) -> torch.Tensor:
    """The direction in the .npy file ``spec``: [w_dim] (W) or [num_ws, w_dim] (W+), unit length unless ``raw``."""
    w_dim, num_ws = G.w_dim, G.num_ws
    shapes = f"[{w_dim}] or [1, {w_dim}] in W, [{num_ws}, {w_dim}] or [1, {num_ws}, {w_dim}] in W+"
    expected = f"expected one direction, {shapes} (this generator: num_ws {num_ws}, w_dim {w_dim})"
    array = read_npy_array(spec, f"a NumPy array saved with numpy.save: one direction, {shapes}", expected)
    shape = list(array.shape)
    if array.ndim in (2, 3) and array.shape[0] == 1:  # [1, w_dim] (InterFaceGAN), [1, num_ws, w_dim]
        array = array[0]
    if array.shape not in ((w_dim,), (num_ws, w_dim)):
        raise DirectionsError(f"{spec}: a direction of shape {shape}; {expected}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are refused just below
        direction = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.isfinite(direction).all():
        raise DirectionsError(f"{spec}: the direction holds NaN or infinite values (as float32)")
    length = direction.double().norm()
    if length == 0:
        raise DirectionsError(f"{spec}: the direction is all zeros and would edit nothing")
    return direction if raw else (direction.double() / length).float()


def _file_stem(spec: str) -> str:
    return re.split(r"[/\\]", spec.rstrip("/"))[-1][: -len(".npy")]


# ----------------------------------------------------------------------------------------------------
# Principal directions of W (GANSpace), cached per checkpoint


def principal_directions(G: Generator, checkpoint_sha256: str) -> tuple[np.ndarray, np.ndarray]:
    """(stds [w_dim], components [w_dim, w_dim]) of G's W, by decreasing variance; float32, on the CPU.

    components[k] is a unit vector (rows orthonormal), its sign fixed so that its largest-magnitude element is
    positive; stds[k] the standard deviation of the mapped latents along it. Read from the cache of the checkpoint
    ``checkpoint_sha256`` (a sha256 in hex) when it holds them, else computed (`compute_principal_directions`) and
    cached.
    """
    if re.fullmatch(r"[0-9a-f]{64}", checkpoint_sha256) is None:
        raise ValueError(f"checkpoint_sha256 must be a sha256 in hex (CheckpointRef.sha256), got {checkpoint_sha256!r}")
    path = pca_cache_path(checkpoint_sha256)
    cached = _read_cache(path, G.w_dim)
    if cached is not None:
        return cached[0], cached[1:]
    stds, components = compute_principal_directions(G)
    buffer = io.BytesIO()
    np.save(buffer, np.concatenate([stds[None], components]), allow_pickle=False)
    storage.write_bytes(path, buffer.getvalue())
    return stds, components


def pca_cache_path(checkpoint_sha256: str, samples: int = PCA_SAMPLES) -> Path:
    """Where the principal directions of the checkpoint ``checkpoint_sha256`` are cached."""
    return cache_dir() / "directions" / f"{checkpoint_sha256}-pca-{samples}.npy"


@torch.no_grad()
def compute_principal_directions(G: Generator, samples: int = PCA_SAMPLES,
                                 seed: int = PCA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(stds [w_dim], components [w_dim, w_dim]) of ``samples`` latents mapped from seeded z (psi 1); float32.

    The eigen-decomposition of their covariance (float64), by decreasing eigenvalue; stds are the square roots of
    the eigenvalues (the standard deviation along each component), components its unit eigenvectors, each with its
    largest-magnitude element made positive so that the same generator gives the same signs everywhere.
    """
    generator = torch.Generator().manual_seed(seed)
    chunks = [mapped_ws(G, min(PCA_CHUNK, samples - start), generator)[:, 0].double().cpu()
              for start in range(0, samples, PCA_CHUNK)]
    w = torch.cat(chunks)
    w = w - w.mean(dim=0)
    variances, vectors = torch.linalg.eigh(w.T @ w / (samples - 1))     # ascending; vectors in columns
    components = vectors.flip(1).T                                       # [w_dim, w_dim], rows by decreasing variance
    largest = components.abs().argmax(dim=1, keepdim=True)
    components = components * components.gather(1, largest).sign()
    stds = variances.flip(0).clamp_min(0).sqrt()
    return stds.float().numpy(), components.float().numpy()


def _read_cache(path: Path, w_dim: int) -> np.ndarray | None:
    """The cached [w_dim + 1, w_dim] array, or None when there is none or it is unreadable (then recomputed)."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable cache of principal directions (%s); computing them again", path, exc)
        return None
    if not isinstance(array, np.ndarray) or array.shape != (w_dim + 1, w_dim) or array.dtype != np.float32 \
            or not np.isfinite(array).all():
        log.warning("%s: not a cache of principal directions for w_dim %d; computing them again", path, w_dim)
        return None
    return array


# ----------------------------------------------------------------------------------------------------
# Layers


def _check_layers(layers: range, num_ws: int, text: str | None = None) -> None:
    what = f"layers {text if text is not None else _describe(layers)}"
    if not 0 <= layers.start < num_ws or layers.stop > num_ws:
        raise DirectionsError(f"{what}: beyond this generator's style inputs (num_ws {num_ws}: 0 to {num_ws - 1})")
    if layers.step != 1 or len(layers) == 0:
        raise DirectionsError(f"{what}: no style inputs (the first is after the last); expected A-B with A <= B")


def _outside(layers: range, offset: torch.Tensor) -> torch.Tensor:
    """The rows of ``offset`` [num_ws, w_dim] outside ``layers``, a mask [num_ws] on its device."""
    keep = torch.zeros(offset.shape[0], dtype=torch.bool, device=offset.device)
    keep[layers.start:layers.stop] = True
    return ~keep


def _describe(layers: range) -> str:
    return f"{layers.start}-{layers.stop - 1}" if len(layers) > 1 else str(layers.start)
