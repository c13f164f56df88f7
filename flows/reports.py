"""What a flow run shows in Prefect's UI: a table artifact of its rows and a markdown summary."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

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
