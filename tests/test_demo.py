"""The Gradio demo (``ui.demo``): its helpers, and the app served for real and driven with ``gradio_client``.

The model is the random ``test`` checkpoint, so the text it writes is noise; what is checked is the mechanics:
the edits are valid against the text sent, only the chosen span changes, the denoising steps stream, bad
input comes back as a message, and one model instance serves the requests one at a time.
"""

from __future__ import annotations

import json
import os
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest

from assistant.api import Cancelled, EngineError, EngineStep, Settings, Span
from assistant.engine import Engine
from ui.demo import app as demo_app
from ui.demo.app import (
    DemoApp,
    build_app,
    line_span,
    load_examples,
    make_settings,
    model_card,
    render_step,
    resolve_span,
)

EXAMPLES = load_examples()
INTERVALS = EXAMPLES["intervals.py"]
WORD_COUNT = EXAMPLES["word_count.py"]
MAX_NEW = 12  # keeps each decode to a few dozen forwards of the 300k-parameter model


def _apply(text: str, edits: list[dict]) -> str:
    for e in sorted(edits, key=lambda e: e["start"], reverse=True):
        text = text[: e["start"]] + e["new_text"] + text[e["end"]:]
    return text


def _args(code: str, lines: str = "", chars: str = "", instruction: str = "", *, n: int = 2, steps: int = 0):
    """The operation endpoints' inputs, in the order of the page's controls."""
    return (code, "python", lines, chars, instruction, 0.9, steps, 0, 0.0, n, 0, MAX_NEW)


# ----------------------------------------------------------------------------------------------- helpers


def test_examples_have_holes_and_every_language_is_known():
    assert {"intervals.py", "stack.py", "word_count.py", "debounce.js", "lib.rs"} <= set(EXAMPLES)
    assert "<FILL>" in INTERVALS and "<FILL>" in EXAMPLES["debounce.js"]
    assert demo_app.language_of("lib.rs") == "rust" and demo_app.language_of("debounce.js") == "javascript"


def test_line_range_and_selection_resolve_to_offsets():
    text = "a = 1\nb = 2\r\nc = 3\n"
    assert line_span(text, 2, 2) == (6, 11)  # the line's content, without its \r\n
    assert resolve_span(text, "1-2", "") == (0, 11)
    assert resolve_span(text, "3", None) == (13, 18)
    assert resolve_span(text, "2", "4-1") == (1, 4)  # characters win, and come back ordered
    assert resolve_span(text, "", "7") == (7, 7)  # an insertion point
    assert resolve_span(text, "", "") is None
    with pytest.raises(EngineError, match="outside the file"):
        resolve_span(text, "9", "")
    with pytest.raises(EngineError, match="range like"):
        resolve_span(text, "two", "")
    with pytest.raises(EngineError, match="past the end"):
        resolve_span(text, "", "3-99")
    # a form feed or U+2028 is not a line break in the editor, a lone \r is
    odd = "a\x0cb\nc\u2028d\re\n"
    assert [odd[slice(*line_span(odd, i, i))] for i in (1, 2, 3)] == ["a\x0cb", "c\u2028d", "e"]


def test_settings_from_controls_are_validated():
    s = make_settings(Settings(), 0.8, 0, 0, 0.0, 3, -1, 64)
    got = (s.threshold, s.steps, s.block_size, s.seed, s.candidates, s.max_new_tokens)
    assert got == (0.8, None, None, None, 3, 64)
    s = make_settings(Settings(), 0.8, 2, 8, 0.5, 1, 7, 16)
    assert (s.threshold, s.steps, s.block_size, s.temperature, s.seed) == (None, 2, 8, 0.5, 7)
    for bad, match in [((0.0, 0, 0, 0, 1, 0, 8), "threshold"), ((0.9, 0, 0, 0, 99, 0, 8), "candidates"),
                       ((0.9, 0, 0, 0, 1, 0, 100_000), "max new tokens"), ((0.9, 0, 0, 5.0, 1, 0, 8), "temperature"),
                       ((0.9, 0, 0, 0, 0, 0, 8), "candidates"), ((0.9, 0, 0, 0, 1, 0, 0), "max new tokens"),
                       ((0.9, float("inf"), 0, 0, 1, 0, 8), "whole number"),
                       ((0.9, 0, 0, 0, 1, float("nan"), 8), "whole number"), ((0.9, 0, 0, 0, 1, 2**70, 8), "seed")]:
        with pytest.raises(EngineError, match=match):
            make_settings(Settings(), *bad)


def test_step_rendering_marks_masked_and_newly_committed_tokens():
    text = "x = 1\n<FILL>\ny = 2\n"
    span = Span(6, 12, "hole", "hole")
    first = EngineStep(1, 1, 0.1, [[("a", False), ("", True), ("", True)]], 1, [span])
    second = EngineStep(2, 2, 0.2, [[("a", False), ("<b>", False), ("", True)]], 1, [span])
    h1 = render_step(first, text, (6, 12), None)
    h2 = render_step(second, text, (6, 12), [[False, True, True]])
    assert h1.count("░") == 2 and h2.count("░") == 1
    assert '<span class="rm-new">&lt;b&gt;</span>' in h2  # committed by this step, escaped
    assert '<span class="rm-gen">a</span>' in h2  # committed earlier
    assert "x = 1" in h2 and "y = 2" in h2 and "<FILL>" not in h2  # context around the span, span replaced


def test_model_card_reads_the_model_folder(tmp_path, test_model_dir):
    engine = Engine.load(str(test_model_dir))
    (tmp_path / "model_card.json").write_text(json.dumps(
        {"name": "remask-small", "training_tokens": 2_500_000_000, "evaluation": {"HumanEval-infill": 0.412}}))
    (tmp_path / "MODEL.md").write_text("---\nlicense: apache-2.0\n---\n# remask-small\nTrained on permissive code.\n")
    card = model_card(engine, tmp_path)
    assert "2.5B" in card and "HumanEval-infill" in card and "0.412" in card
    assert "Trained on permissive code." in card and "license:" not in card
    assert "301.5k" in card or "parameters" in card
    bare = model_card(engine, None)  # no card files: what the engine knows
    assert "block size" in bare and str(engine.info["block_size"]) in bare


def test_cancelling_the_stream_stops_the_engine_and_frees_the_model(test_model_dir):
    engine = Engine.load(str(test_model_dir), settings=Settings(max_new_tokens=64))
    app = DemoApp(engine, examples={})
    seen = threading.Event()
    outcome: list[BaseException] = []

    def call(callback, cancel):
        def cb(step):
            seen.set()
            callback(step)
        try:
            return engine.fill_all(INTERVALS, language="python", callback=cb, cancel=cancel)
        except BaseException as e:
            outcome.append(e)
            raise

    gen = app.stream(call, "s1")
    assert isinstance(next(gen), EngineStep)
    gen.close()  # what Gradio does when a visitor presses Stop or leaves
    assert app._model_lock.acquire(timeout=60)  # the worker let go of the model ...
    app._model_lock.release()
    assert outcome and isinstance(outcome[0], Cancelled)  # ... because the engine was cancelled between steps
    assert app.stop(None) == "Nothing is running."


def test_stop_cancels_only_the_visitors_own_job(test_model_dir):
    engine = Engine.load(str(test_model_dir), settings=Settings(max_new_tokens=64))
    app = DemoApp(engine, examples={})

    class Visitor:  # what gr.Request carries that matters here
        def __init__(self, session_hash: str) -> None:
            self.session_hash = session_hash

    def call(**kw):
        return engine.fill_all(INTERVALS, language="python", **kw)

    gen = app.stream(call, "alice")
    assert isinstance(next(gen), EngineStep)
    assert app.stop(Visitor("bob")) == "Nothing is running."  # bob has no job: alice's keeps going
    assert isinstance(next(gen), EngineStep)
    assert app.stop(Visitor("alice")) == "Stopping…"
    with pytest.raises(Cancelled):
        for _ in gen:
            pass


# ------------------------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def served(test_model_dir):
    """The demo launched on 127.0.0.1 (a free port) around the real Engine, with a connected client."""
    from gradio_client import Client

    engine = Engine.load(str(test_model_dir), settings=Settings(max_new_tokens=MAX_NEW))
    demo = build_app(engine, model_dir=test_model_dir)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        yield Client(url, verbose=False), engine
    finally:
        demo.close()


def _final(job) -> list:
    """Every output the streaming job produced, in order (waits for it to end)."""
    job.result(timeout=300)
    outs = job.outputs()
    assert outs, "the job produced no output"
    return outs


def test_fill_streams_steps_and_returns_a_valid_edit(served):
    client, _ = served
    job = client.submit(*_args(INTERVALS), api_name="/fill")  # no span: fill every hole
    outs = _final(job)
    status, live, diff, new_code, _choices, details = outs[-1]
    assert status.startswith("**fill** done"), status
    steps = [o for o in outs if "step" in o[0] and "committed this step" in o[0]]
    assert len(steps) >= 3, [o[0] for o in outs]
    assert any("░" in o[1] for o in steps)  # positions still masked are drawn as placeholders
    committed = [o[1].count('class="rm-new"') + o[1].count('class="rm-gen"') for o in steps]
    assert committed == sorted(committed) and committed[-1] > committed[0]  # tokens appear, step by step
    assert len({o[1] for o in steps}) >= 3
    assert sum("rm-new" in o[1] for o in steps) >= 3  # steps that committed tokens show them highlighted
    assert "<FILL>" not in new_code and new_code == _apply(INTERVALS, details["edits"])
    hole = INTERVALS.index("<FILL>")
    assert [(e["start"] <= hole < e["end"]) for e in details["edits"]] == [True]
    assert details["stats"]["nfe"] >= 1 and "rm-del" in diff and "&lt;FILL&gt;" in diff


def test_fill_at_a_hole_picked_by_character_offsets(served):
    client, engine = served
    hole = next(iter(engine.holes(INTERVALS, "python")))
    *_, new_code, _c, details = client.predict(*_args(INTERVALS, chars=f"{hole.start}-{hole.end}"), api_name="/fill")
    assert new_code == _apply(INTERVALS, details["edits"])
    assert new_code[: hole.start] == INTERVALS[: hole.start]
    assert new_code.endswith(INTERVALS[hole.end:])


def test_regenerate_only_changes_the_chosen_lines(served):
    client, _ = served
    start, end = line_span(INTERVALS, 11, 11)  # "            merged.append((start, end))"
    outs = _final(client.submit(*_args(INTERVALS, lines="11", n=2), api_name="/regenerate"))
    status, _live, _diff, new_code, choices, details = outs[-1]
    assert status.startswith("**regenerate** done"), status
    assert len(outs) >= 3  # waiting, at least one step, the result
    assert new_code == _apply(INTERVALS, details["edits"])
    assert new_code[:start] == INTERVALS[:start] and new_code.endswith(INTERVALS[end:])
    assert all(start <= e["start"] and e["end"] <= end + 1 for e in details["edits"])
    assert choices["choices"]  # the candidates list for the page


def test_repair_regenerates_improbable_tokens_inside_the_span(served):
    client, _ = served
    start, end = line_span(WORD_COUNT, 11, 11)
    args = list(_args(WORD_COUNT, lines="11"))
    status, _live, _diff, new_code, _c, details = client.predict(*args, api_name="/repair")
    assert status.startswith("**repair** done"), status
    assert new_code == _apply(WORD_COUNT, details["edits"])
    assert new_code[:start] == WORD_COUNT[:start] and new_code.endswith(WORD_COUNT[end:])
    assert "Improbable tokens" in status  # a random model finds every token improbable


def test_instruct_on_a_base_model_says_so(served):
    client, _ = served
    status, *_ = client.predict(*_args(INTERVALS, lines="9", instruction="merge the intervals"), api_name="/instruct")
    assert status.startswith("**Error**") and "instruct model" in status


@pytest.mark.parametrize("code,lines,chars,op,message", [
    ("", "", "", "/fill", "editor is empty"),
    ("x = 1\n" * 3_000, "", "", "/fill", "at most"),
    (INTERVALS, "99", "", "/regenerate", "outside the file"),
    (INTERVALS, "", "", "/repair", "needs a span"),
    (INTERVALS, "", "5-100000", "/fill", "past the end"),
    ("x = 1\n", "", "", "/fill", "no holes"),  # the engine's own message
    ("x = <FILL>\n" * 700, "", "", "/fill", "more than this demo decodes"),  # 700 x 12 tokens
])
def test_bad_input_comes_back_as_a_message(served, code, lines, chars, op, message):
    client, _ = served
    status, *_ = client.predict(*_args(code, lines=lines, chars=chars), api_name=op)
    assert status.startswith("**Error**") and message in status, status
    assert "Traceback" not in status


def test_holes_and_apply_endpoints(served):
    client, _ = served
    holes = client.predict(INTERVALS, "python", api_name="/holes")
    [(label, value)] = holes["choices"]
    start, end = (int(x) for x in value.split("-"))  # what picking it puts in 'Characters'
    assert "line 9" in label and INTERVALS[start:end].strip() == "<FILL>"
    *_, new_code, _c, _d = client.predict(*_args(INTERVALS), api_name="/fill")
    editor, status, chars = client.predict(new_code, INTERVALS, api_name="/apply")
    assert editor == new_code and status == "Applied to the editor." and chars == ""
    _editor, status, _chars = client.predict(new_code, INTERVALS + "# edited meanwhile\n", api_name="/apply")
    assert status.startswith("**Not applied:**")


def test_cli_options_and_a_missing_model(tmp_path, capsys):
    import argparse

    from ui.cli import main
    from ui.demo import cli

    p = argparse.ArgumentParser()
    cli.add_arguments("demo", p)
    args = p.parse_args([])
    assert args.host == "127.0.0.1" and args.port is None and not hasattr(args, "share")
    assert main(["demo", "--model", str(tmp_path / "nowhere")]) == 2
    assert "error:" in capsys.readouterr().err


def test_remask_demo_prints_no_library_warning_while_serving(test_model_dir):
    """The command, as run: a request through the page leaves nothing on stderr but our own start-up line."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from gradio_client import Client

    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", "demo", "--model", str(test_model_dir)],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "running at" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        assert "running at" in line, line
        url = line.split("running at ")[1].split(" ")[0]
        job = Client(url, verbose=False).submit(*_args(INTERVALS), api_name="/fill")
        job.result(timeout=300)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "Warning" not in err and "warn" not in err.lower(), err
