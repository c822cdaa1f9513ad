"""The terminal editor: a Textual code editor where the block-diffusion model edits the buffer in place.

Every model call runs in a thread worker with a ``CancelToken`` (Escape cancels); the engine's step callback
streams each denoising step to the UI through ``call_from_thread``, where a read-only copy of the buffer
shows the masked tokens as placeholders filling in. Results never touch the buffer until accepted, and an
accepted change is applied with one ``replace`` so that one undo takes it back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Static, TextArea

from assistant.api import (
    Cancelled,
    CancelToken,
    Candidate,
    EditResult,
    EngineError,
    EngineStep,
    InstructModelRequired,
    Settings,
    Span,
    TextEdit,
)

from .files import FileError, atomic_write_text, read_text_file
from .screens import ConfirmScreen, HelpScreen, PromptScreen, SettingsResult, SettingsScreen
from .widgets import CodeEditor, DiffPanel, FlaggedPanel, Mark, StatusBar

# File suffix -> TextArea language (the tree-sitter grammars Textual ships highlight queries for).
EDITOR_LANGUAGES = {
    # javascript and json are left out: with tree-sitter 0.26 and tree-sitter-javascript 0.25 / -json 0.24 Textual's
    # highlighter crashes the process (segmentation fault); those files open as plain text
    ".py": "python", ".pyi": "python", ".rs": "rust", ".go": "go", ".java": "java", ".sh": "bash", ".bash": "bash",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".html": "html", ".htm": "html",
    ".css": "css", ".md": "markdown", ".sql": "sql", ".xml": "xml",
}
PLACEHOLDER = "░"


def editor_language(path: Path | None, available: set[str]) -> str | None:
    if path is None:
        return "python"  # a new buffer: the models are trained mostly on Python
    lang = EDITOR_LANGUAGES.get(path.suffix.lower())
    return lang if lang in available else None


def apply_edits(text: str, edits: list[TextEdit]) -> str:
    """``text`` with non-overlapping ``edits`` (offsets into ``text``) applied."""
    out = text
    for e in sorted(edits, key=lambda e: (e.start, e.end), reverse=True):
        out = out[:e.start] + e.new_text + out[e.end:]
    return out


def is_empty_answer(op: str, base: str, candidate: Candidate) -> bool:
    """Whether ``candidate`` is the model answering nothing (EOS at once, or only whitespace): no suggestion.

    The engine marks such candidates (``Candidate.empty``); for an engine that does not, a fill or regenerate
    whose every edit writes only whitespace where there was code counts too: accepting it would delete code."""
    if getattr(candidate, "empty", False):
        return True
    if op not in ("fill", "fill_all", "regenerate") or not candidate.edits:
        return False
    return all(not e.new_text.strip() for e in candidate.edits) and \
        any(base[e.start:e.end].strip() for e in candidate.edits)


def union_change(base: str, edits: list[TextEdit]) -> tuple[int, int, str]:
    """One (start, end, replacement) covering all ``edits``, so the change is one TextArea edit (one undo step)."""
    new = apply_edits(base, edits)
    lo = min(e.start for e in edits)
    hi = max(e.end for e in edits)
    return lo, hi, new[lo:len(new) - (len(base) - hi)]


def special_token_strings(engine: Any) -> frozenset[str]:
    """Every special token's text for ``engine``'s tokenizer (EOS, PAD, the mask, FIM and chat markers).

    The decoder streams raw pieces; these must never reach the screen. The known names of every supported
    tokenizer family are included even when the engine exposes no tokenizer (a scripted or remote engine)."""
    from model.tokenizer import SPECIAL_NAMES

    out = {name for names in SPECIAL_NAMES.values() for name in names}
    wrapper = getattr(engine, "tok", None)
    hf = getattr(wrapper, "tok", None)
    if hf is not None:
        try:
            out.update(t.content for t in hf.get_added_tokens_decoder().values() if t.special)
            out.update(s for i in getattr(wrapper, "special_ids", ()) if (s := hf.id_to_token(int(i))))
        except Exception:  # noqa: BLE001 - a tokenizer without these methods: the known names still apply
            pass
    return frozenset(s for s in out if s)


def special_token_pattern(specials: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching any of ``specials`` (longest first, so no special token is cut in two)."""
    names = sorted({s for s in specials if s}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, names))) if names else None


def compose_preview(base: str, spans: list[tuple[int, int]], pieces: list[list[tuple[str, bool]]],
                    specials: re.Pattern[str] | None = None) -> tuple[str, list[tuple[int, int, str]]]:
    """The buffer with each span replaced by its decoding state, and (start, end, mark) offsets in the result.

    Masked tokens become ``PLACEHOLDER`` so the reader sees how many are left and where they sit; committed
    special tokens (``specials``: EOS, padding, ...) are left out, as the final text leaves them out.
    """
    if specials is not None:
        pieces = [[(t if m else specials.sub("", t), m) for t, m in piece] for piece in pieces]
    parts: list[str] = []
    marks: list[tuple[int, int, str]] = []
    pos, out_len = 0, 0
    for (start, end), piece in sorted(zip(spans, pieces, strict=True), key=lambda sp: sp[0]):
        if start < pos:
            continue  # overlapping spans (candidates of one span): the first one is shown
        old = base[start:end]
        # the engine re-indents and re-terminates the raw tokens afterwards; show the span's own
        # indentation and line end meanwhile so the surrounding lines stay put
        lead = old[:len(old) - len(old.lstrip(" \t"))] if start == 0 or base[start - 1] == "\n" else ""
        first = next((t for t, m in piece if m or t), "")
        if lead and first[:1] in (" ", "\t"):
            lead = ""
        raw = "".join(t for t, m in piece if not m)
        trail = "\n" if old.endswith("\n") and not (raw.endswith("\n") and piece and not piece[-1][1]) else ""
        parts.append(base[pos:start] + lead)
        out_len += start - pos + len(lead)
        for text, masked in piece:
            tok = PLACEHOLDER if masked else text
            if tok:
                marks.append((out_len, out_len + len(tok), "remask.masked" if masked else "remask.new"))
                parts.append(tok)
                out_len += len(tok)
        parts.append(trail)
        out_len += len(trail)
        pos = end
    parts.append(base[pos:])
    return "".join(parts), marks


@dataclass
class Running:
    """A model call in flight."""

    op: str
    label: str
    base: str
    spans: list[tuple[int, int]]
    token: CancelToken
    cursor: int
    steps: int = 0
    scroll_y: int | None = None
    latest: EngineStep | None = None
    decoded: int = 0
    new_tokens: int = 0
    flush_pending: bool = False


@dataclass
class Proposal:
    """A finished result waiting for accept / reject."""

    op: str
    label: str
    base: str
    cursor: int
    candidates: list[Candidate]
    index: int = 0
    mode: str = "diff"  # "ghost" | "diff"
    ghost_text: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def candidate(self) -> Candidate:
        return self.candidates[self.index]


@dataclass
class RegenCycle:
    """Which span a repeated regenerate key should take next."""

    base: str
    selection: tuple[int, int]
    spans: list[Span]
    index: int = 0


class RemaskApp(App[None]):
    """``remask tui``: edit a file; the model fills, regenerates, repairs and rewrites spans of it in place."""

    CSS_PATH = "remask.tcss"
    TITLE = "remask"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS = [
        Binding("ctrl+f", "fill", "Fill", priority=True),
        Binding("ctrl+r", "regenerate", "Regen", priority=True),
        Binding("ctrl+t", "repair", "Repair", priority=True),
        Binding("ctrl+g", "fill_all", "Fill all", priority=True),
        Binding("ctrl+l", "instruct", "Instruct", priority=True),
        Binding("tab", "accept", "Accept", priority=True),
        Binding("escape", "reject", "Reject", priority=True),
        Binding("ctrl+n", "candidate(1)", "Next", show=False, priority=True),
        Binding("ctrl+b", "candidate(-1)", "Prev", show=False, priority=True),
        Binding("ctrl+w", "toggle_split", "Split", show=False, priority=True),
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+o", "open", "Open", show=False, priority=True),
        Binding("f1", "help", "Help", priority=True),
        Binding("f2", "settings", "Settings", priority=True),
        Binding("ctrl+q", "quit_app", "Quit", priority=True),
    ]

    def __init__(self, path: str | Path | None = None, *, engine: Any = None,
                 engine_factory: Callable[[], Any] | None = None, model: str | None = None,
                 device: str = "cpu", dtype: str | None = None, settings: Settings | None = None,
                 show_timings: bool = True, text: str | None = None, adapter: str | None = None,
                 merge_adapter: bool = True) -> None:
        """``engine``: an already-built engine; else ``engine_factory()`` (default ``Engine.load(model, device)``)
        runs in a worker at start. ``show_timings=False`` keeps elapsed times out of the screen (snapshots).
        ``adapter``: a LoRA folder for ``model`` (dropped when the settings switch to another model)."""
        super().__init__()
        self.path: Path | None = Path(path) if path else None
        self.engine = engine
        self.model = model
        self.device = device
        self.dtype = dtype
        self.adapter, self.merge_adapter = adapter, merge_adapter
        self._engine_factory = engine_factory
        self.settings = settings or Settings()
        self.show_timings = show_timings
        self._initial_text = text
        self.saved_text = ""
        self.lossy = False  # the file has line breaks Textual would rewrite on save (see _set_buffer)
        self.running: Running | None = None
        self.proposal: Proposal | None = None
        self.regen: RegenCycle | None = None
        self.split_diff = False
        self.flagged: list = []
        self.model_loading = False
        self._load_generation = 0
        self.load_error: str | None = None
        self.last_status = ""
        self.last_summary = ""
        self.last_message: str | None = None  # the engine's one-line word on the last result, if it had one
        self.accepted: tuple[str, str, str] | None = None  # (label, text before, text after) of the last accept
        self._specials = special_token_pattern(special_token_strings(engine)) if engine is not None else None

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="editor-pane"):
                yield CodeEditor.code_editor("", id="editor", soft_wrap=False)
                yield CodeEditor.code_editor("", id="preview", read_only=True)
                yield DiffPanel(id="diff")
            yield FlaggedPanel(id="flagged")
        yield StatusBar(id="status")
        yield Footer(show_command_palette=False, compact=True)

    @property
    def editor(self) -> CodeEditor:
        return self.query_one("#editor", CodeEditor)

    @property
    def preview(self) -> CodeEditor:
        return self.query_one("#preview", CodeEditor)

    def on_mount(self) -> None:
        self._ui_loop = asyncio.get_running_loop()
        text = self._initial_text
        if text is None and self.path is not None and self.path.exists():
            try:
                text = read_text_file(self.path)
            except FileError as e:
                self.notify(str(e), severity="error", timeout=10)
                self.path = None
        self._set_buffer(text or "", self.path)
        self.preview.show_cursor = False
        self.preview.display = False
        self.query_one("#diff").display = False
        self.query_one("#flagged").display = False
        if self.engine is None:
            self._start_loading()
        else:
            self._engine_ready(self.engine)
        self.editor.focus()

    def on_unmount(self) -> None:
        if self.running is not None:  # let the worker thread stop at its next step
            self.running.token.cancel()

    def _set_buffer(self, text: str, path: Path | None) -> None:
        self.path = path
        lang = editor_language(path, self.editor.available_languages)
        self.editor.language = lang
        self.preview.language = lang
        self.editor.load_text(text)
        # Textual's document splits lines as str.splitlines() does and writes one line-break style back: a
        # form feed, U+2028 (in a string literal!) or mixed CRLF/LF would change on save. Such a file opens
        # for suggestions but is not saved from here.
        self.lossy = self.editor.text != text
        self.saved_text = self.editor.text
        if self.lossy and path is not None:
            self.notify(f"{path.name} has line breaks the editor cannot keep (form feed, U+2028, or mixed CRLF/LF): "
                        "it will not be saved from here; apply edits with `remask fill/edit --apply`",
                        severity="warning", timeout=12)
        self.editor.clear_marks()
        self._clear_flagged()
        self.regen = None
        self.accepted = None
        self._update_file_status()

    # ------------------------------------------------------------------ status bar

    @property
    def modified(self) -> bool:
        return self.editor.text != self.saved_text

    def _update_file_status(self) -> None:
        name = str(self.path) if self.path else "[new buffer]"
        row, col = self.editor.cursor_location
        flag = " ●" if self.modified else ""
        lang = self.editor.language or "text"
        self.query_one("#status-file", Static).update(f"{escape(name)}{flag}  {row + 1}:{col + 1}  {lang}")

    def set_op_status(self, text: str) -> None:
        self.last_status = text
        self.query_one("#status-op", Static).update(text)

    def _update_model_status(self) -> None:
        spinner = self.query_one("#status-spinner")
        spinner.display = self.model_loading
        if self.model_loading:
            text = f"loading model {escape(self.model or 'default')}…"
        elif self.engine is not None:
            info = getattr(self.engine, "info", {}) or {}
            name = info.get("name") or info.get("description") or "model"
            kind = info.get("kind")
            text = escape(f"{name}" + (f" ({kind})" if kind else ""))
        else:
            text = "[b red]no model[/] (F2 to choose one)"
        self.query_one("#status-model", Static).update(text)

    @on(TextArea.SelectionChanged, "#editor")
    def _selection_changed(self, event: TextArea.SelectionChanged) -> None:
        self._update_file_status()
        p = self.proposal
        if p is not None and p.mode == "ghost":
            typed = len(p.ghost_text) - len(self.editor.suggestion)
            if not self.editor.suggestion or self.cursor_offset() != p.cursor + typed:
                self._drop_proposal()

    @on(TextArea.Changed, "#editor")
    def _text_changed(self, event: TextArea.Changed) -> None:
        self._update_file_status()
        self._track_accepted()
        p = self.proposal
        if p is not None and p.mode == "ghost" and not self.editor.suggestion:
            self._drop_proposal()
        if self.editor.marks and self.flagged_base != self.editor.text:
            self.editor.clear_marks()
            self._clear_flagged()

    # ------------------------------------------------------------------ model loading

    def _default_factory(self) -> Any:
        import torch

        from assistant.engine import Engine

        dtype = getattr(torch, self.dtype) if self.dtype else None
        return Engine.load(self.model, device=self.device, settings=self.settings, dtype=dtype,
                           adapter=self.adapter, merge_adapter=self.merge_adapter)

    def _start_loading(self) -> None:
        self.model_loading = True
        self.load_error = None
        self._update_model_status()
        self.set_op_status("loading the model in the background; the editor works meanwhile")
        self._load_generation += 1
        self._load_engine(self._engine_factory or self._default_factory, self._load_generation)

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load_engine(self, factory: Callable[[], Any], generation: int) -> None:
        try:
            engine = factory()
        except Exception as e:  # noqa: BLE001 - any failure is shown, the editor keeps working
            self._call_ui(self._engine_failed, str(e) or type(e).__name__, generation)
        else:
            self._call_ui(self._engine_ready, engine, generation)

    def _engine_ready(self, engine: Any, generation: int | None = None) -> None:
        if generation is not None and generation != self._load_generation:
            return  # a newer model was asked for meanwhile
        self.engine = engine
        self._specials = special_token_pattern(special_token_strings(engine))
        self.model_loading = False
        info = getattr(engine, "info", {}) or {}
        if "RANDOM" in str(info.get("description", "")):
            self.notify("this is an untrained random model: edits will be noise", severity="warning")
        self._update_model_status()
        if self.running is None and self.proposal is None:
            self.set_op_status("ready · ctrl+f fills the hole at the cursor, ctrl+r regenerates around it · f1 help")

    def _engine_failed(self, message: str, generation: int) -> None:
        if generation != self._load_generation:
            return
        self.model_loading = False
        self.engine = None
        self.load_error = message
        self._update_model_status()
        self.notify(f"could not load the model: {message}", severity="error", timeout=15)

    # ------------------------------------------------------------------ offsets and language

    def cursor_offset(self) -> int:
        return self.editor.location_to_offset(self.editor.cursor_location)

    def selection_offsets(self) -> tuple[int, int]:
        sel = self.editor.selection
        a, b = sorted((self.editor.location_to_offset(sel.start), self.editor.location_to_offset(sel.end)))
        return a, b

    def engine_language(self) -> str | None:
        lang = None
        if self.engine is not None and self.path is not None:
            try:
                lang = self.engine.language_for(str(self.path))
            except Exception:  # noqa: BLE001 - unknown suffix: let the engine guess
                lang = None
        return lang or (self.editor.language if self.path is None else None)

    # ------------------------------------------------------------------ actions: model operations

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        screen_is_main = self.screen is self.screen_stack[0]
        if action in ("accept", "candidate"):
            return screen_is_main and self.proposal is not None and self.running is None
        if action == "reject":
            return screen_is_main and (self.proposal is not None or self.running is not None or bool(self.flagged))
        if action == "toggle_split":
            return screen_is_main and self.proposal is not None and self.proposal.mode == "diff"
        if action in ("fill", "regenerate", "repair", "fill_all", "instruct", "save", "open", "settings", "help"):
            return screen_is_main
        return True

    def _model_ready(self) -> bool:
        if self.engine is None:
            if self.model_loading:
                self.notify("the model is still loading…", severity="warning")
            else:
                self.notify(f"no model loaded ({self.load_error or 'none chosen'}); press F2", severity="error")
            return False
        return True

    def _before_op(self) -> None:
        """A new request replaces whatever is pending or running."""
        if self.running is not None:
            self.running.token.cancel()
            self._end_running()
        if self.proposal is not None:
            self._drop_proposal()

    def action_fill(self) -> None:
        if not self._model_ready():
            return
        self.regen = None
        self._before_op()
        start, end = self.selection_offsets()
        cursor = self.cursor_offset()
        lang = self.engine_language()
        end_arg = end if end > start else None
        settings = self.settings
        self._start("fill", "fill", [(start, end)], cursor,
                    lambda text, cb, tok: self.engine.fill(text, start, end_arg, language=lang, settings=settings,
                                                           callback=cb, cancel=tok))

    def action_fill_all(self) -> None:
        if not self._model_ready():
            return
        self.regen = None
        self._before_op()
        lang = self.engine_language()
        text = self.editor.text
        try:
            holes = self.engine.holes(text, language=lang)
        except EngineError as e:
            self.notify(str(e), severity="error")
            return
        if not holes:
            self.notify("no holes to fill (write <FILL>, a pass / ... body or a TODO)", severity="warning")
            return
        settings = self.settings
        self._start("fill_all", f"fill {len(holes)} hole{'s' * (len(holes) != 1)}", [(h.start, h.end) for h in holes],
                    self.cursor_offset(),
                    lambda text, cb, tok: self.engine.fill_all(text, language=lang, settings=settings, callback=cb,
                                                               cancel=tok))

    def action_regenerate(self) -> None:
        if not self._model_ready():
            return
        text = self.editor.text
        sel = self.selection_offsets()
        lang = self.engine_language()
        cycle = self.regen
        if cycle is not None and cycle.base == text and cycle.selection == sel and len(cycle.spans) > 0:
            cycle.index = (cycle.index + 1) % len(cycle.spans)
        else:
            try:
                spans = self.engine.spans_at(text, sel[0], sel[1] if sel[1] > sel[0] else None, language=lang)
            except EngineError as e:
                self.notify(str(e), severity="error")
                return
            if not spans:
                self.notify("nothing to regenerate here; select a range first", severity="warning")
                return
            cycle = self.regen = RegenCycle(text, sel, list(spans))
        self._before_op()
        span = cycle.spans[cycle.index]
        more = f" [{cycle.index + 1}/{len(cycle.spans)}]" if len(cycle.spans) > 1 else ""
        settings = self.settings
        self._start("regenerate", f"regenerate {span.label}{more}", [(span.start, span.end)], self.cursor_offset(),
                    lambda text, cb, tok: self.engine.regenerate(text, span.start, span.end, language=lang,
                                                                 settings=settings, callback=cb, cancel=tok))

    def _target_range(self) -> tuple[int, int, str]:
        """The selection, else the largest span around the cursor (up to its function), else the whole buffer.

        The label names what is really taken, with its lines (the help's ctrl+t / ctrl+l say the same)."""
        text = self.editor.text
        start, end = self.selection_offsets()
        if end > start:
            first = text.count("\n", 0, start) + 1
            last = text.count("\n", 0, max(start, end - 1)) + 1
            return start, end, f"the selection ({f'line {first}' if first == last else f'lines {first}-{last}'})"
        try:
            spans = self.engine.spans_at(text, start, None, language=self.engine_language())
        except EngineError:
            spans = []
        if spans:
            return spans[-1].start, spans[-1].end, spans[-1].label
        return 0, len(text), "the whole buffer"

    def action_repair(self) -> None:
        if not self._model_ready():
            return
        self.regen = None
        self._before_op()
        start, end, label = self._target_range()
        if end <= start:
            self.notify("nothing to repair: the buffer is empty", severity="warning")
            return
        lang = self.engine_language()
        settings = self.settings
        self._start("repair", f"repair {label}", [(start, end)], self.cursor_offset(),
                    lambda text, cb, tok: self.engine.repair(text, start, end, language=lang, settings=settings,
                                                             callback=cb, cancel=tok))

    def action_instruct(self) -> None:
        if not self._model_ready():
            return
        info = getattr(self.engine, "info", {}) or {}
        if not info.get("instruct", False):
            self.notify("edit with instruction needs an instruction-tuned model (kind bd-instruct); "
                        f"this one is {info.get('kind', 'a base model')}", severity="error", timeout=8)
            return
        self.regen = None
        start, end, label = self._target_range()
        lang = self.engine_language()

        def go(instruction: str | None) -> None:
            if not instruction:
                return
            self._before_op()
            settings = self.settings
            self._start("instruct", f"edit {label}: {instruction[:40]}", [(start, end)], self.cursor_offset(),
                        lambda text, cb, tok: self.engine.instruct(text, start, end, instruction, language=lang,
                                                                   settings=settings, callback=cb, cancel=tok))

        self.push_screen(PromptScreen(f"Rewrite {label} following an instruction",
                                      placeholder="e.g. use a list comprehension"), go)

    # ------------------------------------------------------------------ running a model call

    def _start(self, op: str, label: str, spans: list[tuple[int, int]], cursor: int,
               call: Callable[[str, Callable[[EngineStep], None], CancelToken], EditResult]) -> None:
        base = self.editor.text
        running = Running(op, label, base, spans, CancelToken(), cursor)
        self.running = running
        self.accepted = None
        # the buffer is frozen while the model works: a read-only copy shows the decoding instead
        self.editor.read_only = True
        top = self.editor.scroll_y
        self._show_preview(running, base, [(s, e, "remask.old") for s, e in spans if e > s], top)
        self.set_op_status(f"{escape(label)} · starting · esc cancels")
        self.refresh_bindings()
        self._run_model(running, call)

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def _run_model(self, running: Running,
                   call: Callable[[str, Callable[[EngineStep], None], CancelToken], EditResult]) -> None:
        def callback(step: EngineStep) -> None:
            # Never wait for the screen: keep the newest step and schedule one redraw; a fast model
            # skips frames instead of being slowed down to the terminal's pace.
            if running.token.cancelled:
                return
            running.steps += 1
            decoded = sum(1 for p in step.pieces for _, m in p if not m)
            running.new_tokens, running.decoded = max(0, decoded - running.decoded), decoded
            running.latest = step
            if not running.flush_pending:
                running.flush_pending = True
                try:
                    self._ui_loop.call_soon_threadsafe(self._flush_step, running)
                except RuntimeError:
                    running.token.cancel()  # the app is gone

        try:
            result = call(running.base, callback, running.token)
        except Cancelled:
            self._call_ui(self._op_cancelled, running)
        except InstructModelRequired as e:
            self._call_ui(self._op_failed, running, str(e))
        except EngineError as e:
            self._call_ui(self._op_failed, running, str(e))
        except Exception as e:  # noqa: BLE001 - a crash in the model must not take the editor down
            self._call_ui(self._op_failed, running, f"model call failed: {type(e).__name__}: {e}")
        else:
            if running.token.cancelled:
                self._call_ui(self._op_cancelled, running)
            else:
                self._call_ui(self._op_done, running, result)

    def _call_ui(self, fn: Callable, *args: Any) -> None:
        try:
            self.call_from_thread(fn, *args)
        except RuntimeError:
            pass  # the app has exited

    def _show_preview(self, running: Running, text: str, marks: list[tuple[int, int, str]], top: float | None) -> None:
        preview = self.preview
        preview.load_text(text)
        loc = preview.offset_to_location
        preview.set_marks([Mark(loc(a), loc(b), name) for a, b, name in marks])
        if running.scroll_y is None:
            first = min((s for s, _ in running.spans), default=0)
            row = self.editor.offset_to_location(min(first, len(running.base)))[0]
            height = max(1, self.editor.size.height - 2)
            if top is not None and top <= row < top + height:
                running.scroll_y = int(top)
            else:
                running.scroll_y = max(0, row - height // 3)
        if not preview.display:
            preview.display = True
            self.editor.display = False
        y = running.scroll_y
        preview.call_after_refresh(preview.scroll_to, y=y, animate=False)

    def _flush_step(self, running: Running) -> None:
        running.flush_pending = False
        step = running.latest
        if step is not None:
            self._on_step(running, step)

    def _on_step(self, running: Running, step: EngineStep) -> None:
        """Draw one decoding state: the spans with committed tokens in place and placeholders for masked ones."""
        if running is not self.running:
            return
        spans = [(s.start, s.end) for s in step.spans] or running.spans
        pieces = step.pieces
        if len(spans) != len(pieces):  # candidates of one span: show the first
            spans, pieces = spans[:1], pieces[:1]
        text, marks = compose_preview(running.base, spans, pieces, self._specials)
        self._show_preview(running, text, marks, None)
        # tokens per step counted from the pieces (all rows of the batch decode in parallel); the worker
        # counts every step, the screen may skip some
        decoded = sum(1 for p in step.pieces for _, m in p if not m)
        total = sum(len(p) for p in step.pieces)
        new = running.new_tokens
        rate = decoded / max(1, step.step)
        cands = len(step.pieces)
        parts = [escape(running.label), f"step {step.step}", f"+{new} tok",
                 f"{rate:.1f} tok/step", f"{decoded}/{total} decoded"]
        if cands > 1 and len(step.spans) <= 1:
            parts.append(f"{cands} candidates in parallel")
        if self.show_timings:
            parts.append(f"{step.elapsed_s:.2f}s")
        parts.append("esc cancels")
        self.set_op_status(" · ".join(parts))

    def _end_running(self) -> None:
        self.running = None
        self.preview.display = False
        self.preview.clear_marks()
        self.editor.display = True
        self.editor.read_only = False
        self.editor.focus()
        self.refresh_bindings()

    def _op_cancelled(self, running: Running) -> None:
        if running is not self.running:
            return
        self._end_running()
        self.regen = None  # after a cancel the next regenerate starts again from the smallest span
        self.set_op_status(f"{escape(running.label)} · cancelled")
        self.notify("cancelled; the buffer is unchanged", timeout=3)

    def _op_failed(self, running: Running, message: str) -> None:
        if running is not self.running:
            return
        self._end_running()
        self.set_op_status(f"{escape(running.label)} · [b red]failed[/]")
        self.notify(message, title=running.op, severity="error", timeout=10)

    def _op_done(self, running: Running, result: EditResult) -> None:
        if running is not self.running:
            return
        self._end_running()
        if self.editor.text != running.base:  # cannot happen while frozen; never apply to a moved buffer
            self.notify("the buffer changed while the model worked; result dropped", severity="warning")
            return
        stats = result.stats or {}
        details = []
        if stats.get("tokens") is not None:
            details.append(f"{stats['tokens']} tok")
        if stats.get("nfe") is not None:
            details.append(f"{stats['nfe']} forwards")
        if stats.get("tokens_per_forward") is not None:
            details.append(f"{float(stats['tokens_per_forward']):.1f} tok/forward")
        if self.show_timings and stats.get("elapsed_s") is not None:
            details.append(f"{float(stats['elapsed_s']):.2f}s")
        self.last_summary = " · ".join(details)
        message = getattr(result, "message", None) or None
        self.last_message = message
        if running.op == "repair":
            self._show_flagged(running.base, list(result.flagged))
        candidates = [c for c in (result.candidates or []) if c.edits]
        if not candidates and result.edits and not result.candidates:
            candidates = [Candidate(list(result.edits), result.new_text, result.diff, 0.0)]
        candidates = [c for c in candidates if apply_edits(running.base, c.edits) != running.base
                      and not is_empty_answer(running.op, running.base, c)]
        if not candidates:
            # nothing to propose: say why, and say it in the status line too (never "done", never "accepted")
            if running.op == "repair" and not result.flagged:
                what = "no improbable tokens"
            elif message:
                what = message
            elif running.op == "fill_all":
                what = "nothing to change: the model left every hole as it was"
            else:
                what = "no suggestion: the model proposed no change; the text is unchanged"
            self.set_op_status(" · ".join([escape(running.label), escape(what)] + details))
            self.notify(what, timeout=6)
            return
        self.set_op_status(" · ".join([escape(running.label), "done"] + details))
        if message:
            self.notify(message, severity="warning", timeout=8)
        self.proposal = Proposal(running.op, running.label, running.base, running.cursor, candidates, stats=stats)
        self._present()

    # ------------------------------------------------------------------ proposals

    def _ghostable(self, p: Proposal) -> str | None:
        """The inserted text when the candidate is a single-line insertion at the cursor (shown as ghost text)."""
        edits = p.candidate.edits
        if p.op != "fill" or len(edits) != 1:
            return None
        e = edits[0]
        if e.start == e.end == p.cursor and e.new_text and "\n" not in e.new_text:
            return e.new_text
        return None

    def _present(self) -> None:
        p = self.proposal
        assert p is not None
        self.refresh_bindings()
        ghost = self._ghostable(p)
        n = len(p.candidates)
        which = f"candidate {p.index + 1}/{n}" if n > 1 else "1 candidate"
        stats = f" · {self.last_summary}" if self.last_summary else ""
        if ghost is not None:
            self._hide_diff()
            p.mode, p.ghost_text = "ghost", ghost
            self.editor.read_only = False
            self.editor.suggestion = ghost
            self.editor.tab_accepts = True
            self.editor.focus()
            self.set_op_status(f"{escape(p.label)} · {which}{stats} · tab/→ accept · esc reject"
                               + (" · ctrl+n/b other candidates" if n > 1 else ""))
        else:
            p.mode = "diff"
            self.editor.suggestion = ""
            self.editor.read_only = True
            new = apply_edits(p.base, p.candidate.edits)
            title = (f"[b]{escape(p.label)}[/b] · {which} · score {p.candidate.score:.2f}"
                     + ("" if p.candidate.parses else " · [yellow]does not parse[/]")
                     + "\n[dim]tab accept · esc reject · ctrl+n/ctrl+b candidates · ctrl+w "
                     + ("unified" if self.split_diff else "side by side") + "[/dim]")
            diff = self.query_one("#diff", DiffPanel)
            diff.show(title, p.base, new, self.path.name if self.path else "buffer", self.split_diff)
            diff.display = True
            self.set_op_status(f"{escape(p.label)} · {which}{stats} · tab accept · esc reject")

    def _hide_diff(self) -> None:
        self.query_one("#diff").display = False

    def _drop_proposal(self) -> None:
        p, self.proposal = self.proposal, None
        if p is None:
            return
        if p.mode == "ghost":
            self.editor.suggestion = ""
        self.editor.tab_accepts = False
        self._hide_diff()
        self.editor.read_only = False
        self.refresh_bindings()

    def action_accept(self) -> None:
        p = self.proposal
        if p is None:
            return
        editor = self.editor
        if p.mode == "ghost":
            rest = editor.suggestion
            self.proposal = None
            editor.suggestion = ""
            editor.tab_accepts = False
            if rest:
                editor.history.checkpoint()
                editor.insert(rest)
                editor.history.checkpoint()
        else:
            if editor.text != p.base:
                self._drop_proposal()
                self.notify("the buffer changed; proposal dropped", severity="warning")
                return
            lo, hi, replacement = union_change(p.base, p.candidate.edits)
            self._drop_proposal()
            editor.history.checkpoint()
            result = editor.replace(replacement, editor.offset_to_location(lo), editor.offset_to_location(hi))
            editor.history.checkpoint()
            editor.move_cursor(result.end_location)
        self.regen = None
        self.refresh_bindings()
        self.accepted = (p.label, p.base, editor.text) if editor.text != p.base else None
        self.set_op_status(f"{escape(p.label)} · accepted (ctrl+z undoes)")
        editor.focus()

    def _track_accepted(self) -> None:
        """Keep the status line true after an accept: ctrl+z takes the change back, ctrl+y puts it back."""
        if self.accepted is None:
            return
        label, before, after = self.accepted
        text = self.editor.text
        if text == before:
            self.set_op_status(f"{escape(label)} · undone (ctrl+y redoes)")
        elif text == after:
            self.set_op_status(f"{escape(label)} · accepted (ctrl+z undoes)")
        else:  # edited by hand since: the status no longer describes the buffer
            self.accepted = None
            if "accepted" in self.last_status or "undone" in self.last_status:
                self.set_op_status("")

    def action_reject(self) -> None:
        if self.running is not None:
            self.running.token.cancel()
            self.set_op_status(f"{escape(self.running.label)} · cancelling…")
            # the worker reports Cancelled at the next step; the buffer was never touched
            return
        if self.proposal is not None:
            label = self.proposal.label
            self._drop_proposal()
            self.set_op_status(f"{escape(label)} · rejected")
            self.editor.focus()
        elif self.flagged:  # a second escape puts the repair highlights away
            self.editor.clear_marks()
            self._clear_flagged()
            self.refresh_bindings()

    def action_candidate(self, delta: int) -> None:
        p = self.proposal
        if p is None or len(p.candidates) < 2:
            self.notify("only one candidate", timeout=2)
            return
        if p.mode == "ghost" and self.editor.text != p.base:
            self.notify("the buffer changed since; run it again for other candidates", severity="warning")
            return
        p.index = (p.index + delta) % len(p.candidates)
        self._present()

    def action_toggle_split(self) -> None:
        self.split_diff = not self.split_diff
        if self.proposal is not None and self.proposal.mode == "diff":
            self._present()

    # ------------------------------------------------------------------ repair: flagged tokens

    flagged_base: str | None = None

    def _show_flagged(self, base: str, flagged: list) -> None:
        self.flagged = flagged
        self.flagged_base = base
        table = self.query_one("#flagged", FlaggedPanel)
        table.clear()
        loc = self.editor.offset_to_location
        marks = []
        for i, t in enumerate(flagged):
            tip = f"p = {t.prob:.3g}" + (f" · the model prefers {t.best!r}" if t.best is not None else "")
            marks.append(Mark(loc(t.start), loc(t.end), "remask.flagged", tip))
            table.add_row(str(loc(t.start)[0] + 1), repr(t.text)[1:-1][:20], f"{t.prob:.3f}",
                          repr(t.best)[1:-1][:20] if t.best is not None else "", key=str(i))
        self.editor.set_marks(marks)
        table.border_title = f"improbable tokens ({len(flagged)})"
        table.display = bool(flagged)

    def _clear_flagged(self) -> None:
        self.flagged = []
        self.flagged_base = None
        table = self.query_one("#flagged", FlaggedPanel)
        table.clear()
        table.display = False

    @on(FlaggedPanel.RowSelected, "#flagged")
    def _flagged_selected(self, event: FlaggedPanel.RowSelected) -> None:
        i = int(event.row_key.value or 0)
        if 0 <= i < len(self.flagged) and self.editor.text == self.flagged_base:
            t = self.flagged[i]
            self.editor.selection = type(self.editor.selection)(self.editor.offset_to_location(t.start),
                                                                self.editor.offset_to_location(t.end))
            self.editor.focus()

    # ------------------------------------------------------------------ files

    def action_save(self, then: Callable[[], None] | None = None) -> None:
        if self.path is None:
            def chosen(path: str | None) -> None:
                if path:
                    self.path = Path(path).expanduser()
                    lang = editor_language(self.path, self.editor.available_languages)
                    self.editor.language = lang
                    self.preview.language = lang
                    self._save(then)

            self.push_screen(PromptScreen("Save as", placeholder="path/to/file.py"), chosen)
            return
        self._save(then)

    def _save(self, then: Callable[[], None] | None = None) -> bool:
        assert self.path is not None
        if getattr(self, "lossy", False):
            self.notify(f"not saved: {self.path.name} has line breaks the editor cannot keep (form feed, U+2028 "
                        "or mixed CRLF/LF); saving would rewrite them", severity="error", timeout=10)
            return False
        text = self.editor.text
        try:
            atomic_write_text(self.path, text)
        except FileError as e:
            self.notify(str(e), severity="error", timeout=10)
            return False
        self.saved_text = text
        self._update_file_status()
        self.notify(f"saved {self.path}", timeout=2)
        if then is not None:
            then()
        return True

    def _guard_unsaved(self, then: Callable[[], None], what: str) -> None:
        """Run ``then`` now if nothing is unsaved, else after the user chose save or discard."""
        if not self.modified:
            then()
            return

        def chosen(choice: str | None) -> None:
            if choice == "save":
                self.action_save(then)
            elif choice == "discard":
                then()

        name = self.path.name if self.path else "the new buffer"
        self.push_screen(ConfirmScreen(f"{name} has unsaved changes. Save them before {what}?"), chosen)

    def action_open(self) -> None:
        def load(path: str | None) -> None:
            if not path:
                return
            p = Path(path).expanduser()
            if not p.exists():
                self._set_buffer("", p)
                self.notify(f"new file {p}", timeout=3)
                return
            try:
                text = read_text_file(p)
            except FileError as e:
                self.notify(str(e), severity="error", timeout=10)
                return
            self._set_buffer(text, p)

        def ask() -> None:
            self._before_op()
            self.push_screen(PromptScreen("Open file", str(self.path or ""), "path/to/file.py"), load)

        self._guard_unsaved(ask, "opening another file")

    def action_quit_app(self) -> None:
        if self.running is not None:
            self.running.token.cancel()
        self._guard_unsaved(self.exit, "quitting")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_settings(self) -> None:
        def chosen(result: SettingsResult | None) -> None:
            if result is None:
                return
            self.settings = result.settings
            if self.engine is not None and hasattr(self.engine, "settings"):
                self.engine.settings = result.settings
            if result.model != self.model or (self.engine is None and not self.model_loading):
                if result.model != self.model:
                    self.adapter = None  # made for the previous model: it would be refused
                self.model = result.model
                self._engine_factory = None
                self.engine = None
                self._before_op()
                self._start_loading()
            self.notify("settings applied", timeout=2)

        self.push_screen(SettingsScreen(self.settings, self.model), chosen)
