"""A thread-pool executor that claims each run in the database before starting it.

The claim is a history row (job id, scheduled time, outcome "running") inserted under the runs table's unique key.
A run whose claim already exists is not started: when a process dies and another takes over, runs the dead one
already started are never started again, and every run that started is in the history (as "abandoned" if its
process died before it finished).
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


class UnclaimedRunEvent(JobExecutionEvent):
    """An outcome for a run that never got a claim row (dropped by coalescing, or not claimable): its history row
    is inserted rather than updated."""


class ClaimFailed(Exception):
    pass


class ClaimingExecutor(ThreadPoolExecutor):
    def __init__(self, max_workers: int, claim: Claim) -> None:
        super().__init__(max_workers)
        self.claim = claim

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
                else:
                    log.warning("run of %s scheduled at %s was already claimed; not running it again", job.id,
                                run_time)
            except Exception as exc:
                # No claim, no run: running unrecorded work is worse than a recorded refusal.
                log.error("cannot claim run of %s at %s: %s", job.id, run_time, exc)
                events.append(UnclaimedRunEvent(EVENT_JOB_ERROR, job.id, job._jobstore_alias, run_time,
                                                exception=ClaimFailed(f"not run: database unavailable ({exc})")))
        for run_time in claimed:
            # One at a time, so the job can tell which run it is (kinds.current_run).
            with running(job.id, run_time):
                events.extend(run_job(job, job._jobstore_alias, [run_time], self._logger.name))
        return events
