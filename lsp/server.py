"""``remask lsp``: the editing engine as a language server (pygls 2, stdio or TCP).

Features: ghost text (``textDocument/inlineCompletion``, with ``textDocument/completion`` as the fallback),
code actions that fill / regenerate / repair / rewrite spans (computed only when chosen, applied with
``workspace/applyEdit`` against the version they were computed for), optional hint diagnostics, and
``$/progress`` for model loading and long generations.

Design points, each for a reason:

- The model loads once, in the background, right after ``initialize``: the editor is usable at once, and a
  request that arrives early gets a clear "loading" answer instead of hanging.
- All model work runs on one worker thread (``_model_pool``); handlers are ``async`` and await it. When a
  request is cancelled (``$/cancelRequest``, or superseded by a newer inline request for the same document)
  the handler sets the job's ``CancelToken`` and the decoder stops between steps.
- Nothing here writes files: edits go to the editor, which owns the buffer. Logs go to stderr and
  ``window/logMessage``.
- Every handler is wrapped so that bad input becomes an LSP error and an unexpected exception is logged and
  answered with an error; the process keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lsprotocol import types as T
from pygls.exceptions import (
    JsonRpcContentModified,
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcRequestCancelled,
)
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from assistant.api import Cancelled, CancelToken, EngineError, EngineStep

from .actions import range_json, run_command
from .common import (
    CMD_APPLY,
    CMD_INSTRUCT,
    MAX_CONTEXT_CHARS,
    REQUEST_FAILED,
    ModelLoading,
    failed,
    guarded,
    jsonable,
)
from .config import SECTION, ConfigError, ServerConfig
from .diagnostics import schedule_diagnostics
from .documents import Document
from .documents import key as doc_key
from .progress import Progress
from .textutil import LineIndex, PositionError, clean_insertion, detect_indent, window

__all__ = ["REQUEST_FAILED", "RemaskServer", "add_arguments", "build_server", "guarded", "main", "parse_tcp", "run"]

log = logging.getLogger("remask.lsp")

STATUS_METHOD = "remask/status"
MAX_HOLE_SCAN_CHARS = 2_000_000  # "Fill all holes" is offered for files up to this size
_LANGUAGE_IDS = {"python": "python", "javascript": "javascript", "javascriptreact": "javascript",
                 "typescript": "typescript", "typescriptreact": "tsx", "rust": "rust", "go": "go",
                 "java": "java", "c": "c", "cpp": "cpp"}

try:
    from importlib.metadata import version as _pkg_version

    __version__ = _pkg_version("remask")
except Exception:  # not installed: running from a checkout
    __version__ = "0.1.0"


# ---------------------------------------------------------------------------------------------------------------
# protocol: malformed params get an error answer (pygls would drop the request and leave the client waiting)


class _MalformedRequest:
    jsonrpc = "2.0"

    def __init__(self, msg_id: Any, method: str, detail: str) -> None:
        self.id, self.method, self.detail = msg_id, method, detail


class RemaskProtocol(LanguageServerProtocol):
    # The open documents live in RemaskServer.docs (documents.py says why). pygls' own copies are not kept:
    # its didChange would also clamp the change's positions in place, before our handler saw them.
    @lsp_method(T.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: T.DidOpenTextDocumentParams):
        if (handler := self.fm.features.get(T.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(T.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: T.DidChangeTextDocumentParams):
        if (handler := self.fm.features.get(T.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(T.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: T.DidCloseTextDocumentParams):
        if (handler := self.fm.features.get(T.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None

    def structure_message(self, data: dict[str, Any]):
        message = isinstance(data, dict) and "jsonrpc" in data and isinstance(data.get("method"), str)
        if message and "params" not in data:
            data = {**data, "params": None}  # JSON-RPC 2.0 lets a request or notification omit params
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and isinstance(data.get("method"), str):
                return _MalformedRequest(data["id"], data["method"], _describe_structure_error(exc))
            raise

    def _send_handler_result(self, future, *, msg_id):
        # pygls logs every error answer as a traceback at ERROR level. An error that is an answer (the model is
        # still loading, the document changed, bad params) was logged by the handler at its own level; only an
        # internal error is a fault worth a traceback.
        if not future.cancelled():
            exc = future.exception()
            if isinstance(exc, JsonRpcException) and not isinstance(exc, JsonRpcInternalError):
                self._request_futures.pop(msg_id, None)
                self._send_response(msg_id, error=exc.to_response_error())
                return
        super()._send_handler_result(future, msg_id=msg_id)

    def handle_message(self, message):
        if isinstance(message, _MalformedRequest):
            text = f"invalid params for {message.method}: {message.detail}"
            self._server.log(text, T.MessageType.Warning)
            self._send_response(message.id, error=JsonRpcInvalidParams(text).to_response_error())
            return
        super().handle_message(message)


def _describe_structure_error(exc: BaseException) -> str:
    cause = exc.__cause__
    if cause is None:
        return str(exc) or type(exc).__name__
    try:
        import cattrs

        return "; ".join(cattrs.transform_error(cause))[:500]
    except Exception:
        return str(cause)[:500]


# ---------------------------------------------------------------------------------------------------------------
# progress


@dataclasses.dataclass(eq=False)
class _InlineJob:
    task: asyncio.Task | None
    cancel: CancelToken
    superseded: bool = False


# ---------------------------------------------------------------------------------------------------------------
# the server


class RemaskServer(LanguageServer):
    def __init__(self, config: ServerConfig | None = None, load_delay: float = 0.0) -> None:
        super().__init__("remask", __version__, protocol_cls=RemaskProtocol,
                         text_document_sync_kind=T.TextDocumentSyncKind.Incremental, max_workers=4)
        self.config = config or ServerConfig()
        self.load_delay = load_delay
        self.engine: Any = None
        self.state = "idle"  # idle | loading | ready | failed
        self.state_detail = ""
        self._loaded_key: tuple[str | None, str, str | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.initialized = False  # requests before `initialize` are refused (guarded)
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="remask-model")
        self._parse_pool = ThreadPoolExecutor(1, thread_name_prefix="remask-parse")
        self._tokens: set[CancelToken] = set()
        self._inline: dict[str, _InlineJob] = {}
        self.doc_jobs: dict[str, set[CancelToken]] = {}  # uri -> code-action jobs computing against it
        self._diag_tasks: dict[str, asyncio.Task] = {}
        self._diag_hint: dict[str, int] = {}  # uri -> line of the last change (diagnostics look around it)
        self._holes: dict[str, tuple[int | None, list]] = {}  # uri -> (version, holes): one scan per version
        self._indexes: dict[str, tuple[int | None, str, LineIndex]] = {}
        self.docs: dict[str, Document] = {}  # documents.key(uri) -> the open document (our copy, see documents.py)
        self._load_task: asyncio.Task | None = None
        self._notice_shown = False
        self._stop = threading.Event()
        self.running = 0  # jobs executing on the model thread right now
        self.last_job = ""  # how the last model job ended: done | cancelled | error

    # -- plumbing -------------------------------------------------------------------------------------------------
    def call_in_loop(self, fn: Callable, *args: Any) -> None:
        """Run ``fn`` on the event loop (pygls' writer is not thread-safe)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def log(self, message: str, level: T.MessageType = T.MessageType.Info) -> None:
        log.log({1: logging.ERROR, 2: logging.WARNING}.get(level.value, logging.INFO), "%s", message)
        try:
            self.window_log_message(T.LogMessageParams(type=level, message=f"remask: {message}"))
        except Exception:  # no transport yet / any more
            pass

    def show(self, message: str, level: T.MessageType = T.MessageType.Info) -> None:
        try:
            self.window_show_message(T.ShowMessageParams(type=level, message=f"remask: {message}"))
        except Exception:
            pass

    def report_server_error(self, error: Exception, source) -> None:
        """Out-of-band errors (a malformed notification, ...): log them, don't pop up a dialog each time.

        Errors already answered to a request were logged by ``guarded`` (or are the user's bad input).
        """
        from pygls.exceptions import FeatureRequestError

        if source is FeatureRequestError and isinstance(error, JsonRpcException) and \
                not isinstance(error, JsonRpcInternalError):
            return
        self.log(f"{type(error).__name__}: {error}", T.MessageType.Error)

    def client_supports(self, path: str) -> bool:
        obj: Any = self.protocol.client_capabilities if hasattr(self.protocol, "client_capabilities") else None
        for part in path.split("."):
            if obj is None:
                return False
            obj = getattr(obj, part, None)
        return bool(obj)

    @property
    def encoding(self) -> str:
        try:
            enc = self.workspace.position_encoding or "utf-16"
        except RuntimeError:
            return "utf-16"
        return str(getattr(enc, "value", enc))

    def document(self, uri: str):
        """The open document ``uri``; an unknown one is an error (never read from disk)."""
        if not isinstance(uri, str):
            raise JsonRpcInvalidParams("textDocument.uri must be a string")
        doc = self.docs.get(doc_key(uri))
        if doc is None:
            raise failed(f"document {uri} is not open (send textDocument/didOpen first)")
        return doc

    def is_open(self, doc: Document) -> bool:
        """Whether ``doc`` is still the open document (not closed, nor closed and opened again)."""
        return self.docs.get(doc_key(doc.uri)) is doc

    def index(self, doc) -> LineIndex:
        """Line index of the document's current version, cached per version."""
        text = doc.source
        hit = self._indexes.get(doc.uri)
        if hit and hit[0] == doc.version and hit[1] == self.encoding and hit[2].text is text:
            return hit[2]
        idx = LineIndex(text, self.encoding)
        self._indexes[doc.uri] = (doc.version, self.encoding, idx)
        return idx

    @staticmethod
    def offset(idx: LineIndex, pos: Any) -> int:
        try:
            return idx.offset(int(pos.line), int(pos.character))
        except PositionError as e:
            raise JsonRpcInvalidParams(str(e)) from None

    def lsp_range(self, idx: LineIndex, start: int, end: int) -> T.Range:
        sl, sc = idx.position(start)
        el, ec = idx.position(end)
        return T.Range(start=T.Position(line=sl, character=sc), end=T.Position(line=el, character=ec))

    def language(self, doc) -> str | None:
        lang = None
        if self.engine is not None:
            try:
                lang = self.engine.language_for(doc.path or doc.uri)
            except Exception:
                lang = None
        return lang or _LANGUAGE_IDS.get((doc.language_id or "").lower())

    # -- model ------------------------------------------------------------------------------------------------------
    def start_loading(self) -> None:
        key = (self.config.model, self.config.device, self.config.adapter)
        if key == self._loaded_key and self.state in ("loading", "ready"):
            return
        self._loaded_key = key
        self.engine = None
        self.state, self.state_detail = "loading", f"loading {self.config.model or 'default'} on {self.config.device}"
        self._notice_shown = False
        self._load_task = asyncio.ensure_future(self._load(key))

    async def _load(self, key: tuple[str | None, str, str | None]) -> None:
        model, device, adapter = key
        progress = Progress(self, "remask: loading model", None, CancelToken(), cancellable=False)
        await progress.begin()
        t0 = time.monotonic()
        try:
            if self.load_delay:
                await asyncio.sleep(self.load_delay)
            settings = self.config.settings()
            engine = await asyncio.get_running_loop().run_in_executor(
                self._model_pool, _load_engine, model, device, settings, adapter)
        except asyncio.CancelledError:
            progress.end("cancelled")
            raise
        except Exception as e:
            if key != self._loaded_key:
                return
            self.state, self.state_detail = "failed", f"could not load model {model or 'default'}: {e}"
            progress.end("failed")
            self.log(self.state_detail + "\n" + traceback.format_exc(), T.MessageType.Error)
            self.show(self.state_detail, T.MessageType.Error)
            return
        if key != self._loaded_key:  # the configuration changed while this one loaded
            progress.end("superseded")
            return
        self.engine = engine
        info = getattr(engine, "info", {}) or {}
        self.state = "ready"
        self.state_detail = f"{info.get('name') or model or 'default'} ({info.get('kind', '?')}) on {device}"
        progress.end("ready")
        self.log(f"model ready in {time.monotonic() - t0:.1f}s: {self.state_detail}; "
                 f"{info.get('description', '')}")

    def require_engine(self) -> Any:
        """The engine, or an LSP error saying why there is none (for commands the user chose)."""
        if self.state == "ready" and self.engine is not None:
            return self.engine
        if self.state == "failed":
            raise failed(self.state_detail + " (fix the model setting; see the log)")
        raise ModelLoading(f"the model is still loading ({self.state_detail}); try again in a moment")

    def engine_or_notice(self) -> Any:
        """The engine, or None after telling the user once that it is loading (for as-you-type requests)."""
        if self.state == "ready" and self.engine is not None:
            return self.engine
        if not self._notice_shown:
            self._notice_shown = True
            if self.state == "failed":
                self.show(self.state_detail, T.MessageType.Error)
            else:
                self.show(f"the model is still loading ({self.state_detail}); suggestions start when it is ready")
        return None

    # -- jobs -------------------------------------------------------------------------------------------------------
    async def run_job(self, fn: Callable[[CancelToken, Callable[[EngineStep], None]], Any], *, title: str,
                      token: T.ProgressToken | None = None, progress: bool = True,
                      cancel: CancelToken | None = None, total: int | None = None) -> Any:
        """Run ``fn(cancel, callback)`` on the model thread; cancelling the awaiting task stops it between steps."""
        cancel = cancel or CancelToken()
        reporter = Progress(self, title, token, cancel, total)
        loop = asyncio.get_running_loop()

        def work(c: CancelToken, cb: Callable[[EngineStep], None]) -> Any:
            self.running += 1
            try:
                out = fn(c, cb)
                self.last_job = "done"
                return out
            except Cancelled:
                self.last_job = "cancelled"  # the decoder stopped between steps
                raise
            except BaseException:
                self.last_job = "error"
                raise
            finally:
                self.running -= 1

        fut = loop.run_in_executor(self._model_pool, work, cancel, reporter.step)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a late Cancelled is not an error
        self._tokens.add(cancel)
        outcome = "done"
        try:
            if progress:
                if token is not None:
                    await reporter.begin()
                else:
                    delay = self.config.progress_delay_ms / 1000
                    done, _ = await asyncio.wait({fut}, timeout=delay)
                    if not done:
                        await reporter.begin()
            return await fut
        except asyncio.CancelledError:
            cancel.cancel()
            outcome = "cancelled"
            raise
        except Cancelled:
            outcome = "cancelled"
            raise JsonRpcRequestCancelled("remask: cancelled") from None
        except Exception:
            outcome = "failed"
            raise
        finally:
            self._tokens.discard(cancel)
            reporter.end(outcome)

    async def parse_job(self, fn: Callable, *args: Any, **kw: Any) -> Any:
        """Tree-sitter work (spans, holes) on its own thread so menus don't queue behind a generation."""
        return await asyncio.get_running_loop().run_in_executor(self._parse_pool, functools.partial(fn, *args, **kw))

    def cancel_everything(self) -> None:
        for tok in list(self._tokens):
            tok.cancel()
        for job in list(self._inline.values()):
            job.cancel.cancel()
            if job.task is not None:
                job.superseded = True
                job.task.cancel()
        for t in list(self._diag_tasks.values()):
            t.cancel()
        if self._load_task is not None:
            self._load_task.cancel()

    def schedule_diagnostics(self, uri: str) -> None:
        schedule_diagnostics(self, uri)

    def apply_settings(self, raw: Any) -> None:
        _apply_settings(self, raw)

    def finish(self) -> int:
        """After the transport closed: stop workers quickly and return the exit code."""
        self._stop.set()
        for tok in list(self._tokens):
            tok.cancel()
        self._model_pool.shutdown(wait=False, cancel_futures=True)
        self._parse_pool.shutdown(wait=False, cancel_futures=True)
        return 0 if getattr(self.protocol, "_shutdown", False) else 1

    # -- inline completion ----------------------------------------------------------------------------------------
    async def suggest(self, uri: str, pos: T.Position, *, automatic: bool,
                      token: T.ProgressToken | None = None) -> tuple[str, LineIndex, int, int, str] | None:
        """Run a fill at the cursor. Returns (ghost text, index, offset, end of the replaced range, document
        text) or None (nothing to show)."""
        engine = self.engine_or_notice()
        if engine is None:
            return None
        doc = self.document(uri)
        version, idx = doc.version, self.index(doc)
        text = idx.text
        offset = self.offset(idx, pos)
        # a new request for this document supersedes the previous one
        task = asyncio.current_task()
        prev = self._inline.get(doc.uri)
        if prev is not None and prev.task is not task:
            prev.superseded = True
            prev.cancel.cancel()
            if prev.task is not None:
                prev.task.cancel()
        job = _InlineJob(task, CancelToken())
        self._inline[doc.uri] = job
        try:
            if automatic and self.config.debounce_ms:
                await asyncio.sleep(self.config.debounce_ms / 1000)
            sub, base = window(text, offset, offset, MAX_CONTEXT_CHARS)
            lang = self.language(doc)
            settings = self.config.settings(inline=True)
            res = await self.run_job(
                lambda c, cb: engine.fill(sub, offset - base, offset - base, language=lang, settings=settings,
                                          callback=cb, cancel=c),
                title="remask: completing", token=token, progress=token is not None, cancel=job.cancel,
                total=settings.max_new_tokens)
        except asyncio.CancelledError:
            if job.superseded:
                return None
            raise
        except JsonRpcRequestCancelled:
            if job.superseded:
                return None
            raise
        except EngineError as e:
            # as-you-type: an error dialog per keystroke helps nobody; log it and show nothing
            self.log(f"no suggestion for {doc.uri}: {e}", T.MessageType.Warning)
            return None
        finally:
            if self._inline.get(doc.uri) is job:
                del self._inline[doc.uri]
        if doc.version != version:
            return None  # typed on while we worked; the client asks again
        conf = (res.stats or {}).get("confidence")
        if conf is not None and conf < self.config.min_confidence:
            # a guess the model itself doubts costs the user a read and a rejection: show nothing
            log.info("ghost text hidden: mean confidence %.3f below minConfidence %.2f", conf,
                     self.config.min_confidence)
            return None
        ins = self.insertion(res, text, offset, base)
        if ins is None:
            return None
        return ins[0], idx, offset, ins[1], text

    @staticmethod
    def insertion(res: Any, text: str, offset: int, base: int) -> tuple[str, int] | None:
        """(ghost text, end of the replaced range) from a fill result, or None."""
        edits = sorted(((e.start + base, e.end + base, e.new_text) for e in res.edits), key=lambda e: e[0])
        best = None
        for s, e, new in edits:
            # the edit touches the cursor, or starts after blanks that follow it on its line
            if s <= offset <= e or (s > offset and not text[offset:s].strip(" \t")):
                best = (s, e, new)
                break
        if best is None:
            return None
        s, e, new = best
        s0, e = min(s, offset), max(e, offset)
        new = text[s0:s] + new  # the whole replacement of [s0, e)
        head = text[s0:offset]
        if not new.startswith(head):
            return None  # the edit rewrites text before the cursor: not ghost text
        ins = new[len(head):]
        end = offset
        if e > offset:
            replaced = text[offset:e]
            if ins.endswith(replaced):
                ins = ins[: len(ins) - len(replaced)]
            elif "\n" not in replaced.rstrip("\n"):
                end = e  # replace the rest of a placeholder on this line (e.g. "pass", "<FILL>")
            else:
                return None
        view = text[:offset] + text[end:]
        ins = clean_insertion(view, offset, ins, detect_indent(text[: min(len(text), 100_000)]))
        if not ins:
            return None
        return ins, end


# ---------------------------------------------------------------------------------------------------------------
# engine loading (runs on the model thread)


def _load_engine(model: str | None, device: str, settings: Any, adapter: str | None = None) -> Any:
    from assistant.remote import server_from_env

    url = server_from_env()
    if url is not None:  # `remask lsp --server URL` / REMASK_SERVER: the model lives in a `remask serve` process
        from assistant.remote import RemoteEngine

        return RemoteEngine(url, settings=settings)
    from assistant.engine import Engine

    if model and model.startswith("random:") and not adapter:
        # an untrained preset has no tokenizer; train a small one on the stdlib so the server can run at all
        from model.checkpoint import resolve_model
        from model.network import remask_config
        from model.testing import make_test_tokenizer

        m, _tok, desc = resolve_model(model, device=device)
        return Engine(m, make_test_tokenizer(remask_config(m).vocab_size), settings, desc)
    return Engine.load(model, device=device, settings=settings, adapter=adapter)


# ---------------------------------------------------------------------------------------------------------------
# handlers

def _forget(ls: RemaskServer, uri: str) -> None:
    """Drop what the server keeps for ``uri`` and stop the work computing against it."""
    t = ls._diag_tasks.pop(uri, None)
    if t is not None:
        t.cancel()
    ls._indexes.pop(uri, None)
    ls._holes.pop(uri, None)
    for tok in ls.doc_jobs.pop(uri, ()):
        tok.cancel()
    ls._diag_hint.pop(uri, None)
    job = ls._inline.pop(uri, None)
    if job is not None:
        job.superseded = True
        job.cancel.cancel()
        if job.task is not None:
            job.task.cancel()
    if ls.config.features.diagnostics:
        ls.text_document_publish_diagnostics(T.PublishDiagnosticsParams(uri=uri, diagnostics=[]))


def build_server(config: ServerConfig | None = None, load_delay: float = 0.0) -> RemaskServer:
    ls = RemaskServer(config, load_delay)

    @ls.feature(T.INITIALIZE)
    def initialize(ls: RemaskServer, params: T.InitializeParams) -> None:
        ls._loop = asyncio.get_running_loop()
        ls.initialized = True
        try:
            ls.config = ls.config.updated(params.initialization_options)
        except ConfigError as e:
            ls.show(f"invalid initializationOptions: {e}; using the defaults", T.MessageType.Error)
        ls.start_loading()

    @ls.feature(T.INITIALIZED)
    def initialized(ls: RemaskServer, params: T.InitializedParams) -> None:
        ls.log(f"remask {__version__}: position encoding {ls.encoding}; {ls.state_detail}")

    @ls.feature(T.SHUTDOWN)
    def shutdown(ls: RemaskServer, params: Any) -> None:
        ls.cancel_everything()
        # pygls cancels the pending requests next, iterating over its table of them, and a cancelled request's
        # done-callback deletes it from that table ("dictionary changed size during iteration"): cancel them
        # here first, over a copy, so that its loop finds them all done.
        proto = ls.protocol
        for msg_id, fut in list(getattr(proto, "_request_futures", {}).items()):
            if msg_id != getattr(proto, "msg_id", None) and not fut.done():
                fut.cancel()

    @ls.feature(T.TEXT_DOCUMENT_INLINE_COMPLETION, T.InlineCompletionOptions())
    @guarded
    async def inline_completion(ls: RemaskServer, params: T.InlineCompletionParams) -> T.InlineCompletionList:
        empty = T.InlineCompletionList(items=[])
        if not ls.config.features.inline_completion:
            return empty
        automatic = params.context is None or params.context.trigger_kind == T.InlineCompletionTriggerKind.Automatic
        got = await ls.suggest(params.text_document.uri, params.position, automatic=automatic,
                               token=params.work_done_token)
        if got is None:
            return empty
        new_text, idx, offset, end, _ = got
        rng = ls.lsp_range(idx, offset, end) if end != offset else None
        return T.InlineCompletionList(items=[T.InlineCompletionItem(insert_text=new_text, range=rng)])

    @ls.feature(T.TEXT_DOCUMENT_COMPLETION, T.CompletionOptions(resolve_provider=False))
    @guarded
    async def completion(ls: RemaskServer, params: T.CompletionParams) -> T.CompletionList:
        empty = T.CompletionList(is_incomplete=True, items=[])
        if not ls.config.features.completion or (
                ls.config.features.inline_completion and ls.client_supports("text_document.inline_completion")):
            # the fallback is for clients without ghost text; answering both would decode everything twice
            return T.CompletionList(is_incomplete=False, items=[])
        automatic = params.context is not None and params.context.trigger_kind != T.CompletionTriggerKind.Invoked
        got = await ls.suggest(params.text_document.uri, params.position, automatic=automatic,
                               token=params.work_done_token)
        if got is None:
            return empty
        new_text, idx, offset, end, text = got
        # replace the word being typed so the client's fuzzy filter keeps the item while the user types on
        line_start = text.rfind("\n", 0, offset) + 1
        ws = offset
        while ws > line_start and (text[ws - 1].isalnum() or text[ws - 1] == "_"):
            ws -= 1
        word = text[ws:offset]
        first = new_text.split("\n", 1)[0].strip() or new_text.strip().split("\n", 1)[0]
        label = (word + new_text.split("\n", 1)[0]).strip() or first
        label = label if len(label) <= 60 else label[:57] + "..."
        item = T.CompletionItem(
            label=label, kind=T.CompletionItemKind.Text,
            detail="remask" + (" (multi-line)" if "\n" in new_text else ""),
            documentation=T.MarkupContent(kind=T.MarkupKind.PlainText, value=new_text),
            filter_text=word + new_text, sort_text="0", preselect=True,
            insert_text_format=T.InsertTextFormat.PlainText,
            text_edit=T.TextEdit(range=ls.lsp_range(idx, ws, end), new_text=word + new_text))
        return T.CompletionList(is_incomplete=True, items=[item])

    @ls.feature(T.TEXT_DOCUMENT_CODE_ACTION, T.CodeActionOptions(
        code_action_kinds=[T.CodeActionKind.RefactorRewrite, T.CodeActionKind.QuickFix], resolve_provider=False))
    @guarded
    async def code_action(ls: RemaskServer, params: T.CodeActionParams) -> list[T.CodeAction]:
        if not ls.config.features.code_actions:
            return []
        only = params.context.only if params.context else None
        kinds = [str(getattr(k, "value", k)) for k in (only or [])]
        if kinds and not any(k in ("", "refactor", "quickfix", "refactor.rewrite") for k in kinds):
            return []
        engine = ls.engine_or_notice()
        if engine is None:
            return []
        doc = ls.document(params.text_document.uri)
        version, idx = doc.version, ls.index(doc)
        text = idx.text
        start, end = ls.offset(idx, params.range.start), ls.offset(idx, params.range.end)
        if end < start:
            start, end = end, start
        lang = ls.language(doc)
        sub, base = window(text, start, end, MAX_CONTEXT_CHARS)
        first_line = idx.position(base)[0] + 1

        def survey():
            # the engine parses with a fresh tree-sitter parser per call, so this thread may run beside a decode
            spans = engine.spans_at(sub, start - base, end - base, language=lang, first_line=first_line)
            cached = ls._holes.get(doc.uri)
            if cached is not None and cached[0] == version:
                holes = cached[1]
            else:
                holes = engine.holes(text, language=lang) if len(text) <= MAX_HOLE_SCAN_CHARS else []
                ls._holes[doc.uri] = (version, holes)
            return spans, holes

        spans, holes = await ls.parse_job(survey)
        if doc.version != version:
            raise JsonRpcContentModified("document changed")
        uri = params.text_document.uri

        def action(title: str, op: str, s: int, e: int, kind: T.CodeActionKind = T.CodeActionKind.RefactorRewrite,
                   command: str = CMD_APPLY) -> T.CodeAction:
            arg = {"uri": uri, "version": version, "op": op, "range": range_json(ls.lsp_range(idx, s, e))}
            return T.CodeAction(title=title, kind=kind, command=T.Command(title=title, command=command,
                                                                          arguments=[arg]))

        actions: list[T.CodeAction] = []
        here = [(h.start, h.end) for h in holes if h.start <= start and end <= h.end] + \
               [(sp.start + base, sp.end + base) for sp in spans if sp.kind == "hole"]
        if here:
            actions.append(action("Fill hole", "fill", *here[0], T.CodeActionKind.QuickFix))
        editable = [sp for sp in spans if sp.kind != "hole"]
        for sp in editable:
            actions.append(action(f"Regenerate {sp.label}", "regenerate", sp.start + base, sp.end + base))
        if end > start:
            actions.append(action("Repair suspicious tokens", "repair", start, end))
        elif editable:
            actions.append(action("Repair suspicious tokens", "repair", editable[0].start + base,
                                  editable[0].end + base))
        if holes:
            n = len(holes)
            actions.append(action(f"Fill all holes in file ({n})", "fillAll", 0, len(text)))
        if (getattr(engine, "info", {}) or {}).get("instruct"):
            s, e = (start, end) if end > start else ((editable[0].start + base, editable[0].end + base)
                                                     if editable else (start, end))
            actions.append(action("Edit with instruction...", "instruct", s, e, command=CMD_INSTRUCT))
        return actions

    @ls.command(CMD_APPLY)
    async def apply_command(ls: RemaskServer, *args: Any) -> dict:
        return await run_command(ls, args, instruction_required=False)

    @ls.command(CMD_INSTRUCT)
    async def instruct_command(ls: RemaskServer, *args: Any) -> dict:
        return await run_command(ls, args, instruction_required=True)

    @ls.feature(STATUS_METHOD)
    def status(ls: RemaskServer, params: Any) -> dict:
        info = dict(getattr(ls.engine, "info", {}) or {}) if ls.engine is not None else {}
        return {"state": ls.state, "detail": ls.state_detail, "encoding": ls.encoding,
                "config": ls.config.as_json(), "model": {k: v for k, v in info.items() if jsonable(v)},
                "busy": len(ls._tokens), "running": ls.running, "lastJob": ls.last_job}

    @ls.feature(T.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: RemaskServer, params: T.DidChangeConfigurationParams) -> None:
        raw = params.settings
        if (raw is None or raw == {}) and ls.client_supports("workspace.configuration"):
            asyncio.ensure_future(_pull_configuration(ls))  # "pull" clients send an empty notification
            return
        ls.apply_settings(raw)  # synchronously, so requests sent after the notification see the new settings

    @ls.feature(T.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: RemaskServer, params: T.DidOpenTextDocumentParams) -> None:
        td = params.text_document
        old = ls.docs.get(doc_key(td.uri))
        if old is not None:  # opened again without a close: what was computed for the old one is stale
            _forget(ls, old.uri)
        ls.docs[doc_key(td.uri)] = Document(td.uri, td.text, td.version, td.language_id)
        ls.schedule_diagnostics(td.uri)

    @ls.feature(T.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: RemaskServer, params: T.DidChangeTextDocumentParams) -> None:
        doc = ls.docs.get(doc_key(params.text_document.uri))
        if doc is None:
            ls.log(f"didChange for {params.text_document.uri}, which is not open: ignored", T.MessageType.Warning)
            return
        uri = doc.uri
        for i, ch in enumerate(params.content_changes):
            # the first change reuses the index the last request built for this version (typing: one per key)
            if not doc.apply(ch, ls.encoding, ls.index(doc) if i == 0 else None):
                ls.log(f"a change to {uri} starts past the end of the document: applied at the end",
                       T.MessageType.Warning)
            if isinstance(ch, T.TextDocumentContentChangePartial):
                ls._diag_hint[uri] = ch.range.start.line
        doc.version = params.text_document.version
        # work computed against the old text would be dropped anyway: stop it now and free the model
        for tok in ls.doc_jobs.get(uri, ()):
            tok.cancel()
        job = ls._inline.get(uri)
        if job is not None:
            job.superseded = True
            job.cancel.cancel()
        ls.schedule_diagnostics(uri)

    @ls.feature(T.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: RemaskServer, params: T.DidCloseTextDocumentParams) -> None:
        doc = ls.docs.pop(doc_key(params.text_document.uri), None)
        if doc is not None:
            _forget(ls, doc.uri)
        if doc is None or doc.uri != params.text_document.uri:
            _forget(ls, params.text_document.uri)

    return ls


async def _pull_configuration(ls: RemaskServer) -> None:
    try:
        got = await ls.workspace_configuration_async(
            T.ConfigurationParams(items=[T.ConfigurationItem(section=SECTION)]))
        ls.apply_settings(got[0] if got else None)
    except Exception as e:  # a notification has no answer: log it and keep serving
        ls.log(f"could not read the configuration: {e}", T.MessageType.Error)





def _apply_settings(ls: RemaskServer, raw: Any) -> None:
    """Validate and apply new settings; on an invalid value keep the previous configuration and say so."""
    try:
        new = ls.config.updated(raw)
    except ConfigError as e:
        ls.show(f"invalid setting: {e}; keeping the previous configuration", T.MessageType.Error)
        ls.log(f"invalid setting: {e}", T.MessageType.Error)
        return
    old = ls.config
    ls.config = new
    if (new.model, new.device, new.adapter) != (old.model, old.device, old.adapter):
        ls.log(f"model setting changed: reloading ({new.model or 'default'} on {new.device})")
        ls.start_loading()
    if old.features.diagnostics and not new.features.diagnostics:
        for task in list(ls._diag_tasks.values()):
            task.cancel()
        ls._diag_tasks.clear()
        for doc in list(ls.docs.values()):
            ls.text_document_publish_diagnostics(T.PublishDiagnosticsParams(uri=doc.uri, diagnostics=[]))
    elif new.features.diagnostics and not old.features.diagnostics:
        for doc in list(ls.docs.values()):
            ls.schedule_diagnostics(doc.uri)
    ls.log("configuration updated: " + ", ".join(
        f"{k}={v}" for k, v in new.as_json().items() if old.as_json().get(k) != v))


# ---------------------------------------------------------------------------------------------------------------
# command line


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--tcp", metavar="[HOST:]PORT", default=None,
                   help="listen on TCP instead of stdio (host defaults to 127.0.0.1, loopback only)")
    p.add_argument("--model", default=None,
                   help="model folder; 'default' (built-in, the default) or random:PRESET for an untrained one")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--adapter", default=None, metavar="DIR", help="a LoRA adapter folder for --model (merged at load)")
    p.add_argument("--block-size", type=int, default=None, help="block size B (default: the model's)")
    p.add_argument("--threshold", type=float, default=0.9, help="confidence threshold tau, 0 < tau <= 1")
    p.add_argument("--steps", type=int, default=None, help="fixed steps per block (disables --threshold)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=128, help="tokens a code action may generate")
    p.add_argument("--inline-max-tokens", type=int, default=32, help="tokens of ghost text")
    p.add_argument("--candidates", type=int, default=3, help="versions Regenerate decodes (the best is applied)")
    p.add_argument("--debounce-ms", type=int, default=150, help="wait before answering as-you-type requests")
    p.add_argument("--min-confidence", type=float, default=None, metavar="P",
                   help="hide ghost text whose mean token confidence is below P (0 shows everything; default "
                        f"{ServerConfig.min_confidence})")
    p.add_argument("--diagnostics", action="store_true", help="hint diagnostics for improbable tokens")
    p.add_argument("--verbose", "-v", action="store_true", help="log protocol traffic to stderr")
    p.add_argument("--server", metavar="URL", default=None,
                   help="use a `remask serve` process instead of loading the model here (or REMASK_SERVER)")
    p.add_argument("--load-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: a long load


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    raw = {"model": args.model, "device": args.device, "adapter": args.adapter, "blockSize": args.block_size,
           "threshold": args.threshold,
           "steps": args.steps, "temperature": args.temperature, "maxTokens": args.max_tokens,
           "inlineMaxTokens": args.inline_max_tokens, "candidates": args.candidates, "debounceMs": args.debounce_ms}
    if args.min_confidence is not None:
        raw["minConfidence"] = args.min_confidence
    if args.diagnostics:
        raw["features"] = {"diagnostics": True}
    return ServerConfig().updated(raw)


def parse_tcp(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        n = int(port)
    except ValueError:
        raise ValueError(f"--tcp expects [HOST:]PORT, got {spec!r}") from None
    if not 0 <= n <= 65535:
        raise ValueError(f"port {n} is out of range")
    return host, n


def run(command: str, args: argparse.Namespace) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:
        logging.getLogger("pygls").setLevel(logging.ERROR)
    if getattr(args, "server", None):
        os.environ["REMASK_SERVER"] = args.server  # read where the engine is made (on the model thread)
    try:
        config = config_from_args(args)
        tcp = parse_tcp(args.tcp) if args.tcp else None
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ls = build_server(config, load_delay=max(0.0, args.load_delay))
    if tcp:
        host, port = tcp
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {host}:{port}, reachable from other machines; the server edits "
                  "whatever code clients send it", file=sys.stderr)
        print(f"remask lsp: listening on {host}:{port}", file=sys.stderr)
        ls.start_tcp(host, port)
    else:
        # the protocol owns stdout; anything else printed (a library's notice) goes to stderr
        out = sys.stdout.buffer
        sys.stdout = sys.stderr
        ls.start_io(sys.stdin.buffer, out)
    code = ls.finish()
    busy = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if busy:
        # a generation or model load still running on a worker thread must not keep the process alive
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="remask lsp", description="remask language server")
    add_arguments("lsp", p)
    return run("lsp", p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
