"""How an experiment opens in MLflow's UI: its runs table, in a saved view whose columns tell the runs apart.

MLflow (3.15 and later) keeps saved views as experiment tags ``mlflow.sharedViewState.<key>``, lists them under
"Views", and opens one from the runs table's URL (:func:`runs_url`). A view's columns are the UI's keys
(``tags.`method```, ``metrics.`lpips_mean```): :func:`view_columns` makes them from the names a run logs. Which
columns each experiment shows is said where its runs are logged (tasks/mlflow_runs.py, tasks/evaluation.py).
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


def runs_view(experiment: str, columns: tuple[str, ...]) -> tuple[str, str]:
    """The experiment tag (key, value) of the saved runs-table view of ``experiment``: ``columns`` in order."""
    state = {"selectedColumns": list(columns), "columnOrder": ["attributes.`Run Name`", *columns]}
    envelope = {"name": f"gani: {experiment}", "createdAt": int(time.time() * 1000), "state": json.dumps(state)}
    return f"mlflow.sharedViewState.{RUNS_VIEW}", json.dumps(envelope)


def experiment_tags(experiment: str, columns: tuple[str, ...]) -> dict[str, str]:
    """The tags an experiment of gani carries: open in the runs table (not the GenAI view), with the saved view."""
    key, view = runs_view(experiment, columns)
    return {**_EXPERIMENT_TYPE, key: view}


def runs_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI's runs table of an experiment in the project's view (not MLflow 3's default GenAI view)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW}"
