"""Errors the facade raises. Every one carries a message fit to show a user as is."""

from __future__ import annotations

from dataclasses import dataclass


def quoted(value: object, limit: int = 60) -> str:
    """A bad value as a message quotes it (repr), cut short: the message stays readable whatever was sent."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class CarnationError(Exception):
    """Base for every error carnation reports to a user."""


class SpecError(CarnationError, ValueError):
    """A job spec (or part of one) is invalid. Names each bad field and why."""

    def __init__(self, errors: list[FieldError] | FieldError | str, field: str = "spec") -> None:
        if isinstance(errors, str):
            errors = [FieldError(field, errors)]
        elif isinstance(errors, FieldError):
            errors = [errors]
        self.errors: list[FieldError] = list(errors)
        super().__init__(self.detail)

    @property
    def fields(self) -> list[str]:
        return [e.field for e in self.errors]

    @property
    def detail(self) -> str:
        """Every bad field and why, in one line (a subclass's str() may say less: UnresolvableReference)."""
        return "; ".join(str(e) for e in self.errors)


class UnresolvableReference(SpecError):
    """A python job's `module:func` cannot be resolved (Flask-APScheduler's wording)."""

    def __init__(self, ref: str, detail: str) -> None:
        self.ref = ref
        super().__init__(FieldError("target", f"Error resolving reference {ref}: {detail}"))
        # Flask-APScheduler clients match on this exact sentence.
        self.args = (f"Error resolving reference {ref}: {detail}",)

    def __str__(self) -> str:
        return self.args[0]


class JobNotFound(CarnationError, LookupError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"Job {job_id} not found.")


class ConflictingId(CarnationError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"Job identifier ({job_id}) conflicts with an existing job")


class NotLeader(CarnationError):
    """An operation needs the executing scheduler and this process is not it."""


class DatabaseUnavailable(CarnationError):
    """The database could not be reached; nothing was changed."""
