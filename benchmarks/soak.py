"""Soak: many small images through the invert-dataset flow on 2 Dask workers while workers are killed and the S3
endpoint drops; every image must end with exactly one row.

    .venv/bin/python benchmarks/soak.py                                   # 200 images: docs/reliability.md's figures
    .venv/bin/python benchmarks/soak.py --images 20 --kill-every 8 --json benchmarks/results/soak-20.json

Everything runs on 127.0.0.1: moto's S3 server (input and output under ``s3://soak/``), a temporary Prefect API, a
2-worker LocalCluster (one thread each) reached through ``dask_address`` (a long-lived cluster, warmed before the
run: its workers have loaded the generator and LPIPS), a sqlite MLflow store. The images are seeded 32 px pictures of
the shapes domain, the generator ``builtin-random:32``, the method ``wplus`` with 1 pivot step: the work measured is
the orchestration under faults, not the optimisation.

While the flow runs, a :class:`FaultInjector` thread watches the results (`deltas/`) appear and

- SIGKILLs a worker that is executing a task after every ``--kill-every`` new results (Dask's nanny starts a new worker
  process; the scheduler runs the lost task again on a live worker);
- stops the S3 endpoint once, for ``--outage`` seconds, when half of the results exist (gani_core.storage retries).

botocore's own retries are off here (``AWS_MAX_ATTEMPTS=1``: tests/support/s3.py's SHORT_RETRIES), so that the
outage meets gani's storage retries (``GANI_STORAGE_RETRIES=5``, ``GANI_STORAGE_BACKOFF=0.2``: about 6 s in all)
rather than being ridden out inside one botocore call.

Then the same run again, without faults: it computes the images that have no ok result yet (at most those that
failed), and every image must end with one ok row.

Prints one JSON object: images, rows, ok, failed, lost (images without a row), duplicated (images with more than
one), the faults injected (kills, outages), ``storage_retries`` (the ``storage:`` retry warnings in the run's Prefect
logs), ``tasks_run_again`` (task runs that went back to Pending after Running: a lost worker's tasks, run again by
Dask), ``task_retries`` (Prefect's retries of tasks that raised), wall seconds, and
the rerun's (``rerun_computed``, ``rerun_ok``, ...).

The soak itself and its helpers are in tests/support/ (faults.py, s3.py, prefect_api.py, dask_cluster.py), which
tests/test_faults.py uses too: it runs the soak on 20 images. This file is the benchmark's command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))       # tests.support, when run as a script

from tests.support.dask_cluster import local_cluster  # noqa: E402
from tests.support.faults import SPEC, soak, write_shapes  # noqa: E402
from tests.support.prefect_api import services_environment, temporary_prefect_api  # noqa: E402
from tests.support.s3 import SHORT_RETRIES, s3_service  # noqa: E402

BUCKET = "soak"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--kill-every", type=int, default=40,
                   help="SIGKILL a busy worker after every N new results (deltas files)")
    p.add_argument("--outage", type=float, default=3.0,
                   help="seconds the S3 endpoint is down, once, at half the results")
    p.add_argument("--batch-size", type=int, default=1, help="images per task")
    p.add_argument("--pivot-steps", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)

    services_environment()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from gani_core.checkpoints.ref import resolve_checkpoint
    from tasks.inversion import warm_worker

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gani-soak-") as work, \
            s3_service(BUCKET, Path(work) / "cache", env=SHORT_RETRIES) as endpoint:
        write_shapes(f"s3://{BUCKET}/in", args.images)
        with temporary_prefect_api() as api, local_cluster(api) as client:
            client.run(warm_worker, resolve_checkpoint(SPEC))
            ready = time.perf_counter() - t0
            figures = soak(f"s3://{BUCKET}/in", f"s3://{BUCKET}/out", client.scheduler.address, endpoint,
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
