"""The soak: a dataset run on a Dask cluster while a FaultInjector kills busy workers and drops the S3 endpoint,
then the same run again without faults. benchmarks/soak.py runs it on 200 images and describes its figures;
tests/test_faults.py runs it on 20 and uses the parts (write_shapes, FaultInjector) on their own."""

from __future__ import annotations

import threading
import time
from collections import Counter
from uuid import UUID

from .dask_cluster import kill_busy_worker
from .prefect_api import (
    flush_prefect_logs,
    prefect_logs,
    storage_retries,
    task_retries,
    task_run_states,
    tasks_run_again,
)
from .s3 import S3Endpoint

SPEC = "builtin-random:32"      # the soak's generator: the work measured is the orchestration, not the optimisation


def write_shapes(uri: str, count: int, seed: int = 0, resolution: int = 32) -> list[str]:
    """``count`` seeded PNG pictures of the shapes domain under ``uri`` (a folder or ``s3://`` prefix), named
    ``shape-0000.png`` on; their URIs."""
    import torch

    from gani_core import storage
    from gani_core.render import grid_png
    from gani_core.shapes.domain import sample_images

    images, _ = sample_images(count, resolution, torch.Generator().manual_seed(seed))
    uris = [storage.join(uri, f"shape-{i:04d}.png") for i in range(count)]
    for i, target in enumerate(uris):
        storage.write_bytes(target, grid_png((images[i : i + 1] + 1) / 2))
    return uris


class FaultInjector(threading.Thread):
    """Watches the results appear under ``results_uri`` while a flow runs (a run folder's ``deltas/``: one file per
    image, written as its batch ends; ``rows/`` holds one part per batch, too coarse to count images by): SIGKILLs a
    busy worker after every ``kill_every`` new results, and stops ``endpoint`` for ``outage`` seconds once
    ``outage_at`` results exist; stops injecting once ``total`` exist. ``events`` lists what it did: (seconds since
    it started, what, detail). As a context manager: started on entry, stopped on exit."""

    def __init__(self, results_uri: str, scheduler_address: str, total: int, kill_every: int | None = None,
                 endpoint: S3Endpoint | None = None, outage: float = 0.0, outage_at: int | None = None) -> None:
        super().__init__(daemon=True, name="fault-injector")
        self.results_uri, self.scheduler_address, self.total = results_uri, scheduler_address, total
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
                    done = len(storage.names_under(self.results_uri))
                    if done >= self.total:
                        return
                    if outage_due and done >= self.outage_at:
                        self.events.append((time.monotonic() - started, "s3-outage",
                                            f"{self.outage:g} s at {done} results"))
                        with self.endpoint.down():
                            self._done.wait(self.outage)
                        outage_due = False
                    elif next_kill is not None and done >= next_kill:
                        killed = kill_busy_worker(client, timeout=5)
                        if killed:
                            self.events.append((time.monotonic() - started, "worker-killed",
                                                f"{killed[0]} (pid {killed[1]}) at {done} results"))
                            next_kill = done + self.kill_every
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

    def __enter__(self) -> FaultInjector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    ``scheduler_address``, with a FaultInjector (kills after every ``kill_every`` results, one ``outage`` of
    ``endpoint`` at half the results), then the same run again without faults (it computes what failed); the figures
    (benchmarks/soak.py's docstring; ``rerun_*`` for the second run). Runs within a Prefect API context."""
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

    with FaultInjector(folder.path("deltas"), scheduler_address, total=len(images), kill_every=kill_every,
                       endpoint=endpoint, outage=outage, outage_at=len(images) // 2) as injector:
        summary, root, wall = run()
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
