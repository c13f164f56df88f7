"""The `gani` command line as a stranger meets it (issue 22, "every failure in one line"): exit codes, Ctrl-C, outputs,
messages naming the options, the help, the start-up time, values refused before anything loads, what `gani invert`
and `gani show` say."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gani_core import defaults, invert_files, metrics, precision
from gani_core.cli import EXIT_CODES, build_parser, main
from gani_core.cli.parser import IN_DOMAIN
from gani_core.cli.show import differences
from gani_core.invert import GANI_TUNE, METHODS, PTI_TUNE, has_tuning, method_config
from gani_core.metrics import ms_ssim_note
from gani_core.pivot import PivotConfig
from gani_core.render import grid_png
from gani_core.shapes.out_of_domain import IN_DOMAIN as SHAPES_IN_DOMAIN
from gani_core.tuning import TuneConfig

from .conftest import BROKEN_PNG, EXAMPLES, REPO, photo_folder

FAST = ["--checkpoint", "builtin-random:32", "--pivot-steps", "2"]
MISSING_CHECKPOINT = ["--checkpoint", "no-such-checkpoint.pkl"]     # loading it would fail: a check came first
GANI = "from gani_core.cli import console; console()"   # the console script


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:       # argparse's errors and --help
        return int(exc.code or 0)


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``argv``, which must be refused with exit code 2 in one line (argparse's or gani's); that line."""
    code = _exit_code(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(_lines(err)) == 1 and "Traceback" not in err, err
    return err.strip()


@dataclass
class Said:
    code: int
    out: str
    err: str


def _run(argv: list[str]) -> Said:
    """``main(argv)`` in this process, what it printed captured (for module fixtures, where capsys is not)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return Said(code, out.getvalue(), err.getvalue())


# --- 1. exit codes ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> Said:
    """astronaut, coffee and a corrupt PNG, wplus in batches of 2 with bf16 on the CPU, progress bars on."""
    images = photo_folder(tmp_path_factory.mktemp("partial"), broken=True)
    out = tmp_path_factory.mktemp("partial-run") / "out"
    return _run(["invert", str(images), "--out", str(out), *FAST, "--method", "wplus", "--batch-size", "2",
                 "--precision", "bf16"])


def test_invert_exits_1_when_some_images_failed_and_the_run_completed(partial: Said) -> None:
    """Before, 0 unless every row failed."""
    assert partial.code == 1
    assert _lines(partial.err)[-1].startswith("wrote ") and "(2 ok, 1 failed)" in _lines(partial.err)[-1]
    assert "failed: broken [wplus]: ImageError: " in partial.out


def test_the_help_states_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "exit codes (every command):" in out
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {' '.join(meaning.split())}" in out
    assert set(EXIT_CODES) == {0, 1, 2, 3, 130}


def test_an_unexpected_error_is_one_line_with_exit_code_3(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import gani_core.cli.info

    def boom(spec: str) -> None:
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(gani_core.cli.info, "resolve_checkpoint", boom)
    monkeypatch.delenv("GANI_DEBUG", raising=False)
    assert main(["info", "builtin"]) == 3
    assert capsys.readouterr().err == "gani info: failed: RuntimeError: something broke (GANI_DEBUG=1 shows where)\n"
    monkeypatch.setenv("GANI_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something"):
        main(["info", "builtin"])


# --- 2. Ctrl-C ----------------------------------------------------------------------------------------------------


def test_ctrl_c_in_any_command_is_one_line_and_exit_code_130(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import gani_core.cli.info

    def interrupted(spec: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gani_core.cli.info, "resolve_checkpoint", interrupted)
    assert main(["info", "builtin"]) == 130
    assert capsys.readouterr().err == "gani info: interrupted\n"


def test_ctrl_c_during_gani_invert_says_what_it_kept_in_one_line(tmp_path: Path) -> None:
    """SIGINT while gani tunes (after wplus wrote both images' rows): exit 130, one line, no traceback."""
    out = tmp_path / "out"
    argv = ["invert", str(EXAMPLES / "astronaut.jpg"), str(EXAMPLES / "coffee.jpg"), *FAST, "--method", "wplus",
            "gani", "--tune-steps", "100000", "--out", str(out), "--quiet"]
    # A person's Ctrl-C: SIGINT handled as a terminal gives it, even where this test runs in the background of a
    # non-interactive shell, which starts its jobs with SIGINT ignored (a child inherits that, and Python then
    # installs no KeyboardInterrupt for it).
    proc = subprocess.Popen([sys.executable, "-c", GANI, *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        parts = out / "rows"
        while len(list(parts.glob("part-*.parquet"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)                                 # into gani's tuning
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and [line for line in _lines(err) if "interrupted" in line] == [_lines(err)[-1]]
    assert _lines(err)[-1] == (f"gani invert: interrupted: 2 result(s) kept in {out}; rerun the same command to "
                               "continue")


# --- 3. outputs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["render", "export"])
def test_an_output_file_that_is_a_folder_or_under_a_file_is_refused(command: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("a file")
    argv = ["render", "builtin-random:32"] if command == "render" else ["export", str(tmp_path), "img"]
    line = _refused(capsys, [*argv, "--out", str(tmp_path)])
    assert line.startswith(f"gani {command}: error: --out {tmp_path} is a folder: give ")
    line = _refused(capsys, [*argv, "--out", str(tmp_path / "notes.txt" / "x.png")])
    assert f"is under {tmp_path / 'notes.txt'}, a file" in line


@pytest.mark.parametrize("count", ["0", "-3"])
def test_render_refuses_a_count_below_1(count: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, 0 ended in `RuntimeError: stack expects a non-empty TensorList`."""
    line = _refused(capsys, ["render", "builtin-random:32", "--count", count, "--out", str(tmp_path / "x.png")])
    assert "argument --count: a whole number of at least 1" in line


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG\r\n\x1a\n"), (".jpg", b"\xff\xd8\xff"),
                                               (".JPEG", b"\xff\xd8\xff"), (".webp", b"RIFF")])
def test_render_writes_the_format_its_suffix_names(suffix: str, magic: bytes, tmp_path: Path) -> None:
    """Before, `--out x.jpg` wrote PNG bytes under a .jpg name."""
    out = tmp_path / f"samples{suffix}"
    assert main(["render", "builtin-random:32", "--count", "2", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(magic) and (suffix != ".webp" or data[8:12] == b"WEBP")


@pytest.mark.parametrize("name", ["samples.gif", "samples"])
def test_render_refuses_a_suffix_it_does_not_write(name: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(capsys, ["render", "builtin-random:32", "--out", str(tmp_path / name)])
    assert line.endswith("gani render writes .png, .jpg, .jpeg, .webp") and not (tmp_path / name).exists()


# --- 4. messages name the command line's arguments ----------------------------------------------------------------
# An empty folder in IMAGES: tests/test_bad_input.py::test_cli_refuses_an_empty_folder (the path, not input_uri).


def test_a_folder_without_images_is_named_as_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no image")
    line = _refused(capsys, ["invert", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert line.startswith(f"gani invert: error: {tmp_path}/in: no image files (") and "input_uri" not in line


# --- 5. the help --------------------------------------------------------------------------------------------------


def _commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return list(sub.choices)


def test_gani_help_lists_each_command_on_its_own_line_with_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    for name in _commands():
        assert re.search(rf"^    {re.escape(name)}  +\w", out, re.MULTILINE), (name, out)
    assert all(len(line) <= 80 for line in out.splitlines())


@pytest.mark.parametrize("command", _commands())
def test_each_command_has_its_own_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code([command, "--help"]) == 0
    out = capsys.readouterr().out
    usage, description = out.split("\n\n")[:2]
    assert usage.startswith(f"usage: gani {command} ") and len(description.split()) >= 5


# --- 6. start-up: no torch before a command runs ------------------------------------------------------------------

HEAVY = ("torch", "pyarrow", "PIL", "tqdm", "fsspec", "s3fs", "numpy")


def test_help_and_argument_errors_import_no_heavy_library() -> None:
    """The parser and every refusal that needs no file: before, each took 4 to 5 s importing torch."""
    code = f"""
import contextlib, io, sys
from gani_core.cli import build_parser, main
build_parser()
for argv in (["--help"], ["invert", "--help"], ["render", "--help"], ["invert", "x", "--out", "y", "--method", "bogus"],
             ["invert", "x", "--out", "y", "--method", "w", "--tune-steps", "3"], ["invert", "x", "--out", "y",
             "--reg-weight", "-1"], ["render", "builtin", "--count", "0", "--out", "x.png"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    assert code in (0, 2), (argv, code)
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_gani_help_answers_in_under_a_second() -> None:
    """Before: 4.8 s (build_parser imported gani_core.invert, so torch)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", GANI, "invert", "--help"], cwd=REPO, capture_output=True, check=True,
                       timeout=60)
        times.append(time.perf_counter() - start)
    assert min(times) < 1.0, times


def test_the_help_shows_the_defaults_the_code_uses() -> None:
    """gani_core.defaults is their one definition; the modules that use them take them from there."""
    assert PivotConfig().steps == defaults.PIVOT_STEPS and TuneConfig().steps == defaults.TUNE_STEPS
    assert (GANI_TUNE.reg_weight, PTI_TUNE.reg_weight) == (defaults.GANI_REG_WEIGHT, defaults.PTI_REG_WEIGHT)
    assert METHODS == defaults.METHODS and tuple(m for m in METHODS if has_tuning(m)) == defaults.TUNING_METHODS
    assert defaults.PRECISIONS == precision.PRECISIONS and IN_DOMAIN == SHAPES_IN_DOMAIN
    assert invert_files.CPU_BATCH_SIZE == defaults.CPU_BATCH_SIZE


# --- 7. values refused before the generator loads -----------------------------------------------------------------


@pytest.mark.parametrize(("options", "said"), [
    (["--reg-weight", "-0.5"], "argument --reg-weight: a number of at least 0"),
    (["--reg-weight", "nan"], "argument --reg-weight: a finite number"),
    (["--tune-lr", "0"], "argument --tune-lr: a number above 0"),
    (["--tune-steps", "0"], "--method w (or wplus)"),
    (["--method", "w", "wplus", "--tune-steps", "3"], "--tune-steps applies to gani and pti, the methods that tune"),
    (["--method", "w", "--reg-weight", "0.2", "--tune-lr", "0.01"], "--tune-lr, --reg-weight apply to gani and pti"),
])
def test_values_that_were_silently_accepted_are_refused_in_one_line(
        options: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(capsys, ["invert", str(EXAMPLES / "astronaut.jpg"), "--out", str(tmp_path / "out"),
                             *MISSING_CHECKPOINT, *options])
    assert said in line and not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["invert", "render"])
def test_a_cuda_device_without_cuda_is_one_line(command: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Before, a traceback from torch's CUDA initialisation."""
    argv = (["invert", str(EXAMPLES / "astronaut.jpg"), *MISSING_CHECKPOINT] if command == "invert"
            else ["render", "no-such-checkpoint.pkl"])
    line = _refused(capsys, [*argv, "--out", str(tmp_path / "out.png"), "--device", "cuda"])
    assert line == f"gani {command}: error: --device cuda: no CUDA device is available here; use --device cpu"


def test_bf16_on_a_cpu_is_said_in_a_note(partial: Said) -> None:
    assert "note: --precision bf16 on a CPU runs under bf16 autocast" in partial.err


@pytest.mark.parametrize("content", [b"0.1, 0.2\n", b"", BROKEN_PNG])
def test_directions_that_are_not_a_npy_file_are_one_line_naming_the_file(
        content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, numpy's `Cannot load file containing pickled data when allow_pickle=False`."""
    path = tmp_path / "edits.npy"
    path.write_bytes(content)
    line = _refused(capsys, ["invert", str(EXAMPLES / "astronaut.jpg"), *FAST, "--method", "w", "--directions",
                             str(path), "--out", str(tmp_path / "out")])
    assert line.startswith(f"gani invert: error: {path}: not a .npy file (")
    assert "numpy.save, shape [K, 128] or [K, 8, 128]" in line


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"method": "gani", "tune_steps": 0}, "tune_steps must be a whole number of at least 1"),
    ({"method": "pti", "pivot_steps": -1}, "pivot_steps must be a whole number of at least 0"),
    ({"method": "gani", "reg_weight": -0.1}, "reg_weight must be a finite number of at least 0"),
    ({"method": "gani", "lr": float("inf")}, "lr must be a finite number above 0"),
    ({"method": "w", "precision": "fp16"}, "precision must be one of"),
    ({"method": "gani", "rnak": 4}, "unknown tuning option(s) ['rnak']"),
    ({"method": "wplus", "tune_steps": 3}, "has no tuning stage"),
    ({"method": "gan"}, "unknown method"),
])
def test_method_config_raises_value_error_for_what_it_validates(kwargs: dict, said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        method_config(**kwargs)


# --- 8. what gani invert and gani metrics print -------------------------------------------------------------------


def test_the_header_gives_the_resolution_once(partial: Said) -> None:
    header = _lines(partial.err)[0]
    assert header.startswith("gani invert: 3 image(s) x wplus with built-in, untrained (32 px) on cpu")
    assert header.count("32 px") == 1


def test_progress_bars_start_at_their_total_and_say_what_a_batch_holds(partial: Said) -> None:
    assert "astronaut and 1 more [wplus]" in partial.err and "0/2 " in partial.err
    assert "0/1 " not in partial.err and "+1" not in partial.err


def test_the_ms_ssim_note_is_printed_once_on_its_own_line(partial: Said) -> None:
    lines = partial.err.replace("\r", "\n").splitlines()
    assert [line for line in lines if "scales" in line] == [ms_ssim_note(32)]


def test_gani_metrics_gives_the_ms_ssim_caveat_as_one_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Before, a Python warning with its file, line number and source line."""
    monkeypatch.setattr(metrics, "_sizes_warned", set())
    for name, seed in (("a.png", 0), ("b.png", 1)):
        pixels = torch.rand([1, 3, 32, 32], generator=torch.Generator().manual_seed(seed))
        (tmp_path / name).write_bytes(grid_png(pixels))
    assert main(["metrics", str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 0
    err = capsys.readouterr().err
    assert [line for line in _lines(err) if "scales" in line] == [f"note: {ms_ssim_note(32)}"]
    assert "Warning" not in err and "warn(" not in err


# --- 9. several configurations of a method in one folder ----------------------------------------------------------


@pytest.fixture(scope="module")
def two_configurations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Said, Said]:
    """wplus with 1 pivot step on astronaut and coffee, then with 2 on astronaut alone (replacing its row); the
    second run's output and `gani show`'s."""
    images = tmp_path_factory.mktemp("two-configs")
    for name in ("astronaut.jpg", "coffee.jpg"):
        shutil.copy(EXAMPLES / name, images / name)
    out = str(tmp_path_factory.mktemp("two-configs-run") / "out")
    common = ["--checkpoint", "builtin-random:32", "--method", "wplus", "--out", out, "--quiet"]
    assert _run(["invert", str(images), "--pivot-steps", "1", *common]).code == 0
    second = _run(["invert", str(images / "astronaut.jpg"), "--pivot-steps", "2", *common])
    return second, _run(["show", out])


def test_a_rerun_with_another_configuration_says_how_many_results_it_replaced(
        two_configurations: tuple[Said, Said]) -> None:
    second, _ = two_configurations
    assert second.code == 0
    last = _lines(second.err)[-1]
    assert "(1 ok, 0 failed); replaced 1 result(s) of another configuration (wplus 1)" in last
    assert "the tables also hold 1 result(s) of earlier runs" in last


def test_show_says_which_options_differ_between_a_methods_configurations(
        two_configurations: tuple[Said, Said]) -> None:
    _, show = two_configurations
    assert show.code == 0
    assert re.search(r"^  wplus's 2 configurations differ in: pivot\.steps (1 vs 2|2 vs 1)$", show.out, re.MULTILINE)


def test_differences_lists_each_option_that_differs() -> None:
    a = {"method": "gani", "pivot": {"steps": 2}, "tune": {"steps": 150, "lr": 0.003, "reg_weight": 0.1}}
    b = {"method": "gani", "pivot": {"steps": 2}, "tune": {"steps": 20, "lr": 0.003, "reg_weight": 0.5}}
    assert differences([a, b]) == "tune.reg_weight 0.1 vs 0.5, tune.steps 150 vs 20"
    assert differences([a, b, None]) == "tune.reg_weight 0.1 vs 0.5, tune.steps 150 vs 20 (1 not stored, not compared)"
    assert differences([a, dict(a)]) == "no option (the same values)"


def test_the_console_script_entry_point_is_console() -> None:
    """pyproject's `gani = "gani_core.cli:console"` names a callable (main, then the exit: at once when
    interrupted)."""
    from gani_core.cli import console

    text = (REPO / "pyproject.toml").read_text()
    assert 'gani = "gani_core.cli:console"' in text and callable(console)
