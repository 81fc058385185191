"""Flask-APScheduler 1.13 compatibility, over HTTP, on every database: the seed README's requests replayed, then
every route with Flask-APScheduler's own test expectations (its tests/test_api.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import httpx

from scheduler_core.console import Console
from tests.conftest import wait_for

# utils.job_to_dict's keys, in its order, for each trigger (as the seed's GET /scheduler/jobs shows them).
DATE_KEYS = ["id", "name", "func", "args", "kwargs", "trigger", "run_date", "misfire_grace_time", "max_instances",
             "next_run_time"]
INTERVAL_KEYS = ["id", "name", "func", "args", "kwargs", "trigger", "start_date", "seconds", "misfire_grace_time",
                 "max_instances", "next_run_time"]


def _fa_keys(body: dict) -> list[str]:
    """The keys before carnation's own (which follow next_run_time)."""
    keys = list(body)
    return keys[: keys.index("next_run_time") + 1]


def finished_runs(client: httpx.Client, path: str, count: int = 1) -> list[dict]:
    """The runs at `path` once `count` of them exist and none is still running."""

    def ready() -> list[dict] | None:
        page = client.get(path).json()
        items = page["items"]
        done = page["total"] >= count and all(run["outcome"] != "running" for run in items)
        return items if done else None

    return wait_for(ready, message=f"{count} finished run(s) at {path}")  # type: ignore[return-value]


def _iso(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None, f"{text} has no offset"
    return value


def test_seed_readme_requests(client: httpx.Client, console: Console) -> None:
    # The date job: no trigger means date, run once, now.
    r = client.post("/scheduler/jobs", json={"id": "job2", "func": "tests.sample_jobs:add", "name": "job2",
                                             "args": [202, 303]})
    assert r.status_code == 200, r.text
    job = r.json()
    assert _fa_keys(job) == DATE_KEYS
    assert job["id"] == "job2" and job["name"] == "job2" and job["func"] == "tests.sample_jobs:add"
    assert job["args"] == [202, 303] and job["kwargs"] == {} and job["trigger"] == "date"
    assert job["max_instances"] == 1 and isinstance(job["misfire_grace_time"], int)
    assert _iso(job["run_date"]) == _iso(job["next_run_time"])
    runs = finished_runs(client, "/scheduler/jobs/job2/history")
    assert runs[0]["outcome"] == "success" and runs[0]["return_value"] == "505"
    # A date job is gone once it has run, as in APScheduler.
    wait_for(lambda: client.get("/scheduler/jobs/job2").status_code == 404, message="job2 removed")

    # The interval job without seconds: every second.
    r = client.post("/scheduler/jobs", json={"id": "job3", "func": "tests.sample_jobs:add", "name": "job3",
                                             "trigger": "interval", "args": [802, 903]})
    assert r.status_code == 200, r.text
    assert _fa_keys(r.json()) == INTERVAL_KEYS
    assert r.json()["seconds"] == 1

    # The same id again (the README's next line reuses job3): Flask-APScheduler's 409 and sentence.
    r = client.post("/scheduler/jobs", json={"id": "job3", "func": "tests.sample_jobs:add", "name": "job3",
                                             "seconds": 10, "trigger": "interval", "args": [802, 903]})
    assert r.status_code == 409
    assert r.json() == {"error_message": "Job job3 already exists."}

    # Delete: 204 and no body; then the every-ten-seconds version.
    r = client.delete("/scheduler/jobs/job3")
    assert r.status_code == 204 and r.content == b""
    r = client.post("/scheduler/jobs", json={"id": "job3", "func": "tests.sample_jobs:add", "name": "job3",
                                             "seconds": 10, "trigger": "interval", "args": [802, 903]})
    assert r.status_code == 200, r.text
    assert r.json()["seconds"] == 10 and "minutes" not in r.json()

    # The cron job: its non-default fields as strings, nothing else.
    r = client.post("/scheduler/jobs", json={"id": "job5", "func": "tests.sample_jobs:add", "name": "job5",
                                             "second": "*/10", "hour": "*", "trigger": "cron", "args": [702, 603]})
    assert r.status_code == 200, r.text
    cron = r.json()
    assert cron["trigger"] == "cron" and cron["hour"] == "*" and cron["second"] == "*/10"
    assert not {"year", "month", "day", "week", "day_of_week", "minute"} & cron.keys()
    assert _iso(cron["next_run_time"]).second % 10 == 0

    # Unresolvable references: Flask-APScheduler's exact sentences, for a missing module and a missing attribute.
    r = client.post("/scheduler/jobs", json={"id": "job6", "func": "app.jobs:job6", "name": "job6",
                                             "args": [202, 303]})
    assert r.status_code == 400
    assert r.json() == {"error_message": "Error resolving reference app.jobs:job6: could not import module"}
    r = client.post("/scheduler/jobs", json={"id": "job6", "func": "tests.sample_jobs:job6", "name": "job6",
                                             "args": [202, 303]})
    assert r.status_code == 400
    assert r.json() == {"error_message": "Error resolving reference tests.sample_jobs:job6: error looking up object"}

    r = client.get("/scheduler/jobs")
    assert r.status_code == 200
    assert [j["id"] for j in r.json()] == ["job3", "job5"]
    assert client.get("/scheduler/jobs/job6").status_code == 404

    r = client.delete("/scheduler/jobs/job3")
    assert r.status_code == 204
    r = client.delete("/scheduler/jobs/job3")
    assert r.status_code == 404 and r.json() == {"error_message": "Job job3 not found"}


def test_scheduler_state_routes(client: httpx.Client, console: Console) -> None:
    r = client.get("/scheduler")
    assert r.status_code == 200
    info = r.json()
    assert list(info) == ["current_host", "allowed_hosts", "running"]
    assert info["current_host"] == console.engine.host.lower()
    assert info["allowed_hosts"] == ["*"] and info["running"] is True

    scheduler = console.engine.scheduler
    assert client.post("/scheduler/pause").status_code == 204
    assert scheduler.state == 2  # STATE_PAUSED
    assert client.post("/scheduler/pause").status_code == 204  # already paused: fine, as APScheduler
    assert client.get("/scheduler").json()["running"] is True  # APScheduler counts paused as running
    assert client.post("/scheduler/resume").status_code == 204
    assert scheduler.state == 1  # STATE_RUNNING
    assert client.post("/scheduler/resume").status_code == 204

    r = client.post("/scheduler/start")
    assert r.status_code == 400 and r.json() == {"error_message": "Scheduler is already running"}

    # Shutdown stops executing but the API keeps serving; start brings execution back.
    assert client.post("/scheduler/shutdown", json={"wait": False}).status_code == 204
    assert client.get("/scheduler").json()["running"] is False
    for action in ("shutdown", "pause", "resume"):
        r = client.post(f"/scheduler/{action}")
        assert r.status_code == 400 and r.json() == {"error_message": "Scheduler is not running"}, action
    r = client.post("/scheduler/jobs", json={"id": "tick", "func": "tests.sample_jobs:add", "args": [1, 2],
                                             "trigger": "interval", "seconds": 1})
    assert r.status_code == 200
    assert client.post("/scheduler/start").status_code == 204
    assert client.get("/scheduler").json()["running"] is True
    wait_for(lambda: client.get("/scheduler/jobs/tick/history").json()["total"] > 0, message="a run after start")
    # shutdown without a body waits for running jobs (none here) and succeeds.
    assert client.post("/scheduler/shutdown").status_code == 204
    assert client.post("/scheduler/start").status_code == 204


def test_job_routes(client: httpx.Client, console: Console) -> None:
    job = {"id": "job1", "func": "tests.sample_jobs:add", "trigger": "interval", "minutes": 10, "args": [1, 2]}
    r = client.post("/scheduler/jobs", json=job)
    assert r.status_code == 200
    added = r.json()
    assert added["minutes"] == 10 and "seconds" not in added

    r = client.get("/scheduler/jobs/job1")
    assert r.status_code == 200 and r.json() == added
    assert client.get("/scheduler/jobs").json() == [added]

    # Flask-APScheduler's test_update_job: a new trigger with a start date a year ahead.
    start = datetime(datetime.now().year + 1, 1, 15)
    r = client.patch("/scheduler/jobs/job1", json={"args": [1, 5], "trigger": "cron", "minute": "*/1",
                                                   "start_date": str(start.date())})
    assert r.status_code == 200, r.text
    updated = r.json()
    iso_date = start.replace(tzinfo=timezone.utc).isoformat()
    assert updated["args"] == [1, 5] and updated["trigger"] == "cron" and updated["minute"] == "*/1"
    assert updated["start_date"] == iso_date and updated["next_run_time"] == iso_date
    assert "minutes" not in updated

    # Trigger fields without "trigger" change the current trigger (Flask-APScheduler answers 500 here).
    r = client.patch("/scheduler/jobs/job1", json={"minute": "*/5"})
    assert r.status_code == 200 and r.json()["minute"] == "*/5"

    r = client.post("/scheduler/jobs/job1/pause")
    assert r.status_code == 200 and r.json()["next_run_time"] is None
    assert client.get("/scheduler/jobs/job1").json()["next_run_time"] is None
    r = client.post("/scheduler/jobs/job1/resume")
    assert r.status_code == 200 and r.json()["next_run_time"] is not None

    r = client.post("/scheduler/jobs/job1/run")
    assert r.status_code == 200 and r.json()["id"] == "job1" and r.json()["next_run_time"] is not None
    runs = finished_runs(client, "/scheduler/jobs/job1/history")
    assert runs[0]["outcome"] == "success" and runs[0]["return_value"] == "6"

    assert client.delete("/scheduler/jobs/job1").status_code == 204
    for method, path in (("GET", ""), ("DELETE", ""), ("PATCH", ""), ("POST", "/pause"), ("POST", "/resume"),
                         ("POST", "/run")):
        r = client.request(method, f"/scheduler/jobs/job1{path}", json={"args": [1]} if method == "PATCH" else None)
        assert r.status_code == 404, (method, path)
        assert r.json() == {"error_message": "Job job1 not found"}
    # A removed job's runs stay readable; a job that never existed has no history.
    assert client.get("/scheduler/jobs/job1/history").json()["total"] >= 1
    r = client.get("/scheduler/jobs/never/history")
    assert r.status_code == 404 and r.json() == {"error_message": "Job never not found"}


def test_get_output_posts_back_unchanged(client: httpx.Client) -> None:
    jobs = [
        {"id": "d", "func": "tests.sample_jobs:add", "args": [1, 2], "run_date": "2099-03-04T05:06:07+08:00"},
        {"id": "i", "func": "tests.sample_jobs:echo", "trigger": "interval", "seconds": 5400, "kwargs": {"a": 1},
         "start_date": "2099-01-01T00:00:00+00:00", "end_date": "2099-12-31T00:00:00+00:00", "jitter": 2},
        {"id": "c", "func": "tests.sample_jobs:add", "trigger": "cron", "day_of_week": "mon-fri", "hour": 3,
         "timezone": "Europe/Paris", "misfire_grace_time": 5, "max_instances": 2, "coalesce": False},
        {"id": "e", "target": "tests.sample_jobs:add", "trigger": {"type": "cron", "expression": "*/5 * * * *"}},
        {"id": "s", "kind": "shell", "func": "echo hi", "trigger": "interval", "hours": 1, "timeout": 3,
         "description": "shell", "tags": ["x"]},
        {"id": "h", "kind": "http", "func": "http://127.0.0.1:9/x", "trigger": "interval", "days": 8,
         "method": "post", "headers": {"X-A": "b"}, "body": "{}"},
    ]
    for job in jobs:
        r = client.post("/scheduler/jobs", json=job)
        assert r.status_code == 200, (job["id"], r.text)
    shown = {j["id"]: j for j in client.get("/scheduler/jobs").json()}
    # What Flask-APScheduler would print for these triggers.
    assert shown["d"]["run_date"] == "2099-03-04T05:06:07+08:00"
    assert (shown["i"]["hours"], shown["i"]["minutes"]) == (1, 30) and "seconds" not in shown["i"]
    assert shown["i"]["start_date"] == "2099-01-01T00:00:00+00:00"
    assert shown["c"]["day_of_week"] == "mon-fri" and shown["c"]["hour"] == "3"
    paris_next = _iso(shown["c"]["next_run_time"])
    assert paris_next.utcoffset() == paris_next.astimezone(ZoneInfo("Europe/Paris")).utcoffset()
    assert paris_next.astimezone(ZoneInfo("Europe/Paris")).hour == 3
    assert shown["e"]["expression"] == "*/5 * * * *"
    assert shown["s"]["kind"] == "shell" and shown["s"]["func"] == "echo hi" and shown["s"]["timeout"] == 3
    assert shown["h"]["method"] == "POST" and shown["h"]["headers"] == {"X-A": "b"} and shown["h"]["weeks"] == 1
    for job_id, body in shown.items():
        assert client.delete(f"/scheduler/jobs/{job_id}").status_code == 204
        r = client.post("/scheduler/jobs", json=body)
        assert r.status_code == 200, (job_id, r.text)
        again = r.json()
        if body["trigger"] != "date":
            again.pop("next_run_time"), body.pop("next_run_time")  # restarted from now
        assert again == body


def test_history_paging(client: httpx.Client, console: Console) -> None:
    assert client.post("/scheduler/jobs", json={"id": "p", "func": "tests.sample_jobs:add", "args": [1, 1],
                                                "trigger": "interval", "weeks": 1}).status_code == 200
    assert client.post("/scheduler/jobs", json={"id": "f", "func": "tests.sample_jobs:fail", "trigger": "interval",
                                                "weeks": 1}).status_code == 200
    for count in range(1, 6):
        assert client.post("/scheduler/jobs/p/run").status_code == 200
        finished_runs(client, "/scheduler/jobs/p/history", count)
    assert client.post("/scheduler/jobs/f/run").status_code == 200
    finished_runs(client, "/scheduler/history?per_page=10", 6)

    r = client.get("/scheduler/jobs/p/history", params={"per_page": 2})
    page = r.json()
    assert (page["page"], page["per_page"], page["total"], page["pages"]) == (1, 2, 5, 3)
    assert page["prev"] is None
    next_url = httpx.URL(page["next"])
    assert str(next_url.copy_with(query=None)) == f"{client.base_url}/scheduler/jobs/p/history".replace("//sch", "/sch")
    assert dict(next_url.params) == {"page": "2", "per_page": "2"}
    seen = [run["id"] for run in page["items"]]
    while page["next"]:
        page = client.get(page["next"]).json()
        assert page["prev"] is not None
        seen += [run["id"] for run in page["items"]]
    assert page["page"] == 3 and len(seen) == 5 and seen == sorted(seen, reverse=True)  # newest first
    # Past the end: empty, with a way back.
    page = client.get("/scheduler/jobs/p/history", params={"page": 9, "per_page": 2}).json()
    assert page["items"] == [] and page["next"] is None and "page=3" in page["prev"]

    everything = client.get("/scheduler/history").json()
    assert everything["total"] == 6 and {r["job_id"] for r in everything["items"]} == {"p", "f"}
    failed = client.get("/scheduler/history", params={"outcome": "error"}).json()
    assert failed["total"] == 1 and failed["items"][0]["exception"].startswith("ValueError: boom")
    assert _iso(failed["items"][0]["scheduled_at"])

    for params, field in (({"page": 0}, "page"), ({"per_page": 1001}, "per_page"), ({"page": "x"}, "page"),
                          ({"outcome": "meh"}, "outcome")):
        r = client.get("/scheduler/history", params=params)
        assert r.status_code == 400 and r.json()["error_message"].startswith(f"{field}: "), r.text
