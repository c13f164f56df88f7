"""The flows' typed parameters and ``python -m flows.NAME``: defaults from gani_core, options from the signature."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from flows.cli import parse_flow_args
from flows.domain_benchmark import domain_benchmark
from flows.invert_dataset import invert_dataset
from flows.nightly_benchmark import nightly_benchmark
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
