"""A Dask LocalCluster of worker processes for the tests and the soak benchmark, and its workers seen and killed
from outside. The functions sent with ``client.run`` are lambdas or nested functions: cloudpickle ships them by
value, so this module need not be importable on the workers."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed import Client


@contextlib.contextmanager
def local_cluster(prefect_api: str, n_workers: int = 2) -> Iterator[Client]:
    """A LocalCluster of ``n_workers`` worker processes (one thread and one torch thread each) whose workers report
    to the Prefect API at ``prefect_api``; a client of it (not the default client). Its workers inherit this
    process's environment as it is when the block starts."""
    from distributed import Client, LocalCluster

    from tasks.inversion import TORCH_THREADS_ENV

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env={"PREFECT_API_URL": prefect_api, TORCH_THREADS_ENV: "1"}) as cluster, \
            Client(cluster.scheduler_address, set_as_default=False) as client:
        yield client


def worker_processes(client: Client) -> dict[str, tuple[int, list]]:
    """Each live worker: address -> (process id, the keys of the tasks it is executing now)."""
    found = client.run(lambda dask_worker: (os.getpid(), [ts.key for ts in dask_worker.state.executing]),
                       on_error="ignore")
    return {address: (pid, list(keys)) for address, (pid, keys) in found.items()}


def kill_busy_worker(client: Client, timeout: float = 60.0, settle: float = 0.0) -> tuple[str, int, list] | None:
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


def times_scheduled(client: Client, key) -> int:
    """How often the Dask scheduler sent the task ``key`` to a worker (its transitions into ``processing``): 2 or
    more when a worker was lost while running it and the task ran again elsewhere."""
    story = client.run_on_scheduler(lambda dask_scheduler: [tuple(t[:3]) for t in dask_scheduler.story(key)])
    return sum(1 for k, _, finish in story if k == key and finish == "processing")


def wait_until_idle(client: Client, timeout: float = 120.0) -> None:
    """Until no worker executes anything (also tasks whose flow is gone: a worker finishes what it runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(keys for _, keys in worker_processes(client).values()) and \
                not any(client.processing().values()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the Dask workers were still busy after {timeout:.0f} s")
