"""python jobs: call `module:function` (or `module:obj.attr`) with the spec's args and kwargs."""

from __future__ import annotations

import logging
import threading
import traceback
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from apscheduler.util import ref_to_obj

from ..errors import UnresolvableReference
from . import RETURN_VALUE_CHARS, JobFailed, RunResult

if TYPE_CHECKING:
    from ..spec import JobSpec

log = logging.getLogger(__name__)


def resolve(ref: str) -> Callable[..., Any]:
    """The callable `ref` ("module:func" or "module:obj.attr") names.

    Raises UnresolvableReference with Flask-APScheduler's sentences, e.g.
    "Error resolving reference app.jobs:job6: error looking up object" (module imported, attribute missing) or
    "...: could not import module" (ImportError), or a reason when the module fails otherwise or the object
    is not callable.
    """
    try:
        obj = ref_to_obj(ref)
    except LookupError as exc:
        # Reuse APScheduler's own detail so the wording cannot drift from what Flask-APScheduler clients see.
        prefix = f"Error resolving reference {ref}: "
        message = str(exc)
        raise UnresolvableReference(ref, message.removeprefix(prefix)) from exc
    except ValueError as exc:
        raise UnresolvableReference(ref, "not a 'module:function' reference") from exc
    except Exception as exc:
        # A module that raises (or has a syntax error) while importing; ref_to_obj lets these through.
        raise UnresolvableReference(ref, f"could not import module ({type(exc).__name__}: {exc})") from exc
    if not callable(obj):
        raise UnresolvableReference(ref, f"object of type {type(obj).__name__} is not callable")
    return obj


@lru_cache(maxsize=4096)
def _resolved(ref: str) -> Callable[..., Any]:
    # Once imported, a module stays in sys.modules: looking the target up again on every run only costs time
    # (failures are not cached, so a reference that starts resolving after a deploy is picked up).
    return resolve(ref)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Outcome:
    """What the target did: returned `value`, or raised (`error` is set)."""

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.traceback: str | None = None


def _invoke(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], outcome: _Outcome) -> None:
    try:
        outcome.value = func(*args, **kwargs)
    except (Exception, SystemExit) as exc:
        # A job's sys.exit() must fail the run, not the worker thread. Drop this frame from the traceback: users
        # want their own code's frames.
        outcome.error = exc
        outcome.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))


def run(spec: JobSpec, result: RunResult) -> None:
    """Call the target; fill `result.return_value` (its repr, truncated) or raise JobFailed.

    With spec.timeout the call runs in a daemon thread and is abandoned (still running; Python threads cannot be
    killed) once the timeout passes, so a hung job does not hold its max_instances slot forever. Without one it
    runs in the calling thread.
    """
    try:
        func = _resolved(spec.target)
    except UnresolvableReference as exc:
        # The module or function can vanish after the job was stored (a deploy); that is this run's failure.
        raise JobFailed(str(exc), result) from exc
    args, kwargs = list(spec.args), dict(spec.kwargs)
    outcome = _Outcome()
    if spec.timeout is None:
        _invoke(func, args, kwargs, outcome)
    else:
        done = threading.Event()
        abandoned = threading.Event()

        def target() -> None:
            try:
                _invoke(func, args, kwargs, outcome)
            finally:
                done.set()
                if abandoned.is_set():
                    log.info("abandoned run of job %s (%s) has finished", spec.id, spec.target)

        thread = threading.Thread(target=target, name=f"carnation-job-{spec.id}", daemon=True)
        thread.start()
        if not done.wait(spec.timeout):
            abandoned.set()
            log.warning(
                "job %s (%s) timed out after %g s; its thread is abandoned and may keep running",
                spec.id, spec.target, spec.timeout,
            )
            raise JobFailed(f"timed out after {spec.timeout:g} s", result, timed_out=True)
    if outcome.error is not None:
        raise JobFailed(_describe(outcome.error), result, traceback=outcome.traceback)
    result.return_value = _truncated_repr(outcome.value)


def _truncated_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        # The job succeeded; a broken __repr__ should not turn that into a failure.
        text = f"<unrepresentable {type(value).__name__}: {_describe(exc)}>"
    if len(text) > RETURN_VALUE_CHARS:
        text = text[: RETURN_VALUE_CHARS - 1] + "…"
    return text
