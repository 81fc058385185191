"""shell jobs: run a command line with /bin/sh -c, capturing stdout and stderr together."""

from __future__ import annotations

import json
import logging
import os
import selectors
import shlex
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

from . import OUTPUT_TAIL_CHARS, JobFailed, RunResult, current_run

if TYPE_CHECKING:
    from ..spec import JobSpec

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
# Seconds between SIGTERM and SIGKILL on a timeout: enough for a well-behaved job to clean up.
KILL_GRACE = 2.0
# Seconds to keep reading after the shell itself exited, for a background child still holding the output pipe.
DRAIN_GRACE = 1.0
# utf-8 needs at most 4 bytes a character; the extra bytes absorb one character cut in half at the front.
_TAIL_BYTES = OUTPUT_TAIL_CHARS * 4 + 4
_POLL = 0.05


def _env_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def command_line(spec: JobSpec) -> str:
    """The line handed to `/bin/sh -c`: spec.target, then each of spec.args shell-quoted (shlex.quote)."""
    if not spec.args:
        return spec.target
    return " ".join([spec.target, *(shlex.quote(_env_value(arg)) for arg in spec.args)])


def environment(spec: JobSpec) -> dict[str, str]:
    """This process's environment plus spec.kwargs; non-string values are JSON-encoded (3 -> "3", true -> "true").
    CARNATION_JOB_ID and CARNATION_SCHEDULED_AT (ISO 8601) say which run this is."""
    env = {**os.environ, **{str(k): _env_value(v) for k, v in spec.kwargs.items()}, "CARNATION_JOB_ID": spec.id}
    run = current_run()
    if run is not None:
        env["CARNATION_SCHEDULED_AT"] = run[1].isoformat()
    return env


class _Tail:
    """The last _TAIL_BYTES bytes written, so a chatty job cannot fill memory."""

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > _TAIL_BYTES:
            del self.data[:-_TAIL_BYTES]

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return text[-OUTPUT_TAIL_CHARS:]


def _read_until(fd: int, selector: selectors.BaseSelector, out: _Tail, deadline: float | None,
                proc: subprocess.Popen[bytes] | None) -> bool:
    """Read `fd` into `out` until EOF (True), `deadline` passes or, when `proc` is given, it exits (False)."""
    while True:
        if proc is not None and proc.poll() is not None:
            return False
        wait = _POLL if proc is not None else None
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            wait = remaining if wait is None else min(wait, remaining)
        if selector.select(wait):
            chunk = os.read(fd, 65536)
            if not chunk:
                return True
            out.add(chunk)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # killpg also succeeds for zombies, and a killed grandchild re-parented to an init that never reaps (common in
    # containers) stays one for good; /proc tells them apart. Without /proc, assume alive and let SIGKILL settle it.
    try:
        entries = os.scandir("/proc")
    except OSError:
        return True
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # exited meanwhile
            # Fields after the parenthesised command name (which may itself contain ") "): state ppid pgrp ...
            fields = stat.rsplit(b")", 1)[-1].split()
            if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the job's whole process group, then SIGKILL whatever is left after KILL_GRACE."""
    # start_new_session made the shell a group leader, so its pid is the group id; the group id cannot be
    # reused while any member lives, so signalling it never hits a stranger.
    pgid = proc.pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline:
        proc.poll()  # reap the shell, or its zombie keeps the group alive
        if not _group_alive(pgid):
            return
        time.sleep(_POLL)
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def run(spec: JobSpec, result: RunResult) -> None:
    """Run `command_line(spec)` with `/bin/sh -c` in a new session; fill output and exit_code or raise JobFailed.

    - spec.args are appended to spec.target as extra arguments, each shell-quoted with shlex.quote, so
      target "echo" with args ["a b", 3] runs `echo 'a b' 3`.
    - spec.kwargs become extra environment variables (strings as is, other values JSON-encoded).
    - stdout and stderr go to one pipe; result.output is its last OUTPUT_TAIL_CHARS characters (utf-8,
      undecodable bytes replaced).
    - exit code 0 is success; anything else raises JobFailed("exit code N").
    - spec.timeout (none by default): the whole process group gets SIGTERM, then SIGKILL after KILL_GRACE s;
      JobFailed(timed_out=True) with exit_code None and the output captured so far.
    - The run ends when the shell exits. A background child still holding the output pipe gets DRAIN_GRACE s
      more to finish writing; after that it is left running and its later output is not captured.
    """
    try:
        proc = subprocess.Popen(
            [SHELL, "-c", command_line(spec)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environment(spec),
            start_new_session=True,
            bufsize=0,
        )
    except (OSError, ValueError) as exc:
        # ValueError: an environment variable name the OS refuses (empty, or containing "=" or NUL).
        raise JobFailed(f"could not start {SHELL}: {exc}", result) from exc

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = _Tail()
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    timed_out = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            eof = _read_until(fd, selector, out, deadline, proc)
            if not eof and proc.poll() is not None:
                # The shell exited; what is already in the pipe, or written shortly, still belongs to this run.
                # Not bounded by the timeout: the run is over, this only collects its output.
                _read_until(fd, selector, out, time.monotonic() + DRAIN_GRACE, None)
            if proc.poll() is None:
                # The shell runs on: it closed its output early (wait within the timeout), or time is up.
                try:
                    proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                timed_out = True
                _kill_tree(proc)
                # Whatever the job wrote before it died is still worth showing.
                _read_until(fd, selector, out, time.monotonic() + 0.2, None)
    except BaseException:
        if proc.poll() is None:
            _kill_tree(proc)
        raise
    finally:
        proc.stdout.close()

    result.output = out.text()
    if timed_out:
        log.warning("shell job %s timed out after %g s; its process group was killed", spec.id, spec.timeout)
        raise JobFailed(f"timed out after {spec.timeout:g} s", result, timed_out=True)
    code = proc.returncode
    result.exit_code = code
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        raise JobFailed(f"killed by signal {name}", result)
    if code != 0:
        raise JobFailed(f"exit code {code}", result)
