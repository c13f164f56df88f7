"""gani_core: StyleGAN2 generators read as data, LPIPS and metrics, and GANI inversion. No orchestration."""

from gani_core.checkpoints import build_builtin, load_generator, save_generator
from gani_core.errors import (
    CheckpointError,
    GaniError,
    ImageError,
    InversionError,
    LpipsWeightsError,
    UnsafeCheckpointError,
)
from gani_core.networks import Generator, GeneratorConfig

__all__ = [
    "CheckpointError", "GaniError", "Generator", "GeneratorConfig", "ImageError", "InversionError", "LpipsWeightsError",
    "UnsafeCheckpointError", "build_builtin", "load_generator", "save_generator",
]
__version__ = "0.1.0"
