"""Inverting images with one method: pivot, tuning, compact deltas, and every metric of method.md.

    cfg = method_config("gani", pivot_steps=450, tune_steps=350)
    result = invert_image(G, image, "astronaut", cfg)      # image: [3, R, R] in [0, 1]
    result.row()                                          # the metrics.parquet row
    results = invert_images(G, images, ids, cfg)          # K images [K, 3, R, R] at once, one result each

The K images of a batch share every forward and backward (pivot.find_pivots, tuning.tune_batch); each gets what
a run of it alone gives, within float32 rounding (docs/method.md, "Batched").
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import resource
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace

import torch

from gani_core import deltas as deltas_mod
from gani_core.defaults import (  # torch-free, for help
    ALIGNMENTS,
    GANI_REG_WEIGHT,
    METHODS,
    PRECISIONS,
    PTI_REG_WEIGHT,
    Align,
    Method,
)
from gani_core.editing import default_edit_strength, random_directions
from gani_core.errors import InversionError
from gani_core.measure import measure_images, preview_edit_label
from gani_core.metric_registry import check_names, names
from gani_core.networks import Generator
from gani_core.pivot import PivotConfig, Progress, find_pivots
from gani_core.precision import Precision
from gani_core.tuning import TuneConfig, TuneResult, tune_batch

# GANI's default (docs/method.md, measured on the trained built-in generator): the parameter-conditioned
# low-rank GMM with a light regulariser; rank 32 since the out-of-domain ablations of issue 11 (rank 8 before): at
# equal steps about half PTI's lpips out of the domain, a quarter of its locality.
GANI_TUNE = TuneConfig(form="param-lowrank", lr=3e-3, rank=32, reg_weight=GANI_REG_WEIGHT)
# PTI as in its public code: Adam on all synthesis weights, lr 3e-4, 350 steps, no regulariser by default.
PTI_TUNE = TuneConfig(form="full", lr=3e-4, layers="all", reg_weight=PTI_REG_WEIGHT)


@dataclass(frozen=True)
class InvertConfig:
    method: Method = "gani"
    pivot: PivotConfig = field(default_factory=PivotConfig)
    tune: TuneConfig | None = GANI_TUNE         # None: pivot only (w, wplus)
    seed: int = 0
    locality_count: int = 16                    # latents for `locality` (editing.locality_latents)
    num_directions: int = 4                     # seeded random W directions for `edit_consistency`
    edit_strength: float | None = None          # None: default_edit_strength(G)
    delta_encoding: str = "lowrank"             # deltas.encode_delta encoding
    delta_max_rel_error: float = 0.02           # per-layer relative error allowed by the encoding
    align: Align | None = None                  # ffhq: each file's largest face aligned first (invert_files: files;
                                                # invert_images takes its images as given)
    identity: bool = False                      # the inputs are aligned faces: id_similarity measured (with align)

    def __post_init__(self) -> None:
        if self.align is not None and self.align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {ALIGNMENTS} or None, got {self.align!r}")
        if self.align is not None and not self.identity:    # aligned inputs are faces: one configuration, one hash
            object.__setattr__(self, "identity", True)

    def config_hash(self) -> str:
        """A short hash of everything that changes a result (keys reruns and resumes: gani_core.run_folder).

        Scheme 2: the hash of :meth:`differences`, the fields whose values differ from :data:`HASH_BASELINE`. A
        field added later enters the hash only where it differs from its dataclass default, so adding a field
        with a default changes no hash, with no list to keep.
        """
        payload = {"scheme": HASH_SCHEME, "differences": self.differences()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self) -> dict[str, object]:
        """The fields of this configuration that differ from :data:`HASH_BASELINE` (a field not in it: from its
        dataclass default), by dotted name (``tune.steps``; ``tune``: None for the methods without tuning)."""
        return _differences(self, HASH_BASELINE, "")

    def resume_hashes(self) -> tuple[str, ...]:
        """The config hashes a stored row may carry to be this configuration's result (run_folder's resume rule):
        :meth:`config_hash`, and the hash gani gave the same configuration before issue 17
        (:func:`scheme1_config_hash`), so that run folders written then are still kept."""
        old = scheme1_config_hash(self)
        return (self.config_hash(),) if old is None else (self.config_hash(), old)


# The config hash's scheme: 2 since issue 17 (scheme 1, before it, hashed every field; scheme1_config_hash).
HASH_SCHEME = 2
# Scheme 2's baseline: InvertConfig()'s values when the scheme began (gani's method with its defaults; issue 17).
# Frozen, never edited: a default changed later makes the configurations that use it differ from the baseline, so
# their hashes change, as their results do. A field added later is not listed: it is compared with its dataclass
# default, the value that does what gani did before the field existed (which is why that default never changes).
HASH_BASELINE: dict[str, object] = {
    "method": "gani",
    "pivot": {
        "space": "w", "steps": 450, "lr": 0.05, "lr_rampup": 0.05, "lr_rampdown": 0.25, "noise_factor": 0.05,
        "noise_ramp": 0.75, "l2_weight": 1.0, "lpips_weight": 1.0, "optimize_noise": False,
        "noise_regularize": 100000.0, "precision": "fp32",
    },
    "tune": {
        "form": "param-lowrank", "steps": 350, "lr": 0.003, "rank": 32, "hidden": 32, "layers": "conv+torgb",
        "l2_weight": 1.0, "lpips_weight": 1.0, "reg_weight": 0.1, "reg_interval": 1, "reg_start": 0,
        "reg_alpha": 0.5, "reg_samples": 1, "reg_pool": 0, "precision": "fp32",
    },
    "seed": 0, "locality_count": 16, "num_directions": 4, "edit_strength": None, "delta_encoding": "lowrank",
    "delta_max_rel_error": 0.02,
}


def _differences(config: object, baseline: dict, prefix: str) -> dict[str, object]:
    """The fields of dataclass ``config`` whose values differ from ``baseline`` (or, for a field not in it, from
    the field's default), by dotted name; a nested dataclass is compared field by field."""
    found: dict[str, object] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in baseline:
            base = baseline[f.name]
        else:
            base = f.default_factory() if f.default_factory is not MISSING else f.default
            base = asdict(base) if is_dataclass(base) else base
        if is_dataclass(value) and isinstance(base, dict):
            found.update(_differences(value, base, f"{prefix}{f.name}."))
        elif (asdict(value) if is_dataclass(value) else value) != base:
            found[f"{prefix}{f.name}"] = asdict(value) if is_dataclass(value) else value
    return found


# Scheme 1's names of the fields issue 17 renamed (frozen: scheme 1 never sees a later name).
_SCHEME1_NAMES = {"form": "kind", "reg_weight": "locality_weight", "reg_interval": "locality_interval",
                  "reg_start": "locality_start", "reg_alpha": "locality_alpha", "reg_samples": "locality_samples",
                  "reg_pool": "locality_pool"}


def scheme1_config_hash(cfg: InvertConfig) -> str | None:
    """The hash gani gave ``cfg`` before issue 17 (scheme 1), for the resume rule only: rows written then carry it.

    Scheme 1 hashed every field of ``asdict(cfg)`` under its old name (:data:`_SCHEME1_NAMES`), with the tuning's
    ``extra: {}`` (a field since removed) and without ``locality_start`` at its default 0 (scheme 1's list of
    options added after results were stored). Its fields were :data:`HASH_BASELINE`'s, so the configuration is
    the baseline with :meth:`InvertConfig.differences` applied. Frozen: fields added later never enter it, and it
    answers None for a configuration that sets one of them (no row written before issue 17 can be its result).
    """
    config = copy.deepcopy(HASH_BASELINE)
    for name, value in cfg.differences().items():
        *parents, leaf = name.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        if leaf not in section:
            return None
        section[leaf] = value
    if config["tune"] is not None:
        tune = {_SCHEME1_NAMES.get(k, k): v for k, v in config["tune"].items()}
        if tune["locality_start"] == 0:
            del tune["locality_start"]
        config["tune"] = {**tune, "extra": {}}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


# The tuning stage of each method that has one; the others (w, wplus) stop at the pivot.
_TUNING: dict[str, TuneConfig] = {"gani": GANI_TUNE, "pti": PTI_TUNE}


def has_tuning(method: str) -> bool:
    """Whether ``method`` tunes the generator after the pivot (gani, pti) or stops at the pivot (w, wplus)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return method in _TUNING


def method_config(
    method: Method,
    pivot_steps: int | None = None,
    tune_steps: int | None = None,
    seed: int = 0,
    precision: Precision = "fp32",
    align: Align | None = None,
    identity: bool = False,
    **tune_overrides: float | int | str,
) -> InvertConfig:
    """The default configuration of a method, with the step budgets and tuning options overridden.

    ``precision="bf16"`` runs both stages' renders and losses under bf16 autocast (for GPUs). Raises ValueError,
    before anything runs, for: an unknown method or precision; ``pivot_steps`` that is not a whole number of at
    least 0; ``tune_steps`` under 1 (0 steps leave the generator as it was: the method's pivot alone, which ``w``
    computes and names as such); a tuning option TuneConfig does not have; ``reg_weight`` negative or not finite;
    ``lr`` not positive and finite; and, for a method without a tuning stage (``has_tuning`` false), any tuning
    option given, rather than ignoring it.

    ``align="ffhq"``: each input's largest face is aligned the FFHQ way at G's resolution before it is inverted
    (gani_core.invert_files), and ``id_similarity`` measured; ``identity``: the inputs are aligned faces already
    (`gani align`), so ``id_similarity`` is measured. Either raises FacesUnavailableError now, in one line saying
    what to install, when dlib or its models are missing (the faces extra).
    """
    tune_cfg = _TUNING[method] if has_tuning(method) else None     # has_tuning refuses unknown methods
    if tune_cfg is None and (tune_steps is not None or tune_overrides):
        given = sorted([*(["tune_steps"] if tune_steps is not None else []), *tune_overrides])
        raise ValueError(f"method {method!r} has no tuning stage; options {given} do not apply")
    _check_options(method, pivot_steps, tune_steps, precision, tune_overrides)
    pivot = PivotConfig(space="wplus" if method == "wplus" else "w", precision=precision)
    if pivot_steps is not None:
        pivot = replace(pivot, steps=pivot_steps)
    if tune_cfg is not None:
        tune_cfg = replace(tune_cfg, precision=precision, **tune_overrides)
        if tune_steps is not None:
            tune_cfg = replace(tune_cfg, steps=tune_steps)
    cfg = InvertConfig(method=method, pivot=pivot, tune=tune_cfg, seed=seed, align=align, identity=identity)
    if cfg.identity:
        from gani_core.faces.models import require

        require()
    return cfg


def _check_options(method: str, pivot_steps: int | None, tune_steps: int | None, precision: str,
                   tune_overrides: dict[str, float | int | str]) -> None:
    """:func:`method_config`'s checks of the values it is given (ValueError naming the option)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if pivot_steps is not None and (not _whole(pivot_steps) or pivot_steps < 0):
        raise ValueError(f"pivot_steps must be a whole number of at least 0, got {pivot_steps!r}")
    if tune_steps is not None and (not _whole(tune_steps) or tune_steps < 1):
        raise ValueError(f"tune_steps must be a whole number of at least 1, got {tune_steps!r}: {method} with 0 "
                         "tuning steps is its pivot alone; method 'w' (or 'wplus') computes a pivot without tuning")
    unknown = sorted(set(tune_overrides) - {f.name for f in fields(TuneConfig)})
    if unknown:
        raise ValueError(f"unknown tuning option(s) {unknown}; TuneConfig has {[f.name for f in fields(TuneConfig)]}")
    reg_weight = tune_overrides.get("reg_weight")
    if reg_weight is not None and not (isinstance(reg_weight, int | float) and math.isfinite(reg_weight)
                                       and reg_weight >= 0):
        raise ValueError(f"reg_weight must be a finite number of at least 0 (0: no regulariser), got {reg_weight!r}")
    lr = tune_overrides.get("lr")
    if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number above 0, got {lr!r}")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class InversionResult:
    image_id: str
    method: str
    w_pivot: torch.Tensor                       # [num_ws, w_dim]
    encoded: list[deltas_mod.EncodedDelta]      # the stored deltas
    metrics: dict[str, float | None]            # the registry's names("result") (None: n/a), measure.measure_images
    seconds: dict[str, float]                   # pivot, tune, metrics, total
    steps: dict[str, int]                       # pivot, tune
    peak_memory_mb: float
    delta_bytes: int
    delta_lpips_change: float                   # LPIPS between renders with stored and in-memory deltas
    previews: torch.Tensor                      # [4, 3, R, R] in [0, 1]: input, pivot, tuned, edit
    losses: list[float] = field(default_factory=list)
    edit_ratios: dict[str, float] = field(default_factory=dict)  # per factor: tuned / original edit response
    edit_label: str = "edit"                    # which edit previews[3] shows (measure.preview_edit_label)
    id_note: str | None = None                  # why id_similarity is None where it was measured

    def row(self) -> dict:
        """The metrics.parquet row of this result (without the run-level columns): its ``names("result")`` metrics
        (metric_registry; an unknown key raises KeyError) and what it cost. The pivot is not in it: it is binary, in
        the deltas file (RunFolder.write_outputs)."""
        check_names(self.metrics, names("result"), f"{self.image_id}.{self.method}: metrics")
        tune_steps = self.steps.get("tune", 0)
        return {
            "image_id": self.image_id, "method": self.method, "status": "ok", "error": None,
            **{name: self.metrics.get(name) for name in names("result")},
            "seconds": self.seconds["total"], "seconds_pivot": self.seconds["pivot"],
            "seconds_tune": self.seconds["tune"], "seconds_metrics": self.seconds["metrics"],
            "pivot_steps": self.steps["pivot"], "tune_steps": tune_steps,
            "seconds_per_tune_step": self.seconds["tune"] / tune_steps if tune_steps else None,
            "delta_bytes": self.delta_bytes, "delta_lpips_change": self.delta_lpips_change,
            "peak_memory_mb": self.peak_memory_mb, "id_note": self.id_note,
        }


def preview_edit(G: Generator, direction: torch.Tensor, strength: float) -> torch.Tensor:
    """The latent offset [w_dim] (or [num_ws, w_dim]) of the edit shown in previews.

    Where G carries factor edit directions (``G.factor_edits``): +2 steps of the factor most linear in W
    (the highest ``linear_r2``), the edit that moves one factor most cleanly; for the built-in generator,
    hue. Otherwise ``direction`` (the first edit direction, [w_dim] or [num_ws, w_dim]) times ``strength``.
    """
    edits = G.factor_edits
    if edits is not None:
        k = int(edits.linear_r2.argmax())
        return (2 * edits.steps[k] * edits.directions[k]).to(direction.device)
    return strength * direction


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset (this image). CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def invert_image(
    G: Generator,
    image: torch.Tensor,
    image_id: str,
    cfg: InvertConfig = InvertConfig(),
    directions: torch.Tensor | None = None,
    progress: Progress | None = None,
    w_pivot: torch.Tensor | None = None,
) -> InversionResult:
    """Invert ``image`` [3, R, R] in [0, 1] (at G's resolution) with ``cfg.method``; G is left unchanged.

    :func:`invert_images` of one image; raises its :class:`InversionError` when the optimisation diverged.
    """
    (result,) = invert_images(G, image[None], [image_id], cfg, directions, progress,
                              None if w_pivot is None else w_pivot[None])
    if isinstance(result, InversionError):
        raise result
    return result


def invert_images(
    G: Generator,
    images: torch.Tensor,
    image_ids: list[str],
    cfg: InvertConfig = InvertConfig(),
    directions: torch.Tensor | None = None,
    progress: Progress | None = None,
    w_pivots: torch.Tensor | None = None,
) -> list[InversionResult | InversionError]:
    """Invert K images [K, 3, R, R] in [0, 1] (at G's resolution) at once with ``cfg.method``; G is left unchanged.

    The pivot and tuning stages run the K images in one forward and one backward per step (pivot.find_pivots,
    tuning.tune_batch): each image gets what a run of it alone gives, within float32 rounding. The metrics are
    measured for the K images together too (measure.measure_images). An image whose optimisation diverged (a
    non-finite loss or pivot) gets an :class:`InversionError` in its place; the others are unaffected. Seconds
    of the shared stages are divided evenly among the images (``seconds_pivot``, ``seconds_tune``,
    ``seconds_metrics``: amortised).

    ``directions`` [D, w_dim] are the edit directions for ``edit_consistency`` (default: the generator's
    factor directions when it has them, else ``cfg.num_directions`` seeded random unit directions).
    ``progress(step, total, mean loss)`` follows both stages. Precomputed ``w_pivots`` [K, num_ws, w_dim] skip
    the pivot stage (so that methods compared on one image share their pivot exactly).
    """
    device = G.mapping.w_avg.device
    k = images.shape[0]
    if images.shape[1:] != (3, G.img_resolution, G.img_resolution) or len(image_ids) != k:
        raise ValueError(f"images must be [K, 3, {G.img_resolution}, {G.img_resolution}] with K ids, got "
                         f"{list(images.shape)} and {len(image_ids)} id(s)")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    targets = images.to(device) * 2 - 1
    seeds = [cfg.seed] * k
    t0 = time.perf_counter()
    pivot_steps = 0 if w_pivots is not None else cfg.pivot.steps
    total_steps = pivot_steps + (cfg.tune.steps if cfg.tune else 0)

    def stage_progress(offset: int) -> Progress | None:
        return None if progress is None else (lambda s, _n, loss: progress(offset + s, total_steps, loss))

    if w_pivots is None:
        w_pivots = find_pivots(G, targets, cfg.pivot, seeds, progress=stage_progress(0))
    w_pivots = w_pivots.to(device)
    t_pivot = time.perf_counter()
    tuned: list[TuneResult | None] = [None] * k
    if cfg.tune is not None and cfg.tune.steps > 0:
        tuned = list(tune_batch(G, w_pivots, targets, cfg.tune, seeds, progress=stage_progress(pivot_steps)))
    t_tune = time.perf_counter()
    steps = {"pivot": pivot_steps, "tune": cfg.tune.steps if cfg.tune else 0}
    shared = {"pivot": (t_pivot - t0) / k, "tune": (t_tune - t_pivot) / k}
    return finish_inversions(G, images.to(device), image_ids, cfg, w_pivots, tuned, directions, shared, steps)


def finish_inversions(
    G: Generator,
    images: torch.Tensor,
    image_ids: list[str],
    cfg: InvertConfig,
    w_pivots: torch.Tensor,
    tuned: list[TuneResult | None],
    directions: torch.Tensor | None,
    shared: dict[str, float],
    steps: dict[str, int],
) -> list[InversionResult | InversionError]:
    """The results of K images whose pivots and tuning are done: an :class:`InversionError` for each image whose
    pivot or tuning diverged, and for the others their deltas encoded and every metric (batched).

    ``shared``: each image's seconds of the pivot and tuning stages; ``steps``: their step counts. (invert_images
    ends here; a benchmark that keeps tuning snapshots measures each of them with it.)
    """
    k = len(image_ids)
    results: list[InversionResult | InversionError | None] = [None] * k
    for i in range(k):
        if not bool(torch.isfinite(w_pivots[i]).all()):
            results[i] = InversionError(f"{image_ids[i]}: the pivot diverged (a non-finite latent); "
                                        "try a lower pivot learning rate")
        elif tuned[i] is not None and tuned[i].diverged_at is not None:
            results[i] = InversionError(f"{image_ids[i]}: the tuning diverged (non-finite loss or weights at step "
                                        f"{tuned[i].diverged_at} of {tuned[i].steps}); try a lower tuning lr")
    ok = [i for i in range(k) if results[i] is None]
    if ok:
        measured = _measure(G, images[ok], [image_ids[i] for i in ok], cfg, w_pivots[ok],
                            [tuned[i] for i in ok], directions, shared, steps)
        for i, result in zip(ok, measured, strict=True):
            results[i] = result
    return results


def _measure(G: Generator, images: torch.Tensor, image_ids: list[str], cfg: InvertConfig, w_pivots: torch.Tensor,
             tuned: list[TuneResult | None], directions: torch.Tensor | None, shared: dict[str, float],
             steps: dict[str, int]) -> list[InversionResult]:
    """The images' deltas encoded, their metrics (measure.measure_images, batched), previews and timings
    (``shared``: each image's share of the batch's pivot and tuning seconds; the metrics' seconds are shared
    the same way)."""
    device = w_pivots.device
    t_start = time.perf_counter()
    deltas = [t.deltas if t is not None else {} for t in tuned]
    encoded = [deltas_mod.encode_deltas(d, encoding=cfg.delta_encoding, max_rel_error=cfg.delta_max_rel_error)
               for d in deltas]
    stored = [{n: d.to(device) for n, d in deltas_mod.decode_deltas(e).items()} for e in encoded]
    directions_given = directions is not None
    if directions is None and G.factor_edits is not None:   # directions with ground truth (the built-in G)
        directions = G.factor_edits.directions
    elif directions is None:
        directions = random_directions(G.w_dim, cfg.num_directions, seed=cfg.seed)
    directions = directions.to(device)
    strength = cfg.edit_strength if cfg.edit_strength is not None else default_edit_strength(G)
    measured = measure_images(G, images, w_pivots, deltas, stored, directions=directions, strength=strength,
                              preview_offset=preview_edit(G, directions[0], strength),
                              locality_count=cfg.locality_count, seed=cfg.seed, identity=cfg.identity)
    edit_label = preview_edit_label(G, strength, directions_given, cfg.seed)
    seconds = {**shared, "metrics": (time.perf_counter() - t_start) / len(tuned)}
    peak = _peak_memory_mb(device)
    return [InversionResult(
        image_id=image_id, method=cfg.method, w_pivot=w.cpu(), encoded=e, metrics=m.metrics,
        seconds={**seconds, "total": sum(seconds.values())}, steps=steps, peak_memory_mb=peak,
        delta_bytes=deltas_mod.delta_bytes(e), delta_lpips_change=m.delta_lpips_change, previews=m.previews,
        losses=t.losses if t is not None else [], edit_ratios=m.edit_ratios, edit_label=edit_label,
        id_note=m.id_note)
        for image_id, w, e, m, t in zip(image_ids, w_pivots, encoded, measured, tuned, strict=True)]
