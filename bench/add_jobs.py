"""Adding and updating jobs: jobs per second through the facade, into each database.

carnation: a started Engine (executing) and its Console; console.add_job(flat Flask-APScheduler dict) N times,
then console.update_job(id, {"seconds": ...}) N times (each update restarts the job's schedule, as the bare
reschedule does). For scale, the same through bare APScheduler on a running BackgroundScheduler:
scheduler.add_job then scheduler.reschedule_job, with MemoryJobStore and with SQLAlchemyJobStore on the same
database. Every add and update is durable when the call returns (carnation writes the row first; the
SQLAlchemyJobStore commits per call); the memory store keeps nothing.

No target: the figures say how long an import of many jobs or a burst of API edits takes.

    python -m bench.add_jobs --quick
    python -m bench.add_jobs --jobs 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    JOB_REF,
    UTC,
    bare_sqlalchemy_jobstore,
    bench_tmp,
    child_main,
    common_args,
    database,
    fmt,
    hard_exit_after,
    header,
    leftover_databases,
    maybe_profile,
    parse_list,
    ratio,
    run_child,
    table,
)


def child(p: dict[str, Any]) -> dict[str, Any]:
    contender, n = p["contender"], p["n"]
    start = datetime.now(UTC) + timedelta(hours=1)
    ids = [f"a{i:06d}" for i in range(n)]
    result: dict[str, Any] = {"contender": contender, "n": n}
    if contender == "carnation":
        from scheduler_core.config import load_settings
        from scheduler_core.console import Console
        from scheduler_core.engine import Engine

        settings = load_settings(None, db_url=p["url"], log_dir=str(Path(p["tmp"]) / "log"), timezone="UTC")
        engine = Engine(settings)
        engine.start()
        console = Console(engine)
        with maybe_profile(p.get("profile")):
            t = time.perf_counter()
            for job_id in ids:
                console.add_job({"id": job_id, "func": JOB_REF, "trigger": "interval", "seconds": 600,
                                 "start_date": start.isoformat()})
            add_s = time.perf_counter() - t
            t = time.perf_counter()
            for job_id in ids:
                console.update_job(job_id, {"seconds": 900})
            update_s = time.perf_counter() - t
        engine.flush()
        stored = len(engine.store.load_jobs())
        in_memory = len(engine.jobstore.get_all_jobs())
        hard_exit_after(20)
        engine.stop(timeout=5)
        result.update(stored=stored, in_memory=in_memory)
    else:
        from apscheduler.jobstores.memory import MemoryJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        from bench.jobs import stamp

        jobstore = bare_sqlalchemy_jobstore(p["url"]) if contender == "bare-sqlalchemy" else MemoryJobStore()
        sched = BackgroundScheduler(jobstores={"default": jobstore}, timezone=UTC)
        sched.start()
        t = time.perf_counter()
        for job_id in ids:
            sched.add_job(stamp, "interval", seconds=600, start_date=start, id=job_id)
        add_s = time.perf_counter() - t
        t = time.perf_counter()
        for job_id in ids:
            sched.reschedule_job(job_id, trigger="interval", seconds=900)
        update_s = time.perf_counter() - t
        stored = len(sched.get_jobs())
        hard_exit_after(20)
        sched.shutdown(wait=False)
        result.update(stored=stored)
    result.update(add_s=add_s, update_s=update_s, add_per_s=n / add_s, update_per_s=n / update_s)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser)
    parser.add_argument("--jobs", type=int, default=None, help="jobs added then updated (default 2,000; quick 300)")
    args = parser.parse_args()
    n = args.jobs or (300 if args.quick else 2000)
    dbs = parse_list(args.dbs)
    print(header("adding and updating jobs"))
    print(f"{n:,} jobs added one call at a time, then each updated once\n", flush=True)
    rows = []
    with bench_tmp() as tmp:
        mem = run_child("bench.add_jobs", dict(contender="bare-memory", n=n), 600, args.verbose)
        print(f"  {'-':<10} {'bare-memory':<16} {_line(mem)}", flush=True)
        rows.append(["-", "bare-memory", mem.get("add_per_s"), mem.get("update_per_s"), "-", "-"])
        for db in dbs:
            per_db = {}
            for contender in ("carnation", "bare-sqlalchemy"):
                params = dict(contender=contender, n=n)
                if args.profile_dir and contender == "carnation":
                    params["profile"] = str(Path(args.profile_dir) / f"add_jobs-{db}.txt")
                with database(db, tmp, "add") as url:
                    res = run_child("bench.add_jobs", dict(params, url=url), 600 + n * 0.2, args.verbose)
                per_db[contender] = res
                print(f"  {db:<10} {contender:<16} {_line(res)}", flush=True)
            bare = per_db["bare-sqlalchemy"]
            for name, res in per_db.items():
                rows.append([db, name, res.get("add_per_s"), res.get("update_per_s"),
                             fmt(ratio(res.get("add_per_s"), bare.get("add_per_s")), 2),
                             fmt(ratio(res.get("update_per_s"), bare.get("update_per_s")), 2)])
    print()
    print(table(["db", "contender", "adds/s", "updates/s", "adds x bare-sql", "updates x bare-sql"], rows))
    print("\nn/a : no target for adding jobs; figures for the record.")
    left = leftover_databases()
    if left:
        print(f"WARNING: bench databases left behind: {left}")
    return 0


def _line(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"ERROR {res['error']} {res.get('stderr', '')[-800:]}"
    text = (f"add {fmt(res['add_per_s'], 0)}/s ({res['add_s']:.2f} s), update {fmt(res['update_per_s'], 0)}/s "
            f"({res['update_s']:.2f} s), stored {fmt(res['stored'])}")
    if "in_memory" in res:
        text += f", in memory {fmt(res['in_memory'])}"
    if res.get("stderr"):
        text += f"\n      stderr: {res['stderr'][-400:]}"
    return text


if __name__ == "__main__":
    if not child_main(child):
        sys.exit(main())
