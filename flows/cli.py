"""``python -m flows.NAME``: a flow run from a shell, with options made from the flow's own signature.

Every parameter becomes an option (``--input-uri``); a parameter that is a settings model (flows/parameters.py)
contributes one option per field (``--pivot-steps``, ``--dask-address``). Defaults and help come from the
signature, the models and the flow's docstring, so nothing here restates them.

:func:`flow_main` is a flow's whole shell: bad input is one line and exit status 2 before anything starts, a run
whose results all or partly failed exits 1, Ctrl-C one line and 130; never a traceback of ours (Prefect logs the
traceback of an error it did not expect in the run's log).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import typing
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

from prefect import Flow
from pydantic import BaseModel, TypeAdapter, ValidationError

from gani_core import storage
from gani_core.errors import GaniError

# What a flow refuses before it starts, each in one line: gani's own errors (a checkpoint that is not one,
# credentials the store refuses), a missing input, an output that is a file, a store that cannot be reached, a
# value out of range.
BAD_INPUT: tuple[type[Exception], ...] = (GaniError, FileNotFoundError, FileExistsError, NotADirectoryError,
                                          ConnectionError, ValueError)
EXIT_STATUS = ("exit status: 0 every result ok; 1 some or all results failed (the tables say which; a rerun of the "
               "same command keeps the ok ones and computes the rest); 2 bad input, in one line, before anything "
               "starts; 130 interrupted (Ctrl-C)")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add(parser: argparse.ArgumentParser, name: str, annotation: Any, default: Any, help_text: str) -> None:
    """One option for a parameter of type ``annotation`` (str, int, float, bool, a Literal, a list, or X | None)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (typing.Union, type(int | None)) and len(args) == 1:
        annotation = args[0]                                    # X | None: the option is X, its default None
    origin = get_origin(annotation)
    kwargs: dict[str, Any] = {"default": default, "help": f"{help_text} (default: {default})"}
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        kwargs["choices"] = get_args(annotation)
    elif origin is list:
        (item,) = get_args(annotation)
        kwargs.update(nargs="+", type=item if item in (int, float) else str)
        if get_origin(item) is Literal:
            kwargs.update(choices=get_args(item), type=str)
    elif annotation in (int, float):
        kwargs["type"] = annotation
    parser.add_argument(_option(name), dest=name, **kwargs)


def _docstring_args(fn: Callable) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring, by name, on one line each."""
    doc = fn.__doc__ or ""
    section = doc.split("Args:", 1)[1].split("Returns:", 1)[0] if "Args:" in doc else ""
    found: dict[str, str] = {}
    for m in re.finditer(r"^\s{8}(\w+): (.*?)(?=^\s{8}\w+: |\Z)", section, flags=re.S | re.M):
        found[m.group(1)] = " ".join(m.group(2).split())
    return found


def prog(flow: Flow) -> str:
    """``python -m flows.NAME``: how the shell of ``flow`` is started (its module's name, not ``__main__``)."""
    module = flow.fn.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return f"python -m {module}"


def _description(fn: Callable, names: typing.Collection[str]) -> str:
    """The docstring's first paragraph as the shell reads it: ``a_parameter`` becomes ``--a-parameter``."""
    text = " ".join((fn.__doc__ or "").split("\n\n")[0].split())
    return re.sub(r"``([^`]+)``", lambda m: _option(m[1]) if m[1] in names else m[1], text)


def flow_parser(flow: Flow, epilog: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, type[BaseModel]]]:
    """The parser of ``flow``'s parameters, and the settings models among them by parameter name."""
    fn = flow.fn
    hints = typing.get_type_hints(fn)
    signature = inspect.signature(fn)
    docs = _docstring_args(fn)
    parser = argparse.ArgumentParser(prog=prog(flow), description=_description(fn, signature.parameters),
                                     epilog=epilog)
    models: dict[str, type[BaseModel]] = {}
    for name, param in signature.parameters.items():
        annotation = hints.get(name, str)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            models[name] = annotation
            group = parser.add_argument_group(name, docs.get(name))
            default = param.default if isinstance(param.default, annotation) else annotation()
            for field_name, field in annotation.model_fields.items():
                _add(group, field_name, field.annotation, getattr(default, field_name), field.description or "")
        else:
            _add(parser, name, annotation, param.default, docs.get(name, ""))
    return parser, models


def parse_flow_args(flow: Flow, argv: list[str] | None = None, epilog: str | None = None) -> dict[str, Any]:
    """The keyword arguments of ``flow`` from the command line ``argv``."""
    parser, models = flow_parser(flow, epilog)
    values = vars(parser.parse_args(argv))
    try:    # the flow's own validation, here, so that a bad option is one line before anything starts
        kwargs = {name: model(**{f: values.pop(f) for f in model.model_fields}) for name, model in models.items()}
    except ValidationError as exc:
        error = exc.errors()[0]
        parser.error(f"argument {_option(str(error['loc'][0]))}: {error['msg']}")
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    for name, value in values.items():
        try:
            TypeAdapter(hints.get(name, str)).validate_python(value)
        except ValidationError as exc:
            parser.error(f"argument {_option(name)}: {exc.errors()[0]['msg']}")
    return {**values, **kwargs}


def run_flow_from_shell(flow: Flow, argv: list[str] | None = None) -> dict:
    """Run ``flow`` with the options of ``argv``; print its counts, where its tables are and how to see them."""
    summary = flow(**parse_flow_args(flow, argv))
    print_summary(flow, summary)
    return summary


def flow_main(flow: Flow, argv: list[str] | None = None, check: Callable[..., object] | None = None) -> int:
    """Run ``flow`` with the options of ``argv`` and say how it went; the exit status (:data:`EXIT_STATUS`).

    ``check(**kwargs)`` refuses bad input before Prefect starts (raising one of :data:`BAD_INPUT`). The flow's
    final state decides the rest: its summary printed (:func:`print_summary`) when it has one, then 1 when some
    results failed (``run_failed`` in the summary) or all did (flows.reports.EveryResultFailedError).
    """
    kwargs = parse_flow_args(flow, argv, EXIT_STATUS)
    # After --help: flows.reports imports the run folder's code.
    from flows.reports import EveryResultFailedError

    try:
        if check is not None:
            check(**kwargs)
        result = flow(**kwargs, return_state=True).result(raise_on_failure=False)
    except KeyboardInterrupt:
        kept = f"what was written under {kwargs['output_uri']} is kept; " if kwargs.get("output_uri") else ""
        print(f"interrupted: {kept}rerun the same command to continue", file=sys.stderr)
        return 130
    except BAD_INPUT as exc:
        print(f"{prog(flow)}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(result, EveryResultFailedError):
        print_summary(flow, result.summary)
        print(f"{prog(flow)}: {result}", file=sys.stderr)
        return 1
    if isinstance(result, BaseException):       # met during the run: the run's log has its traceback
        print(f"{prog(flow)}: error: {type(result).__name__}: {' '.join(str(result).split())}", file=sys.stderr)
        return 1
    print_summary(flow, result)
    return 1 if result.get("run_failed", result.get("failed")) else 0


def print_summary(flow: Flow, summary: dict) -> None:
    """A flow run's counts, where its tables are and how to see them."""
    # Here, not at the top: MLflow's import takes seconds, which --help need not wait for.
    from tasks.mlflow_view import RUNS_VIEW, runs_url

    images = "images" in summary    # a run folder of inverted images (the domain benchmark: rows of a report)
    counts = ("images", "ok", "failed", "skipped", "computed") if images else ("rows", "failed", "ok")
    print(json.dumps({k: summary[k] for k in counts if k in summary}))
    print("written: " + ", ".join(summary.get("written", {}).values()))
    if summary.get("aligned_faces"):        # align-dataset: faces to invert, no previews, no MLflow run
        print(f"aligned faces under {summary['output']}; invert them with: .venv/bin/gani invert "
              f"{summary['output']} --identity --checkpoint CHECKPOINT --out RUN")
    elif images and summary.get("ok"):
        print(f"previews under {storage.join(summary['output'], 'previews')}; see them with: "
              f".venv/bin/gani show {summary['output']}")
    if "mlflow_run_id" not in summary:
        return
    print(f"MLflow run {summary['mlflow_run_id']}: open the UI with .venv/bin/mlflow ui --backend-store-uri "
          f"{summary['mlflow_tracking_uri']} --host 127.0.0.1 --port 5000 --workers 1")
    # MLflow 3 opens experiments in its GenAI view unless asked for the runs table (its "Model training" view).
    # The domain benchmark names two views: every run, and this run's children by method.
    for what, view in (summary.get("mlflow_views") or {"runs": RUNS_VIEW}).items():
        print(f"then the {what} of {flow.name}: {runs_url(summary['mlflow_experiment_id'], view=view)}")
