"""Throughput: short jobs executed per second, carnation (with history) vs bare APScheduler (no history).

N one-off jobs (date trigger, no-op) all due at the same moment; both sides use 10 worker threads and a misfire
grace time of an hour, so nothing is skipped. Measured from the scheduled time to the moment the N-th outcome is
known: an APScheduler listener (EVENT_JOB_EXECUTED/ERROR/MISSED) counts to N, on both sides (on carnation it is
added to engine.scheduler; subscribing to carnation's event bus instead would make it build events that a headless
daemon with no console attached does not). For carnation also the time until all history rows are durable (engine.flush()), and the rows are
counted afterwards: every run must have its row, none missing, none "running".

Target: carnation >= 0.8 x bare (MemoryJobStore) completions per second.

    python -m bench.throughput --quick
    python -m bench.throughput --jobs 10000 --dbs sqlite,mariadb,postgresql
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    UTC,
    ThreadSampler,
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
    insert_carnation_rows,
    leftover_databases,
    parse_list,
    ratio,
    run_child,
    table,
    thread_cpu,
    verdict,
    writers_ready,
)


def child(p: dict[str, Any]) -> dict[str, Any]:
    from datetime import datetime

    from apscheduler import events as aps

    contender, n, workers = p["contender"], p["n"], p["workers"]
    ids = [f"t{i:06d}" for i in range(n)]
    t_setup = time.time()
    t0 = t_setup + p["lead"]
    run_date = datetime.fromtimestamp(t0, UTC)
    done = threading.Event()
    outcomes: list[str] = []
    seen = itertools.count(1)
    finished_at = [0.0]
    engine = sched = None

    def count(kind: str) -> None:
        # No lock: both sides call this from ten workers at once, and a lock here became the hottest point of
        # the run (threads queued on it). list.append and next() on a counter are atomic; the call that counts
        # the n-th outcome comes after every append.
        outcomes.append(kind)
        if next(seen) == n:
            finished_at[0] = time.time()
            done.set()

    if contender == "carnation":
        from scheduler_core.config import load_settings
        from scheduler_core.engine import Engine

        specs = carnation_specs(ids, None, {"type": "date", "run_date": run_date.isoformat()})
        insert_carnation_rows(p["url"], ((i, s, t0) for i, s in zip(ids, specs)))
        settings = load_settings(None, db_url=p["url"], log_dir=str(Path(p["tmp"]) / "log"), timezone="UTC",
                                 workers=workers, misfire_grace_time=3600)
        engine = Engine(settings)
        # Counted by an APScheduler listener, exactly as on the bare side: subscribing to carnation's event bus would
        # make it publish events that a headless daemon with no console attached does not build.
        names = {aps.EVENT_JOB_EXECUTED: "executed", aps.EVENT_JOB_ERROR: "errors", aps.EVENT_JOB_MISSED: "missed"}
        engine.scheduler.add_listener(lambda e: count(names[e.code]),
                                      aps.EVENT_JOB_EXECUTED | aps.EVENT_JOB_ERROR | aps.EVENT_JOB_MISSED)
        engine.start()
        writers_ready(engine)
    else:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.memory import MemoryJobStore
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.date import DateTrigger

        from bench.jobs import stamp

        names = {aps.EVENT_JOB_EXECUTED: "executed", aps.EVENT_JOB_ERROR: "errors", aps.EVENT_JOB_MISSED: "missed"}
        sched = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()}, executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"misfire_grace_time": 3600, "coalesce": True, "max_instances": 1}, timezone=UTC)
        sched.add_listener(lambda e: count(names[e.code]),
                           aps.EVENT_JOB_EXECUTED | aps.EVENT_JOB_ERROR | aps.EVENT_JOB_MISSED)
        trigger = DateTrigger(run_date=run_date, timezone=UTC)
        for job_id in ids:
            sched.add_job(stamp, trigger, id=job_id, name="stamp")
        sched.start()

    ready = time.time()
    if ready > t0:
        return {"contender": contender, "error": f"setup took {ready - t_setup:.1f} s, past the run date; raise --lead"}
    sampler = ThreadSampler() if p.get("profile") else None
    while time.time() < t0:
        time.sleep(0.001)
    if sampler:
        sampler.start()
    cpu0, threads0 = cpu_seconds(), thread_cpu()
    finished = done.wait(p["timeout"])
    cpu1, threads1 = cpu_seconds(), thread_cpu()
    if sampler:
        sampler.stop()
        Path(p["profile"]).write_text(sampler.text())
    elapsed = (finished_at[0] if finished else time.time()) - t0
    counts = {kind: outcomes.count(kind) for kind in ("executed", "errors", "missed")}
    result: dict[str, Any] = {
        "contender": contender, "n": n, "finished": finished, **counts, "elapsed_s": elapsed,
        "per_s": sum(counts.values()) / elapsed if elapsed > 0 else None, "cpu_s": cpu1 - cpu0,
        "cpu_by_thread": cpu_by_thread(threads0, threads1, elapsed),
    }
    if engine is not None:
        import sqlalchemy as sa

        from scheduler_core.store import runs_table

        flushed = engine.flush(60)
        durable = time.time() - t0
        with engine.store.engine.connect() as conn:
            by_outcome = dict(conn.execute(sa.select(runs_table.c.outcome, sa.func.count())
                                           .group_by(runs_table.c.outcome)).all())
        rows = sum(by_outcome.values())
        result.update(durable_s=durable, durable_per_s=n / durable, flushed=flushed, history_rows=rows,
                      history_by_outcome=by_outcome, history_missing=n - by_outcome.get("success", 0),
                      history_dropped=engine.history.dropped)
    hard_exit_after(20)
    if engine is not None:
        engine.stop(timeout=5)
    elif sched is not None:
        sched.shutdown(wait=False)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser)
    parser.add_argument("--jobs", type=int, default=None, help="jobs all due at once (default 10,000; quick 2,000)")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3,
                        help="repeat each pair (default 3: one window is under a second); medians are reported")
    args = parser.parse_args()
    n = args.jobs or (2000 if args.quick else 10_000)
    dbs = parse_list(args.dbs)
    print(header("throughput"))
    print(f"{n:,} no-op date jobs due at the same moment, {args.workers} worker threads\n", flush=True)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with bench_tmp() as tmp:
        for db in dbs:
            for rep in range(args.repeat):
                order = ["bare-memory", "carnation"] if rep % 2 == 0 else ["carnation", "bare-memory"]
                for contender in order:
                    params = dict(contender=contender, n=n, workers=args.workers, lead=3 + n * 0.0004,
                                  timeout=120 + n * 0.01)
                    if args.profile_dir and contender == "carnation":
                        params["profile"] = str(Path(args.profile_dir) / f"throughput-{db}-{n}.txt")
                    limit = params["lead"] + params["timeout"] + 120
                    if contender == "bare-memory":
                        res = run_child("bench.throughput", params, limit, args.verbose)
                    else:
                        with database(db, tmp, "tput") as url:
                            res = run_child("bench.throughput", dict(params, url=url), limit, args.verbose)
                    res.setdefault("contender", contender)
                    results.setdefault((db, contender), []).append(res)
                    print(f"  {db:<10} {contender:<12} " + _line(res), flush=True)
    print()
    rows, verdicts = [], []
    for db in dbs:
        bare = _best(results.get((db, "bare-memory"), []))
        car = _best(results.get((db, "carnation"), []))
        rows.append([f"({db} run)", "bare-memory", bare.get("per_s"), "-", "-", "-", "1.00"])
        r = ratio(car.get("per_s"), bare.get("per_s"))
        rows.append([db, "carnation", car.get("per_s"), car.get("durable_per_s"),
                     fmt(car.get("history_rows")), fmt(car.get("history_missing")), fmt(r, 2)])
        missing = car.get("history_missing")
        ok = r is not None and r >= 0.8 and missing == 0
        verdicts.append(verdict(ok, f"{db}: carnation {fmt(car.get('per_s'), 0)}/s = {fmt(r, 2)}x bare "
                                    f"{fmt(bare.get('per_s'), 0)}/s (target >= 0.80); history rows missing: "
                                    f"{fmt(missing)}"))
    print(table(["db", "contender", "runs/s", "durable runs/s", "history rows", "missing", "x bare"], rows))
    print()
    print("\n".join(verdicts))
    left = leftover_databases()
    if left:
        print(f"WARNING: bench databases left behind: {left}")
    return 0


def _best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by runs/s (with one or two repeats: the first)."""
    ok = sorted((r for r in results if "error" not in r and r.get("per_s")), key=lambda r: r["per_s"])
    return ok[(len(ok) - 1) // 2] if ok else {}


def _line(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"ERROR {res['error']} {res.get('stderr', '')[-600:]}"
    text = (f"{res['executed']:,} executed, {res['errors']:,} errors, {res['missed']:,} missed in "
            f"{res['elapsed_s']:.2f} s = {fmt(res['per_s'], 0)}/s, cpu {res['cpu_s']:.1f} s")
    if "durable_s" in res:
        text += (f"; history durable after {res['durable_s']:.2f} s ({fmt(res['durable_per_s'], 0)}/s), rows "
                 f"{res['history_by_outcome']}")
    if res.get("cpu_by_thread"):
        text += "\n      % of a core by thread: " + ", ".join(f"{k} {v:g}" for k, v in res["cpu_by_thread"].items())
    if not res.get("finished", True):
        text += "  (DID NOT FINISH)"
    if res.get("stderr"):
        text += f"\n      stderr: {res['stderr'][-400:]}"
    return text


if __name__ == "__main__":
    if not child_main(child):
        sys.exit(main())
