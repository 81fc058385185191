"""End to end: the real `carnation` command in a real terminal (tmux), driven by keystrokes, read from the screen.

Each test has its own tmux server (-L <unique socket>) killed in a finally, a fresh SQLite database and isolated
config/XDG directories. Waits poll the screen until the expected text shows (deadline 20 s), never a fixed sleep.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CARNATION = Path(sys.executable).parent / "carnation"
DEADLINE = 20.0
EXIT_MARK = "CARNATION-EXIT="
KEY_PACE = 0.15


def tmux_binary() -> str:
    path = shutil.which("tmux")
    if path is None:
        pytest.fail("tmux is not installed; the end-to-end tests need it (.ci/run installs it)")
    return path


def carnation_env(tmp_path: Path, term: str = "xterm-256color") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNATION_")}
    env.update(
        CARNATION_DB_URL=f"sqlite:///{tmp_path / 'c.db'}",
        CARNATION_LOG_DIR=str(tmp_path / "log"),
        CARNATION_CONFIG=str(tmp_path / "no-such-config.toml"),
        CARNATION_TIMEZONE="UTC",
        XDG_DATA_HOME=str(tmp_path / "xdg-data"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
        XDG_STATE_HOME=str(tmp_path / "xdg-state"),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        TERM=term,
    )
    env.pop("TMUX", None)  # a tmux inside the developer's tmux must still start its own server
    # pytest-xdist's workers set COLUMNS=80 LINES=24, and Textual takes them over the pane's real 100x30 size.
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return env


class Terminal:
    """One tmux server with one 100x30 pane running a command."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.tmux = tmux_binary()
        self.socket = f"carnation-e2e-{uuid.uuid4().hex[:10]}"
        self.env = env
        self.cwd = cwd

    def _run(self, *args: str) -> str:
        result = subprocess.run([self.tmux, "-L", self.socket, *args], capture_output=True, text=True,
                                env=self.env, timeout=10)
        if result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def start(self, argv: list[str], width: int = 100, height: int = 30) -> None:
        # The shell stays after carnation exits, so its exit code and the restored screen can be read.
        command = f"cd {shlex.quote(str(self.cwd))}; {shlex.join(argv)}; echo {EXIT_MARK}$?; sleep 600"
        self._run("new-session", "-d", "-x", str(width), "-y", str(height), "sh", "-c", command)

    def keys(self, *keys: str) -> None:
        """tmux key names: "a", "Enter", "Escape", "C-s"."""
        for key in keys:
            self._run("send-keys", key)
            # Typing pace: keys that reach Textual in one read right after a focus change can be lost.
            time.sleep(KEY_PACE)

    def type(self, text: str) -> None:
        self._run("send-keys", "-l", text)
        time.sleep(KEY_PACE)

    def type_when_focused(self, text: str, shown: Callable[[str], object]) -> None:
        """Type into a dialog that is still mounting: keys sent before its input has the focus are lost, so
        send again until the screen shows them."""
        for _ in range(5):
            self.type(text)
            try:
                self.wait(shown, f"{text!r} to show", timeout=2)
                return
            except AssertionError:
                continue
        raise AssertionError(f"{text!r} never showed; the screen:\n{self.screen()}")

    def screen(self) -> str:
        return self._run("capture-pane", "-p")

    def flags(self) -> str:
        return self._run("display", "-p", "#{alternate_on} #{cursor_flag} #{mouse_any_flag}").strip()

    def wait(self, condition: Callable[[str], object] | str, what: str = "", timeout: float = DEADLINE) -> str:
        check = (lambda screen: condition in screen) if isinstance(condition, str) else condition
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what or condition!r}; the screen:\n{screen}")

    def exit_code(self) -> int:
        screen = self.wait(EXIT_MARK, "carnation to exit")
        return int(screen.split(EXIT_MARK, 1)[1].split()[0])

    def kill(self) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(carnation_env(tmp_path), tmp_path)
    try:
        yield term
    finally:
        term.kill()


def row_of(screen: str, job_id: str) -> str:
    return next((line for line in screen.splitlines() if line.startswith(job_id + " ")), "")


def test_add_watch_pause_delete_quit(terminal: Terminal) -> None:
    assert CARNATION.exists(), f"{CARNATION} is missing: install the project into the venv"
    terminal.start([str(CARNATION)])
    terminal.wait("No jobs yet", "the empty jobs table")
    terminal.wait("● executing", "the status bar")

    # Add a job through the form: a cron job firing every 2 seconds (6 fields, seconds first).
    terminal.keys("a")
    terminal.wait("Add job", "the job form")
    terminal.type_when_focused("t", lambda s: "Id                t " in s)
    terminal.type("icker")
    terminal.wait(lambda s: "Id                ticker" in s, "the id typed")
    terminal.keys("Tab")
    terminal.type("Ticker job")
    terminal.wait("Ticker job", "the name typed")
    terminal.keys("Tab", "Tab")  # past Kind (python stays)
    terminal.type("time:time")
    terminal.wait("time:time", "the target typed")
    terminal.keys(*["Tab"] * 6)  # Args, Kwargs, Timeout, Trigger (cron stays), Cron as, then Expression
    terminal.type("*/2 * * * * *")
    terminal.wait("Every 2 seconds", "the form's description of the cron expression")
    terminal.keys("C-s")

    # In the table, described in words, with its next run; then its runs arrive.
    screen = terminal.wait(lambda s: row_of(s, "ticker"), "the new row")
    row = row_of(screen, "ticker")
    assert "Ticker job" in row and "Every 2 seconds" in row and "scheduled" in row
    assert " in " in f" {row} " or " now " in row, row
    screen = terminal.wait(lambda s: " ok " in row_of(s, "ticker"), "the last outcome in the row")
    assert "next 20" in screen and "UTC" in screen  # the detail line: absolute time, in the job's timezone
    terminal.wait(lambda s: "ticker executed" in s, "the runs in the event log")

    # The history screen lists the runs; Enter shows one; Esc twice comes back.
    terminal.keys("h")
    screen = terminal.wait(lambda s: "History of ticker" in s and "success" in s, "the history screen")
    terminal.keys("Enter")
    terminal.wait("returned", "a run's detail")
    terminal.keys("Escape")
    terminal.wait(lambda s: "History of ticker" in s and "returned" not in s, "back to the history")
    terminal.keys("Escape")
    terminal.wait(lambda s: row_of(s, "ticker"), "back to the jobs")

    # Pause: the row says so and the runs stop.
    terminal.keys("p")
    terminal.wait(lambda s: row_of(s, "ticker").rstrip().endswith("paused"), "the paused state")
    terminal.wait("ticker paused", "the paused event in the log")

    # Delete, confirming in the dialog.
    terminal.keys("d")
    terminal.wait("Delete job ticker?", "the confirm dialog")
    terminal.keys("y")
    terminal.wait(lambda s: not row_of(s, "ticker") and "No jobs yet" in s, "the row to go")

    # Quit: the process ends, cleanly, and the terminal is as it was.
    terminal.keys("q")
    assert terminal.exit_code() == 0
    assert terminal.flags() == "0 1 0", "alternate screen off, cursor shown, mouse reporting off"
    assert "Traceback" not in terminal.screen()


def test_sixteen_colour_terminal_and_a_job_added_from_the_cli(tmp_path: Path) -> None:
    env = carnation_env(tmp_path, term="xterm")
    job = '{"id": "nightly", "kind": "shell", "target": "true", "trigger": {"type": "cron", "expression": "0 3 * * *"}}'
    added = subprocess.run([str(CARNATION), "jobs", "add", job], env=env, capture_output=True, text=True,
                           timeout=60)
    assert added.returncode == 0, added.stderr
    terminal = Terminal(env, tmp_path)
    try:
        terminal.start([str(CARNATION)])
        screen = terminal.wait(lambda s: row_of(s, "nightly"), "the job added by the CLI")
        assert "At 03:00" in row_of(screen, "nightly")
        terminal.keys("?")
        terminal.wait("Keys — Esc closes", "the help screen")
        terminal.keys("Escape")
        terminal.wait(lambda s: "Keys — Esc closes" not in s, "help to close")
        terminal.keys("q")
        assert terminal.exit_code() == 0
        assert terminal.flags() == "0 1 0"
    finally:
        terminal.kill()


def test_unknown_theme_is_refused(terminal: Terminal) -> None:
    terminal.start([str(CARNATION), "--theme", "no-such-theme"])
    assert terminal.exit_code() == 2
    screen = terminal.screen()
    assert "unknown theme 'no-such-theme'" in screen and "nord" in screen


def test_no_tty_exits_2_pointing_at_headless(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(["bash", "-o", "pipefail", "-c", f"{shlex.quote(str(CARNATION))} < /dev/null | cat"],
                            env=carnation_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--headless" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 15, "it must not hang"
    # Only stdout piped (cron mails it, CI logs it) is refused the same way.
    result = subprocess.run(["bash", "-o", "pipefail", "-c", f"{shlex.quote(str(CARNATION))} | cat"],
                            env=carnation_env(tmp_path), capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "--headless" in result.stderr
