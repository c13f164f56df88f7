"""Weight deltas: encodings, Parquet storage, applying them to a generator (gani_core/deltas.py)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gani_core.deltas import (
    DELTAS_SCHEMA,
    EncodedDelta,
    apply_deltas,
    decode_delta,
    decode_deltas,
    delta_bytes,
    deltas_table,
    encode_delta,
    encode_deltas,
    generator_bytes,
    read_deltas_parquet,
    read_pivot,
    rows_from_table,
    write_deltas_parquet,
)
from gani_core.errors import DeltasError
from gani_core.networks import Generator


def rel_error(decoded: torch.Tensor, reference: torch.Tensor) -> float:
    ref = reference.double()
    return float((decoded.double() - ref).norm() / ref.norm())


def low_rank(shape: list[int], rank: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """A delta of exactly ``rank`` (at most) as a 2-D matrix [shape[0], prod(rest)], reshaped to ``shape``."""
    gen = torch.Generator().manual_seed(seed)
    m, n = shape[0], math.prod(shape[1:])
    a = torch.randn([m, rank], generator=gen)
    b = torch.randn([rank, n], generator=gen)
    return (scale * (a @ b) / math.sqrt(rank * n)).reshape(shape)


@pytest.fixture(scope="module")
def ws(G: Generator) -> torch.Tensor:
    z = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return G.mapping(z)


def render(G: Generator, ws: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return G.synthesis(ws, noise_mode="const")


def tuning_deltas(G: Generator, seed: int) -> dict[str, torch.Tensor]:
    """Deltas shaped like a tuning's: rank-8 structure plus 1% full-rank noise, 5% of each weight's std."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, (name, p) in enumerate(G.tunable_layers().items()):
        d = low_rank(list(p.shape), 8, seed + i)
        d = d + 0.01 * float(d.std()) * torch.randn(p.shape, generator=gen)
        out[name] = 0.05 * float(p.std()) * d / float(d.std())
    return out


# --------------------------------------------------------------------------------------------------------
# Encodings.


def test_fp32_round_trip_is_exact() -> None:
    delta = torch.randn([16, 8, 3, 3], generator=torch.Generator().manual_seed(0))
    enc = encode_delta("synthesis.b8.conv0.weight", delta, encoding="fp32")
    assert (enc.encoding, enc.rank, enc.dtype, enc.shape) == ("fp32", 0, "float32", [16, 8, 3, 3])
    assert len(enc.payload) == 4 * delta.numel()
    assert torch.equal(decode_delta(enc), delta)
    assert enc.rel_error == 0.0


def test_fp16_round_trip_is_within_half_precision() -> None:
    delta = 1e-3 * torch.randn([16, 8, 3, 3], generator=torch.Generator().manual_seed(0))
    enc = encode_delta("synthesis.b8.conv0.weight", delta, encoding="fp16")
    decoded = decode_delta(enc)
    assert enc.encoding == "fp16" and len(enc.payload) == 2 * delta.numel()
    assert decoded.dtype == torch.float32 and decoded.shape == delta.shape
    # Rounding to fp16 is within half an ulp: 2^-11 relative for normal values, 2^-25 absolute for the
    # subnormal ones (below 6.1e-5, some of these entries).
    assert torch.all((decoded - delta).abs() <= torch.clamp(delta.abs() * 2.0**-11, min=2.0**-25))
    assert enc.rel_error == pytest.approx(rel_error(decoded, delta), rel=1e-9)
    assert 0.0 < enc.rel_error < 3e-4


def test_fp16_clamps_to_half_range_and_records_the_error() -> None:
    delta = torch.tensor([1.0, -1e6, 2e5])
    enc = encode_delta("synthesis.b4.conv1.bias", delta, encoding="fp16")
    assert decode_delta(enc).tolist() == [1.0, -65504.0, 65504.0]
    assert enc.rel_error == pytest.approx(rel_error(decode_delta(enc), delta), rel=1e-9)


def test_exactly_low_rank_delta_comes_back_at_its_rank() -> None:
    delta = low_rank([128, 128, 3, 3], 4, seed=0, scale=0.01)
    enc = encode_delta("synthesis.b16.conv0.weight", delta)
    assert (enc.encoding, enc.rank) == ("lowrank", 4)
    assert len(enc.payload) == 2 * 4 * (128 + 128 * 9)
    measured = rel_error(decode_delta(enc), delta)
    assert measured <= 1e-3
    assert enc.rel_error == pytest.approx(measured, rel=1e-9)


def test_lowrank_meets_tolerance_at_the_smallest_rank() -> None:
    gen = torch.Generator().manual_seed(0)
    delta = low_rank([64, 576], 16, seed=1) + 0.002 * torch.randn([64, 576], generator=gen)
    enc = encode_delta("synthesis.b8.conv0.weight", delta, max_rel_error=0.02)
    assert enc.encoding == "lowrank"
    assert rel_error(decode_delta(enc), delta) <= 0.02
    # One rank fewer misses the tolerance even before rounding the factors (the truncated SVD's error,
    # sqrt of the tail sum of squared singular values, is the least any rank-k matrix achieves).
    s = torch.linalg.svdvals(delta.double())
    k = enc.rank - 1
    assert float(s[k:].square().sum().sqrt() / s.square().sum().sqrt()) > 0.02


def test_full_rank_delta_falls_back_to_fp16_within_tolerance() -> None:
    delta = torch.randn([128, 128, 3, 3], generator=torch.Generator().manual_seed(0))
    enc = encode_delta("synthesis.b16.conv1.weight", delta, max_rel_error=0.02)
    # Random noise needs nearly full rank for 2%: factors would outweigh the dense fp16 tensor.
    assert (enc.encoding, enc.rank) == ("fp16", 0)
    assert len(enc.payload) == 2 * delta.numel()
    assert rel_error(decode_delta(enc), delta) <= 0.02


def test_max_rank_caps_the_rank_and_records_the_error() -> None:
    delta = low_rank([64, 576], 16, seed=0)
    enc = encode_delta("synthesis.b8.conv0.weight", delta, max_rank=4)
    assert (enc.encoding, enc.rank) == ("lowrank", 4)
    assert enc.rel_error == pytest.approx(rel_error(decode_delta(enc), delta), rel=1e-9)
    assert enc.rel_error > 0.02


def test_deltas_too_small_for_fp16_are_stored_fp32() -> None:
    delta = 1e-9 * torch.randn([32, 32], generator=torch.Generator().manual_seed(0))
    enc = encode_delta("synthesis.b8.torgb.weight", delta)
    assert enc.encoding == "fp32"
    assert rel_error(decode_delta(enc), delta) == 0.0


def test_zero_delta_is_rank_zero_with_empty_payload() -> None:
    enc = encode_delta("synthesis.b8.conv0.weight", torch.zeros([16, 8, 3, 3]))
    assert (enc.encoding, enc.rank, enc.payload, enc.rel_error) == ("lowrank", 0, b"", 0.0)
    assert torch.equal(decode_delta(enc), torch.zeros([16, 8, 3, 3]))


def test_one_dimensional_delta_is_stored_fp16() -> None:
    delta = torch.randn([128], generator=torch.Generator().manual_seed(0))
    enc = encode_delta("synthesis.b16.conv0.bias", delta)
    assert (enc.encoding, enc.rank, enc.shape) == ("fp16", 0, [128])
    assert rel_error(decode_delta(enc), delta) < 3e-4


def test_dtype_name_is_the_input_dtype() -> None:
    delta = torch.randn([8, 8], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    enc = encode_delta("synthesis.b8.conv0.affine.weight", delta, encoding="fp32")
    assert enc.dtype == "float64"
    assert decode_delta(enc).dtype == torch.float32


def test_non_finite_delta_is_refused() -> None:
    with pytest.raises(ValueError, match=r"synthesis\.b8\.conv0\.weight.*NaN"):
        encode_delta("synthesis.b8.conv0.weight", torch.tensor([[1.0, float("nan")]]))


def test_truncated_payload_is_a_value_error_naming_the_layer() -> None:
    enc = encode_delta("synthesis.b8.conv0.weight", low_rank([16, 72], 2, seed=0))
    bad = EncodedDelta(enc.layer, enc.shape, enc.dtype, enc.encoding, enc.rank, enc.rel_error, enc.payload[:-2])
    with pytest.raises(ValueError, match=r"synthesis\.b8\.conv0\.weight"):
        decode_delta(bad)


def test_decode_deltas_refuses_rows_of_two_images() -> None:
    rows = encode_deltas({"synthesis.b4.conv1.weight": torch.ones([4, 4])})
    with pytest.raises(ValueError, match="appears twice"):
        decode_deltas(rows + rows)


# --------------------------------------------------------------------------------------------------------
# Parquet.


@pytest.fixture(scope="module")
def two_images(G: Generator) -> tuple[pa.Table, dict[str, list[EncodedDelta]]]:
    """A deltas table of two images and the rows it was made of."""
    rows = {"img-a": encode_deltas(tuning_deltas(G, seed=0)), "img-b": encode_deltas(tuning_deltas(G, seed=100))}
    table = pa.concat_tables([deltas_table(image_id, r) for image_id, r in rows.items()])
    return table, rows


def test_schema_has_the_contract_columns() -> None:
    table = deltas_table("img-a", encode_deltas({"synthesis.b4.conv1.weight": torch.ones([4, 4])}))
    assert table.schema == DELTAS_SCHEMA
    assert [(f.name, f.type) for f in DELTAS_SCHEMA] == [
        ("image_id", pa.string()), ("layer", pa.string()), ("shape", pa.list_(pa.int64())),
        ("dtype", pa.string()), ("encoding", pa.string()), ("rank", pa.int32()), ("rel_error", pa.float64()),
        ("payload", pa.binary()),
    ]


def test_parquet_round_trip_is_bitwise(two_images: tuple[pa.Table, dict], tmp_path: Path) -> None:
    table, rows = two_images
    dest = tmp_path / "deltas" / "run.parquet"
    write_deltas_parquet(table, dest)
    back = read_deltas_parquet(dest)
    assert back.schema.names == DELTAS_SCHEMA.names
    assert back.num_rows == sum(len(r) for r in rows.values())
    assert pq.ParquetFile(dest).metadata.row_group(0).column(0).compression == "ZSTD"
    for image_id, written in rows.items():
        read = rows_from_table(back, image_id=image_id)
        assert read == written
        before, after = decode_deltas(written), decode_deltas(read)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["run.parquet"]   # no temporary file left


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not deltas"])
def test_an_unreadable_deltas_file_is_a_deltas_error_naming_the_file(two_images, tmp_path: Path, damage) -> None:
    table, _ = two_images
    dest = tmp_path / "deltas" / "a.gani.parquet"
    size = write_deltas_parquet(table, dest, torch.zeros(4, 8))
    assert size == dest.stat().st_size
    if damage == "garbage":
        dest.write_bytes(b"\x00 not parquet at all")
    elif damage == "truncated":
        dest.write_bytes(dest.read_bytes()[: size // 2])
    else:
        pq.write_table(pa.table({"x": [1]}), dest)
    for read in (read_deltas_parquet, read_pivot):
        if read is read_pivot and damage == "not deltas":
            continue                    # its schema is Parquet's: no pivot, the file's columns unread
        with pytest.raises(DeltasError) as info:
            read(dest)
        message = str(info.value)
        assert message.startswith(f"{dest}: not a readable deltas file (") and "\n" not in message
        assert "<Buffer>" not in message
    with pytest.raises(FileNotFoundError):
        read_deltas_parquet(tmp_path / "deltas" / "missing.parquet")


def test_parquet_accepts_fsspec_uris(tmp_path: Path) -> None:
    rows = encode_deltas({"synthesis.b4.conv1.weight": low_rank([16, 72], 2, seed=0)})
    table = deltas_table("img-a", rows)
    write_deltas_parquet(table, f"file://{tmp_path}/d.parquet")
    assert rows_from_table(read_deltas_parquet(tmp_path / "d.parquet")) == rows
    memory = fsspec.filesystem("memory")
    try:
        write_deltas_parquet(table, "memory://gani-test/deltas/d.parquet")
        assert rows_from_table(read_deltas_parquet("memory://gani-test/deltas/d.parquet")) == rows
        assert memory.ls("/gani-test/deltas", detail=False) == ["/gani-test/deltas/d.parquet"]
    finally:
        memory.rm("/gani-test", recursive=True)   # the memory filesystem is process-wide


def test_failed_write_keeps_the_previous_file_and_leaves_no_partial_file(
    two_images: tuple[pa.Table, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = deltas_table("img-old", encode_deltas({"synthesis.b4.conv1.weight": torch.ones([4, 4])}))
    dest = tmp_path / "d.parquet"
    write_deltas_parquet(old, dest)
    old_bytes = dest.read_bytes()

    def fail_midway(table: pa.Table, where, **kwargs) -> None:
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_deltas_parquet(two_images[0], dest)
    assert dest.read_bytes() == old_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["d.parquet"]


# --------------------------------------------------------------------------------------------------------
# Applying deltas to a generator.


def test_apply_deltas_returns_a_tuned_copy(G: Generator, ws: torch.Tensor) -> None:
    before = {k: v.clone() for k, v in G.state_dict().items()}
    deltas = tuning_deltas(G, seed=0)
    tuned = apply_deltas(G, deltas)
    assert tuned is not G
    assert all(torch.equal(v, before[k]) for k, v in G.state_dict().items())

    manual = copy.deepcopy(G)
    with torch.no_grad():
        for name, p in manual.named_parameters():
            if name in deltas:
                p += deltas[name]
    img_G, img_tuned = render(G, ws), render(tuned, ws)
    assert (img_tuned - img_G).abs().max() > 1e-2
    assert torch.equal(img_tuned, render(manual, ws))


def test_apply_deltas_scales_the_delta(G: Generator) -> None:
    name = "synthesis.b16.conv0.weight"
    delta = tuning_deltas(G, seed=0)[name]
    tuned = apply_deltas(G, {name: delta}, scale=0.5)
    assert torch.equal(tuned.state_dict()[name], G.state_dict()[name] + 0.5 * delta)


def test_lowrank_deltas_render_close_to_uncompressed(G: Generator, ws: torch.Tensor) -> None:
    deltas = tuning_deltas(G, seed=0)
    rows = encode_deltas(deltas, max_rel_error=0.02)
    assert [r.rank for r in rows if r.encoding == "lowrank"] == [8] * 7   # every conv, not the ToRGBs
    assert all(r.rel_error <= 0.02 for r in rows)
    img_G = render(G, ws)
    img_exact = render(apply_deltas(G, deltas), ws)
    img_decoded = render(apply_deltas(G, decode_deltas(rows)), ws)
    change = (img_exact - img_G).abs().max()
    compression = (img_decoded - img_exact).abs().max()
    # Measured: change 0.164, compression error 0.0015 (builtin-random:32, seeds above; rel_error 0.0096 per conv).
    # A relative error e in the weights' change should move the render by about e times the render's change.
    assert compression <= 0.05 * change


def test_apply_deltas_rejects_unknown_layer(G: Generator) -> None:
    with pytest.raises(ValueError, match=r"synthesis\.b99\.conv0\.weight"):
        apply_deltas(G, {"synthesis.b99.conv0.weight": torch.zeros([1])})


def test_apply_deltas_rejects_wrong_shape(G: Generator) -> None:
    with pytest.raises(ValueError, match=r"synthesis\.b16\.conv0\.weight.*\[128, 128, 1, 1\].*\[128, 128, 3, 3\]"):
        apply_deltas(G, {"synthesis.b16.conv0.weight": torch.zeros([128, 128, 1, 1])})


def saved_weight_bytes(path: Path) -> int:
    """Bytes of the tensors in a .safetensors file: the file less its 8-byte header length and JSON header."""
    data = path.read_bytes()
    return len(data) - 8 - int.from_bytes(data[:8], "little")


def test_generator_bytes_is_the_size_of_its_saved_float32_weights(G: Generator, g32_file: Path) -> None:
    # save_generator writes every state-dict tensor in float32 and nothing else for builtin-random
    # (no factor edit directions): the file's data section is what generator_bytes must count.
    assert generator_bytes(G) == saved_weight_bytes(g32_file)


def test_rank4_deltas_are_a_small_fraction_of_the_generator(G: Generator, g32_file: Path) -> None:
    deltas = {name: low_rank(list(p.shape), 4, seed=i, scale=0.01)
              for i, (name, p) in enumerate(G.tunable_layers().items())}
    rows = encode_deltas(deltas)
    # Convs [128, 128, 3, 3] factor at rank 4; ToRGBs [3, 128, 1, 1] are rank 3 at most and smaller dense.
    assert {r.layer: r.rank for r in rows if r.encoding == "lowrank"} == {
        name: 4 for name in deltas if not name.endswith("torgb.weight")}
    # By hand: fp16 factors U [128, 4] and V [4, 128 * 9] per conv, 2 bytes a number; ToRGBs dense fp16.
    convs = [n for n in deltas if not n.endswith("torgb.weight")]
    torgbs = [n for n in deltas if n.endswith("torgb.weight")]
    assert (len(convs), len(torgbs)) == (7, 4)
    assert delta_bytes(rows) == 7 * 2 * 4 * (128 + 128 * 9) + 4 * 2 * (3 * 128) == 74_752
    # 74,752 of the 5,149,516 bytes of weights save_generator writes (1.45%).
    assert delta_bytes(rows) < 0.02 * saved_weight_bytes(g32_file)
