"""The console under load: 100,000 jobs on SQLite, ~1,000 scheduler events a second. Not a test: prints a table.

    .venv/bin/python bench/tui_bench.py [--jobs 100000] [--events-per-second 1000] [--presses 100] [--profile]

Measured, in one process as `carnation` runs (Engine and Textual app together), at 80x24 through Pilot:
  - engine start: scheduler_core loading every row (context: the console paints before it finishes)
  - first paint: app created -> first frame rendered
  - rows shown: app created -> every job in the table (the facade's first list_jobs, cold, + filter/sort)
  - refresh: one warm periodic refresh (list_jobs + filter/sort in the worker thread)
  - keypress: `down` pressed -> cursor moved and screen updated, while events flood in and refreshes run
  - memory: RSS after imports, after the engine loaded the jobs, after the table shows them
--profile adds cProfile of the UI thread over the key presses (SORT=cumulative ROWS=60 to change the listing)
and splits each latency into key -> handled and handled -> frame.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    bench_tmp,
    carnation_specs,
    insert_carnation_rows,
    isolate_environment,
    machine,
    quiet_logging,
    rss_mb,
    table,
)

TARGET_FIRST_PAINT_S = 1.0
TARGET_KEYPRESS_MS = 50.0
SPLITS: list[tuple[float, float]] = []  # (key -> cursor moved, cursor moved -> frame), for --profile


def fill_database(url: str, count: int) -> float:
    """`count` jobs with a realistic spread of triggers (1,440 daily crons and 60 intervals), none due soon."""
    started = time.perf_counter()
    triggers: list[dict[str, Any]] = [{"type": "cron", "expression": f"{m} {h} * * *"}
                                      for h in range(24) for m in range(60)]
    triggers += [{"type": "interval", "minutes": m} for m in range(1, 61)]
    ids = [f"job{i:06d}" for i in range(count)]
    first_run = time.time() + 7200  # nothing fires while we measure
    rows: list[tuple[str, str, float | None]] = []
    for k, trigger in enumerate(triggers):
        group = ids[k::len(triggers)]
        if group:
            specs = carnation_specs(group, None, trigger, target="bench.jobs:noop")
            rows.extend((job_id, spec, first_run + i) for i, (job_id, spec) in enumerate(zip(group, specs)))
    insert_carnation_rows(url, rows)
    return time.perf_counter() - started


def flood(engine: Any, per_second: int, stop: threading.Event, count: list[int]) -> None:
    """Publish like a busy scheduler: batches every 10 ms from another thread, job events for many ids."""
    from scheduler_core.events import SchedulerEvent

    kinds = ("submitted", "executed", "submitted", "executed", "error", "missed")
    per_tick = max(1, per_second // 100)
    n = 0
    next_tick = time.perf_counter()
    while not stop.is_set():
        for _ in range(per_tick):
            kind = kinds[n % len(kinds)]
            engine.events.publish(SchedulerEvent(kind=kind, job_id=f"job{n % 100000:06d}",
                                                 message="12 ms" if kind == "executed" else ""))
            n += 1
        count[0] = n
        next_tick += 0.01
        time.sleep(max(0.0, next_tick - time.perf_counter()))


def watch_frames(app: Any) -> list[float]:
    """When each frame is finished: Pilot's headless driver writes nothing, so the frame is rendered to the
    bytes a terminal would get (its cost counted) and the moment noted."""
    frames: list[float] = []
    display = app._display

    def timed_display(screen: Any, renderable: Any) -> None:
        display(screen, renderable)
        if renderable is not None:
            renderable.render_segments(app.console)
            frames.append(time.perf_counter())

    app._display = timed_display
    return frames


async def keypress_latency(app: Any, frames: list[float], key: str) -> float:
    """Key event sent as a terminal's would be -> the first frame drawn after the cursor moved. (Pilot.press
    would add its wait for the whole process to go idle, which a busy scheduler never does.)"""
    from textual import events

    before = app.table.cursor
    sent = time.perf_counter()
    app._driver.send_message(events.Key(key, None))
    while app.table.cursor == before:
        await asyncio.sleep(0.0005)
    moved = time.perf_counter()
    while not frames or frames[-1] < moved:
        await asyncio.sleep(0.0005)
    SPLITS.append((moved - sent, next(t for t in frames if t >= moved) - moved))
    return next(t for t in frames if t >= moved) - sent


async def measure(settings: Any, jobs: int, per_second: int, presses: int, profile: bool) -> dict[str, Any]:
    from carnation_tui.app import UI_SWITCH_INTERVAL, make_app
    from scheduler_core.engine import Engine

    result: dict[str, Any] = {"rss_imports": rss_mb()}
    engine = Engine(settings)
    started = time.perf_counter()
    engine.start()
    result["engine_start"] = time.perf_counter() - started
    result["rss_engine"] = rss_mb()

    created = time.perf_counter()
    sys.setswitchinterval(UI_SWITCH_INTERVAL)  # as run_console does
    app = make_app(settings, engine=engine)
    frames = watch_frames(app)
    async with app.run_test(size=(80, 24)) as pilot:
        while not frames:
            await pilot.pause(0.01)
        result["first_paint"] = frames[0] - created
        while len(app.table.rows) < jobs:
            await pilot.pause(0.05)
        await pilot.pause(0)
        result["rows_shown"] = time.perf_counter() - created
        result["rss_tui"] = rss_mb()
        # A few periodic refreshes, warm.
        await pilot.pause(6)
        result["refresh"] = app._refresh_cost

        stop = threading.Event()
        published = [0]
        publisher = threading.Thread(target=flood, args=(engine, per_second, stop, published), daemon=True)
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()  # the UI thread only: where a key press waits
            profiler.enable()
        publisher.start()
        await pilot.pause(1)  # let the flood and the refreshes it triggers get going
        flood_started, published_before = time.perf_counter(), published[0]
        latencies = []
        for i in range(presses):
            latencies.append(await keypress_latency(app, frames, "down" if (i // 20) % 2 == 0 else "up"))
            await asyncio.sleep(0.05)  # a fast typist's pace; refreshes and drains interleave
        rate = (published[0] - published_before) / (time.perf_counter() - flood_started)
        stop.set()
        publisher.join()
        if profiler is not None:
            import io
            import pstats

            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("SORT", "tottime")).print_stats(int(os.environ.get("ROWS", "25")))
            print(out.getvalue())
        result["events_per_second"] = rate
        result["event_log_lines"] = len(app.event_log.lines)
        result["dropped"] = app.subscription.dropped
        latencies.sort()
        result["press_p50"] = statistics.median(latencies) * 1000
        result["press_p95"] = latencies[int(len(latencies) * 0.95) - 1] * 1000
        result["press_max"] = latencies[-1] * 1000
        if profile:
            handled = sorted(a for a, _ in SPLITS)
            drawn = sorted(b for _, b in SPLITS)
            print(f"key->handled p50 {statistics.median(handled) * 1000:.1f} ms p95 "
                  f"{handled[int(len(handled) * .95) - 1] * 1000:.1f}; handled->frame p50 "
                  f"{statistics.median(drawn) * 1000:.1f} ms p95 {drawn[int(len(drawn) * .95) - 1] * 1000:.1f}")
        await pilot.press("q")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--events-per-second", type=int, default=1000)
    parser.add_argument("--presses", type=int, default=100)
    parser.add_argument("--profile", action="store_true", help="profile the UI thread over the keypress phase")
    args = parser.parse_args()

    with bench_tmp() as tmp:
        isolate_environment(tmp)
        quiet_logging()
        from scheduler_core.config import load_settings

        url = f"sqlite:///{tmp / 'tui.db'}"
        fill = fill_database(url, args.jobs)
        settings = load_settings(None, db_url=url, log_dir=str(tmp / "log"), timezone="UTC")
        r = asyncio.run(measure(settings, args.jobs, args.events_per_second, args.presses, args.profile))

    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    print(f"carnation TUI bench — {args.jobs:,} jobs on SQLite, {machine()}")
    print(f"(database filled in {fill:.1f} s)\n")
    print(table(["measure", "value", "target", ""], [
        ["engine start (scheduler_core, before the app)", f"{r['engine_start']:.2f} s", "", ""],
        ["first paint (app created -> first frame)", f"{r['first_paint'] * 1000:.0f} ms",
         f"< {TARGET_FIRST_PAINT_S * 1000:.0f} ms", ok(r["first_paint"] < TARGET_FIRST_PAINT_S)],
        ["rows shown (first list_jobs, cold)", f"{r['rows_shown']:.2f} s", "", ""],
        ["warm refresh (list_jobs + filter/sort, worker)", f"{r['refresh'] * 1000:.0f} ms", "", ""],
        ["keypress -> screen, p50", f"{r['press_p50']:.1f} ms", f"< {TARGET_KEYPRESS_MS:.0f} ms",
         ok(r["press_p50"] < TARGET_KEYPRESS_MS)],
        ["keypress -> screen, p95", f"{r['press_p95']:.1f} ms", f"< {TARGET_KEYPRESS_MS:.0f} ms",
         ok(r["press_p95"] < TARGET_KEYPRESS_MS)],
        ["keypress -> screen, max", f"{r['press_max']:.1f} ms", "", ""],
        ["events published meanwhile", f"{r['events_per_second']:,.0f} /s", "~1,000 /s", ""],
        ["event log lines kept / dropped", f"{r['event_log_lines']:,} / {r['dropped']:,}", "<= 5,000", ""],
        ["RSS after imports", f"{r['rss_imports']:.0f} MB", "", ""],
        ["RSS with the engine's 100k jobs", f"{r['rss_engine']:.0f} MB", "", ""],
        ["RSS with the table showing them", f"{r['rss_tui']:.0f} MB",
         f"TUI +{r['rss_tui'] - r['rss_engine']:.0f} MB", ""],
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
