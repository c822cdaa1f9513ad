"""``$/progress`` for one operation, fed from the model thread."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from lsprotocol import types as T

from assistant.api import CancelToken, EngineStep

if TYPE_CHECKING:
    from .server import RemaskServer


class Progress:
    """``$/progress`` for one operation: the client's token if it sent one, else a server-created token.

    Reports from the worker thread are marshalled onto the event loop and rate-limited.
    """

    def __init__(self, ls: RemaskServer, title: str, token: T.ProgressToken | None, cancel: CancelToken,
                 total: int | None = None, cancellable: bool = True) -> None:
        self.ls, self.title, self.token, self.cancel, self.total = ls, title, token, cancel, total
        self.cancellable = cancellable
        self.active = False
        self.committed = 0
        self._last = 0.0

    async def begin(self) -> None:
        ls = self.ls
        if self.token is None:
            if not ls.client_supports("window.work_done_progress"):
                return
            self.token = f"remask-{uuid.uuid4().hex[:12]}"
            try:
                await asyncio.wait_for(ls.work_done_progress.create_async(self.token), 5.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.token = None
                return
        ls.work_done_progress.begin(self.token, T.WorkDoneProgressBegin(
            title=self.title, cancellable=self.cancellable, percentage=0 if self.total else None))
        fut = ls.work_done_progress.tokens.get(self.token)
        if fut is not None:  # the user pressed "cancel" on the progress bar
            fut.add_done_callback(lambda f: f.cancelled() and self.cancel.cancel())
        self.active = True

    def step(self, ev: EngineStep) -> None:
        """Called on the worker thread."""
        self.committed += ev.committed
        now = time.monotonic()
        if not self.active or now - self._last < 0.1:
            return
        self._last = now
        msg = f"step {ev.step}, {self.committed} tokens"
        pct = min(99, int(100 * self.committed / self.total)) if self.total else None
        self.ls.call_in_loop(self._report, msg, pct)

    def _report(self, msg: str, pct: int | None) -> None:
        if self.active and self.token is not None:
            self.ls.work_done_progress.report(self.token, T.WorkDoneProgressReport(message=msg, percentage=pct))

    def end(self, message: str) -> None:
        if self.active and self.token is not None:
            self.active = False
            self.ls.work_done_progress.end(self.token, T.WorkDoneProgressEnd(message=message))
            self.ls.work_done_progress.tokens.pop(self.token, None)
