"""A thread-pool executor that starts a run only once it is claimed in the database.

A scheduled run is claimed ahead of time, with its job's next run time (jobstore.py); a run started by "run now" is
claimed by a "running" history row. A run without a durable claim is not started: when a process dies and another
takes over, runs the dead one may have started are never started again, and they are in the history (as
"abandoned" when their outcome was lost with the process).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from traceback import clear_frames, format_tb

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.base import BaseExecutor, MaxInstancesReachedError
from apscheduler.job import Job

from .kinds import running

log = logging.getLogger(__name__)

Claim = Callable[[str, datetime], bool]
"""(job id, scheduled time) -> True to start the run, False to skip it; raises if the claim cannot be made."""


class ClaimFailed(Exception):
    pass


class ClaimingExecutor(BaseExecutor):
    """A thread pool of `max_workers` threads, started as needed, fed by one queue.

    Not concurrent.futures: a Future per run (a lock, a condition, a callback list, a semaphore to find an idle
    thread) is a sixth of bare APScheduler's own cost per run, and nothing here waits on a Future. Threads are
    daemons: `Engine.stop()` waits for running work, and a process that exits without it must not hang.
    """

    def __init__(self, max_workers: int, claim: Claim, on_start: Callable[[str, datetime], None] | None = None) -> None:
        super().__init__()
        self.max_workers = max_workers
        self.claim = claim
        self.on_start = on_start
        self._queue: queue.SimpleQueue[tuple[Job, list[datetime]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for work, under self._lock
        # Job ids of finished runs, settled (instance count, idle thread) by the next submit_job under self._lock:
        # workers taking the scheduler loop's lock on every finish made a lock convoy in bursts.
        self._finished_runs: deque[str] = deque()
        self._shut_down = False

    def submit_job(self, job: Job, run_times: list[datetime]) -> None:
        """BaseExecutor's, with the finished runs settled first."""
        assert self._lock is not None, "This executor has not been started yet"
        with self._lock:
            self._settle_finished()
            if self._instances[job.id] >= job.max_instances:
                raise MaxInstancesReachedError(job)
            self._do_submit_job(job, run_times)
            self._instances[job.id] += 1

    def running_instances(self) -> dict[str, int]:
        """Runs going on (claimed, queued or running) by job id."""
        if self._lock is None:  # not started yet
            return {}
        with self._lock:
            self._settle_finished()
            return dict(self._instances)

    def _settle_finished(self) -> None:
        # Under self._lock. Only this pops, so the emptiness check cannot race.
        while self._finished_runs:
            job_id = self._finished_runs.popleft()
            self._instances[job_id] -= 1
            if self._instances[job_id] == 0:
                del self._instances[job_id]
            self._idle += 1

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        # Called with self._lock held (submit_job).
        if self._shut_down:
            raise RuntimeError("cannot start runs after shutdown")
        self._queue.put((job, run_times))
        if self._idle:
            self._idle -= 1
        elif len(self._threads) < self.max_workers:
            thread = threading.Thread(target=self._work, name=f"carnation-worker-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            job, run_times = item
            try:
                events = self._run_claimed(job, run_times)
            except BaseException as exc:  # a bug of ours: run_job catches what the job raises
                self._finished(job.id, ())
                self._logger.error("Error running job %s", job.id, exc_info=exc)
            else:
                self._finished(job.id, events)

    def _finished(self, job_id: str, events: Iterable[JobExecutionEvent]) -> None:
        self._finished_runs.append(job_id)  # deque.append is atomic: no lock on the worker's path
        for event in events:
            self._scheduler._dispatch_event(event)

    def shutdown(self, wait: bool = True) -> None:
        """Runs already queued still start (as with ThreadPoolExecutor); then the threads end."""
        with self._lock:
            self._shut_down = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()

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
                events.append(self._run_one(job, run_time))
        return events

    def _run_one(self, job: Job, run_time: datetime) -> JobExecutionEvent:
        """APScheduler's run_job for one run time, logging to this executor's logger (the same name): run_job calls
        logging.getLogger() on every run, which takes logging's module lock, and ten workers queued on it."""
        alias = job._jobstore_alias
        if job.misfire_grace_time is not None:
            late = datetime.now(timezone.utc) - run_time
            if late > timedelta(seconds=job.misfire_grace_time):
                self._logger.warning('Run time of job "%s" was missed by %s', job, late)
                return JobExecutionEvent(EVENT_JOB_MISSED, job.id, alias, run_time)
        self._logger.info('Running job "%s" (scheduled at %s)', job, run_time)
        try:
            retval = job.func(*job.args, **job.kwargs)
        except BaseException:
            exc, tb = sys.exc_info()[1:]
            event = JobExecutionEvent(EVENT_JOB_ERROR, job.id, alias, run_time, exception=exc,
                                      traceback="".join(format_tb(tb)))
            self._logger.exception('Job "%s" raised an exception', job)
            clear_frames(tb)  # as run_job does: the frames would keep the job's locals alive
            return event
        self._logger.info('Job "%s" executed successfully', job)
        return JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, alias, run_time, retval=retval)
