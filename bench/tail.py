"""What the late runs overlapped: carnation's lateness tail against its background activity, in one process.

Runs carnation alone (as bench.lateness does: N staggered interval jobs, a window, history rows read back) and
records, around it, each writer process call (the history's and the jobstore's: during one, the child and the
database server are busy on the same cores), each change poll and each garbage collection. Then, for the runs that
started more than `--late-ms` after their scheduled time, prints how often each kind of activity overlapped them,
against how often it overlapped any run: a kind over-represented among the late runs is a cause to look at.

    python -m bench.tail --db postgresql --jobs 10000
    python -m bench.tail --db mariadb --jobs 10000 --jobstore-niceness 10   # A/B the jobstore child's priority
    python -m bench.tail --db sqlite --niced-idle                            # the niced children as SCHED_IDLE
"""

from __future__ import annotations

import argparse
import bisect
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from bench import common, lateness
from scheduler_core.store import runs_table

Span = tuple[str, float, float]  # (kind, start epoch, end epoch)


def record_spans(jobstore_niceness: int | None, niced_idle: bool = False) -> list[Span]:
    """Wrap the calls to time; returns the list they append to. Optionally change the writer children's priority
    (an experiment: what is committed is history.WRITER_NICENESS)."""
    import scheduler_core.engine as engine_mod
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
    gc_start: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start["t"] = time.time()
        else:
            spans.append((f"gc{info['generation']}", gc_start.get("t", time.time()), time.time()))

    gc.callbacks.append(on_gc)
    if jobstore_niceness is not None:
        make_writer = engine_mod.make_writer

        def niced(store: Any, name: str, in_child: bool, niceness: int = 0) -> Any:
            return make_writer(store, name, in_child, jobstore_niceness if name == "jobstore" else niceness)

        engine_mod.make_writer = niced
    if niced_idle:
        # SCHED_IDLE: a waking scheduler thread always preempts the child (nice only weighs it down).
        writer_mod._CHILD_MAIN = writer_mod._CHILD_MAIN.replace(
            "os.nice(int(sys.argv[3])); ",
            "os.nice(int(sys.argv[3])); int(sys.argv[3]) and os.sched_setscheduler(0, os.SCHED_IDLE, "
            "os.sched_param(0)); ")
        assert "SCHED_IDLE" in writer_mod._CHILD_MAIN
    return spans


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="postgresql", choices=common.ALL_DBS)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--late-ms", type=float, default=1.0)
    parser.add_argument("--jobstore-niceness", type=int, default=None)
    parser.add_argument("--niced-idle", action="store_true", help="run the niced writer children as SCHED_IDLE")
    args = parser.parse_args()
    print(common.header("tail"))
    spans = record_spans(args.jobstore_niceness, args.niced_idle)
    lateness.hard_exit_after = lambda *a, **k: None  # this process goes on after the engine stops
    with common.bench_tmp() as tmp:
        common.isolate_environment(tmp)
        common.quiet_logging()
        with common.database(args.db, tmp, "tail") as url:
            params = dict(contender="carnation", n=args.jobs, interval=args.interval, duration=args.duration,
                          drain=2, grace=1, workers=10, lead=2.0 + args.jobs * 0.0006, url=url, tmp=str(tmp))
            result = lateness.child(params)
            engine = sa.create_engine(url)
            with engine.connect() as conn:
                rows = conn.execute(sa.select(runs_table.c.scheduled_at, runs_table.c.started_at)
                                    .where(runs_table.c.outcome == "success")).all()
            engine.dispose()
    runs = [(scheduled, started) for scheduled, started in rows if started is not None]
    first, last = min(s for s, _ in runs), max(s for s, _ in runs)
    runs = [run for run in runs if first + 2 <= run[0] <= last - 2]  # not the start-up and drain edges
    late = sum(1 for s, t in runs if t - s > args.late_ms / 1000)
    print(f"{args.jobs:,} jobs on {args.db}: p50 {result['late']['p50']:.2f} p99 {result['late']['p99']:.2f} ms; "
          f"{late:,} of {len(runs):,} runs ({100 * late / len(runs):.2f} %) started more than {args.late_ms:g} ms late")
    print(common.table(["activity", "count", "busy %", "overlaps late %", "overlaps any %", "mean ms"],
                       overlap_table(runs, spans, args.late_ms / 1000)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
