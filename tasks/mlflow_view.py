"""How an experiment opens in MLflow's UI: its runs table, in a saved view whose columns tell the runs apart.

MLflow (3.15 and later) keeps saved views as experiment tags ``mlflow.sharedViewState.<key>``, lists them under
"Views", and opens one from the runs table's URL (:func:`runs_url`). A view's columns are the UI's keys
(``tags.`method```, ``metrics.`lpips_mean```): :func:`view_columns` makes them from the names a run logs. Which
columns each experiment shows is said where its runs are logged (tasks/mlflow_runs.py, tasks/evaluation.py).

What a view's state may hold (read from MLflow 3.17's UI bundle, checked in headless Chromium): the UI state
``selectedColumns``, ``columnOrder``, ``columnWidths`` (pixels by column key; ``attributes.`Run Name``` too),
``groupBy`` (``{"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "method"}]}``:
one group per value, its row the runs' mean of every metric) and ``groupsExpanded`` (by group id
``tag.method.VALUE``, expanded unless false; the runs without the tag, "Additional runs", id ``tag.method``,
collapsed unless true), and the search ``searchFilter``, ``orderByKey``, ``orderByAsc``. The URL cannot add to a
view: a ``searchFilter`` (or any search parameter) in the URL makes the UI ignore ``viewStateShareKey``. Which
child runs are expanded (``runsExpanded``) is never taken from a view.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

RUNS_VIEW = "gani"      # the key of the project's saved view in every experiment

# MLflow's UI opens an experiment in the view its type says; without it, MLflow 3 shows the GenAI view (traces).
_EXPERIMENT_TYPE = {"mlflow.experimentKind": "custom_model_development"}


def view_columns(tags: Iterable[str] = (), metrics: Iterable[str] = ()) -> tuple[str, ...]:
    """The runs-table columns of the run tags ``tags``, then the metrics ``metrics``, in order."""
    return (*(f"tags.`{name}`" for name in tags), *(f"metrics.`{name}`" for name in metrics))


def column_widths(columns: Iterable[str], run_name: int = 210) -> dict[str, int]:
    """Widths (pixels) for the columns whose header is longer than MLflow's default width shows (about 12
    characters): wide enough for the header, and the Run Name column ``run_name`` wide."""
    widths = {"attributes.`Run Name`": run_name}
    for column in columns:
        header = column.split("`")[1]
        if len(header) > 12:
            widths[column] = 32 + 7 * len(header)
    return widths


def runs_view(experiment: str, columns: tuple[str, ...], *, key: str = RUNS_VIEW, name: str | None = None,
              widths: dict[str, int] | None = None, **state: object) -> tuple[str, str]:
    """The experiment tag (key, value) of a saved runs-table view of ``experiment``: ``columns`` in order,
    ``widths`` (default :func:`column_widths`), and any other state MLflow's UI reads from a view (module
    docstring: ``groupBy``, ``groupsExpanded``, ``searchFilter``, ``orderByKey``, ``orderByAsc``)."""
    full = {"selectedColumns": list(columns), "columnOrder": ["attributes.`Run Name`", *columns],
            "columnWidths": column_widths(columns) if widths is None else widths, **state}
    envelope = {"name": name or f"gani: {experiment}", "createdAt": int(time.time() * 1000),
                "state": json.dumps(full)}
    return f"mlflow.sharedViewState.{key}", json.dumps(envelope)


def group_by_tag(tag: str, expanded: dict[str, bool] | None = None) -> dict[str, object]:
    """The view state that groups the runs by the value of the run tag ``tag``, each group's row the mean of its
    runs' metrics; ``expanded``: {tag value: expanded?} (default expanded), ``None`` for the runs without the tag
    ("Additional runs", default collapsed)."""
    ids = {f"tag.{tag}" if value is None else f"tag.{tag}.{value}": open_ for value, open_ in (expanded or {}).items()}
    return {"groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": tag}]},
            "groupsExpanded": ids}


def experiment_tags(experiment: str, columns: tuple[str, ...]) -> dict[str, str]:
    """The tags an experiment of gani carries: open in the runs table (not the GenAI view), with the saved view."""
    key, view = runs_view(experiment, columns)
    return {**_EXPERIMENT_TYPE, key: view}


def runs_url(experiment_id: str, base: str = "http://127.0.0.1:5000", view: str = RUNS_VIEW) -> str:
    """The MLflow UI's runs table of an experiment in the saved view ``view`` (not MLflow 3's default GenAI view)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={view}"
