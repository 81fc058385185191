"""Idle cost: CPU seconds per minute and resident memory with 10,000 jobs whose next run is an hour away.

Each contender in its own process: carnation (Engine, executing, over each database) and bare APScheduler with
MemoryJobStore (and with SQLAlchemyJobStore on the same database, for reference). After setup and a few seconds
of settling, the process's user+system CPU time (all threads, getrusage) is taken over --seconds; RSS is read from
/proc at the end, and also before any job was created (after the imports), so "jobs MB" is what the jobs cost.

Target: carnation idle CPU < 1% of one core (0.6 CPU-seconds per minute).

    python -m bench.idle --quick             # 15 s
    python -m bench.idle --seconds 60
"""

from __future__ import annotations

import argparse
import gc
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
    database,
    fmt,
    hard_exit_after,
    header,
    insert_bare_rows,
    insert_carnation_rows,
    leftover_databases,
    parse_list,
    rss_mb,
    run_child,
    staggered_starts,
    table,
    thread_cpu,
    verdict,
)


def child(p: dict[str, Any]) -> dict[str, Any]:
    contender, n = p["contender"], p["n"]
    # Import everything the contender needs before the baseline RSS, so "jobs MB" is the jobs alone.
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    from bench.jobs import stamp

    if contender == "carnation":
        import scheduler_core.console  # noqa: F401
        from scheduler_core.config import load_settings
        from scheduler_core.engine import Engine
    elif contender == "bare-sqlalchemy":
        import sqlalchemy  # noqa: F401
    gc.collect()
    rss_base = rss_mb()
    ids = [f"i{i:06d}" for i in range(n)]
    starts = staggered_starts(n, p["first_run"], 60)
    engine = sched = None
    if contender == "carnation":
        settings = load_settings(None, db_url=p["url"], log_dir=str(Path(p["tmp"]) / "log"), timezone="UTC")
        engine = Engine(settings)
        engine.start()
        loaded = len(engine.jobstore.get_all_jobs())
    else:
        triggers = [IntervalTrigger(hours=2, start_date=s, timezone=UTC) for s in starts]
        if contender == "bare-sqlalchemy":
            jobstore = bare_sqlalchemy_jobstore(p["url"])
        else:
            jobstore = MemoryJobStore()
        sched = BackgroundScheduler(jobstores={"default": jobstore}, executors={"default": ThreadPoolExecutor(10)},
                                    timezone=UTC)
        if contender == "bare-memory":
            for job_id, trigger in zip(ids, triggers):
                sched.add_job(stamp, trigger, id=job_id, name="stamp")
        del triggers
        sched.start()
        loaded = len(sched.get_jobs())
    gc.collect()
    time.sleep(p["settle"])
    sampler = ThreadSampler(0.005) if p.get("profile") else None
    if sampler:
        sampler.start()
    cpu0, t0, threads0 = cpu_seconds(), time.monotonic(), thread_cpu()
    time.sleep(p["seconds"])
    cpu1, t1, threads1 = cpu_seconds(), time.monotonic(), thread_cpu()
    if sampler:
        sampler.stop()
        Path(p["profile"]).write_text(sampler.text())
    rss = rss_mb()
    # The profiler's own thread (only with --profile-dir) is not the contender's cost.
    sampler_cpu = threads1.get("bench-sampler", 0.0) - threads0.get("bench-sampler", 0.0)
    cpu_per_min = (cpu1 - cpu0 - sampler_cpu) / (t1 - t0) * 60
    result = {"contender": contender, "n": n, "loaded": loaded, "cpu_s_per_min": cpu_per_min,
              "cpu_pct": cpu_per_min / 60 * 100, "rss_mb": rss, "rss_base_mb": rss_base, "jobs_mb": rss - rss_base,
              "seconds": t1 - t0, "cpu_by_thread": cpu_by_thread(threads0, threads1, t1 - t0, 0.0, 3)}
    hard_exit_after(20)
    if engine is not None:
        engine.stop(timeout=5)
    elif sched is not None:
        sched.shutdown(wait=False)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=None, help="measured idle time (default 60; quick 15)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after setup before measuring")
    parser.add_argument("--no-bare-sqlalchemy", action="store_true")
    args = parser.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    dbs = parse_list(args.dbs)
    print(header("idle cost"))
    print(f"{args.jobs:,} interval jobs, next runs an hour away; CPU over {seconds:g} s after {args.settle:g} s "
          f"settling\n", flush=True)
    rows, verdicts = [], []
    base = dict(n=args.jobs, seconds=seconds, settle=args.settle)
    timeout = seconds + args.settle + 300
    with bench_tmp() as tmp:
        mem = run_child("bench.idle", dict(base, contender="bare-memory", first_run=time.time() + 3600), timeout,
                        args.verbose)
        print(f"  {'-':<10} {'bare-memory':<16} {_line(mem)}", flush=True)
        rows.append(_row("-", mem, mem))
        for db in dbs:
            contenders = ["carnation"] + ([] if args.no_bare_sqlalchemy else ["bare-sqlalchemy"])
            for contender in contenders:
                params = dict(base, contender=contender)
                if args.profile_dir and contender == "carnation":
                    params["profile"] = str(Path(args.profile_dir) / f"idle-{db}.txt")
                with database(db, tmp, "idle") as url:
                    params["first_run"] = time.time() + 3600  # first runs 60-61 minutes away
                    fill(contender, url, args.jobs, params["first_run"])  # here, so the child's RSS is its own
                    res = run_child("bench.idle", dict(params, url=url), timeout, args.verbose)
                print(f"  {db:<10} {contender:<16} {_line(res)}", flush=True)
                rows.append(_row(db, res, mem))
                if contender == "carnation":
                    pct = res.get("cpu_pct")
                    verdicts.append(verdict(pct is not None and pct < 1.0,
                                            f"{db}: carnation idle CPU {fmt(pct, 2)}% of one core "
                                            f"({fmt(res.get('cpu_s_per_min'), 3)} CPU-s/min; target < 1%), "
                                            f"RSS {fmt(res.get('rss_mb'), 0)} MB vs bare-memory "
                                            f"{fmt(mem.get('rss_mb'), 0)} MB"))
    print()
    print(table(["db", "contender", "jobs", "CPU-s/min", "% of a core", "RSS MB", "base MB", "jobs MB",
                 "jobs MB x mem"], rows))
    print()
    print("\n".join(verdicts))
    left = leftover_databases()
    if left:
        print(f"WARNING: bench databases left behind: {left}")
    return 0


def fill(contender: str, url: str, n: int, first_run: float) -> None:
    """Store the n jobs in the database the way each contender keeps them (carnation JSON rows, pickled rows)."""
    from apscheduler.triggers.interval import IntervalTrigger

    from bench.jobs import stamp

    ids = [f"i{i:06d}" for i in range(n)]
    starts = staggered_starts(n, first_run, 60)
    if contender == "carnation":
        specs = carnation_specs(ids, starts, {"type": "interval", "hours": 2})
        insert_carnation_rows(url, zip(ids, specs, (s.timestamp() for s in starts)))
    else:
        triggers = [IntervalTrigger(hours=2, start_date=s, timezone=UTC) for s in starts]
        insert_bare_rows(url, bare_job_states(ids, triggers, starts, stamp, 30))


def _row(db: str, res: dict[str, Any], mem: dict[str, Any]) -> list[Any]:
    jobs_ratio = None
    if res.get("jobs_mb") and mem.get("jobs_mb"):
        jobs_ratio = res["jobs_mb"] / mem["jobs_mb"]
    return [db, res.get("contender"), fmt(res.get("loaded")), fmt(res.get("cpu_s_per_min"), 3),
            fmt(res.get("cpu_pct"), 2), res.get("rss_mb"), res.get("rss_base_mb"), res.get("jobs_mb"),
            fmt(jobs_ratio, 2)]


def _line(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"ERROR {res['error']} {res.get('stderr', '')[-800:]}"
    text = (f"{fmt(res['loaded'])} jobs: {res['cpu_s_per_min']:.3f} CPU-s/min ({res['cpu_pct']:.2f}% of a core), "
            f"RSS {res['rss_mb']:.0f} MB ({res['jobs_mb']:.0f} MB for the jobs)")
    if res.get("cpu_by_thread"):
        text += "\n      % of a core by thread: " + ", ".join(f"{k} {v:g}" for k, v in res["cpu_by_thread"].items())
    if res.get("stderr"):
        text += f"\n      stderr: {res['stderr'][-400:]}"
    return text


if __name__ == "__main__":
    if not child_main(child):
        sys.exit(main())
