"""Issue 17: a weak answer never hurts the code, and what a fuzzer found.

An empty answer (EOS at once, or only whitespace) is "no suggestion": no edit, the text as it was, a message
saying so; in the engine, the fill/edit CLI (--apply leaves the file alone, --json is strict JSON) and the
language server. A model that always answers EOS at once is a real checkpoint here (``silent_model``); a fake
decode that answers given text drives the property test over random files and spans in every language.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from assistant.api import Settings
from assistant.cli import result_json
from assistant.engine import Engine, apply_edits
from model.decoder import DecodeResult
from ui.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = Settings(max_new_tokens=8, candidates=3, seed=0, steps=1)


def make_silent_checkpoint(folder: Path) -> Path:
    """A ``test`` checkpoint edited so that EOS wins every position by far: it answers nothing, always.

    Embedding column 0 is a large constant (EOS's twice as large), so after the final norm hidden unit 0 is
    large and positive everywhere, and the tied output layer gives EOS the highest logit.
    """
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.testing import make_test_checkpoint

    src = make_test_checkpoint(folder.parent / (folder.name + "-src"))
    model, tok = load_checkpoint(src)
    eos = tok.eos_id
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 100.0
        emb[eos, 0] = 200.0
        model.model.norm.weight[0] = 1.0
    return save_checkpoint(model, folder, tokenizer=tok)


@pytest.fixture(scope="module")
def silent_dir(tmp_path_factory) -> Path:
    return make_silent_checkpoint(tmp_path_factory.mktemp("silent") / "silent-model")


@pytest.fixture(scope="module")
def silent(silent_dir) -> Engine:
    return Engine.load(str(silent_dir), settings=FAST)


@pytest.fixture(scope="module")
def engine(test_model_dir) -> Engine:
    return Engine.load(str(test_model_dir), settings=FAST)


PY = '''def area(width, height):
    pass


def greet(name):
    message = "hello " + <FILL>

    return message
'''


def fake_generate(engine: Engine, answers: list[str]):
    """A stand-in for ``Engine._generate`` answering ``answers[i % len(answers)]`` for prompt ``i``."""

    def generate(prompts, *args, **kwargs):
        toks = [engine.tok.encode(answers[i % len(answers)]) for i in range(len(prompts))]
        return DecodeResult(tokens=toks, logprobs=[[-0.5] * len(t) for t in toks],
                            commit_steps=[list(range(len(t))) for t in toks],
                            finish=["eos"] * len(prompts), nfe=1, steps=1)

    return generate


def strict_json(s: str):
    """json.loads that refuses NaN and Infinity, as JSON.parse and jq do."""

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(s, parse_constant=refuse)


# ---------------------------------------------------------------------------------------------------- engine


def test_the_silent_model_really_answers_nothing(silent):
    res = silent._generate([[silent.bos, silent.fim_suffix, silent.fim_prefix, silent.fim_middle]], FAST, False,
                           [], None, None)
    assert res.tokens == [[]] and res.finish == ["eos"]


def test_an_empty_answer_deletes_nothing_in_fill_fill_all_and_regenerate(silent):
    """Before: a <FILL> marker, a blank line and a whole regenerated function were deleted."""
    marker = PY.index("<FILL>")
    blank = PY.index("\n\n    return") + 1  # the blank line inside greet()
    results = [
        silent.fill(PY, marker, language="python"),
        silent.fill(PY, blank, language="python"),
        silent.fill_all(PY, language="python"),
        silent.regenerate(PY, PY.index("def greet"), len(PY), language="python"),
        silent.regenerate(PY, 0, PY.index("\n\n\n"), language="python", n=1),
    ]
    for res in results:
        assert res.edits == [] and res.new_text == PY and res.diff == "", res
        assert res.message and res.message.startswith("no suggestion"), res.message
        assert res.candidates[0].empty and res.candidates[0].score == float("-inf")
    assert "this hole" in results[0].message and "any of the 2 holes" in results[2].message
    assert results[2].stats["empty_answers"] == 2


def test_fill_all_leaves_holes_with_an_empty_answer_alone_and_counts_them(engine, monkeypatch):
    monkeypatch.setattr(engine, "_generate", fake_generate(engine, ["return width * height", ""]))
    res = engine.fill_all(PY, language="python")
    assert "<FILL>" in res.new_text and "return width * height" in res.new_text
    assert res.message == "1 of 2 holes got no suggestion (the model answered nothing): left as they were"
    assert not res.candidates[0].empty and res.stats["empty_answers"] == 1


@pytest.mark.parametrize("answers", [["", "x = 1"], ["   \n\t", "x = 1"], ["x = 1", ""]])
def test_regenerate_ranks_an_empty_candidate_last(engine, monkeypatch, answers):
    monkeypatch.setattr(engine, "_generate", fake_generate(engine, answers))
    span = (PY.index("    pass"), PY.index("pass") + 4)
    res = engine.regenerate(PY, *span, language="python", n=2)
    assert not res.candidates[0].empty and res.candidates[-1].empty and len(res.candidates) == 2
    assert "x = 1" in res.new_text and res.message is None
    assert result_json(res, PY, "f.py")["candidates"][-1]["score"] is None


def test_a_suggestion_that_does_not_parse_says_so(engine, monkeypatch):
    monkeypatch.setattr(engine, "_generate", fake_generate(engine, ["(((("]))
    res = engine.fill(PY, PY.index("<FILL>"), language="python")
    assert res.edits and not res.candidates[0].parses
    assert res.message and res.message.startswith("the suggestion does not parse")
    # ... but not when the file did not parse to begin with
    broken = PY.replace("def area(width, height):", "def area(width, height:")
    res = engine.fill(broken, broken.index("<FILL>"), language="python")
    assert res.message is None


def test_repair_never_flags_the_models_own_first_choice(engine, monkeypatch):
    """Before: `flagged ' x' p=0.0496 (model prefers ' x')`. Every other token is made the model's own first
    choice (at the probability it has): those are never flagged, the others are."""
    text = "def f(x):\n    y = x + 1\n    return y * x\n"
    real = engine._token_logprobs
    own: set[int] = set()

    def scores(ids, a, b, keep_kv=False):
        logp, best, *kv = real(ids, a, b, keep_kv=keep_kv)
        for i in range(0, b - a, 2):
            best[i] = (ids[a + i], logp[i])
            own.add(i)
        return (logp, best, *kv)

    monkeypatch.setattr(engine, "_token_logprobs", scores)
    res = engine.repair(text, 0, len(text), language="python",
                        settings=Settings(repair_threshold=0.999, steps=1, seed=0))
    assert res.flagged and all(f.text != f.best for f in res.flagged), res.flagged
    assert res.stats["flagged"] == len(res.flagged) and res.stats["flagged"] <= res.stats["scored"] - len(own)


# ---------------------------------------------------------------------------------------------------- CLI


def _cli(args, capsys, model):
    rc = main([*args, "--model", str(model), "--max-new-tokens", "6", "--steps", "1"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_apply_with_an_empty_answer_leaves_the_file_alone(tmp_path, silent_dir, capsys):
    f = tmp_path / "m.py"
    data = ("\ufeff" + PY.replace("\n", "\r\n")).encode("utf-8")
    f.write_bytes(data)
    before = f.stat().st_mtime_ns
    for args in (["--line", "6"], ["--line", "7"], ["--all-holes"], ["--range", "5:8"]):
        rc, out, err = _cli(["fill", str(f), *args, "--apply"], capsys, silent_dir)
        assert rc == 0 and out == ""
        assert "no suggestion: the model answered nothing" in err and "left as it was" in err, err
    rc, out, err = _cli(["edit", str(f), "--range", "1:2", "--apply"], capsys, silent_dir)
    assert rc == 0 and "no suggestion" in err
    assert f.read_bytes() == data and f.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]  # no backup either


def test_cli_json_is_strict_json_with_null_for_an_empty_candidates_score(tmp_path, silent_dir, capsys):
    """Before: "score": -Infinity, which JSON.parse rejects."""
    f = tmp_path / "m.py"
    f.write_text(PY, encoding="utf-8")
    rc, out, _ = _cli(["edit", str(f), "--range", "1:2", "--json"], capsys, silent_dir)
    got = strict_json(out)
    assert rc == 0 and got["changed"] is False and got["message"].startswith("no suggestion")
    assert got["candidates"][0]["score"] is None and got["candidates"][0]["empty"] is True
    rc, out, _ = _cli(["fill", str(f), "--all-holes", "--json"], capsys, silent_dir)
    assert strict_json(out)["new_text"] == PY


def test_cli_text_output_warns_when_the_suggestion_does_not_parse(tmp_path, test_model_dir, capsys, monkeypatch):
    f = tmp_path / "m.py"
    f.write_text(PY, encoding="utf-8")
    monkeypatch.setattr(Engine, "_generate", lambda self, *a, **k: fake_generate(self, ["(((("])(*a, **k))
    rc, out, err = _cli(["fill", str(f), "--line", "6"], capsys, test_model_dir)
    assert rc == 0 and "+    message = \"hello \" + ((((" in out
    assert "warning: the suggestion does not parse (python)" in err


@pytest.mark.parametrize("args, message", [
    (["fill", "{f}", "--line", "0"], "--line 0: lines are numbered from 1"),
    (["fill", "{f}", "--line", "99"], "outside the file"),
    (["fill", "{f}", "--range", "abc"], "expected A:B"),
    (["fill", "{f}", "--range", "5:2"], "A <= B"),
    (["edit", "{f}", "--range", "7:3"], "A <= B"),
    (["edit", "{f}", "--range", "3:3"], "empty: nothing to regenerate"),
    (["edit", "{f}", "--range", "1:2", "--op", "instruct"], "needs --instruction"),
    (["fill", "{ro}", "--apply"], "read-only"),
])
def test_argument_errors_come_before_the_model_loads(tmp_path, capsys, args, message):
    """With --model pointing nowhere, the argument's own error comes first: nothing was loaded."""
    f = tmp_path / "m.py"
    f.write_text(PY, encoding="utf-8")
    ro = tmp_path / "ro.py"
    ro.write_text(PY, encoding="utf-8")
    os.chmod(ro, 0o444)
    argv = [a.format(f=f, ro=ro) for a in args]
    t0 = time.perf_counter()
    rc = main([*argv, "--model", str(tmp_path / "no-such-model")])
    _, err = capsys.readouterr()
    assert rc == 2 and message in err and "cannot load the model" not in err, err
    assert time.perf_counter() - t0 < 30  # loose: no model load, no decoding
    assert ro.read_text(encoding="utf-8") == PY


# ---------------------------------------------------------------------------------------------------- spans, LSP


def test_spans_never_leave_the_document_in_plain_text():
    """Before: a block span past the end of a TypeScript text with language "" (plain-text fallback), and an
    IndexError (the textDocument/codeAction -32603): lone CRs, form feeds and U+2028 split lines differently."""
    from assistant.spans import spans_at

    texts = [
        "let a = 1;\r\nlet b = 2;\rlet c = 3;\r\n\r\nfunction f(x: number): number {\r  return x;\r}\n",
        "const s = 'a\u2028b';\nconst t = 1;\x0c\nlet u = 2;\n\nlet v = 3;\n",
        "a\rb\rc\r\rd\re\r",
        "x\n",
    ]
    for text in texts:
        for lang in ("", None, "typescript"):
            for off in range(len(text) + 1):
                for end in (off, min(len(text), off + 3)):
                    for sp in spans_at(text, off, end, lang):
                        assert 0 <= sp.start <= sp.end <= len(text), (text, lang, off, sp)


def test_still_loading_is_an_expected_answer_not_a_traceback():
    """Before: pygls logged the "still loading" answer as a traceback at ERROR level."""
    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", "lsp", "--load-delay", "60"], cwd=str(ROOT),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})

    def send(obj: dict) -> None:
        body = json.dumps(obj).encode()
        proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        proc.stdin.flush()

    def answer(msg_id: int) -> dict:
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += proc.stdout.read(1)
            n = int(head.split(b"Content-Length:")[1].split(b"\r\n")[0])
            msg = json.loads(proc.stdout.read(n))
            if msg.get("id") == msg_id and "method" not in msg:
                return msg

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}})
        answer(1)
        send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        uri = "untitled:Ünbenannt-1"
        send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": "plaintext", "version": 1, "text": "a\rb\n"}}})
        send({"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand", "params": {
            "command": "remask.apply", "arguments": [{"uri": uri, "op": "fill", "range": {
                "start": {"line": 0, "character": 1}, "end": {"line": 0, "character": 0}}}]}})
        got = answer(2)
        assert got["error"]["code"] == -32803 and "still loading" in got["error"]["message"]
        send({"jsonrpc": "2.0", "id": 3, "method": "shutdown"})
        answer(3)
        send({"jsonrpc": "2.0", "method": "exit"})
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert proc.returncode == 0
    assert "Traceback" not in err and "ERROR" not in err and "WARNING" not in err, err


# ---------------------------------------------------------------------------------------------------- property test

SNIPPETS = {
    "python": ["def f(x):", "    return x + 1", "    pass", "class A:", "    y = <FILL>", "# TODO", "x = [1, 2]"],
    "javascript": ["function f(x) {", "  return x + 1;", "}", "const y = <FILL>;", "// TODO", "let a = [1];"],
    "typescript": ["function f(x: number): number {", "  return x;", "}", "const y: string = <FILL>;",
                   "interface I { a: number }"],
    "rust": ["fn f(x: i32) -> i32 {", "    x + 1", "}", "let y = <FILL>;", "struct S { a: u8 }", "todo!()"],
    "go": ["func f(x int) int {", "\treturn x + 1", "}", "y := <FILL>", "package main", "// TODO"],
    "java": ["class A {", "  int f(int x) {", "    return x;", "  }", "}", "int y = <FILL>;"],
    "c": ["int f(int x) {", "  return x + 1;", "}", "int y = <FILL>;", "#include <stdio.h>", "/* TODO */"],
    "cpp": ["int f(int x) {", "  return x + 1;", "}", "auto y = <FILL>;", "std::vector<int> v;", "namespace n {}"],
}
ODD = ["", "  ", "\t", "é 漢字 😀", "\x0c", "\u2028", "{", ")"]
ANSWER = st.one_of(st.just(""), st.sampled_from([" ", "\n", "\n\n  \t", "\r\n"]),
                   st.text(alphabet=st.sampled_from(list("ab xy(){};:=\n\t1é漢😀")), max_size=30))


@st.composite
def documents(draw):
    lang = draw(st.sampled_from(sorted(SNIPPETS)))
    lines = draw(st.lists(st.one_of(st.sampled_from(SNIPPETS[lang]), st.sampled_from(ODD)), min_size=1, max_size=12))
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    text = nl.join(lines) + draw(st.sampled_from(["", nl]))
    if not text.strip():
        text = SNIPPETS[lang][0] + nl
    a = draw(st.integers(0, len(text)))
    b = draw(st.integers(a, len(text)))
    return lang, text, a, b, nl


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(doc=documents(), answer=ANSWER, op=st.sampled_from(["fill", "fill_all", "regenerate"]))
# Found by this test: a selection that ends between the CR and the LF of a CRLF kept half a line break.
@example(doc=("typescript", "function f(x: number): number {\r\nfunction f(x: number): number {\r\n  return x;\r\n}"
              "\r\nfunction f(x: number): number {", 0, 81, "\r\n"), answer="1", op="fill")
def test_property_edits_stay_in_their_span_and_empty_answers_change_nothing(engine, monkeypatch, doc, answer, op):
    lang, text, a, b, nl = doc
    monkeypatch.setattr(engine, "_generate", fake_generate(engine, [answer]))
    try:
        if op == "fill":
            res = engine.fill(text, a, b if b > a else None, language=lang)
        elif op == "fill_all":
            res = engine.fill_all(text, language=lang)
        else:
            if b == a:
                b = min(len(text), a + 1)
            if b == a:
                return
            res = engine.regenerate(text, a, b, language=lang, n=2)
    except Exception as e:  # only a clear refusal is allowed, e.g. "no holes found"
        from assistant.api import EngineError

        assert isinstance(e, EngineError), repr(e)
        return
    n = len(text)
    assert res.new_text == apply_edits(text, res.edits)
    spans = sorted((s.start, s.end) for s in res.spans)
    for e in res.edits:
        assert 0 <= e.start <= e.end <= n
        assert any(s <= e.start and e.end <= t for s, t in spans), (e, spans)
    # outside the spans, the text is byte-identical (its line breaks included)
    pos_old = pos_new = 0
    for s, t in spans:
        grow = sum(len(e.new_text) - (e.end - e.start) for e in res.edits if s <= e.start and e.end <= t)
        assert res.new_text[pos_new: pos_new + (s - pos_old)] == text[pos_old:s]
        pos_new += (s - pos_old) + (t - s) + grow
        pos_old = t
    assert res.new_text[pos_new:] == text[pos_old:]
    if nl == "\r\n" and "\r\n" in text:  # a CRLF file gets CRLF line breaks in what the model wrote too
        assert res.new_text.count("\n") == res.new_text.count("\r\n") + text.count("\n") - text.count("\r\n")
    if not answer.strip():
        assert res.edits == [] and res.new_text == text and res.message
    strict_json(json.dumps(result_json(res, text, "f"), allow_nan=False))


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(doc=documents(), answer=ANSWER)
def test_property_cli_apply_keeps_bom_and_line_breaks_outside_the_hole(test_model_dir, tmp_path_factory, capsys,
                                                                        monkeypatch, doc, answer):
    """The whole path: a file with a BOM and CRLF or LF, --apply, then the bytes outside the hole are as they were."""
    lang, text, _a, _b, nl = doc
    ext = {"python": "py", "javascript": "js", "typescript": "ts", "rust": "rs", "go": "go", "java": "java",
           "c": "c", "cpp": "cpp"}[lang]
    folder = tmp_path_factory.mktemp("cli")
    f = folder / f"doc.{ext}"
    data = b"\xef\xbb\xbf" + text.encode("utf-8")
    f.write_bytes(data)
    monkeypatch.setattr(Engine, "_generate", lambda self, *a, **k: fake_generate(self, [answer])(*a, **k))
    rc = main(["fill", str(f), "--json", "--model", str(test_model_dir)])
    out, err = capsys.readouterr()
    if rc != 0:
        assert rc == 2 and err.startswith("error: "), err
        return
    got = strict_json(out)
    rc = main(["fill", str(f), "--apply", "--model", str(test_model_dir)])
    capsys.readouterr()
    assert rc == 0
    new = f.read_bytes()
    if not got["changed"]:
        assert new == data
        return
    assert new == b"\xef\xbb\xbf" + got["new_text"].encode("utf-8")
    spans = [(s["start"]["offset"], s["end"]["offset"]) for s in got["spans"]]
    s, t = spans[0]
    assert got["new_text"].startswith(text[:s]) and got["new_text"].endswith(text[t:])


@pytest.mark.parametrize("command", ["fill", "edit", "generate", "info", "tui", "demo", "lsp", "serve"])
def test_model_commands_do_not_offer_none_as_a_dtype(command):
    from ui.cli import COMMANDS, build_parser

    if command not in COMMANDS:
        pytest.skip(f"no {command} command")
    text = build_parser(only=command).format_help() + "".join(
        a.format_help() for a in build_parser(only=command)._subparsers._group_actions[0].choices.values()
        if a.prog.endswith(command))
    assert "{None," not in text
    if "--dtype" in text:
        assert "--dtype {float32,bfloat16,float16}" in text
