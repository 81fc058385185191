"""The engine and its facade against real databases: every behaviour of issue #3, on SQLite, MariaDB, PostgreSQL."""

from __future__ import annotations

import gc
import weakref
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from apscheduler.executors.base import MaxInstancesReachedError

from scheduler_core.console import Console
from scheduler_core.engine import Engine
from scheduler_core.errors import ConflictingId, JobNotFound, SpecError, UnresolvableReference
from scheduler_core.history import HOSTNAME
from scheduler_core.store import Store, jobs_table, runs_table
from tests.conftest import wait_for

pytestmark = pytest.mark.db


def interval_job(job_id: str, seconds: int = 3600, **extra: object) -> dict:
    return {"id": job_id, "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval",
            "seconds": seconds, **extra}


def runs_of(console: Console, job_id: str) -> list:
    """Finished runs (claims of runs still going are left out)."""
    console.flush()
    return [r for r in console.history(job_id, per_page=1000).items if r.outcome != "running"]


def test_add_list_get_and_history_of_a_run(console: Console) -> None:
    view = console.add_job(interval_job("j1", seconds=1))
    assert view.state == "scheduled" and view.next_run_time is not None
    assert [v.id for v in console.list_jobs()] == ["j1"]
    runs = wait_for(lambda: runs_of(console, "j1"), message="a recorded run")
    run = runs[0]
    assert run.outcome == "success" and run.return_value == "3"
    assert run.host == HOSTNAME and run.pid > 0
    assert run.started_at >= run.scheduled_at - timedelta(seconds=1)
    assert run.duration is not None and run.duration >= 0
    assert wait_for(lambda: console.get_job("j1").last_run).outcome == "success"


def test_duplicate_id_refused_and_stored_job_untouched(console: Console) -> None:
    console.add_job(interval_job("j1", seconds=600))
    before = console.get_spec("j1")
    with pytest.raises(ConflictingId, match=r"Job identifier \(j1\) conflicts with an existing job"):
        console.add_job({"id": "j1", "func": "tests.sample_jobs:echo", "trigger": "interval", "seconds": 5})
    assert console.get_spec("j1") == before
    assert len(console.list_jobs()) == 1


@pytest.mark.parametrize(
    ("func", "message"),
    [
        ("tests.sample_jobs:job6", "Error resolving reference tests.sample_jobs:job6: error looking up object"),
        ("app.jobs:job6", "Error resolving reference app.jobs:job6: could not import module"),
    ],
)
def test_unresolvable_reference_refused_with_flask_apscheduler_wording(console: Console, func: str,
                                                                       message: str) -> None:
    with pytest.raises(UnresolvableReference) as info:
        console.add_job({"id": "job2", "func": func, "args": [202, 303]})
    assert str(info.value) == message
    assert info.value.fields == ["target"]
    assert console.list_jobs() == []


def test_bad_input_changes_nothing(console: Console) -> None:
    console.add_job(interval_job("keep", seconds=600))
    before = console.list_jobs()
    for bad in (
        {"id": "x", "func": "tests.sample_jobs:add", "trigger": "cron", "hour": "25"},
        {"id": "x", "func": "tests.sample_jobs:add", "trigger": "interval", "seconds": 0},
        {"id": "x", "func": "tests.sample_jobs:add", "timezone": "Nowhere/Land"},
        {"id": "x", "func": "tests.sample_jobs:add", "trigger": "date",
         "run_date": "2001-01-01T00:00:00+00:00"},
    ):
        with pytest.raises(SpecError):
            console.add_job(bad)
    with pytest.raises(SpecError) as info:
        console.update_job("keep", {"hour": "99", "trigger": "cron"})
    assert info.value.fields == ["hour"]
    # A whole spec for a job that is not there: the UPDATE itself says so (no row is read first), nothing is added.
    with pytest.raises(JobNotFound):
        console.update_job("absent", console.get_spec("keep").model_copy(update={"id": "absent"}))
    assert console.list_jobs() == before


def test_pause_resume_update_remove(console: Console) -> None:
    console.add_job(interval_job("j1", seconds=600))
    assert console.pause_job("j1").state == "paused"
    assert console.get_job("j1").next_run_time is None
    resumed = console.resume_job("j1")
    assert resumed.state == "scheduled" and resumed.next_run_time is not None
    updated = console.update_job("j1", {"trigger": "cron", "hour": "3", "minute": "15"})
    assert updated.spec.trigger.type == "cron"
    assert (updated.next_run_time.hour, updated.next_run_time.minute) == (3, 15)
    console.remove_job("j1")
    with pytest.raises(JobNotFound):
        console.get_job("j1")
    with pytest.raises(JobNotFound):
        console.remove_job("j1")


def test_run_now_and_outcomes(console: Console, tmp_path: Path) -> None:
    console.add_job({"id": "ok", "func": "tests.sample_jobs:echo", "args": ["x"], "trigger": "interval",
                     "hours": 1, "paused": True})
    console.add_job({"id": "bad", "func": "tests.sample_jobs:fail", "args": ["kaput"], "trigger": "interval",
                     "hours": 1})
    console.add_job({"id": "sh", "kind": "shell", "func": "echo out; exit 4", "trigger": "interval", "hours": 1})
    console.add_job({"id": "slow", "func": "tests.sample_jobs:sleep", "args": [5], "timeout": 0.2,
                     "trigger": "interval", "hours": 1})
    for job_id in ("ok", "bad", "sh", "slow"):
        console.run_job(job_id)
    outcome = {j: wait_for(lambda j=j: runs_of(console, j), message=j)[0] for j in ("ok", "bad", "sh", "slow")}
    assert outcome["ok"].outcome == "success" and "'x'" in outcome["ok"].return_value
    assert outcome["bad"].outcome == "error" and outcome["bad"].exception == "ValueError: kaput"
    assert "raise ValueError" in outcome["bad"].traceback
    assert outcome["sh"].outcome == "error" and outcome["sh"].exit_code == 4 and outcome["sh"].output == "out\n"
    assert outcome["slow"].outcome == "timeout"
    # run now leaves the schedule alone: the paused job is still paused
    assert console.get_job("ok").state == "paused"


def test_max_instances_skip_is_recorded(console: Console, tmp_path: Path) -> None:
    release = tmp_path / "release"
    console.add_job({"id": "b", "func": "tests.sample_jobs:block_until", "args": [str(release)],
                     "trigger": "interval", "hours": 1, "max_instances": 1})
    console.run_job("b")
    wait_for(lambda: console.get_job("b").state == "running", message="the run to start")
    with pytest.raises(MaxInstancesReachedError):
        console.run_job("b")
    release.touch()
    runs = wait_for(lambda: [r for r in runs_of(console, "b") if r.outcome == "success"] and runs_of(console, "b"))
    assert sorted(r.outcome for r in runs) == ["skipped", "success"]


def test_events_fan_out_to_every_subscriber(console: Console) -> None:
    first, second = console.subscribe(), console.subscribe()
    console.add_job(interval_job("j1", seconds=1))
    wait_for(lambda: runs_of(console, "j1"))
    for sub in (first, second):
        kinds = {e.kind for e in wait_for(sub.drain)} | {e.kind for e in sub.drain()}
        assert "added" in kinds
    wait_for(lambda: any(e.kind == "executed" for e in first.drain()), message="an executed event")


def test_jobs_and_next_run_times_survive_restart(settings, console: Console, engine: Engine) -> None:
    console.add_job(interval_job("a", seconds=3600))
    console.add_job({"id": "c", "func": "tests.sample_jobs:add", "args": [1, 1], "trigger": "cron",
                     "day": "last fri", "hour": "9"})
    console.add_job(interval_job("p", seconds=60, paused=True))
    before = {v.id: (v.spec, v.next_run_time, v.state) for v in console.list_jobs()}
    engine.stop()
    second = Engine(settings)
    second.start()
    try:
        after = {v.id: (v.spec, v.next_run_time, v.state) for v in Console(second).list_jobs()}
    finally:
        second.stop()
    assert after == before


def _set_next_run(engine: Engine, job_id: str, when: datetime) -> None:
    with engine.store.engine.begin() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(next_run_time=when.timestamp()))


@pytest.mark.parametrize(("coalesce", "grace", "missed", "ran"), [(True, 1, 6, 0), (True, 7200, 5, 1),
                                                                   (False, 1, 6, 0)])
def test_runs_missed_while_stopped_are_recorded(make_settings, db_url: str, coalesce: bool, grace: int,
                                                missed: int, ran: int) -> None:
    settings = make_settings(db_url)
    first = Engine(settings)
    first.start()
    Console(first).add_job(interval_job("m", seconds=600, coalesce=coalesce, misfire_grace_time=grace))
    first.stop()
    # The process was down for an hour: six 10-minute runs came due meanwhile.
    _set_next_run(first, "m", datetime.now(timezone.utc) - timedelta(minutes=55))
    second = Engine(settings)
    second.start()
    try:
        console = Console(second)
        runs = wait_for(lambda: len(runs_of(console, "m")) >= missed + ran and runs_of(console, "m"))
        outcomes = [r.outcome for r in runs]
        assert outcomes.count("missed") == missed and outcomes.count("success") == ran
        assert console.get_job("m").next_run_time > datetime.now(timezone.utc)
    finally:
        second.stop()


def test_row_that_no_longer_resolves_is_kept_and_marked_broken(settings, console: Console, engine: Engine) -> None:
    console.add_job(interval_job("j1"))
    engine.stop()
    with engine.store.engine.begin() as conn:
        spec = conn.execute(sa.select(jobs_table.c.spec)).scalar_one()
        conn.execute(jobs_table.update().values(spec=spec.replace("tests.sample_jobs:add", "tests.sample_jobs:gone")))
        conn.execute(jobs_table.insert().values(id="garbage", spec="{not json", next_run_time=None, paused=False,
                                                source="user", seq=0, created_at=0, updated_at=0))
    second = Engine(settings)
    second.start()
    try:
        views = {v.id: v for v in Console(second).list_jobs()}
        assert views["j1"].state == "broken" and "error looking up object" in views["j1"].broken
        assert views["garbage"].state == "broken"
        with second.store.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(jobs_table)).scalar_one() == 2
        # fixing it through the facade brings it back
        Console(second).update_job("j1", {"func": "tests.sample_jobs:add"})
        assert Console(second).get_job("j1").state == "scheduled"
    finally:
        second.stop()


def test_config_jobs_upsert_on_every_start_without_conflict(make_settings, db_url: str) -> None:
    jobs = [{"id": "cfg", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval", "seconds": 30}]
    for round_ in range(3):
        engine = Engine(make_settings(db_url, jobs=jobs))
        engine.start()
        console = Console(engine)
        assert [v.id for v in console.list_jobs()] == ["cfg"]
        if round_ == 0:
            console.pause_job("cfg")
            console.update_job("cfg", {"seconds": 60})  # edited by hand, still the config's
            console.add_job(interval_job("mine"))
            console.update_job("mine", {"seconds": 60})
            assert [engine.store.get_job_row(i).source for i in ("cfg", "mine")] == ["config", "user"]
            console.remove_job("mine")
        assert console.get_job("cfg").state == "paused"  # runtime state is kept across restarts
        engine.stop()
    changed = [{**jobs[0], "seconds": 45}]
    engine = Engine(make_settings(db_url, jobs=changed))
    engine.start()
    try:
        spec = Console(engine).get_spec("cfg")
        assert spec.trigger.seconds == 45  # config owns the definition
        assert Console(engine).get_job("cfg").state == "paused"
    finally:
        engine.stop()


def test_bad_config_job_names_index_and_field(make_settings, sqlite_url: str) -> None:
    engine = Engine(make_settings(sqlite_url, jobs=[{"id": "ok", "func": "tests.sample_jobs:add"},
                                                    {"id": "bad", "func": "m:f", "trigger": "cron", "hour": "30"}]))
    with pytest.raises(SpecError) as info:
        engine.start()
    assert "jobs[1].hour" in info.value.fields


def test_history_retention(console: Console, engine: Engine) -> None:
    from scheduler_core.history import run_row

    now = datetime.now(timezone.utc)
    rows = [run_row("r", now - timedelta(minutes=i), "success") for i in range(10)]
    rows[-1]["recorded_at"] = (now - timedelta(days=40)).timestamp()
    engine.store.insert_runs(rows)
    assert engine.store.prune_runs(max_age_seconds=30 * 86400) == 1
    assert engine.store.prune_runs(keep_per_job=4) == 5
    assert console.history("r").total == 4


def test_duplicate_run_is_detected_not_hidden(engine: Engine) -> None:
    from scheduler_core.history import run_row

    at = datetime.now(timezone.utc)
    inserted, duplicates = engine.store.insert_runs([run_row("d", at, "success"), run_row("d", at, "success")])
    assert inserted == 1 and len(duplicates) == 1


def test_history_paging(console: Console, engine: Engine) -> None:
    from scheduler_core.history import run_row

    now = datetime.now(timezone.utc)
    engine.store.insert_runs([run_row("p", now - timedelta(seconds=i), "success") for i in range(25)])
    page = console.history("p", page=3, per_page=10)
    assert (len(page.items), page.total, page.pages, page.has_next, page.has_prev) == (5, 25, 3, False, True)
    with pytest.raises(SpecError):
        console.history("p", page=0)


def test_edit_from_another_process_reaches_the_executor(settings, console: Console, engine: Engine) -> None:
    other = Engine(settings)
    other.start(execute=False)  # a console-only process on the same database
    try:
        Console(other).add_job(interval_job("remote", seconds=1))
        wait_for(lambda: engine.jobstore.lookup_job("remote"), message="the executor to pick up the new job")
        wait_for(lambda: runs_of(console, "remote"), message="a run of the job added elsewhere")
        Console(other).pause_job("remote")
        wait_for(lambda: engine.jobstore.lookup_job("remote").next_run_time is None, message="pause to arrive")
        Console(other).run_job("remote")
        wait_for(lambda: len(runs_of(console, "remote")) >= 2 and any(
            r.scheduled_at > datetime.now(timezone.utc) - timedelta(seconds=5) for r in runs_of(console, "remote")))
        Console(other).remove_job("remote")
        wait_for(lambda: engine.jobstore.lookup_job("remote") is None, message="removal to arrive")
    finally:
        other.stop()


def test_runs_table_has_unique_job_scheduled_key(engine: Engine) -> None:
    inspector = sa.inspect(engine.store.engine)
    uniques = inspector.get_unique_constraints(runs_table.name) + [
        i for i in inspector.get_indexes(runs_table.name) if i.get("unique")]
    assert any(set(u["column_names"]) == {"job_id", "scheduled_at"} for u in uniques)


def test_executor_applies_retention(make_settings, sqlite_url: str) -> None:
    from scheduler_core.history import run_row

    engine = Engine(make_settings(sqlite_url, history_keep_per_job=3, poll_interval=0.05))
    engine.store.migrate()
    now = datetime.now(timezone.utc)
    engine.store.insert_runs([run_row("old", now - timedelta(minutes=i), "success") for i in range(10)])
    engine.start()
    try:
        wait_for(lambda: engine.store.count_runs() == 3, message="retention to prune to 3 runs")
    finally:
        engine.stop()


def test_ids_are_case_sensitive_and_unicode_everywhere(console: Console) -> None:
    for job_id in ("Job1", "job1", "报表-日报"):
        console.add_job(interval_job(job_id))
    assert sorted(v.id for v in console.list_jobs()) == sorted(["Job1", "job1", "报表-日报"])


def test_schema_is_at_the_newest_migration(engine: Engine) -> None:
    from alembic.script import ScriptDirectory

    from scheduler_core.migrations import alembic_config

    head = ScriptDirectory.from_config(alembic_config(engine.store.engine)).get_current_head()
    assert engine.store.schema_version() == head


def test_the_migrations_build_the_schema_the_code_declares(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from scheduler_core.migrations import VERSION_TABLE
    from scheduler_core.store import metadata

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_the_jobs_table_has_no_index_but_its_key(store: Store) -> None:
    """Every fire rewrites a job's next run time: an index on it was about a third of the database server's CPU
    for those writes, with no query reading through it (migration 0004)."""
    assert sa.inspect(store.engine).get_indexes(jobs_table.name) == []


def test_upgrading_to_0004_keeps_stored_jobs_and_drops_the_index(db_url: str) -> None:
    from scheduler_core.migrations import upgrade

    store = Store(db_url)
    try:
        upgrade(store.engine, "0003")
        assert [i["name"] for i in sa.inspect(store.engine).get_indexes(jobs_table.name)] == [
            "ix_carnation_jobs_next_run_time"]
        with store.engine.begin() as conn:
            conn.execute(jobs_table.insert().values(id="kept", spec="{}", next_run_time=1.5, claimed_until=1.5,
                                                    paused=False, source="user", seq=1, created_at=1, updated_at=1))
        store.migrate()
        assert sa.inspect(store.engine).get_indexes(jobs_table.name) == []
        assert store.get_job_row("kept").next_run_time == 1.5
    finally:
        store.close()


@pytest.mark.parametrize("executing", [True, False], ids=["executor", "standby"])
def test_a_consoles_cached_views_and_specs_are_kept_out_of_full_garbage_collections(
        make_settings, sqlite_url: str, executing: bool) -> None:
    """A full collection walking a console's 100,000 cached views held its keys for 185-200 ms (bench/README.md,
    F30). Frozen after the first listing, and again once the cache has doubled (a console opened on few jobs)."""
    seed = Engine(make_settings(sqlite_url))
    seed.start(execute=False)
    Console(seed).add_job(interval_job("a"))
    seed.stop()
    gc.unfreeze()
    engine = Engine(make_settings(sqlite_url))
    engine.start(execute=executing)
    try:
        console = Console(engine)

        def cached(job_id: str) -> object:
            console.list_jobs()
            return console._views[job_id][1] if executing else console._specs[job_id][2]

        def frozen(obj: object) -> bool:
            return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())

        first = cached("a")
        assert frozen(first)
        for job_id in ("b", "c"):
            console.add_job(interval_job(job_id))
        assert frozen(cached("c"))  # three entries: more than twice the one frozen before
    finally:
        engine.stop()
        engine.store.close()


def test_jobs_load_with_the_cyclic_collector_paused_and_it_runs_again_after(
        make_settings, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading 100,000 jobs set off one full collection after another, each walking all loaded so far: 2 s of a 4 s
    start (bench/README.md, F29)."""
    first = Engine(make_settings(sqlite_url))
    first.start()
    Console(first).add_job(interval_job("j"))
    first.stop()
    collector_during_load: list[bool] = []
    load_jobs = Engine._load_jobs
    monkeypatch.setattr(Engine, "_load_jobs",
                        lambda self, rows: collector_during_load.append(gc.isenabled()) or load_jobs(self, rows))
    engine = Engine(make_settings(sqlite_url))
    try:
        engine.start()
        assert collector_during_load == [False]
        assert gc.isenabled()
        gc.disable()  # and left as found: off if a caller had turned it off
        try:
            engine.stop()
            engine = Engine(make_settings(sqlite_url))
            engine.start()
            assert collector_during_load == [False, False] and not gc.isenabled()
        finally:
            gc.enable()
    finally:
        engine.stop()
        engine.store.close()


def test_jobs_loaded_at_start_are_kept_out_of_full_garbage_collections(make_settings, sqlite_url: str) -> None:
    """A full collection walks every tracked object holding the GIL: with 1,000 jobs it stopped the scheduler for
    86 ms, and every run due meanwhile fired that late (bench/README.md). Loaded jobs are frozen out of it."""
    gc.unfreeze()
    first = Engine(make_settings(sqlite_url))
    first.start()
    Console(first).add_job(interval_job("kept"))
    first.stop()
    gc.unfreeze()
    engine = Engine(make_settings(sqlite_url))
    engine.start()
    try:
        job = engine.scheduler.get_job("kept")
        assert job is not None
        assert not any(obj is job for obj in gc.get_objects())
        # The collector never frees a frozen object in a cycle: a job replaced by an edit or removed must go by
        # its reference count alone, or every edit of a loaded job would leak it.
        gone = [weakref.ref(job), weakref.ref(job.args[0])]
        del job
        Console(engine).update_job("kept", {"seconds": 60})
        Console(engine).remove_job("kept")
        assert [ref() for ref in gone] == [None, None]
    finally:
        engine.stop()
        engine.store.close()
        first.store.close()
        gc.unfreeze()
