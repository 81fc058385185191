"""http jobs: one request to spec.target; status below 400 is success."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx

from . import OUTPUT_TAIL_CHARS, JobFailed, RunResult

if TYPE_CHECKING:
    from ..spec import JobSpec

DEFAULT_TIMEOUT = 30.0
# Bytes kept from the response body: enough for OUTPUT_TAIL_CHARS characters in any encoding up to 4 bytes each.
_TAIL_BYTES = OUTPUT_TAIL_CHARS * 4 + 4


def _decode(data: bytes, encoding: str | None) -> str:
    try:
        return data.decode(encoding or "utf-8", errors="replace")
    except LookupError:
        # A charset Python does not know; utf-8 is the best guess left.
        return data.decode("utf-8", errors="replace")


def run(spec: JobSpec, result: RunResult) -> None:
    """Send spec.method to spec.target with spec.headers and spec.body; fill http_status and output.

    The timeout (spec.timeout, else DEFAULT_TIMEOUT seconds) bounds connecting, each read and the whole body
    download. Redirects are not followed, so a 3xx counts as success. Status >= 400 raises JobFailed("HTTP N");
    a network error raises JobFailed naming it; a timeout raises JobFailed(timed_out=True). result.output is
    the last OUTPUT_TAIL_CHARS characters of the body; only that much of the body is ever held in memory.
    """
    timeout = spec.timeout if spec.timeout is not None else DEFAULT_TIMEOUT
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=timeout) as client:
            with client.stream(
                spec.method, spec.target, headers=spec.headers,
                content=spec.body.encode("utf-8") if spec.body is not None else None,
            ) as response:
                result.http_status = response.status_code
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > _TAIL_BYTES:
                        del body[:-_TAIL_BYTES]
                    # httpx's timeout is per read; a server trickling bytes must not stretch the run past it.
                    if time.monotonic() > deadline:
                        result.output = _decode(bytes(body), response.encoding)[-OUTPUT_TAIL_CHARS:]
                        raise JobFailed(f"timed out after {timeout:g} s reading the response", result,
                                        timed_out=True)
                result.output = _decode(bytes(body), response.encoding)[-OUTPUT_TAIL_CHARS:]
    except httpx.TimeoutException as exc:
        raise JobFailed(f"timed out after {timeout:g} s ({_what(exc)})", result, timed_out=True) from exc
    except httpx.HTTPError as exc:
        raise JobFailed(f"request failed: {_what(exc)}", result) from exc
    except httpx.InvalidURL as exc:
        raise JobFailed(f"invalid URL: {exc}", result) from exc
    if result.http_status is not None and result.http_status >= 400:
        raise JobFailed(f"HTTP {result.http_status}", result)


def _what(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
