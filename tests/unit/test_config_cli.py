"""Settings precedence, `carnation --help`, logging, and the scripting CLI's exit codes and messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from scheduler_core.cli import main
from scheduler_core.config import Settings, load_settings
from scheduler_core.logs import setup_logging


def test_precedence_defaults_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('workers = 3\ntimezone = "Asia/Shanghai"\nmisfire_grace_time = 7\n')
    monkeypatch.setenv("CARNATION_CONFIG", str(config))
    assert load_settings().workers == 3
    assert load_settings().coalesce is True  # untouched default
    monkeypatch.setenv("CARNATION_WORKERS", "5")
    monkeypatch.setenv("CARNATION_ALLOWED_HOSTS", "a,b")
    settings = load_settings()
    assert (settings.workers, settings.timezone, settings.allowed_hosts) == (5, "Asia/Shanghai", ["a", "b"])
    assert load_settings(workers=9).workers == 9
    assert load_settings(workers=None).workers == 5  # a flag not given does not override


def test_bad_settings_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone"):
        load_settings(timezone="Nowhere/Land")
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        if name != "config_file":
            assert f"CARNATION_{name.upper()}" in out
    for flag in ("--headless", "--db", "--config", "--http"):
        assert flag in out


def test_log_file_gets_apscheduler_warnings(tmp_path: Path) -> None:
    path = setup_logging(tmp_path / "log", "INFO")
    try:
        logging.getLogger("apscheduler.executors.default").warning("from apscheduler")
        for handler in logging.getLogger().handlers:
            handler.flush()
        assert "from apscheduler" in path.read_text()
    finally:
        for handler in [h for h in logging.getLogger().handlers if getattr(h, "_carnation", False)]:
            logging.getLogger().removeHandler(handler)
            handler.close()


def cli(sqlite_url: str, *args: str) -> int:
    return main(["--db", sqlite_url, "--log-dir", str(Path(sqlite_url[10:]).parent / "log"), *args])


def test_scripting_cli_round_trip(sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = {"id": "j", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval", "seconds": 30}
    assert cli(sqlite_url, "jobs", "add", json.dumps(job)) == 0
    assert cli(sqlite_url, "jobs", "pause", "j") == 0
    capsys.readouterr()
    assert cli(sqlite_url, "jobs", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(j["id"], j["state"], j["trigger"]) for j in listed] == [("j", "paused", "every 30 s")]
    export = tmp_path / "export.json"
    assert cli(sqlite_url, "export", str(export)) == 0
    assert cli(sqlite_url, "jobs", "remove", "j") == 0
    assert cli(sqlite_url, "import", str(export)) == 0
    capsys.readouterr()
    assert cli(sqlite_url, "jobs", "show", "j") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "paused"
    assert cli(sqlite_url, "history", "j") == 0
    assert "page 1 of 1 (0 runs)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["jobs", "add", '{"id": "x", "func": "m:f", "trigger": "cron", "hour": "25"}'], "hour: "),
        (["jobs", "add", "{not json"], "json"),
        # The field first, then Flask-APScheduler's sentence (which is all the exception's str() says).
        (["jobs", "add", '{"id": "x", "func": "tests.sample_jobs:nope"}'],
         "carnation: target: Error resolving reference"),
        (["jobs", "pause", "ghost"], "Job ghost not found."),
        (["import", "-"], "json"),
    ],
)
def test_bad_input_exits_2_with_one_line(sqlite_url: str, args: list[str], needle: str,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO('{"a": 1}'))
    assert cli(sqlite_url, *args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_bad_import_changes_nothing(sqlite_url: str, tmp_path: Path) -> None:
    good = {"id": "a", "func": "tests.sample_jobs:add", "trigger": "interval", "seconds": 5}
    bad = {"id": "b", "func": "tests.sample_jobs:add", "trigger": "cron", "minute": "61"}
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([good, bad]))
    assert cli(sqlite_url, "import", str(path)) == 2
    from scheduler_core.store import Store

    store = Store(sqlite_url)
    assert store.load_jobs() == []
    store.close()
