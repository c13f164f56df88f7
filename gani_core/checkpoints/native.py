"""The project's own generator format: one safetensors file whose metadata holds the JSON config."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from gani_core import storage
from gani_core.checkpoints.nvidia import load_state
from gani_core.errors import CheckpointError
from gani_core.networks import Generator, GeneratorConfig
from gani_core.shapes.edits import TENSOR_PREFIX as EDITS_PREFIX
from gani_core.shapes.edits import FactorEdits

FORMAT_TAG = "gani-generator/1"


def generator_to_bytes(G: Generator, extra: dict[str, str] | None = None) -> bytes:
    """Serialise ``G`` (weights, config and its factor edit directions, if any) to ``.safetensors`` bytes."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in G.state_dict().items()}
    meta = {"format": FORMAT_TAG, "config": json.dumps(G.cfg.to_dict(), sort_keys=True), **(extra or {})}
    if G.factor_edits is not None:
        tensors.update(G.factor_edits.tensors())
        meta.update(G.factor_edits.metadata())
    return st_save(tensors, metadata=meta)


def save_generator(G: Generator, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write ``G`` atomically to ``path`` (a ``.safetensors`` file readable by ``load_generator``)."""
    storage.write_bytes(path, generator_to_bytes(G, extra))
    return Path(path)


def read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors metadata (the JSON header's ``__metadata__``) without reading the tensors."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__") or {}


def is_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def read_native(data: bytes, source: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a gani ``.safetensors`` file (CheckpointError if corrupt)."""
    try:
        return read_metadata(data), st_load(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{source}: corrupt safetensors file ({exc})") from exc


def load_native(data: bytes, source: str) -> Generator:
    meta, tensors = read_native(data, source)
    if meta.get("format") != FORMAT_TAG or "config" not in meta:
        raise CheckpointError(f"{source}: a safetensors file without a gani generator config "
                              f"(format {meta.get('format')!r}); export generators with `gani export`")
    try:
        cfg = GeneratorConfig.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: invalid generator config ({exc})") from exc
    G = Generator(cfg)
    # Tensors under "edits." are factor edit directions stored beside the weights (gani_core.shapes.edits).
    load_state(G, {k: v for k, v in tensors.items() if not k.startswith(EDITS_PREFIX)}, source)
    try:
        G.factor_edits = FactorEdits.from_tensors(tensors, meta)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: invalid edit directions ({exc})") from exc
    return G.eval().requires_grad_(False)
