"""Widgets of the terminal editor: a code editor that can mark token ranges, the diff panel, the flagged-token
panel and the status bar."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual import events
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, LoadingIndicator, Static, TextArea
from textual.widgets.text_area import Location

# Highlight names added to the TextArea theme; "remask." keeps them apart from tree-sitter capture names.
MARK_STYLES: dict[str, Style] = {
    "remask.flagged": Style(bgcolor="#6b1d1d", underline=True),  # improbable token found by repair
    "remask.masked": Style(color="#7f7f7f", bgcolor="#262626"),  # a still-masked token while decoding
    "remask.new": Style(bgcolor="#1d4d2b"),  # a token the decoder has committed
    "remask.old": Style(color="#8a8a8a", strike=True),  # the text being replaced, before the first step
}


@dataclass(frozen=True)
class Mark:
    """A highlighted range of the buffer in TextArea locations (row, column in code points)."""

    start: Location
    end: Location
    name: str
    tip: str | None = None  # shown as a tooltip while the mouse is over the range


class CodeEditor(TextArea):
    """A TextArea that can paint extra ranges (flagged tokens, masked placeholders) over the syntax colours.

    TextArea colours text from ``_highlights`` (per line, byte columns, a theme style name); the marks are
    appended there after the tree-sitter captures so they win, and the theme copy gets their styles.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._marks: list[Mark] = []
        self.tab_accepts = False  # set while ghost text is pending: tab then accepts instead of indenting

    # Closing brackets for the brackets after which enter indents one level more.
    OPENERS = {"{": "}", "[": "]", "(": ")"}

    def newline_for_enter(self) -> tuple[str, int]:
        """The text enter inserts at the cursor, and how far the cursor goes back from its end.

        TextArea inserts a bare "\n"; a code editor keeps the line's indentation, adds one level after a line
        ending in ``:`` (Python) or an opening bracket, and between a bracket pair (``{|}``) puts the closing
        one on its own line at the old indentation."""
        (row, col), end = self.selection.start, self.selection.end
        if end < (row, col):
            (row, col), end = end, (row, col)
        line = self.document[row]
        before = line[:col]
        indent = before[:len(before) - len(before.lstrip(" \t"))]
        after = self.document[end[0]][end[1]:]
        code = before.rstrip()
        if self.language == "python" and "#" in code and "'" not in code and '"' not in code:
            code = code.split("#", 1)[0].rstrip()  # "if x:  # why" still opens a block
        opener = code[-1:] if code else ""
        opens = opener in self.OPENERS or (opener == ":" and self.language == "python")
        if not opens:
            return "\n" + indent, 0
        unit = "\t" if indent.startswith("\t") or self.indent_type == "tabs" else " " * self.indent_width
        closing = self.OPENERS.get(opener)
        if closing and after.lstrip(" \t").startswith(closing):
            tail = "\n" + indent
            return "\n" + indent + unit + tail, len(tail)
        return "\n" + indent + unit, 0

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter" and not self.read_only:
            event.stop()
            event.prevent_default()
            self._restart_blink()
            text, back = self.newline_for_enter()
            start, end = self.selection
            result = self._replace_via_keyboard(text, start, end)
            if back and result is not None:
                row, col = result.end_location
                self.move_cursor((row - 1, len(self.document[row - 1])))
            return
        await super()._on_key(event)

    def check_consume_key(self, key: str, character: str | None = None) -> bool:
        if key == "tab" and self.tab_accepts:
            return False  # let the app's accept binding see it
        return super().check_consume_key(key, character)

    @property
    def marks(self) -> list[Mark]:
        return list(self._marks)

    def set_marks(self, marks: Iterable[Mark]) -> None:
        self._marks = list(marks)
        self.tooltip = None
        self._build_highlight_map()
        self.refresh()

    def mark_at(self, location: Location) -> Mark | None:
        for mark in self._marks:
            if mark.tip and mark.start <= location < mark.end:
                return mark
        return None

    async def _on_mouse_move(self, event: events.MouseMove) -> None:
        await super()._on_mouse_move(event)
        mark = self.mark_at(self.get_target_document_location(event)) if self._marks else None
        tip = mark.tip if mark else None
        if tip != self.tooltip:
            self.tooltip = tip

    def clear_marks(self) -> None:
        if self._marks:
            self.set_marks([])

    def _set_theme(self, theme: str) -> None:
        super()._set_theme(theme)
        # ``_set_theme`` copies the theme shallowly; give this copy its own style dict before adding to it.
        self._theme.syntax_styles = {**self._theme.syntax_styles, **MARK_STYLES}

    def _build_highlight_map(self) -> None:
        super()._build_highlight_map()
        if not getattr(self, "_marks", None):
            return
        lines = self.document.lines
        for mark in self._marks:
            (r0, c0), (r1, c1) = sorted((mark.start, mark.end))
            for row in range(r0, min(r1, len(lines) - 1) + 1):
                line = lines[row]
                a = c0 if row == r0 else 0
                b = c1 if row == r1 else len(line)
                if b <= a and not (row == r0 == r1 and a == b == len(line)):
                    continue
                start_byte = len(line[:a].encode("utf-8"))
                end_byte = len(line[:b].encode("utf-8"))
                if end_byte > start_byte:
                    self._highlights[row].append((start_byte, end_byte, mark.name))

    def offset_to_location(self, offset: int) -> Location:
        return self.document.get_location_from_index(offset)

    def location_to_offset(self, location: Location) -> int:
        return self.document.get_index_from_location(location)


def side_by_side(old: str, new: str, context: int = 2, width: int | None = None) -> Table:
    """A two-column table of the changed lines (with ``context`` unchanged lines around each change)."""
    a, b = old.splitlines(), new.splitlines()
    table = Table(show_header=True, header_style="bold", expand=True, box=None, padding=(0, 1))
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("before", ratio=1, overflow="fold")
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("after", ratio=1, overflow="fold")
    removed, added = Style(color="#ff8080", bgcolor="#3a1414"), Style(color="#9be49b", bgcolor="#143a1d")
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(context):
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                    table.add_row(str(i + 1), Text(a[i]), str(j + 1), Text(b[j]))
                continue
            for k in range(max(i2 - i1, j2 - j1)):
                i, j = i1 + k, j1 + k
                left = (str(i + 1), Text(a[i], style=removed)) if i < i2 else ("", Text(""))
                right = (str(j + 1), Text(b[j], style=added)) if j < j2 else ("", Text(""))
                table.add_row(left[0], left[1], right[0], right[1])
        table.add_row("", Text("⋯", style="dim"), "", Text("⋯", style="dim"))
    return table


def unified(old: str, new: str, name: str, context: int = 3) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{name}", f"b/{name}",
                                        n=context)).rstrip("\n")


def colour_diff(diff: str) -> Text:
    """A unified diff without its file header, coloured by line kind."""
    out = Text()
    styles = {"+": Style(color="#9be49b", bgcolor="#143a1d"), "-": Style(color="#ff8080", bgcolor="#3a1414"),
              "@": Style(color="#6cb6ff", dim=True)}
    for line in diff.splitlines():
        if line.startswith(("--- ", "+++ ")):
            continue
        out.append(line + "\n", style=styles.get(line[:1], Style()))
    out.rstrip()
    return out


class DiffPanel(VerticalScroll, can_focus=True):
    """Old against new for a pending proposal, unified or side by side; the app binds accept/reject keys."""

    def compose(self):
        yield Static(id="diff-title")
        yield Static(id="diff-body")

    def show(self, title: str, old: str, new: str, name: str, split: bool) -> None:
        self.query_one("#diff-title", Static).update(Text.from_markup(title))
        if old == new:
            body = Text("(no change)", style="dim")
        elif split:
            body = side_by_side(old, new)
        else:
            body = colour_diff(unified(old, new, name))
        self.query_one("#diff-body", Static).update(body)
        self.scroll_home(animate=False)


class FlaggedPanel(DataTable):
    """The tokens ``repair`` found improbable, with their probabilities and the model's preferred token."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns("line", "token", "p", "model prefers")


class StatusBar(Vertical):
    """The running operation (step, tokens per step, time) above; file, cursor and model below."""

    def compose(self):
        yield Static(id="status-op")
        with Horizontal(id="status-line"):
            yield Static(id="status-file")
            yield LoadingIndicator(id="status-spinner")
            yield Static(id="status-model")
