"""What the late runs overlapped: carnation's lateness tail against its background activity, in one process.

Runs carnation alone (as bench.lateness does: N staggered interval jobs, a window, history rows read back) and
records, around it, each writer process call (the history's and the jobstore's: during one, the child and the
database server are busy on the same cores), each change poll and each garbage collection. Then, for the runs that
started more than `--late-ms` after their scheduled time, prints how often each kind of activity overlapped them,
against how often it overlapped any run: a kind over-represented among the late runs is a cause to look at.

It also splits each run's lateness in two (the scheduler loop waking and finding it due; the hand-over to a
worker thread), prints each thread's wait for a CPU from the kernel's schedstat, and with `--perf-sched` records
the kernel's scheduling events for a few seconds of the window (perf, as root) to show how long the loop and the
workers took to get a CPU once woken, and what held the CPU they were woken on.

    python -m bench.tail --db postgresql --jobs 10000
    python -m bench.tail --db sqlite --perf-sched 5                          # who held the CPU a late wake waited for
    python -m bench.tail --db sqlite --history-class nice                    # A/B: the history child niced only
    python -m bench.tail --jobs 1000 --contender bare-memory                 # bare APScheduler, split the same way
    python -m bench.tail --db mariadb --jobstore-niceness 10                 # A/B the jobstore child's priority
"""

from __future__ import annotations

import argparse
import bisect
import gc
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_EXECUTED

from bench import common, lateness

Span = tuple[str, float, float]  # (kind, start epoch, end epoch)
Run = tuple[str, float, float]  # (job id, scheduled epoch, started epoch)

CHILDREN: dict[int, str] = {}  # writer process pid -> "history child" / "jobstore child"
THREADS: dict[int, str] = {}  # thread id -> name, as last seen
SCHEDSTAT: dict[int, list[int]] = {}  # thread id -> (on-CPU ns, runnable-but-waiting ns, time slices), as last seen
ITERATIONS: list[tuple[float, float]] = []  # the scheduler loop's rounds (_process_jobs): (start, end) epochs


def record_spans() -> list[Span]:
    """Wrap the calls to time; returns the list they append to."""
    import scheduler_core.store as store_mod
    import scheduler_core.writer as writer_mod

    spans: list[Span] = []

    def timed(kind_of: Callable[[Any], str], call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return call(self, *args, **kwargs)
            finally:
                spans.append((kind_of(self), start, time.time()))
        return wrapper

    writer_mod.ProcessWriter._call = timed(lambda writer: writer.name, writer_mod.ProcessWriter._call)
    store_mod.Store.poll = timed(lambda _: "poll", store_mod.Store.poll)
    start_child = writer_mod.ProcessWriter._start

    def named_start(self: Any) -> None:
        start_child(self)
        CHILDREN[self._proc.pid] = f"{self.name} child"

    writer_mod.ProcessWriter._start = named_start
    gc_start: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start["t"] = time.time()
        else:
            spans.append((f"gc{info['generation']}", gc_start.get("t", time.time()), time.time()))

    gc.callbacks.append(on_gc)
    return spans


def set_writer_classes(history_class: str, jobstore_class: str, jobstore_niceness: int | None,
                       child_slice_us: int) -> None:
    """Experiments on the writer children's CPU priority (what is committed: engine.py's make_writer calls)."""
    import scheduler_core.engine as engine_mod
    import scheduler_core.writer as writer_mod

    make_writer = engine_mod.make_writer

    def classed(store: Any, name: str, in_child: bool, niceness: int = 0, background: bool = False) -> Any:
        if name == "history":
            background = history_class == "idle"
        else:
            background = jobstore_class == "idle"
            niceness = niceness if jobstore_niceness is None else jobstore_niceness
        return make_writer(store, name, in_child, niceness, background)

    engine_mod.make_writer = classed
    if child_slice_us:
        # An EEVDF custom slice (Linux 6.12+, sched_setattr's sched_runtime; syscall 314 is x86_64's): a short one
        # ends the child's protection from a waking thread sooner. Measured: no effect on the tail here
        # (bench/README.md).
        writer_mod._CHILD_MAIN = writer_mod._CHILD_MAIN.replace("os.nice(int(sys.argv[3])); ", (
            "os.nice(int(sys.argv[3])); import ctypes, struct; ctypes.CDLL(None).syscall(314, 0, "
            "ctypes.create_string_buffer(struct.pack('IIQiIQQQ', 48, 0, 0, os.getpriority(os.PRIO_PROCESS, 0), 0, "
            f"{child_slice_us * 1000}, 0, 0)), 0); "))


def set_flush_intervals(history: float | None, jobstore: float | None) -> None:
    """Experiments on the writers' batch intervals (what is committed: the defaults of HistoryRecorder and
    SpecJobStore): longer ones send fewer, larger batches to the child and the database server."""
    from scheduler_core.history import HistoryRecorder
    from scheduler_core.jobstore import SpecJobStore

    for cls, interval in ((HistoryRecorder, history), (SpecJobStore, jobstore)):
        if interval is None:
            continue

        def init(self: Any, *args: Any, _init: Callable[..., None] = cls.__init__, _interval: float = interval,
                 **kwargs: Any) -> None:
            _init(self, *args, **kwargs)
            self.flush_interval = _interval

        cls.__init__ = init  # type: ignore[method-assign]


def skip_writes(which: str) -> list[dict[str, Any]]:
    """The upper bound of writing less: the jobstore's next run times and claims, or the history's rows, or both,
    not sent to the database at all (the engine believes them written). Not a configuration anyone could run: it
    shows how much of the tail the writes account for. Returns the list the skipped history rows go to."""
    import scheduler_core.writer as writer_mod

    kept: list[dict[str, Any]] = []

    def insert_runs(self: Any, rows: Any) -> tuple[int, list[dict[str, Any]]]:
        kept.extend(rows)
        return len(rows), []

    for cls in (writer_mod.ProcessWriter, writer_mod.LocalWriter):
        if which in ("jobstore", "both"):
            cls.write_next_run_times = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
        if which in ("history", "both"):
            cls.insert_runs = insert_runs  # type: ignore[method-assign]
    return kept


def put_back_jobs_index() -> None:
    """A/B for migration 0004: the schema before it (its own downgrade puts the next_run_time index back)."""
    from alembic import command

    from scheduler_core.migrations import alembic_config
    from scheduler_core.store import Store

    migrate = Store.migrate

    def migrate_then_step_back(self: Any) -> None:
        migrate(self)
        command.downgrade(alembic_config(self.engine), "0003")

    Store.migrate = migrate_then_step_back  # type: ignore[method-assign]


def record_loop() -> dict[tuple[str, float], float]:
    """(job id, scheduled epoch) -> when the scheduler loop handed the run to the executor; and the loop's rounds."""
    from apscheduler.executors.base import BaseExecutor
    from apscheduler.schedulers.base import BaseScheduler

    import scheduler_core.executor as executor_mod

    submitted: dict[tuple[str, float], float] = {}

    def timed(submit_job: Callable[..., None]) -> Callable[..., None]:
        def timed_submit(self: Any, job: Any, run_times: list[Any]) -> None:
            now = time.time()
            for run_time in run_times:
                submitted[(job.id, round(run_time.timestamp(), 3))] = now
            submit_job(self, job, run_times)
        return timed_submit

    # carnation's executor has its own submit_job; bare APScheduler's ThreadPoolExecutor uses BaseExecutor's.
    executor_mod.ClaimingExecutor.submit_job = timed(executor_mod.ClaimingExecutor.submit_job)
    BaseExecutor.submit_job = timed(BaseExecutor.submit_job)
    process_jobs = BaseScheduler._process_jobs

    def timed_process(self: Any) -> Any:
        start = time.time()
        try:
            return process_jobs(self)
        finally:
            ITERATIONS.append((start, time.time()))

    BaseScheduler._process_jobs = timed_process
    return submitted


def sample_threads(stop: threading.Event) -> None:
    """The kernel's per-thread run-queue figures: how long each thread waited for a CPU once runnable, as distinct
    from waiting for the GIL (which is sleeping on a futex)."""
    while not stop.wait(0.5):
        THREADS.update({t.native_id: t.name for t in threading.enumerate() if t.native_id})
        for task in Path("/proc/self/task").iterdir():
            try:
                SCHEDSTAT[int(task.name)] = [int(x) for x in (task / "schedstat").read_text().split()]
            except OSError:
                continue


def thread_label(tid: int) -> str:
    if tid == 0:
        return "idle"
    if tid in CHILDREN:
        return CHILDREN[tid]
    if tid in THREADS:
        return re.sub(r"[-_]\d+$", "", THREADS[tid])  # carnation-worker-3 -> carnation-worker
    return f"other process ({tid})"


def stage_table(runs: list[Run], submitted: dict[tuple[str, float], float], late_s: float) -> list[list[Any]]:
    """Each run's lateness in two: due -> submitted by the loop, submitted -> started on a worker."""
    rows = []
    for label, chosen in (("late runs", [r for r in runs if r[2] - r[1] > late_s]), ("all runs", runs)):
        loop, handover = [], []
        for job_id, scheduled, started in chosen:
            at = submitted.get((job_id, round(scheduled, 3)))
            if at is not None:
                loop.append(1000 * (at - scheduled))
                handover.append(1000 * (started - at))
        for stage, values in (("loop: due -> submitted", loop), ("hand-over: submitted -> started", handover)):
            if values:
                rows.append([label, stage, len(values), *_mean_quantiles(values, (50, 99))])
    # The loop's part of the late runs: still busy with an earlier round, waking after the due time, or in the
    # round itself before this run's submit.
    starts = [start for start, _ in ITERATIONS]
    busy, woke, in_round = [], [], []
    for job_id, scheduled, started in runs:
        at = submitted.get((job_id, round(scheduled, 3)))
        if started - scheduled <= late_s or at is None:
            continue
        i = bisect.bisect_right(starts, at) - 1
        previous_end = ITERATIONS[i - 1][1] if i > 0 else 0.0
        busy.append(1000 * max(0.0, previous_end - scheduled))
        woke.append(1000 * max(0.0, ITERATIONS[i][0] - max(scheduled, previous_end)))
        in_round.append(1000 * (at - max(ITERATIONS[i][0], scheduled)))
    for stage, values in (("  loop still busy at the due time", busy), ("  loop woke after the due time", woke),
                          ("  loop round, before the submit", in_round)):
        if values:
            rows.append(["late runs", stage, len(values), *_mean_quantiles(values, (50, 99))])
    return rows


def _mean_quantiles(values: list[float], quantiles: tuple[float, ...]) -> list[str]:
    """Mean, then each percentile (0..100), as table cells."""
    values = sorted(values)
    return [f"{sum(values) / len(values):.3f}"] + [f"{common.percentile(values, q):.3f}" for q in quantiles]


def slice_table(runs: list[tuple[float, float]], spans: list[Span], w0: float, step: float,
                late_s: float) -> list[list[Any]]:
    """The window in slices of one interval: does the tail gather where the writers are busy (the first fire of
    each job after the start, a wave of claims) or spread evenly?"""
    rows = []
    t = w0
    while True:
        chosen = sorted(1000 * (started - scheduled) for scheduled, started in runs if t <= scheduled < t + step)
        if not chosen:
            break
        busy = {kind: sum(max(0.0, min(end, t + step) - max(start, t)) for k, start, end in spans if k == kind)
                for kind in ("jobstore", "history")}
        rows.append([f"{t - w0:.0f}-{t + step - w0:.0f} s", f"{len(chosen):,}", f"{common.percentile(chosen, 99):.2f}",
                     f"{100 * sum(1 for v in chosen if v > 1000 * late_s) / len(chosen):.2f}",
                     *(f"{100 * busy[kind] / step:.1f}" for kind in ("jobstore", "history"))])
        t += step
    return rows


def stall_table(runs: list[tuple[float, float]], spans: list[Span], w0: float, stall_s: float) -> list[list[Any]]:
    """Runs later than `stall_s`, gathered into episodes (late runs less than half a second apart): when in the
    window, how long the longest scheduler-loop round around it took, and which activity overlapped it."""
    episodes: list[list[tuple[float, float]]] = []
    for run in sorted(r for r in runs if r[1] - r[0] > stall_s):
        if episodes and run[0] - episodes[-1][-1][0] < 0.5:
            episodes[-1].append(run)
        else:
            episodes.append([run])
    rows = []
    for episode in episodes:
        lo, hi = episode[0][0], max(started for _, started in episode)
        rounds = [end - start for start, end in ITERATIONS if end >= lo and start <= hi]
        around = Counter(kind for kind, start, end in spans if end >= lo and start <= hi)
        rows.append([f"{lo - w0:.2f} s", len(episode), f"{1000 * max(t - s for s, t in episode):.1f}",
                     f"{1000 * max(rounds, default=0):.1f}",
                     ", ".join(f"{kind} {n}" for kind, n in around.most_common(5)) or "-"])
    return rows


def schedstat_table() -> list[list[Any]]:
    rows = []
    for tid, (on_cpu, waiting, slices) in sorted(SCHEDSTAT.items(), key=lambda kv: -kv[1][0]):
        if on_cpu > 1e8:
            rows.append([THREADS.get(tid, tid), f"{on_cpu / 1e9:.2f}", f"{waiting / 1e9:.3f}", f"{slices:,}",
                         f"{waiting / max(1, slices) / 1e3:.1f}"])
    return rows


def overlap_table(runs: list[tuple[float, float]], spans: list[Span], late_s: float) -> list[list[Any]]:
    """Per kind of span: how many, share of the time busy, share of late runs and of all runs it overlapped."""
    lo, hi = min(s for s, _ in runs), max(s for s, _ in runs)
    late = [run for run in runs if run[1] - run[0] > late_s]
    rows = []
    for kind in sorted({kind for kind, _, _ in spans}):
        intervals = sorted((start, end) for k, start, end in spans if k == kind and end >= lo and start <= hi)
        starts = [start for start, _ in intervals]

        def overlaps(run: tuple[float, float]) -> bool:
            i = bisect.bisect_right(starts, run[1])  # spans starting before the run started
            return any(intervals[j][1] >= run[0] for j in range(max(0, i - 3), i))

        busy = sum(end - start for start, end in intervals)
        rows.append([kind, len(intervals), f"{100 * busy / (hi - lo):.1f}",
                     f"{100 * sum(map(overlaps, late)) / max(1, len(late)):.1f}",
                     f"{100 * sum(map(overlaps, runs)) / len(runs):.1f}",
                     f"{1000 * busy / max(1, len(intervals)):.2f}"])
    return rows


# --- perf sched -----------------------------------------------------------------------------------------------------
def start_perf_sched(at: float, seconds: float, out: Path) -> threading.Thread:
    """`perf sched record` of every CPU for `seconds`, from epoch `at` (inside the window)."""
    def record() -> None:
        common.sleep_until(at)
        done = subprocess.run(["perf", "sched", "record", "-a", "-o", str(out), "--", "sleep", str(seconds)],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"perf sched record failed (perf installed? root?): {done.stderr.strip()[-300:]}")

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


def wake_table(perf_data: Path, slow_ms: float = 0.5) -> list[list[Any]]:
    """From the recording: for the loop and for the workers, the time from being woken to running, and what ran on
    the CPU they were woken onto when that took longer than `slow_ms`."""
    script = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "tid,cpu,time,event,trace"],
                            capture_output=True, text=True).stdout
    loop = {tid for tid, name in THREADS.items() if name == "APScheduler"}
    workers = {tid for tid, name in THREADS.items() if name.startswith(("carnation-worker", "ThreadPoolExecutor"))}
    running: dict[int, int] = {}  # cpu -> tid
    woken: dict[int, tuple[float, str]] = {}  # tid -> (when, what ran on its target CPU)
    delays: dict[str, list[tuple[float, str]]] = {"scheduler loop": [], "workers": []}
    for line in script.splitlines():
        m = re.match(r"\s*(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(sched_switch|sched_waking):\s+(.*)", line)
        if not m:
            continue
        tid, cpu, at, event, rest = int(m[1]), int(m[2]), float(m[3]), m[4], m[5]
        running.setdefault(cpu, tid)
        if event == "sched_switch":
            next_tid = int(re.search(r"next_pid=(\d+)", rest)[1])  # type: ignore[index]
            running[cpu] = next_tid
            if next_tid in woken:
                when, holder = woken.pop(next_tid)
                delays["scheduler loop" if next_tid in loop else "workers"].append((1000 * (at - when), holder))
        else:
            target = int(re.search(r" pid=(\d+)", rest)[1])  # type: ignore[index]
            if target in loop or target in workers:
                target_cpu = int(re.search(r"target_cpu=(\d+)", rest)[1])  # type: ignore[index]
                woken[target] = (at, thread_label(running.get(target_cpu, -1)))
    rows = []
    for who, found in delays.items():
        if not found:
            continue
        slow = Counter(holder for delay, holder in found if delay > slow_ms)
        rows.append([who, f"{len(found):,}", *_mean_quantiles([d for d, _ in found], (50, 99, 99.9))[1:],
                     f"{max(d for d, _ in found):.2f}", sum(slow.values()),
                     ", ".join(f"{holder} {n}" for holder, n in slow.most_common(4))])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="postgresql", choices=common.ALL_DBS)
    parser.add_argument("--contender", choices=("carnation", "bare-memory"), default="carnation",
                        help="bare-memory: bare APScheduler with MemoryJobStore, split the same way")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--late-ms", type=float, default=1.0)
    parser.add_argument("--stall-ms", type=float, default=10.0, help="runs later than this are listed by episode")
    parser.add_argument("--perf-sched", type=float, default=0, metavar="SECONDS",
                        help="record the kernel's scheduling events for this long, from about 5 s into the window")
    parser.add_argument("--history-class", choices=("idle", "nice"), default="idle",
                        help="the history child in the idle class (as committed) or niced only")
    parser.add_argument("--jobstore-class", choices=("idle", "normal"), default="normal",
                        help="the jobstore child in the idle class, or at normal priority (as committed)")
    parser.add_argument("--jobstore-niceness", type=int, default=None)
    parser.add_argument("--child-slice-us", type=int, default=0, help="an EEVDF custom slice for both children")
    parser.add_argument("--history-flush", type=float, default=None, metavar="SECONDS",
                        help="the history writer's batch interval (committed: 0.1)")
    parser.add_argument("--jobstore-flush", type=float, default=None, metavar="SECONDS",
                        help="the jobstore writer's batch interval (committed: 0.2)")
    parser.add_argument("--jobs-index", action="store_true",
                        help="the index on carnation_jobs.next_run_time that migration 0004 dropped, put back")
    parser.add_argument("--claim-ahead", type=float, default=None, metavar="SECONDS",
                        help="the claim_ahead_seconds setting (default 60; 0: one run at a time, as before 642b89f)")
    parser.add_argument("--skip-writes", choices=("jobstore", "history", "both"), default=None,
                        help="upper bound: these writes not sent to the database at all")
    args = parser.parse_args()
    print(common.header("tail"))
    spans = record_spans()
    set_writer_classes(args.history_class, args.jobstore_class, args.jobstore_niceness, args.child_slice_us)
    set_flush_intervals(args.history_flush, args.jobstore_flush)
    if args.jobs_index:
        put_back_jobs_index()
    skipped_rows = skip_writes(args.skip_writes) if args.skip_writes else []
    submitted = record_loop()
    stop_sampling = threading.Event()
    threading.Thread(target=sample_threads, args=(stop_sampling,), daemon=True).start()
    lateness.hard_exit_after = lambda *a, **k: None  # this process goes on after the engine stops
    with common.bench_tmp() as tmp:
        common.isolate_environment(tmp)
        if args.claim_ahead is not None:
            os.environ["CARNATION_CLAIM_AHEAD_SECONDS"] = str(args.claim_ahead)
        common.quiet_logging()
        with common.database(args.db, tmp, "tail") as url:
            lead = 2.0 + args.jobs * 0.0006
            perf_data = Path(tempfile.mkdtemp(dir=tmp)) / "sched.data"
            if args.perf_sched:
                perf = start_perf_sched(time.time() + lead + 5, args.perf_sched, perf_data)
            params = dict(contender=args.contender, n=args.jobs, interval=args.interval, duration=args.duration,
                          drain=2, grace=1, workers=10, lead=lead, url=url, tmp=str(tmp), keep_records=True)
            result = lateness.child(params)
            stop_sampling.set()
            waking = []
            if args.perf_sched:
                perf.join()
                waking = wake_table(perf_data) if perf_data.exists() else []
    if args.skip_writes in ("history", "both"):  # the rows the database never saw
        w0, w1 = result["window"]
        result["records"] = [(r["scheduled_at"], r["started_at"], EVENT_JOB_EXECUTED if r["outcome"] == "success"
                              else -1, r["job_id"]) for r in skipped_rows if w0 <= r["scheduled_at"] < w1]
        result["late"] = common.summary_ms(t - s for s, t, code, _ in result["records"] if code == EVENT_JOB_EXECUTED)
    staged: list[Run] = [(job_id, scheduled, started) for scheduled, started, code, job_id in result["records"]
                         if code == EVENT_JOB_EXECUTED]
    runs = [(scheduled, started) for _, scheduled, started in staged]
    first, last = min(s for s, _ in runs), max(s for s, _ in runs)
    late_s = args.late_ms / 1000
    late = sum(1 for s, t in runs if t - s > late_s)
    late_ms = result["late"]
    print(f"{args.contender}, {args.jobs:,} jobs on {args.db}: p50 {late_ms['p50']:.2f} p99 {late_ms['p99']:.2f} ms; "
          f"{late:,} of {len(runs):,} runs ({100 * late / len(runs):.2f} %) started more than {args.late_ms:g} ms late; "
          f"host steal {common.fmt(result.get('steal_pct'), 1)} %")
    print(common.table(["activity", "count", "busy %", "overlaps late %", "overlaps any %", "mean ms"],
                       overlap_table(runs, spans, late_s)))
    print(common.table(["runs", "stage", "count", "mean ms", "p50 ms", "p99 ms"],
                       stage_table(staged, submitted, late_s)))
    if "window" in result:
        print(common.table(["window", "runs", "p99 ms", "late %", "jobstore writer busy %", "history writer busy %"],
                           slice_table(runs, spans, result["window"][0], args.interval, late_s)))
    print(common.table(["stall at", "runs", "max late ms", "longest loop round ms", "overlapping activity"],
                       stall_table(runs, spans, result.get("window", (first,))[0], args.stall_ms / 1000)))
    window = [1000 * (end - start) for start, end in ITERATIONS if first <= start <= last]
    if window:
        print(f"scheduler loop: {len(window):,} rounds in the window, mean / p50 / p99 "
              f"{' / '.join(_mean_quantiles(window, (50, 99)))} ms each")
    print(common.table(["thread", "cpu s", "waiting for a cpu s", "time slices", "mean wait us"], schedstat_table()))
    if waking:
        print(common.table(["woken", "wakes", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "> 0.5 ms",
                            "on the CPU woken onto, when > 0.5 ms"], waking))
    return 0


if __name__ == "__main__":
    sys.exit(main())
