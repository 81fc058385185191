"""Start-up with many stored jobs: carnation's Engine.start() (migrate + load) vs bare APScheduler loading pickles.

The parent stores --jobs jobs (default 100,000; interval 2 h, first runs an hour away) the way each side keeps them:
carnation as valid JobSpec JSON rows in carnation_jobs, bare APScheduler as pickled job states in its
SQLAlchemyJobStore table. A fresh child process (imports done before the clock starts) then times:

  carnation        Engine(settings) + engine.start(): migrations checked, config jobs synced, every row parsed and
                   validated, triggers built, jobs in memory and the scheduler running
  bare-sqlalchemy  scheduler.start() (loads nothing: SQLAlchemyJobStore queries on demand), and start() +
                   get_jobs() (unpickles every job: the closest like-for-like "everything loaded")

No fixed target; the ratio is reported. --profile-dir writes a pyinstrument profile of Engine.start().

    python -m bench.startup --quick                 # 20,000 jobs, sqlite
    python -m bench.startup --dbs sqlite,mariadb,postgresql
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    UTC,
    bare_job_states,
    bare_sqlalchemy_jobstore,
    bench_tmp,
    carnation_specs,
    child_main,
    common_args,
    database,
    fmt,
    hard_exit_after,
    header,
    insert_bare_rows,
    insert_carnation_rows,
    leftover_databases,
    maybe_profile,
    parse_list,
    ratio,
    rss_mb,
    run_child,
    staggered_starts,
    table,
)


def child(p: dict[str, Any]) -> dict[str, Any]:
    contender = p["contender"]
    result: dict[str, Any] = {"contender": contender}
    if contender == "carnation":
        import scheduler_core.console  # noqa: F401  (imports before the clock)
        from scheduler_core.config import load_settings
        from scheduler_core.engine import Engine

        settings = load_settings(None, db_url=p["url"], log_dir=str(Path(p["tmp"]) / "log"), timezone="UTC")
        with maybe_profile(p.get("profile")):
            t = time.perf_counter()
            engine = Engine(settings)
            engine.start()
            start_s = time.perf_counter() - t
        loaded = len(engine.jobstore.get_all_jobs())
        result.update(start_s=start_s, loaded_s=start_s, loaded=loaded, executing=engine.executing,
                      broken=len(engine.broken), rss_mb=rss_mb())
        hard_exit_after(30)
        engine.stop(timeout=5)
    else:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        import bench.jobs  # noqa: F401

        t = time.perf_counter()
        sched = BackgroundScheduler(jobstores={"default": bare_sqlalchemy_jobstore(p["url"])},
                                    executors={"default": ThreadPoolExecutor(10)}, timezone=UTC)
        sched.start()
        start_s = time.perf_counter() - t
        jobs = sched.get_jobs()
        loaded_s = time.perf_counter() - t
        result.update(start_s=start_s, loaded_s=loaded_s, loaded=len(jobs), rss_mb=rss_mb())
        hard_exit_after(30)
        sched.shutdown(wait=False)
    return result


def fill(contender: str, url: str, n: int) -> float:
    from apscheduler.triggers.interval import IntervalTrigger

    from bench.jobs import stamp

    t = time.perf_counter()
    ids = [f"s{i:06d}" for i in range(n)]
    starts = staggered_starts(n, time.time() + 3600, 3600)
    if contender == "carnation":
        specs = carnation_specs(ids, starts, {"type": "interval", "hours": 2})
        insert_carnation_rows(url, zip(ids, specs, (s.timestamp() for s in starts)))
    else:
        triggers = [IntervalTrigger(hours=2, start_date=s, timezone=UTC) for s in starts]
        insert_bare_rows(url, bare_job_states(ids, triggers, starts, stamp, 30))
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser, default_dbs="sqlite")
    parser.add_argument("--jobs", type=int, default=None, help="stored jobs (default 100,000; quick 20,000)")
    parser.add_argument("--repeat", type=int, default=1, help="start each filled database this many times")
    args = parser.parse_args()
    n = args.jobs or (20_000 if args.quick else 100_000)
    dbs = parse_list(args.dbs)
    print(header("start-up with stored jobs"))
    print(f"{n:,} stored interval jobs\n", flush=True)
    rows = []
    with bench_tmp() as tmp:
        for db in dbs:
            per: dict[str, list[dict[str, Any]]] = {}
            for contender in ("carnation", "bare-sqlalchemy"):
                with database(db, tmp, "start") as url:
                    fill_s = fill(contender, url, n)
                    print(f"  {db:<10} {contender:<16} stored {n:,} jobs in {fill_s:.1f} s", flush=True)
                    for rep in range(args.repeat):
                        params: dict[str, Any] = dict(contender=contender, url=url)
                        if args.profile_dir and contender == "carnation" and rep == 0:
                            params["profile"] = str(Path(args.profile_dir) / f"startup-{db}-{n}.txt")
                        res = run_child("bench.startup", params, 600 + n * 0.01, args.verbose)
                        per.setdefault(contender, []).append(res)
                        print(f"  {db:<10} {contender:<16} {_line(res)}", flush=True)
            car = _median(per.get("carnation", []))
            bare = _median(per.get("bare-sqlalchemy", []))
            rows.append([db, "carnation", car.get("start_s"), car.get("loaded_s"), fmt(car.get("loaded")),
                         car.get("rss_mb"), fmt(ratio(car.get("loaded_s"), bare.get("loaded_s")), 2)])
            rows.append([db, "bare-sqlalchemy", bare.get("start_s"), bare.get("loaded_s"), fmt(bare.get("loaded")),
                         bare.get("rss_mb"), "1.00"])
    print()
    print(table(["db", "contender", "start s", "start+all loaded s", "jobs", "RSS MB", "x bare"], rows))
    print("\nn/a : no fixed target for start-up; carnation's start includes parsing and validating every job, "
          "bare start() alone loads nothing.")
    left = leftover_databases()
    if left:
        print(f"WARNING: bench databases left behind: {left}")
    return 0


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sorted((r for r in results if "error" not in r), key=lambda r: r["loaded_s"])
    return ok[(len(ok) - 1) // 2] if ok else {}


def _line(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"ERROR {res['error']} {res.get('stderr', '')[-800:]}"
    text = f"start {res['start_s']:.2f} s, all {fmt(res['loaded'])} jobs loaded at {res['loaded_s']:.2f} s"
    if res.get("broken"):
        text += f", {res['broken']} broken"
    if res.get("stderr"):
        text += f"\n      stderr: {res['stderr'][-400:]}"
    return text


if __name__ == "__main__":
    if not child_main(child):
        sys.exit(main())
