"""The progress of a fan-out in its flow run: log lines that grow with time and tasks, not with images (a million
images must not make a million log records), and one progress artifact per flow run for the Prefect UI."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

EVERY_FRACTION = 0.05       # a progress line at least every 5 % of the total ...
EVERY_MIN = 64              # ... but not more often than every 64 images,
INTERVAL_S = 30.0           # or after 30 s with something done since the last line, whichever comes first
FAILURE_LINES = 20          # failures logged one by one (with their reason); after that only counted

Report = Callable[[float, str], None]      # (percent done, the progress line): what the Prefect UI shows


class FinishedImagesLog:
    """The progress of ``total`` results in ``logger`` (the flow run's), fed the rows as each task's are read.

    A line ``progress: 1,280/10,000 result(s) done (12.8 %), 4 failed so far, 21.3 images/s, about 7 min left``
    when ``every`` results (default: 5 % of the total, at least 64) have finished since the last line, or
    ``interval`` seconds have passed since it and something finished; :meth:`finish` logs the last one. Each
    failed result gets a warning line with its reason (``<image_id> [<method>]: failed: <error>``), the first
    ``failure_lines`` of them; the rest are counted (the tables hold every failure). ``report`` (e.g.
    :class:`ProgressArtifact`) is given the percentage and the line at the start and at the same cadence.
    """

    def __init__(self, total: int, logger: logging.Logger | logging.LoggerAdapter | None = None,
                 every: int | None = None, interval: float = INTERVAL_S, failure_lines: int = FAILURE_LINES,
                 report: Report | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if logger is None:
            from prefect import get_run_logger

            logger = get_run_logger()
        self.total, self.logger, self.report, self.clock = total, logger, report, clock
        self.every = every or max(EVERY_MIN, math.ceil(total * EVERY_FRACTION))
        self.interval, self.failure_lines = interval, failure_lines
        self.count = self.failed = 0
        self.started = self.last_time = clock()
        self.last_count = 0
        if report is not None:      # the UI shows the run from its start
            report(0.0, self.line(self.started))

    def done(self, rows: list[dict]) -> None:
        """The rows of one task (or its failed rows)."""
        for row in rows:
            self.count += 1
            if row["status"] != "ok":
                self.failed += 1
                if self.failed <= self.failure_lines:
                    self.logger.warning("%s [%s]: failed: %s", row["image_id"], row["method"], row["error"])
                elif self.failed == self.failure_lines + 1:
                    self.logger.warning("more than %d failures: the others are only counted in the progress lines "
                                        "(the tables hold every failure and its reason)", self.failure_lines)
        now = self.clock()
        if self.count - self.last_count >= self.every or \
                (self.count > self.last_count and now - self.last_time >= self.interval):
            self._line(now)

    def finish(self) -> None:
        """The last line (every result read)."""
        self._line(self.clock(), last=True)

    def line(self, now: float, last: bool = False) -> str:
        elapsed = now - self.started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        share = 100.0 * self.count / self.total if self.total else 100.0
        text = f"progress: {self.count:,}/{self.total:,} result(s) done ({share:.1f} %), {self.failed:,} failed"
        if last:
            return f"{text}, {rate:.1f} images/s, in {_duration(elapsed)}"
        left = f"about {_duration((self.total - self.count) / rate)} left" if rate > 0 else "time left unknown"
        return f"{text} so far, {rate:.1f} images/s, {left}"

    def _line(self, now: float, last: bool = False) -> None:
        text = self.line(now, last)
        self.logger.info("%s", text)
        self.last_count, self.last_time = self.count, now
        if self.report is not None:
            self.report(100.0 * self.count / self.total if self.total else 100.0, text)


class ProgressArtifact:
    """One Prefect progress artifact for the flow run this is called in: created on the first call, then
    updated (prefect.artifacts.create_progress_artifact / update_progress_artifact). The Prefect API failing
    here never fails the run: one warning, then no more updates."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self.logger, self.artifact_id, self.broken = logger, None, False

    def __call__(self, percent: float, description: str) -> None:
        if self.broken:
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(percent, description=description)
            else:
                update_progress_artifact(self.artifact_id, percent, description=description)
        except Exception as exc:      # the UI's progress is not worth a run
            self.broken = True
            self.logger.warning("progress artifact not updated (%s: %s): progress is in this log only",
                                type(exc).__name__, exc)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"
