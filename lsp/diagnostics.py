"""Hint diagnostics for improbable tokens (off by default), debounced per document."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lsprotocol import types as T

from .documents import key as doc_key
from .textutil import window

if TYPE_CHECKING:
    from .server import RemaskServer

MAX_DIAGNOSTICS = 200
DIAGNOSTICS_WINDOW_CHARS = 3_000  # scored around the last change: a few hundred tokens, one forward pass


def schedule_diagnostics(ls: RemaskServer, uri: str) -> None:
    if not ls.config.features.diagnostics:
        return
    old = ls._diag_tasks.pop(uri, None)
    if old is not None:
        old.cancel()
    ls._diag_tasks[uri] = asyncio.ensure_future(diagnose(ls, uri))


async def diagnose(ls: RemaskServer, uri: str) -> None:
    """Hints for tokens the model finds improbable, debounced: only the last change in a burst is scored."""
    try:
        await asyncio.sleep(ls.config.diagnostics_debounce_ms / 1000)
        engine = ls.engine
        if engine is None or ls.state != "ready":
            return
        doc = ls.docs.get(doc_key(uri))
        if doc is None:
            return
        version, idx = doc.version, ls.index(doc)
        text = idx.text
        line = min(ls._diag_hint.get(uri, 0), idx.line_count - 1)
        at = idx.starts[line]
        sub, base = window(text, at, at, DIAGNOSTICS_WINDOW_CHARS)
        lang = ls.language(doc)
        scores = await ls.run_job(lambda c, cb: engine.score(sub, 0, len(sub), language=lang),
                                  title="remask: checking", progress=False)
        if doc.version != version or not ls.config.features.diagnostics:
            return
        thr = ls.config.diagnostics_threshold
        diags = []
        worst: dict[tuple[int, int], object] = {}
        for sc in scores:  # the byte-level pieces of one character share its range: one hint, the least likely
            if sc.prob < thr and sub[sc.start:sc.end].strip():
                key = (sc.start, sc.end)
                if key not in worst or sc.prob < worst[key].prob:
                    worst[key] = sc
        for sc in sorted(worst.values(), key=lambda x: x.start):
            msg = f"unlikely token {sub[sc.start:sc.end]!r} (p={sc.prob:.3f})"
            if sc.best is not None and sc.best != sc.text:
                msg += f"; the model expects {sc.best!r}"
            diags.append(T.Diagnostic(range=ls.lsp_range(idx, sc.start + base, sc.end + base), message=msg,
                                      severity=T.DiagnosticSeverity.Hint, source="remask"))
            if len(diags) >= MAX_DIAGNOSTICS:
                break
        ls.text_document_publish_diagnostics(T.PublishDiagnosticsParams(uri=uri, diagnostics=diags, version=version))
    except asyncio.CancelledError:
        pass
    except Exception as e:
        ls.log(f"diagnostics failed for {uri}: {e}", T.MessageType.Warning)
    finally:
        if ls._diag_tasks.get(uri) is asyncio.current_task():
            del ls._diag_tasks[uri]
