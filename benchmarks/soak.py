"""Soak: many small images through the invert-dataset flow on 2 Dask workers while workers are killed and the S3
endpoint drops; every image must end with exactly one row.

    .venv/bin/python benchmarks/soak.py                                   # 200 images: docs/reliability.md's figures
    .venv/bin/python benchmarks/soak.py --images 20 --kill-every 8 --json benchmarks/results/soak-20.json

Everything runs on 127.0.0.1: moto's S3 server (input and output under ``s3://soak/``), a temporary Prefect API, a
2-worker LocalCluster (one thread each) reached through ``dask_address`` (a long-lived cluster, warmed before the
run: its workers have loaded the generator and LPIPS), a sqlite MLflow store. The images are seeded 32 px pictures of
the shapes domain, the generator ``builtin-random:32``, the method ``wplus`` with 1 pivot step: the work measured is
the orchestration under faults, not the optimisation.

While the flow runs, a :class:`FaultInjector` thread watches the rows appear and

- SIGKILLs a worker that is executing a task after every ``--kill-every`` new rows (Dask's nanny starts a new worker
  process; the scheduler runs the lost task again on a live worker);
- stops the S3 endpoint once, for ``--outage`` seconds, when half of the rows exist (gani_core.storage retries).

botocore's own retries are off here (``AWS_MAX_ATTEMPTS=1``, set by :func:`s3_environment`), so that the outage
meets gani's storage retries (``GANI_STORAGE_RETRIES=5``, ``GANI_STORAGE_BACKOFF=0.2``: about 6 s in all) rather
than being ridden out inside one botocore call.

Then the same run again, without faults: it computes the images that have no ok result yet (at most those that
failed), and every image must end with one ok row.

Prints one JSON object: images, rows, ok, failed, lost (images without a row), duplicated (images with more than
one), the faults injected (kills, outages), ``storage_retries`` (the ``storage:`` retry warnings in the run's Prefect
logs), ``tasks_run_again`` (task runs that went back to Pending after Running: a lost worker's tasks, run again by
Dask), ``task_retries`` (Prefect's retries of tasks that raised), wall seconds, and
the rerun's (``rerun_computed``, ``rerun_ok``, ...).

tests/test_faults.py runs :func:`soak` on 20 images with the helpers below.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

BUCKET = "soak"
SPEC = "builtin-random:32"
SOAK_ENV = {
    "AWS_MAX_ATTEMPTS": "1",                # botocore: one attempt per call; gani_core.storage retries instead
    "GANI_STORAGE_RETRIES": "5",            # 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s of backoff (plus jitter)
    "GANI_STORAGE_BACKOFF": "0.2",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Endpoint:
    """moto's S3 server on 127.0.0.1, which can be stopped and started again on the same port. Its buckets live in
    this process's memory, so they survive a stop: what a restarted endpoint serves is what it held."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def up(self) -> bool:
        return self._server is not None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Unreachable (connection refused) within the block."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def __enter__(self) -> S3Endpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def s3_environment(endpoint: S3Endpoint, secret: str = "soak-secret") -> dict[str, str]:
    """What boto, s3fs and every worker process need to reach ``endpoint``, and the storage retry settings of the
    soak (SOAK_ENV)."""
    return {"AWS_ACCESS_KEY_ID": "soak", "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint.url, **SOAK_ENV}


def write_shapes(uri: str, count: int, seed: int = 0, resolution: int = 32) -> list[str]:
    """``count`` seeded PNG pictures of the shapes domain under ``uri`` (a folder or ``s3://`` prefix); their URIs."""
    import torch

    from gani_core import storage
    from gani_core.render import grid_png
    from gani_core.shapes.domain import sample_images

    images, _ = sample_images(count, resolution, torch.Generator().manual_seed(seed))
    uris = [storage.join(uri, f"shape-{i:04d}.png") for i in range(count)]
    for i, target in enumerate(uris):
        storage.write_bytes(target, grid_png((images[i : i + 1] + 1) / 2))
    return uris


# ----------------------------------------------------------------------------------------------------------------
# Workers (the functions sent with client.run are lambdas: cloudpickle ships them by value, this module need not be
# importable on the workers)


def worker_processes(client) -> dict[str, tuple[int, list]]:
    """Each live worker: address -> (process id, the keys of the tasks it is executing now)."""
    found = client.run(lambda dask_worker: (os.getpid(), [ts.key for ts in dask_worker.state.executing]),
                       on_error="ignore")
    return {address: (pid, list(keys)) for address, (pid, keys) in found.items()}


def kill_busy_worker(client, timeout: float = 60.0, settle: float = 0.0) -> tuple[str, int, list] | None:
    """SIGKILL the process of a worker that is executing a task, waiting up to ``timeout`` s for one (and then
    ``settle`` s more, for the task to get into its work); its address, process id and the keys it was executing, or
    None when no worker got busy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [(address, pid, keys) for address, (pid, keys) in worker_processes(client).items() if keys]
        if busy:
            address, pid, keys = busy[0]
            if settle:
                time.sleep(settle)
                if worker_processes(client).get(address) != (pid, keys):     # done meanwhile: find a busy one again
                    continue
            os.kill(pid, signal.SIGKILL)
            return address, pid, keys
        time.sleep(0.05)
    return None


def times_scheduled(client, key) -> int:
    """How often the Dask scheduler sent the task ``key`` to a worker (its transitions into ``processing``): 2 or
    more when a worker was lost while running it and the task ran again elsewhere."""
    story = client.run_on_scheduler(lambda dask_scheduler: [tuple(t[:3]) for t in dask_scheduler.story(key)])
    return sum(1 for k, _, finish in story if k == key and finish == "processing")


def wait_until_idle(client, timeout: float = 120.0) -> None:
    """Until no worker executes anything (also tasks whose flow is gone: a worker finishes what it runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(keys for _, keys in worker_processes(client).values()) and \
                not any(client.processing().values()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the Dask workers were still busy after {timeout:.0f} s")


def flush_prefect_logs(client=None) -> None:
    """Send the logs and events (task run states) that this process, and every worker of ``client``, still holds
    to the Prefect API."""
    def drain() -> None:        # nested: cloudpickle sends it by value
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)

    if client is not None:
        client.run(drain, on_error="ignore")
    drain()


# ----------------------------------------------------------------------------------------------------------------
# What the Prefect API holds of a flow run


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


# ----------------------------------------------------------------------------------------------------------------
# Faults while a flow runs


class FaultInjector(threading.Thread):
    """Watches the rows under ``rows_uri`` while a flow runs: SIGKILLs a busy worker after every ``kill_every`` new
    rows, and stops ``endpoint`` for ``outage`` seconds once ``outage_at`` rows exist; stops injecting once ``total``
    rows exist. ``events`` lists what it did: (seconds since it started, what, detail)."""

    def __init__(self, rows_uri: str, scheduler_address: str, total: int, kill_every: int | None = None,
                 endpoint: S3Endpoint | None = None, outage: float = 0.0, outage_at: int | None = None) -> None:
        super().__init__(daemon=True, name="fault-injector")
        self.rows_uri, self.scheduler_address, self.total = rows_uri, scheduler_address, total
        self.kill_every, self.endpoint, self.outage, self.outage_at = kill_every, endpoint, outage, outage_at
        self.events: list[tuple[float, str, str]] = []
        self._done = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        from distributed import Client

        from gani_core import storage

        started = time.monotonic()
        next_kill = self.kill_every
        outage_due = self.endpoint is not None and self.outage_at is not None and self.outage > 0
        try:
            with Client(self.scheduler_address, set_as_default=False) as client:
                while not self._done.is_set():
                    rows = len(storage.names_under(self.rows_uri))
                    if rows >= self.total:
                        return
                    if outage_due and rows >= self.outage_at:
                        self.events.append((time.monotonic() - started, "s3-outage",
                                            f"{self.outage:g} s at {rows} rows"))
                        with self.endpoint.down():
                            self._done.wait(self.outage)
                        outage_due = False
                    elif next_kill is not None and rows >= next_kill:
                        killed = kill_busy_worker(client, timeout=5)
                        if killed:
                            self.events.append((time.monotonic() - started, "worker-killed",
                                                f"{killed[0]} (pid {killed[1]}) at {rows} rows"))
                            next_kill = rows + self.kill_every
                    self._done.wait(0.1)
        except BaseException as exc:            # surfaced by stop(): a fault thread that failed must fail the soak
            self._error = exc

    def stop(self) -> None:
        self._done.set()
        self.join()
        if self._error is not None:
            raise RuntimeError(f"the fault injector failed: {type(self._error).__name__}: {self._error}") \
                from self._error

    def count(self, kind: str) -> int:
        return sum(e[1] == kind for e in self.events)


def row_check(metrics_rows: list[dict], image_ids: list[str]) -> dict:
    """Per image, how many rows the run's table holds: lost (none), duplicated (more than one), ok, failed."""
    per_image = Counter(r["image_id"] for r in metrics_rows)
    failed = {r["image_id"]: r["error"] for r in metrics_rows if r["status"] != "ok"}
    return {"images": len(image_ids), "rows": len(metrics_rows),
            "ok": sum(r["status"] == "ok" for r in metrics_rows), "failed": len(failed),
            "lost": sorted(set(image_ids) - set(per_image)),
            "duplicated": sorted(i for i, n in per_image.items() if n > 1),
            "unexpected": sorted(set(per_image) - set(image_ids)), "failures": failed}


def soak(input_uri: str, output_uri: str, scheduler_address: str, endpoint: S3Endpoint | None, *,
         kill_every: int | None, outage: float, method: str = "wplus", pivot_steps: int = 1,
         batch_size: int = 1, mlflow_tracking_uri: str | None = None) -> dict:
    """An invert-dataset run of every image under ``input_uri`` into ``output_uri`` on the cluster at
    ``scheduler_address``, with a FaultInjector (kills after every ``kill_every`` rows, one ``outage`` of
    ``endpoint`` at half the rows), then the same run again without faults (it computes what failed); the figures
    (see the module docstring; ``rerun_*`` for the second run). Runs within a Prefect API context."""
    from distributed import Client

    from flows.invert_dataset import invert_dataset
    from flows.parameters import ClusterSettings, InversionSettings
    from gani_core import storage
    from gani_core.dataset import list_images
    from gani_core.run_folder import RunFolder

    images = [image.image_id for image in list_images(input_uri)]
    folder = RunFolder(output_uri)

    def run() -> tuple[dict, UUID, float]:
        started = time.perf_counter()
        state = invert_dataset(input_uri=input_uri, output_uri=output_uri, checkpoint=SPEC, method=method,
                               inversion=InversionSettings(pivot_steps=pivot_steps, batch_size=batch_size),
                               cluster=ClusterSettings(dask_address=scheduler_address),
                               mlflow_tracking_uri=mlflow_tracking_uri, return_state=True)
        return state.result(), state.state_details.flow_run_id, time.perf_counter() - started

    injector = FaultInjector(folder.path("rows"), scheduler_address, total=len(images), kill_every=kill_every,
                             endpoint=endpoint, outage=outage, outage_at=len(images) // 2)
    injector.start()
    try:
        summary, root, wall = run()
    finally:
        injector.stop()
    with Client(scheduler_address, set_as_default=False) as client:
        flush_prefect_logs(client)
    logs, states = prefect_logs(root), task_run_states(root)
    faulted = row_check(storage.read_parquet(folder.metrics_uri).to_pylist(), images)
    again, rerun_root, rerun_wall = run()
    final = row_check(storage.read_parquet(folder.metrics_uri).to_pylist(), images)
    return {**faulted, "kills": injector.count("worker-killed"), "outages": injector.count("s3-outage"),
            "outage_seconds": outage, "storage_retries": storage_retries(logs),
            "tasks_run_again": len(tasks_run_again(states)), "task_retries": task_retries(states),
            "computed": summary["computed"],
            "wall_seconds": round(wall, 1), "events": injector.events, "flow_run_ids": [str(root), str(rerun_root)],
            "rerun_computed": again["computed"], "rerun_skipped": again["skipped"], "rerun_ok": final["ok"],
            "rerun_failed": final["failed"], "rerun_lost": final["lost"], "rerun_duplicated": final["duplicated"],
            "rerun_wall_seconds": round(rerun_wall, 1),
            "row_files": len(storage.names_under(folder.path("rows")))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--kill-every", type=int, default=40, help="SIGKILL a busy worker after every N new rows")
    p.add_argument("--outage", type=float, default=3.0, help="seconds the S3 endpoint is down, once, at half the rows")
    p.add_argument("--batch-size", type=int, default=1, help="images per task")
    p.add_argument("--pivot-steps", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)

    for name, value in {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                        "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(name, value)
    import boto3
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from gani_core.checkpoints.ref import resolve_checkpoint
    from tasks.inversion import TORCH_THREADS_ENV, warm_worker

    t0 = time.perf_counter()
    with S3Endpoint() as endpoint, tempfile.TemporaryDirectory(prefix="gani-soak-") as work:
        os.environ.update(s3_environment(endpoint), GANI_CACHE_DIR=str(Path(work) / "cache"))
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        write_shapes(f"s3://{BUCKET}/in", args.images)
        with prefect_test_harness(server_startup_timeout=None), \
                LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                             env={"PREFECT_API_URL": PREFECT_API_URL.value(), TORCH_THREADS_ENV: "1"}) as cluster, \
                Client(cluster.scheduler_address, set_as_default=False) as client:
            client.run(warm_worker, resolve_checkpoint(SPEC))
            ready = time.perf_counter() - t0
            figures = soak(f"s3://{BUCKET}/in", f"s3://{BUCKET}/out", cluster.scheduler_address, endpoint,
                           kill_every=args.kill_every, outage=args.outage, batch_size=args.batch_size,
                           pivot_steps=args.pivot_steps,
                           mlflow_tracking_uri=f"sqlite:///{Path(work) / 'mlflow.db'}")
    figures = {"setup_seconds": round(ready, 1), "batch_size": args.batch_size, "pivot_steps": args.pivot_steps,
               "method": "wplus", "generator": SPEC, "workers": 2, **figures}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    ok = not any(figures[k] for k in ("lost", "duplicated", "unexpected", "rerun_lost", "rerun_duplicated"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
