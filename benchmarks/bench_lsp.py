"""Latency of ``remask lsp`` over stdio, with the engine-only latency of the same work beside it.

For each feature (ghost text, completion, opening the code-action menu, and each code action through to the
applied edit) it times request -> response in a real LSP client talking to the real server subprocess, then
times the same engine calls in this process. The difference is what the server adds (JSON-RPC, document
sync, position conversion, thread hand-off, ``workspace/applyEdit`` round trip).

    python benchmarks/bench_lsp.py --model random:small --repeats 20
    python benchmarks/bench_lsp.py                     # a random ``test`` checkpoint in a temp folder

Prints a Markdown table. Numbers depend on the machine and its load; run it on an idle one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Union

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsprotocol import types as T  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402

SAMPLE = '''import os


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


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def pos_of(text: str, needle: str, after: bool = True) -> T.Position:
    i = text.index(needle) + (len(needle) if after else 0)
    return T.Position(line=text.count("\n", 0, i), character=i - (text.rfind("\n", 0, i) + 1))


def make_client() -> LanguageClient:
    client = LanguageClient("remask-bench", "0")
    conv = client.protocol._converter

    def command_or_action(obj, _):  # lsprotocol mistakes a CodeAction with a command for a Command
        return conv.structure(obj, T.Command if isinstance(obj.get("command"), str) else T.CodeAction)

    conv.register_structure_hook(Union[T.Command, T.CodeAction], command_or_action)

    @client.feature(T.WORKSPACE_APPLY_EDIT)
    def apply_edit(ls, params: T.ApplyWorkspaceEditParams) -> T.ApplyWorkspaceEditResult:
        return T.ApplyWorkspaceEditResult(applied=True)  # the buffer is left as it is, so every run is alike

    for method in (T.WINDOW_LOG_MESSAGE, T.WINDOW_SHOW_MESSAGE, T.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS):
        client.feature(method)(lambda ls, params: None)
    return client


async def timed(fn: Callable[[], Awaitable[Any]] | Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    out = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        r = fn()
        if asyncio.iscoroutine(r):
            await r
        dt = (time.perf_counter() - t0) * 1000
        if i >= warmup:
            out.append(dt)
    return out


async def bench(model: str, device: str, repeats: int, warmup: int, options: dict) -> list[tuple[str, list, list]]:
    client = make_client()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    await client.start_io(sys.executable, "-m", "lsp.server", "--model", model, "--device", device, env=env,
                          cwd=str(ROOT))
    caps = T.ClientCapabilities(
        workspace=T.WorkspaceClientCapabilities(workspace_edit=T.WorkspaceEditClientCapabilities(
            document_changes=True), apply_edit=True),
        text_document=T.TextDocumentClientCapabilities(
            inline_completion=T.InlineCompletionClientCapabilities(),
            code_action=T.CodeActionClientCapabilities()),
        window=T.WindowClientCapabilities(work_done_progress=False))
    await client.initialize_async(T.InitializeParams(capabilities=caps, initialization_options={"remask": options}))
    client.initialized(T.InitializedParams())
    t0 = time.perf_counter()
    while True:
        st = await client.protocol.send_request_async("remask/status", None)
        if st.state == "ready":
            break
        if st.state == "failed":
            raise SystemExit(f"the server could not load the model: {st.detail}")
        await asyncio.sleep(0.05)
    print(f"server ready in {time.perf_counter() - t0:.1f}s: {st.detail}", file=sys.stderr)

    uri = (ROOT / "bench-virtual.py").as_uri()
    client.text_document_did_open(T.DidOpenTextDocumentParams(
        text_document=T.TextDocumentItem(uri=uri, language_id="python", version=1, text=SAMPLE)))
    doc = T.TextDocumentIdentifier(uri=uri)
    cursor = pos_of(SAMPLE, "return a + b")
    stmt = pos_of(SAMPLE, "return a + ")

    async def actions(at: T.Position, end: T.Position | None = None) -> list[T.CodeAction]:
        return list(await client.text_document_code_action_async(T.CodeActionParams(
            text_document=doc, range=T.Range(start=at, end=end or at), context=T.CodeActionContext(diagnostics=[]))))

    menu = await actions(stmt)
    hole_menu = await actions(pos_of(SAMPLE, '"hello " + <FI'))
    repair_menu = await actions(pos_of(SAMPLE, "return a", False), pos_of(SAMPLE, "a + b"))
    pick = {
        "Fill hole": next(a for a in hole_menu if a.title == "Fill hole"),
        "Regenerate statement": next(a for a in menu if a.title.startswith("Regenerate this statement")),
        "Repair suspicious tokens": next(a for a in repair_menu if a.title == "Repair suspicious tokens"),
        "Fill all holes in file": next(a for a in menu if a.title.startswith("Fill all holes")),
    }

    async def run_command(a: T.CodeAction):
        return await client.workspace_execute_command_async(T.ExecuteCommandParams(
            command=a.command.command, arguments=a.command.arguments))

    lsp_calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "inline completion": lambda: client.text_document_inline_completion_async(T.InlineCompletionParams(
            text_document=doc, position=cursor,
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Invoked))),
        "completion (fallback)": lambda: client.text_document_completion_async(T.CompletionParams(
            text_document=doc, position=cursor)),
        "code action menu": lambda: actions(stmt),
        **{name: (lambda a=a: run_command(a)) for name, a in pick.items()},
    }
    # the same work without the server, in this process
    from lsp.config import ServerConfig
    from lsp.server import _load_engine

    cfg = ServerConfig().updated(options)
    engine = _load_engine(model, device, cfg.settings())

    def rng(a: T.CodeAction) -> tuple[int, int]:
        from assistant.positions import position_to_offset

        r = a.command.arguments[0]["range"]
        return (position_to_offset(SAMPLE, r["start"]["line"], r["start"]["character"]),
                position_to_offset(SAMPLE, r["end"]["line"], r["end"]["character"]))

    off = SAMPLE.index("return a + b") + len("return a + b")
    s_in, s = cfg.settings(inline=True), cfg.settings()
    f0, f1 = rng(pick["Fill hole"])
    g0, g1 = rng(pick["Regenerate statement"])
    r0, r1 = rng(pick["Repair suspicious tokens"])
    st0 = SAMPLE.index("return a + ")
    engine_calls: dict[str, Callable[[], Any]] = {
        "inline completion": lambda: engine.fill(SAMPLE, off, off, language="python", settings=s_in),
        "completion (fallback)": lambda: engine.fill(SAMPLE, off, off, language="python", settings=s_in),
        "code action menu": lambda: (engine.spans_at(SAMPLE, st0, st0, language="python"),
                                     engine.holes(SAMPLE, language="python")),
        "Fill hole": lambda: engine.fill(SAMPLE, f0, f1, language="python", settings=s),
        "Regenerate statement": lambda: engine.regenerate(SAMPLE, g0, g1, language="python", settings=s),
        "Repair suspicious tokens": lambda: engine.repair(SAMPLE, r0, r1, language="python", settings=s),
        "Fill all holes in file": lambda: engine.fill_all(SAMPLE, language="python", settings=s),
    }
    def ghost_text(on: bool) -> None:
        # this client advertises inline completion, so the fallback only answers with ghost text switched off
        client.workspace_did_change_configuration(T.DidChangeConfigurationParams(
            settings={"remask": {"features": {"inlineCompletion": on}}}))

    # a warm-up round over everything first: the first decodes of each shape are much slower
    for _ in range(1 if warmup else 0):
        for name, lsp_fn in lsp_calls.items():
            ghost_text(name != "completion (fallback)")
            await lsp_fn()
            engine_calls[name]()
    rows = []
    for name, lsp_fn in lsp_calls.items():
        ghost_text(name != "completion (fallback)")
        # interleaved, so both sides see the same machine load
        lsp_t: list[float] = []
        eng_t: list[float] = []
        for i in range(warmup + repeats):
            a = await timed(lsp_fn, 1, 0)
            b = await timed(engine_calls[name], 1, 0)
            if i >= warmup:
                lsp_t += a
                eng_t += b
        rows.append((name, lsp_t, eng_t))
        print(f"  {name}: LSP p50 {pct(lsp_t, .5):.1f} ms, engine p50 {pct(eng_t, .5):.1f} ms", file=sys.stderr,
              flush=True)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder or random:PRESET (default: a random test checkpoint)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--inline-max-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--candidates", type=int, default=3)
    args = p.parse_args(argv)
    options = {"debounceMs": 0, "inlineMaxTokens": args.inline_max_tokens, "maxTokens": args.max_tokens,
               "candidates": args.candidates}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from model.testing import make_test_checkpoint

            model = str(make_test_checkpoint(Path(tmp) / "test-model"))
            label = "random `test` checkpoint"
        else:
            label = model
        rows = asyncio.run(bench(model, args.device, args.repeats, args.warmup, options))
    import torch

    print(f"\n### remask lsp latency: {label}, {args.device}, {torch.get_num_threads()} torch threads, "
          f"{args.repeats} runs (+{args.warmup} warm-up), inline {args.inline_max_tokens} / actions "
          f"{args.max_tokens} tokens, {args.candidates} candidates\n")
    print("| request | LSP p50 ms | LSP p95 ms | engine p50 ms | engine p95 ms | server overhead p50 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, lsp_t, eng_t in rows:
        print(f"| {name} | {pct(lsp_t, .5):.1f} | {pct(lsp_t, .95):.1f} | {pct(eng_t, .5):.1f} | "
              f"{pct(eng_t, .95):.1f} | {pct(lsp_t, .5) - pct(eng_t, .5):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
