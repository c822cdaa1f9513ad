"""Modal screens: help, unsaved-changes prompt, path prompt (open / save as) and settings."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rich.table import Table
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from assistant.api import Settings

HELP_KEYS: list[tuple[str, str]] = [
    ("ctrl+f", "fill the hole at the cursor (<FILL>, pass / ... / TODO body, or insert at the cursor)"),
    ("ctrl+r", "regenerate the span at the cursor; press again for a larger span (statement, block, function)"),
    ("ctrl+t", "repair: flag improbable tokens in the selection, else in the largest span around the cursor "
               "(up to its function), and propose a fix"),
    ("ctrl+g", "fill all holes in the file"),
    ("ctrl+l", "rewrite the selection, else the largest span around the cursor (up to its function), following "
               "an instruction; the prompt names the span and its lines (instruction-tuned models)"),
    ("tab", "accept the proposal (one undo step)"),
    ("escape", "reject the proposal, or cancel the running model call"),
    ("ctrl+n / ctrl+b", "next / previous candidate"),
    ("ctrl+w", "diff view: switch unified / side by side"),
    ("right", "accept ghost text (single-line fill)"),
    ("ctrl+z / ctrl+y", "undo / redo"),
    ("enter", "new line, indented like this one (one level more after a line ending in : in Python, or { [ ()"),
    ("ctrl+s", "save (atomic)"),
    ("ctrl+o", "open a file"),
    ("f2", "settings: model folder, threshold, block size, steps, temperature"),
    ("f1", "this help"),
    ("ctrl+q", "quit"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 1), expand=True)
        table.add_column(style="bold cyan", no_wrap=True, width=16)
        table.add_column(ratio=1)
        for key, what in HELP_KEYS:
            table.add_row(key, what)
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Static("[b]remask[/b]: the model edits your code in place", id="help-title")
            yield Static(table)
            yield Static(
                "While the model works, masked tokens show as [reverse]░[/reverse] and fill in as the decoder "
                "commits them, several per step: that is block diffusion decoding in parallel.",
                id="help-note")
            yield Static("[dim]escape closes[/dim]")


class ConfirmScreen(ModalScreen[str]):
    """Unsaved changes: returns "save", "discard" or "cancel"."""

    BINDINGS = [Binding("escape", "choose('cancel')", "Cancel"), Binding("s", "choose('save')", "Save", show=False),
                Binding("d", "choose('discard')", "Discard", show=False)]

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="dialog"):
            yield Label(self.message, id="confirm-message")
            with Horizontal(id="confirm-buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Discard", id="discard", variant="error")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


class PromptScreen(ModalScreen[str | None]):
    """One line of input (a path, an instruction); returns the text or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.title_text, self.value, self.placeholder = title, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt-box", classes="dialog"):
            yield Label(self.title_text, id="prompt-title")
            yield Input(self.value, placeholder=self.placeholder, id="prompt-input")
            yield Static("[dim]enter accepts · escape cancels[/dim]")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        self.dismiss(value or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass
class SettingsResult:
    settings: Settings
    model: str | None


class SettingsError(ValueError):
    pass


def parse_settings(base: Settings, threshold: str, block_size: str, steps: str, temperature: str) -> Settings:
    """Validated settings from the form's strings; an empty field means "the model's default" where that exists."""

    def number(text: str, kind, name: str):
        try:
            return kind(text)
        except ValueError:
            raise SettingsError(f"{name}: {text!r} is not a valid {'whole number' if kind is int else 'number'}") \
                from None

    t = None
    if threshold.strip():
        t = number(threshold.strip(), float, "threshold")
        if not 0 < t <= 1:
            raise SettingsError("threshold must be in (0, 1]; leave it empty to use a fixed number of steps")
    b = None
    if block_size.strip():
        b = number(block_size.strip(), int, "block size")
        if not 1 <= b <= 1024:
            raise SettingsError("block size must be between 1 and 1024")
    s = None
    if steps.strip():
        s = number(steps.strip(), int, "steps")
        if s < 1:
            raise SettingsError("steps must be at least 1")
    if (t is None) == (s is None):
        raise SettingsError("set either a threshold or a number of steps per block (the other one empty)")
    temp = number(temperature.strip() or "0", float, "temperature")
    if not 0 <= temp <= 5:
        raise SettingsError("temperature must be between 0 and 5")
    return replace(base, threshold=t, block_size=b, steps=s, temperature=temp)


class SettingsScreen(ModalScreen[SettingsResult | None]):
    """Model folder and decoding settings; a changed folder reloads the model in a worker."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, settings: Settings, model: str | None) -> None:
        super().__init__()
        self.settings, self.model = settings, model

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="settings-box", classes="dialog"):
            yield Label("[b]Settings[/b]")
            with Vertical(id="settings-grid"):
                for label, field in (
                    ("model folder", Input(self.model or "", placeholder="default (or random:test, a folder)",
                                           id="set-model", compact=True)),
                    ("threshold", Input("" if s.threshold is None else str(s.threshold), placeholder="0 < tau <= 1",
                                        id="set-threshold", compact=True)),
                    ("block size", Input("" if s.block_size is None else str(s.block_size),
                                         placeholder="the model's", id="set-block", compact=True)),
                    ("steps / block", Input("" if s.steps is None else str(s.steps), placeholder="(threshold decides)",
                                            id="set-steps", compact=True)),
                    ("temperature", Input(str(s.temperature), id="set-temperature", compact=True)),
                ):
                    # one row per field: the row of the focused field is marked (.-focused in remask.tcss)
                    with Horizontal(classes="setting-row"):
                        yield Label(f"  {label}", classes="setting-label", name=label)
                        yield field
            yield Static("", id="settings-error")
            with Horizontal(id="settings-buttons"):
                yield Button("Apply", id="apply", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """Put a marker before the focused field's label (colour alone is easy to miss in some terminals)."""
        for row in self.query(".setting-row"):
            label = row.query_one(".setting-label", Label)
            focused = event.widget in row.children
            row.set_class(focused, "-focused")  # a class restyles the whole row; :focus-within left stale siblings
            label.update(("▸ " if focused else "  ") + (label.name or ""))

    def _value(self, wid: str) -> str:
        return self.query_one(f"#{wid}", Input).value

    def action_apply(self) -> None:
        try:
            settings = parse_settings(self.settings, self._value("set-threshold"), self._value("set-block"),
                                      self._value("set-steps"), self._value("set-temperature"))
        except SettingsError as e:
            self.query_one("#settings-error", Static).update(f"[b red]{e}[/]")
            return
        self.dismiss(SettingsResult(settings, self._value("set-model").strip() or None))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self.action_apply()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
