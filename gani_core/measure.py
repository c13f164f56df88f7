"""The after-tuning metrics of K inverted images, measured in batched renders: their one implementation.

    measured = measure_images(G, images, w_pivots, deltas, stored, directions=directions, strength=strength,
                              preview_offset=offset, locality_count=16, seed=0)     # one Measured per image

Every metric is named, described and formatted once in gani_core/metric_registry.py; the image metrics (mse,
psnr, ms_ssim, lpips, lpips_vgg of the input against the tuned render of the pivot) are gani_core/metrics.py's.
The others compare the tuned generator G_t = W + ΔW (the stored deltas) with the original G_o, rendering with
const noise, clamped to [-1, 1], LPIPS alex (docs/method.md, "Metrics"):

- ``locality``: mean LPIPS(G_t(w), G_o(w)) over editing.locality_latents(G, w_p, locality_count, seed) (half
  mapped from seeded z, half between the pivot and mapped z). 0 = the tuning changed nothing away from the image.
- ``edit_consistency``: mean over the directions d of LPIPS(G_t(w_p + s d), G_o(w_p + s d)) - LPIPS(G_t(w_p),
  G_o(w_p)), s = ``strength``: how much further apart the generators are after an edit than before it. 0 = edits
  behave as on the original; negative where an edit moves away from what the tuning changed.
- ``edit_accuracy``, for a generator with factor edit directions and a factor probe (editing.factor_tools; else
  None): for each factor k, the probe's change of factor k between w_p + s_k d_k and w_p - s_k d_k (s_k: its
  step), with G_t (Δt_k) and with G_o (Δo_k); mean_k clip(1 - |Δt_k - Δo_k| / |Δo_k|, 0, 1)
  (editing.accuracy_of_changes). 1 = every edit moves its factor as before tuning. ``edit_ratios``: Δt_k / Δo_k.

- ``id_similarity``, ``id_similarity_pivot`` (``identity``: the inputs are aligned faces, else None): the cosine
  similarity of dlib's face descriptors of the input and of G_t(w_p), and of G_o(w_p) (gani_core.metrics'
  identity_metrics; each image's descriptor computed once). Where one has no descriptor: None, the reason in
  ``Measured.id_note``.

A method without tuning leaves G unchanged: locality and edit_consistency 0, edit_accuracy 1 where it applies.

Every latent a metric renders (the pivot, the preview's edit, the locality latents, the edited pivots of
``edit_consistency`` and the factor edits of ``edit_accuracy``) is laid out per image, and all of them are
rendered together: the K tuned generators ``W + ΔW_k`` through one vmapped call on a GPU (per-sample weights,
as in tuning.tune_batch; on a CPU one generator at a time, which is faster there), the original generator in
plain batches, and LPIPS over all pairs together. A call with K images gives each what a call with it alone
gives, within float32 rounding; the tests compare K = 1 calls with the definitions above computed by hand
(tests/test_editing.py, tests/test_shapes.py) and K = 3 with three K = 1 calls (tests/test_batching.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch.func import vmap

from gani_core.editing import LOCALITY_AROUND_PIVOT, accuracy_of_changes, factor_tools, locality_latents
from gani_core.lpips import lpips_distance
from gani_core.metric_registry import names
from gani_core.metrics import identity_metrics, image_metrics, to_unit
from gani_core.networks import Generator
from gani_core.tuning import render_with

# Renders per call (K tuned generators times this many latents each, at least one each): 8 was fastest on the
# CPU (64 made the metrics 1.6x slower there); a GPU, where larger calls should pay, is not measured yet.
RENDERS_PER_CALL = 8

Deltas = dict[str, torch.Tensor]


@dataclass
class Measured:
    metrics: dict[str, float | None]        # the registry's names("result") (None: n/a)
    delta_lpips_change: float               # LPIPS between renders with the stored and the in-memory deltas
    previews: torch.Tensor                  # [4, 3, R, R] in [0, 1] on the CPU: input, pivot, tuned, edit
    edit_ratios: dict[str, float] = field(default_factory=dict)   # per factor: tuned / original edit response
    id_note: str | None = None              # why id_similarity (or id_similarity_pivot) is None where measured


@dataclass(frozen=True)
class _Layout:
    """Where each metric's latents sit among an image's M latents (slices along the latent axis); latent 0 is
    the pivot, latent 1 the previews' edit of it."""

    locality: slice
    shared: slice           # the locality latents that are the same for every image (plain mapped latents)
    edits: slice
    factors: slice          # the first half +s_k d_k, the second -s_k d_k; empty without factor edits


@torch.no_grad()
def measure_images(
    G: Generator,
    images: torch.Tensor,
    w_pivots: torch.Tensor,
    deltas: list[Deltas],
    stored: list[Deltas],
    *,
    directions: torch.Tensor,
    strength: float,
    preview_offset: torch.Tensor,
    locality_count: int,
    seed: int,
    identity: bool = False,
) -> list[Measured]:
    """The metrics of K images [K, 3, R, R] in [0, 1] inverted to ``w_pivots`` [K, num_ws, w_dim].

    ``deltas[k]``: image k's ΔW as tuned (in memory); ``stored[k]``: as decoded from its stored encoding (the
    metrics are of the stored ones); both empty for a method without tuning, whose generator is unchanged
    (locality and edit_consistency 0, edit_accuracy 1 where it applies). ``directions`` [D, w_dim] or
    [D, num_ws, w_dim] at ``strength`` for edit_consistency; ``preview_offset`` [w_dim] or [num_ws, w_dim] is the
    previews' edit; ``locality_count`` and ``seed`` choose editing.locality_latents. ``identity``: the images are
    aligned faces, whose id_similarity and id_similarity_pivot are measured (else None).
    """
    device = w_pivots.device
    k = w_pivots.shape[0]
    tuned_any = [bool(s) for s in stored]
    if any(tuned_any) and not all(tuned_any):
        raise ValueError("measure_images takes images of one method: all tuned or none")
    pivots = w_pivots[:, None]                                                    # [K, 1, num_ws, w_dim]
    edited = pivots + preview_offset.to(device)
    if not all(tuned_any):
        renders = render_original(G, torch.cat([pivots, edited], 1))           # [K, 2, 3, R, R]
        metrics = image_metrics(to_unit(renders[:, 0]), images)
        faces = _identity(images, renders[:, 0], None, identity)
        tools = factor_tools(G)
        accuracy = 1.0 if tools is not None else None
        ratios = dict.fromkeys(tools[0].names, 1.0) if tools is not None else {}
        return [Measured({**metrics[i], "locality": 0.0, "edit_consistency": 0.0, "edit_accuracy": accuracy,
                          **faces[i][0]}, 0.0, _previews(images[i], renders[i, 0], renders[i, 0], renders[i, 1]),
                         dict(ratios), faces[i][1])
                for i in range(k)]

    layout, ws = _latents(G, torch.cat([pivots, edited], 1), directions, strength, locality_count, seed)
    original = render_original(G, ws, layout.shared)                              # [K, M, 3, R, R]
    tuned = render_tuned(G, _stack(stored), ws)
    in_memory = render_tuned(G, _stack(deltas), pivots)[:, 0]
    distances = lpips_pairs(tuned, original)                                      # [K, M]
    delta_change = lpips_distance(in_memory.clamp(-1, 1), tuned[:, 0].clamp(-1, 1)).cpu()
    metrics = image_metrics(to_unit(tuned[:, 0]), images)
    locality = distances[:, layout.locality].mean(1)
    gaps = distances[:, layout.edits] - distances[:, :1]
    accuracy = _edit_accuracy(G, original[:, layout.factors], tuned[:, layout.factors])
    faces = _identity(images, original[:, 0], tuned[:, 0], identity)
    results = []
    for i in range(k):
        acc, ratios = accuracy[i] if accuracy is not None else (None, {})
        results.append(Measured(
            {**metrics[i], "locality": float(locality[i]), "edit_consistency": float(gaps[i].mean()),
             "edit_accuracy": acc, **faces[i][0]},
            float(delta_change[i]), _previews(images[i], original[i, 0], tuned[i, 0], tuned[i, 1]), ratios,
            faces[i][1]))
    return results


def _identity(images: torch.Tensor, pivots: torch.Tensor, tuned: torch.Tensor | None, measured: bool
              ) -> list[tuple[dict[str, float | None], str | None]]:
    """Each image's ``faces`` metrics and id_note from its input [K, 3, R, R] in [0, 1] and renders [K, 3, R, R]
    (``tuned`` None: the pivot's is the tuned render); all None when not ``measured`` (the inputs are no faces)."""
    if not measured:
        return [(dict.fromkeys(names("faces")), None)] * images.shape[0]
    rows = identity_metrics(images, to_unit(pivots), None if tuned is None else to_unit(tuned))
    return [({n: row[n] for n in names("faces")}, row["id_note"]) for row in rows]


def _latents(G: Generator, first: torch.Tensor, directions: torch.Tensor, strength: float,
             locality_count: int, seed: int) -> tuple[_Layout, torch.Tensor]:
    """Each image's metric latents [K, M, num_ws, w_dim]: ``first`` [K, 2, num_ws, w_dim] (its pivot and the
    previews' edit), its locality latents, its pivot edited along each direction, then its pivot moved ±s_k d_k
    along each factor direction (when G has factor edits and a probe)."""
    w_pivots = first[:, 0]
    directions = directions.to(w_pivots)
    per_layer = directions if directions.ndim == 3 else directions[:, None].expand(-1, G.num_ws, -1)  # [D, L, C]
    local = torch.stack([locality_latents(G, w, locality_count, seed=seed) for w in w_pivots])
    edits = w_pivots[:, None] + strength * per_layer[None]
    parts = [first, local, edits]
    n_factors = 0
    tools = factor_tools(G)
    if tools is not None:
        fe = tools[0].to(w_pivots.device)
        shift = (fe.steps[:, None] * fe.directions)[None, :, None]                # [1, F, 1, w_dim]
        parts += [w_pivots[:, None] + shift, w_pivots[:, None] - shift]
        n_factors = len(fe.names)
    start, d = first.shape[1], per_layer.shape[0]
    shared = locality_count - int(locality_count * LOCALITY_AROUND_PIVOT)
    edits_at = start + locality_count
    layout = _Layout(locality=slice(start, edits_at), shared=slice(start, start + shared),
                     edits=slice(edits_at, edits_at + d), factors=slice(edits_at + d, edits_at + d + 2 * n_factors))
    return layout, torch.cat(parts, 1)


def _stack(deltas: list[Deltas]) -> Deltas:
    return {name: torch.stack([d[name] for d in deltas]) for name in deltas[0]}


def _chunks(k: int, m: int) -> list[slice]:
    step = max(1, RENDERS_PER_CALL // k)
    return [slice(j, min(j + step, m)) for j in range(0, m, step)]


def render_tuned(G: Generator, deltas: Deltas, ws: torch.Tensor) -> torch.Tensor:
    """Image k's latents ws[k] [M, num_ws, w_dim] rendered with W + deltas[k]: [K, M, 3, R, R].

    On a GPU the K generators render in one vmapped call (per-sample weights as a grouped convolution: few,
    large kernel launches). On a CPU one image at a time, its latents batched through plain convolutions: the
    grouped convolution made the metrics 1.7x slower there (measured: invert_images at K = 8, 1 thread)."""
    k, m = ws.shape[:2]
    if ws.device.type == "cuda":
        render = vmap(lambda d, w: render_with(G, d, w))
        return torch.cat([render(deltas, ws[:, s]) for s in _chunks(k, m)], 1)
    return torch.stack([torch.cat([render_with(G, {n: d[i] for n, d in deltas.items()}, ws[i, s])
                                   for s in _chunks(1, m)]) for i in range(k)])


def render_original(G: Generator, ws: torch.Tensor, shared: slice = slice(0)) -> torch.Tensor:
    """ws [K, M, num_ws, w_dim] rendered with G's own weights: [K, M, 3, R, R]. The latents ws[:, shared] are the
    same for every image: rendered once."""
    k, m = ws.shape[:2]
    own = torch.ones(m, dtype=torch.bool)
    own[shared] = False
    flat = torch.cat([ws[0, shared], ws[:, own].flatten(0, 1)])
    out = torch.cat([G.synthesis(flat[i : i + RENDERS_PER_CALL], noise_mode="const")
                     for i in range(0, flat.shape[0], RENDERS_PER_CALL)])
    n_shared = int((~own).sum())
    renders = out.new_empty([k, m, *out.shape[1:]])
    renders[:, ~own] = out[:n_shared][None]
    renders[:, own] = out[n_shared:].view(k, int(own.sum()), *out.shape[1:])
    return renders


def lpips_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS (alex) of clamped pairs a[k, m], b[k, m] [K, M, 3, R, R]: [K, M] on the CPU."""
    fa, fb = a.flatten(0, 1).clamp(-1, 1), b.flatten(0, 1).clamp(-1, 1)
    out = torch.cat([lpips_distance(fa[i : i + RENDERS_PER_CALL], fb[i : i + RENDERS_PER_CALL], net="alex")
                     for i in range(0, fa.shape[0], RENDERS_PER_CALL)])
    return out.view(a.shape[:2]).cpu()


def _edit_accuracy(G: Generator, original: torch.Tensor, tuned: torch.Tensor
                   ) -> list[tuple[float, dict[str, float]]] | None:
    """edit_accuracy and edit_ratios of each image from its factor renders [K, 2F, 3, R, R] (+s_k d_k, then
    -s_k d_k)."""
    tools = factor_tools(G)
    if tools is None:
        return None
    edits, probe = tools
    probe = copy.deepcopy(probe).to(original.device)     # the generator keeps its own probe (on the CPU)
    n = len(edits.names)
    idx = torch.arange(n)

    def changes(renders: torch.Tensor) -> torch.Tensor:                        # [K, F]: Δ_k of each image
        f = probe(renders.flatten(0, 1).clamp(-1, 1)).view(renders.shape[0], 2 * n, n)
        return f[:, :n][:, idx, idx] - f[:, n:][:, idx, idx]

    before, after = changes(original), changes(tuned)
    return [accuracy_of_changes(b, a, edits.names) for b, a in zip(before, after, strict=True)]


# A preview's cells, left to right (``Measured.previews``); run_folder labels the last one with preview_edit_label.
PREVIEW_CELLS = ("input", "pivot", "tuned", "edit")


def preview_edit_label(G: Generator, strength: float, directions_given: bool, seed: int) -> str:
    """The label of a preview's edit cell: which edit invert.preview_edit chose, as it chose it. Where G carries
    factor edit directions, ``edit: NAME +2 steps`` (the factor most linear in W, whatever directions were given);
    else ``edit: direction 0 xS`` (the first of the given directions) or ``edit: random direction 0 (seed N) xS``
    (editing.random_directions), S the strength in W units."""
    edits = G.factor_edits
    if edits is not None:
        return f"edit: {edits.names[int(edits.linear_r2.argmax())]} +2 steps"
    which = "direction 0" if directions_given else f"random direction 0 (seed {seed})"
    return f"edit: {which} x{strength:.3g}"


def _previews(image: torch.Tensor, pivot: torch.Tensor, tuned: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
    return torch.cat([image[None], to_unit(torch.stack([pivot, tuned, edit]))]).cpu()
