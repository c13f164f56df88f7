"""The fan-out's own cost (issue 18): its progress log grows with tasks and time, not images (flows/progress.py), and
it keeps a bounded window of tasks submitted and not yet read (flows/fan_out.py: invert_images_on_dask).

The progress tests are plain unit tests (a fake clock, a recording logger). The window tests are marked ``services``:
Prefect's temporary API and conftest's 2-worker Dask cluster; ``builtin-random:32``, wplus with one pivot step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow

import flows.cluster as cluster_module
import flows.fan_out as fan_out
from flows.cluster import WINDOW_MIN, WINDOW_WITHOUT_DASK, SubmissionWindow
from flows.progress import FinishedImagesLog
from gani_core.dataset import ImageSource
from gani_core.invert import method_config


class Recorder:
    """A logger that keeps its lines: (level, message)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str, *args) -> None:
        self.lines.append(("info", msg % args))

    def warning(self, msg: str, *args) -> None:
        self.lines.append(("warning", msg % args))

    def level(self, name: str) -> list[str]:
        return [m for lv, m in self.lines if lv == name]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _rows(start: int, n: int, failed: set[int] = frozenset()) -> list[dict]:
    return [{"image_id": f"img-{i:06d}", "method": "wplus", "status": "failed" if i in failed else "ok",
             "error": f"OSError: no space left writing img-{i:06d}" if i in failed else None, "lpips": 0.1}
            for i in range(start, start + n)]


def _feed(progress: FinishedImagesLog, clock: Clock, total: int, per_task: int, seconds_per_task: float,
          failed: set[int] = frozenset()) -> None:
    for start in range(0, total, per_task):
        clock.now += seconds_per_task
        progress.done(_rows(start, min(per_task, total - start), failed))
    progress.finish()


def test_progress_lines_for_10000_images_are_bounded_and_every_failure_says_why():
    log, clock, reports = Recorder(), Clock(), []
    failed = {17, 2500, 2501, 9999}
    progress = FinishedImagesLog(10_000, log, clock=clock, report=lambda p, text: reports.append((p, text)))
    _feed(progress, clock, 10_000, per_task=1, seconds_per_task=0.01, failed=failed)
    lines = log.level("info")
    assert len(lines) <= 25          # 5 % of 10,000 = every 500 images, and the last line: 21
    assert len(lines) == 21
    assert lines[0] == "progress: 500/10,000 result(s) done (5.0 %), 1 failed so far, 100.0 images/s, about 2 min left"
    assert lines[9] == "progress: 5,000/10,000 result(s) done (50.0 %), 3 failed so far, 100.0 images/s, " \
                       "about 50 s left"
    assert lines[-1] == "progress: 10,000/10,000 result(s) done (100.0 %), 4 failed, 100.0 images/s, in 2 min"
    assert log.level("warning") == [f"img-{i:06d} [wplus]: failed: OSError: no space left writing img-{i:06d}"
                                    for i in sorted(failed)]
    # The UI's progress: at the start, then with each line.
    assert reports[0] == (0.0, "progress: 0/10,000 result(s) done (0.0 %), 0 failed so far, 0.0 images/s, "
                               "time left unknown")
    assert [r[1] for r in reports[1:]] == lines and reports[-1][0] == 100.0


def test_progress_line_reads_as_in_the_issue():
    log, clock = Recorder(), Clock()
    progress = FinishedImagesLog(10_000, log, every=1280, interval=float("inf"), clock=clock)
    for start in range(0, 1280, 10):        # 21.3 images/s: 10 images every 0.46948 s
        clock.now += 10 / 21.3
        progress.done(_rows(start, 10, failed={3, 50, 700, 1001}))
    assert log.level("info") == ["progress: 1,280/10,000 result(s) done (12.8 %), 4 failed so far, 21.3 images/s, "
                                 "about 7 min left"]


def test_slow_results_get_a_line_every_30_s_and_none_while_nothing_finishes():
    log, clock = Recorder(), Clock()
    progress = FinishedImagesLog(100, log, clock=clock)     # every 64 images, or 30 s
    _feed(progress, clock, 10, per_task=1, seconds_per_task=10.0)
    clock.now += 600                                        # a long task: no line while nothing finishes
    progress.done(_rows(10, 1))
    lines = log.level("info")
    assert [line.split(" result(s)")[0] for line in lines] == ["progress: 3/100", "progress: 6/100", "progress: 9/100",
                                                               "progress: 10/100", "progress: 11/100"]
    assert lines[0].endswith("0.1 images/s, about 16 min left")
    assert lines[3] == "progress: 10/100 result(s) done (10.0 %), 0 failed, 0.1 images/s, in 2 min"


def test_failure_lines_stop_after_20_and_the_rest_are_counted():
    log, clock = Recorder(), Clock()
    progress = FinishedImagesLog(1000, log, clock=clock)
    _feed(progress, clock, 1000, per_task=50, seconds_per_task=1.0, failed=set(range(0, 1000, 10)))    # 100 failed
    warnings = log.level("warning")
    assert len(warnings) == 21 and all(" [wplus]: failed: OSError: " in w for w in warnings[:20])
    assert warnings[20].startswith("more than 20 failures: the others are only counted")
    assert log.level("info")[-1] == "progress: 1,000/1,000 result(s) done (100.0 %), 100 failed, 50.0 images/s, " \
                                    "in 20 s"
    assert len(log.level("info")) <= 21


def test_the_window_is_fixed_when_given_and_has_a_default_without_dask():
    assert SubmissionWindow(object(), fixed=2).size() == 2
    assert SubmissionWindow(object()).size() == WINDOW_WITHOUT_DASK


# ----------------------------------------------------------------------------------------------------------------
# On Dask


@flow(name="fan-out-window")
def fan_out_window(dask_address: str, work: list, ckpt, folder, window: int) -> list[dict]:
    """invert_images_on_dask on the cluster at ``dask_address``. (Module-level, and the runner built inside: the
    workers are sent this flow's context, and a nested function holding a started runner does not pickle.)"""
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(address=dask_address)
    fan_out_flow = fan_out.invert_images_on_dask.with_options(task_runner=runner)
    return fan_out_flow(fan_out.Batches(work), ckpt, folder, 1, False, window=window)


@pytest.mark.services
def test_the_window_defaults_to_two_tasks_per_worker_thread(cluster):
    from prefect_dask import DaskTaskRunner

    cluster.wait_for_workers(2, timeout=120)
    with DaskTaskRunner(address=cluster.scheduler.address) as runner:
        assert SubmissionWindow(runner).size() == max(WINDOW_MIN, 2 * 2)    # 2 workers of one thread


@pytest.mark.services
def test_at_most_window_tasks_are_submitted_and_unread_and_every_row_comes_back(cluster, monkeypatch,
                                                                                 tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from gani_core.checkpoints.ref import resolve_checkpoint
    from gani_core.dataset import list_images
    from gani_core.invert import method_config
    from gani_core.run_folder import RunFolder

    from .support.faults import SPEC, write_shapes
    from .support.prefect_api import flow_run_ids, flush_prefect_logs, prefect_logs

    # Recorded in a file, in the order the flow submits and reads: the hooks are copied (the flow's function travels
    # by value in each task's context, with the module globals it uses), the file is one.
    events = tmp_path / "events.txt"
    task, release = fan_out.invert_on_worker, cluster_module.release_future

    class CountingTask:
        def submit(self, images, *args):
            with events.open("a") as f:
                f.write(f"submit {images[0].image_id}\n")
            return task.submit(images, *args)

    def counting_release(future) -> None:       # right after the flow read the future's result
        release(future)
        with events.open("a") as f:
            f.write("read\n")

    monkeypatch.setattr(fan_out, "invert_on_worker", CountingTask())
    monkeypatch.setattr(cluster_module, "release_future", counting_release)

    write_shapes(str(tmp_path / "in"), 6)
    cfg, ckpt = method_config("wplus", pivot_steps=1), resolve_checkpoint(SPEC)
    folder = RunFolder(str(tmp_path / "out"))
    folder.write_configs([cfg])
    work = [([image], cfg) for image in list_images(str(tmp_path / "in"), 6)]
    state = fan_out_window(cluster.scheduler.address, work, ckpt, folder, window=2, return_state=True)
    rows = state.result()
    assert sorted(r["image_id"] for r in rows) == [f"shape-{i:04d}" for i in range(6)]
    assert all(r["status"] == "ok" for r in rows)
    submitted, unread, peak = [], 0, 0
    for event in events.read_text().splitlines():
        if event.startswith("submit "):
            submitted.append(event.split()[1])
        unread += 1 if event.startswith("submit ") else -1
        peak = max(peak, unread)
    assert sorted(submitted) == [f"shape-{i:04d}" for i in range(6)]
    assert peak == 2 and unread == 0

    # The log: a line saying the window, the last progress line; no line per image. The UI: one progress artifact.
    flush_prefect_logs(cluster)
    flow_lines = [m for m in prefect_logs(state.state_details.flow_run_id) if m.startswith(("6 image", "progress"))]
    assert flow_lines == ["6 image(s) in 6 task(s), at most 2 submitted at a time", flow_lines[-1]]
    assert flow_lines[-1].startswith("progress: 6/6 result(s) done (100.0 %), 0 failed, ")
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids(state.state_details.flow_run_id))))
    assert [(a.type, a.data) for a in artifacts] == [("progress", 100.0)]
    assert artifacts[0].description == flow_lines[-1]


def test_the_batches_are_not_stored_as_a_flow_parameter() -> None:
    """Prefect stores a flow run's parameters as JSON in its database: the fan-out's batches (a million images'
    would be hundreds of MB) are stored as a placeholder."""
    images = [ImageSource(f"/in/{i}.png", str(i), f"{i}.png", "10:mtime:1") for i in range(1000)]
    batches = fan_out.Batches([(images[i : i + 64], method_config("wplus")) for i in range(0, 1000, 64)])
    assert fan_out.invert_images_on_dask.serialize_parameters({"work": batches}) == {"work": "<Batches>"}
    assert repr(batches) == "Batches(16 task(s), 1000 image(s))"
