"""The engine end to end on a random ``test`` checkpoint: mechanics, not quality.

Random weights write noise, so these tests check what must hold whatever the model says: where edits land,
batching equals one-by-one decoding, scores are exact, streaming shows masks, cancellation stops, bad input
gets a clear error.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from assistant.api import Cancelled, CancelToken, EngineError, InstructModelRequired, Settings
from assistant.engine import Engine, _Job, apply_edits
from assistant.spans import Hole
from model.checkpoint import load_checkpoint
from model.network import forward_logits, remask_config

# One denoising step per block: a random model never reaches the confidence threshold, so threshold decoding
# takes one step per token; the mechanics under test are the same.
FAST = Settings(max_new_tokens=8, candidates=3, seed=0, steps=1)

PY = '''import os


def add(a, b):
    """Add two numbers."""
    pass


def mul(a, b):
    return <FILL>


def sub(a, b):
    # TODO: subtract
    ...
'''


@pytest.fixture(scope="module")
def engine(test_model_dir) -> Engine:
    return Engine.load(str(test_model_dir), settings=Settings(max_new_tokens=8, seed=0, steps=1))


def test_info_and_load(engine):
    assert engine.info["kind"] == "bd" and engine.info["instruct"] is False
    assert engine.info["block_size"] == 4 and engine.info["parameters"] > 0
    assert engine.language_for("x.rs") == "rust"


def test_fill_marker_replaces_only_the_marker(engine):
    off = PY.index("<FILL>")
    res = engine.fill(PY, off + 2, language="python")
    assert res.op == "fill" and res.spans[0].kind == "hole"
    assert (res.spans[0].start, res.spans[0].end) == (off, off + len("<FILL>"))
    assert res.new_text == apply_edits(PY, res.edits)
    assert res.new_text.startswith(PY[:off]) and res.new_text.endswith(PY[off + len("<FILL>"):])
    filled = res.new_text[off: len(res.new_text) - len(PY) + off + len("<FILL>")]
    assert "\n" not in filled  # a hole inside a line is a one-line answer
    assert res.stats["language"] == "python" and res.stats["nfe"] > 0 and res.stats["prompt_tokens"] > 3
    if res.edits:
        assert res.diff.startswith("--- a/") and "-    return <FILL>" in res.diff


def test_fill_placeholder_body_writes_whole_lines(engine):
    res = engine.fill(PY, PY.index("pass"), language="python")
    region = res.spans[0]
    assert PY[region.start:region.end] == "    pass\n"
    new_region = res.new_text[region.start: len(res.new_text) - (len(PY) - region.end)]
    assert new_region == "" or new_region.endswith("\n")
    assert res.new_text.endswith(PY[region.end:])


def test_whole_line_fill_keeps_the_block_indentation(engine):
    """Output written at column 0 (as an untrained model does) is shifted into the hole's block."""
    text = "def f(x):\n    if x:\n        pass\n    return x\n"
    res = engine.fill(text, text.index("pass"), language="python")
    new_lines = res.new_text.split("\n")
    assert new_lines[0] == "def f(x):" and new_lines[1] == "    if x:"
    body = [ln for ln in new_lines[2:-2] if ln.strip()]
    assert body and all(ln.startswith("        ") for ln in body)
    assert res.new_text.endswith("    return x\n")


def test_fill_all_equals_hole_by_hole(engine):
    """Every hole in one batched decode gives what filling each hole alone gives (greedy, fixed seed)."""
    holes = engine.holes(PY, "python")
    assert len(holes) == 3
    together = engine.fill_all(PY, language="python", settings=FAST)
    one_by_one = []
    for h in holes:
        r = engine.fill(PY, h.start, language="python", settings=FAST)
        one_by_one += r.edits
    assert sorted((e.start, e.end, e.new_text) for e in together.edits) == \
        sorted((e.start, e.end, e.new_text) for e in one_by_one)
    assert together.stats["holes"] == 3 and len(together.spans) == 3
    assert together.new_text == apply_edits(PY, one_by_one)


def test_fill_all_decodes_many_holes_in_bounded_batches(engine, monkeypatch):
    """A file with more holes than MAX_BATCH_ROWS is filled a batch at a time, with the one-batch answers;
    the streamed steps carry each batch's own spans."""
    import assistant.engine as eng

    text = "".join(f"def f{i}(x):\n    pass\n\n\n" for i in range(7))
    whole = engine.fill_all(text, language="python", settings=FAST)
    steps = []
    monkeypatch.setattr(eng, "MAX_BATCH_ROWS", 3)
    cut = engine.fill_all(text, language="python", settings=FAST, callback=steps.append)
    assert cut.stats["holes"] == 7 and cut.new_text == whole.new_text
    assert [e.new_text for e in cut.edits] == [e.new_text for e in whole.edits]
    assert {len(s.pieces) for s in steps} == {3, 1} and all(len(s.spans) == len(s.pieces) for s in steps)


def test_fill_all_within_a_range_and_no_holes(engine):
    start = PY.index("def mul")
    r = engine.fill_all(PY, language="python", settings=FAST, within=(start, len(PY)))
    assert len(r.spans) == 2 and all(s.start >= start for s in r.spans)
    with pytest.raises(EngineError, match="no holes"):
        engine.fill_all("x = 1\n", language="python")
    with pytest.raises(EngineError, match="empty"):
        engine.fill_all("  \n", language="python")


def test_fill_is_deterministic_with_a_seed(engine):
    s = Settings(max_new_tokens=8, temperature=1.0, seed=7, steps=1)
    a = engine.fill(PY, PY.index("<FILL>"), language="python", settings=s)
    b = engine.fill(PY, PY.index("<FILL>"), language="python", settings=s)
    assert a.new_text == b.new_text


def test_regenerate_candidates_ranked(engine):
    start = PY.index("return <FILL>")
    end = start + len("return <FILL>")
    res = engine.regenerate(PY, start, end, language="python", n=3, settings=FAST)
    assert 1 <= len(res.candidates) <= 3
    keys = [(not c.parses, not c.indentation_ok, -c.score) for c in res.candidates]
    assert keys == sorted(keys)
    assert res.new_text == res.candidates[0].new_text and res.edits == res.candidates[0].edits
    assert len({c.new_text for c in res.candidates}) == len(res.candidates)  # duplicates merged
    # The whole line is the region (the model writes the indentation); the rest of the file is untouched.
    assert res.spans[0].start == PY.rindex("\n", 0, start) + 1
    tail = PY[PY.index("\n", end):]
    assert all(c.new_text.endswith(tail[1:]) for c in res.candidates)
    assert res.stats["candidates_decoded"] == 3


def test_score_is_exact_per_token_masked_likelihood(engine):
    """The one-forward scheme equals masking each token alone and running the plain block-causal forward."""
    text = PY
    start, end = text.index("def add"), text.index('"""Add')  # two lines: tokens in several blocks
    prompt, span_ids, _offsets, a, _job = engine._span_prompt(text, start, end, engine.settings)
    ids = prompt.ids + span_ids + [engine.eos]
    fast, _ = engine._token_logprobs(ids, a, a + len(span_ids))
    B = engine.cfg.block_size
    ref = []
    with torch.no_grad():
        for p in range(a, a + len(span_ids)):
            x = torch.tensor(ids)
            x[p] = engine.mask
            end_b = (p // B + 1) * B
            x = x[:end_b]
            pos = torch.arange(len(x))
            allowed = pos[None, :] // B <= pos[:, None] // B
            lg = forward_logits(engine.model, x[None], pos[None], allowed[None]).float()[0, p]
            lg[engine.mask] = float("-inf")
            ref.append(float(torch.log_softmax(lg.double(), -1)[ids[p]]))
    assert fast == pytest.approx(ref, abs=1e-4)
    scores = engine.score(text, start, end, language="python")
    assert "".join(s.text for s in scores) == text[start:end]
    assert all(0 < s.prob <= 1 for s in scores)


def test_repair_remasks_only_flagged_tokens(engine):
    start, end = PY.index("def add"), PY.index("pass") + 4
    s = Settings(max_new_tokens=8, seed=0, repair_fraction=0.1)
    res = engine.repair(PY, start, end, language="python", settings=s)
    n_tokens = res.stats["scored"]
    assert res.stats["flagged"] == math.ceil(0.1 * n_tokens) == len(res.flagged)
    probs = [t.prob for t in engine.score(PY, start, end)]
    assert sorted(f.prob for f in res.flagged) == pytest.approx(sorted(probs)[: len(res.flagged)])
    # Text between flagged tokens is kept: the first flagged token's left and the last one's right survive.
    first, last = min(res.flagged, key=lambda f: f.start), max(res.flagged, key=lambda f: f.end)
    assert res.new_text.startswith(PY[: first.start])
    assert res.new_text.endswith(PY[last.end:])
    # Threshold mode: nothing is below probability 0, so nothing changes.
    none = engine.repair(PY, start, end, settings=Settings(repair_threshold=0.0))
    assert none.edits == [] and none.flagged == [] and none.new_text == PY


def test_streaming_callback_shows_masked_pieces(engine):
    steps = []
    res = engine.fill(PY, PY.index("<FILL>"), language="python", settings=Settings(max_new_tokens=8),
                      callback=steps.append)
    assert steps and steps[-1].nfe <= res.stats["nfe"]
    assert any(m for st in steps for _, m in st.pieces[0])  # masks were visible at some step
    assert all(len(st.pieces) == 1 and st.spans for st in steps)
    assert "░" in steps[0].preview(0) or not steps[0].pieces[0]
    rsteps = []
    engine.repair(PY, PY.index("def add"), PY.index("pass") + 4, settings=Settings(repair_fraction=0.2),
                  callback=rsteps.append)
    assert rsteps and any(m for _, m in rsteps[0].pieces[0]) and not any(m for _, m in rsteps[-1].pieces[0])


def test_cancellation_between_steps(engine):
    tok = CancelToken()
    seen = []

    def cb(step):
        seen.append(step)
        tok.cancel()

    with pytest.raises(Cancelled):
        engine.fill(PY, PY.index("<FILL>"), settings=Settings(max_new_tokens=8), callback=cb, cancel=tok)
    assert len(seen) == 1
    with pytest.raises(Cancelled):
        engine.repair(PY, 0, 40, settings=Settings(repair_fraction=0.5), cancel=lambda: True)
    # The engine still works after a cancelled call.
    assert engine.fill(PY, PY.index("<FILL>"), settings=FAST).op == "fill"


def test_instruct_needs_an_instruct_checkpoint(engine):
    with pytest.raises(InstructModelRequired, match="instruct checkpoint"):
        engine.instruct(PY, 0, 10, "make it faster")


def _variant(model_dir, **changes) -> Engine:
    """The test weights relabelled (instruct, or autoregressive): the mechanics differ, the weights need not."""
    model, tok = load_checkpoint(model_dir)
    model.remask_config = remask_config(model).replace(**changes)
    return Engine(model, tok, Settings(max_new_tokens=8, steps=1), "variant")


def test_instruct_with_an_instruct_checkpoint(test_model_dir):
    e = _variant(test_model_dir, kind="bd-instruct")
    assert e.info["instruct"] is True
    start, end = PY.index("    return <FILL>"), PY.index("<FILL>") + 7
    res = e.instruct(PY, start, end, "return the product")
    assert res.op == "instruct" and "reply" in res.stats
    assert res.new_text.startswith(PY[:start]) and res.new_text.endswith(PY[end:])
    with pytest.raises(EngineError, match="empty"):
        e.instruct(PY, start, end, "  ")


def test_autoregressive_checkpoint_fills_with_ar_decoding(test_model_dir):
    e = _variant(test_model_dir, kind="ar", logit_shift=True)
    res = e.fill(PY, PY.index("<FILL>"), language="python")
    assert res.stats["nfe"] >= 1
    assert len(e.score(PY, 0, 10)) > 0
    with pytest.raises(EngineError, match="block-diffusion"):
        e.repair(PY, 0, 10)


def test_bad_input_messages(engine):
    with pytest.raises(EngineError, match="NUL"):
        engine.fill("a\x00b", 0)
    with pytest.raises(EngineError, match="outside the text"):
        engine.regenerate(PY, 5, len(PY) + 3)
    with pytest.raises(EngineError, match="outside the text"):
        engine.fill(PY, -1)
    with pytest.raises(EngineError, match="non-empty"):
        engine.regenerate(PY, 5, 5)
    with pytest.raises(EngineError, match="too long for the model's context"):
        engine.regenerate("x = 1\n" * 2000, 0, 12000)
    with pytest.raises(EngineError, match="too long for the model's context"):
        engine.repair("x = 1\n" * 2000, 0, 12000)
    # Unknown language: plain text, said so; an unparseable file still works, said so.
    r = engine.fill("some words <FILL> here\n", 12, language="cobol", settings=FAST)
    assert r.stats["language"] == "plain text" and "plain-text fallback" in r.stats["notice"]
    broken = "def f(x:\n    return <FILL>\n"
    r = engine.fill(broken, broken.index("<FILL>"), language="python", settings=FAST)
    assert r.stats["syntax"] == "errors" and "does not parse" in r.stats["notice"]
    # An empty file: a cursor fill works (there is nothing to lose); fill_all says there is nothing to fill.
    assert engine.fill("", 0, settings=FAST).op == "fill"


def test_long_context_is_trimmed_never_the_span(engine):
    before = "".join(f"v{i} = {i}\n" for i in range(3000))
    text = before + "x = <FILL>\n" + "".join(f"w{i} = {i}\n" for i in range(3000))
    s = Settings(max_new_tokens=8, context_tokens=200, steps=1)
    res = engine.fill(text, text.index("<FILL>"), settings=s)
    assert res.stats["context_trimmed"] is True
    assert res.stats["prompt_tokens"] <= 200 + 4
    start = text.index("v2990")
    end = text.index("w5 ")
    sc = engine.score(text, start, end, settings=s)
    assert "".join(t.text for t in sc) == text[start:end]  # every token of the span, none trimmed


def test_finish_cuts_the_way_the_task_is_defined(engine):
    inline = _Job(Hole(10, 10, "cursor", whole_lines=False, single_line=True), "x = f(a, ", ")\nnext\n", "")
    assert engine._finish(inline, "b)\nmore") == "b"  # cut at the newline, the ")" that follows not repeated
    assert engine._finish(inline, "b, c  ") == "b, c  "
    eol = _Job(Hole(5, 5, "cursor", whole_lines=False, single_line=True), "x = ", "\ny = 2\n", "")
    assert engine._finish(eol, "1   \nz") == "1"
    lines = _Job(Hole(0, 9, "placeholder", whole_lines=True, single_line=False, indent="    "),
                 "def f():\n", "\ndef g():\n    pass\n", "    pass\n")
    assert engine._finish(lines, "    return 1  \n    \n") == "    return 1\n"
    assert engine._finish(lines, "    return 1\n\ndef g():\n    pass\n") == "    return 1\n"  # no repeated suffix
    assert engine._finish(lines, "    return 1\ndef g():\n") == "    return 1\n"
    at_eof = _Job(Hole(30, 30, "docstring", whole_lines=True, single_line=False, indent="    "),
                  'def f():\n    """Doc."""\n', "", "")
    assert engine._finish(at_eof, "    return 1") == "    return 1\n"
    last_line = _Job(Hole(9, 17, "selection", whole_lines=True, single_line=True), "def f():\n", "", "    pass")
    assert engine._finish(last_line, "    return 1\n") == "    return 1"


def test_indentation_check(engine):
    text = "def f():\n    pass\n"
    job = _Job(Hole(9, 18, "placeholder", whole_lines=True, single_line=False, indent="    "),
               text[:9], text[18:], text[9:18])
    assert engine._indentation_ok(text, job, "    return 1\n")
    assert not engine._indentation_ok(text, job, "return 1\n")
    assert not engine._indentation_ok(text, job, "    x = 1\ny = 2\n")


DEFAULT = Path(__file__).resolve().parents[1] / "model" / "default"


@pytest.mark.skipif(not (DEFAULT / "config.json").is_file(),
                    reason="needs the trained default model in model/default/ (not shipped yet)")
def test_repair_flags_a_corrupted_token_with_the_default_model():
    e = Engine.load(None)
    good = "def add(a, b):\n    return a + b\n\n\nfor i in range(10):\n    print(i)\n"
    bad = good.replace("range(10)", "rangx(10)")
    start, end = bad.index("for i"), bad.index("print(i)") + 8
    res = e.repair(bad, start, end, language="python", settings=Settings(repair_threshold=0.05))
    where = bad.index("rangx")
    assert any(f.start < where + 5 and where < f.end for f in res.flagged), res.flagged
    assert res.new_text[where:where + 5] != "rangx"  # the flagged token was rewritten


def test_flagging_rules():
    lp = [math.log(p) for p in (0.9, 0.01, 0.01, 0.5)]
    best = [(1, math.log(0.9)), (2, math.log(0.5)), (3, math.log(0.02)), (4, math.log(0.5))]
    # Threshold 0.05 alone flags both improbable tokens; with a ratio, only token 1, which the model confidently
    # replaces (token 2's position is one where the model is unsure of everything).
    assert Engine._flag([0, 1, 2, 3], lp, best, Settings(repair_threshold=0.05)) == [1, 2]
    assert Engine._flag([0, 1, 2, 3], lp, best, Settings(repair_threshold=0.05, repair_ratio=10.0)) == [1]
    assert Engine._flag([0, 1, 2, 3], lp, best, Settings(repair_fraction=0.5)) == [1, 2]
    # Tokens 0 and 3 are the model's own first choices (their log p is the best one): never flagged, in any mode.
    assert Engine._flag([0, 3], lp, best, Settings(repair_fraction=0.5)) == []
    assert Engine._flag([0, 3], lp, best, Settings(repair_threshold=0.99)) == []
    assert Engine._flag([0, 1, 3], lp, best, Settings(repair_threshold=0.99)) == [1]
    with pytest.raises(EngineError):
        Engine._flag([0], lp, best, Settings(repair_fraction=2.0))


def test_block_opener_gets_a_multi_line_answer(engine):
    from assistant.spans import hole_at

    src = "def f(x):\n    return x\n"
    h = hole_at(src, src.index(":") + 1, None, "python")
    assert (h.what, h.single_line) == ("cursor", False)
    job = _Job(h, src[:h.start], src[h.end:], "")
    assert engine._finish(job, "\n    y = x  \n    return x\n") == "\n    y = x"  # the suffix is not repeated


def test_regenerate_streams_one_piece_list_per_candidate(engine):
    steps = []
    start = PY.index("return <FILL>")
    engine.regenerate(PY, start, start + 13, n=2, settings=FAST, callback=steps.append)
    assert steps and all(len(st.pieces) == 2 and len(st.spans) == 2 for st in steps)


@pytest.mark.parametrize("threshold", [0.0, 0.9])
def test_inpaint_matches_uncached_reference(engine, threshold):
    """The cached in-place decoder (repair) equals re-running the whole block-causal sequence at every step."""
    start, end = PY.index("def add"), PY.index("pass") + 4
    prompt, span_ids, _o, a, _j = engine._span_prompt(PY, start, end, engine.settings)
    canvas = prompt.ids + span_ids + [engine.eos]
    for i in (1, 2, 9, len(span_ids) - 1):  # masks in three different blocks, two in one block
        canvas[a + i] = engine.mask
    s = Settings(threshold=threshold, seed=0)
    got, _lp, stats = engine._inpaint(list(canvas), a, a + len(span_ids), s, [], None, None)
    # Starting from the scoring pass's clean keys (as repair does) changes nothing but the work.
    _lp2, _best, kv = engine._token_logprobs(prompt.ids + span_ids + [engine.eos], a, a + len(span_ids), keep_kv=True)
    got2, _lp3, stats2 = engine._inpaint(list(canvas), a, a + len(span_ids), s, [], None, None, clean_kv=kv)
    assert got2 == got and stats2["nfe"] == stats["nfe"] - 1  # one prefill fewer
    B = engine.cfg.block_size
    x = torch.tensor(canvas)
    steps = 0
    with torch.no_grad():
        while (x == engine.mask).any():
            p0 = int((x == engine.mask).nonzero()[0])
            bs, be = (p0 // B) * B, min((p0 // B) * B + B, len(x))
            pos = torch.arange(be)
            allowed = pos[None, :] // B <= pos[:, None] // B
            lg = forward_logits(engine.model, x[None, :be], pos[None], allowed[None]).float()[0, bs:be]
            lg[:, engine.mask] = float("-inf")
            m = (x[bs:be] == engine.mask).nonzero().flatten()
            probs = torch.softmax(lg[m].double(), -1)
            conf, tok = probs.max(-1)
            order = torch.argsort(conf, descending=True)
            keep = conf[order] >= threshold
            keep[0] = True
            for c in order[keep].tolist():
                x[bs + int(m[c])] = int(tok[c])
            steps += 1
    assert got == x.tolist()
    assert stats["steps"] == steps and stats["tokens"] == 4


def test_fill_all_second_round_sees_the_first_answers(engine, monkeypatch):
    prompts_seen = []
    real = engine._generate

    def spy(prompts, *a, **k):
        prompts_seen.append([engine.tok.decode(p) for p in prompts])
        return real(prompts, *a, **k)

    monkeypatch.setattr(engine, "_generate", spy)
    one = engine.fill_all(PY, language="python", settings=FAST)
    two = engine.fill_all(PY, language="python", settings=FAST, rounds=2)
    assert len(prompts_seen) == 3 and two.stats["rounds"] == 2 and two.stats["nfe"] > one.stats["nfe"]
    first_mul = next(e.new_text for e in one.edits if e.start >= PY.index("def mul"))
    # Round 2's prompt for the first hole contains the second hole's round-1 answer instead of <FILL>.
    assert "return <FILL>" in prompts_seen[1][0] and "return <FILL>" not in prompts_seen[2][0]
    assert ("return " + first_mul.strip()) in prompts_seen[2][0] or not first_mul.strip()


@pytest.mark.skipif((DEFAULT / "config.json").is_file(), reason="the default model is present")
def test_loading_the_missing_default_model_is_a_clear_error():
    from model.checkpoint import CheckpointError

    with pytest.raises(EngineError, match="default model") as info:
        Engine.load(None)
    assert isinstance(info.value, CheckpointError)  # callers catching either kind see it


def test_offsets_are_characters_with_non_ascii_text(engine):
    text = 's = "😀 漢字"\n\n\ndef f():\n    return <FILL>\n'
    off = text.index("<FILL>")
    res = engine.fill(text, off, language="python", settings=FAST)
    assert (res.spans[0].start, res.spans[0].end) == (off, off + 6)
    assert res.new_text.startswith(text[:off]) and res.new_text.endswith("\n")
    scores = engine.score(text, 0, text.index("\n"))
    assert "".join(t.text for t in scores) == text[: text.index("\n")] or any("\ufffd" in t.text for t in scores)
    assert scores[0].start == 0 and scores[-1].end == text.index("\n")


def test_score_of_a_long_span_goes_piece_by_piece(engine):
    text = "".join(f"value_{i} = compute({i}, 'x')\n" for i in range(160))  # ~2.3k tokens: > the context
    scores = engine.score(text, 3, len(text) - 2, settings=Settings(context_tokens=128))
    assert Engine._chunks(text, 3, len(text) - 2, 224)[1][0] == text.index("\n", 200) + 1
    assert "".join(t.text for t in scores) == text[3: len(text) - 2]
    assert [t.start for t in scores] == sorted(t.start for t in scores)
    assert all(0 < t.prob <= 1 for t in scores)


def test_crlf_files_keep_crlf(engine):
    text = PY.replace("\n", "\r\n")
    res = engine.fill_all(text, language="python", settings=FAST)
    assert "\n" not in res.new_text.replace("\r\n", "")
    assert res.new_text.count("\r\n") >= text.count("\r\n") - 3
    # repair re-decodes tokens in place, line breaks included: they too stay CRLF
    rep = engine.repair(text, 0, len(text), language="python",
                        settings=Settings(max_new_tokens=8, seed=0, steps=1, repair_fraction=0.6))
    assert rep.edits and "\n" not in rep.new_text.replace("\r\n", "")


def test_repair_never_breaks_a_character(engine):
    """Byte-level pieces of one character re-decoded in place need not make UTF-8: no U+FFFD comes out."""
    text = 'def f():\n    s = "日本😀 é中文"\n    return s\n'
    for seed in range(4):
        r = engine.repair(text, text.index("s ="), text.index("return"), language="python",
                          settings=Settings(max_new_tokens=8, seed=seed, repair_fraction=1.0, temperature=0.7))
        assert "\ufffd" not in r.new_text


def test_fim_windows_recorded_in_the_checkpoint_cap_the_context(engine, monkeypatch):
    monkeypatch.setitem(engine.cfg.extra, "fim_prefix_tokens", 12)
    monkeypatch.setitem(engine.cfg.extra, "fim_suffix_tokens", 20)
    p = engine._fim_prompt(PY[:150], PY[150:], FAST)
    _, fs, fm = engine.fim_prefix, engine.fim_suffix, engine.fim_middle
    ids = p.ids
    suffix_part = ids[ids.index(fs) + 1: ids.index(engine.fim_prefix)]
    prefix_part = ids[ids.index(engine.fim_prefix) + 1: ids.index(fm)]
    assert len(prefix_part) <= 12 and len(suffix_part) <= 20 and p.trimmed
    assert PY[:150].endswith(engine.tok.decode(prefix_part))  # the end of the prefix is what is kept


def test_random_preset_gets_a_tokenizer_and_unknown_presets_are_clear():
    e = Engine.load("random:test", settings=FAST)
    assert "RANDOMLY INITIALISED" in e.info["description"] and e.tok.fim_ids[0] is not None
    assert e.fill(PY, PY.index("<FILL>")).op == "fill"
    with pytest.raises(EngineError, match="unknown preset"):
        Engine.load("random:nope")


def test_typing_reuses_the_prompt_keys(test_model_dir):
    """Fill after fill while typing at the cursor: the unchanged blocks are not prefilled again, and every
    answer is the one a freshly loaded engine gives."""
    warm = Engine.load(str(test_model_dir), settings=Settings(max_new_tokens=8, seed=0, threshold=0.5))
    text = "import os\n\n\ndef walk(root):\n    for name in os.listdir(root):\n        x = \n    return root\n"
    cursor = text.index("x = ") + 4
    reused = []
    for typed in ("", "o", "os", "os.", "os.p"):
        t = text[:cursor] + typed + text[cursor:]
        got = warm.fill(t, cursor + len(typed))
        fresh = Engine.load(str(test_model_dir), settings=warm.settings).fill(t, cursor + len(typed))
        assert got.new_text == fresh.new_text and fresh.stats["prompt_tokens_reused"] == 0
        reused.append(got.stats["prompt_tokens_reused"])
    assert reused[0] == 0 and all(r > 0 for r in reused[1:]), reused
    assert all(r % warm.cfg.block_size == 0 for r in reused)
    # A request cancelled mid-decode (the next keystroke) leaves usable keys behind, never wrong ones.
    t = text[:cursor] + "os.pa" + text[cursor:]
    tok = CancelToken()
    with pytest.raises(Cancelled):
        warm.fill(t, cursor + 5, callback=lambda step: tok.cancel(), cancel=tok)
    t = text[:cursor] + "os.pat" + text[cursor:]
    got = warm.fill(t, cursor + 6)
    assert got.stats["prompt_tokens_reused"] > 0
    assert got.new_text == Engine.load(str(test_model_dir), settings=warm.settings).fill(t, cursor + 6).new_text


@pytest.mark.parametrize("before,after", [(400, 3000), (400, 5), (0, 3000)])
def test_trimmed_context_keeps_its_head_while_typing(engine, before, after):
    """In a file longer than the context, keystrokes at the cursor rarely change the prompt's head (the cuts
    move in steps), so the prompt cache keeps working; the prompt stays within the budget."""
    head = "".join(f"value_{i} = compute({i}, {i * 7})\n" for i in range(before))
    rest = "".join(f"w{i} = {i}\n" for i in range(after))
    s = Settings(max_new_tokens=8, context_tokens=300)
    typed = "result = value_3 + value_4\n" * 5
    prompts = []
    for k in range(len(typed) + 1):
        p = engine._fim_prompt(head + typed[:k], "\n" + rest, s)
        assert len(p.ids) <= 300 + 4 and p.trimmed
        prompts.append(p.ids)
    moves = 0
    for a, b in zip(prompts, prompts[1:], strict=False):
        common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        moves += common < min(len(a), len(b)) - 8  # more changed than the last few (typed) tokens
    assert moves <= 1, moves  # 135 keystrokes; cuts that follow every token move 3-8 times here


def test_an_empty_answer_keeps_a_placeholder_body(engine):
    """A `pass` body filled with nothing would leave `def f():` without a body: the placeholder stays."""
    from assistant.engine import _Job
    from assistant.spans import Hole

    job = _Job(Hole(9, 18, "placeholder", True, True), "def f():\n", "", "    pass\n")
    assert engine._finish(job, "") == "    pass\n"
    assert engine._finish(job, "    return 1\n") == "    return 1\n"
