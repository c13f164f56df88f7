"""``python -m flows.NAME``: a flow run from a shell, with options made from the flow's own signature.

Every parameter becomes an option (``--input-uri``); a parameter that is a settings model (flows/parameters.py)
contributes one option per field (``--pivot-steps``, ``--dask-address``). A list takes one or more values, given
again they add up, and is spelled in the singular too (``--directions a b`` or ``--direction a --direction b``).
Defaults and help come from the signature, the models and the flow's docstring, so nothing here restates them.

:func:`flow_main` is a flow's whole shell: bad input is one line and exit status 2 before anything starts, a run
whose results all or partly failed exits 1, Ctrl-C one line and 130 within seconds (on Prefect's temporary API
too: :func:`start_prefect_api`); never a traceback of ours (Prefect logs the traceback of an error it did not
expect in the run's log). What it prints at the end counts what it says (:func:`counts`).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import signal
import sys
import threading
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
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


def _add(parser: argparse.ArgumentParser, name: str, annotation: Any, default: Any, help_text: str,
         taken: typing.Collection[str] = ()) -> None:
    """One option for a parameter of type ``annotation`` (str, int, float, bool, a Literal, a list, or X | None).

    A list option takes one or more values, and its occurrences add up (``--directions a b --directions c``: a, b,
    c); one not given is left out of the namespace (:func:`parse_flow_args` fills in its default), so that values
    given add to nothing. A list option named in the plural is also spelled in the singular (``--direction``),
    unless that is the name of another of ``taken`` (the parameters and fields of the flow)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (typing.Union, type(int | None)) and len(args) == 1:
        annotation = args[0]                                    # X | None: the option is X, its default None
    origin = get_origin(annotation)
    kwargs: dict[str, Any] = {"default": default, "help": f"{help_text} (default: {default})"}
    options = [_option(name)]
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        kwargs["choices"] = get_args(annotation)
    elif origin is list:
        (item,) = get_args(annotation)
        kwargs.update(nargs="+", action="extend", default=argparse.SUPPRESS, type=item if item in (int, float) else str,
                      help=f"{help_text} (one or more; given again, they add up; default: {default})")
        if get_origin(item) is Literal:
            kwargs.update(choices=get_args(item), type=str)
        singular = name[:-1] if name.endswith("s") and name[:-1] not in taken else None
        if singular:
            options.append(_option(singular))
            if "choices" not in kwargs:
                kwargs["metavar"] = singular.upper()
    elif annotation in (int, float):
        kwargs["type"] = annotation
    parser.add_argument(*options, dest=name, **kwargs)


BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))      # annotated_types' bounds, as a message says them


def _accepted(annotation: Any) -> str:
    """What a value of ``annotation`` may be, in words: ``an integer >= 1 or auto``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (typing.Union, type(int | None)):
        return " or ".join(_accepted(a) for a in args if a is not type(None))
    if origin is typing.Annotated:
        bounds = [m for info in args[1:] for m in getattr(info, "metadata", [info])]
        return " ".join([_accepted(args[0]), *(f"{sign} {getattr(m, attr)}" for m in bounds
                                               for attr, sign in BOUNDS if hasattr(m, attr))])
    if origin is Literal:
        return " or ".join(map(str, args))
    return {int: "an integer", float: "a number", bool: "true or false"}.get(annotation, "a string")


def _invalid(parser: argparse.ArgumentParser, name: str, annotation: Any, value: object,
             error: ValidationError) -> typing.NoReturn:
    """Exit 2 with one line on ``value``, which ``annotation`` refused: for a choice of types (``int >= 1 or
    auto``) what is accepted, which pydantic's message of the first alone leaves out; else pydantic's message."""
    choices = get_origin(annotation) in (typing.Union, type(int | None)) and \
        len([a for a in get_args(annotation) if a is not type(None)]) > 1
    what = f"expected {_accepted(annotation)}; got {value!r}" if choices else error.errors()[0]["msg"]
    parser.error(f"argument {_option(name)}: {what}")


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
    taken = {*signature.parameters, *(f for a in hints.values() if isinstance(a, type) and issubclass(a, BaseModel)
                                      for f in a.model_fields)}
    for name, param in signature.parameters.items():
        annotation = hints.get(name, str)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            models[name] = annotation
            group = parser.add_argument_group(name, docs.get(name))
            default = param.default if isinstance(param.default, annotation) else annotation()
            for field_name, field in annotation.model_fields.items():
                _add(group, field_name, field.annotation, getattr(default, field_name), field.description or "",
                     taken)
        else:
            _add(parser, name, annotation, param.default, docs.get(name, ""), taken)
    return parser, models


def parse_flow_args(flow: Flow, argv: list[str] | None = None, epilog: str | None = None) -> dict[str, Any]:
    """The keyword arguments of ``flow`` from the command line ``argv``: every parameter, a list option not given
    as its default in the signature (a copy) or the settings model."""
    parser, models = flow_parser(flow, epilog)
    values = vars(parser.parse_args(argv))
    kwargs: dict[str, Any] = {}
    for name, model in models.items():     # the flow's own validation, here: a bad option is one line, before anything
        fields = {f: values.pop(f) for f in model.model_fields if f in values}
        try:
            kwargs[name] = model(**fields)
        except ValidationError as exc:
            field = str(exc.errors()[0]["loc"][0])
            _invalid(parser, field, model.model_fields[field].annotation, fields.get(field), exc)
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    for name, param in inspect.signature(flow.fn).parameters.items():
        if name in models:
            continue
        if name not in values:
            values[name] = list(param.default) if isinstance(param.default, list) else param.default
        try:
            TypeAdapter(hints.get(name, str)).validate_python(values[name])
        except ValidationError as exc:
            _invalid(parser, name, hints.get(name, str), values[name], exc)
    return {**values, **kwargs}


def run_flow_from_shell(flow: Flow, argv: list[str] | None = None) -> dict:
    """Run ``flow`` with the options of ``argv``; print its counts, where its tables are and how to see them.
    Ctrl-C: the one line and SystemExit(130), as :func:`flow_main`."""
    kwargs = parse_flow_args(flow, argv)
    ctrl_c = CtrlC()
    try:
        with ctrl_c:
            start_prefect_api()
            summary = flow(**kwargs)
    except KeyboardInterrupt:
        raise SystemExit(_interrupted(kwargs.get("output_uri"))) from None
    except Exception:
        if ctrl_c.seen:     # a KeyboardInterrupt that Prefect or a library turned into another error
            raise SystemExit(_interrupted(kwargs.get("output_uri"))) from None
        raise
    print_summary(flow, summary)
    return summary


def flow_main(flow: Flow, argv: list[str] | None = None, check: Callable[..., object] | None = None) -> int:
    """Run ``flow`` with the options of ``argv`` and say how it went; the exit status (:data:`EXIT_STATUS`).

    ``check(**kwargs)`` refuses bad input before Prefect starts (raising one of :data:`BAD_INPUT`); what it returns,
    when not None, is where the run writes (default: ``output_uri``), which the Ctrl-C line names. The flow runs on
    the API :func:`start_prefect_api` starts, so that Ctrl-C is one line and 130 within seconds. The flow's final
    state decides the rest: its summary printed (:func:`print_summary`) when it has one, then 1 when some results
    failed (``run_failed`` in the summary) or all did (flows.reports.EveryResultFailedError).
    """
    kwargs = parse_flow_args(flow, argv, EXIT_STATUS)
    # After --help: flows.reports imports the run folder's code.
    from flows.reports import EveryResultFailedError

    output = kwargs.get("output_uri")
    ctrl_c = CtrlC()
    try:
        if check is not None:
            output = check(**kwargs) or output
        with ctrl_c:
            start_prefect_api()
            result = flow(**kwargs, return_state=True).result(raise_on_failure=False)
    except KeyboardInterrupt:
        return _interrupted(output)
    except BAD_INPUT as exc:
        print(f"{prog(flow)}: error: {exc}", file=sys.stderr)
        return 2
    if ctrl_c.seen:     # a KeyboardInterrupt that Prefect or a library turned into a failed state
        return _interrupted(output)
    if isinstance(result, EveryResultFailedError):
        print_summary(flow, result.summary)
        print(f"{prog(flow)}: {result}", file=sys.stderr)
        return 1
    if isinstance(result, BaseException):       # met during the run: the run's log has its traceback
        print(f"{prog(flow)}: error: {type(result).__name__}: {' '.join(str(result).split())}", file=sys.stderr)
        return 1
    print_summary(flow, result)
    return 1 if result.get("run_failed", result.get("failed")) else 0


def _interrupted(output: object) -> int:
    kept = f"what was written under {output} is kept; " if output else ""
    print(f"interrupted: {kept}rerun the same command to continue", file=sys.stderr)
    return 130


class CtrlC:
    """Within the block, Ctrl-C (SIGINT) raises KeyboardInterrupt, as Python's own handler does, and is remembered:
    a KeyboardInterrupt can be caught on its way out and turned into a failed flow run (seen: raised while pydantic
    serialised a task's parameters, it came out as a PydanticSerializationError). Where SIGINT is ignored (a
    background job) or handled otherwise, or off the main thread, nothing changes."""

    def __init__(self) -> None:
        self.seen = False
        self._previous: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt


def start_prefect_api() -> None:
    """Start the Prefect API of a flow run from a shell so that a terminal's Ctrl-C does not stop it.

    Without ``PREFECT_API_URL``, a flow runs on Prefect's temporary local API: a server process that Prefect
    starts, as a child of this one, on first use (prefect.server.api.server.SubprocessASGIServer; stopped with
    SIGTERM at exit). A terminal sends Ctrl-C's SIGINT to every process of its foreground group: that server
    stopped at once, while the flow, interrupted too, went on reporting its runs' Crashed states to it (minutes
    of connection retries, then a traceback and exit status 1). Started here, before the flow, with SIGINT
    blocked, the server inherits the blocked signal (its own handlers never see it): it serves the flow's last
    reports and stops at exit; only this process handles Ctrl-C. With ``PREFECT_API_URL`` set, the API is not a
    child of this process: nothing to do."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with _stderr_to(server_log()):      # the server's stderr: its own errors, and tracebacks when stopped
            SubprocessASGIServer().start()  # Prefect's own instance (one per process): its clients find it started
    except RuntimeError as exc:             # it timed out or exited: one line (BAD_INPUT), its log says why
        raise ConnectionError(f"Prefect's temporary API did not start ({' '.join(str(exc).split())[:300]}); see "
                              f"{server_log()}") from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)     # a Ctrl-C meanwhile arrives now


def server_log() -> Path:
    """Where the temporary API server writes its errors: ``$PREFECT_HOME/temporary-server.log``. Stopped at exit
    while a request is in flight (an interrupted flow's last reports), it logs a traceback of the cancelled
    request: the server's business, not the user's, who sees the shell's one line."""
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "temporary-server.log"


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """File descriptor 2 (which a child process inherits) appended to ``path`` within the block; what this process
    says on stderr meanwhile, too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("ab") as log:
            os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def counts(summary: dict) -> tuple[dict[str, int], str | None]:
    """A flow run's counts as its shell prints them: one line of JSON, and the last line of the gani command that
    does the same (``N strip(s) written, M kept, F failed -> OUT``) where there is one.

    edit-dataset: images (``images_ok``, ``images_failed``: an edit of them failed, ``images_kept``: every edit kept
    from an earlier run), strips (one per image x direction: ``strips_written`` now, ``strips_kept``,
    ``strips_failed``) and edits.parquet's rows of the request (``rows``, ``rows_failed``). invert-dataset (and the
    nightly benchmark) as in summary.json, which scripts parse: ``images``, ``ok`` and ``failed`` count the run
    folder's tables (results: image x method), ``skipped`` (kept) and ``computed`` this run's results; its line
    counts this run's results. align-dataset: images, ``ok`` (aligned), ``no_face``, ``failed`` (``no_face``
    included), ``skipped`` (kept), ``computed``. Others (the domain benchmark): a report's rows."""
    s = summary
    if "strips_written" in s:
        return ({"images": s["images_edited"], "images_ok": s["images_edited"] - s["run_failed"],
                 "images_failed": s["run_failed"], "images_kept": s["skipped"],
                 **{f"strips_{k}": s[f"strips_{k}"] for k in ("written", "kept", "failed")},
                 "rows": s["rows"], "rows_failed": s["failed"]},
                f"{s['strips_written']} strip(s) written, {s['strips_kept']} kept, {s['strips_failed']} failed -> "
                f"{s['output']}")
    if "aligned_faces" in s:
        return ({k: s[k] for k in ("images", "ok", "no_face", "failed", "skipped", "computed")},
                f"{s['ok']} of {s['images']} image(s) aligned ({s['skipped']} kept), {s['no_face']} without a face, "
                f"{s['failed'] - s['no_face']} failed -> {s['output']}")
    if "images" not in s:
        return {k: s[k] for k in ("rows", "failed", "ok") if k in s}, None
    found = {k: s[k] for k in ("images", "ok", "failed", "skipped", "computed") if k in s}
    if "run_written" not in s:
        return found, None
    others = s["rows"] - s["run_written"] - s["run_kept"] - s["run_failed"]
    also = f"; its tables also hold {others} result(s) of other runs" if others > 0 else ""
    return found, (f"{s['run_written']} result(s) written, {s['run_kept']} kept, {s['run_failed']} failed -> "
                   f"{s['output']}{also}")


def print_summary(flow: Flow, summary: dict) -> None:
    """A flow run's counts (:func:`counts`), where its tables are and how to see them."""
    # Here, not at the top: MLflow's import takes seconds, which --help need not wait for.
    from tasks.mlflow_view import RUNS_VIEW, runs_url

    images = "images" in summary    # a run folder of inverted images (the domain benchmark: rows of a report)
    found, last = counts(summary)
    print(json.dumps(found))
    if last:
        print(last)
    print("written: " + ", ".join(summary.get("written", {}).values()))
    if summary.get("aligned_faces"):        # align-dataset: faces to invert, no previews, no MLflow run
        print(f"aligned faces under {summary['output']}; invert them with: {_script('gani')} invert "
              f"{summary['output']} --identity --checkpoint CHECKPOINT --out RUN")
    elif images and summary.get("ok"):
        print(f"previews under {storage.join(summary['output'], 'previews')}; see them with: "
              f"{_script('gani')} show {summary['output']}")
    if "mlflow_run_id" not in summary:
        return
    print(f"MLflow run {summary['mlflow_run_id']}: open the UI with {_script('mlflow')} ui --backend-store-uri "
          f"{summary['mlflow_tracking_uri']} --host 127.0.0.1 --port 5000 --workers 1")
    # MLflow 3 opens experiments in its GenAI view unless asked for the runs table (its "Model training" view).
    # The domain benchmark names two views: every run, and this run's children by method.
    for what, view in (summary.get("mlflow_views") or {"runs": RUNS_VIEW}).items():
        print(f"then the {what} of {flow.name}: {runs_url(summary['mlflow_experiment_id'], view=view)}")


def _script(name: str) -> str:
    """The command ``name`` of this environment (the gani and mlflow console scripts beside its Python), as a
    person can run it from any folder: ``.venv/bin/NAME`` when that is where it is from here."""
    path = Path(sys.executable).parent / name
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)
