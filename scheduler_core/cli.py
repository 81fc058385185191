"""`carnation --headless` and the scripting commands (`carnation jobs list`, `history`, `status`, …).

Everything goes through the Console facade. Exit codes: 0 ok, 1 a failure of the database or the scheduler,
2 bad input (one line naming the field and the reason on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Settings, describe_settings, load_settings
from .errors import CarnationError, ConflictingId, JobNotFound, SpecError

log = logging.getLogger("carnation")

EPILOG = """\
settings (defaults < TOML config file < environment < flags):
{settings}

config file: --config PATH, else $CARNATION_CONFIG, else {config}
predefined jobs go in the config file as [[jobs]] tables in Flask-APScheduler's shape, e.g.
  [[jobs]]
  id = "job1"
  func = "app.jobs:job1"
  trigger = "interval"
  seconds = 10
"""


def build_parser() -> argparse.ArgumentParser:
    from .locations import default_config_file

    parser = argparse.ArgumentParser(
        prog="carnation",
        description="A job-scheduler operations console for the terminal, and the scheduler inside it. "
        "With no command it opens the console.",
        epilog=EPILOG.format(settings=describe_settings(), config=default_config_file()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH", help="TOML config file")
    parser.add_argument("--db", dest="db_url", metavar="URL", help="database URL (default: SQLite in the data dir)")
    parser.add_argument("--timezone", metavar="TZ", help="default timezone of jobs, e.g. Europe/Paris")
    parser.add_argument("--workers", type=int, metavar="N", help="threads that run jobs")
    parser.add_argument("--log-dir", metavar="DIR", help="directory of carnation.log")
    parser.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--allowed-hosts", metavar="HOSTS", help="comma-separated hosts that may execute jobs")
    parser.add_argument("--headless", action="store_true", help="run the scheduler as a daemon, without the console")
    parser.add_argument("--http", metavar="[HOST:]PORT",
                        help="also serve the Flask-APScheduler-compatible HTTP API (host default 127.0.0.1; "
                        "needs a user: see `carnation users add`)")
    parser.add_argument("--http-insecure-no-auth", action="store_true",
                        help="DANGEROUS: serve the HTTP API WITHOUT AUTHENTICATION (anyone who can connect can run "
                        "commands as this user); also allows a non-loopback --http address without auth")
    parser.add_argument("--theme", help="console theme (a Textual theme name)")

    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    jobs = sub.add_parser("jobs", help="list, add, pause, resume, run or remove jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    p = jobs_sub.add_parser("list", help="list jobs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = jobs_sub.add_parser("add", help="add a job from JSON (a file, '-' for stdin, or inline)")
    p.add_argument("source", help="JSON text, a .json file, or - for stdin (our shape or Flask-APScheduler's)")
    p = jobs_sub.add_parser("update", help="change fields of a job from JSON")
    p.add_argument("job_id")
    p.add_argument("source", help="JSON object of fields to change")
    for action in ("pause", "resume", "run", "remove", "show"):
        p = jobs_sub.add_parser(action, help=f"{action} a job")
        p.add_argument("job_id")

    p = sub.add_parser("history", help="runs of a job (or of all jobs), newest first")
    p.add_argument("job_id", nargs="?")
    p.add_argument("--page", type=int, default=1)
    p.add_argument("--per-page", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("status", help="who executes, job counts, errors")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("export", help="write every job as JSON")
    p.add_argument("file", nargs="?", default="-")
    p = sub.add_parser("import", help="add or replace jobs from an export")
    p.add_argument("file")

    users = sub.add_parser("users", help="users of the HTTP API (passwords are stored argon2-hashed)")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    for action, text in (("add", "add a user (asks for the password)"), ("passwd", "change a user's password")):
        p = users_sub.add_parser(action, help=text)
        p.add_argument("username")
        p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p = users_sub.add_parser("remove", help="remove a user (their tokens stop working at once)")
    p.add_argument("username")
    p = users_sub.add_parser("list", help="list users")
    p.add_argument("--json", action="store_true")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        db_url=args.db_url,
        timezone=args.timezone,
        workers=args.workers,
        log_dir=args.log_dir,
        log_level=args.log_level,
        allowed_hosts=args.allowed_hosts,
    )


def _read_json(source: str) -> Any:
    if source == "-":
        text = sys.stdin.read()
    elif source.lstrip().startswith(("{", "[")):
        text = source
    else:
        text = Path(source).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"not valid JSON: {exc}", field="json") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def _print_json(data: Any) -> None:
    print(json.dumps(data, default=_json_default, indent=2))


def run_headless(settings: Settings, http: str | None = None, insecure_no_auth: bool = False) -> int:
    from .console import Console
    from .engine import Engine
    from .logs import setup_logging

    log_file = setup_logging(settings.log_dir, settings.log_level, stderr=True)
    engine = Engine(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    engine.start()
    log.info("carnation headless on %s (%s), log file %s", engine.store.url and Console(engine).status().database,
             "executing" if engine.executing else "standing by", log_file)
    server = None
    try:
        if http:
            from .api.server import serve_in_thread  # optional extra: fastapi + uvicorn

            server = serve_in_thread(Console(engine), http, settings, insecure_no_auth=insecure_no_auth)
        while not stop.wait(1.0):
            pass
    finally:
        if server is not None:
            server.stop()
        finished = engine.stop()
        log.info("stopped%s", "" if finished else " (some runs were still going)")
    return 0


def run_users(args: argparse.Namespace, settings: Settings) -> int:
    """`carnation users …`: needs only the store, not an engine."""
    from .api.auth import UserAdmin  # optional extra: argon2-cffi
    from .store import Store

    store = Store(settings.db_url)
    try:
        store.migrate()
        admin = UserAdmin(store)
        action = args.users_command
        if action == "list":
            users = admin.list()
            if args.json:
                _print_json([asdict(u) for u in users])
            else:
                for u in users:
                    print(f"{u.username}\t{u.created_at.isoformat(timespec='seconds')}")
            return 0
        if action == "remove":
            print(f"removed user {admin.remove(args.username)}")
            return 0
        password = _read_password(args.password_stdin)
        if action == "add":
            print(f"added user {admin.add(args.username, password)}")
        else:
            print(f"changed the password of {admin.set_password(args.username, password)}")
        return 0
    finally:
        store.close()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    import getpass

    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise SpecError("the two passwords differ", field="password")
    return first


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    from .console import Console
    from .engine import Engine

    engine = Engine(settings)
    engine.start(execute=False)
    console = Console(engine)
    try:
        return _dispatch(args, console)
    finally:
        engine.stop(timeout=0)


def _dispatch(args: argparse.Namespace, console: Any) -> int:
    command = args.command
    if command == "jobs":
        action = args.jobs_command
        if action == "list":
            views = console.list_jobs()
            if args.json:
                _print_json([_job_json(v) for v in views])
            else:
                for v in views:
                    nrt = v.next_run_time.isoformat(timespec="seconds") if v.next_run_time else "-"
                    print(f"{v.id}\t{v.state}\t{v.kind}\t{v.trigger_text}\t{nrt}")
            return 0
        if action == "show":
            _print_json(_job_json(console.get_job(args.job_id)))
            return 0
        if action == "add":
            view = console.add_job(_read_json(args.source))
            print(f"added {view.id}")
            return 0
        if action == "update":
            view = console.update_job(args.job_id, _read_json(args.source))
            print(f"updated {view.id}")
            return 0
        if action == "pause":
            console.pause_job(args.job_id)
        elif action == "resume":
            console.resume_job(args.job_id)
        elif action == "run":
            console.run_job(args.job_id)
        elif action == "remove":
            console.remove_job(args.job_id)
        print(f"{action} {args.job_id}: ok")
        return 0
    if command == "history":
        page = console.history(args.job_id, page=args.page, per_page=args.per_page)
        if args.json:
            _print_json({"items": [asdict(r) for r in page.items], "page": page.page, "per_page": page.per_page,
                         "total": page.total})
        else:
            for r in page.items:
                took = f"{r.duration:.3f}s" if r.duration is not None else "-"
                print(f"{r.scheduled_at.isoformat(timespec='seconds')}\t{r.job_id}\t{r.outcome}\t{took}\t{r.host}"
                      + (f"\t{r.exception}" if r.exception else ""))
            print(f"page {page.page} of {page.pages} ({page.total} runs)")
        return 0
    if command == "status":
        status = console.status()
        if args.json:
            _print_json(asdict(status))
        else:
            for key, value in asdict(status).items():
                print(f"{key}: {value}")
        return 0
    if command == "export":
        data = [v.spec.model_dump(mode="json") for v in console.list_jobs() if v.spec is not None]
        text = json.dumps(data, indent=2)
        if args.file == "-":
            print(text)
        else:
            Path(args.file).write_text(text + "\n", encoding="utf-8")
        return 0
    if command == "import":
        data = _read_json(args.file)
        if not isinstance(data, list):
            raise SpecError("an import file is a JSON list of jobs", field="json")
        count = console.import_jobs(data)
        print(f"imported {count} jobs")
        return 0
    raise SpecError(f"unknown command {command!r}", field="command")


def _job_json(view: Any) -> dict[str, Any]:
    return {
        "id": view.id,
        "name": view.name,
        "kind": view.kind,
        "state": view.state,
        "trigger": view.trigger_text,
        "next_run_time": view.next_run_time,
        "broken": view.broken,
        "last_outcome": view.last_run.outcome if view.last_run else None,
        "spec": view.spec,
    }


def main(argv: Sequence[str] | None = None, *, open_console: Any = None) -> int:
    """Entry point. `open_console(settings, args)` starts the TUI when no command and no --headless is given."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        if args.http_insecure_no_auth and not args.http:
            raise SpecError("--http-insecure-no-auth only makes sense with --http", field="http")
        if args.headless:
            return run_headless(settings, args.http, args.http_insecure_no_auth)
        if args.command and args.http:
            raise SpecError("--http serves the API from --headless or the console, not from a command", field="http")
        if args.command == "users":
            return run_users(args, settings)
        if args.command:
            return run_command(args, settings)
        if open_console is None:
            parser.error("no command given")
        return open_console(settings, args)
    except SpecError as exc:
        print(f"carnation: {exc.detail}", file=sys.stderr)  # not str(): Flask-APScheduler's bare sentence for some
        return 2
    except (ConflictingId, JobNotFound) as exc:
        print(f"carnation: {exc}", file=sys.stderr)
        return 2
    except (CarnationError, FileNotFoundError, OSError) as exc:
        print(f"carnation: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # pydantic-settings: a bad setting
        print(f"carnation: invalid setting: {exc}".splitlines()[0] + " " + " ".join(str(exc).splitlines()[1:3]),
              file=sys.stderr)
        return 2
