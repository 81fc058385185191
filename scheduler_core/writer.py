"""Database writes of the two writer threads, done in a child process so their driver work does not hold the GIL.

The history writer and the jobstore's write-behind each turn a batch into SQL and hand it to the driver. On MariaDB
PyMySQL does that in Python (~12 µs per history row), and on every driver part of it holds the GIL: a run due while a
batch of 100 is being written waited for it (up to 1-2 ms, the lateness p99 at 10,000 jobs). A `ProcessWriter`
sends the batch, marshalled (plain data only), to a child process with its own `Store` and connection, and waits
for the answer on a pipe with the GIL released. `LocalWriter` does the same calls in the calling thread (the
fallback, and `writer_process = false`).

The child ignores SIGINT and SIGTERM: Ctrl-C in a terminal and `systemctl stop` signal the whole process group,
and the parent must still be able to write what it holds before it exits. It exits when its pipe closes, which
includes the parent being killed.
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any, Protocol, Sequence

import sqlalchemy as sa

from .store import KeptConnection, Store

log = logging.getLogger(__name__)


class Writer(Protocol):
    def open(self) -> None: ...

    def insert_runs(self, rows: Sequence[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]: ...

    def write_next_run_times(self, changes: Sequence[tuple[str, float | None, float | None]], deletes: Sequence[str] = (),
                             claims: Sequence[tuple[str, float]] = ()) -> None: ...

    def close(self) -> None: ...


class ChildError(Exception):
    """What a database error in the child said (its text: the driver's message and the statement)."""


class WriterGone(Exception):
    """The child process died or could not be started; the batch was not written (the caller retries)."""


class LocalWriter:
    """The writes in the calling thread, over a connection it keeps."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._connection: KeptConnection = store.kept_connection()

    def open(self) -> None:
        pass

    def insert_runs(self, rows: Sequence[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        return self.store.insert_runs(rows, via=self._connection)

    def write_next_run_times(self, changes: Sequence[tuple[str, float | None, float | None]], deletes: Sequence[str] = (),
                             claims: Sequence[tuple[str, float]] = ()) -> None:
        self.store.write_next_run_times(changes, deletes, claims, via=self._connection)

    def close(self) -> None:
        self._connection.close()


_METHODS = ("insert_runs", "write_next_run_times")


def _encode(message: Any) -> bytes:
    # marshal, not pickle: only plain data crosses the pipe (rows, ids, epoch floats), and loading it runs no code.
    # Not JSON either: its encoder holds the GIL while it writes every float out in decimal, 0.6 ms for a batch of
    # 100 history rows, and a run due meanwhile waited for it (the lateness p99 at 10,000 jobs); marshal takes
    # 0.05 ms. Its format is the interpreter's own, and the child runs this interpreter (sys.executable).
    try:
        return marshal.dumps(message)
    except ValueError:
        # marshal takes only the exact built-in types: a str subclass in a job's exception text, say, would fail
        # the batch on every retry and hold up all history behind it. Such a batch goes as the plain data JSON
        # makes of it (anything else as its repr).
        return marshal.dumps(json.loads(json.dumps(message, default=repr)))


_decode = marshal.loads


def make_writer(store: Store, name: str, in_child_process: bool, niceness: int = 0,
                background: bool = False) -> Writer:
    """The writer for one writer thread: a ProcessWriter, its process `niceness` steps behind this one for a CPU
    (and in the idle class if `background`), unless told otherwise or the database is an in-memory SQLite one,
    which a child process cannot open."""
    if in_child_process and store.shared_between_processes:
        return ProcessWriter(store, name, niceness, background)
    return LocalWriter(store)


class ProcessWriter:
    """The writes in a child process (`python -c _CHILD_MAIN`), started on first use and again after it
    dies. One caller at a time (each writer thread has its own). If the child cannot be started, or dies before
    answering three times in a row, the writes go on in the calling thread (LocalWriter) and that is logged.

    A `background` child runs in Linux's idle scheduling class (SCHED_IDLE): the kernel puts a waking scheduler
    thread on a CPU running only idle-class work as if it were free, and preempts that work at once. Niceness alone
    let the child finish its time slice first (1.4 ms here), and a run due meanwhile started that late. The idle
    class gets a CPU only when nothing else wants one: a child seen waiting more than STARVED_AFTER seconds for a
    CPU during one call is restarted at its niceness only, so a machine kept busy by its jobs cannot hold the
    writes back until the history's buffer overflows."""

    GIVE_UP_AFTER = 3
    STARVED_AFTER = 0.5

    def __init__(self, store: Store, name: str, niceness: int = 0, background: bool = False) -> None:
        self.store = store
        self.name = name
        self.niceness = niceness
        # Only where starvation can be seen: without it the idle class could hold the writes back unnoticed.
        self.background = background and hasattr(os, "SCHED_IDLE") and _cpu_state(os.getpid()) is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._failures_in_a_row = 0
        self._unanswered = False  # the last call got no answer
        self._local: LocalWriter | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def open(self) -> None:
        """Start the child now rather than on the first write (which would wait for it): for the jobstore, whose
        first write is a claim that a run waits for."""
        with self._lock:
            if self._proc is None and self._local is None:
                try:
                    self._start()
                except OSError as exc:
                    log.warning("database writer process %s not started yet: %s", self.name, exc)

    def insert_runs(self, rows: Sequence[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        written, duplicates = self._call("insert_runs", rows)
        return written, duplicates

    def write_next_run_times(self, changes: Sequence[tuple[str, float | None, float | None]], deletes: Sequence[str] = (),
                             claims: Sequence[tuple[str, float]] = ()) -> None:
        self._call("write_next_run_times", changes, list(deletes), claims)

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            if self._local is not None:
                return getattr(self._local, method)(*args)
            try:
                while True:
                    if self._proc is None:
                        self._start()
                    assert self._to_child is not None
                    self._to_child.send_bytes(_encode([method, args, self._unanswered]))
                    reply = self._reply()
                    if reply is not None:
                        break
                    # Its starved child was killed: again, to one at its niceness only (at most once).
                ok, value = _decode(reply)
            except (OSError, EOFError) as exc:
                # The child may have committed before it died: the caller's retry is sent marked, so the history
                # rows it wrote are not taken for second runs.
                self._unanswered = True
                why = self._stop() or str(exc) or type(exc).__name__
                self._failures_in_a_row += 1
                if self._failures_in_a_row >= self.GIVE_UP_AFTER:
                    log.error("database writer process %s keeps failing (%s): writing from this process instead",
                              self.name, why)
                    self._local = LocalWriter(self.store)
                raise WriterGone(f"database writer process {self.name} ended: {why}") from None
            self._failures_in_a_row = 0
            self._unanswered = False
        if ok:
            return value
        database_error, text = value
        # Raised as the thread's own call would have been: a database error as SQLAlchemy's DBAPIError (what the
        # callers and their logs expect), anything else as RuntimeError; the child's text either way.
        if database_error:
            raise sa.exc.DBAPIError(None, None, ChildError(text), connection_invalidated=False)
        raise RuntimeError(text)

    def _start(self) -> None:
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        # The child imports this package from where the parent found it, installed or not.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, str(child_read), str(child_write), str(self.niceness),
                 "idle" if self.background else ""],
                pass_fds=(child_read, child_write), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, env=env)
        except OSError:
            os.close(parent_read)
            os.close(parent_write)
            raise
        finally:
            os.close(child_read)
            os.close(child_write)
        # Its stderr (a crash, a driver warning) goes to carnation's log, not over the console's screen.
        threading.Thread(target=_relay, args=(self._proc.stderr, self.name), name=f"carnation-{self.name}-stderr",
                         daemon=True).start()
        self._to_child = Connection(parent_write, readable=False)
        self._from_child = Connection(parent_read, writable=False)
        # The URL goes down the pipe, not on the command line, where `ps` would show its password.
        self._to_child.send_bytes(_encode(self.store.url))

    def _reply(self) -> bytes | None:
        """The child's answer; None if it was a background child seen starved of a CPU, which is then killed and
        its call marked as possibly written (the history rows it may have committed are not second runs)."""
        assert self._from_child is not None
        if not self.background:
            return self._from_child.recv_bytes()
        assert self._proc is not None
        look_every = self.STARVED_AFTER / 5
        at_start = _cpu_state(self._proc.pid)
        runnable = 0.0  # seconds seen runnable (sampled): running, or waiting for a CPU
        while not self._from_child.poll(look_every):
            now = _cpu_state(self._proc.pid)
            if at_start is None or now is None:
                continue
            if now[0] == "R":
                runnable += look_every
            starved = runnable - (now[1] - at_start[1])  # runnable for longer than it ran
            if starved > self.STARVED_AFTER:
                log.warning("database writer process %s waited %.1f s for a CPU during one write: restarted at "
                            "niceness %+d instead of the idle class", self.name, starved, self.niceness)
                self.background = False
                self._unanswered = True
                self._proc.kill()  # its transaction, if not committed, rolls back: the next child writes it
                self._stop()
                return None
        return self._from_child.recv_bytes()

    def _stop(self) -> str | None:
        """End the child; how it ended ("exit code 1", "killed by SIGKILL"), if it had ended by itself."""
        proc, self._proc = self._proc, None
        ended = proc.poll() if proc is not None else None
        for conn in (self._to_child, self._from_child):
            if conn is not None:
                conn.close()
        self._to_child = self._from_child = None
        if proc is not None:
            try:
                proc.wait(5)  # it exits once its pipe closes, after the batch it may be writing
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if ended is None:
            return None
        return f"killed by {signal.Signals(-ended).name}" if ended < 0 else f"exit code {ended}"

    def close(self) -> None:
        with self._lock:
            self._stop()
            if self._local is not None:
                self._local.close()


# Signals ignored before anything slow is imported: a SIGTERM sent to the process group while the child starts
# must not kill it either.
_CHILD_MAIN = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
               "signal.signal(signal.SIGTERM, signal.SIG_IGN); os.nice(int(sys.argv[3])); "
               "from scheduler_core.writer import _serve; _serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[4])")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_state(pid: int) -> tuple[str, float] | None:
    """(state, seconds on a CPU so far) of process `pid`, or None where the kernel does not say. A process that
    stays "R" (runnable) while its CPU time stands still is waiting for a CPU: the kernel adds to its run-queue
    wait only once it runs again, which a starved one may not do for seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0].decode()
        with open(f"/proc/{pid}/schedstat", "rb") as schedstat:
            return state, int(schedstat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _relay(stream: Any, name: str) -> None:
    with stream:
        for line in stream:
            log.warning("database writer process %s: %s", name, line.decode(errors="replace").rstrip())


def _serve(read_fd: int, write_fd: int, scheduling_class: str = "") -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")  # to stderr: relayed
    if scheduling_class == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:  # a sandbox may forbid it: niced only, and still writing
            log.warning("not in the idle scheduling class: %s", exc)
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        store = Store(_decode(inbox.recv_bytes()))
    except EOFError:
        return
    connection = store.kept_connection()
    while True:
        try:
            method, args, resent = _decode(inbox.recv_bytes())
        except EOFError:
            break
        try:
            if method not in _METHODS:
                raise ValueError(f"unknown writer call {method!r}")
            # Writing next run times again is harmless; history rows say which were written already.
            options = {"resent": True} if resent and method == "insert_runs" else {}
            reply = [True, getattr(store, method)(*args, via=connection, **options)]
        except Exception as exc:
            text = str(exc) if isinstance(exc, sa.exc.DBAPIError) else f"{type(exc).__name__}: {exc}"
            reply = [False, [isinstance(exc, sa.exc.DBAPIError), text]]
        outbox.send_bytes(_encode(reply))
    connection.close()
    store.engine.dispose()

