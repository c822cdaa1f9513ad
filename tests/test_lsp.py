"""End-to-end tests of ``remask lsp``: the real server as a subprocess, driven over stdio by pytest-lsp.

One server (the random ``test`` model) serves the whole module; a second, cheap one that never finishes
loading checks the "loading" answers, UTF-8 negotiation and shutdown while busy.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Union

import pytest
import pytest_asyncio
from lsprotocol import types as T
from pygls.exceptions import JsonRpcException, JsonRpcRequestCancelled
from pytest_lsp import client_capabilities
from pytest_lsp.client import LanguageClient, make_test_lsp_client

from assistant.positions import position_to_offset

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[1]
REQUEST_FAILED = -32803
CONTENT_MODIFIED = -32801
INVALID_PARAMS = -32602

CODE = '''import os


def add(a, b):
    """Add two numbers."""
    return a + b


def area(width, height):
    pass


def greet(name):
    message = "hello " + <FILL>
    return message


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)
'''


# minConfidence 0: the random model is never confident, and these tests compare ghost text with the engine's.
OPTIONS = {"debounceMs": 0, "progressDelayMs": 0, "inlineMaxTokens": 8, "maxTokens": 8, "candidates": 1,
           "minConfidence": 0}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _capabilities(encodings: list[str] | None = None) -> T.ClientCapabilities:
    caps = client_capabilities("visual-studio-code")
    caps.text_document.inline_completion = T.InlineCompletionClientCapabilities()
    if encodings:
        caps.general = caps.general or T.GeneralClientCapabilities()
        caps.general.position_encodings = encodings
    return caps


async def _start(args: list[str], init_options: dict | None = None,
                 encodings: list[str] | None = None) -> LanguageClient:
    client = make_test_lsp_client()
    conv = client.protocol._converter

    def command_or_action(obj, _):
        # lsprotocol takes any object with a "command" key for a Command; a CodeAction's command is an object
        return conv.structure(obj, T.Command if isinstance(obj.get("command"), str) else T.CodeAction)

    conv.register_structure_hook(Union[T.Command, T.CodeAction], command_or_action)
    client.applied = []  # type: ignore[attr-defined]
    client.accept_edits = True  # type: ignore[attr-defined]

    @client.feature(T.WORKSPACE_APPLY_EDIT)
    def apply_edit(ls, params: T.ApplyWorkspaceEditParams):
        ls.applied.append(params)
        return T.ApplyWorkspaceEditResult(applied=ls.accept_edits)

    await client.start_io(sys.executable, "-m", "ui.cli", "lsp", *args, env=_env(), cwd=str(ROOT))
    client.init_result = await client.initialize_session(T.InitializeParams(  # type: ignore[attr-defined]
        capabilities=_capabilities(encodings), root_uri=ROOT.as_uri(), initialization_options=init_options))
    return client


def plain(obj):
    """pygls hands untyped JSON back as namedtuples; turn them into dicts and lists."""
    if hasattr(obj, "_asdict"):
        return {k: plain(v) for k, v in obj._asdict().items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


async def status(client: LanguageClient) -> dict:
    return plain(await client.protocol.send_request_async("remask/status", None))


async def wait_ready(client: LanguageClient) -> dict:
    for _ in range(600):
        st = await status(client)
        if st["state"] != "loading":
            assert st["state"] == "ready", st
            return st
        await asyncio.sleep(0.05)
    raise AssertionError("the model never finished loading")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(test_model_dir):
    c = await _start(["--model", str(test_model_dir)],
                     init_options={"remask": OPTIONS})
    await wait_ready(c)
    yield c
    await c.shutdown_session()  # shutdown + exit, then waits for the process
    assert c._server.returncode == 0
    await c.stop()


_counter = iter(range(10_000))
_opened: list[tuple[LanguageClient, str]] = []


@pytest.fixture(autouse=True)
def _close_documents():
    """Each test closes what it opened, as an editor would (so later tests don't queue behind old documents)."""
    yield
    while _opened:
        c, uri = _opened.pop()
        if c._server is not None and c._server.returncode is None:
            c.text_document_did_close(T.DidCloseTextDocumentParams(text_document=T.TextDocumentIdentifier(uri=uri)))


def open_doc(client: LanguageClient, text: str, name: str = "sample.py") -> str:
    uri = (ROOT / f"virtual-{next(_counter)}-{name}").as_uri()  # never on disk: the server must not read it
    client.text_document_did_open(T.DidOpenTextDocumentParams(
        text_document=T.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
    _opened.append((client, uri))
    return uri


def change_doc(client: LanguageClient, uri: str, version: int, rng: T.Range, text: str) -> None:
    client.text_document_did_change(T.DidChangeTextDocumentParams(
        text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[T.TextDocumentContentChangePartial(range=rng, text=text)]))


def apply_text_edits(text: str, edits: list[T.TextEdit], encoding: str = "utf-16") -> str:
    """Apply LSP edits the way an editor does (independently of the server's own conversion code)."""
    spans = []
    for e in edits:
        s = position_to_offset(text, e.range.start.line, e.range.start.character, encoding)
        t = position_to_offset(text, e.range.end.line, e.range.end.character, encoding)
        spans.append((s, t, e.new_text))
    for s, t, new in sorted(spans, reverse=True):
        text = text[:s] + new + text[t:]
    return text


def pos_of(text: str, needle: str, after: bool = True) -> T.Position:
    i = text.index(needle) + (len(needle) if after else 0)
    line = text.count("\n", 0, i)
    col = i - (text.rfind("\n", 0, i) + 1)
    return T.Position(line=line, character=col)


# ----------------------------------------------------------------------------------------------------------------


async def test_initialize_and_model_progress(client):
    st = await status(client)
    assert st["state"] == "ready" and st["encoding"] == "utf-16"
    assert st["config"]["debounceMs"] == 0 and st["config"]["maxTokens"] == 8  # from initializationOptions
    # the model load was reported with work-done progress: begin ... end
    loads = [r for r in client.progress_reports.values()
             if r and isinstance(r[0], T.WorkDoneProgressBegin) and "loading model" in r[0].title]
    assert loads and isinstance(loads[0][-1], T.WorkDoneProgressEnd) and loads[0][-1].message == "ready"


async def test_server_capabilities(test_model_dir):
    """Capabilities as an editor sees them, from a fresh initialize (cheap: the model never loads)."""
    c = await _start(["--model", str(test_model_dir), "--load-delay", "60"], encodings=["utf-8", "utf-16"])
    try:
        res = c.init_result.capabilities
        assert res.position_encoding == "utf-8"  # offered by the client, so used
        assert res.inline_completion_provider
        assert res.completion_provider is not None
        assert res.code_action_provider
        assert set(res.execute_command_provider.commands) >= {"remask.apply", "remask.editWithInstruction"}
        sync = res.text_document_sync
        assert sync.change == T.TextDocumentSyncKind.Incremental
    finally:
        await c.shutdown_session()
        await c.stop()


async def test_requests_while_loading_get_a_clear_answer_and_shutdown_is_prompt(test_model_dir):
    # the model comes from initializationOptions this time (no --model)
    c = await _start(["--load-delay", "60"], init_options={"model": str(test_model_dir)})
    try:
        uri = open_doc(c, CODE)
        st = await status(c)
        assert st["state"] == "loading" and st["config"]["model"] == str(test_model_dir)
        res = await c.text_document_inline_completion_async(T.InlineCompletionParams(
            text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=5, character=8),
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Invoked)))
        assert list(res.items) == []
        for _ in range(100):
            if c.messages:
                break
            await asyncio.sleep(0.02)
        assert any("still loading" in m.message for m in c.messages)
        with pytest.raises(JsonRpcException) as ei:
            await c.workspace_execute_command_async(T.ExecuteCommandParams(
                command="remask.apply", arguments=[{"uri": uri, "op": "fillAll"}]))
        assert ei.value.code == REQUEST_FAILED and "loading" in ei.value.message
        begins = [r[0] for r in c.progress_reports.values() if r and isinstance(r[0], T.WorkDoneProgressBegin)]
        assert any("loading model" in b.title for b in begins)
    finally:
        # shutdown while the model is "loading": the process must exit cleanly without waiting for the load
        await asyncio.wait_for(c.shutdown_session(), 30)
        assert c._server.returncode == 0
        await c.stop()


async def test_shutdown_while_a_command_decodes_answers_null_and_exits_cleanly(test_model_dir):
    """pygls cancelled pending requests while iterating its table of them: with a command decoding, shutdown
    answered "dictionary changed size during iteration" and the process exited 1."""
    c = await _start(["--model", str(test_model_dir)],
                     init_options={**OPTIONS, "maxTokens": 1024, "steps": 4, "threshold": None})
    try:
        await wait_for(lambda: c.progress_reports and any(
            isinstance(r[-1], T.WorkDoneProgressEnd) for r in c.progress_reports.values() if r), "the model")
        uri = open_doc(c, "def f(x):\n    pass\n")
        known = set(c.progress_reports)
        job = asyncio.ensure_future(c.workspace_execute_command_async(T.ExecuteCommandParams(
            command="remask.apply", arguments=[{"uri": uri, "op": "fillAll"}])))
        await wait_for(lambda: [t for t in c.progress_reports if t not in known], "the command to start decoding")
    finally:
        assert await asyncio.wait_for(c.protocol.send_request_async(T.SHUTDOWN, None), 30) is None
        c.protocol.notify(T.EXIT, None)
        await asyncio.wait_for(c._server.wait(), 30)
        assert c._server.returncode == 0
        job.cancel()
        await c.stop()


# ----------------------------------------------------------------------------------------------------------------
# the same engine in this process, for the expected answers (same weights, same settings, greedy decoding)

@pytest.fixture(scope="module")
def engine(test_model_dir):
    from assistant.engine import Engine

    return Engine.load(str(test_model_dir))


def settings(inline: bool = False):
    from lsp.config import ServerConfig

    return ServerConfig().updated(OPTIONS).settings(inline=inline)


def expected_ghost(engine, text: str, offset: int) -> str | None:
    from lsp.server import RemaskServer

    res = engine.fill(text, offset, offset, language="python", settings=settings(inline=True))
    got = RemaskServer.insertion(res, text, offset, 0)
    return None if got is None else got[0]


def inline_params(uri: str, pos: T.Position, automatic: bool = False) -> T.InlineCompletionParams:
    kind = T.InlineCompletionTriggerKind.Automatic if automatic else T.InlineCompletionTriggerKind.Invoked
    return T.InlineCompletionParams(text_document=T.TextDocumentIdentifier(uri=uri), position=pos,
                                    context=T.InlineCompletionContext(trigger_kind=kind))


async def code_actions(client, uri: str, start: T.Position, end: T.Position | None = None) -> list[T.CodeAction]:
    res = await client.text_document_code_action_async(T.CodeActionParams(
        text_document=T.TextDocumentIdentifier(uri=uri), range=T.Range(start=start, end=end or start),
        context=T.CodeActionContext(diagnostics=[])))
    return list(res or [])


async def run_action(client, action: T.CodeAction):
    return plain(await client.workspace_execute_command_async(T.ExecuteCommandParams(
        command=action.command.command, arguments=action.command.arguments)))


def configure(client, **settings) -> None:
    client.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"remask": settings}))


async def wait_for(predicate, what: str, limit: float = 60.0):
    """Poll until ``predicate()`` is truthy (a generous limit: CI machines are slow, this is no timing test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        got = predicate()
        if got:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_inline_completion_is_the_engine_fill_without_repeating_the_suffix(client, engine):
    uri = open_doc(client, CODE)
    for needle in ("return a + b",):
        pos = pos_of(CODE, needle)
        offset = CODE.index(needle) + len(needle)
        res = await client.text_document_inline_completion_async(inline_params(uri, pos))
        items = list(res.items)
        want = expected_ghost(engine, CODE, offset)
        if want is None:
            assert items == []
            continue
        assert len(items) == 1 and items[0].insert_text == want
        assert items[0].range is None  # a pure insertion at the cursor
        accepted = CODE[:offset] + want + CODE[offset:]
        assert accepted.count(CODE[offset:]) >= 1 and accepted.endswith(CODE[offset:])


async def test_ghost_text_mid_line_is_one_line_and_drops_the_closing_bracket(client):
    """The rest of the line after the cursor is never repeated (here: an auto-closed bracket)."""
    from lsp.textutil import clean_insertion

    # mid-line: one line only, and the ")" the editor already typed is not inserted again
    assert clean_insertion("y = max()\n", 8, "a, b)\nz = 1") == "a, b"
    assert clean_insertion("y = f(g())\n", 8, "x))") == "x"
    # an identifier that merely ends like the next word is left alone
    assert clean_insertion("y = (a)\n", 5, "aa") == "aa"
    # lines that repeat the code after the cursor are dropped
    assert clean_insertion("def f(x):\n    \n    return x\n", 14, "y = x\n    return x") == "y = x"
    # the model restating the cursor's indentation is not doubled
    assert clean_insertion("def f():\n    \n", 13, "    return 1") == "return 1"
    # later lines follow the document's tabs
    assert clean_insertion("if x:\n\tif y:\n\t\t\n", 15, "a = 1\n        b = 2", "\t") == "a = 1\n\t\tb = 2"


async def test_completion_fallback_replaces_the_typed_word(client, engine):
    uri = open_doc(client, CODE)
    needle = "return a + b"
    offset = CODE.index(needle) + len(needle)
    params = T.CompletionParams(text_document=T.TextDocumentIdentifier(uri=uri), position=pos_of(CODE, needle),
                                context=T.CompletionContext(trigger_kind=T.CompletionTriggerKind.Invoked))
    # this client shows ghost text, so the fallback stays quiet (no decoding twice per keystroke) ...
    res = await client.text_document_completion_async(params)
    assert list(res.items) == [] and not res.is_incomplete
    # ... unless inline completion is switched off
    configure(client, features={"inlineCompletion": False})
    try:
        res = await client.text_document_completion_async(params)
    finally:
        configure(client, features={"inlineCompletion": True})
    want = expected_ghost(engine, CODE, offset)
    if want is None:
        assert list(res.items) == []
        return
    (item,) = res.items
    assert res.is_incomplete
    assert item.text_edit.new_text == "b" + want  # the word being typed is part of the edit, so filtering works
    assert item.text_edit.range.start == pos_of(CODE, "return a + ")
    assert apply_text_edits(CODE, [item.text_edit]) == CODE[:offset] + want + CODE[offset:]


async def test_code_actions_list_is_cheap_and_right(client):
    uri = open_doc(client, CODE)
    before = (await status(client))["lastJob"], len(client.progress_reports)
    titles = [a.title for a in await code_actions(client, uri, pos_of(CODE, "return a + "))]
    assert titles[:4] == ["Regenerate this expression (line 6)", "Regenerate this statement (line 6)",
                          "Regenerate this body (lines 5-6)", "Regenerate this function (lines 4-6)"]
    assert "Repair suspicious tokens" in titles and "Fill all holes in file (2)" in titles
    assert "Fill hole" not in titles
    assert not any(t.startswith("Edit with instruction") for t in titles)  # a base model
    hole_titles = [a.title for a in await code_actions(client, uri, pos_of(CODE, '"hello " + <FI'))]
    assert hole_titles[0] == "Fill hole"
    # opening the menu ran no model job
    assert ((await status(client))["lastJob"], len(client.progress_reports)) == before


@pytest.mark.parametrize("title,op", [("Fill hole", "fill"), ("Regenerate this statement (line 6)", "regenerate"),
                                      ("Repair suspicious tokens", "repair"),
                                      ("Fill all holes in file (2)", "fillAll")])
async def test_each_code_action_is_applied_as_a_versioned_edit(client, engine, title, op):
    uri = open_doc(client, CODE)
    change_doc(client, uri, 2, T.Range(start=T.Position(line=0, character=0), end=T.Position(line=0, character=0)),
               "")  # version 2, same text
    where = pos_of(CODE, '"hello " + <FI') if op == "fill" else pos_of(CODE, "return a + ")
    if op == "repair":
        actions = await code_actions(client, uri, pos_of(CODE, "return a", False), pos_of(CODE, "a + b"))
    else:
        actions = await code_actions(client, uri, where)
    action = next(a for a in actions if a.title == title)
    n_applied = len(client.applied)
    out = await run_action(client, action)
    arg = action.command.arguments[0]
    arg = plain(arg) if not isinstance(arg, dict) else arg
    s = position_to_offset(CODE, arg["range"]["start"]["line"], arg["range"]["start"]["character"])
    e = position_to_offset(CODE, arg["range"]["end"]["line"], arg["range"]["end"]["character"])
    call = {"fill": lambda: engine.fill(CODE, s, e, language="python", settings=settings()),
            "regenerate": lambda: engine.regenerate(CODE, s, e, language="python", settings=settings()),
            "repair": lambda: engine.repair(CODE, s, e, language="python", settings=settings()),
            "fillAll": lambda: engine.fill_all(CODE, language="python", settings=settings())}[op]
    expected = call()
    if not expected.edits:
        assert out["applied"] is False
        assert out["reason"] == ("no suggestion" if expected.candidates[0].empty else "no change")
        assert len(client.applied) == n_applied
        return
    assert out["applied"] is True and out["op"] == op and out["version"] == 2
    params = client.applied[-1]
    (doc_edit,) = params.edit.document_changes
    assert doc_edit.text_document.uri == uri and doc_edit.text_document.version == 2  # pinned to its version
    assert apply_text_edits(CODE, list(doc_edit.edits)) == expected.new_text
    # the job reported $/progress (delay 0 in these tests) and ended it
    ends = [r[-1] for r in client.progress_reports.values()
            if r and isinstance(r[0], T.WorkDoneProgressBegin) and r[0].title.startswith("remask: ")
            and "loading" not in r[0].title]
    assert ends and all(isinstance(x, T.WorkDoneProgressEnd) for x in ends)


async def test_incremental_changes_follow_the_lsp_line_rules_and_encoded_uris(client, engine):
    """The server's copy stays the editor's: only \\n, \\r\\n, \\r break lines (not a form feed), a character past
    the end of a line is its end (not after its line break), and a percent-encoded URI is one document."""
    def rng(line: int, char: int) -> T.Range:
        return T.Range(start=T.Position(line=line, character=char), end=T.Position(line=line, character=char))

    text = 's = "a\x0cb\u2028c"\r\nx = 1\r\ny = <FILL>\r\n'
    uri = open_doc(client, text, name="with space.py")
    assert "%20" in uri
    change_doc(client, uri, 2, rng(1, 0), "z = 2; ")
    change_doc(client, uri, 3, rng(1, 99), "  # c")
    change_doc(client, uri, 4, rng(0, 7), "_")  # after the form feed
    text = 's = "a\x0c_b\u2028c"\r\nz = 2; x = 1  # c\r\ny = <FILL>\r\n'
    (action,) = [a for a in await code_actions(client, uri, pos_of(text, "<FILL>", False))
                 if a.title == "Fill all holes in file (1)"]
    out = await run_action(client, action)
    expected = engine.fill_all(text, language="python", settings=settings())
    assert out["applied"] is True and out["version"] == 4
    (doc_edit,) = client.applied[-1].edit.document_changes
    assert doc_edit.text_document.uri == uri
    assert apply_text_edits(text, list(doc_edit.edits)) == expected.new_text


async def test_code_actions_on_an_unsaved_plain_text_file_with_a_non_ascii_uri_while_edits_arrive(client):
    """Before: textDocument/codeAction answered -32603 (IndexError: list index out of range) here, after a
    remask.apply with a reversed range: the plain-text fallback of spans_at split lines at form feeds and lone
    CRs differently from the LSP; and a reversed range is normalised, never an internal error."""
    uri = f"untitled:Ünbenannt-{next(_counter)}"
    text = "let a = 1;\rlet b = 2;\x0c\r\nfunction f(x) {\r  return x;\u2028}\n\nlet c = 3;\n"
    client.text_document_did_open(T.DidOpenTextDocumentParams(
        text_document=T.TextDocumentItem(uri=uri, language_id="plaintext", version=1, text=text)))
    _opened.append((client, uri))
    rev = {"start": {"line": 2, "character": 5}, "end": {"line": 0, "character": 1}}  # start after end
    out = await run_action(client, T.CodeAction(title="x", command=T.Command(
        title="x", command="remask.apply", arguments=[{"uri": uri, "version": 1, "op": "regenerate", "range": rev}])))
    assert out["op"] == "regenerate" and out["version"] == 1
    change_doc(client, uri, 2, T.Range(start=T.Position(line=1, character=3), end=T.Position(line=1, character=3)),
               "\x0cé\r")
    change_doc(client, uri, 3, T.Range(start=T.Position(line=4, character=0), end=T.Position(line=4, character=0)),
               "b\u2028c")
    text = "let a = 1;\rlet\x0cé\r b = 2;\x0c\r\nfunction f(x) {\rb\u2028c  return x;\u2028}\n\nlet c = 3;\n"
    from assistant.positions import offset_to_position

    where = sorted({offset_to_position(text, off) for off in range(len(text) + 1)})
    titles = set()
    for line, ch in where:  # every position of the document, as a cursor and as a reversed selection
        for end in (T.Position(line=line, character=ch), T.Position(line=0, character=0)):
            actions = await code_actions(client, uri, T.Position(line=line, character=ch), end)
            titles.update(a.title.split(" (")[0] for a in actions)
            for a in actions:
                r = plain(a.command.arguments[0])["range"]
                s = position_to_offset(text, r["start"]["line"], r["start"]["character"])  # strict: inside
                e = position_to_offset(text, r["end"]["line"], r["end"]["character"])
                assert 0 <= s <= e <= len(text)
    assert {"Regenerate this line", "Regenerate this block", "Repair suspicious tokens"} <= titles, titles


async def test_ghost_text_below_min_confidence_is_not_shown(client, engine):
    """The random model is never confident: with a floor above its confidence, nothing is shown."""
    uri = open_doc(client, CODE)
    shown = []
    for needle in ("return a + b", "def greet(name", "self.items"):
        offset = CODE.index(needle) + len(needle)
        if expected_ghost(engine, CODE, offset) is not None:
            res = await client.text_document_inline_completion_async(inline_params(uri, pos_of(CODE, needle)))
            assert len(res.items) == 1
            shown.append(needle)
    assert shown
    conf = engine.fill(CODE, CODE.index(shown[0]) + len(shown[0]), language="python",
                       settings=settings(inline=True)).stats["confidence"]
    assert conf is not None and conf < 0.5
    configure(client, minConfidence=0.5)
    try:
        assert (await status(client))["config"]["minConfidence"] == 0.5
        for needle in shown:
            res = await client.text_document_inline_completion_async(inline_params(uri, pos_of(CODE, needle)))
            assert list(res.items) == []
    finally:
        configure(client, minConfidence=0)


def _silent_checkpoint(folder: Path) -> Path:
    """A real checkpoint that answers EOS at once, always (see tests/test_robustness.py)."""
    import torch

    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.testing import make_test_checkpoint

    model, tok = load_checkpoint(make_test_checkpoint(folder.parent / (folder.name + "-src")))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 100.0
        model.model.embed_tokens.weight[tok.eos_id, 0] = 200.0
        model.model.norm.weight[0] = 1.0
    return save_checkpoint(model, folder, tokenizer=tok)


async def test_an_empty_answer_applies_nothing_and_says_why(tmp_path_factory):
    """Before: an empty answer became an edit deleting the hole (fill), the holes (fill all) or the function."""
    model = _silent_checkpoint(tmp_path_factory.mktemp("silent") / "silent")
    c = await _start(["--model", str(model)], init_options={"remask": {**OPTIONS, "candidates": 2}})
    try:
        await wait_ready(c)
        uri = open_doc(c, CODE)
        actions = await code_actions(c, uri, pos_of(CODE, '"hello " + <FI'))
        actions += [a for a in await code_actions(c, uri, pos_of(CODE, "return a + "))
                    if a.title.startswith("Regenerate this function")]
        assert [a.title for a in actions if a.title.split(" ")[0] in ("Fill", "Regenerate")][:1] == ["Fill hole"]
        for title in ("Fill hole", "Fill all holes in file (2)", "Regenerate this function (lines 4-6)"):
            action = next(a for a in actions if a.title == title)
            out = await run_action(c, action)
            assert out["applied"] is False and out["reason"] == "no suggestion", out
            assert out["message"].startswith("no suggestion: the model answered nothing")
        assert c.applied == []  # no workspace/applyEdit at all
        await wait_for(lambda: sum("no suggestion" in m.message for m in c.messages) >= 3, "the messages")
        res = await c.text_document_inline_completion_async(inline_params(uri, pos_of(CODE, "return a + b")))
        assert list(res.items) == []
    finally:
        await c.shutdown_session()
        await c.stop()


async def test_edit_with_instruction_needs_an_instruct_model(client):
    uri = open_doc(client, CODE)
    with pytest.raises(JsonRpcException) as ei:
        await client.workspace_execute_command_async(T.ExecuteCommandParams(
            command="remask.editWithInstruction",
            arguments=[{"uri": uri, "range": {"start": {"line": 5, "character": 4},
                                              "end": {"line": 5, "character": 16}},
                        "instruction": "use sum()"}]))
    assert ei.value.code == REQUEST_FAILED and "instruct" in ei.value.message
    assert any("instruct" in m.message and m.type == T.MessageType.Error for m in client.messages)


async def test_stale_action_is_dropped_before_running(client):
    uri = open_doc(client, CODE)
    (action,) = [a for a in await code_actions(client, uri, pos_of(CODE, "return a + "))
                 if a.title == "Fill all holes in file (2)"]
    change_doc(client, uri, 2, T.Range(start=T.Position(line=0, character=0), end=T.Position(line=0, character=0)),
               "# edited\n")
    n = len(client.applied)
    with pytest.raises(JsonRpcException) as ei:
        await run_action(client, action)
    assert ei.value.code == CONTENT_MODIFIED
    assert len(client.applied) == n
    assert any("dropped fillAll" in m.message for m in client.log_messages)


async def test_result_computed_for_an_old_version_is_not_applied(client):
    uri = open_doc(client, CODE)
    (action,) = [a for a in await code_actions(client, uri, pos_of(CODE, "return a + "))
                 if a.title.startswith("Fill all holes")]
    n = len(client.applied)
    known = set(client.progress_reports)
    configure(client, maxTokens=256, steps=4, threshold=None)  # one token per step: a long decode
    try:
        fut = asyncio.ensure_future(run_action(client, action))
        # once the job is decoding, the user types
        await wait_for(lambda: [t for t, r in client.progress_reports.items() if t not in known
                                and any(isinstance(x, T.WorkDoneProgressReport) for x in r)], "a decoding step")
        change_doc(client, uri, 2, T.Range(start=T.Position(line=0, character=0),
                                           end=T.Position(line=0, character=0)), "# typing\n")
        out = await fut
    finally:
        configure(client, maxTokens=OPTIONS["maxTokens"], steps=None, threshold=0.9)
    assert out == {"applied": False, "op": "fillAll", "reason": "stale", "version": 1, "current": 2}
    assert len(client.applied) == n
    assert any("dropped a stale fillAll result" in m.message for m in client.log_messages)
    # the edit stopped the decoder instead of letting it finish for nothing
    assert (await status(client))["lastJob"] == "cancelled"


async def test_cancel_request_stops_the_decoder(client):
    uri = open_doc(client, CODE)
    configure(client, maxTokens=256, steps=4, threshold=None)  # one token per step: a long decode
    try:
        (action,) = [a for a in await code_actions(client, uri, pos_of(CODE, "return a + "))
                     if a.title.startswith("Fill all holes")]
        known = set(client.progress_reports)
        fut = asyncio.ensure_future(client.protocol.send_request_async(
            T.WORKSPACE_EXECUTE_COMMAND, T.ExecuteCommandParams(command=action.command.command,
                                                               arguments=action.command.arguments),
            msg_id="cancel-me"))
        tokens = await wait_for(lambda: [t for t, r in client.progress_reports.items()
                                         if t not in known and any(isinstance(x, T.WorkDoneProgressReport)
                                                                   for x in r)], "a decoding step")
        client.cancel_request(T.CancelParams(id="cancel-me"))
        with pytest.raises(JsonRpcRequestCancelled):
            await fut
        for _ in range(3000):
            st = await status(client)
            if st["running"] == 0:
                break
            await asyncio.sleep(0.02)
        assert st["running"] == 0 and st["lastJob"] == "cancelled"  # the engine raised Cancelled mid-decode
        assert client.progress_reports[tokens[0]][-1].message == "cancelled"
    finally:
        configure(client, maxTokens=OPTIONS["maxTokens"], steps=None, threshold=0.9)
    # and the server keeps serving
    assert (await status(client))["state"] == "ready"


async def test_new_inline_request_supersedes_the_previous_one(client, engine):
    uri = open_doc(client, CODE)
    configure(client, debounceMs=5000)
    try:
        pos = pos_of(CODE, "self.items = []")
        first = asyncio.ensure_future(client.text_document_inline_completion_async(inline_params(uri, pos, True)))
        await asyncio.sleep(0.2)  # the first one is now waiting out its debounce
        second = await client.text_document_inline_completion_async(inline_params(uri, pos))
        first = await first
    finally:
        configure(client, debounceMs=0)
    assert list(first.items) == []  # superseded: an empty answer, not an error
    want = expected_ghost(engine, CODE, CODE.index("self.items = []") + len("self.items = []"))
    assert [i.insert_text for i in second.items] == ([want] if want else [])


async def test_configuration_change_and_invalid_values(client):
    uri = open_doc(client, CODE)
    pos = pos_of(CODE, "return a + b")
    configure(client, features={"inlineCompletion": False}, inlineMaxTokens=4)
    try:
        st = await status(client)
        assert st["config"]["features"]["inlineCompletion"] is False and st["config"]["inlineMaxTokens"] == 4
        off = await client.text_document_inline_completion_async(inline_params(uri, pos))
        assert list(off.items) == []
        res = await client.text_document_completion_async(T.CompletionParams(
            text_document=T.TextDocumentIdentifier(uri=uri), position=pos))
        assert res.is_incomplete  # the fallback took over
        n = len(client.messages)
        configure(client, threshold=5, inlineMaxTokens=2)  # invalid: nothing of it is applied
        st = await status(client)
        assert st["config"]["threshold"] == 0.9 and st["config"]["inlineMaxTokens"] == 4
        msg = await wait_for(lambda: client.messages[n:], "an error message")
        assert msg[0].type == T.MessageType.Error and "threshold" in msg[0].message
    finally:
        configure(client, features={"inlineCompletion": True}, inlineMaxTokens=OPTIONS["inlineMaxTokens"])


async def test_utf16_positions_with_astral_characters(client):
    text = 'def f():\n    s = "\U0001F600é" + <FILL>\n    return s\n'
    uri = open_doc(client, text)
    pos = T.Position(line=1, character=len('    s = "') + 2 + len('é" + <F'))  # the emoji is 2 UTF-16 units
    (fill,) = [a for a in await code_actions(client, uri, pos) if a.title == "Fill hole"]
    rng = fill.command.arguments[0]["range"]
    assert rng["start"] == {"line": 1, "character": len('    s = "') + 2 + len('é" + ')}
    out = await run_action(client, fill)
    start = text.index("<FILL>")
    if out["applied"]:
        (doc_edit,) = client.applied[-1].edit.document_changes
        new = apply_text_edits(text, list(doc_edit.edits))  # converted independently of the server's code
        assert new.startswith(text[:start]) and new.endswith(text[start + len("<FILL>"):])
        assert "<FILL>" not in new
    else:
        assert out["reason"] == "no change"


async def test_diagnostics_are_hints_and_off_by_default(client):
    uri = open_doc(client, CODE)
    await asyncio.sleep(0.1)
    assert uri not in client.diagnostics  # off by default
    configure(client, features={"diagnostics": True}, diagnosticsDebounceMs=0)
    try:
        diags = await wait_for(lambda: client.diagnostics.get(uri), "diagnostics")
        assert all(d.severity == T.DiagnosticSeverity.Hint and d.source == "remask" for d in diags)
        assert all("unlikely token" in d.message for d in diags)
    finally:
        configure(client, features={"diagnostics": False})
    await wait_for(lambda: list(client.diagnostics.get(uri, [None])) == [], "diagnostics to be cleared")


async def test_bad_requests_get_errors_and_the_server_keeps_serving(client):
    uri = open_doc(client, CODE)
    # unknown document
    with pytest.raises(JsonRpcException) as ei:
        await client.text_document_inline_completion_async(inline_params(ROOT.as_uri() + "/nope.py",
                                                                         T.Position(line=0, character=0)))
    assert "not open" in ei.value.message
    # a range past the end
    with pytest.raises(JsonRpcException) as ei:
        await code_actions(client, uri, T.Position(line=999, character=0))
    assert ei.value.code == INVALID_PARAMS and "past the end" in ei.value.message
    # malformed params
    with pytest.raises(JsonRpcException) as ei:
        await send_raw(client, T.TEXT_DOCUMENT_INLINE_COMPLETION, {"textDocument": {"uri": 5}, "position": "here"})
    assert ei.value.code == INVALID_PARAMS and "textDocument/inlineCompletion" in ei.value.message
    # a malformed command argument
    with pytest.raises(JsonRpcException) as ei:
        await client.workspace_execute_command_async(T.ExecuteCommandParams(
            command="remask.apply", arguments=[{"uri": uri, "op": "explode"}]))
    assert ei.value.code == INVALID_PARAMS
    # params left out (JSON-RPC allows it) is answered; an unknown method is -32601, not invalid params
    assert getattr(await send_raw(client, "remask/status", None), "state", None) == "ready"
    with pytest.raises(JsonRpcException) as ei:
        await send_raw(client, "remask/nothing", None)
    assert ei.value.code == -32601
    assert (await status(client))["state"] == "ready"


async def send_raw(client: LanguageClient, method: str, params: dict | None):
    """Send a request as raw JSON, bypassing the client's typed serialisation (to send malformed params);
    ``params`` None leaves the member out, as JSON-RPC allows."""
    msg_id = f"raw-{next(_counter)}"
    fut: Future = Future()
    client.protocol._request_futures[msg_id] = fut
    msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not None:
        msg["params"] = params
    body = json.dumps(msg)
    client.protocol.writer.write(f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    return await asyncio.wrap_future(fut)


async def test_hundreds_of_rapid_requests(client):
    uri = open_doc(client, CODE)
    pos = pos_of(CODE, "self.items = []")
    inline = [client.text_document_inline_completion_async(inline_params(uri, pos)) for _ in range(150)]
    menus = [code_actions(client, uri, pos_of(CODE, "return a + ")) for _ in range(100)]
    results = await asyncio.gather(*inline, *menus)
    assert all(len(list(r.items)) <= 1 for r in results[:150])
    assert all(len(r) >= 4 for r in results[150:])
    assert (await status(client))["state"] == "ready"


async def test_a_file_of_several_megabytes(client):
    big = CODE * 14_000  # ~4 MB
    assert len(big) > 3_000_000
    uri = open_doc(client, big)
    last = big.count("\n")
    res = await client.text_document_inline_completion_async(inline_params(uri, T.Position(line=last, character=0)))
    assert len(list(res.items)) <= 1
    mid = big.count("\n", 0, len(big) // 2)
    line = big.split("\n")[mid]
    actions = await code_actions(client, uri, T.Position(line=mid, character=len(line)))
    assert isinstance(actions, list)
    # incremental edits keep the server's copy in sync even at this size
    change_doc(client, uri, 2, T.Range(start=T.Position(line=last, character=0),
                                       end=T.Position(line=last, character=0)), "x = 1\n")
    actions = await code_actions(client, uri, T.Position(line=last, character=3))
    assert any(a.title.startswith("Regenerate") for a in actions)
    assert all(a.command.arguments[0]["version"] == 2 for a in actions)


@pytest.fixture(scope="module")
def instruct_model_dir(tmp_path_factory):
    from model.testing import make_test_checkpoint

    return make_test_checkpoint(tmp_path_factory.mktemp("models") / "instruct-model", kind="bd-instruct")


async def test_model_switch_and_edit_with_instruction(client, test_model_dir, instruct_model_dir):
    """Changing remask.model reloads in the background; an instruct model offers "Edit with instruction..."."""
    asked: list[T.ShowMessageRequestParams] = []

    @client.feature(T.WINDOW_SHOW_MESSAGE_REQUEST)
    def choose(ls, params: T.ShowMessageRequestParams):
        asked.append(params)
        return next(a for a in params.actions if a.title == "Add a docstring")

    configure(client, model=str(instruct_model_dir))
    try:
        st = await wait_ready(client)
        assert st["model"]["instruct"] is True
        uri = open_doc(client, CODE)
        actions = await code_actions(client, uri, pos_of(CODE, "return a + "))
        (edit,) = [a for a in actions if a.title == "Edit with instruction..."]
        assert edit.command.command == "remask.editWithInstruction"
        out = await run_action(client, edit)  # no instruction given: the server asks the editor for one
        assert asked and "Add a docstring" in [a.title for a in asked[0].actions]
        if out["applied"]:
            (doc_edit,) = client.applied[-1].edit.document_changes
            assert doc_edit.text_document.version == 1
        else:
            assert out["reason"] == "no change"
        # an explicit instruction needs no question
        n = len(asked)
        arg = dict(edit.command.arguments[0], instruction="Use sum()")
        out = plain(await client.workspace_execute_command_async(T.ExecuteCommandParams(
            command="remask.editWithInstruction", arguments=[arg])))
        assert len(asked) == n and out["op"] == "instruct"
    finally:
        configure(client, model=str(test_model_dir))
        st = await wait_ready(client)
    assert st["model"]["instruct"] is False


async def test_tcp_listens_on_loopback_and_exits_on_shutdown(test_model_dir):
    import socket
    import subprocess

    from pygls.lsp.client import LanguageClient as PlainClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", "lsp", "--tcp", str(port), "--model",
                             str(test_model_dir), "--load-delay", "60"], cwd=str(ROOT), env=_env(),
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline().strip() == f"remask lsp: listening on 127.0.0.1:{port}"
        c = PlainClient("tcp-test", "0")
        for _ in range(200):
            try:
                await c.start_tcp("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        res = await c.initialize_async(T.InitializeParams(capabilities=T.ClientCapabilities()))
        assert res.server_info.name == "remask"
        assert (await c.protocol.send_request_async("remask/status", None)).state == "loading"
        await c.shutdown_async(None)
        c.exit(None)
        await c.stop()
        assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
