"""The demo's rough edges (issue 17): a suggestion that does not parse is flagged with one candidate too, an
empty answer says "no suggestion", the details keep the run's statistics, the holes dropdown shows the hole.

The handlers are called directly with exact results (a junk one, an empty one); what Gradio does with their
return values is checked against Gradio's own components.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from assistant.api import Candidate, EditResult, Span, TextEdit
from ui.demo.app import DemoApp

TEXT = "def f(x):\n    <FILL>\n    return x\n"
HOLE = TEXT.index("<FILL>")
STATS = {"nfe": 6, "steps": 6, "tokens": 9, "tokens_per_forward": 1.5, "elapsed_s": 0.25}


def _apply(text: str, edits: list[TextEdit]) -> str:
    for e in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[:e.start] + e.new_text + text[e.end:]
    return text


def _cand(edits: list[TextEdit], score: float = -1.0, *, parses: bool = True, empty: bool = False) -> Candidate:
    c = Candidate(edits, _apply(TEXT, edits), "", score, parses=parses)
    c.empty = empty  # Candidate.empty: the model answered nothing
    return c


def _result(op: str, cands: list[Candidate], message: str | None = None) -> EditResult:
    r = EditResult(op, list(cands[0].edits), cands[0].new_text, "", cands, stats=dict(STATS))
    r.message = message  # EditResult.message: the engine's one line for the user
    return r


def _final(op: str, result: EditResult):
    status, live, diff, code, radio, details, state = DemoApp(None, examples={})._final(op, TEXT, result)
    return status, live, diff, str(code), radio, details, state


def test_a_single_candidate_that_does_not_parse_is_flagged_in_the_status():
    status, _live, diff, code, radio, details, _ = _final(
        "fill", _result("fill", [_cand([TextEdit(HOLE, HOLE + 6, "if x >")], parses=False)]))
    assert not radio["visible"]  # one candidate: no list, so the status must say it
    assert "does not parse" in status and "if x >" in code and details["parses"] is False
    # with the engine's own message, said once
    status, *_ = _final("fill", _result("fill", [_cand([TextEdit(HOLE, HOLE + 6, "if x >")], parses=False)],
                                        "the suggestion does not parse (the original did)"))
    assert status.count("does not parse") == 1 and "the original did" in status
    status, *_ = _final("fill", _result("fill", [_cand([TextEdit(HOLE, HOLE + 6, "return 1")])]))
    assert "parse" not in status and "no suggestion" not in status


def test_an_empty_answer_says_no_suggestion_and_offers_the_code_unchanged():
    status, live, diff, code, radio, details, state = _final(
        "fill", _result("fill", [_cand([], float("-inf"), empty=True)], "no suggestion: the model answered nothing"))
    assert "no suggestion" in status and status.count("no suggestion") == 1
    assert status.startswith("**fill** · no change") and "done" not in status
    assert code == TEXT and "no change" in diff and "no suggestion" in live
    assert details["edits"] == [] and details["empty"] is True and details["score"] is None  # never -inf
    # without the engine's message (the result left the text as it was): still said
    status, *_ = _final("fill", _result("fill", [_cand([])]))
    assert "no suggestion" in status


def test_an_empty_regenerate_candidate_is_not_the_one_shown():
    real = _cand([TextEdit(HOLE, HOLE + 6, "x += 1")], -0.4)
    empty = _cand([], float("-inf"), empty=True)
    status, _live, _diff, code, radio, details, _ = _final("regenerate", _result("regenerate", [empty, real]))
    assert "x += 1" in code and radio["value"] == 1 and details["edits"]
    assert "no suggestion" in dict((i, label) for label, i in radio["choices"])[0]
    assert "no suggestion" not in status


def test_details_keep_the_run_statistics_when_a_candidate_is_shown():
    """The candidates radio fires right after every result (its value is set): the details must keep the stats."""
    app = DemoApp(None, examples={})
    result = _result("instruct", [_cand([TextEdit(HOLE, HOLE + 6, "return x * 2")])])
    *_, details, state = app._final("instruct", TEXT, result)
    assert details["stats"] == STATS
    _diff, _code, details = app.choose(0, state)
    assert details["stats"] == STATS and details["op"] == "instruct"


class HoleEngine:
    def holes(self, text, language=None):
        return [Span(HOLE, HOLE + 6, "hole", "")]


def test_the_holes_dropdown_shows_the_hole_it_counts():
    """With no value the closed dropdown was blank under "1 found"; it shows the first hole, and only the
    visitor's choice (select, not the change a refresh makes) puts a hole into 'Characters'."""
    update = DemoApp(HoleEngine(), examples={}).holes(TEXT, "python")
    assert "1 found" in update["label"]
    assert update["choices"] == [("line 2: <FILL>", f"{HOLE}-{HOLE + 6}")]
    dd = gr.Dropdown(choices=update["choices"], value=update["value"], label=update["label"])
    assert update["value"] in [v for _, v in dd.choices]  # shown: the value is one of the choices
    none = DemoApp(type("NoHoles", (), {"holes": lambda self, t, lang=None: []})(), examples={}).holes("x = 1\n", "py")
    assert none["value"] is None and none["choices"] == [] and "none" in none["label"]

    class Picked:  # what gr.SelectData carries
        value = f"{HOLE}-{HOLE + 6}"

    assert DemoApp.picked_hole(Picked()) == (f"{HOLE}-{HOLE + 6}", "")


def test_the_holes_dropdown_is_picked_by_select_only():
    from ui.demo.app import build_app

    class Engine(HoleEngine):
        info = {"name": "scripted"}

    demo = build_app(Engine(), examples={"a.py": TEXT})
    cfg = demo.get_config_file()
    [dd] = [c for c in cfg["components"] if c.get("props", {}).get("elem_id") == "rm-holes"]
    assert dd["props"]["interactive"] is True  # read by no event as an input: Gradio would disable it
    triggers = [t for dep in cfg["dependencies"] for t in dep["targets"] if t[0] == dd["id"]]
    assert ("select" in [t[1] for t in triggers]) and "change" not in [t[1] for t in triggers], triggers
