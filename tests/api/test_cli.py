"""`carnation users …`, the --http flags, and the real `--headless --http` process."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from scheduler_core.api.auth import UserAdmin
from scheduler_core.cli import main
from scheduler_core.store import Store

REPO = Path(__file__).resolve().parents[2]
CARNATION = [sys.executable, "-m", "scheduler_core"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str | None = None,
        monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_users_commands(sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    db = ["--db", sqlite_url]
    assert run([*db, "users", "add", "Alice", "--password-stdin"], capsys, "a long password\n", monkeypatch) == (
        0, "added user alice\n", "")
    stored = Store(sqlite_url).get_user("alice")
    assert stored is not None and stored[1].startswith("$argon2id$")

    # From a prompt (getpass), twice.
    answers = iter(["bob's password", "bob's password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert run([*db, "users", "add", "bob"], capsys)[0] == 0
    answers = iter(["one password", "another one"])
    code, _, err = run([*db, "users", "passwd", "bob"], capsys)
    assert code == 2 and err == "carnation: password: the two passwords differ\n"

    code, out, _ = run([*db, "users", "list"], capsys)
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == ["alice", "bob"]
    code, out, _ = run([*db, "users", "list", "--json"], capsys)
    assert [u["username"] for u in json.loads(out)] == ["alice", "bob"]

    old_hash = Store(sqlite_url).get_user("alice")[1]  # type: ignore[index]
    assert run([*db, "users", "passwd", "alice", "--password-stdin"], capsys, "a newer password\r\n",
               monkeypatch)[0] == 0
    assert Store(sqlite_url).get_user("alice")[1] != old_hash  # type: ignore[index]

    for argv, stdin, message in (
        (["users", "add", "alice", "--password-stdin"], "whatever123\n", "username: user alice already exists"),
        (["users", "add", "carol", "--password-stdin"], "short\n", "password: must be at least 8 characters"),
        (["users", "add", "carol", "--password-stdin"], "", "password: must be at least 8 characters"),
        (["users", "add", "bad:name", "--password-stdin"], "long enough\n", "username: use 1 to 150"),
        (["users", "remove", "nobody"], None, "username: no user named nobody"),
        (["users", "passwd", "nobody", "--password-stdin"], "long enough\n", "username: no user named nobody"),
    ):
        code, _, err = run([*db, *argv], capsys, stdin, monkeypatch)
        assert code == 2 and err.startswith(f"carnation: {message}"), (argv, err)

    assert run([*db, "users", "remove", "bob"], capsys) == (0, "removed user bob\n", "")
    assert Store(sqlite_url).list_users()[0][0] == "alice" and len(Store(sqlite_url).list_users()) == 1


def test_http_flag_misuse(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--db", sqlite_url, "--http-insecure-no-auth", "status"], capsys)
    assert code == 2 and "--http-insecure-no-auth only makes sense with --http" in err
    code, _, err = run(["--db", sqlite_url, "--http", "8080", "status"], capsys)
    assert code == 2 and err.startswith("carnation: http: --http serves the API from --headless")


def _env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return {**os.environ, "CARNATION_DB_URL": db_url, "CARNATION_LOG_DIR": str(tmp_path / "log"),
            "CARNATION_CONFIG": str(tmp_path / "none.toml"), "CARNATION_TIMEZONE": "UTC",
            "CARNATION_SHUTDOWN_TIMEOUT": "2", "PYTHONPATH": str(REPO)}


def test_commands_never_import_the_api(sqlite_url: str, tmp_path: Path) -> None:
    code = ("import sys; from scheduler_core.cli import main; rc = main(['jobs', 'list']); "
            "assert 'scheduler_core.api' not in sys.modules and 'fastapi' not in sys.modules "
            "and 'uvicorn' not in sys.modules and 'argon2' not in sys.modules, 'api imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path, sqlite_url), cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_headless_http(sqlite_url: str, tmp_path: Path) -> None:
    env = _env(tmp_path, sqlite_url)
    # No users: refuses, says how to add one, and exits (the engine stopped cleanly).
    result = subprocess.run([*CARNATION, "--headless", "--http", "127.0.0.1:0"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "carnation: the HTTP API needs a user: add one with `carnation users add NAME`" in result.stderr

    UserAdmin(Store(sqlite_url)).add("ops", "ops password")
    proc = subprocess.Popen([*CARNATION, "--headless", "--http", ":0"], env=env, cwd=REPO,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url = None
        for line in proc.stderr:  # type: ignore[union-attr]
            if "HTTP API on http://" in line:
                url = line.split("HTTP API on ")[1].split()[0]
                break
        assert url is not None and url.startswith("http://127.0.0.1:")  # loopback by default
        r = httpx.get(f"{url}/scheduler", auth=("ops", "ops password"), timeout=10)
        assert r.status_code == 200 and r.json()["running"] is True
        assert httpx.get(f"{url}/scheduler", timeout=10).status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
