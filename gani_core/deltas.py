"""Compact storage of per-image weight deltas: low-rank / fp16 encoding, Parquet tables, applying them to G.

Per-image tuning changes a few synthesis weights; storing the whole tuned generator per image (as PTI
does, 127 MB at 1024 px) is what users complain about. Here a tuned image is stored as one row per changed
parameter: the delta ``tuned - original``, encoded as

- ``"fp32"``: the raw tensor, exact (for a float32 input);
- ``"fp16"``: the raw tensor in half precision (relative error about 1e-4 for well-scaled deltas);
- ``"lowrank"``: two fp16 factors of a truncated SVD of the delta reshaped to 2-D, at the smallest rank
  whose measured error is within ``max_rel_error``; used only when it is smaller than ``"fp16"``.

Storage contract (a row of ``DELTAS_SCHEMA``; ``m = shape[0]``, ``n = prod(shape[1:])``, ``r = rank``;
every number little-endian, every array in C / row-major order):

================  =========================================  ==========================================
encoding          payload                                    decoded tensor
================  =========================================  ==========================================
``fp32``          ``prod(shape)`` float32 (4 bytes each)     ``payload.reshape(shape)``
``fp16``          ``prod(shape)`` float16 (2 bytes each)     ``payload.reshape(shape)`` as float32
``lowrank``       ``U [m, r]`` float16 then ``V [r, n]``     ``(U @ V).reshape(shape)`` as float32;
                  float16: ``2 * r * (m + n)`` bytes          ``r = 0`` (empty payload) decodes to zeros
================  =========================================  ==========================================

``shape``, ``rank``, the original ``dtype`` and the measured ``rel_error`` (relative Frobenius error of the
decoded tensor against the delta that was encoded) live in the row, not in the payload, so a payload is
nothing but the numbers.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from gani_core import storage
from gani_core.errors import DeltasError, reason
from gani_core.networks import Generator

Encoding = Literal["fp32", "fp16", "lowrank"]
ENCODINGS: tuple[str, ...] = ("fp32", "fp16", "lowrank")

FP16_MAX = 65504.0  # largest finite float16; values beyond it are clamped rather than becoming inf

DELTAS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),        # which image the tuned generator reproduces
    pa.field("layer", pa.string(), nullable=False),           # generator state-dict name of the parameter
    pa.field("shape", pa.list_(pa.int64()), nullable=False),  # the parameter's shape
    pa.field("dtype", pa.string(), nullable=False),           # dtype of the delta before encoding ("float32")
    pa.field("encoding", pa.string(), nullable=False),        # "fp32" | "fp16" | "lowrank"
    pa.field("rank", pa.int32(), nullable=False),             # factor rank for "lowrank", else 0
    pa.field("rel_error", pa.float64(), nullable=False),      # ||decoded - delta||_F / ||delta||_F
    pa.field("payload", pa.binary(), nullable=False),         # the numbers (layout in the module docstring)
])

# Small columns get dictionaries and statistics; the payload gets neither: its values are unique, and
# min/max statistics of multi-megabyte binaries would copy them into the footer.
_SMALL_COLUMNS = ["image_id", "layer", "dtype", "encoding"]

@dataclass(frozen=True)
class EncodedDelta:
    """One encoded parameter delta: a row of ``DELTAS_SCHEMA`` without its ``image_id``."""

    layer: str          # generator state-dict name, e.g. "synthesis.b16.conv0.weight"
    shape: list[int]    # shape of the parameter, e.g. [O, I, 3, 3]
    dtype: str          # dtype name of the delta that was encoded, e.g. "float32"
    encoding: str       # "fp32" | "fp16" | "lowrank"
    rank: int           # number of factor columns for "lowrank" (0: the delta is zero); 0 otherwise
    rel_error: float    # relative Frobenius error of decode_delta(self) against the encoded delta
    payload: bytes      # the numbers, laid out as the module docstring says

    @property
    def nbytes(self) -> int:
        """Size of the payload in bytes."""
        return len(self.payload)


# --------------------------------------------------------------------------------------------------------
# Encoding and decoding.


def _matrix_dims(shape: list[int]) -> tuple[int, int]:
    """The 2-D view [m, n] a low-rank delta is factored in: output channels by everything else."""
    return shape[0], math.prod(shape[1:])


def _expected_payload_bytes(encoding: str, shape: list[int], rank: int) -> int:
    if encoding == "fp32":
        return 4 * math.prod(shape)
    if encoding == "fp16":
        return 2 * math.prod(shape)
    m, n = _matrix_dims(shape)
    return 2 * rank * (m + n)


def _to_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)


def _fp16_bytes(x: torch.Tensor) -> bytes:
    # Explicit '<f2' so the payload is little-endian whatever the machine's byte order.
    return np.ascontiguousarray(_to_fp16(x).cpu().numpy(), dtype="<f2").tobytes()


def _rel_error(decoded: torch.Tensor, reference: torch.Tensor) -> float:
    """||decoded - reference||_F / ||reference||_F in float64; 0 when both are zero, inf if only ref is."""
    ref = reference.to(torch.float64)
    diff = float(torch.linalg.vector_norm(decoded.to(torch.float64) - ref))
    norm = float(torch.linalg.vector_norm(ref))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / norm


def _svd(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``d = U diag(S) Vh`` of a float64 [m, n] matrix.

    Conv deltas are very wide ([O, 9 I]): a QR of the long side first, then the SVD of the small square
    triangular factor, was about 4x faster on the CPU than ``torch.linalg.svd`` of the whole matrix
    (512 x 4608: 0.32 s against 1.3 s on one thread) and is as accurate (Householder QR is backward stable).
    """
    m, n = d.shape
    if n > m:
        q, r = torch.linalg.qr(d.T)                       # d.T = q r: q [n, m], r [m, m]
        u, s, wh = torch.linalg.svd(r.T)                  # d = r.T q.T = u s (wh q.T)
        return u, s, wh @ q.T
    q, r = torch.linalg.qr(d)                             # d = q r: q [m, n], r [n, n]
    u, s, vh = torch.linalg.svd(r)
    return q @ u, s, vh


def _lowrank_factors(d: torch.Tensor, max_rel_error: float, max_rank: int | None
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """fp16 factors ``U [m, r]``, ``V [r, n]`` of the float64 matrix ``d``, or None to store it dense.

    The rank is the smallest whose error, measured with the factors already rounded to fp16, is within
    ``max_rel_error``; ``max_rank`` caps it (then the error may be larger, and the row records it). None
    when no rank that beats dense fp16 in bytes reaches the tolerance.
    """
    m, n = d.shape
    norm = float(torch.linalg.vector_norm(d))
    if norm == 0.0:
        return torch.zeros([m, 0], dtype=torch.float16), torch.zeros([0, n], dtype=torch.float16)
    u, s, vh = _svd(d)
    # Largest rank whose two factors are strictly smaller than the dense fp16 tensor: r (m + n) < m n.
    r_break = (m * n - 1) // (m + n)
    r_hi = min(len(s), r_break)
    capped = max_rank is not None and max_rank < r_hi
    if capped:
        r_hi = max_rank
    if r_hi < 1:
        return None

    # Fold each singular value into both factors, split so that the two factors' columns have the same
    # largest magnitude: that keeps both far from fp16's overflow (65504) and underflow (6e-8), which a
    # plain sqrt split does not when n >> m (the right singular vectors' entries are ~sqrt(m / n) smaller).
    s_hi = s[:r_hi]
    u_amax = u[:, :r_hi].abs().amax(dim=0).clamp_min(1e-300)
    v_amax = vh[:r_hi].abs().amax(dim=1).clamp_min(1e-300)
    balance = (v_amax / u_amax).sqrt()
    root_s = s_hi.sqrt()
    U = _to_fp16(u[:, :r_hi] * (root_s * balance)).to(torch.float64)
    V = _to_fp16(vh[:r_hi] * (root_s / balance)[:, None]).to(torch.float64)

    # By Eckart-Young no rank-r matrix (rounded factors included) beats the SVD tail at rank r, so the
    # smallest rank whose tail is within tolerance is where the search starts; rounding to fp16 can only
    # push the answer up, one rank-1 residual update at a time.
    tail = torch.flip(torch.cumsum(torch.flip(s**2, [0]), 0), [0]).sqrt() / norm   # tail[r] = err at rank r
    tail = torch.cat([tail, tail.new_zeros(1)])
    within = (tail[1 : r_hi + 1] <= max_rel_error).nonzero()
    r = int(within[0]) + 1 if len(within) else r_hi
    residual = d - U[:, :r] @ V[:r]
    err = float(torch.linalg.vector_norm(residual)) / norm
    while err > max_rel_error and r < r_hi:
        residual -= torch.outer(U[:, r], V[r])
        r += 1
        err = float(torch.linalg.vector_norm(residual)) / norm
    if err > max_rel_error and not capped:
        return None
    return U[:, :r].to(torch.float16), V[:r].to(torch.float16)


def encode_delta(
    name: str,
    delta: torch.Tensor,
    encoding: Encoding = "lowrank",
    max_rel_error: float = 0.02,
    max_rank: int | None = None,
) -> EncodedDelta:
    """Encode one parameter delta (any shape, any float dtype, any device) for storage.

    ``encoding="fp32"`` / ``"fp16"`` store the tensor as it is, in that precision (fp16 clamps to
    +-65504), and record the error that costs. ``encoding="lowrank"`` reshapes the delta to
    ``[shape[0], prod(shape[1:])]`` and stores fp16 factors at the smallest rank whose measured relative
    Frobenius error is at most ``max_rel_error`` (``max_rank``, if given, caps the rank: the caller's byte
    budget wins and ``rel_error`` says what it cost). When the factors would not be smaller than the dense
    fp16 tensor, or no rank reaches the tolerance, the delta is stored as ``"fp16"``, and as ``"fp32"``
    if even fp16 misses the tolerance (deltas too small or too large for half precision). 0-d and 1-D
    deltas (biases) have no low-rank form and go the same way. A zero delta is ``"lowrank"`` at rank 0
    with an empty payload.

    Raises ValueError for an unknown encoding, a bad ``max_rel_error`` / ``max_rank``, or a delta with
    NaN / inf entries (a diverged tuning must not be stored as if it were a result).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown delta encoding {encoding!r} for layer {name!r}; expected one of {ENCODINGS}")
    if not (max_rel_error >= 0.0 and math.isfinite(max_rel_error)):
        raise ValueError(f"max_rel_error must be a finite number >= 0, got {max_rel_error!r}")
    if max_rank is not None and max_rank < 1:
        raise ValueError(f"max_rank must be None or >= 1, got {max_rank!r}")
    if not delta.is_floating_point():
        raise ValueError(f"delta of layer {name!r} has dtype {delta.dtype}; expected a floating-point tensor")
    shape = [int(x) for x in delta.shape]
    dtype = str(delta.dtype).removeprefix("torch.")
    # Everything below runs in float64 on the CPU: the SVD and the error measurements must not be limited
    # by the precision of the tensor they judge.
    d = delta.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(d).all()):
        raise ValueError(f"delta of layer {name!r} has NaN or inf entries; refusing to encode it")

    def finish(enc: str, rank: int, payload: bytes) -> EncodedDelta:
        row = EncodedDelta(name, shape, dtype, enc, rank, 0.0, payload)
        return EncodedDelta(name, shape, dtype, enc, rank, _rel_error(decode_delta(row), d), payload)

    if encoding == "fp32":
        return finish("fp32", 0, np.ascontiguousarray(d.numpy(), dtype="<f4").tobytes())
    if encoding == "lowrank" and d.dim() >= 2:
        factors = _lowrank_factors(d.reshape(_matrix_dims(shape)), max_rel_error, max_rank)
        if factors is not None:
            U, V = factors
            return finish("lowrank", U.shape[1], _fp16_bytes(U) + _fp16_bytes(V))
    row = finish("fp16", 0, _fp16_bytes(d))
    if encoding == "lowrank" and row.rel_error > max_rel_error:
        return finish("fp32", 0, np.ascontiguousarray(d.numpy(), dtype="<f4").tobytes())
    return row


def decode_delta(enc: EncodedDelta) -> torch.Tensor:
    """The delta a row stores: float32, shape ``enc.shape``, on the CPU.

    Raises ValueError naming the layer if the encoding is unknown or the payload size does not match the
    shape and rank (a truncated or mislabelled row).
    """
    if enc.encoding not in ENCODINGS:
        raise ValueError(f"layer {enc.layer!r}: unknown delta encoding {enc.encoding!r}")
    expected = _expected_payload_bytes(enc.encoding, enc.shape, enc.rank)
    if len(enc.payload) != expected:
        raise ValueError(f"layer {enc.layer!r}: {enc.encoding} payload of shape {enc.shape} and rank {enc.rank} "
                         f"should be {expected} bytes, got {len(enc.payload)}")
    if enc.encoding == "fp32":
        return torch.from_numpy(np.frombuffer(enc.payload, dtype="<f4").astype(np.float32)).reshape(enc.shape)
    values = torch.from_numpy(np.frombuffer(enc.payload, dtype="<f2").astype(np.float32))
    if enc.encoding == "fp16":
        return values.reshape(enc.shape)
    m, n = _matrix_dims(enc.shape)
    U = values[: m * enc.rank].reshape(m, enc.rank).to(torch.float64)
    V = values[m * enc.rank :].reshape(enc.rank, n).to(torch.float64)
    # The product is taken in float64 so the reader gets exactly what rel_error was measured on.
    return (U @ V).to(torch.float32).reshape(enc.shape)


def encode_deltas(
    deltas: Mapping[str, torch.Tensor],
    *,
    encoding: Encoding = "lowrank",
    max_rel_error: float = 0.02,
    max_rank: int | None = None,
) -> list[EncodedDelta]:
    """``encode_delta`` for every ``{layer name: delta}``, in the mapping's order."""
    return [encode_delta(name, d, encoding=encoding, max_rel_error=max_rel_error, max_rank=max_rank)
            for name, d in deltas.items()]


def decode_deltas(rows: Iterable[EncodedDelta]) -> dict[str, torch.Tensor]:
    """``{layer name: float32 delta}`` of the rows of ONE image; a repeated layer name is a ValueError
    (usually a table of several images read without filtering by ``image_id``)."""
    out: dict[str, torch.Tensor] = {}
    for row in rows:
        if row.layer in out:
            raise ValueError(f"layer {row.layer!r} appears twice; decode the rows of one image at a time "
                             "(rows_from_table(table, image_id=...))")
        out[row.layer] = decode_delta(row)
    return out


def delta_bytes(rows: Iterable[EncodedDelta]) -> int:
    """Total payload size of the rows in bytes: the ``delta_bytes`` of an image in metrics.parquet."""
    return sum(len(row.payload) for row in rows)


# --------------------------------------------------------------------------------------------------------
# Arrow tables and Parquet files.


def deltas_table(image_id: str, rows: Iterable[EncodedDelta]) -> pa.Table:
    """The rows of one image as a table of ``DELTAS_SCHEMA`` (concatenate tables for several images)."""
    if not image_id:
        raise ValueError("image_id must be a non-empty string")
    rows = list(rows)
    columns = {
        "image_id": [image_id] * len(rows),
        "layer": [r.layer for r in rows],
        "shape": [list(r.shape) for r in rows],
        "dtype": [r.dtype for r in rows],
        "encoding": [r.encoding for r in rows],
        "rank": [r.rank for r in rows],
        "rel_error": [float(r.rel_error) for r in rows],
        "payload": [r.payload for r in rows],
    }
    return pa.Table.from_pydict(columns, schema=DELTAS_SCHEMA)


def _check_schema(table: pa.Table, source: str) -> None:
    missing = [f.name for f in DELTAS_SCHEMA if f.name not in table.schema.names]
    if missing:
        raise ValueError(f"{source}: not a deltas table, missing column(s) {missing}")


def rows_from_table(table: pa.Table, image_id: str | None = None) -> list[EncodedDelta]:
    """The rows of ``table`` (only those of ``image_id`` when given) as ``EncodedDelta``s, in table order."""
    _check_schema(table, "rows_from_table")
    if image_id is not None:
        table = table.filter(pc.equal(table["image_id"], image_id))
    cols = {name: table[name].to_pylist() for name in ("layer", "shape", "dtype", "encoding", "rank",
                                                       "rel_error", "payload")}
    return [
        EncodedDelta(layer=layer, shape=[int(x) for x in shape], dtype=dtype, encoding=encoding, rank=int(rank),
                     rel_error=float(rel_error), payload=bytes(payload))
        for layer, shape, dtype, encoding, rank, rel_error, payload in zip(
            cols["layer"], cols["shape"], cols["dtype"], cols["encoding"], cols["rank"], cols["rel_error"],
            cols["payload"], strict=True)
    ]


# The pivot latent of a result, in its deltas file's metadata: float32 little-endian bytes and their shape. Binary,
# not text: a row stays small (it held the pivot as JSON, about 21 KB at 32 px, 50 KB at 1024 px, read by every resume).
PIVOT_KEY, PIVOT_SHAPE_KEY = b"w_pivot", b"w_pivot_shape"


def write_deltas_parquet(table: pa.Table, uri: str | os.PathLike, w_pivot: torch.Tensor | None = None) -> int:
    """Write a deltas table as one zstd Parquet file at ``uri`` (a path or fsspec URI), atomically; with the
    result's pivot latent ``w_pivot`` in its metadata (:func:`read_pivot`). The file's size in bytes (a row records
    it: a resume keeps a result whose file the listing shows at that size)."""
    _check_schema(table, "write_deltas_parquet")
    if w_pivot is not None:
        pivot = w_pivot.detach().to("cpu", torch.float32).contiguous()
        table = table.replace_schema_metadata({
            **(table.schema.metadata or {}), PIVOT_KEY: pivot.numpy().astype("<f4").tobytes(),
            PIVOT_SHAPE_KEY: ",".join(map(str, pivot.shape)).encode()})
    return storage.write_parquet(os.fspath(uri), table, use_dictionary=_SMALL_COLUMNS,
                                 write_statistics=_SMALL_COLUMNS)


def read_pivot(uri: str | os.PathLike) -> torch.Tensor | None:
    """The pivot latent stored with a result's deltas (:func:`write_deltas_parquet`), or None when the file has none
    (written before issue 18). Raises DeltasError naming the file when it is not a readable Parquet file."""
    data = storage.read_bytes(os.fspath(uri))
    try:
        return pivot_from_metadata(pq.read_schema(pa.BufferReader(data)).metadata)
    except (pa.ArrowException, ValueError) as exc:
        raise _unreadable(uri, exc) from None


def pivot_from_metadata(metadata: dict[bytes, bytes] | None) -> torch.Tensor | None:
    """The pivot latent in a deltas file's schema metadata (:func:`write_deltas_parquet`), or None when it has none
    (written before issue 18)."""
    metadata = metadata or {}
    if PIVOT_KEY not in metadata:
        return None
    shape = [int(n) for n in metadata[PIVOT_SHAPE_KEY].decode().split(",")]
    return torch.frombuffer(bytearray(metadata[PIVOT_KEY]), dtype=torch.float32).reshape(shape).clone()


def read_deltas_parquet(uri: str | os.PathLike) -> pa.Table:
    """The deltas table of the file ``uri``. Raises DeltasError naming the file when it is not a readable deltas
    table (truncated, overwritten); FileNotFoundError when it is missing."""
    data = storage.read_bytes(os.fspath(uri))
    try:
        table = pq.read_table(pa.BufferReader(data))
        _check_schema(table, os.fspath(uri))
    except (pa.ArrowException, ValueError) as exc:
        raise _unreadable(uri, exc) from None
    return table


def _unreadable(uri: str | os.PathLike, exc: Exception) -> DeltasError:
    why = reason(exc).replace(f"{os.fspath(uri)}: ", "")
    return DeltasError(f"{os.fspath(uri)}: not a readable deltas file ({why}); rerun the command that made the "
                       "result to compute it again")


def apply_deltas(G: Generator, deltas: Mapping[str, torch.Tensor], scale: float = 1.0) -> Generator:
    """A copy of ``G`` with ``param += scale * delta`` for every ``{parameter name: delta}``; ``G`` itself
    is never modified.

    Deltas are cast to each parameter's dtype and device. Every delta is checked before anything is
    copied: a name that is not a parameter of ``G`` or a shape that differs from the parameter's raises
    ValueError naming the layer (and both shapes), a delta with NaN / inf entries too.
    """
    params = dict(G.named_parameters())
    for name, delta in deltas.items():
        if name not in params:
            raise ValueError(f"unknown layer {name!r}: not a parameter of the generator "
                             f"(e.g. {next(iter(G.tunable_layers()), '')!r})")
        if tuple(delta.shape) != tuple(params[name].shape):
            raise ValueError(f"layer {name!r}: delta shape {list(delta.shape)} does not match "
                             f"parameter shape {list(params[name].shape)}")
        if not bool(torch.isfinite(delta).all()):
            raise ValueError(f"layer {name!r}: delta has NaN or inf entries")
    tuned = copy.deepcopy(G)
    tuned_params = dict(tuned.named_parameters())
    with torch.no_grad():
        for name, delta in deltas.items():
            p = tuned_params[name]
            p.add_(delta.to(device=p.device, dtype=p.dtype), alpha=scale)
    return tuned


def generator_bytes(G: Generator) -> int:
    """Bytes of ``G`` stored in float32: every parameter and persistent buffer (its state dict) at 4 bytes
    per element, whatever dtype it is held in. The reference ``delta_bytes`` are compared with."""
    return 4 * sum(v.numel() for v in G.state_dict().values())
