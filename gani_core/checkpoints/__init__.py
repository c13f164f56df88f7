"""``load_generator``: every checkpoint format, read as data, never as code."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch

from gani_core.checkpoints.builtin import BUILTIN_RESOLUTION, PROBE_FILE, TRAINED_FILE, build_builtin
from gani_core.checkpoints.native import attach_probe, is_safetensors, load_native, probe_from_bytes, save_generator
from gani_core.checkpoints.nvidia import load_nvidia_pickle
from gani_core.checkpoints.ref import parse_spec, resolve_checkpoint
from gani_core.checkpoints.rosinality import load_rosinality
from gani_core.errors import CheckpointError, UnsafeCheckpointError
from gani_core.networks import Generator

__all__ = ["build_builtin", "load_generator", "save_generator"]

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy (non-zip) format starts with this pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def load_generator(path: str | Path, device: str | torch.device = "cpu", lr_mlp: float = 0.01) -> Generator:
    """Load a StyleGAN2 generator in evaluation mode, without running code stored in the file.

    ``path`` is a checkpoint spec (gani_core.checkpoints.ref): ``builtin`` (the generator trained on the shapes
    domain, 64 px, with its factor edit directions and factor probe), ``builtin-random`` / ``builtin-random:RES``
    (seeded, untrained, any resolution), a URI (``s3://...``, downloaded once into the cache), or a file: an NVIDIA
    network pickle (``G_ema``), a rosinality ``.pt`` (``g_ema``, ``latent_avg``; its mapping lr multiplier
    ``lr_mlp`` is not stored) or the project's own ``.safetensors``. Raises :class:`CheckpointError` (or
    :class:`UnsafeCheckpointError`) with one line saying what is wrong.
    """
    G = _load(str(path), lr_mlp)
    return G.to(device)


def _load(spec: str, lr_mlp: float) -> Generator:
    origin, location, resolution = parse_spec(spec)     # the one parse of a spec (checkpoints/ref.py)
    if origin == "builtin":
        G = load_native(TRAINED_FILE.read_bytes(), str(TRAINED_FILE))
        if G.factor_probe is None:      # the shipped weights file holds the directions, the probe is beside it
            attach_probe(G, probe_from_bytes(PROBE_FILE.read_bytes(), str(PROBE_FILE)), str(PROBE_FILE))
        return G
    if origin == "builtin-random":
        try:
            return build_builtin(resolution or BUILTIN_RESOLUTION)
        except ValueError as exc:
            raise CheckpointError(f"{spec}: {exc}") from exc
    path = resolve_checkpoint(spec).local_path() if origin == "uri" else Path(location)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {spec}" + (" (it is a directory)" if path.is_dir() else ""))
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{spec}: the checkpoint file is empty")
    if data.startswith(_ZIP_MAGIC) or data.startswith(_LEGACY_TORCH_MAGIC):
        return _load_torch_file(data, spec, lr_mlp)
    if is_safetensors(data):
        return load_native(data, spec)
    if data[:1] == b"\x80":
        return load_nvidia_pickle(data, spec)
    raise CheckpointError(f"{spec}: not a checkpoint this tool reads (expected an NVIDIA network pickle, a "
                          "rosinality .pt or a gani .safetensors)")


def _load_torch_file(data: bytes, source: str, lr_mlp: float) -> Generator:
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it references {found.group(1)}" if found else "it holds objects other than tensors"
        raise UnsafeCheckpointError(
            f"refused an unsafe checkpoint {source}: {what} (a pickled module or code); loading it would run "
            "code, and checkpoints are read as data only. Save a state dict instead") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{source}: cannot read this torch file, it is truncated or corrupt ({exc})") from exc
    if isinstance(ckpt, dict) and "g_ema" in ckpt:
        return load_rosinality(ckpt, source, lr_mlp=lr_mlp)
    keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(f"{source}: a torch file without a generator: expected rosinality's 'g_ema', found {keys}")
