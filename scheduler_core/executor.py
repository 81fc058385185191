"""A thread-pool executor that starts a run only once it is claimed in the database.

A scheduled run is claimed ahead of time, with its job's next run time (jobstore.py); a run started by "run now" is
claimed by a "running" history row. A run without a durable claim is not started: when a process dies and another
takes over, runs the dead one may have started are never started again, and they are in the history (as
"abandoned" when their outcome was lost with the process).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.executors.base import run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job

from .kinds import running

log = logging.getLogger(__name__)

Claim = Callable[[str, datetime], bool]
"""(job id, scheduled time) -> True to start the run, False to skip it; raises if the claim cannot be made."""


class ClaimFailed(Exception):
    pass


class ClaimingExecutor(ThreadPoolExecutor):
    def __init__(self, max_workers: int, claim: Claim, on_start: Callable[[str, datetime], None] | None = None) -> None:
        super().__init__(max_workers)
        self.claim = claim
        self.on_start = on_start

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        def callback(future) -> None:  # type: ignore[no-untyped-def]
            exc = future.exception()
            if exc:
                self._run_job_error(job.id, exc, getattr(exc, "__traceback__", None))
            else:
                self._run_job_success(job.id, future.result())

        future = self._pool.submit(self._run_claimed, job, run_times)
        future.add_done_callback(callback)

    def _run_claimed(self, job: Job, run_times: list[datetime]) -> list:
        # Claimed on the worker thread: the scheduler loop never waits on the database.
        claimed, events = [], []
        for run_time in run_times:
            try:
                if self.claim(job.id, run_time):
                    claimed.append(run_time)
            except Exception as exc:
                # No claim, no run: running unrecorded work is worse than a recorded refusal.
                log.error("cannot claim run of %s at %s: %s", job.id, run_time, exc)
                events.append(JobExecutionEvent(EVENT_JOB_ERROR, job.id, job._jobstore_alias, run_time,
                                                exception=ClaimFailed(f"not run: database unavailable ({exc})")))
        for run_time in claimed:
            if self.on_start:
                self.on_start(job.id, run_time)
            # One at a time, so the job can tell which run it is (kinds.current_run).
            with running(job.id, run_time):
                events.extend(run_job(job, job._jobstore_alias, [run_time], self._logger.name))
        return events
