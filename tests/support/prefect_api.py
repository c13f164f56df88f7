"""Prefect for the tests and the soak benchmark: the environment set before it is imported, its temporary local
API, and what the API holds of a flow run (its subflows, logs and task run states)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from uuid import UUID

from gani_core.telemetry import quiet_telemetry

# Time for the temporary API's first start on a fresh PREFECT_HOME (it creates its database; Prefect's default of
# 20 s was seen to time out).
STARTUP_TIMEOUT = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}


def services_environment() -> None:
    """Set, where this process's environment does not, what must be there before Prefect, Dask or MLflow is
    imported: no telemetry (gani_core.telemetry), and STARTUP_TIMEOUT. Worker processes inherit it."""
    quiet_telemetry()
    for name, value in STARTUP_TIMEOUT.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def temporary_prefect_api() -> Iterator[str]:
    """Prefect's temporary local API (prefect_test_harness, with the startup timeout of the environment) within the
    block; its URL (``PREFECT_API_URL``, which a worker process needs in its environment to report to it)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        yield PREFECT_API_URL.value()


def flush_prefect_logs(client=None) -> None:
    """Send the logs and events (task run states) that this process, and every worker of the Dask ``client``, still
    holds to the Prefect API."""
    def drain() -> None:        # nested: cloudpickle sends it by value
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)

    if client is not None:
        client.run(drain, on_error="ignore")
    drain()


def flow_run_ids(root: UUID) -> list[UUID]:
    """``root`` and its subflow runs, recursively."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    ids, frontier = [root], [root]
    with get_client(sync_client=True) as client:
        while frontier:
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
            frontier = [r.id for r in children if r.id not in ids]
            ids += frontier
    return ids


def _paged(read, page: int = 200) -> list:
    found, offset = [], 0
    while batch := read(limit=page, offset=offset):
        found += batch
        offset += len(batch)
        if len(batch) < page:
            break
    return found


def prefect_logs(root: UUID) -> list[str]:
    """Every log message of the flow run ``root`` and its subflows (their task runs' included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids(root)))
    with get_client(sync_client=True) as client:
        return [log.message for log in _paged(lambda **page: client.read_logs(log_filter=log_filter, **page))]


def task_run_states(root: UUID) -> dict[str, list[str]]:
    """Every task run of ``root`` and its subflows: name -> the names of its states in order (Pending, Running,
    Retrying, Completed, ...)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids(root)))
    with get_client(sync_client=True) as client:
        runs = _paged(lambda **page: client.read_task_runs(flow_run_filter=flow_runs, **page))
        return {run.name: [s.name for s in client.read_task_run_states(run.id)] for run in runs}


def storage_retries(logs: list[str]) -> int:
    """The storage retries in a run's logs (tasks/storage.py forwards gani_core.storage's warnings)."""
    from tasks.storage import STORAGE_LOG_PREFIX

    return sum(m.startswith(STORAGE_LOG_PREFIX) and "; retry " in m for m in logs)


def tasks_run_again(states: dict[str, list[str]]) -> list[str]:
    """The inversion task runs that went back to Pending after Running: Dask ran them again after the worker
    running them was lost."""
    return sorted(name for name, names in states.items() if name.startswith("invert-") and "Running" in names and
                  "Pending" in names[names.index("Running") :])


def task_retries(states: dict[str, list[str]]) -> int:
    """How often Prefect retried an inversion task that raised (its ``retries=1``)."""
    return sum(names.count("Retrying") for name, names in states.items() if name.startswith("invert-"))
