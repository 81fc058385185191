"""Bad input gets a 4xx naming the field and stores nothing; unexpected failures never leak a traceback."""

from __future__ import annotations

import logging

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from scheduler_core.api.server import ServerHandle
from scheduler_core.console import Console

GOOD = {"id": "j", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval", "seconds": 30}

BAD_JOBS = [
    # (body, status, start of error_message)
    (b"{not json", 400, "body: not valid JSON"),
    (b"", 400, "body: a job (a JSON object) is required"),
    (b"[1, 2]", 400, "body: a job must be a JSON object"),
    (b'"job"', 400, "body: a job must be a JSON object"),
    (b'{"id": "j", "func": "tests.sample_jobs:add", "args": [NaN]}', 400, "body: not valid JSON (NaN"),
    (b'{"id": "j", "func": "tests.sample_jobs:add", "args": [1e999]}', 400, "body: not valid JSON (number 1e999"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "body: nested too deeply"),
    (b'{"id": "j", "func": "tests.sample_jobs:add", "args": ["\\ud800"]}', 400, "args[0]: contains an invalid"),
    ({"id": 5, "func": "tests.sample_jobs:add"}, 400, "id: "),
    ({"id": "a b", "func": "tests.sample_jobs:add"}, 400, "id: "),
    ({"id": "j\u0000k", "func": "tests.sample_jobs:add"}, 400, "id: must not contain control characters"),
    ({"func": "tests.sample_jobs:add"}, 400, "id: is required"),
    ({"id": "j"}, 400, "target: is required"),
    ({**GOOD, "colour": "red"}, 400, "colour: unknown field"),
    ({**GOOD, "args": {"a": 1}}, 400, "args: "),
    ({**GOOD, "kwargs": [1]}, 400, "kwargs: "),
    ({**GOOD, "seconds": "ten"}, 400, "seconds: "),
    ({**GOOD, "seconds": -1}, 400, "seconds: "),
    ({**GOOD, "max_instances": 0}, 400, "max_instances: "),
    ({**GOOD, "trigger": "weekly"}, 400, "trigger: unknown trigger 'weekly'"),
    ({**GOOD, "trigger": "cron", "seconds": None, "hour": "25"}, 400, "hour: "),  # and "seconds: unknown field"
    ({"id": "j", "func": "tests.sample_jobs:add", "trigger": "cron", "hour": "25"}, 400, "hour: "),
    ({"id": "j", "func": "tests.sample_jobs:add", "trigger": "cron", "day_of_week": "funday"}, 400, "day_of_week: "),
    ({"id": "j", "func": "tests.sample_jobs:add", "run_date": "tomorrow"}, 400, "run_date: "),
    ({"id": "j", "func": "tests.sample_jobs:add", "run_date": "2001-01-01T00:00:00+00:00"}, 400, "run_date: "),
    ({**GOOD, "timezone": "Mars/Olympus"}, 400, "timezone: "),
    ({**GOOD, "func": "tests.sample_jobs:add", "target": "tests.sample_jobs:add"}, 400, "func: "),
    ({**GOOD, "func": "tests.sample_jobs:NOT_CALLABLE"}, 400, "Error resolving reference"),
    ({**GOOD, "kind": "shell", "func": "echo", "method": "POST"}, 400, "method: "),
    ({**GOOD, "kind": "http", "func": "ftp://x"}, 400, "target: "),
    ({**GOOD, "kind": "ruby"}, 400, "kind: "),
]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_jobs_are_refused_and_nothing_is_stored(client: httpx.Client) -> None:
    for body, status, message in BAD_JOBS:
        if isinstance(body, bytes):
            r = client.post("/scheduler/jobs", content=body, headers={"Content-Type": "application/json"})
        else:
            r = client.post("/scheduler/jobs", json=body)
        assert r.status_code == status, (body if len(body) < 200 else body[:20], r.text)
        assert r.json()["error_message"].startswith(message), (body if len(body) < 200 else body[:20], r.text)
        assert "Traceback" not in r.text
    assert client.get("/scheduler/jobs").json() == []


def test_odd_ids_on_every_database(client: httpx.Client) -> None:
    """Characters some databases refuse (PostgreSQL: NUL) answer 4xx, never 500."""
    r = client.post("/scheduler/jobs", json={**GOOD, "id": "nul\u0000id"})
    assert r.status_code == 400
    for path in ("nul%00id", "x" * 300, "%E2%9C%93", "caf%C3%A9"):
        for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/pause"), ("GET", "/history")):
            r = client.request(method, f"/scheduler/jobs/{path}{suffix}")
            assert r.status_code == 404, (path, method, suffix, r.text)
    r = client.post("/scheduler/jobs", json={**GOOD, "id": "✓-café-日本"})
    assert r.status_code == 200
    assert client.get("/scheduler/jobs/✓-café-日本").json()["id"] == "✓-café-日本"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_form_content_types_are_read_as_json(client: httpx.Client) -> None:
    # Flask-APScheduler reads bodies with force=True: `curl -d '{...}'` sends a form Content-Type.
    import json

    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        job = {**GOOD, "id": f"j{len(content_type or '')}"}
        headers = {"Content-Type": content_type} if content_type else {}
        r = client.post("/scheduler/jobs", content=json.dumps(job).encode(), headers=headers)
        assert r.status_code == 200, (content_type, r.text)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_oversized_bodies_get_413(client: httpx.Client) -> None:
    big = {**GOOD, "args": ["x" * (1024 * 1024)]}
    r = client.post("/scheduler/jobs", json=big)
    assert r.status_code == 413 and r.json() == {"error_message": "body: larger than 1048576 bytes"}

    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(20):
            yield b"x" * 100_000

    r = client.post("/scheduler/jobs", content=chunks())
    assert r.status_code == 413
    r = client.patch("/scheduler/jobs/j", json=big)
    assert r.status_code == 413
    assert client.get("/scheduler/jobs").json() == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_changes_are_refused(client: httpx.Client) -> None:
    assert client.post("/scheduler/jobs", json=GOOD).status_code == 200
    before = client.get("/scheduler/jobs/j").json()
    for changes, message in (
        ({"id": "other"}, "id: the id of a job cannot be changed"),
        ({"next_run_time": "2030-01-01T00:00:00+00:00"}, "next_run_time: cannot be set"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"trigger": "cron", "hour": "99"}, "hour: "),
        ({"seconds": -5}, "seconds: "),
        ({"func": "nowhere.at.all:f"}, "Error resolving reference nowhere.at.all:f: could not import module"),
        ([1], "body: the fields to change must be a JSON object"),
    ):
        r = client.patch("/scheduler/jobs/j", json=changes)
        assert r.status_code == 400, (changes, r.text)
        assert r.json()["error_message"].startswith(message), (changes, r.text)
    r = client.patch("/scheduler/jobs/j", content=b"{oops")
    assert r.status_code == 400 and r.json()["error_message"].startswith("body: not valid JSON")
    after = client.get("/scheduler/jobs/j").json()
    assert after == before


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_shutdown_bodies(client: httpx.Client) -> None:
    for body, message in ((b"[1]", "body: must be a JSON object"), (b'{"wait": "no"}', "wait: must be true or false"),
                          (b'{"now": true}', "now: unknown field"), (b"{", "body: not valid JSON")):
        r = client.post("/scheduler/shutdown", content=body)
        assert r.status_code == 400 and r.json()["error_message"].startswith(message), (body, r.text)
    assert client.get("/scheduler").json()["running"] is True


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_unknown_routes_and_methods_answer_json(client: httpx.Client) -> None:
    r = client.get("/scheduler/nothing/here")
    assert r.status_code == 404 and r.json() == {"error_message": "Not Found"}
    r = client.put("/scheduler/jobs")
    assert r.status_code == 405 and r.json() == {"error_message": "Method Not Allowed"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_internal_errors_hide_details_and_log_them(
    client: httpx.Client, console: Console, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> None:
        raise RuntimeError("secret detail from deep inside")

    monkeypatch.setattr(console, "list_jobs", explode)
    with caplog.at_level(logging.ERROR, logger="scheduler_core.api.app"):
        r = client.get("/scheduler/jobs")
    assert r.status_code == 500
    assert r.json() == {"error_message": "internal error"}
    assert "secret" not in r.text
    assert any("secret detail" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)

    def database_down() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(console, "list_jobs", database_down)
    r = client.get("/scheduler/jobs")
    assert r.status_code == 503 and r.json() == {"error_message": "database unavailable; try again later"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cross_origin_writes_are_refused(client: httpx.Client, server: ServerHandle) -> None:
    r = client.post("/scheduler/jobs", json=GOOD, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json() == {"error_message": "Origin: cross-origin requests are refused"}
    assert client.get("/scheduler/jobs").json() == []
    # Reads, and writes from the server's own origin, pass.
    assert client.get("/scheduler/jobs", headers={"Origin": "https://evil.example"}).status_code == 200
    same = f"http://127.0.0.1:{server.port}"
    assert client.post("/scheduler/jobs", json=GOOD, headers={"Origin": same}).status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_run_conflicts_and_state_errors(client: httpx.Client) -> None:
    slow = {"id": "slow", "func": "tests.sample_jobs:sleep", "args": [0.8], "trigger": "interval", "weeks": 1}
    assert client.post("/scheduler/jobs", json=slow).status_code == 200
    assert client.post("/scheduler/jobs/slow/run").status_code == 200
    r = client.post("/scheduler/jobs/slow/run")
    assert r.status_code == 409
    assert "maximum number of instances" in r.json()["error_message"]
