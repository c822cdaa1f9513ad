"""The code actions' second half: run the chosen operation and apply it with ``workspace/applyEdit``.

The menu (``textDocument/codeAction``) only lists actions, each a ``remask.apply`` command carrying the
document version it was made for; the model runs here, when one is chosen. A result is applied only if the
document is still at that version, as a ``TextDocumentEdit`` pinned to it.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import TYPE_CHECKING, Any

from lsprotocol import types as T
from pygls.exceptions import (
    JsonRpcContentModified,
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcRequestCancelled,
    JsonRpcServerNotInitialized,
)

from assistant.api import CancelToken, EngineError, InstructModelRequired

from .common import CMD_INSTRUCT, MAX_CONTEXT_CHARS, ModelLoading, failed, jsonable
from .textutil import window

if TYPE_CHECKING:
    from .server import RemaskServer

OPS = ("fill", "regenerate", "repair", "fillAll", "instruct")
PRESET_INSTRUCTIONS = ("Add type hints", "Add a docstring", "Simplify this code", "Add error handling",
                       "Rename variables to be more descriptive")


def range_json(r: T.Range) -> dict:
    return {"start": {"line": r.start.line, "character": r.start.character},
            "end": {"line": r.end.line, "character": r.end.character}}


def _parse_range(raw: Any) -> T.Range:
    try:
        s, e = raw["start"], raw["end"]
        vals = [s["line"], s["character"], e["line"], e["character"]]
    except (TypeError, KeyError):
        raise JsonRpcInvalidParams("range must be {start: {line, character}, end: {line, character}}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise JsonRpcInvalidParams("range positions must be integers")
    return T.Range(start=T.Position(line=vals[0], character=vals[1]), end=T.Position(line=vals[2], character=vals[3]))


def _link_request_cancellation(ls: RemaskServer) -> None:
    """Let ``$/cancelRequest`` reach a command handler.

    pygls runs ``workspace/executeCommand`` through a generator and cancels only its outer future; hook that
    future so the task doing the work is cancelled too (and the decoder stops).
    """
    task = asyncio.current_task()
    proto = ls.protocol
    if task is None:
        return
    outer = proto._request_futures.get(proto.msg_id) if proto.msg_id is not None else None
    if outer is not None and outer is not task:
        outer.add_done_callback(lambda f: f.cancelled() and task.cancel())


async def run_command(ls: RemaskServer, args: tuple, *, instruction_required: bool) -> dict:
    """Both commands' body: errors become LSP errors (and a message for "needs an instruct model")."""
    if not getattr(ls, "initialized", True):
        raise JsonRpcServerNotInitialized()
    _link_request_cancellation(ls)
    try:
        return await _apply(ls, args, instruction_required=instruction_required)
    except asyncio.CancelledError:
        raise
    except JsonRpcException as e:
        if e.code != JsonRpcRequestCancelled.CODE:  # "still loading" is an expected answer, not a warning
            ls.log(e.message, T.MessageType.Info if isinstance(e, ModelLoading) else T.MessageType.Warning)
        raise
    except InstructModelRequired as e:
        ls.show(str(e), T.MessageType.Error)
        raise failed(f"remask: {e}") from None
    except EngineError as e:
        ls.log(str(e), T.MessageType.Warning)
        raise failed(f"remask: {e}") from None
    except Exception as e:
        ls.log(f"internal error in a command: {e}\n{traceback.format_exc()}", T.MessageType.Error)
        raise JsonRpcInternalError(f"remask: internal error: {type(e).__name__}: {e}") from None


async def _apply(ls: RemaskServer, args: tuple, *, instruction_required: bool) -> dict:
    """Run one editing operation and apply its result with ``workspace/applyEdit``, unless it went stale."""
    if len(args) != 1 or not isinstance(args[0], dict):
        raise JsonRpcInvalidParams("expected one argument: {uri, range, op, version?, instruction?}")
    a = args[0]
    op = "instruct" if instruction_required else a.get("op")
    if op not in OPS:
        raise JsonRpcInvalidParams(f"op must be one of {', '.join(OPS)}, got {op!r}")
    instruction = a.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise JsonRpcInvalidParams("instruction must be a string")
    want_version = a.get("version")
    if want_version is not None and (not isinstance(want_version, int) or isinstance(want_version, bool)):
        raise JsonRpcInvalidParams("version must be an integer")
    engine = ls.require_engine()
    if op == "instruct" and not (getattr(engine, "info", {}) or {}).get("instruct"):
        name = (getattr(engine, "info", {}) or {}).get("name", "this model")
        raise InstructModelRequired(f"Edit with instruction needs an instruct model; {name} is a base model. "
                                    "Set remask.model to an instruct checkpoint.")
    doc = ls.document(a.get("uri"))
    if want_version is not None and doc.version != want_version:
        ls.log(f"dropped {op} for {doc.uri}: computed for version {want_version}, document is at {doc.version}",
               T.MessageType.Warning)
        raise JsonRpcContentModified(f"remask: {doc.uri} changed (version {want_version} -> {doc.version}); "
                                     "run the action again")
    version, idx = doc.version, ls.index(doc)
    text = idx.text
    if op == "fillAll":
        start, end = 0, len(text)
    else:
        rng = _parse_range(a.get("range"))
        start, end = ls.offset(idx, rng.start), ls.offset(idx, rng.end)
        if end < start:
            start, end = end, start
    if op == "instruct" and not (instruction or "").strip():
        try:
            choice = await ls.window_show_message_request_async(T.ShowMessageRequestParams(
                type=T.MessageType.Info, message="remask: how should the selection change?",
                actions=[T.MessageActionItem(title=t) for t in PRESET_INSTRUCTIONS]))
        except JsonRpcException as e:
            raise failed("this editor cannot offer a choice of instructions (window/showMessageRequest: "
                         f"{e.message}); run {CMD_INSTRUCT} with {{uri, range, instruction}}") from None
        if choice is None:
            return {"applied": False, "op": op, "reason": "no instruction"}
        instruction = choice.title
        if doc.version != version:
            raise JsonRpcContentModified("remask: the document changed while choosing an instruction")
    lang = ls.language(doc)
    settings = ls.config.settings()
    if op == "fillAll":
        sub, base = text, 0
    else:
        sub, base = window(text, start, end, MAX_CONTEXT_CHARS)
    s, e = start - base, end - base
    calls = {
        "fill": lambda c, cb: engine.fill(sub, s, e if e > s else None, language=lang, settings=settings,
                                          callback=cb, cancel=c),
        "regenerate": lambda c, cb: engine.regenerate(sub, s, e, language=lang, settings=settings, callback=cb,
                                                      cancel=c),
        "repair": lambda c, cb: engine.repair(sub, s, e, language=lang, settings=settings, callback=cb, cancel=c),
        "fillAll": lambda c, cb: engine.fill_all(sub, language=lang, settings=settings, callback=cb, cancel=c),
        "instruct": lambda c, cb: engine.instruct(sub, s, e, instruction, language=lang, settings=settings,
                                                  callback=cb, cancel=c),
    }
    titles = {"fill": "filling hole", "regenerate": "regenerating", "repair": "repairing",
              "fillAll": "filling holes", "instruct": "editing"}
    cancel = CancelToken()
    ls.doc_jobs.setdefault(doc.uri, set()).add(cancel)  # an edit to the document cancels this job early
    try:
        res = await ls.run_job(calls[op], title=f"remask: {titles[op]}", total=settings.max_new_tokens,
                               cancel=cancel)
    except JsonRpcRequestCancelled:
        if doc.version == version and ls.is_open(doc):
            raise  # cancelled from the progress bar
        res = None
    finally:
        ls.doc_jobs.get(doc.uri, set()).discard(cancel)
    if not ls.is_open(doc):
        ls.log(f"dropped a {op} result for {doc.uri}: the document was closed", T.MessageType.Warning)
        return {"applied": False, "op": op, "reason": "closed", "version": version}
    if res is None or doc.version != version:
        msg = (f"dropped a stale {op} result for {doc.uri}: it was computed for version {version}, "
               f"the document is now at version {doc.version}")
        ls.log(msg, T.MessageType.Warning)
        return {"applied": False, "op": op, "reason": "stale", "version": version, "current": doc.version}
    message = getattr(res, "message", None)
    if not res.edits:
        # An empty answer is "no suggestion": nothing is applied (never a deletion), and the user is told why.
        empty = bool(res.candidates) and getattr(res.candidates[0], "empty", False)
        say = message or ("nothing to change" + (f" ({len(res.flagged)} tokens checked)" if op == "repair" else ""))
        ls.show(say)
        return {"applied": False, "op": op, "reason": "no suggestion" if empty else "no change", "message": say,
                "version": version}
    edits = [T.TextEdit(range=ls.lsp_range(idx, ed.start + base, ed.end + base), new_text=ed.new_text)
             for ed in sorted(res.edits, key=lambda x: x.start)]
    if ls.client_supports("workspace.workspace_edit.document_changes"):
        wedit = T.WorkspaceEdit(document_changes=[T.TextDocumentEdit(
            text_document=T.OptionalVersionedTextDocumentIdentifier(uri=doc.uri, version=version), edits=edits)])
    else:
        wedit = T.WorkspaceEdit(changes={doc.uri: edits})
    label = {"fill": "remask: fill hole", "regenerate": "remask: regenerate", "repair": "remask: repair",
             "fillAll": "remask: fill all holes", "instruct": f"remask: {instruction}"}[op]
    answer = await ls.workspace_apply_edit_async(T.ApplyWorkspaceEditParams(edit=wedit, label=label))
    if not answer.applied:
        ls.log(f"the editor rejected the {op} edit: {answer.failure_reason or 'no reason given'}",
               T.MessageType.Warning)
    elif message:  # applied, but the user should know: it does not parse, or some holes got no suggestion
        ls.show(message, T.MessageType.Warning)
    stats = {k: v for k, v in (res.stats or {}).items() if jsonable(v)}
    return {"applied": bool(answer.applied), "version": version, "edits": len(edits), "op": op,
            "flagged": len(getattr(res, "flagged", []) or []), "stats": stats, "message": message,
            **({"reason": answer.failure_reason or "rejected by the editor"} if not answer.applied else {})}
