"""``python -m flows.NAME``: a flow run from a shell, with options made from the flow's own signature.

Every parameter becomes an option (``--input-uri``); a parameter that is a settings model (flows/parameters.py)
contributes one option per field (``--pivot-steps``, ``--dask-address``). Defaults and help come from the
signature, the models and the flow's docstring, so nothing here restates them.
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
from tasks.mlflow_view import runs_url


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


def flow_parser(flow: Flow) -> tuple[argparse.ArgumentParser, dict[str, type[BaseModel]]]:
    """The parser of ``flow``'s parameters, and the settings models among them by parameter name."""
    fn = flow.fn
    hints = typing.get_type_hints(fn)
    signature = inspect.signature(fn)
    docs = _docstring_args(fn)
    module = fn.__module__
    if module == "__main__":        # python -m flows.NAME: the module's own name, not __main__
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    parser = argparse.ArgumentParser(prog=f"python -m {module}",
                                     description=(fn.__doc__ or "").split("\n\n")[0])
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


def parse_flow_args(flow: Flow, argv: list[str] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``flow`` from the command line ``argv``."""
    parser, models = flow_parser(flow)
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
    images = "images" in summary    # a run folder of inverted images (the domain benchmark: rows of a report)
    counts = ("images", "ok", "failed", "skipped", "computed") if images else ("rows", "failed", "ok")
    print(json.dumps({k: summary[k] for k in counts if k in summary}))
    print("written: " + ", ".join(summary.get("written", {}).values()))
    if images:
        print(f"previews under {storage.join(summary['output'], 'previews')}; see them with: "
              f".venv/bin/gani show {summary['output']}")
    print(f"MLflow run {summary['mlflow_run_id']}: open the UI with .venv/bin/mlflow ui --backend-store-uri "
          f"{summary['mlflow_tracking_uri']} --host 127.0.0.1 --port 5000 --workers 1")
    # MLflow 3 opens experiments in its GenAI view unless asked for the runs table (its "Model training" view).
    print(f"then the runs of {flow.name}: {runs_url(summary['mlflow_experiment_id'])}")
    return summary
