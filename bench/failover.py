"""Many processes, one database: failover time after kill -9, edit-to-effect latency, duplicates and lost runs.

Two `carnation --headless` processes share each database. Five shell jobs fire every second and append
"job-id scheduled-time" to a witness file per execution (carnation tells shell jobs which run they are). The executor is killed with SIGKILL `--kills` times (a fresh process replaces it each time);
failover time is from the kill to the new executor's first claimed run. Edit-to-effect: a console process adds a
one-off job due now; latency is from the add's commit to the executor's claim of its run. Afterwards every execution
(witness line) is matched against the history: a duplicate is an execution beyond the recorded ones, a lost run is
an execution of a (job, scheduled time) that has no row.

    python bench/failover.py --dbs sqlite,mariadb,postgresql --kills 20
    python bench/failover.py --quick            # 3 kills on SQLite, a short lease

Targets: failover under 10 s with the default lease, edit-to-effect p99 under 1 s, 0 duplicates, 0 lost.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO,
    bench_tmp,
    common_args,
    database,
    header,
    parse_list,
    summary_ms,
    table,
    verdict,
)

JOBS = 5


def witness_command(path: Path) -> str:
    return f'echo "$CARNATION_JOB_ID $CARNATION_SCHEDULED_AT" >> {path}'


def witnessed_runs(path: Path) -> Counter:
    """Executions per (job id, scheduled epoch rounded to ms), from the witness file."""
    counts: Counter = Counter()
    for line in path.read_text().splitlines():
        job_id, _, at = line.partition(" ")
        counts[(job_id, round(datetime.fromisoformat(at).timestamp(), 3))] += 1
    return counts


def headless(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scheduler_core", "--headless"], env=env, cwd=REPO,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def wait(condition, timeout: float, interval: float = 0.01):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def measure(kind: str, tmp: Path, kills: int, lease: float, edits: int) -> dict:
    from scheduler_core.config import load_settings
    from scheduler_core.console import Console
    from scheduler_core.engine import Engine
    from scheduler_core.store import Store

    with database(kind, tmp, "failover") as url:
        store = Store(url)
        store.migrate()
        env = {**os.environ, "CARNATION_DB_URL": url, "CARNATION_LOG_DIR": str(tmp / "log"),
               "CARNATION_LEASE_SECONDS": str(lease), "CARNATION_TIMEZONE": "UTC", "PYTHONPATH": str(REPO)}
        witness = tmp / f"witness-{kind}.txt"
        procs = [headless(env, tmp / f"{kind}.log") for _ in range(2)]
        console_engine = Engine(load_settings(None, db_url=url, log_dir=str(tmp / "log"), timezone="UTC",
                                              poll_interval=0.2))
        console_engine.start(execute=False)
        console = Console(console_engine)
        failovers, edit_latencies = [], []

        def leader() -> int | None:
            holder = store.lease_holder()
            live = {p.pid for p in procs if p.poll() is None}
            return holder["pid"] if holder and holder["pid"] in live else None

        def first_claim_by(pid: int, after: float) -> bool:
            rows, _ = store.runs_page(per_page=50)
            return any(r["pid"] == pid and r["started_at"] and r["started_at"] >= after for r in rows)

        try:
            wait(leader, 30)
            for n in range(JOBS):
                console.add_job({"id": f"tick{n}", "kind": "shell", "target": witness_command(witness),
                                 "trigger": {"type": "interval", "seconds": 1}, "coalesce": False,
                                 "misfire_grace_time": 120})
            for _ in range(edits):
                job_id = f"edit{len(edit_latencies)}"
                time.sleep(random.uniform(0, 0.3))  # edits arrive at random moments, not in step with the poll
                console.add_job({"id": job_id, "func": "tests.sample_jobs:add", "args": [1, 2]})
                added = time.time()
                wait(lambda: any(r["outcome"] in ("running", "success")
                                 for r in store.runs_page(job_id, per_page=5)[0]), 10)
                claim = store.runs_page(job_id, per_page=5)[0][-1]
                edit_latencies.append(max(0.0, claim["started_at"] - added))
            for _ in range(kills):
                victim = wait(leader, 30)
                os.kill(victim, signal.SIGKILL)
                killed = time.time()
                new = wait(lambda: (pid := leader()) not in (None, victim) and pid, lease * 4)
                wait(lambda: first_claim_by(new, killed), 10)
                rows, _ = store.runs_page(per_page=50)
                # (rows the new executor wrote for runs it did not start, "abandoned", have no started_at)
                first = min(r["started_at"] for r in rows
                            if r["pid"] == new and r["started_at"] is not None and r["started_at"] >= killed)
                failovers.append(first - killed)
                procs.append(headless(env, tmp / f"{kind}.log"))
                time.sleep(1.5)  # let the new executor fire a few rounds before the next kill
        finally:
            console_engine.stop(timeout=1)
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        runs = []
        for n in range(JOBS):
            runs += store.runs_page(f"tick{n}", per_page=1_000_000)[0]
        store.close()
        executions = witnessed_runs(witness)
        recorded = {(r["job_id"], round(r["scheduled_at"], 3)) for r in runs
                    if r["outcome"] in ("success", "error", "abandoned", "running")}
        success = sum(r["outcome"] == "success" for r in runs)
        abandoned = sum(r["outcome"] == "abandoned" for r in runs)
        return {
            "db": kind,
            "failover": summary_ms(failovers),
            "edit": summary_ms(edit_latencies),
            "executions": sum(executions.values()),
            "recorded": success,
            "abandoned": abandoned,
            "missed": sum(r["outcome"] == "missed" for r in runs),
            "duplicates": sum(count - 1 for count in executions.values()),
            "lost": sum(1 for key in executions if key not in recorded),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--lease", type=float, default=8.0, help="lease_seconds (carnation's default is 8)")
    parser.add_argument("--edits", type=int, default=50)
    args = parser.parse_args()
    dbs = parse_list(args.dbs)
    if args.quick:
        dbs, args.kills, args.lease, args.edits = ["sqlite"], 3, 2.0, 10
    print(header(f"failover: {args.kills} kills, lease {args.lease:g} s, {JOBS} jobs every second"))
    results = []
    with bench_tmp() as tmp:
        for kind in dbs:
            results.append(measure(kind, tmp, args.kills, args.lease, args.edits))
    print(table(
        ["db", "failover p50 s", "p99 s", "max s", "edit p50 ms", "p99 ms", "executions", "recorded", "abandoned",
         "missed", "duplicates", "lost"],
        [[r["db"], r["failover"]["p50"] / 1000, r["failover"]["p99"] / 1000, r["failover"]["max"] / 1000,
          r["edit"]["p50"], r["edit"]["p99"], r["executions"], r["recorded"], r["abandoned"], r["missed"],
          r["duplicates"], r["lost"]] for r in results]))
    ok = all(r["failover"]["max"] / 1000 < 10 and r["edit"]["p99"] < 1000 and r["duplicates"] == 0
             and r["lost"] == 0 for r in results)
    print(verdict(ok, "failover < 10 s, edit-to-effect p99 < 1 s, 0 duplicates, 0 lost"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
