"""The three job kinds, run for real: python targets, /bin/sh processes and a local HTTP server."""

from __future__ import annotations

import http.server
import pickle
import socket
import threading
import time
from datetime import timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from apscheduler.util import ref_to_obj

from scheduler_core.errors import SpecError, UnresolvableReference
from scheduler_core.kinds import OUTPUT_TAIL_CHARS, RETURN_VALUE_CHARS, JobFailed, RunResult, execute, prepare
from scheduler_core.kinds import shell as shell_kind
from scheduler_core.kinds.python import resolve
from scheduler_core.spec import JobSpec


def py(target: str, **fields: Any) -> JobSpec:
    return JobSpec(id="job", kind="python", target=f"tests.sample_jobs:{target}", **fields)


def sh(command: str, **fields: Any) -> JobSpec:
    return JobSpec(id="job", kind="shell", target=command, **fields)


def failure(spec: JobSpec) -> JobFailed:
    with pytest.raises(JobFailed) as info:
        execute(spec)
    return info.value


def assert_timed(result: RunResult) -> None:
    assert result.started_at.tzinfo is timezone.utc
    assert result.finished_at.tzinfo is timezone.utc
    assert result.finished_at >= result.started_at


# --- python -----------------------------------------------------------------------------------------------------


def test_python_success_with_args_and_kwargs() -> None:
    result = execute(py("add", args=[2, 3]))
    assert result.return_value == "5"
    assert_timed(result)

    result = execute(py("echo", args=[1, "x"], kwargs={"k": [True, None]}))
    assert result.return_value == repr({"args": [1, "x"], "kwargs": {"k": [True, None]}})
    assert result.exit_code is None and result.http_status is None and result.output is None


def test_python_dotted_attribute_reference() -> None:
    assert execute(py("Namespace.double", args=[21])).return_value == "42"


def test_python_return_value_is_truncated() -> None:
    result = execute(py("echo", args=["x" * 10_000]))
    assert result.return_value is not None
    assert len(result.return_value) == RETURN_VALUE_CHARS


def test_python_without_timeout_runs_in_calling_thread() -> None:
    assert execute(py("thread_name")).return_value == repr(threading.current_thread().name)


def test_python_exception_carries_message_and_own_traceback() -> None:
    exc = failure(py("fail", args=["broken widget"]))
    assert str(exc) == "ValueError: broken widget"
    assert not exc.timed_out
    assert exc.traceback is not None
    assert "raise ValueError(message)" in exc.traceback
    assert "sample_jobs.py" in exc.traceback
    assert exc.traceback.rstrip().endswith("ValueError: broken widget")
    # The target's traceback, not carnation's plumbing.
    assert "_invoke" not in exc.traceback
    assert exc.result.return_value is None
    assert_timed(exc.result)


def test_python_exception_in_thread_mode_is_reported_the_same() -> None:
    exc = failure(py("fail", timeout=5))
    assert str(exc) == "ValueError: boom"
    assert exc.traceback is not None and "raise ValueError(message)" in exc.traceback
    assert not exc.timed_out


def test_python_system_exit_fails_the_run_not_the_worker() -> None:
    exc = failure(py("exit_job", args=[3]))
    assert str(exc) == "SystemExit: 3"


def test_resolve_messages_match_flask_apscheduler() -> None:
    ref = "tests.sample_jobs:no_such_job"
    with pytest.raises(UnresolvableReference) as info:
        resolve(ref)
    assert str(info.value) == f"Error resolving reference {ref}: error looking up object"
    with pytest.raises(LookupError) as aps:
        ref_to_obj(ref)
    assert str(info.value) == str(aps.value)

    ref = "tests.no_such_module:job"
    with pytest.raises(UnresolvableReference) as info:
        resolve(ref)
    assert str(info.value) == f"Error resolving reference {ref}: could not import module"
    with pytest.raises(LookupError) as aps:
        ref_to_obj(ref)
    assert str(info.value) == str(aps.value)

    # Still a SpecError on the target field, so forms and the API show it next to the field.
    assert isinstance(info.value, SpecError)
    assert info.value.fields == ["target"]


def test_resolve_rejects_non_callable() -> None:
    with pytest.raises(UnresolvableReference) as info:
        resolve("tests.sample_jobs:NOT_CALLABLE")
    assert str(info.value).startswith("Error resolving reference tests.sample_jobs:NOT_CALLABLE: ")
    assert "not callable" in str(info.value)


def test_resolve_returns_the_callable() -> None:
    from tests import sample_jobs

    assert resolve("tests.sample_jobs:add") is sample_jobs.add


def test_prepare_resolves_python_targets_only() -> None:
    prepare(py("add"))
    with pytest.raises(UnresolvableReference, match="error looking up object"):
        prepare(py("missing"))
    prepare(sh("exit 1"))
    prepare(JobSpec(id="h", kind="http", target="http://127.0.0.1:9/"))


def test_python_unresolvable_at_run_time_fails_the_run() -> None:
    exc = failure(py("missing"))
    assert str(exc) == "Error resolving reference tests.sample_jobs:missing: error looking up object"


def test_python_timeout_frees_the_caller() -> None:
    began = time.monotonic()
    exc = failure(py("sleep", args=[5], timeout=0.3))
    elapsed = time.monotonic() - began
    assert elapsed < 0.3 + 1
    assert exc.timed_out
    assert str(exc) == "timed out after 0.3 s"
    assert exc.result.duration >= 0.3
    assert exc.result.return_value is None


def test_python_within_timeout_succeeds() -> None:
    assert execute(py("sleep", args=[0.05], timeout=5)).return_value == "0.05"


# --- shell ------------------------------------------------------------------------------------------------------


def _dead(pid: int) -> bool:
    # A killed grandchild is reparented; in a container nothing may reap it, so a zombie counts as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_dead(pid: int, within: float = 1.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _dead(pid):
            return True
        time.sleep(0.02)
    return _dead(pid)


def test_shell_success() -> None:
    result = execute(sh("echo hi"))
    assert result.output == "hi\n"
    assert result.exit_code == 0
    assert result.return_value is None
    assert_timed(result)


def test_shell_nonzero_exit_fails() -> None:
    exc = failure(sh("echo partial; exit 3"))
    assert str(exc) == "exit code 3"
    assert exc.result.exit_code == 3
    assert exc.result.output == "partial\n"
    assert not exc.timed_out


def test_shell_stderr_is_merged() -> None:
    result = execute(sh("echo out; echo err >&2; echo out2"))
    assert result.output == "out\nerr\nout2\n"


def test_shell_output_keeps_the_tail() -> None:
    result = execute(sh("yes | head -c 100000; printf END"))
    assert result.output is not None
    assert len(result.output) == OUTPUT_TAIL_CHARS
    assert result.output.endswith("y\nEND")


def test_shell_undecodable_bytes_are_replaced() -> None:
    assert execute(sh(r"printf '\377ok'")).output == "\ufffdok"


def test_shell_args_are_quoted_and_kwargs_are_environment() -> None:
    result = execute(sh("printf '%s|'", args=["a b", "$HOME", "it's", 3]))
    assert result.output == "a b|$HOME|it's|3|"

    result = execute(sh('echo "$GREETING $COUNT $FLAG"', kwargs={"GREETING": "hello", "COUNT": 3, "FLAG": True}))
    assert result.output == "hello 3 true\n"


def test_shell_timeout_kills_the_process_quickly(tmp_path: Path) -> None:
    began = time.monotonic()
    exc = failure(sh("echo started; sleep 30", timeout=0.3))
    assert time.monotonic() - began < 0.3 + 1
    assert exc.timed_out
    assert str(exc) == "timed out after 0.3 s"
    assert exc.result.exit_code is None
    assert exc.result.output == "started\n"


def test_shell_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    began = time.monotonic()
    exc = failure(sh(f"sh -c 'sleep 30 & echo $! > {pidfile}; wait'", timeout=0.3))
    assert time.monotonic() - began < 0.3 + 1
    assert exc.timed_out
    assert _wait_dead(int(pidfile.read_text()))


def test_shell_timeout_escalates_to_sigkill(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shell_kind, "KILL_GRACE", 0.2)
    pidfile = tmp_path / "pid"
    began = time.monotonic()
    # Ignored SIGTERM is inherited by the sleep, so only SIGKILL ends either of them.
    exc = failure(sh(f"trap '' TERM; sleep 30 & echo $! > {pidfile}; wait", timeout=0.3))
    assert time.monotonic() - began < 0.3 + 0.2 + 1
    assert exc.timed_out
    assert _wait_dead(int(pidfile.read_text()))


def test_shell_run_ends_when_the_shell_exits_despite_a_background_child() -> None:
    began = time.monotonic()
    result = execute(sh("sleep 3 & echo early"))
    assert time.monotonic() - began < shell_kind.DRAIN_GRACE + 1
    assert result.output == "early\n"
    assert result.exit_code == 0


def test_shell_killed_by_signal() -> None:
    exc = failure(sh("kill -9 $$"))
    assert exc.result.exit_code == -9
    assert str(exc) == "killed by signal SIGKILL"


# --- http -------------------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(  # type: ignore[attr-defined]
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        path = self.path.split("?")[0]
        if path == "/slow":
            # Hangs until the test is over (the fixture releases it), far past any timeout a test sets.
            self.server.release.wait(10)  # type: ignore[attr-defined]
            self._reply(200, b"late")
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b".")
                self.wfile.flush()
                time.sleep(0.05)
        elif path == "/fail":
            self._reply(500, b"oops")
        elif path == "/big":
            self._reply(200, b"z" * 100_000 + b"END")
        elif path == "/latin1":
            self._reply(200, "caf\u00e9".encode("latin-1"), "text/plain; charset=iso-8859-1")
        else:
            self._reply(200, b"hello " + self.command.encode())

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Timeout tests hang up on purpose; the handler's broken pipe afterwards is expected, not news.
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[http.server.ThreadingHTTPServer]:
    # httpx honours proxy variables; a loopback request must not go through one.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []  # type: ignore[attr-defined]
    srv.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()  # type: ignore[attr-defined]
        srv.shutdown()
        srv.server_close()


def url(srv: http.server.ThreadingHTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def web(target: str, **fields: Any) -> JobSpec:
    return JobSpec(id="job", kind="http", target=target, **fields)


def test_http_get_success(server: http.server.ThreadingHTTPServer) -> None:
    result = execute(web(url(server, "/ok")))
    assert result.http_status == 200
    assert result.output == "hello GET"
    assert result.exit_code is None
    assert_timed(result)
    assert server.seen[0]["method"] == "GET"  # type: ignore[attr-defined]


def test_http_method_headers_and_body_arrive(server: http.server.ThreadingHTTPServer) -> None:
    result = execute(web(url(server, "/hook?x=1"), method="post", headers={"X-Token": "s3cret"}, body='{"a": "é"}'))
    assert result.http_status == 200
    assert result.output == "hello POST"
    seen = server.seen[0]  # type: ignore[attr-defined]
    assert seen["method"] == "POST"
    assert seen["path"] == "/hook?x=1"
    assert seen["headers"]["X-Token"] == "s3cret"
    assert seen["body"] == '{"a": "é"}'.encode()


def test_http_error_status_fails(server: http.server.ThreadingHTTPServer) -> None:
    exc = failure(web(url(server, "/fail"), method="DELETE"))
    assert str(exc) == "HTTP 500"
    assert exc.result.http_status == 500
    assert exc.result.output == "oops"
    assert not exc.timed_out
    assert_timed(exc.result)


def test_http_output_keeps_the_tail(server: http.server.ThreadingHTTPServer) -> None:
    result = execute(web(url(server, "/big")))
    assert result.output is not None
    assert len(result.output) == OUTPUT_TAIL_CHARS
    assert result.output.endswith("zEND")


def test_http_body_decoded_with_response_charset(server: http.server.ThreadingHTTPServer) -> None:
    assert execute(web(url(server, "/latin1"))).output == "café"


def test_http_head_has_empty_output(server: http.server.ThreadingHTTPServer) -> None:
    result = execute(web(url(server, "/ok"), method="HEAD"))
    assert result.http_status == 200
    assert result.output == ""


def test_http_timeout(server: http.server.ThreadingHTTPServer) -> None:
    began = time.monotonic()
    exc = failure(web(url(server, "/slow"), timeout=0.3))
    assert time.monotonic() - began < 0.3 + 1
    assert exc.timed_out
    assert str(exc).startswith("timed out after 0.3 s")
    assert exc.result.http_status is None


def test_http_timeout_bounds_a_trickling_body(server: http.server.ThreadingHTTPServer) -> None:
    began = time.monotonic()
    exc = failure(web(url(server, "/trickle"), timeout=0.5))
    assert time.monotonic() - began < 0.5 + 1
    assert exc.timed_out
    assert exc.result.http_status == 200
    assert exc.result.output and set(exc.result.output) == {"."}


def test_http_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exc = failure(web(f"http://127.0.0.1:{port}/", timeout=2))
    assert not exc.timed_out
    assert str(exc).startswith("request failed: ConnectError")
    assert exc.result.http_status is None


# --- the result and failure objects -----------------------------------------------------------------------------


def test_job_failed_survives_pickling() -> None:
    exc = failure(py("fail"))
    copy = pickle.loads(pickle.dumps(exc))
    assert isinstance(copy, JobFailed)
    assert str(copy) == str(exc)
    assert copy.result == exc.result
    assert copy.traceback == exc.traceback
    assert copy.timed_out is False


def test_spec_round_trips_through_pickle_for_job_stores() -> None:
    spec = sh("echo hi", timeout=1)
    assert execute(pickle.loads(pickle.dumps(spec))).output == "hi\n"


def test_shell_job_knows_which_run_it_is() -> None:
    from datetime import datetime, timezone

    from scheduler_core.kinds import running

    spec = JobSpec(id="which", kind="shell", target='echo "$CARNATION_JOB_ID $CARNATION_SCHEDULED_AT"')
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with running("which", at):
        assert execute(spec).output == "which 2030-01-02T03:04:05+00:00\n"


def test_current_run_is_set_inside_running_only() -> None:
    from datetime import datetime

    from scheduler_core.kinds import current_run, running

    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert current_run() is None
    with running("r", at):
        assert current_run() == ("r", at)
        seen: list[Any] = []
        other = threading.Thread(target=lambda: seen.append(current_run()))
        other.start()
        other.join()
        assert seen == [None]  # per thread
    assert current_run() is None
    with pytest.raises(ValueError), running("r", at):
        raise ValueError
    assert current_run() is None


def test_history_rows_name_the_process_that_ran_them_after_fork() -> None:
    import os

    from scheduler_core.history import run_row

    assert run_row("p", 1.0, "success")["pid"] == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # report the row's pid and leave at once, without pytest's teardown
        os.write(write, str(run_row("p", 1.0, "success")["pid"] == os.getpid()).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    assert os.read(read, 10) == b"True"
    os.close(read)
