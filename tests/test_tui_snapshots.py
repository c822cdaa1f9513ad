"""Snapshot tests of the terminal editor: the main screen, the diff view and the diffusion animation.

Snapshots must not depend on CPU arithmetic or timing, so these use a scripted engine with the Engine's
interface that replays a recorded sequence of decoding steps (the behaviour with the real Engine on a random
checkpoint is covered in tests/test_tui.py). Update the baselines with ``pytest --snapshot-update``.
"""

from __future__ import annotations

import re
import threading

from assistant.api import Cancelled, Candidate, EditResult, EngineStep, Settings, Span, TextEdit
from ui.tui.app import RemaskApp, apply_edits

SIZE = (100, 30)

SOURCE = '''import math


def area(radius):
    """Area of a circle."""
    return math.pi * radius ** 2


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

# the tokens a (pretend) decoder produces for each span, and in which step each one is committed
RECORDED = {
    "fill": (["if", " x", " >", " hi", ":", "\n", "        ", "return", " hi"], [2, 1, 3, 2, 1, 3, 2, 1, 2]),
    "regenerate": (["    ", "return", " sum", "(", "values", ")", " /", " max", "(", "len", "(", "values", ")",
                    ",", " 1", ")"], [1, 2, 2, 1, 3, 4, 3, 5, 4, 6, 5, 6, 7, 5, 7, 8]),
}


class ScriptedEngine:
    """The Engine interface, replaying recorded steps; ``hold_at`` blocks after that step until cancelled."""

    info = {"name": "scripted-test", "kind": "bd", "instruct": False, "block_size": 4, "description": "scripted"}

    def __init__(self, hold_at: int | None = None) -> None:
        self.settings = Settings()
        self.hold_at = hold_at
        self.held = threading.Event()

    def language_for(self, path):
        return "python"

    def holes(self, text, language=None):
        return [Span(m.start(), m.end(), "hole", "<FILL>") for m in re.finditer(r"<FILL>", text)]

    def spans_at(self, text, start, end=None, language=None):
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", start)
        line_end = len(text) if line_end < 0 else line_end
        out = [Span(line_start, line_end, "statement", f"this statement (line {text.count(chr(10), 0, start) + 1})")]
        fn = text.rfind("\ndef ", 0, start) + 1
        nxt = text.find("\n\n\ndef ", start)
        out.append(Span(fn, len(text) - 1 if nxt < 0 else nxt, "function", "this function"))
        return out

    def _decode(self, op, text, span, callback, cancel, indent=""):
        tokens, order = RECORDED[op]
        n_steps = max(order)
        elapsed = 0.0
        for step in range(1, n_steps + 1):
            if cancel is not None and cancel():
                raise Cancelled()
            elapsed += 0.05
            pieces = [[(t, False) if o <= step else ("", True) for t, o in zip(tokens, order, strict=True)]]
            if callback is not None:
                callback(EngineStep(step, step, elapsed, pieces, sum(o == step for o in order),
                                    [Span(span[0], span[1], op, op)]))
            if self.hold_at == step:
                self.held.set()
                while not (cancel is not None and cancel()):
                    threading.Event().wait(0.01)
                raise Cancelled()
        new = "".join(tokens)
        edits = [TextEdit(span[0], span[1], new)]
        cands = [Candidate(edits, apply_edits(text, edits), "", -0.42)]
        return EditResult(op, edits, cands[0].new_text, "", cands, spans=[Span(span[0], span[1], op, op)],
                          stats={"tokens": len(tokens), "nfe": n_steps, "tokens_per_forward": len(tokens) / n_steps,
                                 "elapsed_s": elapsed, "steps": n_steps})

    def fill(self, text, start, end=None, *, language=None, settings=None, callback=None, cancel=None):
        i = text.find("<FILL>")
        return self._decode("fill", text, (i, i + len("<FILL>")), callback, cancel)

    def regenerate(self, text, start, end, *, language=None, n=None, settings=None, callback=None, cancel=None):
        return self._decode("regenerate", text, (start, end), callback, cancel)


def _app(engine=None) -> RemaskApp:
    return RemaskApp(None, engine=engine or ScriptedEngine(), text=SOURCE, show_timings=False)


async def _goto(pilot, row: int, col: int = 0) -> None:
    pilot.app.editor.cursor_blink = False  # a blinking cursor would make the snapshot depend on timing
    pilot.app.editor.cursor_location = (row, col)
    await pilot.pause()


def test_main_screen(snap_compare):
    async def before(pilot):
        await _goto(pilot, 11, 4)

    assert snap_compare(_app(), terminal_size=SIZE, run_before=before)


def test_diff_view(snap_compare):
    async def before(pilot):
        await _goto(pilot, 11, 4)
        await pilot.press("ctrl+f")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert pilot.app.proposal is not None and pilot.app.proposal.mode == "diff"

    assert snap_compare(_app(), terminal_size=SIZE, run_before=before)


def test_diff_view_side_by_side(snap_compare):
    async def before(pilot):
        await _goto(pilot, 19, 8)
        await pilot.press("ctrl+r")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("ctrl+w")
        await pilot.pause()

    assert snap_compare(_app(), terminal_size=SIZE, run_before=before)


def test_diffusion_animation_at_step_4(snap_compare):
    """Regenerating ``return total / len(values)``, frozen after denoising step 4 of 8."""
    engine = ScriptedEngine(hold_at=4)

    async def before(pilot):
        await _goto(pilot, 19, 8)
        await pilot.press("ctrl+r")
        for _ in range(500):
            if engine.held.is_set() and pilot.app.running is not None and pilot.app.running.steps == 4:
                break
            await pilot.pause(0.01)
        await pilot.pause()
        assert pilot.app.preview.display and "░" in pilot.app.preview.text

    assert snap_compare(_app(engine), terminal_size=SIZE, run_before=before)
