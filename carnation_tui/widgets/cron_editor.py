"""The cron editor: a crontab string or APScheduler's own cron fields, checked while the operator types.

Every rule comes from scheduler_core: parse_spec (which runs cron.check_expression / cron.check_field) says what is
wrong and with which field, describe_trigger says it in words, and the owner's preview function (normally
Console.preview) gives the next fire times from the APScheduler trigger that will really fire. This widget only
collects text and shows what the core answers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Static

from scheduler_core import cron
from scheduler_core.describe import describe_trigger
from scheduler_core.errors import FieldError, SpecError
from scheduler_core.spec import CronTriggerSpec, DateTriggerSpec, IntervalTriggerSpec, build_trigger, parse_spec

PreviewFn = Callable[[dict[str, Any]], list[datetime]]
"""Next fire times for a trigger dict ({"type": "cron", ...}); raises SpecError when it cannot say."""

AnyTriggerSpec = CronTriggerSpec | IntervalTriggerSpec | DateTriggerSpec

PREVIEW_COUNT = 5
EXPRESSION = "expression"
FIELDS = "fields"

_FIELD_HINTS = {
    "year": "e.g. 2026, 2026-2028, *",
    "month": "1-12, jan-dec, */3",
    "week": "ISO week 1-53",
    "day": "1-31, last, 3rd fri, last fri",
    "day_of_week": "mon-fri, 0-6 (0 = Monday)",
    "hour": "0-23, */2, 9-17",
    "minute": "0-59, */15, 0,30",
    "second": "0-59 (default 0)",
}
_FIELD_LABELS = {name: name.replace("_", " ").capitalize() for name in cron.CRON_FIELDS}

# A stand-in job around the trigger, so a trigger alone goes through parse_spec, the one validation path.
_STAND_IN = {"id": "cron-editor", "kind": "shell", "target": "true"}


def check_trigger(data: dict[str, Any]) -> tuple[AnyTriggerSpec | None, list[FieldError]]:
    """Validate a trigger dict through parse_spec. Errors are named relative to the trigger ("hour", "expression")."""
    try:
        spec = parse_spec({**_STAND_IN, "trigger": data})
    except SpecError as exc:
        return None, [FieldError(e.field.removeprefix("trigger."), e.reason) for e in exc.errors]
    return spec.trigger, []


def utc_preview(data: dict[str, Any]) -> list[datetime]:
    """The preview when the owner gives none: the trigger alone, in UTC."""
    spec = parse_spec({**_STAND_IN, "trigger": data})
    return cron.next_fire_times(build_trigger(spec, "UTC"), PREVIEW_COUNT)


def format_fire_time(when: datetime) -> str:
    return when.strftime("%a %Y-%m-%d %H:%M:%S %Z").rstrip()


def field_grid_css(scope: str) -> str:
    """CSS for `.field-grid`: label | field rows, each field's message under it. One grid and no wrapper widget per
    row, because a long form mounts (and re-lays out on each keystroke) noticeably faster with fewer widgets."""
    return f"""
    {scope} .field-grid {{
        layout: grid;
        grid-size: 2;
        grid-columns: 18 1fr;
        grid-rows: auto;
        height: auto;
    }}
    {scope} .field-grid > Label {{
        color: $text-muted;
        padding-right: 1;
    }}
    {scope} .field-grid > FieldMessage, {scope} .field-grid > .field-hint {{
        column-span: 2;
        padding-left: 18;
    }}
    {scope} .field-grid > .field-hint {{
        color: $text-muted;
    }}
    {scope} .field-grid > Input:focus, {scope} .field-grid > TextArea:focus,
    {scope} .field-grid > Select:focus-within {{
        background-tint: $accent 15%;
    }}
    {scope} .-off {{
        display: none;
    }}
    """


class FieldMessage(Static):
    """A message beside a field (its error), hidden while empty.

    Hidden by a class rather than `display`, so an owner can hide a whole row with another class without the two
    fighting. Redraws only when the text changes: a redraw re-lays out the form, which re-checks on each keystroke.
    """

    DEFAULT_CSS = """
    FieldMessage {
        height: auto;
        color: $text-error;
    }
    FieldMessage.-empty {
        display: none;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.text = ""
        self.add_class("-empty")

    def show_text(self, text: str) -> None:
        if text != self.text:
            self.text = text
            self.update(text)
            self.set_class(not text, "-empty")


def place_message(
    messages: dict[str, FieldMessage], anchor: Widget, message_id: str, text: str, classes: str = ""
) -> FieldMessage | None:
    """Show `text` in the message `message_id` right after `anchor`, creating it on first use: most fields never
    need one, and every widget mounted up front makes the form slower to open."""
    message = messages.get(message_id)
    if message is None:
        if not text or anchor.parent is None:
            return None
        message = messages[message_id] = FieldMessage(id=message_id, classes=classes)
        anchor.parent.mount(message, after=anchor)
    message.show_text(text)
    return message


class SchedulePreview(Static):
    """A trigger in words plus its next fire times, or why there is nothing to show."""

    DEFAULT_CSS = """
    SchedulePreview {
        height: auto;
        padding: 0 1;
        margin: 0 0 1 0;
        background: $boost;
        color: $text;
    }
    SchedulePreview.-problem {
        color: $text-muted;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.description: str | None = None
        self.times: list[datetime] = []
        self._shown = ""

    def _show(self, text: str) -> None:
        if text != self._shown:
            self._shown = text
            self.update(text)

    def show_schedule(self, description: str, times: list[datetime]) -> None:
        self.description, self.times = description, list(times)
        self.remove_class("-problem")
        lines = [description]
        if times:
            zone = times[0].tzinfo
            zone_name = getattr(zone, "key", None) or times[0].tzname() or ""
            lines.append(f"Next {len(times)} run{'s' if len(times) > 1 else ''} ({zone_name}):")
            lines.extend("  " + format_fire_time(t) for t in times)
        else:
            lines.append("Never fires again (check the start and end dates).")
        self._show("\n".join(lines))

    def show_problem(self, text: str) -> None:
        self.description, self.times = None, []
        self.add_class("-problem")
        self._show(text)


class CronEditor(Vertical):
    """Edits a cron trigger as a crontab string (5 fields, or 6 with seconds first) or as APScheduler fields.

    Checks on each keystroke (debounced): shows each field's error beside it, the description and the next fire
    times. Errors stay hidden until the operator changes something or `check(force=True)` is called (the form does
    that on Save), so a fresh form does not open full of complaints.
    """

    DEFAULT_CSS = """
    CronEditor {
        height: auto;
    }
    """ + field_grid_css("CronEditor")

    class Changed(Message):
        """The trigger was edited and checked; `errors` are what the core found (shown or not)."""

        def __init__(self, editor: CronEditor, errors: list[FieldError]) -> None:
            super().__init__()
            self.editor = editor
            self.errors = errors

        @property
        def control(self) -> CronEditor:
            return self.editor

    def __init__(
        self,
        trigger: CronTriggerSpec | None = None,
        *,
        preview: PreviewFn | None = None,
        debounce: float = 0.1,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._trigger = trigger
        self._preview = preview or utc_preview
        self._debounce = debounce
        self._timer: Timer | None = None
        self._show_all = False
        self._initial: dict[str, Any] | None = None
        self._messages: dict[str, FieldMessage] = {}
        self.errors: list[FieldError] = []
        # The fields form only when the stored trigger uses fields; a new trigger starts as a crontab string.
        self._start_mode = FIELDS if trigger is not None and trigger.expression is None else EXPRESSION

    def compose(self) -> ComposeResult:
        trig = self._trigger
        with Vertical(classes="field-grid"):
            yield Label("Cron as")
            yield Select(
                [("crontab string", EXPRESSION), ("APScheduler fields", FIELDS)],
                value=self._start_mode, allow_blank=False, compact=True, id="cron-mode",
            )
        with Vertical(id="cron-expression-box", classes="field-grid"):
            yield Label("Expression")
            yield Input(
                value=(trig.expression or "") if trig else "", placeholder="*/5 * * * *", compact=True,
                id="cron-expression",
            )
            yield Static("minute hour day month weekday; 6 fields: second first", classes="field-hint")
        if self._start_mode == FIELDS:
            yield self._fields_box()
        yield SchedulePreview(id="cron-preview")

    def _fields_box(self) -> Vertical:
        # Built only when the fields form is first needed: most jobs use a crontab string, and every widget
        # mounted up front makes the job form slower to open.
        trig = self._trigger
        widgets: list[Widget] = []
        for field in cron.CRON_FIELDS:
            value = getattr(trig, field) if trig else None
            widgets.append(Label(_FIELD_LABELS[field]))
            widgets.append(Input(value=value or "", placeholder=_FIELD_HINTS[field], compact=True, id=f"cron-{field}"))
        widgets.append(Static("blank fields: smaller ones take their minimum, larger ones *", classes="field-hint"))
        return Vertical(*widgets, id="cron-fields-box", classes="field-grid")

    def on_mount(self) -> None:
        self._apply_mode()
        self._initial = self.trigger_data()
        self.check()

    # --- reading -------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """EXPRESSION (a crontab string) or FIELDS (APScheduler's cron fields)."""
        value = self.query_one("#cron-mode", Select).value
        return value if value in (EXPRESSION, FIELDS) else EXPRESSION  # type: ignore[return-value]

    def trigger_data(self) -> dict[str, Any]:
        """The trigger as typed, in JobSpec's shape: {"type": "cron", "expression": ...} or the given fields."""
        if self.mode == EXPRESSION:
            return {"type": "cron", "expression": self.query_one("#cron-expression", Input).value}
        data: dict[str, Any] = {"type": "cron"}
        for field in cron.CRON_FIELDS:
            found = self.query(f"#cron-{field}")
            text = found.only_one(Input).value if found else ""
            # Kept as typed (no strip) so an edited job round-trips; blank means "not given".
            if text.strip():
                data[field] = text
        return data

    @property
    def preview(self) -> SchedulePreview:
        return self.query_one("#cron-preview", SchedulePreview)

    # --- checking ----------------------------------------------------------------------------------------------
    def check(self, *, force: bool = False) -> list[FieldError]:
        """Validate now; show errors (once edited, or forced), the description and the next fire times."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if force:
            self._show_all = True
        data = self.trigger_data()
        trigger, errors = check_trigger(data)
        self.errors = errors
        # Before mount there is no baseline yet: nothing counts as edited.
        shown = self._show_all or (self._initial is not None and data != self._initial)
        self.show_errors(errors if shown else [])
        if trigger is None:
            if shown:
                self.preview.show_problem("No preview until the schedule above is valid.")
            elif self.mode == EXPRESSION:
                self.preview.show_problem("Type a crontab expression, e.g. */5 * * * * or */10 * * * * *")
            else:
                self.preview.show_problem("Fill in at least one field, e.g. hour = 9, minute = 30")
        else:
            self._show_preview(trigger, data)
        self.post_message(self.Changed(self, errors))
        return errors

    def _show_preview(self, trigger: AnyTriggerSpec, data: dict[str, Any]) -> None:
        try:
            times = self._preview(data)
        except Exception as exc:
            # Usually another field of the job the preview needs (timezone, start/end date), which says so itself.
            # Anything else must not take the form down either.
            self.preview.show_problem(f"No preview: {exc}")
            return
        self.preview.show_schedule(describe_trigger(trigger), times)

    def show_errors(self, errors: list[FieldError]) -> None:
        """Put each error beside its field; names are relative to the trigger ("hour", "expression")."""
        by_id: dict[str, list[str]] = {}
        for error in errors:
            field = error.field
            if field in cron.CRON_FIELDS and self.mode == FIELDS:
                target, text = f"cron-{field}-error", error.reason
            elif field == "expression" and self.mode == EXPRESSION:
                target, text = "cron-expression-error", error.reason
            elif field in ("expression", "trigger"):
                # e.g. "needs an expression or at least one cron field" while in the fields form.
                target, text = "cron-error", error.reason
            else:
                target, text = "cron-error", str(error)
            by_id.setdefault(target, []).append(text)
        for message_id in set(self._messages) | set(by_id):
            if message_id == "cron-error":
                # Under whichever box is shown, above the preview.
                anchor = self.query_one("#cron-fields-box" if self.query("#cron-fields-box") else "#cron-expression-box")
            else:
                anchor = self.query_one("#" + message_id.removesuffix("-error"))
            place_message(self._messages, anchor, message_id, "\n".join(by_id.get(message_id, [])))

    def focus_error(self) -> bool:
        """Focus the first input with an error; False if there is none."""
        for label in self._messages.values():
            if label.text and label.id and label.id != "cron-error":
                self.query_one("#" + label.id.removesuffix("-error"), Input).focus()
                return True
        if self.errors:
            box = "#cron-expression-box" if self.mode == EXPRESSION else "#cron-fields-box"
            self.query_one(box).query(Input).first().focus()
            return True
        return False

    def _schedule_check(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(self._debounce, self.check)

    def _apply_mode(self) -> None:
        expression = self.mode == EXPRESSION
        self.query_one("#cron-expression-box").display = expression
        for box in self.query("#cron-fields-box"):
            box.display = not expression

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        # The editor speaks for its inputs: owners listen to CronEditor.Changed instead.
        event.stop()
        self._schedule_check()

    @on(Input.Submitted)
    def _input_submitted(self) -> None:
        self.check()

    @on(Select.Changed, "#cron-mode")
    async def _mode_changed(self, event: Select.Changed) -> None:
        event.stop()
        if self.mode == FIELDS and not self.query("#cron-fields-box"):
            await self.mount(self._fields_box(), after="#cron-expression-box")
        self._apply_mode()
        self.check()
