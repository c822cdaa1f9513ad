"""The terminal editor's rough edges a new user hit (issue 17): empty answers, special tokens in the live view,
what ctrl+l really rewrites, the status after undo, fill-all with nothing to do, auto-indent, settings focus.

Scripted engines with the Engine's interface make every answer exact (an empty one, a junk one); the real
tokenizer of the test checkpoint supplies the special tokens the live view must strip.
"""

from __future__ import annotations

import re

import pytest
from textual.widgets.text_area import Selection

from assistant.api import Candidate, EditResult, EngineStep, Settings, Span, TextEdit
from ui.tui.app import RemaskApp, apply_edits, compose_preview, special_token_pattern, special_token_strings
from ui.tui.screens import HELP_KEYS, PromptScreen, SettingsScreen

SIZE = (100, 30)
SOURCE = "x = 1\n\n\ndef clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    <FILL>\n    return x\n"
HOLE = SOURCE.index("<FILL>")
EOS = "<[end▁of▁sentence]>"
MASK = "<[MASK_TOKEN]>"


def _result(op: str, text: str, cands: list[Candidate], message: str | None = None, **kw) -> EditResult:
    best = cands[0] if cands else Candidate([], text, "", 0.0)
    r = EditResult(op, list(best.edits), best.new_text, "", cands, stats={"tokens": 3, "nfe": 2}, **kw)
    r.message = message  # the engine's one-line word (EditResult.message)
    return r


def _cand(text: str, edits: list[TextEdit], score: float = -1.0, *, empty: bool = False,
          parses: bool = True) -> Candidate:
    c = Candidate(edits, apply_edits(text, edits), "", score, parses=parses)
    c.empty = empty  # Candidate.empty: the model answered nothing
    return c


class ScriptedEngine:
    """Answers each operation with what ``answers[op]`` returns for the text; streams ``steps`` first."""

    info = {"name": "scripted", "kind": "bd-instruct", "instruct": True}

    def __init__(self, answers: dict, steps: list[EngineStep] | None = None):
        self.answers = answers
        self.steps = steps or []
        self.settings = Settings()
        self.calls: list[tuple] = []

    def language_for(self, path):
        return "python"

    def holes(self, text, language=None):
        return [Span(m.start(), m.end(), "hole", "this hole") for m in re.finditer("<FILL>", text)]

    def spans_at(self, text, start, end=None, language=None):
        ls = text.rfind("\n", 0, start) + 1
        le = text.find("\n", start)
        line = text.count("\n", 0, start) + 1
        return [Span(ls, len(text) if le < 0 else le, "line", f"this line (line {line})")]

    def _op(self, op):
        def call(text, *args, callback=None, cancel=None, **kw):
            self.calls.append((op, args))
            for step in self.steps:
                callback(step)
            return self.answers[op](text)
        return call

    def __getattr__(self, name):
        if name in ("fill", "fill_all", "regenerate", "repair", "instruct"):
            return self._op(name)
        raise AttributeError(name)


def make_app(engine, text: str = SOURCE, path=None) -> RemaskApp:
    return RemaskApp(path, engine=engine, text=None if path else text, show_timings=False,
                     settings=Settings(max_new_tokens=8))


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


async def until(pilot, condition, timeout: float = 10.0) -> None:
    """Pause until ``condition()`` holds (messages hop widget -> app, styles update at idle: a loaded machine
    needs more than one pause); the assertion after it says what was wrong if it never does."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await pilot.pause(0.02)


def messages(app) -> list[str]:
    return [n.message for n in app._notifications]


# ---------------------------------------------------------------------------- empty and junk answers


@pytest.mark.parametrize("answer", [
    # what the engine answers now: an empty candidate, no edit, and a message
    lambda t: _result("fill", t, [_cand(t, [], float("-inf"), empty=True)],
                      "no suggestion: the model answered nothing (end of text at once)"),
    # what an engine without the empty rule answered: an edit that deletes the hole
    lambda t: _result("fill", t, [_cand(t, [TextEdit(HOLE, HOLE + 6, "")])]),
    # only whitespace
    lambda t: _result("fill", t, [_cand(t, [TextEdit(HOLE, HOLE + 7, "  \n")])]),
], ids=["marked-empty", "deleting-edit", "whitespace"])
async def test_an_empty_answer_is_no_suggestion_and_changes_nothing(answer):
    app = make_app(ScriptedEngine({"fill": answer}))
    async with app.run_test(size=SIZE) as pilot:
        app.editor.cursor_location = (6, 6)
        await pilot.press("ctrl+f")
        await settle(pilot)
        assert app.proposal is None and app.editor.text == SOURCE and not app.modified
        assert "no suggestion" in app.last_status and "done" not in app.last_status, app.last_status
        assert any("no suggestion" in m for m in messages(app))
        assert not app.check_action("accept", ())  # nothing to accept


async def test_an_empty_regenerate_candidate_is_never_offered():
    start, end = SOURCE.index("return x"), SOURCE.index("return x") + len("return x")

    def answer(t):
        return _result("regenerate", t, [_cand(t, [TextEdit(start, end, "return min(x, hi)")], -0.5),
                                         _cand(t, [TextEdit(start, end, "")], float("-inf"), empty=True)])

    app = make_app(ScriptedEngine({"regenerate": answer}))
    async with app.run_test(size=SIZE) as pilot:
        app.editor.cursor_location = (7, 6)
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert app.proposal is not None and len(app.proposal.candidates) == 1
        assert "min(x, hi)" in app.proposal.candidate.edits[0].new_text


async def test_the_engines_message_is_shown_with_a_proposal():
    """A suggestion that does not parse while the original did: proposed, with the engine's warning shown."""
    def answer(t):
        return _result("fill", t, [_cand(t, [TextEdit(HOLE, HOLE + 6, "if x >")], parses=False)],
                       "the suggestion does not parse (the original did)")

    app = make_app(ScriptedEngine({"fill": answer}))
    async with app.run_test(size=SIZE) as pilot:
        app.editor.cursor_location = (6, 6)
        await pilot.press("ctrl+f")
        await settle(pilot)
        assert app.proposal is not None and app.last_message
        assert any("does not parse" in m for m in messages(app))
        assert "does not parse" in str(app.query_one("#diff-title").render())


async def test_fill_all_with_nothing_to_change_says_so():
    app = make_app(ScriptedEngine({"fill_all": lambda t: _result("fill_all", t, [])}))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+g")
        await settle(pilot)
        assert app.proposal is None and app.editor.text == SOURCE
        assert "nothing to change" in app.last_status and "done" not in app.last_status, app.last_status
        assert any("nothing to change" in m for m in messages(app))


# ---------------------------------------------------------------------------- the live denoising view


def test_special_tokens_of_the_real_tokenizer_are_stripped(test_model_dir):
    from model.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(test_model_dir)

    class Engine:  # what the TUI reads from an engine: its tokenizer
        pass

    eng = Engine()
    eng.tok = tok
    specials = special_token_strings(eng)
    shown = [tok.token_str(i) for i in sorted(tok.special_ids)]
    assert EOS in shown and MASK in shown and set(shown) <= specials
    pattern = special_token_pattern(specials)
    base = "def f():\n    <FILL>\n"
    span = [(base.index("    <FILL>"), len(base))]
    pieces = [[("return", False)] + [(s, False) for s in shown] + [(" 1", False), ("", True)]]
    text, marks = compose_preview(base, span, pieces, pattern)
    assert text == "def f():\n    return 1░\n"
    assert all(text[a:b] and not any(s in text[a:b] for s in shown) for a, b, _ in marks)


async def test_the_live_view_never_shows_special_tokens():
    steps = [EngineStep(1, 1, 0.0, [[("return", False), ("", True), ("", True)]], 1),
             EngineStep(2, 2, 0.0, [[("return", False), (" lo", False), (EOS, False)]], 2),
             EngineStep(3, 3, 0.0, [[("return", False), (" lo" + EOS, False), ("<|endoftext|>", False)]], 0)]
    seen: list[str] = []
    engine = ScriptedEngine({"fill": lambda t: _result("fill", t, [_cand(t, [TextEdit(HOLE, HOLE + 6, "return lo")])])},
                            steps)
    app = make_app(engine)
    orig = app._on_step

    def spy(running, step):
        orig(running, step)
        seen.append(app.preview.text)

    app._on_step = spy
    async with app.run_test(size=SIZE) as pilot:
        app.editor.cursor_location = (6, 6)
        await pilot.press("ctrl+f")
        await settle(pilot)
    assert seen and any("return lo" in t for t in seen)
    assert not any(EOS in t or "<|endoftext|>" in t for t in seen)


# ---------------------------------------------------------------------------- ctrl+l, undo, enter, settings


async def test_ctrl_l_prompt_names_what_it_rewrites_and_the_help_agrees():
    app = make_app(ScriptedEngine({}))
    help_text = dict(HELP_KEYS)["ctrl+l"]
    assert "selection" in help_text and "largest span around the cursor" in help_text
    assert "selection / function" not in help_text
    async with app.run_test(size=SIZE) as pilot:
        app.editor.cursor_location = (0, 2)  # "x = 1": a top-level line, no function around it
        await pilot.press("ctrl+l")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        assert isinstance(app.screen, PromptScreen)
        assert app.screen.title_text == "Rewrite this line (line 1) following an instruction"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, PromptScreen))
        app.editor.selection = Selection((3, 0), (5, 0))
        await pilot.press("ctrl+l")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        assert app.screen.title_text == "Rewrite the selection (lines 4-5) following an instruction"


async def test_status_after_undo_no_longer_says_accepted():
    new = "return min(x, hi)"

    def answer(t):
        s = t.index("return x")
        return _result("regenerate", t, [_cand(t, [TextEdit(s, s + len("return x"), new)])])

    app = make_app(ScriptedEngine({"regenerate": answer}))
    async with app.run_test(size=SIZE) as pilot:
        app.editor.cursor_location = (7, 6)
        await pilot.press("ctrl+r")
        await settle(pilot)
        await pilot.press("tab")
        await until(pilot, lambda: new in app.editor.text)
        assert new in app.editor.text and "accepted" in app.last_status
        await pilot.press("ctrl+z")
        await until(pilot, lambda: "undone" in app.last_status)
        assert app.editor.text == SOURCE
        assert "accepted" not in app.last_status and "undone" in app.last_status, app.last_status
        await pilot.press("ctrl+y")
        await until(pilot, lambda: "accepted" in app.last_status)
        assert new in app.editor.text and "accepted" in app.last_status
        await pilot.press("x")  # edited by hand: the status no longer speaks of the accept
        await until(pilot, lambda: "accepted" not in app.last_status)
        assert "accepted" not in app.last_status and "undone" not in app.last_status


ENTER_CASES = [
    (".py", "def f(x):", ["enter", "y"], "def f(x):\n    y"),
    (".py", "def f(x):\n    if x:", ["enter", "y"], "def f(x):\n    if x:\n        y"),
    (".py", "def f(x):\n    y = 1", ["enter", "z"], "def f(x):\n    y = 1\n    z"),
    (".py", "if x:  # why", ["enter", "y"], "if x:  # why\n    y"),
    (".py", "\tif x:", ["enter", "y"], "\tif x:\n\t\ty"),
    (".py", "x = 1", ["enter", "y"], "x = 1\ny"),
    (".go", "x := 1:", ["enter", "y"], "x := 1:\ny"),  # ':' opens a block in Python only
    (".go", "func f() {", ["enter", "y"], "func f() {\n    y"),
    (".go", "func f() {}", ["left", "enter", "y"], "func f() {\n    y\n}"),
    (".go", "  call(a,", ["enter", "b"], "  call(a,\n  b"),
]


async def test_enter_keeps_the_indentation_and_indents_after_a_block_opener(tmp_path):
    app = make_app(ScriptedEngine({}), text="")
    async with app.run_test(size=SIZE) as pilot:
        for i, (suffix, before, keys, after) in enumerate(ENTER_CASES):
            app._set_buffer(before, tmp_path / f"f{i}{suffix}")  # what opening the file does
            app.editor.move_cursor(app.editor.document.end)
            await pilot.pause()
            await pilot.press(*keys)
            await until(pilot, lambda after=after: app.editor.text == after)
            assert app.editor.text == after, (before, keys)
            for _ in range(len(keys) + 1):  # undo takes the new line and its indentation back
                if app.editor.text == before:
                    break
                await pilot.press("ctrl+z")
                await pilot.pause()
            assert app.editor.text == before


async def test_the_focused_settings_field_is_marked():
    app = make_app(ScriptedEngine({}))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        for wid in ("set-threshold", "set-temperature"):
            screen.query_one(f"#{wid}").focus()
            rows = {row.query_one("Input").id: row for row in screen.query(".setting-row")}
            await until(pilot, lambda row=rows[wid]: row.has_class("-focused")
                        and row.query_one(".setting-label").styles.text_style.bold)
            await pilot.pause()
            labels = {k: str(r.query_one(".setting-label").render()) for k, r in rows.items()}
            assert labels[wid].startswith("▸") and sum(v.startswith("▸") for v in labels.values()) == 1, labels
            # the focused row alone is styled: its input's background, its label bold (no stale row stays marked)
            backgrounds = {k: r.query_one("Input").styles.background for k, r in rows.items()}
            assert all(backgrounds[k] != backgrounds[wid] for k in rows if k != wid), backgrounds
            bold = {k: bool(r.query_one(".setting-label").styles.text_style.bold) for k, r in rows.items()}
            assert bold == {k: k == wid for k in rows}, bold
