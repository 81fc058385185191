"""Shared pieces of the benchmarks: throwaway databases, child processes, bulk loading, statistics, tables.

Every contender (carnation, bare APScheduler with MemoryJobStore, bare APScheduler with SQLAlchemyJobStore) runs in a
fresh child process, one after the other, so heaps, garbage-collector generations, threads and CPU accounting never
leak from one into the next. The parent creates and drops the databases; a child only connects.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/x.py` as well as `python -m bench.x`
    sys.path.insert(0, str(REPO))

MARIADB_ADMIN = dict(host="127.0.0.1", port=3306, user="root", password="")
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
ALL_DBS = ("sqlite", "mariadb", "postgresql")
UTC = timezone.utc
JOB_REF = "bench.jobs:stamp"
RESULT_PREFIX = "BENCH-RESULT "


# --- environment -------------------------------------------------------------------------------------------------
def isolate_environment(tmp: Path) -> None:
    """Never read the developer's carnation config or write into their data dirs (as tests/conftest.py does)."""
    for key in list(os.environ):
        if key.startswith("CARNATION_"):
            del os.environ[key]
    os.environ["CARNATION_CONFIG"] = str(tmp / "no-config.toml")
    for var in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        os.environ[var] = str(tmp / var.lower())


def quiet_logging() -> None:
    """The same logging on both sides: APScheduler's per-run INFO and misfire WARNING lines are not printed (there
    may be tens of thousands; printing them would measure the terminal). Carnation's own warnings still show."""
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


# --- databases ---------------------------------------------------------------------------------------------------
@contextmanager
def database(kind: str, tmp: Path, tag: str = "") -> Iterator[str]:
    """A fresh, empty database of `kind`; dropped (or its file deleted) afterwards, whatever happens."""
    name = f"carnation_bench_{tag + '_' if tag else ''}{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        directory = tmp / name
        directory.mkdir(parents=True)
        try:
            yield f"sqlite:///{directory / 'bench.db'}"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    elif kind == "mariadb":
        import pymysql

        conn = pymysql.connect(**MARIADB_ADMIN, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
            yield f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"
        finally:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.close()
    elif kind == "postgresql":
        import psycopg

        conn = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
        try:
            conn.execute(f"CREATE DATABASE {name}")
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.close()
    else:
        raise ValueError(f"unknown database {kind!r}; use {', '.join(ALL_DBS)}")


def leftover_databases() -> list[str]:
    """Bench databases still present on the servers (there should be none after a run)."""
    found: list[str] = []
    try:
        import pymysql

        conn = pymysql.connect(**MARIADB_ADMIN)
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE 'carnation_bench_%'")
            found += [r[0] for r in cur.fetchall()]
        conn.close()
    except Exception:
        pass
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN) as conn:
            found += [r[0] for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'carnation_bench_%'").fetchall()]
    except Exception:
        pass
    return found


def sqlite_engine(url: str):  # type: ignore[no-untyped-def]
    """An SQLAlchemy engine with carnation's SQLite settings (WAL, synchronous=NORMAL, busy_timeout): the bare
    SQLAlchemyJobStore gets the same, so the comparison is about the scheduler, not about fsync settings.
    BENCH_BARE_SQLITE_DEFAULTS=1 (lateness.py --bare-sqlite-defaults) gives it APScheduler's plain
    SQLAlchemyJobStore(url=...) instead: rollback journal, synchronous=FULL."""
    from scheduler_core.store import create_db_engine

    return create_db_engine(url)


def bare_sqlalchemy_jobstore(url: str):  # type: ignore[no-untyped-def]
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    if url.startswith("sqlite") and not os.environ.get("BENCH_BARE_SQLITE_DEFAULTS"):
        return SQLAlchemyJobStore(engine=sqlite_engine(url))
    return SQLAlchemyJobStore(url=url)  # APScheduler's own defaults, as a user would have them


# --- child processes ---------------------------------------------------------------------------------------------
def run_child(module: str, params: dict[str, Any], timeout: float, verbose: bool = False) -> dict[str, Any]:
    """Run `python -m module --child JSON` and return the dict it reports. The child is killed on timeout."""
    cmd = [sys.executable, "-m", module, "--child", json.dumps(params)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout:.0f} s", "stderr": (exc.stderr or "")[-2000:] if isinstance(exc.stderr, str) else ""}
    result: dict[str, Any] | None = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    if verbose and proc.stderr.strip():
        sys.stderr.write(proc.stderr)
    if result is None:
        return {"error": f"child exited {proc.returncode} without a result", "stderr": proc.stderr[-3000:]}
    if proc.stderr.strip():
        result.setdefault("stderr", proc.stderr[-1500:])
    return result


def report(result: dict[str, Any]) -> None:
    """A child's last word: its result on stdout, flushed before any (possibly slow) shutdown."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def hard_exit_after(seconds: float, code: int = 0) -> None:
    """Make sure a child ends even if a scheduler's shutdown blocks (a lagging loop thread is joined on shutdown)."""
    import threading

    def bail() -> None:
        if _CHILD_TMP is not None:
            shutil.rmtree(_CHILD_TMP, ignore_errors=True)
        os._exit(code)

    timer = threading.Timer(seconds, bail)
    timer.daemon = True
    timer.start()


_CHILD_TMP: Path | None = None


def child_main(run: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """If this process was started as a child, run it and return True."""
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        params = json.loads(sys.argv[2])
        global _CHILD_TMP
        tmp = _CHILD_TMP = Path(tempfile.mkdtemp(prefix="carnation-bench-child-"))
        try:
            isolate_environment(tmp)
            quiet_logging()
            params.setdefault("tmp", str(tmp))
            report(run(params))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # daemon threads of a lagging scheduler must not hold the exit
    return False


# --- profiling ---------------------------------------------------------------------------------------------------
@contextmanager
def maybe_profile(path: str | None, interval: float = 0.001) -> Iterator[None]:
    """pyinstrument over the block. It samples the calling thread only (right for Engine.start(), which runs on the
    caller); for the scheduler's and writers' threads use ThreadSampler. Writes a text report to `path`."""
    if not path:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=interval)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        Path(path).write_text(profiler.output_text(unicode=True, color=False, show_all=False))


class ThreadSampler:
    """A tiny all-threads sampling profiler (sys._current_frames), for where pyinstrument (one thread) cannot see:
    which thread burns time, and in which functions. Prints the hottest stacks per thread."""

    def __init__(self, interval: float = 0.002) -> None:
        import threading

        self.interval = interval
        self.samples: dict[str, dict[tuple[str, ...], int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import threading

        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                stack: list[str] = []
                f = frame
                while f is not None and len(stack) < 40:
                    code = f.f_code
                    stack.append(f"{Path(code.co_filename).name}:{code.co_name}:{f.f_lineno}")
                    f = f.f_back
                name = names.get(ident, str(ident))
                name = name.split("_")[0] if name.startswith("ThreadPoolExecutor") else name
                per = self.samples.setdefault(name, {})
                key = tuple(stack[:12])
                per[key] = per.get(key, 0) + 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def text(self, top: int = 6) -> str:
        lines = []
        for name, stacks in sorted(self.samples.items(), key=lambda kv: -sum(kv[1].values())):
            total = sum(stacks.values())
            lines.append(f"== thread {name}: {total} samples")
            for stack, count in sorted(stacks.items(), key=lambda kv: -kv[1])[:top]:
                lines.append(f"  {count:6d}  " + " <- ".join(stack[:8]))
        return "\n".join(lines)


# --- bulk loading ------------------------------------------------------------------------------------------------
def staggered_starts(n: int, first: float, interval: float) -> list[datetime]:
    """n start dates spread evenly over one interval from `first` (epoch), to the microsecond."""
    base = datetime.fromtimestamp(first, UTC).replace(microsecond=0) + timedelta(
        microseconds=round((first % 1) * 1e6))
    step = interval / n
    return [base + timedelta(microseconds=round(i * step * 1e6)) for i in range(n)]


def carnation_specs(ids: Sequence[str], starts: Sequence[datetime] | None, trigger: dict[str, Any],
                    target: str = JOB_REF) -> list[str]:
    """Valid JobSpec JSON, one per id (validated once through JobSpec, then copied field by field)."""
    from scheduler_core.spec import JobSpec

    template = JobSpec.model_validate({"id": "template", "target": target, "trigger": trigger,
                                       "start_date": starts[0] if starts else None})
    out = []
    for i, job_id in enumerate(ids):
        update: dict[str, Any] = {"id": job_id}
        if starts is not None:
            update["start_date"] = starts[i]
        out.append(template.model_copy(update=update).to_json())
    # One round trip through validation proves the copies are what JobSpec itself would store.
    JobSpec.from_json(out[-1])
    return out


def insert_carnation_rows(url: str, rows: Iterable[tuple[str, str, float | None]], chunk: int = 5000) -> int:
    """Migrate, then bulk-insert (id, spec JSON, next run epoch) rows into carnation_jobs. Returns the count."""
    from scheduler_core.store import Store, jobs_table, meta_table

    store = Store(url)
    try:
        store.migrate()
        now = time.time()
        batch: list[dict[str, Any]] = []
        count = 0
        with store.engine.begin() as conn:
            for job_id, spec, nrt in rows:
                batch.append(dict(id=job_id, spec=spec, next_run_time=nrt, paused=False, broken=None,
                                  source="user", seq=1, created_at=now, updated_at=now))
                if len(batch) >= chunk:
                    conn.execute(jobs_table.insert(), batch)
                    count += len(batch)
                    batch = []
            if batch:
                conn.execute(jobs_table.insert(), batch)
                count += len(batch)
            conn.execute(meta_table.update().where(meta_table.c.key == "jobs_seq").values(value=1))
        return count
    finally:
        store.close()


def bare_job_states(ids: Sequence[str], triggers: Sequence[Any], next_runs: Sequence[datetime | None],
                    func: Any, misfire_grace_time: int = 1) -> Iterator[tuple[str, float | None, bytes]]:
    """(id, next run epoch, pickled state) exactly as APScheduler's SQLAlchemyJobStore.add_job writes them."""
    from apscheduler.job import Job
    from apscheduler.schedulers.background import BackgroundScheduler

    sched = BackgroundScheduler(timezone=UTC)
    base = Job(sched, id="template", func=func, trigger=triggers[0], executor="default", args=(), kwargs={},
               name=func.__name__, misfire_grace_time=misfire_grace_time, coalesce=True, max_instances=1,
               next_run_time=next_runs[0])
    state = base.__getstate__()
    for job_id, trigger, nrt in zip(ids, triggers, next_runs):
        st = dict(state, id=job_id, trigger=trigger, next_run_time=nrt)
        yield job_id, (nrt.timestamp() if nrt else None), pickle.dumps(st, pickle.HIGHEST_PROTOCOL)


def insert_bare_rows(url: str, rows: Iterable[tuple[str, float | None, bytes]], chunk: int = 5000) -> int:
    """Create APScheduler's apscheduler_jobs table and bulk-insert pickled job rows."""
    store = bare_sqlalchemy_jobstore(url)
    try:
        store.jobs_t.create(store.engine, checkfirst=True)
        count = 0
        batch: list[dict[str, Any]] = []
        with store.engine.begin() as conn:
            for job_id, nrt, state in rows:
                batch.append({"id": job_id, "next_run_time": nrt, "job_state": state})
                if len(batch) >= chunk:
                    conn.execute(store.jobs_t.insert(), batch)
                    count += len(batch)
                    batch = []
            if batch:
                conn.execute(store.jobs_t.insert(), batch)
                count += len(batch)
        return count
    finally:
        store.engine.dispose()


# --- measuring ---------------------------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_ms(values_s: Iterable[float]) -> dict[str, float | None]:
    values = sorted(v * 1000 for v in values_s)
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": values[-1] if values else None,
            "n": len(values)}


def child_pids() -> list[int]:
    """This process's live children (carnation's database writer processes), from /proc."""
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def _proc_cpu(pid: int | str) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb() -> float:
    """Resident memory of this process and its children (carnation's writer processes count against it)."""
    total = 0
    for pid in ["self", *child_pids()]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def cpu_steal() -> tuple[int, int]:
    """(ticks stolen from this VM by its host, all ticks) so far, over every CPU, from /proc/stat; (0, 0) where
    the kernel does not say. A window in which the host took a few per cent of the CPUs has a lateness tail made
    by the host, on either contender: the per cent says how far to trust that window's ratio."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks[:8])


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return 100 * (after[0] - before[0]) / total if total > 0 else None


def cpu_seconds() -> float:
    """User + system CPU time of this whole process (all threads) and of its children, live or ended."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for pid in child_pids():
        try:
            live += _proc_cpu(pid)
        except OSError:
            continue
    return usage.ru_utime + usage.ru_stime + ended.ru_utime + ended.ru_stime + live


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user+system) used so far by each live thread of this process, by thread name (pool threads
    summed under one name), from /proc/self/task/*/stat; live child processes summed as "writer processes"."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), f"tid{task.name}")
        if name.startswith(("ThreadPoolExecutor", "carnation-worker-")):
            name = "workers"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    for pid in child_pids():
        try:
            out["writer processes"] = out.get("writer processes", 0.0) + _proc_cpu(pid)
        except OSError:
            continue
    out["database server"] = server_cpu_seconds()
    return out


def writers_ready(engine: Any, timeout: float = 30.0) -> None:
    """Start the engine's writer processes if they are not yet (the history one starts on its first batch) and wait
    until they answer: each spends its first ~0.7 s of CPU importing, which must not fall inside a measured window
    (a long-running process pays it once)."""
    deadline = time.monotonic() + timeout
    for owner in (engine.history, engine.jobstore):
        while owner._store_writer is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if owner._store_writer is not None:
            owner._store_writer.write_next_run_times([], [], [])  # a round trip that writes nothing


SERVER_COMMANDS = ("mariadbd", "mysqld", "postgres")


def server_cpu_seconds() -> float:
    """CPU time of the local MariaDB and PostgreSQL servers (every backend): on this machine they share the cores
    with the scheduler, so their cost for a contender's writes is part of what that contender costs."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() in SERVER_COMMANDS:
                total += _proc_cpu(proc.name)
        except OSError:
            continue
    return total


def cpu_by_thread(before: dict[str, float], after: dict[str, float], seconds: float,
                  min_pct: float = 0.5, digits: int = 1) -> dict[str, float]:
    """Percent of one core per thread name over an interval, largest first."""
    pct = {name: 100 * (after[name] - before.get(name, 0.0)) / seconds for name in after}
    return dict(sorted(((k, round(v, digits)) for k, v in pct.items() if v >= min_pct and v > 0),
                       key=lambda kv: -kv[1]))


def sleep_until(epoch: float) -> None:
    while True:
        left = epoch - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


# --- output ------------------------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, row in enumerate(cells):
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _made_dir(text: str) -> str:
    Path(text).mkdir(parents=True, exist_ok=True)
    return text


def common_args(parser: argparse.ArgumentParser, default_dbs: str = "sqlite,mariadb,postgresql") -> None:
    parser.add_argument("--dbs", default=default_dbs, help=f"comma-separated, of {','.join(ALL_DBS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs: a smoke test in a minute or two")
    parser.add_argument("--profile-dir", default=None, type=_made_dir,
                        help="write a per-thread sampling profile of each carnation child here")
    parser.add_argument("--verbose", action="store_true", help="show the children's stderr")


def parse_list(text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


def verdict(ok: bool | None, text: str) -> str:
    word = "PASS" if ok else ("n/a " if ok is None else "FAIL")
    return f"{word}: {text}"


@contextmanager
def bench_tmp() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="carnation-bench-"))
    try:
        isolate_environment(tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def engine_revision() -> str:
    """The commit the engine was measured at, and whether scheduler_core had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "scheduler_core"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"carnation {head}{' + uncommitted scheduler_core changes' if dirty else ''}"
    except Exception:
        return "carnation (revision unknown)"


def header(title: str) -> str:
    return (f"# {title} — {datetime.now().strftime('%Y-%m-%d %H:%M')} — {machine()}\n"
            f"# {engine_revision()}, APScheduler {_version('apscheduler')}, SQLAlchemy {_version('sqlalchemy')}")


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return "?"
