"""The runs a killed flow process left behind: its MLflow runs marked KILLED, its Prefect flow runs Crashed.

Nothing runs at SIGKILL, so a killed flow's MLflow run stays RUNNING and its Prefect flow run Running. The next
flow run into the same output ends them before it starts its own (:func:`end_stale_runs`; docs/reliability.md).
"""

from __future__ import annotations

import logging
import socket
from uuid import UUID

from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from gani_core import storage

log = logging.getLogger(__name__)


def end_stale_runs(uri: str, experiment_id: str, output_uri: str, logger: logging.Logger | logging.LoggerAdapter = log
                   ) -> list[str]:
    """Mark KILLED the runs of ``experiment_id`` into ``output_uri`` (their ``output_uri`` tag) that a flow process
    left RUNNING when it was killed (nothing runs at SIGKILL), and their Prefect flow runs Crashed where they are
    still Running; a line on ``logger`` for each. Returns their ids.

    A run is stale when the process that started it (``flow_host``, ``flow_pid``: tasks.mlflow_runs.start_run)
    ran on this host and is gone, or when its Prefect flow run (``prefect_flow_run_id``) has ended: Prefect marks
    a flow run whose heartbeats stopped Crashed where an automation says so (docs/reliability.md). Runs of live
    processes, and those of other hosts whose flow run Prefect still calls Running, are left alone: they may be
    running."""
    client = MlflowClient(tracking_uri=uri)
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    ended = []
    for run in running:
        tags = run.data.tags
        if tags.get("output_uri") != output_uri:
            continue
        pid = tags.get("flow_pid", "")
        gone_here = tags.get("flow_host") == socket.gethostname() and pid.isdigit() and \
            not storage.process_running(int(pid))
        flow_run = _prefect_flow_run(tags.get("prefect_flow_run_id"))
        if not (gone_here or (flow_run is not None and flow_run.state is not None and flow_run.state.is_final())):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        crashed = flow_run is not None and _crash(flow_run)
        logger.warning("MLflow run %s (%s) into %s was left RUNNING by a flow process that is gone (%s, pid %s): "
                       "marked KILLED%s", run.info.run_id, run.info.run_name, output_uri,
                       tags.get("flow_host"), pid or "?",
                       f"; its Prefect flow run {flow_run.id} marked Crashed" if crashed else "")
        ended.append(run.info.run_id)
    return ended


def _prefect_flow_run(flow_run_id: str | None) -> FlowRun | None:
    """The Prefect flow run ``flow_run_id`` on the current API, or None where it is not there."""
    if not flow_run_id:
        return None
    try:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(UUID(flow_run_id))
    except (ObjectNotFound, ValueError):
        return None
    except Exception as exc:        # best effort: the MLflow side does not need Prefect
        log.warning("Prefect flow run %s not read (%s: %s)", flow_run_id, type(exc).__name__, exc)
        return None


def _crash(flow_run: FlowRun) -> bool:
    """Mark ``flow_run`` Crashed unless it has ended; whether it was."""
    if flow_run.state is not None and flow_run.state.is_final():
        return False
    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Crashed(message="its flow process was gone (killed); found by "
                                                                   "the next run into the same output"), force=True)
    except Exception as exc:        # best effort, as above
        log.warning("Prefect flow run %s not marked Crashed (%s: %s)", flow_run.id, type(exc).__name__, exc)
        return False
    return True
