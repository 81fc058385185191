"""Claims written ahead with the next run time (no commit on a run's start path), and what a process taking over
makes of them: on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import math
import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from apscheduler.triggers.interval import IntervalTrigger

import scheduler_core.console as console_module
from scheduler_core.console import Console
from scheduler_core.engine import Engine
from scheduler_core.history import run_row
from scheduler_core.jobstore import SpecJobStore
from scheduler_core.store import LEASE_NAME, Store, from_epoch, jobs_table, leader_table, runs_table
from scheduler_core.writer import LocalWriter, ProcessWriter
from tests.conftest import wait_for

pytestmark = pytest.mark.db


def job_row(engine: Engine, job_id: str) -> sa.Row:
    with engine.store.engine.connect() as conn:
        return conn.execute(sa.select(jobs_table).where(jobs_table.c.id == job_id)).one()


def job_rows(engine: Engine) -> list[sa.Row]:
    with engine.store.engine.connect() as conn:
        return conn.execute(sa.select(jobs_table)).all()


def runs(engine: Engine, job_id: str) -> dict[float, str]:
    engine.flush()
    with engine.store.engine.connect() as conn:
        rows = conn.execute(sa.select(runs_table.c.scheduled_at, runs_table.c.outcome)
                            .where(runs_table.c.job_id == job_id)).all()
    return {round(at, 3): outcome for at, outcome in rows}


@pytest.mark.parametrize("trigger", [{"seconds": 1, "jitter": 1}, {"seconds": 45}],
                         ids=["jitter", "interval-beyond-half-the-horizon"])
def test_next_run_time_is_claimed_when_written(console: Console, engine: Engine, trigger: dict) -> None:
    """Fire times that cannot be known ahead (jitter), or a job firing at most twice within the horizon: the claim
    is exactly the next run."""
    start = datetime.now(timezone.utc) + timedelta(seconds=0.2)
    console.add_job({"id": "t", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval",
                     "start_date": start.isoformat(), **trigger})
    wait_for(lambda: "success" in runs(engine, "t").values(), message="a run")
    engine.flush()
    row = job_row(engine, "t")
    assert row.claimed_until == row.next_run_time
    assert row.claimed_until > max(runs(engine, "t"))


def test_claim_ahead_seconds_0_claims_every_fire_on_its_own(make_settings, db_url: str) -> None:
    engine = Engine(make_settings(db_url, claim_ahead_seconds=0))
    engine.start()
    try:
        Console(engine).add_job({"id": "each", "func": "tests.sample_jobs:add", "args": [1, 2],
                                 "trigger": "interval", "seconds": 1})
        wait_for(lambda: len(runs(engine, "each")) >= 2, message="two runs")
        engine.flush()
        row = job_row(engine, "each")
        assert row.claimed_until == row.next_run_time > max(runs(engine, "each"))
    finally:
        engine.stop()


def test_a_frequent_job_is_claimed_ahead_and_its_fires_write_nothing_while_the_claim_covers_them(
        console: Console, engine: Engine) -> None:
    console.add_job({"id": "f", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval",
                     "seconds": 1})
    wait_for(lambda: "success" in runs(engine, "f").values(), message="a run")
    engine.flush()
    first = job_row(engine, "f")
    horizon = engine.jobstore.claim_ahead_seconds
    # Claimed ahead (a first claim: half to one and a half horizons, by the job's id, jobstore.py), to one of its
    # own fire times (a takeover records it exactly).
    ahead = first.claimed_until - first.next_run_time
    assert horizon / 2 - 1 < ahead <= 1.5 * horizon and ahead == pytest.approx(round(ahead), abs=1e-3)
    wait_for(lambda: len(runs(engine, "f")) >= 3, message="more runs")
    engine.flush()
    later = job_row(engine, "f")
    assert later.next_run_time == first.next_run_time  # the fires since wrote nothing
    assert later.claimed_until == first.claimed_until
    assert max(runs(engine, "f")) <= later.claimed_until
    # A console in another process shows when it really fires next, not the stored time that has passed...
    standby = Engine(engine.settings)
    standby.start(execute=False)
    try:
        shown = Console(standby).get_job("f").next_run_time
        assert shown is not None and time.time() < shown.timestamp() <= time.time() + 1.001
        engine.stop()
        # ...and, once nothing executes, the passed stored time: the claim no longer means it fires.
        assert Console(standby).get_job("f").next_run_time.timestamp() == later.next_run_time
        assert [v.next_run_time for v in Console(standby).list_jobs()] == [from_epoch(later.next_run_time)]
    finally:
        standby.stop()


def test_a_standby_console_builds_a_claimed_ahead_jobs_trigger_once_per_version_of_the_job(
        console: Console, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """It finds such a job's next fire from its trigger on every refresh (the stored time has passed): building the
    trigger each time was 8 µs a job, 80 ms a refresh at 10,000 such jobs."""
    console.add_job({"id": "f", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval", "seconds": 1})
    wait_for(lambda: len(runs(engine, "f")) >= 2, message="runs past the stored next run time")
    engine.flush()
    built: list[int] = []
    build_trigger = console_module.build_trigger
    monkeypatch.setattr(console_module, "build_trigger",
                        lambda spec, tz: built.append(spec.trigger.seconds) or build_trigger(spec, tz))
    standby = Engine(engine.settings)
    standby.start(execute=False)
    watcher = Console(standby)

    def shown_within(seconds: float) -> bool:
        shown = watcher.list_jobs()[0].next_run_time
        return shown is not None and time.time() < shown.timestamp() <= time.time() + seconds + 0.001

    try:
        assert all(shown_within(1) for _ in range(3))
        assert built == [1]
        console.update_job("f", {"seconds": 2})
        # Rebuilt for the new version once its first stored next run time has passed, and shown by it.
        wait_for(lambda: shown_within(2) and built == [1, 2], message="the edited schedule shown")
        console.remove_job("f")
        assert watcher.list_jobs() == []
        assert not (watcher._specs or watcher._triggers or watcher._views)  # nothing kept for a job that is gone
    finally:
        standby.stop()


def test_a_claim_ahead_is_exactly_a_fire_time_the_scheduler_loop_reaches() -> None:
    """The claim is computed, not walked: it must be the very float the loop's own chain of fires gives (a
    takeover records it as a run), in every timezone, across DST, for intervals down to the microsecond, over half
    the horizon ahead, and it stops at the trigger's end date. Where a claim is renewed, at the first fire past it,
    the new claim reaches the horizon but one or two intervals (or the trigger's last fire, or the cap on
    fires)."""
    rng = random.Random(7)
    zones = [timezone.utc, ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe")]
    jobstore = SpecJobStore(store=None)  # type: ignore[arg-type]  # claim_ahead reads only its jobs in memory
    horizon = jobstore.claim_ahead_seconds
    for case in range(400):
        interval = rng.choice([timedelta(seconds=rng.randint(1, 30)), timedelta(milliseconds=rng.randint(1, 30_000)),
                               timedelta(microseconds=rng.randint(1, 30_000_000))])
        zone = rng.choice(zones)
        start = datetime(2026, rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59),
                         rng.randint(0, 59), rng.randint(0, 999_999), tzinfo=zone)
        end = start + timedelta(seconds=rng.uniform(1, 120)) if case % 4 == 0 else None
        trigger = IntervalTrigger(seconds=interval.total_seconds(), start_date=start, end_date=end, timezone=zone)
        job_id = f"job-{case}"
        jobstore._jobs_index[job_id] = (SimpleNamespace(trigger=trigger), 0.0)  # type: ignore[assignment]
        fire = trigger.get_next_fire_time(None, start)
        walked, last = [fire.timestamp()], fire
        for _ in range(jobstore.CLAIM_AHEAD_RUNS):
            last = trigger.get_next_fire_time(last, last)
            if last is None or last.timestamp() > walked[0] + 1.5 * horizon:
                break
            walked.append(last.timestamp())
        claim = jobstore.claim_ahead(job_id, walked[0])
        context = (interval, zone, start, end)
        if interval.total_seconds() * 2 > horizon:
            assert claim == walked[0], context
            continue
        assert claim in walked, context
        assert (claim + interval.total_seconds() > walked[0] + horizon / 2 or claim == walked[-1]
                or claim - walked[0] >= jobstore.CLAIM_AHEAD_RUNS * interval.total_seconds() - 1e-6), context
        renewal = walked.index(claim) + 1
        if renewal < len(walked):
            renewed = jobstore.claim_ahead(job_id, walked[renewal])
            assert walked[renewal] <= renewed <= walked[renewal] + horizon, context
            if renewed > walked[-1]:  # the fires walked end within the first horizon: walk the second's
                last = datetime.fromtimestamp(walked[-1], zone)
                while (last := trigger.get_next_fire_time(last, last)) is not None and last.timestamp() < renewed:
                    pass
                assert last is not None and last.timestamp() == renewed, context
            renewed_reach = renewed - walked[renewal]
            assert (renewed_reach > horizon - 2 * interval.total_seconds()
                    or (end is not None and renewed + interval.total_seconds() > end.timestamp())
                    or renewed_reach >= jobstore.CLAIM_AHEAD_RUNS * interval.total_seconds() - 1e-6), context
    jitter = IntervalTrigger(seconds=1, jitter=1, timezone=timezone.utc)
    jobstore._jobs_index["j"] = (SimpleNamespace(trigger=jitter), 0.0)  # type: ignore[assignment]
    assert jobstore.claim_ahead("j", 1000.0) == 1000.0  # its coming fire times are not known


def test_jobs_sharing_a_start_renew_their_claims_spread_over_the_minute_not_together() -> None:
    """10,000 jobs every 10 s started together renewed their claims within the same 10 s once a minute (1,000
    writes a second, and the late runs of that window): each job now renews at points of its own. Simulates
    ten minutes of claims, a write at each first fire past the claim, for 1,000 such jobs."""
    jobstore = SpecJobStore(store=None)  # type: ignore[arg-type]
    horizon, interval, jobs = jobstore.claim_ahead_seconds, 10.0, 1000
    start = datetime(2026, 12, 5, tzinfo=timezone.utc)
    writes = []
    for n in range(jobs):
        trigger = IntervalTrigger(seconds=interval, start_date=start + timedelta(seconds=n * interval / jobs),
                                  timezone=timezone.utc)
        at = first = trigger.start_date.timestamp()
        while at < start.timestamp() + 600:
            writes.append(at)
            claim = jobstore.claim_horizon(f"job-{n}", trigger, at)
            if at == first:
                assert at + horizon / 2 - interval < claim <= at + 1.5 * horizon
            else:  # a renewal reaches the horizon, but for one or two intervals
                assert at + horizon - 2 * interval < claim <= at + horizon
            at = claim + interval
    # Past the first minute (the start claims everything at once), per 10 s slice:
    per_slice = [0] * 54
    for at in writes:
        if at >= start.timestamp() + 60:
            per_slice[int((at - start.timestamp() - 60) // 10)] += 1
    mean = sum(per_slice) / len(per_slice)
    assert mean <= jobs * interval / horizon * 1.05  # no more writes than a claim per job per horizon
    assert max(per_slice) < 1.5 * mean, per_slice  # together: 1,000 in one slice of each minute, 0 in the others


# (previous holder's heartbeat, seconds ago or None for a clean release) -> was the claimed run possibly started?
@pytest.mark.parametrize(("heartbeat_ago", "maybe_started"), [(10, True), (30, False), (None, False)],
                         ids=["crashed-after-the-run-was-due", "crashed-before-it-was-due", "released"])
def test_takeover_never_reruns_a_claimed_run_the_dead_executor_may_have_started(
        make_settings, db_url: str, heartbeat_ago: float | None, maybe_started: bool) -> None:
    settings = make_settings(db_url, lease_seconds=8)
    first = Engine(settings)
    first.start()
    Console(first).add_job({"id": "j", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval",
                            "seconds": 60})
    first.stop()
    now = time.time()
    due = now - 5  # claimed by the previous executor, due 5 s ago, no outcome recorded
    with first.store.engine.begin() as conn:
        conn.execute(jobs_table.update().values(next_run_time=due, claimed_until=due))
        conn.execute(runs_table.insert().values(run_row("j", due - 60, "success")))
        if heartbeat_ago is not None:
            # Lease 8 s: it stopped starting runs 6 s after this heartbeat.
            conn.execute(leader_table.insert().values(name=LEASE_NAME, holder="dead", host="elsewhere", pid=1,
                                                      acquired_at=now - 100, heartbeat_at=now - heartbeat_ago))
    first.store.close()
    second = Engine(settings)
    second.start()
    try:
        assert second.executing
        if maybe_started:
            assert runs(second, "j")[round(due, 3)] == "abandoned"
            nrt = job_row(second, "j").next_run_time
            assert nrt == pytest.approx(due + 60, abs=0.01)  # continues after it, never reruns it
        else:
            # It cannot have started: it runs now, late but within the 30 s grace.
            wait_for(lambda: runs(second, "j").get(round(due, 3)) == "success", message="the claimed run")
    finally:
        second.stop()


def test_a_job_added_again_under_the_same_id_waits_for_its_own_claim(console: Console, engine: Engine) -> None:
    spec = {"id": "again", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval", "seconds": 1}
    console.add_job(spec)
    wait_for(lambda: "success" in runs(engine, "again").values(), message="a run")
    engine.flush()
    assert engine.jobstore.claimed["again"] > time.time() + 20  # claimed ahead (half a minute at least)
    console.remove_job("again")
    assert "again" not in engine.jobstore.claimed  # the new row's runs are not covered by the old row's claim
    console.add_job({**spec, "seconds": 2})
    wait_for(lambda: len(runs(engine, "again")) >= 2, message="a run of the new job")
    engine.flush()
    assert job_row(engine, "again").claimed_until >= max(runs(engine, "again"))


def test_takeover_after_a_claim_ahead_never_reruns_what_the_dead_executor_may_have_started(
        make_settings, db_url: str) -> None:
    """The dead executor claimed a frequent job a minute ahead and its stored next run time lagged (its fires
    wrote nothing): the successor continues from the history, records every fire the dead one may have started
    (up to when it stopped starting runs) as abandoned, reruns none of them, and runs the fires after."""
    settings = make_settings(db_url, lease_seconds=8)
    grid = float(math.floor(time.time()) - 100)  # fires on whole seconds
    first = Engine(settings)
    first.start()
    Console(first).add_job({"id": "f", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval",
                            "seconds": 1, "start_date": datetime.fromtimestamp(grid, timezone.utc).isoformat()})
    first.stop()
    now = time.time()
    last_run = math.floor(now) - 12.0
    started_by = now - 10 + 0.75 * 8  # its heartbeat 10 s ago, lease 8 s
    with first.store.engine.begin() as conn:
        conn.execute(jobs_table.update().values(next_run_time=last_run - 20, claimed_until=last_run + 60))
        conn.execute(runs_table.insert().values(run_row("f", last_run, "success")))
        conn.execute(leader_table.insert().values(name=LEASE_NAME, holder="dead", host="elsewhere", pid=1,
                                                  acquired_at=now - 100, heartbeat_at=now - 10))
    first.store.close()
    second = Engine(settings)
    second.start()
    try:
        assert second.executing
        maybe_started = {float(at) for at in range(int(last_run) + 1, math.floor(started_by) + 1)}
        wait_for(lambda: any(at > started_by and outcome == "success" for at, outcome in runs(second, "f").items()),
                 message="a run after the dead executor's")
        recorded = runs(second, "f")
        assert {at for at, outcome in recorded.items() if outcome == "abandoned"} == maybe_started
        assert all(at > started_by for at, outcome in recorded.items() if outcome == "success" and at != last_run)
    finally:
        second.stop()


def test_a_long_run_gets_a_running_row_and_a_finished_one_off_row_goes_after_its_outcome(
        console: Console, engine: Engine, tmp_path: Path) -> None:
    release = tmp_path / "release"
    run_date = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    console.add_job({"id": "once", "func": "tests.sample_jobs:block_until", "args": [str(release)],
                     "trigger": "date", "run_date": run_date.isoformat()})

    def running_row() -> bool:
        # The run is claimed only in its job's row: that row stays until the run has a durable row of its own.
        # (Rows first: once the job row is gone, the run's row must already be there.)
        claim_kept = bool(job_rows(engine))
        recorded = runs(engine, "once")
        assert recorded or claim_kept, "the claim went before the run was recorded"
        return "running" in recorded.values()

    wait_for(running_row, message="a running row for the long run")
    release.touch()
    wait_for(lambda: list(runs(engine, "once").values()) == ["success"], message="the running row finished")
    wait_for(lambda: not job_rows(engine), message="the finished one-off job's row to go")


@pytest.mark.parametrize("edit", ["update", "remove"])
def test_an_edit_records_the_jobs_run_going_on_before_it_moves_the_claim(
        console: Console, engine: Engine, tmp_path: Path, edit: str) -> None:
    """A takeover after a crash finds claimed runs by walking the job's stored schedule: once an edit has replaced
    that schedule, a run of the old one is found only by its row, so the edit writes it first (not MARK_AFTER
    from the run's start)."""
    release = tmp_path / "release"
    start = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    started = tmp_path / "started"
    console.add_job({"id": "e", "func": "tests.sample_jobs:block_until", "args": [str(release), 10, str(started)],
                     "trigger": "interval", "seconds": 3600, "start_date": start.isoformat()})
    try:
        wait_for(started.exists, message="the run to start")
        if edit == "update":
            console.update_job("e", {"seconds": 7200})
        else:
            console.remove_job("e")
        assert list(runs(engine, "e").values()) == ["running"]
    finally:
        release.touch()
    wait_for(lambda: list(runs(engine, "e").values()) == ["success"], message="the run's outcome")


def test_an_outcome_arriving_after_a_takeover_replaces_the_abandoned_row(engine: Engine) -> None:
    at = time.time()
    assert engine.store.insert_runs([run_row("x", at, "abandoned")]) == (1, [])
    assert engine.store.insert_runs([run_row("x", at, "success")]) == (1, [])
    assert runs(engine, "x") == {round(at, 3): "success"}
    # a second outcome of the same run is a duplicate, not silently merged
    written, duplicates = engine.store.insert_runs([run_row("x", at, "error")])
    assert written == 0 and len(duplicates) == 1


def test_no_run_starts_while_its_claim_cannot_be_written(console: Console, engine: Engine,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise sa.exc.OperationalError("UPDATE", {}, Exception("database unreachable"))

    for writer in (LocalWriter, ProcessWriter):  # whichever writes the claims
        monkeypatch.setattr(writer, "write_next_run_times", unreachable)
    console.add_job({"id": "now", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval",
                     "seconds": 1})
    refused = wait_for(lambda: [r for r in console.history("now").items if r.outcome == "error"],
                       message="a refused run")
    assert "not run: database unavailable" in refused[0].exception
    assert not [r for r in console.history("now").items if r.outcome == "success"]


def test_jobs_added_while_nobody_executed_are_claimed_at_once_when_an_executor_starts(
        make_settings, db_url: str) -> None:
    settings = make_settings(db_url)
    console_only = Engine(settings)
    console_only.start(execute=False)
    for n in range(3):
        Console(console_only).add_job({"id": f"j{n}", "func": "tests.sample_jobs:add", "args": [1, 2],
                                       "trigger": "interval", "seconds": 600})
    assert all(row.claimed_until is None for row in job_rows(console_only))  # a console claims nothing
    console_only.stop()
    executor = Engine(settings)
    executor.start()
    try:
        # One statement during start, not a write per job behind the loop (which waits 0.2 s to gather a batch).
        rows = job_rows(executor)
        assert [row.claimed_until for row in rows] == [row.next_run_time for row in rows]
        assert executor.jobstore.claimed == {row.id: pytest.approx(row.next_run_time, abs=1e-6) for row in rows}
    finally:
        executor.stop()


def test_frequent_jobs_found_unclaimed_at_start_are_claimed_ahead_there_and_their_first_fires_write_nothing(
        make_settings, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As their first fire would claim them (one write per job, 1,000 a second for 10 s after a start at 10,000 jobs
    every 10 s), but in a few statements during the start."""
    monkeypatch.setattr(Store, "CLAIM_AHEAD_CHUNK", 2)  # several statements
    settings = make_settings(db_url)
    console_only = Engine(settings)
    console_only.start(execute=False)
    start = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    add = Console(console_only).add_job
    for n in range(5):
        add({"id": f"f{n}", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval", "seconds": n + 1,
             "start_date": start})
    add({"id": "rare", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval", "seconds": 600})
    add({"id": "cron", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "cron", "minute": "*"})
    console_only.stop()
    executor = Engine(settings)
    executor.start()
    try:
        horizon = executor.jobstore.claim_ahead_seconds
        at_start = {row.id: row for row in job_rows(executor)}
        for n in range(5):
            row = at_start[f"f{n}"]
            # As far as the first fire would have claimed it (over half the horizon ahead, to one of its fires).
            assert row.claimed_until == executor.jobstore.claim_horizon(row.id, executor.jobstore.lookup_job(
                row.id).trigger, row.next_run_time) > row.next_run_time + horizon / 2 - (n + 1)
            assert executor.jobstore.claimed[row.id] == row.claimed_until  # memory holds what was written
        for job_id in ("rare", "cron"):  # their next fire only: they fire less than twice within the horizon
            assert at_start[job_id].claimed_until == at_start[job_id].next_run_time
        wait_for(lambda: len(runs(executor, "f0")) >= 2, message="f0's first fires")
        executor.flush()  # (they wrote nothing:)
        frequent = [f"f{n}" for n in range(5)]
        assert [job_row(executor, job_id) for job_id in frequent] == [at_start[job_id] for job_id in frequent]
    finally:
        executor.stop()
