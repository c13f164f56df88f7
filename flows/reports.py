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


def summary_artifact(key: str, title: str, facts: dict[str, object], description: str) -> None:
    """A two-column markdown table under ``title``."""
    lines = [f"# {title}", "", "| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in facts.items())]
    create_markdown_artifact(key=key, markdown="\n".join(lines) + "\n", description=description)
