"""What a flow run shows in Prefect's UI: a table artifact of its rows, a markdown summary, and its final state:
Completed when every result is ok, Completed with a message saying how many failed when some did, Failed when all
did (:func:`final_state`)."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed, State

from gani_core.run_folder import DISPLAY_COLUMNS


def _cell(v: object) -> object:
    return round(v, 4) if isinstance(v, float) else v


def rows_artifact(rows: list[dict], key: str, description: str) -> None:
    """One line per image x method with the DISPLAY_COLUMNS."""
    create_table_artifact(key=key, table=[{c: _cell(r.get(c)) for c in DISPLAY_COLUMNS} for r in rows],
                          description=description)


def mlflow_run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Markdown for an MLflow run: a link on a tracking server, else the command that opens its UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"[{run_id}]({tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return (f"`{run_id}`: open with `mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000 "
            f"--workers 1`, then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}")


def summary_artifact(key: str, title: str, facts: dict[str, object], description: str) -> None:
    """A two-column markdown table under ``title``."""
    lines = [f"# {title}", "", "| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in facts.items())]
    create_markdown_artifact(key=key, markdown="\n".join(lines) + "\n", description=description)


class EveryResultFailedError(RuntimeError):
    """Every result of a flow run failed: the run wrote its tables and ended its MLflow run, and its Prefect state
    is Failed with this as its result. ``summary`` is what the flow would have returned."""

    def __init__(self, message: str, summary: dict | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


def final_state(rows: list[dict], result: dict) -> dict | State:
    """What a flow returns for its ``rows``: ``result`` when every one is ok; a Completed state carrying it, whose
    message says ``N of M result(s) failed``, when some failed; a Failed state whose result is an
    :class:`EveryResultFailedError` (``every image failed (N of N): first error …``) when all did."""
    failed = [r for r in rows if r["status"] != "ok"]
    if not failed:
        return result
    if len(failed) == len(rows):
        message = f"every image failed ({len(failed)} of {len(rows)}): first error {failed[0]['error']}"
        return Failed(message=message, data=EveryResultFailedError(message, result))
    return Completed(message=f"{len(failed)} of {len(rows)} result(s) failed", data=result)
