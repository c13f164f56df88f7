"""`gani export`'s formats: rosinality's .pt (what e4e, HyperStyle, ReStyle and StyleCLIP load), the pivot latent as
.npy, --all (resumable), and the bad input each refused in one line with nothing written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gani_core import load_generator
from gani_core.checkpoints.rosinality import clamp_note, rosinality_state, save_rosinality
from gani_core.cli import build_parser, export
from gani_core.cli import main as cli_main
from gani_core.cli.export import FORMATS
from gani_core.deltas import apply_deltas
from gani_core.errors import CheckpointError
from gani_core.networks import Generator, GeneratorConfig
from gani_core.run_folder import RunFolder

from .conftest import EXAMPLES, FIXTURES

ROSINALITY = FIXTURES / "rosinality_32px.pt"
IMAGES = ("astronaut", "coffee")


def _code(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exc:       # argparse's errors
        return int(exc.code or 0)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` and its modification time (ns): what a rerun rewrote changes."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fixture_g() -> Generator:
    """The rosinality fixture, read by gani's loader."""
    return load_generator(ROSINALITY)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on the rosinality fixture: two photos, gani (tuned) and wplus (a latent alone)."""
    out = tmp_path_factory.mktemp("export-run") / "run"
    argv = ["invert", *(str(EXAMPLES / f"{name}.jpg") for name in IMAGES), "--checkpoint", str(ROSINALITY),
            "--method", "gani", "wplus", "--pivot-steps", "2", "--tune-steps", "2", "--out", str(out), "--quiet"]
    assert cli_main(argv) == 0
    return out


def _tuned(G: Generator, run: Path, image_id: str, method: str = "gani") -> tuple[Generator, torch.Tensor]:
    """The tuned generator of a result and its pivot [1, num_ws, w_dim], from the run's files."""
    folder = RunFolder(str(run))
    return apply_deltas(G, folder.read_deltas(image_id, method)), folder.read_pivot(image_id, method)[None]


# --- rosinality's format --------------------------------------------------------------------------------------------


def test_rosinality_state_has_the_keys_shapes_and_dtypes_of_rosinalitys_g_ema(fixture_g: Generator) -> None:
    real = torch.load(ROSINALITY, map_location="cpu", weights_only=True)["g_ema"]
    ours = rosinality_state(fixture_g)
    assert list(ours) == list(real)         # every key, in rosinality's order
    assert {k: (tuple(v.shape), v.dtype) for k, v in ours.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in real.items()}


def test_an_untuned_export_equals_the_checkpoint_it_was_read_from(fixture_g: Generator, tmp_path: Path) -> None:
    """Every tensor rosinality stores comes back: weights, noise buffers (our noise_const), the blur and upsample
    kernels (the standard filter times 4), latent_avg (our w_avg). torch.load reads it with weights_only."""
    real = torch.load(ROSINALITY, map_location="cpu", weights_only=True)
    exported = torch.load(save_rosinality(fixture_g, tmp_path / "g.pt"), map_location="cpu", weights_only=True)
    assert set(exported) == {"g_ema", "latent_avg"}
    for key, tensor in real["g_ema"].items():
        torch.testing.assert_close(exported["g_ema"][key], tensor, rtol=0, atol=1e-7, msg=key)
    torch.testing.assert_close(exported["latent_avg"], real["latent_avg"], rtol=0, atol=1e-7)


def test_the_mapping_is_rescaled_to_the_readers_lr_mlp(tmp_path: Path) -> None:
    """rosinality does not store lr_mlp and its users build the generator with 0.01: a mapping trained with another
    multiplier is written as the weights that compute the same under 0.01."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(z_dim=16, w_dim=16, img_resolution=8, mapping_layers=2, mapping_lr_multiplier=0.05,
                          channel_base=64, channel_max=16)
    G = Generator(cfg).eval().requires_grad_(False)
    back = load_generator(save_rosinality(G, tmp_path / "g.pt"))       # the loader assumes lr_mlp 0.01
    z = torch.randn(3, 16)
    torch.testing.assert_close(back.mapping(z), G.mapping(z), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("change", "reason"), [
    ({"c_dim": 4}, "it is conditional (c_dim 4)"),
    ({"z_dim": 32}, "its z, mapping and w widths differ (32, 16, 16)"),
    ({"img_channels": 1}, "it makes 1-channel images"),
])
def test_a_generator_rosinalitys_cannot_be_is_refused(change: dict, reason: str, tmp_path: Path) -> None:
    base = {"z_dim": 16, "w_dim": 16, "img_resolution": 8, "mapping_layers": 2, "channel_base": 64,
            "channel_max": 16, "label": "odd"}
    with pytest.raises(CheckpointError, match=r"^odd cannot be written as a rosinality checkpoint: .*"
                                              + re.escape(reason)):
        save_rosinality(Generator(GeneratorConfig(**{**base, **change})), tmp_path / "g.pt")
    assert not list(tmp_path.iterdir())


def test_a_clamped_generator_is_written_with_a_note(tmp_path: Path) -> None:
    """stylegan2-ada-pytorch trains with conv_clamp 256 (against fp16 overflow); rosinality has no clamp, and the two
    render alike while no activation reaches it."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(z_dim=16, w_dim=16, img_resolution=8, mapping_layers=2, channel_base=64, channel_max=16,
                          conv_clamp=256.0, label="clamped")
    G = Generator(cfg).eval().requires_grad_(False)
    back = load_generator(save_rosinality(G, tmp_path / "g.pt"))
    ws = G.mapping(torch.randn(2, 16))
    torch.testing.assert_close(back.synthesis(ws), G.synthesis(ws), rtol=0, atol=1e-5)
    assert clamp_note(G).startswith("note: clamped clamps its convolutions' outputs at 256 (conv_clamp)")
    assert clamp_note(back) is None


def test_a_tuned_rosinality_export_renders_what_the_tuned_generator_renders(run: Path, fixture_g: Generator,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "astronaut.pt"
    assert cli_main(["export", str(run), "astronaut", "--format", "rosinality", "--out", str(out)]) == 0
    assert set(torch.load(out, map_location="cpu", weights_only=True)) == {"g_ema", "latent_avg"}
    tuned, ws = _tuned(fixture_g, run, "astronaut")
    exported = load_generator(out)
    with torch.no_grad():
        diff = (exported.synthesis(ws, noise_mode="const") - tuned.synthesis(ws, noise_mode="const")).abs().max()
        assert (tuned.synthesis(ws) - fixture_g.synthesis(ws)).abs().max() > 1e-4     # the tuning changed it
    assert diff.item() <= 1e-5


def test_the_formats_are_the_parsers_choices(capsys: pytest.CaptureFixture[str]) -> None:
    """The parser is torch-free, so it names the formats itself; they are export.FORMATS's."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--help"])
    assert f"--format {{{','.join(FORMATS)}}}" in capsys.readouterr().out


# --- the latent -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gani", "wplus"])
def test_latent_alone_is_the_pivot_as_npy(run: Path, fixture_g: Generator, method: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w.npy"
    assert cli_main(["export", str(run), "coffee", "--method", method, "--latent", str(out)]) == 0
    latent = np.load(out, allow_pickle=False)
    assert latent.shape == (fixture_g.num_ws, fixture_g.w_dim) and latent.dtype == np.float32
    np.testing.assert_array_equal(latent, RunFolder(str(run)).read_pivot("coffee", method).numpy())
    assert list(tmp_path.iterdir()) == [out]
    said = capsys.readouterr().out
    assert f"wrote {out}: the pivot latent of coffee ({method}), [{fixture_g.num_ws}, 64] float32" in said


def test_the_latent_of_a_result_that_kept_it_flat_is_num_ws_by_w_dim(tmp_path: Path) -> None:
    """gani before issue 18 kept the pivot flat, in its row: the .npy is [num_ws, w_dim] all the same, without
    loading the checkpoint (num_ws from the row's resolution, 64 px: 10)."""
    old_run = shutil.copytree(FIXTURES / "run-before-issue17", tmp_path / "old")
    assert cli_main(["export", str(old_run), "shapes-2026-001", "--latent", str(tmp_path / "w.npy")]) == 0
    latent = np.load(tmp_path / "w.npy", allow_pickle=False)
    assert latent.shape == (10, 128)
    np.testing.assert_array_equal(latent.reshape(-1), RunFolder(str(old_run)).read_pivot("shapes-2026-001", "gani"))


def test_a_bare_latent_goes_beside_the_generator(run: Path, tmp_path: Path) -> None:
    assert cli_main(["export", str(run), "coffee", "--format", "rosinality", "--out", str(tmp_path / "c.pt"),
                     "--latent"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "c.pt"]


def test_a_generator_of_a_result_without_tuning_is_refused(run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """wplus tunes nothing: its "generator" would be the run's checkpoint unchanged, so the latent is what there is."""
    assert _code(["export", str(run), "coffee", "--method", "wplus", "--out", str(tmp_path / "c.safetensors")]) == 2
    assert _lines(capsys.readouterr().err) == [
        "gani export: error: wplus does not tune the generator: its result is a latent for the run's checkpoint as "
        "it is; export it with --latent FILE.npy"]
    assert not list(tmp_path.iterdir())


# --- --all ----------------------------------------------------------------------------------------------------------


def test_all_exports_every_result_then_keeps_them(run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exported"
    assert cli_main(["export", str(run), "--all", "--out", str(out), "--latent"]) == 0
    assert _lines(capsys.readouterr().out) == ["wrote 2, kept 0 (already exported), failed 0"]
    assert sorted(_files(out)) == [f"{i}.gani.{ext}" for i in IMAGES for ext in ("json", "npy", "safetensors")]
    assert "tuned to coffee by gani" in load_generator(out / "coffee.gani.safetensors").label
    record = json.loads((out / "coffee.gani.json").read_text())
    assert record["files"] == ["coffee.gani.npy", "coffee.gani.safetensors"]
    assert record["row"]["image_id"] == "coffee" and record["row"]["config_hash"]
    before = _files(out)
    assert cli_main(["export", str(run), "--all", "--out", str(out), "--latent"]) == 0
    assert _lines(capsys.readouterr().out) == ["wrote 0, kept 2 (already exported), failed 0"]
    assert _files(out) == before                            # nothing rewritten
    # Another format: only its files are written; the latents stay.
    assert cli_main(["export", str(run), "--all", "--out", str(out), "--format", "rosinality", "--latent"]) == 0
    assert _lines(capsys.readouterr().out) == ["wrote 2, kept 0 (already exported), failed 0"]
    after = _files(out)
    assert all(after[name] == time for name, time in before.items() if name.endswith(".npy"))
    assert json.loads((out / "coffee.gani.json").read_text())["files"] == [
        "coffee.gani.npy", "coffee.gani.pt", "coffee.gani.safetensors"]
    assert load_generator(out / "astronaut.gani.pt").img_resolution == 32


def test_all_writes_again_what_is_not_the_same_results_or_not_whole(run: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A record of another row (the image was inverted again since) and a file without its record (an export
    killed between the file and the record) are written again; the rest is kept."""
    out = tmp_path / "exported"
    assert cli_main(["export", str(run), "--all", "--out", str(out)]) == 0
    record = json.loads((out / "astronaut.gani.json").read_text())
    record["row"]["finished"] = 1.0
    (out / "astronaut.gani.json").write_text(json.dumps(record))
    (out / "coffee.gani.json").unlink()
    (out / "coffee.gani.safetensors").write_bytes(b"half a file")
    capsys.readouterr()
    assert cli_main(["export", str(run), "--all", "--out", str(out)]) == 0
    assert _lines(capsys.readouterr().out) == ["wrote 2, kept 0 (already exported), failed 0"]
    assert load_generator(out / "coffee.gani.safetensors").img_resolution == 32
    assert json.loads((out / "astronaut.gani.json").read_text())["row"]["finished"] != 1.0


@pytest.mark.parametrize("damage", ["truncated", "emptied", "overwritten"])
def test_all_writes_again_an_exported_file_that_is_not_the_one_it_wrote(run: Path, tmp_path: Path, damage: str,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The record keeps each file's size: a file the listing shows at another size is written again (no exported
    file is read); a record written before sizes were kept keeps a file that is there and not empty."""
    out = tmp_path / "exported"
    assert cli_main(["export", str(run), "--all", "--out", str(out), "--format", "rosinality", "--latent"]) == 0
    record = json.loads((out / "coffee.gani.json").read_text())
    assert record["sizes"] == {n: (out / n).stat().st_size for n in ("coffee.gani.npy", "coffee.gani.pt")}
    whole = (out / "coffee.gani.pt").read_bytes()
    damaged = {"truncated": whole[: len(whole) // 2], "emptied": b"", "overwritten": b"x" * (len(whole) + 1)}[damage]
    (out / "coffee.gani.pt").write_bytes(damaged)
    capsys.readouterr()
    assert cli_main(["export", str(run), "--all", "--out", str(out), "--format", "rosinality", "--latent"]) == 0
    assert _lines(capsys.readouterr().out) == ["wrote 1, kept 1 (already exported), failed 0"]
    assert (out / "coffee.gani.pt").read_bytes() == whole
    # A record of before: no sizes; a file that is there and not empty is kept.
    (out / "coffee.gani.json").write_text(json.dumps({k: v for k, v in record.items() if k != "sizes"}))
    (out / "coffee.gani.pt").write_bytes(damaged)
    assert cli_main(["export", str(run), "--all", "--out", str(out), "--format", "rosinality", "--latent"]) == 0
    kept = _lines(capsys.readouterr().out)
    assert kept == [f"wrote {int(damage == 'emptied')}, kept {2 - int(damage == 'emptied')} (already exported), "
                    "failed 0"]


def test_all_a_result_whose_deltas_cannot_be_read_fails_alone(run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "deltas" / "coffee.gani.parquet").write_bytes(b"not parquet")
    out = tmp_path / "exported"
    assert cli_main(["export", str(copy), "--all", "--out", str(out)]) == 1
    said = capsys.readouterr()
    assert _lines(said.out) == ["wrote 1, kept 0 (already exported), failed 1"]
    [line] = _lines(said.err)
    assert line.startswith(f"gani export: coffee (gani): {copy}/deltas/coffee.gani.parquet: not a readable deltas "
                           "file (")
    assert sorted(_files(out)) == ["astronaut.gani.json", "astronaut.gani.safetensors"]


def test_all_says_how_far_it_is_as_it_goes(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(export, "PROGRESS_SECONDS", 0.0)       # a line after every result
    assert cli_main(["export", str(run), "--all", "--out", str(tmp_path / "exported")]) == 0
    assert _lines(capsys.readouterr().err) == [
        "gani export: 1/2 results: wrote 1, kept 0 (already exported), failed 0",
        "gani export: 2/2 results: wrote 2, kept 0 (already exported), failed 0"]


def test_all_interrupted_keeps_what_it_wrote(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exported"
    read_result, calls = export.read_result, []

    def interrupted_at_the_second(*args: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return read_result(*args)

    monkeypatch.setattr(export, "read_result", interrupted_at_the_second)
    assert cli_main(["export", str(run), "--all", "--out", str(out)]) == 130
    assert _lines(capsys.readouterr().err) == [
        "gani export: interrupted: wrote 1, kept 0 (already exported), failed 0; rerun the same command to continue"]
    assert sorted(_files(out)) == ["astronaut.gani.json", "astronaut.gani.safetensors"]
    monkeypatch.undo()
    assert cli_main(["export", str(run), "--all", "--out", str(out)]) == 0
    assert _lines(capsys.readouterr().out) == ["wrote 1, kept 1 (already exported), failed 0"]


def test_all_latents_alone_for_a_method_without_tuning(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents"
    assert cli_main(["export", str(run), "--all", "--method", "wplus", "--latent", "--out", str(out)]) == 0
    assert sorted(_files(out)) == [f"{i}.wplus.{ext}" for i in IMAGES for ext in ("json", "npy")]


# --- an exported generator is a checkpoint --------------------------------------------------------------------------


def test_an_exported_safetensors_is_a_checkpoint_to_invert_into(run: Path, tmp_path: Path) -> None:
    exported = tmp_path / "astronaut.safetensors"
    assert cli_main(["export", str(run), "astronaut", "--out", str(exported)]) == 0
    again = tmp_path / "again"
    assert cli_main(["invert", str(EXAMPLES / "coffee.jpg"), "--checkpoint", str(exported), "--method", "gani",
                     "--pivot-steps", "1", "--tune-steps", "1", "--out", str(again), "--quiet"]) == 0
    assert json.loads((again / "summary.json").read_text())["methods"]["gani"]["ok"] == 1


def test_an_exported_rosinality_pt_renders(run: Path, tmp_path: Path) -> None:
    exported = tmp_path / "astronaut.pt"
    assert cli_main(["export", str(run), "astronaut", "--format", "rosinality", "--out", str(exported)]) == 0
    assert cli_main(["render", str(exported), "--count", "2", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")


# --- bad input: one line, exit code 2, nothing written --------------------------------------------------------------


BAD = {     # {run}, {broken} (broken_run), {out} (an empty folder), {file} (a file): see the test
    "unknown format": (["{run}", "coffee", "--format", "nvidia", "--out", "{out}/g.pkl"],
                       "argument --format: invalid choice: 'nvidia'"),
    "image not in the run": (["{run}", "nope", "--out", "{out}/g.safetensors"], "{run}: no image 'nope' in this run"),
    "no ok row of the method": (["{run}", "coffee", "--method", "pti", "--out", "{out}/g.safetensors"],
                                "no successful tuned result for image 'coffee' (methods ['pti'])"),
    "deltas missing": (["{broken}", "astronaut", "--out", "{out}/g.safetensors"],
                       "astronaut (gani): cannot read its result {broken}/deltas/astronaut.gani.parquet: "
                       "FileNotFoundError"),
    "deltas unreadable": (["{broken}", "coffee", "--out", "{out}/g.safetensors"],
                          "coffee (gani): {broken}/deltas/coffee.gani.parquet: not a readable deltas file ("),
    "a .pt for safetensors": (["{run}", "coffee", "--out", "{out}/g.pt"],
                              "--out {out}/g.pt: a .pt file; --format safetensors writes .safetensors; .pt is "
                              "--format rosinality"),
    "a .safetensors for rosinality": (["{run}", "coffee", "--format", "rosinality", "--out", "{out}/g.safetensors"],
                                      "a .safetensors file; --format rosinality writes .pt or .pth; .safetensors is "
                                      "--format safetensors"),
    "a latent that is not .npy": (["{run}", "coffee", "--latent", "{out}/w.pt"],
                                  "--latent {out}/w.pt: a .pt file; the latent is written as .npy"),
    "neither --out nor --latent": (["{run}", "coffee"],
                                   "give --out FILE.safetensors (the tuned generator), --latent FILE.npy"),
    "a bare --latent without --out": (["{run}", "coffee", "--latent"], "--latent without a file name is written"),
    "IMAGE_ID and --all": (["{run}", "coffee", "--all", "--out", "{out}"],
                           "argument --all: not allowed with argument IMAGE_ID"),
    "neither IMAGE_ID nor --all": (["{run}", "--out", "{out}/g.safetensors"],
                                   "one of the arguments IMAGE_ID --all is required"),
    "--all without --out": (["{run}", "--all"], "--all needs --out DIR"),
    "--all with --latent FILE": (["{run}", "--all", "--out", "{out}", "--latent", "{out}/w.npy"],
                                 "with --all, --latent takes no file name"),
    "--all into a file": (["{run}", "--all", "--out", "{file}"], "--out {file} is a file: give a folder"),
    "--all into the run folder": (["{run}", "--all", "--out", "{run}"],
                                  "--out {run} is a run folder; exports go to a folder of their own"),
    "--all of w without --latent": (["{run}", "--all", "--method", "w", "--out", "{out}"],
                                    "w does not tune the generator, so --all has no generator to export"),
}


@pytest.fixture(scope="module")
def broken_run(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run with astronaut's gani deltas gone and coffee's unreadable."""
    copy = tmp_path_factory.mktemp("broken") / "run"
    shutil.copytree(run, copy)
    (copy / "deltas" / "astronaut.gani.parquet").unlink()
    (copy / "deltas" / "coffee.gani.parquet").write_bytes(b"PAR1 cut short")
    return copy


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case: str, run: Path, broken_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = BAD[case]
    where = {"run": run, "broken": broken_run, "out": tmp_path / "out", "file": tmp_path / "a-file"}
    where["out"].mkdir()
    where["file"].write_text("not a folder")
    assert _code(["export", *(a.format(**where) for a in argv)]) == 2
    [line] = _lines(capsys.readouterr().err)
    assert line.startswith("gani export: error: ") and expected.format(**where) in line, line
    assert not list(where["out"].iterdir())
