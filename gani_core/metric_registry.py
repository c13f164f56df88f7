"""Every metric gani reports, defined once: its name, what it measures, which way is better, where it is
computed, how it is summarised and how it is shown. Every list of metric names elsewhere (the run folder's
Parquet schema and summary, the domain benchmark's columns and curves, MLflow's metrics and saved runs view,
the CLI's tables, edits.parquet's metric columns and the edit means of MLflow and the nightly comparison) is
derived here; a metric added here appears in all of them.

    from gani_core.metric_registry import METRICS, names
    names("result")          # the quality columns of a run's rows: mse, psnr, ms_ssim, lpips, lpips_vgg, ...
    names("edit")            # edits.parquet's: lpips_to_original_edit, factor_change, ...
    METRICS["lpips"].better  # "lower"

Where each is computed (``computed``):

- ``image``: an image pair, in gani_core/metrics.py (``image_metrics``): the input against the tuned render.
- ``tuning``: the tuned generator against the original, in gani_core/measure.py (``measure_images``, batched
  for K images; K = 1 is the reference the tests compare with hand computations).
- ``faces``: the identity of a face, in gani_core/measure.py (``measure_images``, batched per K images) with
  gani_core.faces.identity's descriptors (gani_core/metrics.py, ``identity_metrics``), for runs whose inputs are
  faces (``InvertConfig.identity``: aligned by the run, ``--align ffhq``, or before it, ``--identity``); null
  otherwise, and null with the reason (the row's ``id_note``) where a face has no descriptor.
- ``edit``: an edit of a tuned result, one value per image x direction x strength (edits.parquet's rows), in
  gani_core/edit_runs.py (``gani edit``, the edit-dataset flow, the nightly's edits). Never in a run's rows, its
  summary, the domain benchmark or the ``headline`` and ``curve`` groups: an edit is a table of its own. The mean of
  an edit (tasks/mlflow_runs.py, ``edit_summary``) is over the strengths ``over_strengths`` names: ``every`` one;
  ``nonzero``, those other than 0 (where the value is fixed: 1 for the identity the edit keeps); ``signed``, those
  other than 0 with the value times the sign of the strength (a change along the edit: higher is more of it).
- ``benchmark``: the domain benchmark only (gani_core/evaluation/drift.py), at its largest common budget.
- ``cost``: what an inversion cost, recorded by gani_core/invert.py (seconds per image, stored bytes).

Definitions in words: docs/method.md, "Metrics".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

Better = Literal["lower", "higher"]
Computed = Literal["image", "tuning", "faces", "edit", "benchmark", "cost"]
OverStrengths = Literal["every", "nonzero", "signed"]


@dataclass(frozen=True)
class MetricDef:
    name: str               # the one name: Parquet column, summary key, MLflow metric stem, CLI header
    description: str        # what it measures, one line (help texts, docs)
    better: Better          # which way is better
    computed: Computed      # where it is computed (module docstring)
    integer: bool = False   # stored as int64 (else float64)
    fmt: str = ".4g"        # how tables show a value
    headline: bool = False  # shown where only a few fit: MLflow's runs view, its image table, the report's table
    curve: bool = True      # drawn against the tuning budget in the domain benchmark (else: its largest budget)
    over_strengths: OverStrengths = "every"     # an edit metric's mean: over which strengths (module docstring)

    def format(self, value: float | int | None) -> str:
        """``value`` as tables show it; ``-`` for a missing one (n/a, failed, non-finite). A mean of an integer
        metric (a float) is rounded to a whole number first."""
        if value is None or value != value or value in (float("inf"), float("-inf")):
            return "-"
        if self.integer and isinstance(value, float):
            value = round(value)
        return f"{value:{self.fmt}}"


_DEFS = (
    MetricDef("mse", "mean squared error of [0, 1] pixels between the input and the tuned render", "lower", "image",
              curve=False),
    MetricDef("psnr", "peak signal-to-noise ratio in dB, 10 log10(1 / mse)", "higher", "image", fmt=".4g",
              headline=True),
    MetricDef("ms_ssim", "multi-scale SSIM (fewer scales below 161 px); 1 = identical", "higher", "image",
              curve=False),
    MetricDef("lpips", "LPIPS (AlexNet) between the input and the tuned render; 0 = identical; under 64 px it "
              "barely sees pixel noise (compare at one size only)", "lower", "image", headline=True),
    MetricDef("lpips_vgg", "LPIPS (VGG16) between the input and the tuned render; its scale depends on the image "
              "size (compare at one size only)", "lower", "image"),
    MetricDef("locality", "LPIPS between tuned and original renders of latents away from the image; 0 = untouched",
              "lower", "tuning", headline=True),
    MetricDef("edit_consistency", "LPIPS gap between tuned and original opened by editing the pivot", "lower",
              "tuning"),
    MetricDef("edit_accuracy", "how exactly factor edits still move their factor, 1 = as before tuning (needs a "
              "factor probe)", "higher", "tuning", headline=True),
    MetricDef("id_similarity", "cosine similarity of dlib's ResNet face descriptors (128-d) of the input and the tuned "
              "render; 1 = the same descriptor; faces only (--align ffhq, --identity); not comparable with published "
              "ArcFace/CurricularFace IDs", "higher", "faces", headline=True, curve=False),
    MetricDef("id_similarity_pivot", "id_similarity of the pivot's render through the original generator (before "
              "tuning): the identity the inversion alone kept; id_similarity minus it is what tuning added",
              "higher", "faces", curve=False),
    MetricDef("lpips_to_original_edit", "LPIPS (AlexNet) between the tuned generator's edit (the pivot + strength x "
              "direction) and the original generator's edit of the same latent; 0 = the edit survives tuning unchanged "
              "(always, for w and wplus); it includes what tuning changed at the pivot (compare with strength 0)",
              "lower", "edit", curve=False),
    MetricDef("factor_change", "the change of the edited factor the generator's factor probe reads on the tuned "
              "render, from strength 0 to the strength, in the probe's units (factor:NAME directions on a generator "
              "with a probe; else null); signed: higher in the edit's direction (its mean: times the strength's sign)",
              "higher", "edit", curve=False, over_strengths="signed"),
    MetricDef("factor_change_original", "factor_change on the original generator's render (the edit before tuning); "
              "factor_change over it: how much of the edit the tuning kept", "higher", "edit", curve=False,
              over_strengths="signed"),
    MetricDef("id_similarity_edit", "the identity an edit keeps: cosine similarity of dlib's face descriptors of the "
              "tuned generator's edit and its unedited render (strength 0); 1 = the same descriptor; faces only (runs "
              "that measured id_similarity), else null", "higher", "edit", curve=False, over_strengths="nonzero"),
    MetricDef("drift", "Frechet distance of AlexNet features between tuned and original samples (benchmark only)",
              "lower", "benchmark", headline=True, curve=False),
    MetricDef("seconds", "seconds of the inversion per image (batch stages shared evenly)", "lower", "cost",
              headline=True),
    MetricDef("delta_bytes", "bytes of the stored weight deltas", "lower", "cost", integer=True, fmt=",d",
              curve=False),
)

# Order matters: tables and schemas list metrics in this order.
METRICS: dict[str, MetricDef] = {m.name: m for m in _DEFS}

Group = Literal["image", "faces", "result", "run", "benchmark", "headline", "curve", "edit"]


def names(group: Group) -> tuple[str, ...]:
    """The metric names of a group, in registry order:

    - ``image``: the image-pair metrics (gani_core.metrics.image_metrics);
    - ``faces``: the identity metrics of face runs (gani_core.metrics.identity_metrics; null in other runs);
    - ``result``: the quality of one inversion, image, tuning and faces metrics (a run's rows);
    - ``run``: what a run's summary, its MLflow run and the nightly comparison report per method: result + cost;
    - ``benchmark``: the domain benchmark's columns: image + tuning + drift + cost (no faces in its domain);
    - ``headline``: the few shown where space is short (not all in ``benchmark``: intersect with the group at hand);
    - ``curve``: the benchmark metrics drawn against the budget;
    - ``edit``: an edit's metrics (edits.parquet's columns; the edit means of MLflow and the nightly comparison).
    """
    select = {
        "image": lambda m: m.computed == "image",
        "faces": lambda m: m.computed == "faces",
        "result": lambda m: m.computed in ("image", "tuning", "faces"),
        "run": lambda m: m.computed not in ("benchmark", "edit"),
        "benchmark": _in_benchmark,
        "headline": lambda m: m.headline,
        "curve": lambda m: m.curve and _in_benchmark(m),
        "edit": lambda m: m.computed == "edit",
    }[group]
    return tuple(m.name for m in _DEFS if select(m))


def _in_benchmark(m: MetricDef) -> bool:
    return m.computed not in ("faces", "edit")


def parquet_field(name: str) -> tuple[str, pa.DataType]:
    """The Parquet column of a metric: int64 where the registry says ``integer``, else float64."""
    return name, pa.int64() if METRICS[name].integer else pa.float64()


def check_names(keys: object, allowed: tuple[str, ...] | set[str], what: str) -> None:
    """Raise KeyError naming every key of ``keys`` not in ``allowed`` (a misspelt metric is an error, not a null)."""
    unknown = sorted(set(keys) - set(allowed))      # type: ignore[arg-type]
    if unknown:
        raise KeyError(f"{what}: unknown column(s) {unknown}; expected some of {sorted(allowed)}")


def summarise(rows: list[dict], metric_names: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
    """How a run summarises each metric over its ok rows: {name: {"mean", "p50", "p90"}} over the finite values
    (None where no row has one: edit_accuracy without a factor probe). summary.json keeps the means, MLflow logs
    all three (``lpips_mean``, ``lpips_p50``, ``lpips_p90``)."""
    import numpy as np

    out: dict[str, dict[str, float | None]] = {}
    for name in metric_names:
        values = np.array([r[name] for r in rows if r.get("status") == "ok" and r.get(name) is not None],
                          dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            out[name] = {"mean": float(values.mean()), "p50": float(np.quantile(values, 0.5)),
                         "p90": float(np.quantile(values, 0.9))}
        else:
            out[name] = {"mean": None, "p50": None, "p90": None}
    return out
