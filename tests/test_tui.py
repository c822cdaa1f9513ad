"""The terminal editor driven by real key presses (Textual ``run_test`` + ``Pilot``).

Model calls use the real ``Engine`` on the random ``test`` checkpoint: its text is noise, but the mechanics
(workers, streaming steps, proposals, accept as one undo step, cancel, errors) are the real ones.
"""

from __future__ import annotations

import os
import stat
import threading

import pytest
from textual.widgets.text_area import Selection

from assistant.api import EngineError, EngineStep, Settings
from ui.tui.app import RemaskApp, apply_edits, compose_preview, union_change
from ui.tui.files import FileError, atomic_write_text, read_text_file
from ui.tui.screens import ConfirmScreen, HelpScreen, PromptScreen, SettingsError, SettingsScreen, parse_settings

SIZE = (100, 30)

SOURCE = '''def add(a, b):
    return a + b


def clamp(x, lo, hi):
    if x < lo:
        return lo
    <FILL>
    return x


def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)
'''
FILL_ROW = 7  # the <FILL> line
RETURN_ROW = 15  # "return total / len(values)"


@pytest.fixture(scope="module")
def engine(test_model_dir):
    from assistant.engine import Engine

    return Engine.load(str(test_model_dir), settings=Settings(max_new_tokens=12, candidates=2))


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "sample.py"
    p.write_text(SOURCE, encoding="utf-8")
    return p


def make_app(path, engine, **kw) -> RemaskApp:
    # one step per block of 4 on the random model: the mechanics, at a fraction of the threshold schedule's steps
    settings = Settings(max_new_tokens=12, candidates=2, threshold=None, steps=1)
    return RemaskApp(path, engine=engine, settings=settings, show_timings=False, **kw)


async def settle(pilot) -> None:
    """Wait for model workers to finish and their UI updates to land."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


async def goto(pilot, row: int, col: int = 0) -> None:
    pilot.app.editor.cursor_location = (row, col)
    await pilot.pause()


def notifications(app) -> list:
    return list(app._notifications)


# ---------------------------------------------------------------------------- model operations


async def test_fill_accept_is_one_undo_step(src, engine):
    app = make_app(src, engine)
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, FILL_ROW, 4)
        await pilot.press("ctrl+f")
        await settle(pilot)
        p = app.proposal
        assert p is not None and p.op == "fill", app.last_status
        assert p.mode == "diff" and app.query_one("#diff").display  # replacing <FILL> is not a pure insertion
        assert app.editor.text == SOURCE  # nothing applied before accepting
        expected = apply_edits(SOURCE, p.candidate.edits)
        assert "<FILL>" not in expected
        await pilot.press("tab")
        await pilot.pause()
        assert app.proposal is None and not app.query_one("#diff").display
        assert app.editor.text == expected
        assert app.modified
        await pilot.press("ctrl+z")
        await pilot.pause()
        assert app.editor.text == SOURCE
        await pilot.press("ctrl+y")
        await pilot.pause()
        assert app.editor.text == expected


async def test_fill_at_insertion_point_is_ghost_text(tmp_path, engine):
    """The real engine fills a mid-line insertion point with one line: shown as ghost text, right arrow accepts."""
    p = tmp_path / "g.py"
    text = "def f(x, lo):\n    return \n\n\nprint(f(1, 2))\n"
    p.write_text(text, encoding="utf-8")
    app = make_app(p, engine)
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, 1, 11)
        await pilot.press("ctrl+f")
        await settle(pilot)
        if app.proposal is None:  # the random model produced nothing to insert
            assert any("no change" in n.message for n in notifications(app))
            return
        assert app.proposal.mode == "ghost" and app.editor.suggestion
        assert not app.query_one("#diff").display and not app.editor.read_only
        ghost = app.editor.suggestion
        await pilot.press("right")
        await pilot.pause()
        assert app.editor.text == text[:25] + ghost + text[25:]
        assert app.proposal is None
        await pilot.press("ctrl+z")
        await pilot.pause()
        assert app.editor.text == text


async def test_regenerate_reject_cycles_and_accept(src, engine):
    app = make_app(src, engine)
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, RETURN_ROW, 8)
        await pilot.press("ctrl+r")
        await settle(pilot)
        p = app.proposal
        assert p is not None and p.op == "regenerate", app.last_status
        first_label = p.label
        assert app.editor.read_only  # a pending diff freezes the buffer
        await pilot.press("escape")
        await pilot.pause()
        assert app.proposal is None and app.editor.text == SOURCE and not app.editor.read_only
        # the same key again, same place: the next larger span
        spans = app.regen.spans
        await pilot.press("ctrl+r")
        await settle(pilot)
        if len(spans) > 1:
            assert app.regen.index == 1
            assert app.proposal is None or app.proposal.label != first_label
        if app.proposal is not None:
            expected = apply_edits(SOURCE, app.proposal.candidate.edits)
            await pilot.press("tab")
            await pilot.pause()
            assert app.editor.text == expected
            await pilot.press("ctrl+z")
            await pilot.pause()
            assert app.editor.text == SOURCE


async def test_steps_stream_into_preview(src, engine):
    """The step callback reaches the UI: the preview showed placeholders and the status counted steps."""
    seen: list[tuple[str, str]] = []
    app = make_app(src, engine)
    orig = app._on_step

    def spy(running, step):
        orig(running, step)
        seen.append((app.preview.text, app.last_status))

    app._on_step = spy
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, RETURN_ROW, 8)
        await pilot.press("ctrl+r")
        await settle(pilot)
    assert seen, "no EngineStep reached the UI"
    assert any("░" in text for text, _ in seen)
    assert all("step" in status and "tok/step" in status for _, status in seen)


class HoldingEngine:
    """The real engine, but the step callback holds after the first step until the operation is cancelled."""

    def __init__(self, inner):
        self.inner = inner
        self.info = inner.info
        self.settings = inner.settings
        self.stepped = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def regenerate(self, text, start, end, *, callback=None, cancel=None, **kw):
        def cb(step: EngineStep) -> None:
            callback(step)
            self.stepped.set()
            for _ in range(2000):  # at most 20 s
                if cancel():
                    return
                threading.Event().wait(0.01)

        return self.inner.regenerate(text, start, end, callback=cb, cancel=cancel, **kw)


async def test_escape_cancels_running_operation(src, engine):
    holding = HoldingEngine(engine)
    app = make_app(src, holding)
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, RETURN_ROW, 8)
        await pilot.press("ctrl+r")
        for _ in range(1000):
            if holding.stepped.is_set() and app.running is not None and app.running.steps >= 1:
                break
            await pilot.pause(0.01)
        assert app.running is not None and app.preview.display and app.editor.read_only
        await pilot.press("escape")
        await settle(pilot)
        assert app.running is None and app.proposal is None
        assert app.editor.text == SOURCE and not app.editor.read_only and app.editor.display
        assert any("cancelled" in n.message for n in notifications(app))
        assert "cancelled" in app.last_status


class FailingEngine:
    info = {"name": "failing", "kind": "bd", "instruct": False}

    def __init__(self, exc: Exception):
        self.exc = exc
        self.settings = Settings()

    def language_for(self, path):
        return "python"

    def holes(self, text, language=None):
        raise self.exc

    def spans_at(self, text, start, end=None, language=None):
        from assistant.api import Span

        return [Span(start, min(len(text), start + 5), "statement", "this statement")]

    def _fail(self, *a, **kw):
        raise self.exc

    fill = regenerate = repair = instruct = fill_all = _fail


@pytest.mark.parametrize("exc, text", [(RuntimeError("GPU on fire"), "RuntimeError: GPU on fire"),
                                       (EngineError("no hole at the cursor"), "no hole at the cursor")])
async def test_failing_model_call_shows_error_and_keeps_buffer(src, exc, text):
    app = make_app(src, FailingEngine(exc))
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, FILL_ROW, 4)
        for key in ("ctrl+f", "ctrl+r", "ctrl+t"):
            await pilot.press(key)
            await settle(pilot)
            assert app.editor.text == SOURCE and app.proposal is None and app.running is None
            assert not app.editor.read_only and app.editor.display
        errors = [n for n in notifications(app) if n.severity == "error"]
        assert len(errors) == 3 and all(text in n.message for n in errors)
        await pilot.press("x")  # still editable
        assert app.editor.text != SOURCE


async def test_instruct_needs_instruct_model(src, engine):
    app = make_app(src, engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert not isinstance(app.screen, PromptScreen)
        assert any(n.severity == "error" and "instruction-tuned" in n.message for n in notifications(app))


@pytest.fixture(scope="module")
def instruct_engine(test_model_dir):
    """The random test weights labelled as an instruct checkpoint (the engine only checks the kind)."""
    import dataclasses

    from assistant.engine import Engine
    from model.checkpoint import load_checkpoint
    from model.network import remask_config

    model, tok = load_checkpoint(test_model_dir, device="cpu")
    model.remask_config = dataclasses.replace(remask_config(model), kind="bd-instruct")
    return Engine(model, tok, Settings(max_new_tokens=12), "test-instruct")


async def test_instruct_prompt_runs_on_instruct_model(src, instruct_engine):
    app = make_app(src, instruct_engine)
    async with app.run_test(size=SIZE) as pilot:
        app.editor.selection = Selection((1, 0), (2, 0))  # "    return a + b\n"
        await pilot.pause()
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert isinstance(app.screen, PromptScreen)
        await pilot.press(*"use sum")
        await pilot.press("enter")
        await settle(pilot)
        assert app.running is None and app.editor.text == SOURCE
        # a random model: either a proposal limited to the selected line, or a clear error (no code in the reply)
        if app.proposal is not None:
            assert app.proposal.op == "instruct"
            lo, hi = SOURCE.index("    return a"), SOURCE.index("\n\n\ndef clamp") + 1
            assert all(lo <= e.start and e.end <= hi for e in app.proposal.candidate.edits)
        else:
            assert any(n.severity in ("error", "information") for n in notifications(app))


async def test_repair_highlights_flagged_tokens(src, engine):
    app = make_app(src, engine)
    app.settings = Settings(max_new_tokens=12, candidates=1, repair_threshold=0.999)  # a random model: all flagged
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, 1, 8)
        await pilot.press("ctrl+t")
        await settle(pilot)
        flagged = app.flagged
        assert flagged, app.last_status
        table = app.query_one("#flagged")
        assert table.display and table.row_count == len(flagged)
        marks = [m for m in app.editor.marks if m.name == "remask.flagged"]
        assert len(marks) == len(flagged)
        loc = app.editor.offset_to_location
        assert {(m.start, m.end) for m in marks} == {(loc(t.start), loc(t.end)) for t in flagged}
        assert all(0.0 <= t.prob <= 1.0 for t in flagged)
        first = flagged[0]
        tip = app.editor.mark_at(loc(first.start)).tip  # shown on hover
        assert tip.startswith(f"p = {first.prob:.3g}")
        # the buffer is untouched until a proposal is accepted; rejecting keeps the highlights
        if app.proposal is not None:
            await pilot.press("escape")
            await pilot.pause()
        assert app.editor.text == SOURCE and app.editor.marks and table.display
        await pilot.press("escape")  # a second escape puts the highlights away
        await pilot.pause()
        assert not app.editor.marks and not table.display
        await pilot.press("ctrl+t")
        await settle(pilot)
        assert app.editor.marks
        if app.proposal is not None:
            await pilot.press("escape")
            await pilot.pause()
        await pilot.press("x")  # editing makes the scores stale: highlights go
        await pilot.pause()
        assert not app.editor.marks and not table.display


# ---------------------------------------------------------------------------- ghost text (scripted engine)


class GhostEngine:
    """Proposes a single-line insertion at the cursor: the ghost-text path."""

    info = {"name": "ghost", "kind": "bd", "instruct": False}

    def __init__(self):
        self.settings = Settings()

    def language_for(self, path):
        return "python"

    def fill(self, text, start, end=None, *, callback=None, cancel=None, **kw):
        from assistant.api import Candidate, EditResult, TextEdit

        edits = [TextEdit(start, start, "lo if x < lo else x")]
        callback(EngineStep(1, 1, 0.0, [[("lo", False), (" if", True)]], 1))
        c = [Candidate(edits, apply_edits(text, edits), "", -1.0),
             Candidate([TextEdit(start, start, "min(max(x, lo), hi)")], "", "", -2.0)]
        return EditResult("fill", edits, c[0].new_text, "", c)


async def test_ghost_text_accept_cycle_and_undo(tmp_path):
    p = tmp_path / "g.py"
    p.write_text("def f(x, lo):\n    return \n", encoding="utf-8")
    app = make_app(p, GhostEngine())
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, 1, 11)
        await pilot.press("ctrl+f")
        await settle(pilot)
        assert app.proposal is not None and app.proposal.mode == "ghost"
        assert app.editor.suggestion == "lo if x < lo else x"
        assert not app.query_one("#diff").display
        await pilot.press("ctrl+n")  # the next candidate replaces the ghost text
        await pilot.pause()
        assert app.editor.suggestion == "min(max(x, lo), hi)"
        await pilot.press("tab")
        await pilot.pause()
        assert app.editor.text == "def f(x, lo):\n    return min(max(x, lo), hi)\n"
        assert app.editor.suggestion == "" and app.proposal is None
        await pilot.press("ctrl+z")
        await pilot.pause()
        assert app.editor.text == "def f(x, lo):\n    return \n"
        # escape rejects ghost text
        await goto(pilot, 1, 11)
        await pilot.press("ctrl+f")
        await settle(pilot)
        assert app.editor.suggestion
        await pilot.press("escape")
        await pilot.pause()
        assert app.editor.suggestion == "" and app.proposal is None
        assert app.editor.text == "def f(x, lo):\n    return \n"
        # typing just before: the accepted change is still its own undo step
        await pilot.press("a")
        await pilot.press("ctrl+f")
        await settle(pilot)
        await pilot.press("tab")
        await pilot.pause()
        assert app.editor.text == "def f(x, lo):\n    return alo if x < lo else x\n"
        await pilot.press("ctrl+z")
        await pilot.pause()
        assert app.editor.text == "def f(x, lo):\n    return a\n"


# ---------------------------------------------------------------------------- files, prompts, settings


async def test_save_is_atomic_and_clears_modified(src, engine):
    os.chmod(src, 0o640)
    app = make_app(src, engine)
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, 0, 0)
        await pilot.press("#", " ", "h", "i", "enter")
        assert app.modified
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not app.modified
    assert src.read_text(encoding="utf-8") == "# hi\n" + SOURCE
    assert stat.S_IMODE(src.stat().st_mode) == 0o640
    assert sorted(f.name for f in src.parent.iterdir()) == ["sample.py"]  # no temp file left


async def test_line_breaks_the_editor_would_rewrite_are_never_saved(tmp_path, engine):
    """A form feed, U+2028 in a string or mixed CRLF/LF would change on save: not modified on open, not saved."""
    raw = 's = "a\u2028b"\r\n\x0c\ndef f():\n    pass\n'
    path = tmp_path / "odd.py"
    path.write_bytes(raw.encode("utf-8"))
    app = make_app(path, engine)
    async with app.run_test(size=SIZE) as pilot:
        assert not app.modified and app.lossy
        await goto(pilot, 0, 0)
        await pilot.press("#", "enter")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.modified and any("not saved" in n.message for n in notifications(app))
    assert path.read_bytes() == raw.encode("utf-8")


async def test_save_writes_through_a_symlink_and_refuses_a_read_only_file(src, engine):
    link = src.parent / "link.py"
    link.symlink_to(src)
    app = make_app(link, engine)
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, 0, 0)
        await pilot.press("#", "enter")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not app.modified
        assert link.is_symlink() and src.read_text(encoding="utf-8") == "#\n" + SOURCE
        os.chmod(src, 0o444)
        await pilot.press("#")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.modified and any("read-only" in n.message for n in notifications(app))
    assert src.read_text(encoding="utf-8") == "#\n" + SOURCE


def test_every_highlighted_language_mounts_without_crashing():
    """Textual's tree-sitter highlighting segfaulted on JavaScript and JSON with the installed grammars: every
    language the editor maps a suffix to is mounted in a child process, so a crash is a failure, not a dead run."""
    import subprocess
    import sys

    from ui.tui.app import EDITOR_LANGUAGES

    langs = sorted(set(EDITOR_LANGUAGES.values()))
    code = f"""
import asyncio
from textual.app import App
from textual.widgets import TextArea
class A(App):
    def __init__(self, lang):
        super().__init__(); self.lang = lang
    def compose(self):
        yield TextArea.code_editor("x = 1\\nfoo(bar)\\n", language=self.lang)
async def main():
    for lang in {langs!r}:
        async with A(lang).run_test() as pilot:
            await pilot.pause()
        print(lang, flush=True)
asyncio.run(main())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert r.stdout.split() == langs


async def test_new_buffer_save_as(tmp_path, engine):
    target = tmp_path / "new.py"
    app = make_app(None, engine)
    async with app.run_test(size=SIZE) as pilot:
        assert app.editor.text == "" and app.path is None
        await pilot.press("x", "=", "1")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, PromptScreen)
        app.screen.query_one("Input").value = str(target)
        await pilot.press("enter")
        await pilot.pause()
        assert app.path == target and not app.modified
    assert target.read_text(encoding="utf-8") == "x=1"


async def test_quit_with_unsaved_changes_asks(src, engine):
    app = make_app(src, engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("z")
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")  # cancel: still editing
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and app.editor.text == "z" + SOURCE
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.press("s")  # save, then quit
        await pilot.pause()
    assert src.read_text(encoding="utf-8") == "z" + SOURCE


async def test_open_refuses_binary_and_keeps_buffer(src, tmp_path, engine):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x7fELF\x00\x01\x02" * 10)
    other = tmp_path / "other.py"
    other.write_text("print('other')\n", encoding="utf-8")
    app = make_app(src, engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one("Input").value = str(binary)
        await pilot.press("enter")
        await pilot.pause()
        assert app.editor.text == SOURCE and app.path == src
        assert any(n.severity == "error" and "binary" in n.message for n in notifications(app))
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one("Input").value = str(other)
        await pilot.press("enter")
        await pilot.pause()
        assert app.editor.text == "print('other')\n" and app.path == other and not app.modified


async def test_help_and_settings_screens(src, engine):
    app = make_app(src, engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("f2")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)
        app.screen.query_one("#set-threshold").value = "1.5"
        await pilot.click("#apply")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)  # rejected, with a message
        assert "threshold" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#set-threshold").value = "0.7"
        app.screen.query_one("#set-steps").value = "2"
        app.screen.query_one("#set-steps").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert "either" in str(app.screen.query_one("#settings-error").render())  # both set: ambiguous
        app.screen.query_one("#set-steps").value = ""
        app.screen.query_one("#set-temperature").value = "0.5"
        app.screen.query_one("#set-block").value = "8"
        app.screen.query_one("#set-block").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, SettingsScreen), str(app.screen.query_one("#settings-error").render())
        assert (app.settings.threshold, app.settings.temperature, app.settings.block_size) == (0.7, 0.5, 8)
        assert app.engine is engine  # same model folder: no reload


async def test_settings_model_folder_reloads_the_model(src, engine, test_model_dir, tmp_path):
    app = make_app(src, engine)
    async with app.run_test(size=SIZE) as pilot:
        for folder, ok in ((tmp_path / "no-such-model", False), (test_model_dir, True)):
            await pilot.press("f2")
            await pilot.pause()
            field = app.screen.query_one("#set-model")
            field.value = str(folder)
            field.focus()
            await pilot.press("enter")
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert not app.model_loading and app.model == str(folder)
            if ok:
                assert app.engine is not None and app.engine is not engine
                assert app.engine.info["kind"] == "bd"
            else:
                assert app.engine is None
                assert any(n.severity == "error" and "could not load" in n.message for n in notifications(app))
        assert app.editor.text == SOURCE


async def test_model_loads_in_worker_while_editing(tmp_path, engine):
    release = threading.Event()

    def factory():
        release.wait(20)
        return engine

    app = RemaskApp(None, engine_factory=factory, show_timings=False)
    async with app.run_test(size=SIZE) as pilot:
        assert app.model_loading and app.query_one("#status-spinner").display
        await pilot.press("a", "b")  # the UI answers while the model loads
        assert app.editor.text == "ab"
        await pilot.press("ctrl+f")
        await pilot.pause()
        assert any("still loading" in n.message for n in notifications(app))
        release.set()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.engine is engine and not app.model_loading
        assert not app.query_one("#status-spinner").display


async def test_model_load_failure_is_reported(tmp_path):
    def factory():
        raise FileNotFoundError("no model folder at /nowhere")

    app = RemaskApp(None, engine_factory=factory, show_timings=False)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.engine is None and not app.model_loading
        assert any(n.severity == "error" and "/nowhere" in n.message for n in notifications(app))
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.running is None


# ---------------------------------------------------------------------------- pure helpers


def test_read_text_file_refusals(tmp_path):
    big = tmp_path / "big.py"
    big.write_text("x = 1\n" * 100)
    with pytest.raises(FileError, match="too large"):
        read_text_file(big, max_bytes=100)
    (tmp_path / "bin").write_bytes(b"ab\x00cd")
    with pytest.raises(FileError, match="binary"):
        read_text_file(tmp_path / "bin")
    (tmp_path / "latin").write_bytes("café".encode("latin-1"))
    with pytest.raises(FileError, match="UTF-8"):
        read_text_file(tmp_path / "latin")
    with pytest.raises(FileError, match="no such file"):
        read_text_file(tmp_path / "missing.py")
    with pytest.raises(FileError, match="folder"):
        read_text_file(tmp_path)
    assert read_text_file(big) == "x = 1\n" * 100


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "a.py"
    p.write_text("old\n")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(FileError, match="No space left"):
        atomic_write_text(p, "new\n")
    assert p.read_text() == "old\n"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.py"]
    with pytest.raises(FileError, match="does not exist"):
        atomic_write_text(tmp_path / "nope" / "b.py", "x")


def test_union_change_and_preview_composition():
    from assistant.api import TextEdit

    base = "a = 1\nb = 2\nc = 3\n"
    edits = [TextEdit(4, 5, "10"), TextEdit(16, 17, "30")]
    lo, hi, rep = union_change(base, edits)
    assert base[:lo] + rep + base[hi:] == apply_edits(base, edits) == "a = 10\nb = 2\nc = 30\n"
    text, marks = compose_preview(base, [(4, 5), (16, 17)], [[("1", False), ("", True)], [("", True)]])
    assert text == "a = 1░\nb = 2\nc = ░\n"
    assert [(text[a:b], name) for a, b, name in marks] == [("1", "remask.new"), ("░", "remask.masked"),
                                                          ("░", "remask.masked")]
    # a hole span that owns its line: the raw tokens get the line's indentation and line end while decoding
    base = "def f():\n    <FILL>\n    return x\n"
    s = base.index("    <FILL>")
    span = [(s, s + len("    <FILL>\n"))]
    assert compose_preview(base, span, [[("a", False), ("", True)]])[0] == "def f():\n    a░\n    return x\n"
    assert compose_preview(base, span, [[("    ", False), ("a", False), ("\n", False)]])[0] == \
        "def f():\n    a\n    return x\n"


def test_parse_settings_validation():
    s = parse_settings(Settings(), "0.8", "", "", "0")
    assert (s.threshold, s.block_size, s.steps, s.temperature) == (0.8, None, None, 0.0)
    s = parse_settings(Settings(), "", "4", "2", "0.3")
    assert (s.threshold, s.block_size, s.steps) == (None, 4, 2)
    for args, msg in [(("0", "", "", "0"), "threshold"), (("x", "", "", "0"), "not a valid"),
                      (("0.9", "0", "", "0"), "block size"), (("", "", "", "0"), "either a threshold"),
                      (("0.9", "", "2", "0"), "either a threshold"),
                      (("", "", "0", "0"), "steps"), (("0.9", "", "", "-1"), "temperature")]:
        with pytest.raises(SettingsError, match=msg):
            parse_settings(Settings(), *args)


def test_cli_arguments_and_binary_refusal(tmp_path, capsys):
    import argparse

    from ui.tui import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments("tui", parser)
    args = parser.parse_args([str(tmp_path / "x.py"), "--model", "random:test", "--steps", "2"])
    assert args.file.endswith("x.py") and args.model == "random:test" and args.steps == 2
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x00\x01")
    assert cli.run("tui", parser.parse_args([str(blob)])) == 2
    assert "binary" in capsys.readouterr().err
