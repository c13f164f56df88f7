"""The project's own formats, safetensors files whose metadata says what they hold.

- A generator (``gani-generator/1``): the weights, the JSON config in the metadata and, when the
  generator carries them, its factor edit directions and factor probe under their prefixes
  (gani_core.factors has the keys), so that an exported generator keeps both.
- A factor probe of its own (``gani-shapes-probe/1``, the tag of the shipped probe file; the format is
  the probe's keys, unprefixed, and says which factors it reads).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from gani_core import storage
from gani_core.checkpoints.nvidia import load_weights
from gani_core.errors import CheckpointError
from gani_core.factors import EDITS_PREFIX, PROBE_PREFIX, FactorEdits, FactorProbe
from gani_core.networks import Generator, GeneratorConfig

FORMAT_TAG = "gani-generator/1"
PROBE_FORMAT_TAG = "gani-shapes-probe/1"


def generator_to_bytes(G: Generator, extra: dict[str, str] | None = None) -> bytes:
    """Serialise ``G`` (weights, config, and its factor edit directions and probe, if any) to ``.safetensors``."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in G.state_dict().items()}
    meta = {"format": FORMAT_TAG, "config": json.dumps(G.cfg.to_dict(), sort_keys=True), **(extra or {})}
    if G.factor_edits is not None:
        tensors.update(G.factor_edits.tensors())
        meta.update(G.factor_edits.metadata())
    if G.factor_probe is not None:
        tensors.update(G.factor_probe.tensors(PROBE_PREFIX))
        meta.update(G.factor_probe.metadata(PROBE_PREFIX))
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
    beside = (EDITS_PREFIX, PROBE_PREFIX)       # stored beside the weights (gani_core.factors)
    load_weights(G, {k: v for k, v in tensors.items() if not k.startswith(beside)}, source)
    try:
        G.factor_edits = FactorEdits.from_tensors(tensors, meta)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: invalid edit directions ({exc})") from exc
    probe = _probe(tensors, meta, PROBE_PREFIX, source)
    if probe is not None:
        attach_probe(G, probe, source)
    return G.eval().requires_grad_(False)


def attach_probe(G: Generator, probe: FactorProbe, source: str) -> None:
    """Give ``G`` its factor probe, which must read the factors of its edit directions, in their order."""
    if G.factor_edits is not None and probe.factor_names != G.factor_edits.names:
        raise CheckpointError(f"{source}: the factor probe reads {list(probe.factor_names)}, but the edit "
                              f"directions are {list(G.factor_edits.names)}")
    G.factor_probe = probe


def probe_to_bytes(probe: FactorProbe, extra: dict[str, str] | None = None) -> bytes:
    """A factor probe as a ``.safetensors`` file of its own (``extra``: more metadata, e.g. its report)."""
    meta = {"format": PROBE_FORMAT_TAG, **probe.metadata(), **(extra or {})}
    return st_save(probe.tensors(), metadata=meta)


def probe_from_bytes(data: bytes, source: str) -> FactorProbe:
    """The factor probe of a file written by ``probe_to_bytes`` (CheckpointError if it is not one)."""
    meta, tensors = read_native(data, source)
    if meta.get("format") != PROBE_FORMAT_TAG:
        raise CheckpointError(f"{source}: not a factor probe file (format {meta.get('format')!r})")
    probe = _probe(tensors, meta, "", source)
    if probe is None:
        raise CheckpointError(f"{source}: a factor probe file that does not name its factors")
    return probe


def _probe(tensors: dict[str, torch.Tensor], meta: dict[str, str], prefix: str, source: str) -> FactorProbe | None:
    try:
        return FactorProbe.from_tensors(tensors, meta, prefix)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: invalid factor probe ({exc})") from exc
