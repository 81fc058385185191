"""Fire lateness: actual start − scheduled time, carnation vs bare APScheduler, measured in the same run.

N interval jobs (no-op, every --interval seconds) with start dates spread evenly across one interval, so a steady
N/interval fires per second. Each contender runs in its own fresh process, one after the other:

  bare-memory      BackgroundScheduler + MemoryJobStore (APScheduler's fastest case, no persistence)
  carnation        Engine (memory-first SpecJobStore, write-behind, history) over the database
  carnation-in-thread  the same with writer_process = false (SQL from its threads; only with --contenders)
  bare-sqlalchemy  BackgroundScheduler + SQLAlchemyJobStore over the same kind of database

Lateness is measured for runs whose scheduled time falls in a window of --duration seconds that starts once the
scheduler is up. carnation: history rows' started_at − scheduled_at. bare: the job returns time.time() as it starts
and an EVENT_JOB_EXECUTED listener subtracts the event's scheduled_run_time (same position, same cost).
Expected runs are computed exactly from the start dates; missed = runs reported missed (misfire or coalesced);
not run = expected − executed − missed (still queued behind a lagging loop when the window closed).

Targets (1,000 and 10,000 jobs): carnation p99 <= 1.1 x bare-memory p99, and carnation p99 < bare-sqlalchemy p99
on the same database (a contender that leaves runs unexecuted loses on that count as well).

    python -m bench.lateness --quick
    python -m bench.lateness                       # 100, 1,000, 10,000 jobs x sqlite, mariadb, postgresql
    python -m bench.lateness --sizes 10000 --dbs mariadb --duration 30 --repeat 2
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    UTC,
    ThreadSampler,
    bare_job_states,
    bare_sqlalchemy_jobstore,
    bench_tmp,
    carnation_specs,
    child_main,
    common_args,
    cpu_by_thread,
    cpu_seconds,
    cpu_steal,
    database,
    fmt,
    hard_exit_after,
    header,
    insert_bare_rows,
    insert_carnation_rows,
    leftover_databases,
    parse_list,
    ratio,
    rss_mb,
    run_child,
    sleep_until,
    staggered_starts,
    steal_pct,
    summary_ms,
    table,
    thread_cpu,
    verdict,
    writers_ready,
)

CONTENDERS = ("bare-memory", "carnation", "bare-sqlalchemy")


# --- child ---------------------------------------------------------------------------------------------------------
def expected_runs(starts_epoch: list[float], interval: float, w0: float, w1: float) -> int:
    total = 0
    for s in starts_epoch:
        k0 = max(0, math.ceil((w0 - s) / interval))
        kmax = math.ceil((w1 - s) / interval) - 1
        total += max(0, kmax - k0 + 1)
    return total


def child(p: dict[str, Any]) -> dict[str, Any]:
    from apscheduler import events as aps

    contender, n, interval = p["contender"], p["n"], p["interval"]
    grace, workers, url = p["grace"], p["workers"], p.get("url")
    ids = [f"j{i:06d}" for i in range(n)]
    t_setup = time.time()
    t0 = t_setup + p["lead"]
    starts = staggered_starts(n, t0, interval)
    starts_epoch = [s.timestamp() for s in starts]
    records: list[tuple[float, float, int, str]] = []  # (scheduled, started or nan, event code, job id)
    engine = sched = None

    if contender.startswith("carnation"):
        from scheduler_core.config import load_settings
        from scheduler_core.engine import Engine

        specs = carnation_specs(ids, starts, {"type": "interval", "seconds": interval})
        insert_carnation_rows(url, zip(ids, specs, starts_epoch))
        settings = load_settings(None, db_url=url, log_dir=str(Path(p["tmp"]) / "log"), timezone="UTC",
                                 workers=workers, misfire_grace_time=grace,
                                 writer_process=contender != "carnation-in-thread")
        engine = Engine(settings)
        engine.start()
        writers_ready(engine)
    else:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.memory import MemoryJobStore
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        from bench.jobs import stamp

        events_seen = records

        def listener(event: Any) -> None:
            started = event.retval if event.code == aps.EVENT_JOB_EXECUTED else math.nan
            events_seen.append((event.scheduled_run_time.timestamp(), started, event.code, event.job_id))

        triggers = [IntervalTrigger(seconds=interval, start_date=s, timezone=UTC) for s in starts]
        if contender == "bare-sqlalchemy":
            insert_bare_rows(url, bare_job_states(ids, triggers, starts, stamp, grace))
            jobstore = bare_sqlalchemy_jobstore(url)
        else:
            jobstore = MemoryJobStore()
        sched = BackgroundScheduler(
            jobstores={"default": jobstore}, executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"misfire_grace_time": grace, "coalesce": True, "max_instances": 1}, timezone=UTC)
        sched.add_listener(listener, aps.EVENT_JOB_EXECUTED | aps.EVENT_JOB_ERROR | aps.EVENT_JOB_MISSED)
        if contender == "bare-memory":
            for job_id, trigger in zip(ids, triggers):
                sched.add_job(stamp, trigger, id=job_id, name="stamp")
        sched.start()

    ready = time.time()
    w0 = max(t0, ready + 0.5)
    w1 = w0 + p["duration"]
    sleep_until(w0)
    sampler = ThreadSampler() if p.get("profile") else None
    if sampler:
        sampler.start()
    cpu0, threads0, steal0 = cpu_seconds(), thread_cpu(), cpu_steal()
    sleep_until(w1)
    cpu1, threads1, steal1 = cpu_seconds(), thread_cpu(), cpu_steal()
    rss = rss_mb()
    if sampler:
        sampler.stop()
        Path(p["profile"]).write_text(sampler.text())
    sleep_until(w1 + p["drain"])

    extra: dict[str, Any] = {}
    if engine is not None:
        import sqlalchemy as sa

        from scheduler_core.store import runs_table

        flushed = engine.flush(30)
        c = runs_table.c
        with engine.store.engine.connect() as conn:
            rows = conn.execute(sa.select(c.scheduled_at, c.started_at, c.outcome, c.job_id)
                                .where(c.scheduled_at >= w0, c.scheduled_at < w1)).all()
        code = {"success": aps.EVENT_JOB_EXECUTED, "missed": aps.EVENT_JOB_MISSED}
        records = [(r[0], r[1] if r[1] is not None else math.nan, code.get(r[2], aps.EVENT_JOB_ERROR), r[3])
                   for r in rows]
        extra = {"history_flushed": flushed, "history_dropped": engine.history.dropped,
                 "duplicates": engine.history.duplicates, "nrt_write_errors": engine.jobstore.write_errors}
    else:
        snapshot = list(events_seen)  # the listener keeps appending to `records` while the scheduler runs
        records = [r for r in snapshot if w0 <= r[0] < w1]

    expected = expected_runs(starts_epoch, interval, w0, w1)
    duplicates = len(records) - len({(r[3], round(r[0], 3)) for r in records})
    executed = [r for r in records if r[2] == aps.EVENT_JOB_EXECUTED]
    missed = sum(1 for r in records if r[2] == aps.EVENT_JOB_MISSED)
    errors = sum(1 for r in records if r[2] == aps.EVENT_JOB_ERROR)
    result = {
        "contender": contender, "n": n, "expected": expected, "executed": len(executed), "missed": missed,
        "errors": errors, "not_run": expected - len(executed) - missed - errors, "run_twice": duplicates,
        "late": summary_ms(r[1] - r[0] for r in executed),
        "cpu_pct": 100 * (cpu1 - cpu0) / (w1 - w0), "cpu_by_thread": cpu_by_thread(threads0, threads1, w1 - w0),
        "rss_mb": rss, "setup_s": ready - t_setup, "steal_pct": steal_pct(steal0, steal1),
        "window_delayed_s": max(0.0, w0 - t0), **extra,
    }
    if p.get("keep_records"):  # bench.tail, in this process: (scheduled, started, event code, job id) of each run
        result["records"], result["window"] = records, (w0, w1)
    # Stopping a lagging scheduler joins its loop thread, which can take long: the result is already out.
    hard_exit_after(20)
    if engine is not None:
        engine.stop(timeout=5)
    elif sched is not None:
        sched.shutdown(wait=False)
    return result


# --- parent --------------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser)
    parser.add_argument("--sizes", default=None, help="job counts, comma-separated (default 100,1000,10000)")
    parser.add_argument("--interval", type=int, default=None, help="seconds between a job's runs (default 10)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of scheduled times measured (default 25)")
    parser.add_argument("--drain", type=float, default=2.0, help="seconds allowed after the window for late runs")
    parser.add_argument("--grace", type=int, default=1,
                        help="misfire_grace_time on both sides (default 1: APScheduler's own default)")
    parser.add_argument("--workers", type=int, default=10, help="executor threads on both sides (default 10)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--repeat", type=int, default=1, help="repeat each set; medians are reported")
    parser.add_argument("--bare-sqlite-defaults", action="store_true",
                        help="bare SQLAlchemyJobStore on SQLite with APScheduler's defaults (rollback journal, "
                             "synchronous=FULL) instead of carnation's WAL settings")
    args = parser.parse_args()
    if args.bare_sqlite_defaults:
        os.environ["BENCH_BARE_SQLITE_DEFAULTS"] = "1"  # inherited by the children
    sizes = parse_list(args.sizes or ("100,1000" if args.quick else "100,1000,10000"), int)
    interval = args.interval or (5 if args.quick else 10)
    duration = args.duration or (10.0 if args.quick else 25.0)
    dbs = parse_list(args.dbs)
    contenders = parse_list(args.contenders)

    print(header("fire lateness"))
    print(f"interval {interval} s, window {duration:g} s (+{args.drain:g} s drain), misfire_grace_time {args.grace} s, "
          f"{args.workers} worker threads, {args.repeat} repeat(s); lateness in ms; bare SQLite store: "
          f"{'APScheduler defaults' if args.bare_sqlite_defaults else 'WAL + synchronous=NORMAL, as carnation'}\n",
          flush=True)
    results: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    with bench_tmp() as tmp:
        for n in sizes:
            for db in dbs:
                for rep in range(args.repeat):
                    order = contenders if rep % 2 == 0 else list(reversed(contenders))
                    for contender in order:
                        lead = 2.0 + n * (0.0006 if contender != "bare-memory" else 0.0002)
                        params = dict(contender=contender, n=n, interval=interval, duration=duration,
                                      drain=args.drain, grace=args.grace, workers=args.workers, lead=lead)
                        if args.profile_dir and contender == "carnation":
                            params["profile"] = str(Path(args.profile_dir) / f"lateness-{contender}-{db}-{n}.txt")
                        timeout = lead + duration + args.drain + 120 + n * 0.003
                        if contender == "bare-memory":
                            res = run_child("bench.lateness", params, timeout, args.verbose)
                        else:
                            with database(db, tmp, "late") as url:
                                res = run_child("bench.lateness", dict(params, url=url), timeout, args.verbose)
                        res.setdefault("contender", contender)
                        results.setdefault((n, db, contender), []).append(res)
                        print(f"  {n:>6} jobs  {db:<10} {contender:<16} " + _line(res), flush=True)
    print()
    print(_report(results, sizes, dbs, contenders))
    left = leftover_databases()
    if left:
        print(f"WARNING: bench databases left behind: {left}")
    return 0


def _line(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"ERROR {res['error']} {res.get('stderr', '')[-600:]}"
    late = res["late"]
    text = (f"p50 {fmt(late['p50'], 2)}  p90 {fmt(late.get('p90'), 2)}  p99 {fmt(late['p99'], 2)}  max {fmt(late['max'], 1)} ms  "
            f"ran {res['executed']:,}/{res['expected']:,}  missed {res['missed']:,}  not run {res['not_run']:,}  "
            f"cpu {res['cpu_pct']:.0f}%  host steal {fmt(res.get('steal_pct'), 1)}%  setup {res['setup_s']:.1f} s")
    if res.get("cpu_by_thread"):
        text += "\n      cpu % by thread: " + ", ".join(f"{k} {v:g}" for k, v in res["cpu_by_thread"].items())
    if res.get("run_twice"):
        text += f"  RUN TWICE {res['run_twice']:,}"
    if res.get("window_delayed_s"):
        text += f"  (window delayed {res['window_delayed_s']:.1f} s: setup overran)"
    if res.get("stderr"):
        text += f"\n      stderr: {res['stderr'][-400:]}"
    return text


def _count(value: float | None) -> str:
    return fmt(None if value is None else round(value))


def _median(results: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for r in results:
        if "error" in r:
            continue
        v: Any = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None:
            values.append(v)
    return statistics.median(values) if values else None


def _spread(results: list[dict[str, Any]], *path: str) -> str:
    """min-max over the repeats: how far the machine's noise moves a figure (the same contender, the same run)."""
    values = [v for v in (_median([r], *path) for r in results) if v is not None]
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else "-"


def _report(results: dict[tuple[int, str, str], list[dict[str, Any]]], sizes: list[int], dbs: list[str],
            contenders: list[str]) -> str:
    rows = []
    verdicts = []
    for n in sizes:
        for db in dbs:
            base = {c: results.get((n, db, c), []) for c in contenders}
            p99 = {c: _median(base[c], "late", "p99") for c in contenders}
            for c in contenders:
                rs = base[c]
                rows.append([
                    f"{n:,}", db if c != "bare-memory" else f"({db} run)", c,
                    fmt(_median(rs, "late", "p50"), 2), fmt(_median(rs, "late", "p90"), 2), fmt(p99[c], 2),
                    _spread(rs, "late", "p99"),
                    fmt(_median(rs, "late", "max"), 1),
                    f"{_count(_median(rs, 'executed'))}/{_count(_median(rs, 'expected'))}",
                    _count(_median(rs, "missed")), _count(_median(rs, "not_run")), fmt(_median(rs, "cpu_pct"), 0),
                    fmt(_max(rs, "steal_pct"), 1),
                    fmt(ratio(p99[c], p99.get("bare-memory")), 2) if c != "bare-memory" else "1.00",
                ])
            if n >= 1000 and "carnation" in contenders:
                car = base["carnation"]
                notes = []
                ok: bool | None = True
                if "bare-memory" in contenders:
                    r = ratio(p99["carnation"], p99["bare-memory"])
                    good = r is not None and r <= 1.1
                    ok = ok and good
                    notes.append(f"p99 {fmt(p99['carnation'], 2)} ms = {fmt(r, 2)}x bare-memory (target <= 1.10)")
                if "bare-sqlalchemy" in contenders:
                    sa_p99 = p99["bare-sqlalchemy"]
                    sa_ok = _median(base["bare-sqlalchemy"], "executed") or 0
                    car_ok = _median(car, "executed") or 0
                    good = p99["carnation"] is not None and (sa_p99 is None or p99["carnation"] < sa_p99
                                                              or car_ok > sa_ok * 1.05)
                    ok = ok and good
                    notes.append(f"vs bare-sqlalchemy p99 {fmt(sa_p99, 2)} ms, ran {_count(car_ok)} vs {_count(sa_ok)}")
                exp = _median(car, "expected") or 0
                if car and _median(car, "executed") != exp:
                    notes.append(f"carnation ran {_count(_median(car, 'executed'))} of {_count(exp)}")
                verdicts.append(verdict(ok, f"{n:,} jobs on {db}: " + "; ".join(notes)))
    out = table(["jobs", "db", "contender", "p50 ms", "p90 ms", "p99 ms", "p99 range", "max ms", "ran/expected",
                 "missed", "not run", "cpu %", "steal % max", "p99/mem"], rows)
    stolen = [r.get("steal_pct") or 0.0 for rs in results.values() for r in rs if "error" not in r]
    if stolen and max(stolen) >= NOISY_STEAL_PCT:
        verdicts.append(f"NOTE: the host took up to {max(stolen):.1f} % of the CPUs in a window (steal): the tail "
                        f"there is the host's as much as the scheduler's; compare runs with little steal")
    return out + "\n\n" + "\n".join(verdicts)


NOISY_STEAL_PCT = 1.0


def _max(results: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return max(values) if values else None


if __name__ == "__main__":
    if not child_main(child):
        sys.exit(main())
