"""load_generator reads every format as data, and refuses what would run code or is not a generator."""

from __future__ import annotations

import ast
import io
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gani_core import CheckpointError, UnsafeCheckpointError, load_generator, save_generator
from gani_core.cli import main as cli_main
from gani_core.factors import FactorEdits, FactorProbe
from gani_core.networks import Generator

from .conftest import FIXTURES, REPO

PLACEHOLDER_SRC = b"# module source omitted from this holdout pickle\n"


def render(G: Generator, seed: int = 0) -> torch.Tensor:
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G(z)


# ---------------------------------------------------------------------------------------------------
# Formats


def test_nvlabs_pickle_config_is_read_from_init_args():
    G = load_generator(FIXTURES / "nvlabs_32px.pkl")
    cfg = G.cfg
    assert (cfg.z_dim, cfg.w_dim, cfg.img_resolution, cfg.mapping_layers) == (64, 64, 32, 2)
    assert (cfg.channel_base, cfg.channel_max, cfg.num_fp16_res, cfg.conv_clamp) == (2048, 64, 0, None)
    assert not G.training and not any(p.requires_grad for p in G.parameters())


def test_rosinality_sizes_are_inferred_from_tensors():
    G = load_generator(FIXTURES / "rosinality_32px.pt")
    assert G.cfg.channels == {4: 64, 8: 64, 16: 48, 32: 32}
    assert (G.z_dim, G.w_dim, G.cfg.mapping_layers, G.num_ws) == (64, 64, 2, 8)
    ckpt = torch.load(FIXTURES / "rosinality_32px.pt", weights_only=True)
    torch.testing.assert_close(G.mapping.w_avg, ckpt["latent_avg"])


def to_rosinality(G: Generator) -> dict:
    """Our generator in rosinality/stylegan2-pytorch's layout (the inverse of the loader's mapping)."""
    sd = {k: v.clone() for k, v in G.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for i in range(G.cfg.mapping_layers):
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    out["input.input"] = sd["synthesis.b4.const"][None]
    blur = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 16

    def conv(dst: str, src: str, noise_idx: int, up: bool) -> None:
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        out[f"noises.noise_{noise_idx}"] = sd[f"{src}.noise_const"][None, None]
        if up:
            out[f"{dst}.conv.blur.kernel"] = blur

    def torgb(dst: str, src: str, up: bool) -> None:
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1)
        if up:
            out[f"{dst}.upsample.kernel"] = blur * 4

    conv("conv1", "synthesis.b4.conv1", 0, False)
    torgb("to_rgb1", "synthesis.b4.torgb", False)
    for i, res in enumerate(G.cfg.block_resolutions[1:]):
        conv(f"convs.{2 * i}", f"synthesis.b{res}.conv0", 2 * i + 1, True)
        conv(f"convs.{2 * i + 1}", f"synthesis.b{res}.conv1", 2 * i + 2, False)
        torgb(f"to_rgbs.{i}", f"synthesis.b{res}.torgb", True)
    return {"g_ema": out, "latent_avg": sd["mapping.w_avg"]}


def test_rosinality_checkpoint_round_trip(tmp_path):
    G = load_generator("builtin-random:32")
    torch.save(to_rosinality(G), tmp_path / "g.pt")
    H = load_generator(tmp_path / "g.pt")
    assert H.cfg.channels == {r: G.cfg.channels_at(r) for r in G.cfg.block_resolutions}
    torch.testing.assert_close(render(H), render(G), atol=1e-5, rtol=1e-5)


def test_rosinality_without_latent_avg_estimates_it(tmp_path):
    G = load_generator("builtin-random:32")
    ckpt = to_rosinality(G)
    del ckpt["latent_avg"]
    torch.save(ckpt, tmp_path / "g.pt")
    H = load_generator(tmp_path / "g.pt")
    assert "w_avg" in H.cfg.extra
    # The built-in's w_avg is itself a seeded estimate: the two agree to sampling error.
    assert (H.mapping.w_avg - G.mapping.w_avg).norm() < 0.1 * G.mapping.w_avg.norm()


def test_own_format_round_trip(tmp_path):
    G = load_generator("builtin-random:32")
    path = save_generator(G, tmp_path / "sub" / "g.safetensors")
    H = load_generator(path)
    assert H.cfg == G.cfg
    assert H.label == "built-in, untrained (32 px)"
    for k, v in G.state_dict().items():
        torch.testing.assert_close(H.state_dict()[k], v, atol=0, rtol=0)
    torch.testing.assert_close(render(H), render(G), atol=0, rtol=0)
    assert H.factor_edits is None and H.factor_probe is None
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary files left behind


def test_a_probe_that_reads_other_factors_than_the_directions_is_refused(tmp_path):
    G = load_generator("builtin-random:16")
    G.factor_edits = FactorEdits(("a", "b"), torch.eye(2, G.w_dim), torch.ones(2), torch.ones(2))
    G.factor_probe = FactorProbe(["b", "a"], resolution=16)
    path = save_generator(G, tmp_path / "g.safetensors")
    with pytest.raises(CheckpointError, match=r"the factor probe reads \['b', 'a'\], but the edit directions"):
        load_generator(path)


def test_nvlabs_to_own_format_keeps_renders(tmp_path):
    G = load_generator(FIXTURES / "nvlabs_32px.pkl")
    H = load_generator(save_generator(G, tmp_path / "g.safetensors"))
    torch.testing.assert_close(render(H), render(G), atol=0, rtol=0)


def test_random_builtin_is_deterministic_and_has_trained_statistics():
    a, b = load_generator("builtin-random:32"), load_generator("builtin-random:32")
    torch.testing.assert_close(render(a), render(b), atol=0, rtol=0)
    img = render(load_generator("builtin-random"), seed=3)
    assert img.shape[-1] == 64
    assert 0.3 < img.std().item() < 0.7
    assert (img.abs() <= 1).float().mean() > 0.9
    G = load_generator("builtin-random")
    assert all(G.state_dict()[n].abs().min() > 0 for n in G.state_dict() if n.endswith("noise_strength"))


# ---------------------------------------------------------------------------------------------------
# Hostile files: refused, and nothing they carry runs


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_reduce_to_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Exploit(marker)}))
    with pytest.raises(UnsafeCheckpointError, match=r"refused an unsafe checkpoint .*(posix|os)\.system"):
        load_generator(path)
    assert not marker.exists()


def test_unknown_global_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x041+1)\x85R.")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval"):
        load_generator(path)


def test_embedded_module_source_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = b"__import__('os').system('touch PWNED')"
    payload = code + b"#" * (len(PLACEHOLDER_SRC) - len(code))
    data = (FIXTURES / "nvlabs_32px.pkl").read_bytes()
    assert PLACEHOLDER_SRC in data
    (tmp_path / "g.pkl").write_bytes(data.replace(PLACEHOLDER_SRC, payload))
    G = load_generator(tmp_path / "g.pkl")
    assert not (tmp_path / "PWNED").exists()
    torch.testing.assert_close(render(G), render(load_generator(FIXTURES / "nvlabs_32px.pkl")), atol=0, rtol=0)


def test_whole_pickled_module_is_refused(tmp_path):
    # What PTI saves per image: torch.save of the nn.Module itself.
    path = tmp_path / "model_pti.pt"
    torch.save(load_generator("builtin-random:8"), path)
    with pytest.raises(UnsafeCheckpointError, match=r"refused an unsafe checkpoint .*gani_core\.networks\.Generator"):
        load_generator(path)


def test_torch_file_with_exploit_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": _Exploit(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused an unsafe checkpoint"):
        load_generator(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# Wrong or damaged files: one clear error each


def _fake_persistent_pickle(obj_dict: dict) -> bytes:
    """A pickle that references torch_utils.persistence like NVIDIA's, built without NVIDIA's code."""
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called by our loader
        raise AssertionError

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class Record:
        def __init__(self, class_name: str) -> None:
            self.class_name = class_name

        def __reduce__(self):
            meta = {"type": "class", "version": 6, "module_src": "# none\n", "class_name": self.class_name,
                    "state": {"_parameters": {}, "_buffers": {}, "_modules": {}}}
            return (_reconstruct_persistent_obj, (meta,))

    sys.modules["torch_utils"] = types.ModuleType("torch_utils")
    sys.modules["torch_utils.persistence"] = mod
    try:
        return pickle.dumps({k: Record(v) for k, v in obj_dict.items()}, protocol=4)
    finally:
        del sys.modules["torch_utils.persistence"], sys.modules["torch_utils"]


@pytest.mark.parametrize("content,message", [
    ({"D": "Discriminator"}, r"no generator in this pickle \(it holds \['D'\]\)"),
    ({"G_ema": "Discriminator"}, "is a 'Discriminator', not a StyleGAN2 Generator"),
    ({"G_ema": "Generator"}, "no StyleGAN2 SynthesisNetwork"),
])
def test_pickles_without_a_usable_generator(tmp_path, content, message):
    path = tmp_path / "net.pkl"
    path.write_bytes(_fake_persistent_pickle(content))
    with pytest.raises(CheckpointError, match=message):
        load_generator(path)


def test_truncated_pickle(tmp_path):
    data = (FIXTURES / "nvlabs_32px.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_generator(tmp_path / "cut.pkl")


def test_truncated_torch_file(tmp_path):
    data = (FIXTURES / "rosinality_32px.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_generator(tmp_path / "cut.pt")


def test_rosinality_discriminator_is_not_a_generator(tmp_path):
    torch.save({"d": {"convs.0.0.weight": torch.zeros(1)}, "args": 1}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match=r"expected rosinality's 'g_ema', found \['args', 'd'\]"):
        load_generator(tmp_path / "d.pt")
    torch.save({"g_ema": {"convs.0.0.weight": torch.zeros(1)}}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=r"no style\.N mapping layers"):
        load_generator(tmp_path / "g.pt")


def test_mismatched_weights_are_listed(tmp_path):
    ckpt = to_rosinality(load_generator("builtin-random:32"))
    ckpt["g_ema"]["convs.1.conv.weight"] = ckpt["g_ema"]["convs.1.conv.weight"][:, :, :, :1]
    torch.save(ckpt, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=r"wrong shape: synthesis\.b8\.conv1\.weight"):
        load_generator(tmp_path / "g.pt")


def test_foreign_safetensors_and_other_files(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="without a gani generator config"):
        load_generator(tmp_path / "x.safetensors")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_generator(tmp_path / "empty.pkl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint this tool reads"):
        load_generator(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_generator(tmp_path / "missing.pkl")
    with pytest.raises(CheckpointError, match="power of two"):
        load_generator("builtin-random:48")


def test_cli_refuses_unsafe_checkpoint_in_one_line(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit(tmp_path / "pwned")))
    assert cli_main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused an unsafe checkpoint" in err
    assert not (tmp_path / "pwned").exists()


def test_legacy_torch_serialisation_is_read_too(tmp_path):
    buf = io.BytesIO()
    torch.save(to_rosinality(load_generator("builtin-random:16")), buf, _use_new_zipfile_serialization=False)
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    torch.testing.assert_close(render(load_generator(tmp_path / "old.pt")), render(load_generator("builtin-random:16")),
                               atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Module boundaries


def test_the_factors_module_imports_only_torch_and_the_standard_library():
    """gani_core.factors sits below the generator, the checkpoint formats and the domain (no import cycle)."""
    tree = ast.parse((REPO / "gani_core" / "factors.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    roots = {name.split(".")[0] for name in imported}
    assert roots - {"torch"} <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_loading_and_inverting_never_import_the_shapes_domain():
    code = ("import sys, gani_core.checkpoints, gani_core.invert, gani_core.editing; "
            "print(sorted(m for m in sys.modules if m.startswith('gani_core.shapes')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
