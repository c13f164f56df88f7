"""The flows' typed parameters and ``python -m flows.NAME``: defaults from gani_core, options from the signature."""

from __future__ import annotations

import json

import pytest
from prefect import flow
from pydantic import ValidationError

from flows.cli import parse_flow_args, print_summary
from flows.domain_benchmark import domain_benchmark
from flows.edit_dataset import DEFAULT_STRENGTHS, edit_dataset
from flows.invert_dataset import invert_dataset
from flows.nightly_benchmark import BENCHMARK_METHODS, nightly_benchmark
from flows.parameters import ClusterSettings, InversionSettings
from gani_core import build_builtin, defaults
from gani_core.cli import main as cli_main
from gani_core.defaults import CPU_BATCH_SIZE
from gani_core.evaluation.suites import SUITES
from gani_core.invert import method_config
from gani_core.invert_files import auto_batch_size


def test_defaults_are_the_library_configs() -> None:
    for method in ("gani", "pti", "wplus", "w"):
        assert InversionSettings().configs([method])[method] == method_config(method)


def test_tune_steps_apply_to_the_methods_that_tune_and_are_refused_where_none_does() -> None:
    configs = InversionSettings(pivot_steps=7, tune_steps=5).configs(["gani", "wplus"])
    assert (configs["gani"].pivot.steps, configs["gani"].tune.steps) == (7, 5)
    assert (configs["wplus"].pivot.steps, configs["wplus"].tune) == (7, None)
    with pytest.raises(ValueError, match="tune_steps=5 does not apply: wplus, w have no tuning stage"):
        InversionSettings(tune_steps=5).configs(["wplus", "w"])
    with pytest.raises(ValueError, match="unknown method"):
        InversionSettings().configs(["gan"])


def test_settings_refuse_unknown_fields_and_negative_steps() -> None:
    with pytest.raises(ValidationError):
        InversionSettings(pivot_step=3)
    with pytest.raises(ValidationError):
        InversionSettings(pivot_steps=-1)
    with pytest.raises(ValidationError):
        ClusterSettings(n_workers=0)


def test_shell_options_come_from_the_flow_signature_and_the_settings_models() -> None:
    args = parse_flow_args(invert_dataset, ["--input-uri", "in/", "--method", "pti", "--pivot-steps", "3",
                                            "--tune-steps", "2", "--n-workers", "2", "--gpu", "--limit", "1"])
    assert args["input_uri"] == "in/" and args["method"] == "pti" and args["limit"] == 1
    assert args["inversion"] == InversionSettings(pivot_steps=3, tune_steps=2)
    assert args["cluster"] == ClusterSettings(n_workers=2, gpu=True)
    assert parse_flow_args(invert_dataset, [])["inversion"] == InversionSettings()
    with pytest.raises(SystemExit):
        parse_flow_args(invert_dataset, ["--method", "gan"])


def test_the_nightly_flow_takes_a_list_of_methods_from_the_shell() -> None:
    args = parse_flow_args(nightly_benchmark, ["--methods", "gani", "w", "--date", "2026-01-02"])
    assert args["methods"] == ["gani", "w"] and args["date"] == "2026-01-02"
    assert parse_flow_args(nightly_benchmark, [])["methods"] == ["gani", "pti", "wplus"]


def test_a_list_option_given_again_adds_up_and_leaves_the_defaults_alone() -> None:
    """It kept the last occurrence only (``nargs="+"``); and a default list is never the one extended."""
    defaults_before = (list(DEFAULT_STRENGTHS), list(BENCHMARK_METHODS))
    args = parse_flow_args(edit_dataset, ["--directions", "factor:hue", "pca:0", "--directions", "a.npy",
                                          "--strengths", "1", "--strengths", "2", "3"])
    assert args["directions"] == ["factor:hue", "pca:0", "a.npy"] and args["strengths"] == [1.0, 2.0, 3.0]
    # the singular, as gani edit spells it (--direction SPEC --direction SPEC)
    args = parse_flow_args(edit_dataset, ["--direction", "pca:0", "--direction", "pca:1", "--image-id", "a",
                                          "--strength", "1.5"])
    assert (args["directions"], args["image_ids"], args["strengths"]) == (["pca:0", "pca:1"], ["a"], [1.5])
    assert parse_flow_args(nightly_benchmark, ["--method", "w", "--methods", "pti", "gani"])["methods"] == [
        "w", "pti", "gani"]
    unset = parse_flow_args(edit_dataset, [])
    assert unset["directions"] is None and unset["image_ids"] is None
    assert unset["strengths"] == DEFAULT_STRENGTHS and unset["strengths"] is not DEFAULT_STRENGTHS
    assert parse_flow_args(nightly_benchmark, [])["methods"] == BENCHMARK_METHODS
    assert (list(DEFAULT_STRENGTHS), list(BENCHMARK_METHODS)) == defaults_before


@flow
def _method_and_methods(method: str = "gani", methods: list[str] | None = None) -> None:
    """A flow whose list option's singular is another parameter."""


def test_a_list_options_singular_is_left_to_a_parameter_of_that_name() -> None:
    args = parse_flow_args(_method_and_methods, ["--method", "w", "--methods", "pti"])
    assert (args["method"], args["methods"]) == ("w", ["pti"])


def test_the_nightly_flow_takes_a_benchmark_suite_by_name() -> None:
    assert parse_flow_args(nightly_benchmark, [])["suite"] is None
    assert parse_flow_args(nightly_benchmark, ["--suite", "cpu-night"])["suite"] == "cpu-night"
    assert parse_flow_args(domain_benchmark, ["--suite", "smoke", "--split", "dev"])["split"] == "dev"
    with pytest.raises(SystemExit):
        parse_flow_args(nightly_benchmark, ["--suite", "huge"])
    schema = nightly_benchmark.parameters.model_dump()["properties"]["suite"]
    assert set(SUITES) <= set(json.dumps(schema).replace('"', " ").split())     # Prefect's form offers each suite


def test_prefect_describes_the_settings_as_nested_parameters() -> None:
    schema = invert_dataset.parameters.model_dump()
    props = schema["properties"]
    assert props["inversion"]["default"] == InversionSettings().model_dump()
    definitions = schema["definitions"]
    assert set(definitions["InversionSettings"]["properties"]) == set(InversionSettings.model_fields)
    assert definitions["InversionSettings"]["properties"]["pivot_steps"]["default"] == method_config("gani").pivot.steps


def test_batch_size_is_a_count_or_auto_from_the_shell() -> None:
    assert parse_flow_args(invert_dataset, ["--batch-size", "8"])["inversion"].batch_size == 8
    assert parse_flow_args(invert_dataset, ["--batch-size", "auto"])["inversion"].batch_size == "auto"
    with pytest.raises(SystemExit):
        parse_flow_args(invert_dataset, ["--batch-size", "0"])


@pytest.mark.parametrize("shell", [invert_dataset, edit_dataset])
@pytest.mark.parametrize("value", ["x", "0", "-2", "1.5"])
def test_a_bad_batch_size_says_in_one_line_that_auto_is_accepted_too(shell, value: str,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """It said ``Input should be a valid integer, unable to parse string as an integer``: pydantic's message for
    the first type of ``int >= 1 | "auto"`` alone."""
    with pytest.raises(SystemExit) as exit_info:
        parse_flow_args(shell, ["--batch-size", value])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m {shell.fn.__module__}: error: argument --batch-size: expected an integer >= 1 or auto; "
        f"got '{value}'")


def test_the_edit_shell_counts_images_strips_and_rows_each_by_name(capsys: pytest.CaptureFixture) -> None:
    """It printed ``{"rows": 12, "failed": 3, "ok": 9}``: edits.parquet's rows (image x direction x strength),
    unnamed. Now images, strips (image x direction, as gani edit counts them) and rows, then gani edit's last line."""
    summary = {"rows": 12, "ok": 9, "failed": 3, "images_edited": 2, "computed": 1, "skipped": 1, "run_failed": 1,
               "strips_written": 1, "strips_kept": 2, "strips_failed": 1, "output": "/r/edits",
               "written": {"edits.parquet": "/r/edits/edits.parquet"}}
    print_summary(edit_dataset, summary)
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0]) == {"images": 2, "images_ok": 1, "images_failed": 1, "images_kept": 1,
                                  "strips_written": 1, "strips_kept": 2, "strips_failed": 1, "rows": 12,
                                  "rows_failed": 3}
    assert out[1:] == ["1 strip(s) written, 2 kept, 1 failed -> /r/edits", "written: /r/edits/edits.parquet"]


def test_the_invert_shell_keeps_its_counts_and_says_what_this_run_did(capsys: pytest.CaptureFixture) -> None:
    """The JSON line as before (tests/test_first_run.py and scripts parse it: the folder's tables), then this run's
    results as gani's last line says them."""
    summary = {"images": 3, "rows": 5, "ok": 4, "failed": 1, "skipped": 2, "computed": 2, "run_written": 1,
               "run_kept": 2, "run_failed": 1, "output": "/r", "written": {}}
    print_summary(invert_dataset, summary)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == '{"images": 3, "ok": 4, "failed": 1, "skipped": 2, "computed": 2}'
    assert out[1] == "1 result(s) written, 2 kept, 1 failed -> /r; its tables also hold 1 result(s) of other runs"


def test_help_texts_state_the_auto_batch_size_the_code_uses_on_a_cpu(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`gani invert --help`, the flows' parameter description (Prefect's form) and their shell help say what
    ``auto`` means on a CPU: defaults.CPU_BATCH_SIZE, which auto_batch_size returns there."""
    stated = f"{CPU_BATCH_SIZE} on a CPU"
    assert auto_batch_size(build_builtin(16), method_config("gani")) == CPU_BATCH_SIZE
    described = invert_dataset.parameters.model_dump()["definitions"]["InversionSettings"]["properties"]
    assert stated in described["batch_size"]["description"]
    for show_help in (lambda: cli_main(["invert", "--help"]), lambda: parse_flow_args(invert_dataset, ["--help"])):
        with pytest.raises(SystemExit):
            show_help()
        assert stated in " ".join(capsys.readouterr().out.split())
    monkeypatch.setattr(defaults, "CPU_BATCH_SIZE", CPU_BATCH_SIZE + 3)      # the CLI reads it, not a copy
    with pytest.raises(SystemExit):
        cli_main(["invert", "--help"])
    assert f"{CPU_BATCH_SIZE + 3} on a CPU" in " ".join(capsys.readouterr().out.split())
