"""The Dask cluster of a flow run: an existing scheduler, or a LocalCluster (LocalCUDACluster with GPUs) built
for the run and sized to the machine."""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext

import distributed
import psutil
from prefect.client.orchestration import get_client
from prefect.futures import PrefectFuture
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from flows.parameters import ClusterSettings
from tasks.inversion import TORCH_THREADS_ENV

WORKER_MEMORY_GB = 3.0      # a CPU worker's generator, LPIPS (alex + vgg) and one image's optimisation


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_n_workers(gpu: bool) -> int:
    """LocalCluster size: one worker per GPU; on CPUs one worker per core, as many as the memory holds."""
    if gpu:
        import torch

        return max(1, torch.cuda.device_count())
    return max(1, min(available_cores(), int(psutil.virtual_memory().total / 2**30 / WORKER_MEMORY_GB)))


def worker_torch_threads(n_workers: int) -> int:
    """Torch threads of each CPU worker of a LocalCluster of ``n_workers``: ``$GANI_TORCH_THREADS`` when set,
    else the worker's share of the cores (one task thread per worker; fewer workers than cores, as for a small
    run, get more threads each instead of leaving cores idle)."""
    given = os.environ.get(TORCH_THREADS_ENV, "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, available_cores() // max(n_workers, 1))


def flow_api_url() -> str:
    return str(get_client(sync_client=True).api_url).rstrip("/")


def api_url_for_workers() -> AbstractContextManager:
    """Where the Dask tasks report to: this flow's Prefect API, also when it is the temporary local one.

    Tasks carry the flow's Prefect settings to the workers. On the temporary API ``PREFECT_API_URL`` is unset,
    and every worker of an external cluster (``dask_address``) would start a temporary API of its own (seen:
    about 15-20 s on its first task, and its task runs and logs kept there, not in the flow's API). Setting the
    URL while the tasks are submitted sends them to the flow's API; with a server it is set already."""
    if PREFECT_API_URL.value():
        return nullcontext()
    return temporary_settings({PREFECT_API_URL: flow_api_url()})


def dask_task_runner(cluster: ClusterSettings, tasks: int) -> DaskTaskRunner:
    """The task runner of one flow run: the scheduler at ``cluster.dask_address``, else a LocalCluster for it.

    With ``gpu`` and no address: dask-cuda's LocalCUDACluster when installed (one worker pinned to each GPU),
    else a LocalCluster; either way every worker offers one ``GPU`` resource, which each task asks for.
    """
    if cluster.dask_address:
        return DaskTaskRunner(address=cluster.dask_address)
    n = min(cluster.n_workers or default_n_workers(cluster.gpu), max(tasks, 1))   # no idle workers for a small run
    # Workers report task runs to this flow's Prefect API (without it, each worker process would start a
    # temporary API of its own when the flow runs on the ephemeral one).
    env = {"PREFECT_API_URL": flow_api_url()}
    if not cluster.gpu:     # tasks/inversion.py sets it in each worker (Dask's nanny starts workers with 1 thread)
        env[TORCH_THREADS_ENV] = str(worker_torch_threads(n))
    kwargs: dict = {"n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0",
                    "env": env}
    cluster_class = "distributed.LocalCluster"
    if cluster.gpu:
        kwargs["resources"] = {"GPU": 1}
        try:
            import dask_cuda  # noqa: F401

            cluster_class = "dask_cuda.LocalCUDACluster"
        except ImportError:
            pass
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=kwargs)


def release_future(future: PrefectFuture) -> None:
    """Let the Dask scheduler forget a task whose result the flow holds now (its state is kept in ``future``), so
    that a worker lost later does not make Dask compute a finished task again."""
    wrapped = getattr(future, "wrapped_future", None)
    if isinstance(wrapped, distributed.Future):
        wrapped.release()


WINDOW_PER_THREAD = 2       # tasks submitted and not yet read, per worker thread: one running, one queued behind it
WINDOW_MIN = 4
WINDOW_WITHOUT_DASK = 16    # a task runner whose workers cannot be asked (not Dask)
WINDOW_RECHECK_S = 10.0     # how often the workers are counted again (an adaptive cluster grows with its queue)


def worker_threads(runner: object) -> int | None:
    """The task threads of the Dask workers behind ``runner`` now (a started DaskTaskRunner: its client asks the
    scheduler), or None when ``runner`` is not Dask's or the scheduler does not answer."""
    if not isinstance(runner, DaskTaskRunner):
        return None
    try:
        return sum(runner.client.nthreads().values())
    except Exception:       # a scheduler gone: the submissions will say so
        return None


class SubmissionWindow:
    """How many tasks a fan-out keeps submitted and not yet read: ``fixed`` when given, else
    WINDOW_PER_THREAD x the workers' threads (at least WINDOW_MIN; WINDOW_WITHOUT_DASK when they cannot be
    counted), counted again every WINDOW_RECHECK_S seconds, so that workers that join (an adaptive cluster, a
    worker restarted after a kill) get work."""

    def __init__(self, runner: object, fixed: int | None = None, clock=time.monotonic) -> None:
        self.runner, self.fixed, self.clock = runner, fixed, clock
        self._size, self._checked = 0, float("-inf")

    def size(self) -> int:
        if self.fixed:
            return max(1, self.fixed)
        now = self.clock()
        if now - self._checked >= WINDOW_RECHECK_S:
            threads = worker_threads(self.runner)
            self._size = WINDOW_WITHOUT_DASK if threads is None else max(WINDOW_MIN, WINDOW_PER_THREAD * threads)
            self._checked = now
        return self._size
