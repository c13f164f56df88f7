"""The flows' typed parameters: how each image is inverted, and where the work runs.

Pydantic models, so that Prefect shows each as a form in its UI and takes them whole or in part from
``prefect deployment run --param inversion='{"pivot_steps": 200}'`` or ``--params``. Every default is read from
gani_core.defaults (which gani_core.pivot.PivotConfig, gani_core.tuning.TuneConfig and gani_core.invert read
too), never restated; the precision's is the first of PRECISIONS, fp32 (tests/test_flow_errors.py pins it to
PivotConfig's). Torch-free apart from gani_core's package import: a flow's ``--help`` does not wait for LPIPS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from gani_core.defaults import CPU_BATCH_SIZE, METHODS, PIVOT_STEPS, PRECISIONS, TUNE_STEPS, Align
from gani_core.precision import Precision

if TYPE_CHECKING:
    from gani_core.invert import InvertConfig

AUTO_TASK_IMAGES = 64      # images per task with batch_size "auto" (the worker picks its batch size within them)

# A flow's ``limit`` (how many of the sorted images to invert): a flow parameter typed ``ImageLimit | None`` is
# refused at 0 or below by Prefect before the flow runs, and shows its minimum in the UI.
ImageLimit = Annotated[int, Field(ge=1)]


class InversionSettings(BaseModel):
    """The step budgets, seed, precision and batch size of every method of a run, and what it does to faces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pivot_steps: int = Field(PIVOT_STEPS, ge=0, description="steps of the pivot inversion (as PTI)")
    tune_steps: int | None = Field(
        None, ge=1, description=f"steps of the generator tuning of gani and pti (none: {TUNE_STEPS}); "
                                "w and wplus have no tuning stage")
    seed: int = Field(0, description="seed of the pivot noise, the tuning and its regulariser's latents, the "
                                   "locality latents and edit directions")
    precision: Precision = Field(PRECISIONS[0], description="bf16: mixed precision (autocast), for GPUs")
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1, description="images per task, inverted together (one forward and backward for all per step); auto: "
                       f"as many as a GPU worker's free memory holds, {CPU_BATCH_SIZE} on a CPU. Results do not "
                       "depend on it")
    align: Align | None = Field(
        None, description="ffhq: each image's largest face aligned the FFHQ way (dlib's 68 landmarks) at the "
                          "generator's resolution on the worker before it is inverted; an image without a face is a "
                          "failed row (no face found); id_similarity is measured. None: centre crop. Needs the "
                          "faces extra where the flow and its workers run")
    identity: bool = Field(
        False, description="the images are FFHQ-aligned faces already (gani align, the align-dataset flow): "
                           "measure id_similarity (dlib's face descriptors; not comparable with published ArcFace "
                           "IDs). Needs the faces extra")

    def images_per_task(self) -> int:
        """How many images one task takes: the batch size, or for ``auto`` a number the worker splits further."""
        return AUTO_TASK_IMAGES if self.batch_size == "auto" else self.batch_size

    def configs(self, methods: list[str]) -> dict[str, InvertConfig]:
        """Each method's configuration; ``tune_steps`` applies to the methods that tune (an error if none does).
        ``align`` or ``identity`` without dlib: FacesUnavailableError, one line saying what to install."""
        from gani_core.invert import has_tuning, method_config

        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"unknown method(s) {unknown or methods}; expected some of {', '.join(METHODS)}")
        if self.tune_steps is not None and not any(has_tuning(m) for m in methods):
            raise ValueError(f"tune_steps={self.tune_steps} does not apply: {', '.join(methods)} "
                             "have no tuning stage")
        return {m: method_config(m, self.pivot_steps, self.tune_steps if has_tuning(m) else None, seed=self.seed,
                                 precision=self.precision, align=self.align, identity=self.identity)
                for m in methods}


class ClusterSettings(BaseModel):
    """Where the inversion tasks run: a LocalCluster for the run by default, or an existing Dask cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dask_address: str | None = Field(
        None, description="scheduler of an existing Dask cluster (tcp://host:8786); none starts a LocalCluster")
    n_workers: int | None = Field(
        None, ge=1, description="workers of that LocalCluster (none: one per core as memory allows, one per GPU)")
    gpu: bool = Field(False, description="workers have GPUs: each task asks for one `GPU` worker resource")
