"""gani_core: StyleGAN2 generators read as data, LPIPS and metrics, and GANI inversion. No orchestration.

The generator names (``load_generator``, ``Generator``, ...) import torch when first used, not when the package is
imported: the ``gani`` command line (gani_core.cli) shows its help and refuses bad arguments without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gani_core.errors import (
    CheckpointError,
    GaniError,
    ImageError,
    InversionError,
    LpipsWeightsError,
    UnsafeCheckpointError,
)

if TYPE_CHECKING:
    from gani_core.checkpoints import build_builtin, load_generator, save_generator
    from gani_core.networks import Generator, GeneratorConfig

__all__ = [
    "CheckpointError", "GaniError", "Generator", "GeneratorConfig", "ImageError", "InversionError", "LpipsWeightsError",
    "UnsafeCheckpointError", "build_builtin", "load_generator", "save_generator",
]
__version__ = "0.1.0"

# The names that need torch, and the module each is imported from on first use (PEP 562).
_LAZY = {"build_builtin": "gani_core.checkpoints", "load_generator": "gani_core.checkpoints",
         "save_generator": "gani_core.checkpoints", "Generator": "gani_core.networks",
         "GeneratorConfig": "gani_core.networks"}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'gani_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
