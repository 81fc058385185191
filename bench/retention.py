"""History retention and history-wide reads at scale: what the executor pays once history is large.

The executor prunes history every 10 minutes (Store.prune_runs: runs older than history_max_age_days, and beyond
history_keep_per_job per job) and reads the whole runs table on every start/takeover (Store.last_runs,
Store.last_handled). With 10,000 jobs firing every 10 s the table gains 3.6 million rows an hour, and every job
passes the default 1,000 kept runs within three hours. This fills --jobs x --runs rows (the oldest
--runs - keep of each job over the limit), then times one prune and the two start-up reads, in a child process,
while measuring how long a concurrent history insert (500 rows, as the history writer does) is held up.

No target; figures for the record.

    python -m bench.retention --quick                  # 200 jobs x 1,100 runs, sqlite
    python -m bench.retention --jobs 1000 --runs 1100 --dbs sqlite,mariadb,postgresql
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    bench_tmp,
    child_main,
    common_args,
    database,
    fmt,
    header,
    leftover_databases,
    parse_list,
    run_child,
    table,
)


def fill(url: str, jobs: int, runs: int) -> tuple[int, float]:
    from scheduler_core.history import run_row
    from scheduler_core.store import Store, runs_table

    store = Store(url)
    store.migrate()
    t = time.perf_counter()
    now = time.time()
    total = 0
    try:
        with store.engine.begin() as conn:
            batch: list[dict[str, Any]] = []
            for k in range(runs):
                at = now - (runs - k) * 10.0
                for j in range(jobs):
                    row = run_row(f"r{j:06d}", at + j * 1e-3, "success")
                    row.update(started_at=at, finished_at=at, duration=0.0, return_value="None", recorded_at=at)
                    batch.append(row)
                    if len(batch) >= 5000:
                        conn.execute(runs_table.insert(), batch)
                        total += len(batch)
                        batch = []
            if batch:
                conn.execute(runs_table.insert(), batch)
                total += len(batch)
    finally:
        store.close()
    return total, time.perf_counter() - t


def child(p: dict[str, Any]) -> dict[str, Any]:
    from scheduler_core.history import run_row
    from scheduler_core.store import Store

    store = Store(p["url"])
    result: dict[str, Any] = {}
    t = time.perf_counter()
    result["last_runs_s"] = (len(store.last_runs()), time.perf_counter() - t)[1]
    t = time.perf_counter()
    store.last_handled()
    result["last_handled_s"] = time.perf_counter() - t

    # A history write racing the prune: how long does it wait?
    waits: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        k = 0
        while not stop.is_set():
            rows = [dict(run_row(f"w{k}-{i}", time.time(), "success"), _claimed=False) for i in range(500)]
            t0 = time.perf_counter()
            store.insert_runs(rows)
            waits.append(time.perf_counter() - t0)
            k += 1
            time.sleep(0.1)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.5)
    t = time.perf_counter()
    deleted = store.prune_runs(p["keep"], 30 * 86400)
    result["prune_s"] = time.perf_counter() - t
    stop.set()
    thread.join(30)
    result.update(deleted=deleted, insert_max_s=max(waits) if waits else None,
                  insert_typical_s=sorted(waits)[len(waits) // 2] if waits else None)
    store.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser, default_dbs="sqlite")
    parser.add_argument("--jobs", type=int, default=None, help="jobs with history (default 1,000; quick 200)")
    parser.add_argument("--runs", type=int, default=1100, help="runs per job (default 1,100)")
    parser.add_argument("--keep", type=int, default=1000, help="history_keep_per_job (default 1,000)")
    args = parser.parse_args()
    jobs = args.jobs or (200 if args.quick else 1000)
    print(header("history retention at scale"))
    print(f"{jobs:,} jobs x {args.runs:,} runs = {jobs * args.runs:,} rows; keep {args.keep:,} per job\n", flush=True)
    rows = []
    with bench_tmp() as tmp:
        for db in parse_list(args.dbs):
            with database(db, tmp, "ret") as url:
                total, fill_s = fill(url, jobs, args.runs)
                print(f"  {db:<10} stored {total:,} runs in {fill_s:.1f} s", flush=True)
                params: dict[str, Any] = dict(url=url, keep=args.keep)
                res = run_child("bench.retention", params, 1800, args.verbose)
                if "error" in res:
                    print(f"  {db:<10} ERROR {res['error']} {res.get('stderr', '')[-800:]}")
                    continue
                print(f"  {db:<10} prune {res['prune_s']:.2f} s ({res['deleted']:,} deleted); a concurrent 500-row "
                      f"history insert waited up to {res['insert_max_s']:.2f} s; last_runs {res['last_runs_s']:.2f} s,"
                      f" last_handled {res['last_handled_s']:.2f} s", flush=True)
                rows.append([db, fmt(total), res["prune_s"], fmt(res["deleted"]), res["insert_max_s"],
                             res["last_runs_s"], res["last_handled_s"]])
    print()
    print(table(["db", "rows", "prune s", "deleted", "insert held up s", "last_runs s", "last_handled s"], rows))
    print("\nn/a : no target; a prune or start-up read of several seconds on the executor is worth knowing.")
    left = leftover_databases()
    if left:
        print(f"WARNING: bench databases left behind: {left}")
    return 0


if __name__ == "__main__":
    if not child_main(child):
        sys.exit(main())
