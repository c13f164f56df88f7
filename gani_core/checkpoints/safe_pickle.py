"""A restricted unpickler for NVIDIA network pickles: it rebuilds tensors, containers and the
persistent-object records of ``torch_utils.persistence``, and refuses everything else.

NVIDIA's pickles embed each module's Python source and normally ``exec`` it on load. Here a persistent
object becomes a :class:`PersistentRecord` holding the class name and the module's ``__dict__`` (its
parameters, buffers, submodules and init arguments); no embedded source is ever run.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch

from gani_core.errors import CheckpointError, UnsafeCheckpointError


@dataclass
class PersistentRecord:
    """What ``torch_utils.persistence`` stored for one object: its class name and its state."""

    class_name: str
    module_src_lines: int
    state: dict[str, Any]


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict subclass, so NEWOBJ + SETITEMS can fill it."""


def _reconstruct_persistent_obj(meta: dict) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise UnsafeCheckpointError("refused an unsafe checkpoint: a persistent object record of unknown form")
    src = meta.get("module_src") or ""
    return PersistentRecord(str(meta.get("class_name")), src.count("\n"), meta["state"])


def _load_storage_from_bytes(data: bytes) -> Any:
    # torch pickles a storage as torch.save() bytes; read them with torch's own weights-only loader.
    if not isinstance(data, bytes | bytearray):
        raise UnsafeCheckpointError("refused an unsafe checkpoint: a storage record that is not bytes")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(f"refused an unsafe checkpoint: a tensor storage asked for code ({exc})") from exc


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> torch.Tensor:
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise UnsafeCheckpointError("refused an unsafe checkpoint: a tensor built from something not a storage")
    if backward_hooks:
        raise UnsafeCheckpointError("refused an unsafe checkpoint: a tensor with backward hooks")
    dtype = storage.dtype if isinstance(storage, torch.TypedStorage) else torch.uint8
    t = torch.empty((0,), dtype=dtype)
    untyped = storage if isinstance(storage, torch.UntypedStorage) else storage._untyped_storage
    t.set_(untyped, storage_offset, size, stride)
    t.requires_grad_(bool(requires_grad) and t.is_floating_point())
    return t


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise UnsafeCheckpointError("refused an unsafe checkpoint: a parameter record of unknown form")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _numpy_dtype(*args) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafeCheckpointError("refused an unsafe checkpoint: a numpy object dtype")
    return dt


def _numpy_scalar(dtype, data: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafeCheckpointError("refused an unsafe checkpoint: a numpy scalar of unknown form")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
_ALLOWED.update({("torch", name): getattr(torch, name) for name in (
    "float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool")})

_HINTS = {
    "dnnlib.tflib.network": "this is a TensorFlow StyleGAN/StyleGAN2 pickle; convert it to PyTorch with "
                            "stylegan2-ada-pytorch's legacy.py first",
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only the globals in ``_ALLOWED``; anything else raises :class:`UnsafeCheckpointError`."""

    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        hint = next((h for prefix, h in _HINTS.items() if module.startswith(prefix)), None)
        why = hint or "loading it would run code, and checkpoints are read as data only"
        raise UnsafeCheckpointError(f"refused an unsafe checkpoint {self.source}: it references {module}.{name}; {why}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"refused an unsafe checkpoint {self.source}: it uses persistent ids ({pid!r:.60})")


def safe_unpickle(data: bytes, source: str) -> Any:
    """Unpickle ``data`` (bytes of a network pickle) without running any code stored in it."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RuntimeError, MemoryError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"cannot read {source}: the pickle is truncated or corrupt ({why})") from exc
