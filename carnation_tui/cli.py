"""`carnation`: the scripting CLI and `--headless` come from scheduler_core; with no command it opens the console.

Textual is imported only once a console is really wanted, so `carnation jobs list` stays quick and works without
a terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scheduler_core import cli as core_cli
from scheduler_core.config import Settings

NO_TTY = ("carnation: the console needs a terminal (stdin and stdout are not a TTY); "
          "to run the scheduler without it, use `carnation --headless`")


def open_console(settings: Settings, args: argparse.Namespace) -> int:
    # Piped, cron, CI: a full-screen app would hang or garble its output, so refuse in one clear line.
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(NO_TTY, file=sys.stderr)
        return 2
    from .app import run_console

    return run_console(settings, args)


def main(argv: Sequence[str] | None = None) -> int:
    return core_cli.main(argv, open_console=open_console)


if __name__ == "__main__":
    sys.exit(main())
