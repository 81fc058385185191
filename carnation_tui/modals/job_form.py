"""The add / edit job form: every JobSpec field, only the chosen kind's and trigger's shown, checked as typed.

The form never decides what is valid: it turns the widgets into a spec dict and asks scheduler_core (parse_spec
while typing; parse_spec then Console.add_job / update_job on Save, which also resolves python targets and refuses
duplicate ids). Errors come back named by field and are shown beside that field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Input, Label, Select, Static, TextArea

from scheduler_core.console import Console
from scheduler_core.describe import describe_trigger
from scheduler_core.errors import CarnationError, ConflictingId, FieldError, JobNotFound, SpecError
from scheduler_core.spec import (
    HTTP_METHODS,
    INTERVAL_UNITS,
    JOB_KINDS,
    CronTriggerSpec,
    DateTriggerSpec,
    IntervalTriggerSpec,
    JobSpec,
    parse_spec,
)

from ..widgets.cron_editor import (
    PREVIEW_COUNT,
    CronEditor,
    FieldMessage,
    SchedulePreview,
    check_trigger,
    field_grid_css,
    place_message,
)

TRIGGER_TYPES = ("cron", "interval", "date")

# Rows that belong to some kinds only. Shell jobs use args too (appended, shell-quoted) and kwargs (environment).
_KIND_ROWS: dict[str, tuple[str, ...]] = {
    "args": ("python", "shell"),
    "kwargs": ("python", "shell"),
    "method": ("http",),
    "headers": ("http",),
    "body": ("http",),
}
_TARGET_LABEL = {"python": "Target", "shell": "Command", "http": "URL"}
_TARGET_HINT = {"python": "package.module:function", "shell": "echo hello", "http": "https://example.com/hook"}
_ARGS_LABEL = {"python": "Args (JSON)", "shell": "Extra args (JSON)"}
_KWARGS_LABEL = {"python": "Kwargs (JSON)", "shell": "Env vars (JSON)"}
_COALESCE = (("scheduler default", "default"), ("yes: run once", "yes"), ("no: run each", "no"))

# pydantic's wording for two common slips, in the operator's words (better done in scheduler_core; see the report).
_FRIENDLIER = {
    "String should have at least 1 character": "is required",
    r"String should match pattern '^[^\s/?#]+$'": "may not contain spaces, /, ? or #",
    "Input should be a valid integer, unable to parse string as an integer": "must be a whole number",
    "Input should be a valid number, unable to parse string as a number": "must be a number",
}


def _friendly(errors: list[FieldError]) -> list[FieldError]:
    return [FieldError(e.field, _FRIENDLIER.get(e.reason, e.reason)) for e in errors]


def _text(value: Any) -> str:
    """A stored value as the form shows it; blank for None."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


@cache
def _timezone_names() -> list[str]:
    return sorted(available_timezones())


class _FormBody(VerticalScroll, can_focus=False):
    """Scrolls to whatever field has focus; not a Tab stop itself."""


class JobFormScreen(ModalScreen[str | None]):
    """Add a job (spec None) or edit one (the id is then read-only).

    Saves through the console itself and dismisses with the saved job's id; Esc or Cancel dismiss with None and
    store nothing.
    """

    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True, id="job_form.save"),
        Binding("escape", "cancel", "Cancel", id="job_form.cancel"),
        # Priority: handled in key order. Otherwise Tab waits to bubble back from the focused input, and keys typed
        # ahead (fast typing, a paste, a slow SSH link) land in the field being left.
        Binding("tab", "app.focus_next", show=False, priority=True),
        Binding("shift+tab", "app.focus_previous", show=False, priority=True),
    ]

    DEFAULT_CSS = """
    JobFormScreen {
        align: center middle;
    }
    JobFormScreen #job-form {
        width: 100%;
        max-width: 100;
        height: 100%;
        max-height: 48;
        border: round $accent;
        border-title-align: left;
        background: $surface;
        padding: 0 1;
    }
    JobFormScreen #job-form-body {
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    JobFormScreen .field-grid > TextArea {
        height: 3;
    }
    JobFormScreen .form-section {
        color: $text-accent;
        text-style: bold;
        margin-top: 1;
    }
    JobFormScreen #job-form-summary {
        max-height: 3;
    }
    JobFormScreen #job-form-buttons {
        height: 1;
        margin-top: 1;
    }
    JobFormScreen #job-form-buttons Button {
        margin-right: 2;
    }
    JobFormScreen #job-form-keys {
        color: $text-muted;
        width: 1fr;
        text-align: right;
    }
    """ + field_grid_css("JobFormScreen")

    class _Saved(Message):
        def __init__(self, job_id: str) -> None:
            super().__init__()
            self.job_id = job_id

    class _SaveFailed(Message):
        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

    def __init__(
        self,
        console: Console,
        spec: JobSpec | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.console = console
        self.spec = spec
        self.errors: list[FieldError] = []
        # Found once on mount: every (debounced) keystroke reads all fields and sets all messages.
        self._fields: dict[str, Widget] = {}
        self._rows: dict[str, list[Widget]] = {}
        self._messages: dict[str, FieldMessage] = {}  # by id ("e-<key>"), made on first use
        self._initial: dict[str, Any] = {}
        self._show_all = False
        self._saving = False
        self._timer: Timer | None = None
        # Errors only the console finds (unresolvable target, duplicate id), kept while their field is unchanged.
        self._save_errors: list[tuple[FieldError, Any]] = []

    @property
    def editing(self) -> bool:
        return self.spec is not None

    # --- layout ---------------------------------------------------------------------------------------------
    @staticmethod
    def _row(key: str, label: str, widget: Widget) -> Iterator[Widget]:
        """Label and field of one row, for a `.field-grid`; `row-<key>` marks both (and the message, once made)."""
        row = f"row-{key}"
        yield Label(label, id=f"l-{key}", classes=row)
        widget.add_class(row)
        yield widget

    @staticmethod
    def _input(key: str, value: Any = None, placeholder: str = "", **kwargs: Any) -> Input:
        return Input(value=_text(value), placeholder=placeholder, compact=True, id=f"f-{key}", **kwargs)

    def compose(self) -> ComposeResult:
        spec = self.spec
        row, field = self._row, self._input
        kind = spec.kind if spec else "python"
        trig = spec.trigger if spec else None
        cron = trig if isinstance(trig, CronTriggerSpec) else None
        interval = trig if isinstance(trig, IntervalTriggerSpec) else None
        date = trig if isinstance(trig, DateTriggerSpec) else None
        coalesce = "default" if not spec or spec.coalesce is None else ("yes" if spec.coalesce else "no")

        with Vertical(id="job-form") as form:
            form.border_title = f"Edit job {spec.id}" if spec else "Add job"
            with _FormBody(id="job-form-body"):
                with Vertical(classes="field-grid"):
                    yield from row("id", "Id", field(
                        "id", spec.id if spec else "", "unique, no spaces", disabled=self.editing,
                        tooltip="The id of a stored job cannot change" if self.editing else None))
                    yield from row("name", "Name", field("name", spec.name if spec else None, "optional"))
                    yield from row("kind", "Kind", Select(
                        [(k, k) for k in JOB_KINDS], value=kind, allow_blank=False, compact=True, id="f-kind"))
                    yield from row("target", _TARGET_LABEL[kind], field(
                        "target", spec.target if spec else "", _TARGET_HINT[kind]))
                    yield from row("args", _ARGS_LABEL.get(kind, "Args (JSON)"), field(
                        "args", json.dumps(spec.args) if spec and spec.args else "", '[1, "two"]  (a JSON list)'))
                    yield from row("kwargs", _KWARGS_LABEL.get(kind, "Kwargs (JSON)"), field(
                        "kwargs", json.dumps(spec.kwargs) if spec and spec.kwargs else "",
                        '{"key": 1}  (a JSON object)'))
                    yield from row("method", "Method", Select(
                        [(m, m) for m in HTTP_METHODS], value=spec.method if spec else "GET", allow_blank=False,
                        compact=True, id="f-method"))
                    yield from row("headers", "Headers (JSON)", field(
                        "headers", json.dumps(spec.headers) if spec and spec.headers else "",
                        '{"Authorization": "Bearer …"}'))
                    yield from row("body", "Body", TextArea(
                        (spec.body or "") if spec else "", compact=True, id="f-body",
                        placeholder="request body (optional)"))
                    yield from row("timeout", "Timeout (s)", field(
                        "timeout", spec.timeout if spec else None, "none (http: the kind's default)"))

                yield Static("Schedule", classes="form-section")
                with Vertical(classes="field-grid"):
                    yield from row("trigger", "Trigger", Select(
                        [(t, t) for t in TRIGGER_TYPES], value=trig.type if trig else "cron", allow_blank=False,
                        compact=True, id="f-trigger"))
                yield CronEditor(cron, preview=self._preview_times, id="cron-editor")
                with Vertical(id="group-interval", classes="field-grid"):
                    for unit in INTERVAL_UNITS:
                        value = getattr(interval, unit) if interval else 0
                        yield from row(unit, unit.capitalize(), field(unit, value or None, "0"))
                with Vertical(id="group-date", classes="field-grid"):
                    yield from row("run_date", "Run date", field(
                        "run_date", date.run_date if date else None, "2026-01-31T09:30  (blank: when added)"))
                yield SchedulePreview(id="schedule-preview")
                with Vertical(classes="field-grid"):
                    yield from row("timezone", "Timezone", field(
                        "timezone", spec.timezone if spec else self.console.timezone,
                        f"{self.console.timezone} (the scheduler's)",
                        suggester=SuggestFromList(_timezone_names(), case_sensitive=False)))
                    yield from row("start_date", "Start date", field(
                        "start_date", spec.start_date if spec else None, "ISO date/time, optional"))
                    yield from row("end_date", "End date", field(
                        "end_date", spec.end_date if spec else None, "ISO date/time, optional"))

                yield Static("Running", classes="form-section")
                with Vertical(classes="field-grid"):
                    yield from row("misfire_grace_time", "Misfire grace (s)", field(
                        "misfire_grace_time", spec.misfire_grace_time if spec else None, "scheduler default"))
                    yield from row("coalesce", "Coalesce", Select(
                        _COALESCE, value=coalesce, allow_blank=False, compact=True, id="f-coalesce"))
                    yield from row("max_instances", "Max instances", field(
                        "max_instances", spec.max_instances if spec else 1, "1"))
                    yield from row("jitter", "Jitter (s)", field("jitter", spec.jitter if spec else None, "none"))
                    yield from row("paused", "Paused", Checkbox(
                        "store paused", value=spec.paused if spec else False, compact=True, id="f-paused"))
                    yield from row("tags", "Tags", field(
                        "tags", ", ".join(spec.tags) if spec else "", "comma separated"))
                    yield from row("description", "Description", TextArea(
                        spec.description if spec else "", compact=True, id="f-description"))
            yield FieldMessage(id="job-form-summary")
            with Horizontal(id="job-form-buttons"):
                yield Button("Save", variant="primary", compact=True, id="save")
                yield Button("Cancel", compact=True, id="cancel")
                yield Label("ctrl+s save · esc cancel · tab next", id="job-form-keys")

    def on_mount(self) -> None:
        for widget in self.query("#job-form-body .field-grid > *"):
            for name in widget.classes:
                if name.startswith("row-"):
                    self._rows.setdefault(name.removeprefix("row-"), []).append(widget)
            if widget.id and widget.id.startswith("f-"):
                self._fields[widget.id.removeprefix("f-")] = widget
        self._apply_kind()
        self._apply_trigger_type()
        self._initial = self._values()
        self._update_schedule_preview()
        self._fields["name" if self.editing else "id"].focus()

    # --- reading the widgets ---------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return str(self.query_one("#f-kind", Select).value)

    @property
    def trigger_type(self) -> str:
        return str(self.query_one("#f-trigger", Select).value)

    @property
    def cron_editor(self) -> CronEditor:
        return self.query_one("#cron-editor", CronEditor)

    def _value(self, key: str) -> Any:
        widget = self._fields[key]
        if isinstance(widget, TextArea):
            return widget.text
        if isinstance(widget, (Input, Select, Checkbox)):
            return widget.value
        raise TypeError(key)

    def _values(self) -> dict[str, Any]:
        return {key: self._value(key) for key in self._fields}

    def _visible(self, key: str) -> bool:
        return not self._rows[key][0].has_class("-off")

    def _optional_text(self, key: str, original: str | None) -> str | None:
        text = self._value(key)
        # Blank means "not set", except that a stored "" stays "" so an edit round-trips.
        return text if text or original == "" else None

    def _json(self, key: str, expected: type, problems: list[FieldError]) -> Any:
        text = self._value(key).strip()
        if not text:
            return expected()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(FieldError(key, f"is not valid JSON: {exc.msg} at column {exc.colno}"))
            return None
        if not isinstance(value, expected):
            what, example = ("list", '[1, "two"]') if expected is list else ("object", '{"key": "value"}')
            problems.append(FieldError(key, f"must be a JSON {what}, like {example}"))
            return None
        return value

    def collect(self) -> tuple[dict[str, Any], list[FieldError]]:
        """The spec dict the widgets describe, and the problems found before the core is asked (bad JSON)."""
        problems: list[FieldError] = []
        spec, kind = self.spec, self.kind
        # Rows hidden for this kind keep the stored values while the kind is unchanged: an edit loses nothing.
        keep = spec is not None and spec.kind == kind
        data: dict[str, Any] = {
            "id": spec.id if spec else self._value("id"),
            "name": self._optional_text("name", spec.name if spec else None),
            "kind": kind,
            "target": self._value("target"),
        }
        for key, expected in (("args", list), ("kwargs", dict), ("headers", dict)):
            if self._visible(key):
                value = self._json(key, expected, problems)
                if value is not None:
                    data[key] = value
            elif keep:
                data[key] = getattr(spec, key)
        if self._visible("method"):
            data["method"] = self._value("method")
            data["body"] = self._optional_text("body", spec.body if spec else None)
        elif keep:
            data["method"], data["body"] = spec.method, spec.body  # type: ignore[union-attr]
        # Numbers and dates go to pydantic as typed: it parses them and names the field when it can't.
        for key in ("timeout", "start_date", "end_date", "misfire_grace_time", "jitter", "timezone"):
            data[key] = self._value(key).strip() or None
        if max_instances := self._value("max_instances").strip():
            data["max_instances"] = max_instances
        data["coalesce"] = {"default": None, "yes": True, "no": False}[self._value("coalesce")]
        data["paused"] = self._value("paused")
        data["tags"] = [tag.strip() for tag in self._value("tags").split(",") if tag.strip()]
        data["description"] = self._value("description")
        data["trigger"] = self.trigger_data()
        return data, problems

    def trigger_data(self) -> dict[str, Any]:
        """The chosen trigger's fields, in JobSpec's shape."""
        kind = self.trigger_type
        if kind == "cron":
            return self.cron_editor.trigger_data()
        if kind == "interval":
            return {"type": "interval", **{unit: self._value(unit).strip() or 0 for unit in INTERVAL_UNITS}}
        return {"type": "date", "run_date": self._value("run_date").strip() or None}

    def validate(self) -> tuple[JobSpec | None, list[FieldError]]:
        """The spec, or every field-named error (the form's own first, then the core's)."""
        data, problems = self.collect()
        try:
            spec = parse_spec(data)
        except SpecError as exc:
            return None, problems + _friendly(exc.errors)
        return (None, problems) if problems else (spec, [])

    # --- previews --------------------------------------------------------------------------------------------
    def _preview_times(self, trigger: dict[str, Any]) -> list[datetime]:
        """Next fire times of `trigger` with this job's timezone and start/end dates, from the console."""
        context: dict[str, Any] = {"id": "preview", "kind": "shell", "target": "true", "trigger": trigger}
        for key in ("timezone", "start_date", "end_date"):
            if text := self._value(key).strip():
                context[key] = text
        return self.console.preview(context, PREVIEW_COUNT)

    def _update_schedule_preview(self) -> None:
        """Interval and date triggers get the same words and next times the cron editor shows for cron."""
        if self.trigger_type == "cron":
            self.cron_editor.check()
            return
        panel = self.query_one("#schedule-preview", SchedulePreview)
        data = self.trigger_data()
        trigger, _ = check_trigger(data)
        if trigger is None:
            panel.show_problem("No preview until the schedule above is valid.")
            return
        try:
            times = self._preview_times(data)
        except Exception as exc:  # the timezone or a date is not valid yet; its own row says why
            panel.show_problem(f"No preview: {exc}")
            return
        panel.show_schedule(describe_trigger(trigger, self._value("timezone").strip() or self.console.timezone), times)

    # --- showing errors --------------------------------------------------------------------------------------
    def _key_of(self, field: str) -> str | None:
        """The form row an error field belongs to: "trigger.minutes" -> "minutes", "args.0" -> "args"."""
        head, _, rest = field.partition(".")
        key = rest.split(".")[0] if head == "trigger" and rest else head
        return key if key in self._rows else None

    def show_errors(self, errors: list[FieldError], *, live: bool = False) -> None:
        """Each error beside its field. Live (while typing) only for fields changed since the form opened."""
        changed = {key for key, value in self._values().items() if value != self._initial.get(key)}
        by_key: dict[str, list[str]] = {}
        cron_errors: list[FieldError] = []
        for error in errors:
            if self.trigger_type == "cron" and error.field.startswith("trigger."):
                cron_errors.append(FieldError(error.field.removeprefix("trigger."), error.reason))
                continue
            key = self._key_of(error.field)
            if key is None or (live and not self._show_all and key not in changed):
                continue
            by_key.setdefault(key, []).append(error.reason)
        for key in {message_id.removeprefix("e-") for message_id in self._messages} | set(by_key):
            self._set_message(key, "\n".join(by_key.get(key, [])))
        if not live:
            # While typing the editor shows its own; on Save the form's verdict is the one that counts.
            self.cron_editor.show_errors(cron_errors)
        summary = self.query_one("#job-form-summary", FieldMessage)
        if self._show_all and errors:
            count = f"{len(errors)} problem{'s' if len(errors) > 1 else ''}"
            summary.show_text(f"Not saved, {count}: " + "; ".join(str(e) for e in errors))
        elif self._show_all or not errors:
            summary.show_text("")

    def _set_message(self, key: str, text: str) -> None:
        row = self._rows[key]
        classes = " ".join(["form-error", f"row-{key}", *(["-off"] if not self._visible(key) else [])])
        message = place_message(self._messages, self._fields[key], f"e-{key}", text, classes)
        if message is not None and message not in row:
            row.append(message)  # so hiding the row hides it too

    def _focus_first_error(self, errors: list[FieldError]) -> None:
        for error in errors:
            if self.trigger_type == "cron" and error.field.startswith("trigger."):
                if self.cron_editor.focus_error():
                    return
                continue
            key = self._key_of(error.field)
            widget = self._fields.get(key or "")
            if widget is not None and self._visible(key or "") and widget.focusable:
                widget.focus()
                return

    # --- live checking -----------------------------------------------------------------------------------------
    def _schedule_check(self) -> None:
        if not self._fields:  # a Changed posted while mounting, before on_mount found the fields
            return
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(0.1, self._check_live)

    def _check_live(self) -> None:
        self._timer = None
        _, errors = self.validate()
        errors += self._standing_save_errors()
        self.errors = errors
        self.show_errors(errors, live=True)
        self._update_schedule_preview()

    def _field_value(self, field: str) -> Any:
        key = self._key_of(field)
        return self._value(key) if key in self._fields else None

    def _standing_save_errors(self) -> list[FieldError]:
        return [error for error, value in self._save_errors if self._field_value(error.field) == value]

    @on(Input.Changed)
    @on(Checkbox.Changed)
    @on(TextArea.Changed)
    def _field_changed(self) -> None:
        self._schedule_check()

    @on(Select.Changed, "#f-kind")
    def _kind_changed(self) -> None:
        self._apply_kind()
        self._schedule_check()

    @on(Select.Changed, "#f-trigger")
    def _trigger_changed(self) -> None:
        self._apply_trigger_type()
        self._schedule_check()

    @on(Select.Changed, "#f-method, #f-coalesce")
    def _select_changed(self) -> None:
        self._schedule_check()

    @on(Input.Submitted)
    def _next_field(self) -> None:
        # Enter moves on, like Tab: a long form should not save half-filled by accident (Ctrl+S saves).
        self.focus_next()

    def _apply_kind(self) -> None:
        if not self._rows:
            return
        kind = self.kind
        for key, kinds in _KIND_ROWS.items():
            for widget in self._rows[key]:
                widget.set_class(kind not in kinds, "-off")
        self.query_one("#l-target", Label).update(_TARGET_LABEL[kind])
        self.query_one("#f-target", Input).placeholder = _TARGET_HINT[kind]
        if kind in _ARGS_LABEL:
            self.query_one("#l-args", Label).update(_ARGS_LABEL[kind])
            self.query_one("#l-kwargs", Label).update(_KWARGS_LABEL[kind])

    def _apply_trigger_type(self) -> None:
        kind = self.trigger_type
        self.cron_editor.display = kind == "cron"
        self.query_one("#group-interval").display = kind == "interval"
        self.query_one("#group-date").display = kind == "date"
        self.query_one("#schedule-preview").display = kind != "cron"

    # --- saving -------------------------------------------------------------------------------------------------
    def action_save(self) -> None:
        """Validate everything; if clean, store through the console (in a worker) and dismiss with the id."""
        if self._saving:
            return
        self._show_all = True
        self._save_errors = []
        if self._timer is not None:
            self._timer.stop()
        if self.trigger_type == "cron":
            self.cron_editor.check(force=True)
        spec, errors = self.validate()
        self.errors = errors
        if spec is None:
            self.show_errors(errors)
            self._focus_first_error(errors)
            return
        self.show_errors([])
        self._saving = True
        self.query_one("#save", Button).disabled = True
        self._store(spec)

    @work(thread=True, exclusive=True, group="job-form-save", exit_on_error=False)
    def _store(self, spec: JobSpec) -> None:
        # Off the UI thread: a python target is imported to resolve it, and the database may be slow.
        try:
            if self.spec is not None:
                self.console.update_job(spec.id, spec)
            else:
                self.console.add_job(spec)
        except Exception as exc:
            self.post_message(self._SaveFailed(exc))
            return
        self.post_message(self._Saved(spec.id))

    @on(_Saved)
    def _saved(self, message: _Saved) -> None:
        self._saving = False
        self.dismiss(message.job_id)

    @on(_SaveFailed)
    def _save_failed(self, message: _SaveFailed) -> None:
        self._saving = False
        self.query_one("#save", Button).disabled = False
        exc = message.error
        if isinstance(exc, SpecError):  # UnresolvableReference included: its field is "target"
            errors = _friendly(exc.errors)
        elif isinstance(exc, ConflictingId):
            errors = [FieldError("id", str(exc))]
        elif isinstance(exc, JobNotFound):
            errors = [FieldError("id", f"{exc} It may have been removed meanwhile.")]
        elif isinstance(exc, CarnationError):
            errors = [FieldError("spec", str(exc))]
        else:
            errors = [FieldError("spec", f"could not save: {type(exc).__name__}: {exc}")]
        self._save_errors = [(error, self._field_value(error.field)) for error in errors]
        self.errors = errors
        self.show_errors(errors)
        self._focus_first_error(errors)

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    def action_cancel(self) -> None:
        """Close without storing anything. While a save is in flight the job may already be stored: let it end."""
        if not self._saving:
            self.dismiss(None)
