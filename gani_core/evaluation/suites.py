"""The benchmark's suites and the images of their sets.

A set is a kind of image (gani_core.shapes.out_of_domain: ``in-domain``, the reference, and the kinds the
built-in generator cannot render) or the example photographs (``photos``). The ``test`` split is what the
benchmark reports; the ``dev`` split (other seeds) is the one to choose defaults on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gani_core.images import load_image
from gani_core.shapes.out_of_domain import IN_DOMAIN, KINDS, OUT_OF_DOMAIN, sample_kind

PHOTOS = "photos"
# The benchmark's methods: gani's default and its other GMM forms (gani-FORM), PTI with and without GANI's
# regulariser setting, and the pivot-only baselines. Budgets are tuning steps after the shared W pivot.
BENCHMARK_METHODS: tuple[str, ...] = ("gani", "gani-lowrank", "gani-param", "gani-grad", "pti", "pti-reg",
                                      "wplus", "w")


@dataclass(frozen=True)
class Suite:
    name: str
    sets: tuple[str, ...]           # kinds of gani_core.shapes.out_of_domain, or "photos"
    count: int                      # images per shapes set (photos: all of them, up to count)
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    budgets: tuple[int, ...]        # tuning steps at which each tuning method is measured (ascending)
    pivot_steps: int
    drift_samples: int              # samples per generator for `drift` (0: not measured)
    description: str = ""
    # Further budgets run by ``pti`` only: a PTI step costs less than a GANI step, so that comparisons at equal
    # wall time find PTI's curve as far as GANI's largest budget reaches, without extrapolating it.
    pti_budgets: tuple[int, ...] = ()

    def budgets_of(self, method: str) -> tuple[int, ...]:
        """The budgets ``method`` is measured at (empty for the pivot-only methods)."""
        base = parse_method(method)[0]
        if base in ("w", "wplus"):
            return ()
        return (*self.budgets, *self.pti_budgets) if base == "pti" else self.budgets

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if parse_method(m)[0] not in BENCHMARK_METHODS]
        if unknown:
            raise ValueError(f"unknown benchmark methods {unknown}; expected some of {BENCHMARK_METHODS}")
        bad_sets = [s for s in self.sets if s != PHOTOS and s not in KINDS]
        if bad_sets:
            raise ValueError(f"unknown sets {bad_sets}; expected {PHOTOS!r} or kinds {list(KINDS)}")
        every = (*self.budgets, *self.pti_budgets)
        if not self.budgets or list(every) != sorted(set(every)) or self.budgets[0] < 1:
            raise ValueError(f"budgets (then pti_budgets) must be ascending positive step counts, got {every}")


def parse_method(method: str) -> tuple[str, dict[str, int | float | str]]:
    """``gani[reg_interval=4,lr=0.001]`` → ("gani", {"reg_interval": 4, "lr": 0.001}): a benchmark method with
    tuning options (tuning.TuneConfig fields) overridden, for ablations; a plain name has none. (Results stored
    before issue 17 name the regulariser's options ``locality_*`` and the GMM form ``kind`` in their labels.)"""
    match = re.fullmatch(r"([a-z-]+)(?:\[(.*)\])?", method)
    if match is None:
        raise ValueError(f"a benchmark method is NAME or NAME[option=value,...], got {method!r}")
    overrides: dict[str, int | float | str] = {}
    for item in filter(None, (match.group(2) or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{method}: option {item!r} has no value (option=value)")
        overrides[key.strip()] = _number(value.strip())
    return match.group(1), overrides


def _number(text: str) -> int | float | str:
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


ALL_SETS: tuple[str, ...] = (IN_DOMAIN, *OUT_OF_DOMAIN, PHOTOS)
SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("smoke", (IN_DOMAIN, "disc"), count=2, seeds=(0,), methods=("gani", "pti", "w"), budgets=(1, 2),
          pivot_steps=2, drift_samples=8, pti_budgets=(3,), description="two tiny sets, a few steps: the wiring"),
    Suite("session", ALL_SETS, count=4, seeds=(0,), methods=("gani", "pti", "pti-reg", "wplus", "w"),
          budgets=(50, 100, 200), pivot_steps=200, drift_samples=128, pti_budgets=(300, 500),
          description="every set, 4 images, one seed, short budgets: about an hour on a 2-core CPU"),
    Suite("cpu-night", ALL_SETS, count=6, seeds=(0, 1, 2), methods=("gani", "pti", "pti-reg", "wplus", "w"),
          budgets=(50, 100, 200, 350), pivot_steps=450, drift_samples=256, pti_budgets=(500, 800),
          description="every set, 6 images, three seeds, the default budgets: a night on a 2-core CPU"),
    Suite("full", ALL_SETS, count=24, seeds=(0, 1, 2), methods=BENCHMARK_METHODS,
          budgets=(50, 100, 200, 350), pivot_steps=450, drift_samples=512, pti_budgets=(500, 800),
          description="every set, 24 images, three seeds, every method and GMM form: a GPU worker"),
)}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    return SUITES[name]


def set_images(name: str, count: int, resolution: int, split: str = "test", photos_dir: str | Path | None = None,
               ) -> tuple[torch.Tensor, list[str], list[dict]]:
    """The images of set ``name``: ([N, 3, R, R] in [0, 1] on the CPU, ids, ground-truth factors per image).

    Shapes kinds: ``count`` seeded images of ``split``; ``photos``: the first ``count`` images of ``photos_dir``
    (sorted by name; no factors), resized to ``resolution``.
    """
    if name == PHOTOS:
        if photos_dir is None:
            raise ValueError("the photos set needs photos_dir (examples/photos in the repository)")
        paths = sorted(p for p in Path(photos_dir).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        paths = paths[:count]
        if not paths:
            raise ValueError(f"no photos in {photos_dir}")
        images = torch.stack([load_image(p, resolution=resolution) for p in paths])
        return images, [p.stem for p in paths], [{} for _ in paths]
    images, factors = sample_kind(name, count, resolution, split)
    ids = [f"{name}-{split}-{i:03d}" for i in range(count)]
    return (images + 1) / 2, ids, factors
