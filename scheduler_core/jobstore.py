"""The APScheduler job store over carnation's JSON rows: memory decides what is due, SQL is the record.

APScheduler 3's SQLAlchemyJobStore queries, unpickles and commits on its single loop thread for every fire. Here the
loop works on MemoryJobStore's sorted list (APScheduler's own code, unchanged), and every change it makes (a new next
run time, a finished job) is queued and written behind, in batches, by a writer thread. The loop never waits on the
database; `flush()` makes the writes durable when it matters (an edit, shutdown).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore

from .executor import UnclaimedRunEvent
from .store import Store, to_epoch

log = logging.getLogger(__name__)


class SpecJob(Job):
    """An APScheduler Job whose args are (JobSpec,). Reports runs it drops by coalescing, which APScheduler 3 does
    silently: an operator must be told what did not run."""

    __slots__ = ()

    def _get_run_times(self, now: datetime) -> list[datetime]:
        run_times = super()._get_run_times(now)
        if self.coalesce and len(run_times) > 1:
            for run_time in run_times[:-1]:
                self._scheduler._dispatch_event(
                    UnclaimedRunEvent(EVENT_JOB_MISSED, self.id, self._jobstore_alias, run_time)
                )
        return run_times


class SpecJobStore(MemoryJobStore):
    def __init__(self, store: Store, flush_interval: float = 0.2) -> None:
        super().__init__()
        self.store = store
        self.flush_interval = flush_interval
        self._pending: dict[str, float | None | object] = {}  # id -> next run epoch, or _DELETE
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._written = threading.Condition()
        self._writer: threading.Thread | None = None
        self.on_change: Callable[[str], None] | None = None
        self.write_errors = 0

    # --- loading ------------------------------------------------------------------------------------------------
    def load(self, jobs: list[Job]) -> None:
        """Put jobs read from the database into memory without writing them back."""
        for job in jobs:
            job._jobstore_alias = self._alias
            MemoryJobStore.add_job(self, job)

    def start(self, scheduler, alias):  # type: ignore[no-untyped-def]
        super().start(scheduler, alias)
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="carnation-jobstore", daemon=True)
            self._writer.start()

    # --- APScheduler's interface: memory now, SQL behind ---------------------------------------------------------
    def add_job(self, job: Job) -> None:
        super().add_job(job)
        self._queue(job.id, to_epoch(job.next_run_time))

    def update_job(self, job: Job) -> None:
        super().update_job(job)
        self._queue(job.id, to_epoch(job.next_run_time))

    def remove_job(self, job_id: str) -> None:
        super().remove_job(job_id)
        self._queue(job_id, _DELETE)

    def remove_all_jobs(self) -> None:
        for job in self.get_all_jobs():
            self._queue(job.id, _DELETE)
        super().remove_all_jobs()

    def forget(self, job_id: str) -> None:
        """Drop a job from memory only (another process changed or removed it; the row is already right)."""
        if self.lookup_job(job_id) is not None:
            MemoryJobStore.remove_job(self, job_id)
        with self._pending_lock:
            self._pending.pop(job_id, None)

    def clear_memory(self) -> None:
        """Forget every job without touching the database (this process stops executing)."""
        self.flush()
        MemoryJobStore.remove_all_jobs(self)

    def shutdown(self) -> None:
        self.flush()
        self._stopping.set()
        self._wake.set()
        if self._writer:
            self._writer.join(5)
        super().shutdown()

    # --- write-behind -------------------------------------------------------------------------------------------
    def _queue(self, job_id: str, value: float | None | object) -> None:
        with self._pending_lock:
            self._pending[job_id] = value  # newer state of the same job replaces the older: one write per job
        if self.on_change:
            self.on_change(job_id)

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything queued so far. True when nothing is left pending."""
        if self._writer is None or not self._writer.is_alive():
            self._write_pending()
            return not self._pending
        with self._written:
            self._wake.set()
            return self._written.wait_for(lambda: not self._pending and not self._writing, timeout)

    _writing = False

    def _write_pending(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, {}
            self._writing = bool(batch)
        if not batch:
            return
        changes = [(job_id, value) for job_id, value in batch.items() if value is not _DELETE]
        deletes = [job_id for job_id, value in batch.items() if value is _DELETE]
        try:
            self.store.write_next_run_times(changes, deletes)  # type: ignore[arg-type]
        except Exception as exc:
            self.write_errors += 1
            log.warning("next run times not written yet (retrying): %s", exc)
            with self._pending_lock:
                # Keep what failed unless a newer state arrived meanwhile.
                for job_id, value in batch.items():
                    self._pending.setdefault(job_id, value)
            raise
        finally:
            self._writing = False

    def _write_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._write_pending()
            except Exception:
                self._stopping.wait(1.0)
            with self._written:
                self._written.notify_all()


_DELETE = object()
