"""An engine over HTTP: ``RemoteEngine`` has the ``Engine`` interface and runs every operation on a
``remask serve`` process (``POST /remask/v1/edit``), so a laptop's CLI, TUI or editor can use a model on a GPU
box and no command pays for loading the model.

The settings are sent whole with every request, so a remote call gives what the same call in process gives.
With a callback (streaming UIs) the server sends every denoising step as an SSE event; cancelling closes the
connection, which stops the server's decode between steps. Standard library only (urllib): importing this
module does not import torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.error
import urllib.request
from typing import Any

from .api import (
    Cancelled,
    Candidate,
    EditResult,
    EngineError,
    EngineStep,
    InstructModelRequired,
    Settings,
    Span,
    TextEdit,
    TokenScore,
)

ENV_SERVER = "REMASK_SERVER"
ENV_API_KEY = "REMASK_API_KEY"


def server_from_env(explicit: str | None = None) -> str | None:
    """``--server URL`` if given, else ``$REMASK_SERVER``, else None (run in process)."""
    url = explicit or os.environ.get(ENV_SERVER) or None
    return url.rstrip("/") if url else None


def _build(cls, d: dict):
    """A dataclass from a dict, ignoring keys this version does not know (a newer server may send more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def _float(v) -> float:
    """Scores travel as numbers, or as "-inf"/"inf"/"nan" strings (JSON has no infinities), or null."""
    if v is None:
        return float("-inf")
    return float(v)


def result_from_json(d: dict) -> EditResult:
    cands = [_build(Candidate, {**c, "edits": [_build(TextEdit, e) for e in c.get("edits", [])],
                                "score": _float(c.get("score"))}) for c in d.get("candidates", [])]
    return _build(EditResult, {**d, "edits": [_build(TextEdit, e) for e in d.get("edits", [])], "candidates": cands,
                               "flagged": [_build(TokenScore, f) for f in d.get("flagged", [])],
                               "spans": [_build(Span, s) for s in d.get("spans", [])]})


def step_from_json(d: dict) -> EngineStep:
    return EngineStep(step=d["step"], nfe=d["nfe"], elapsed_s=d["elapsed_s"], committed=d["committed"],
                      pieces=[[(t, bool(m)) for t, m in row] for row in d["pieces"]],
                      spans=[_build(Span, s) for s in d.get("spans", [])])


class _Cfg:
    """What callers read of ``Engine.cfg``: the model's kind, block size, context, instruct flag."""

    def __init__(self, info: dict) -> None:
        self.kind = info.get("kind", "bd")
        self.block_size = info.get("block_size", 4)
        self.max_position_embeddings = info.get("context", 2048)
        self.instruct = bool(info.get("instruct", False))


class RemoteEngine:
    """``Engine``'s operations (fill, fill_all, regenerate, repair, instruct, score, holes, spans_at) over HTTP."""

    def __init__(self, url: str, settings: Settings | None = None, api_key: str | None = None,
                 timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise EngineError(f"--server {url!r}: expected an http:// or https:// URL (e.g. http://127.0.0.1:8012)")
        self.api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY) or None
        self.timeout = timeout
        meta = self._request("GET", "/remask/v1/info")
        self.info = dict(meta.get("info", {}))
        self.info["server"] = self.url
        self.cfg = _Cfg(self.info)
        server_settings = _build(Settings, meta.get("settings", {}))
        self.settings = settings if settings is not None else server_settings

    # ------------------------------------------------------------------------------------------ HTTP

    def _headers(self) -> dict:
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def _open(self, method: str, path: str, body: dict | None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=self._headers())
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 - the user's own server URL
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise EngineError(f"cannot reach the remask server at {self.url}: {reason}") from None

    def _http_error(self, e: urllib.error.HTTPError) -> Exception:
        try:
            payload = json.loads(e.read().decode("utf-8") or "{}")
            err = payload.get("error", payload)
            msg = err.get("message") if isinstance(err, dict) else str(err)
        except (ValueError, OSError):
            msg = e.reason
        if e.code == 409:
            return Cancelled()
        if e.code == 401:
            return EngineError(f"the remask server at {self.url} refused the API key ({msg}); set {ENV_API_KEY}")
        return EngineError(f"{msg}" if e.code in (400, 413) else f"the remask server answered {e.code}: {msg}")

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        with self._open(method, path, body) as r:
            return json.loads(r.read().decode("utf-8"))

    def _op(self, body: dict, callback=None, cancel=None) -> dict:
        """POST an operation; with a callback or cancel check, stream it and honour both between steps."""
        if cancel is not None and not callable(cancel):
            raise EngineError("cancel must be a CancelToken or a zero-argument callable")
        if callback is None and cancel is None:
            return self._request("POST", "/remask/v1/edit", body)
        if cancel is not None and cancel():
            raise Cancelled()
        resp = self._open("POST", "/remask/v1/edit", {**body, "stream": True})
        try:
            event, data = "message", []
            for raw in resp:
                line = raw.decode("utf-8").rstrip("\r\n")
                if cancel is not None and cancel():
                    raise Cancelled()
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    payload = json.loads("\n".join(data))
                    if event == "step" and callback is not None:
                        callback(step_from_json(payload))
                    elif event == "result":
                        return payload
                    elif event == "error":
                        err = payload.get("error", {})
                        if err.get("code") == 409:
                            raise Cancelled()
                        raise EngineError(err.get("message", "the server reported an error"))
                    event, data = "message", []
            raise EngineError(f"the remask server at {self.url} closed the stream without a result")
        finally:
            resp.close()

    def _settings(self, settings: Settings | None) -> dict:
        return dataclasses.asdict(settings or self.settings)

    def _edit(self, op: str, text: str, callback=None, cancel=None, **fields: Any) -> EditResult:
        if not isinstance(text, str):
            raise EngineError("the text must be a str (decode files as UTF-8 first)")
        body = {"op": op, "text": text, **{k: v for k, v in fields.items() if v is not None}}
        return result_from_json(self._op(body, callback, cancel)["result"])

    # ------------------------------------------------------------------------------------------ Engine API

    def language_for(self, path: str | None) -> str | None:
        from .spans import language_for

        return language_for(path)

    def holes(self, text: str, language: str | None = None) -> list[Span]:
        out = self._op({"op": "holes", "text": text, "language": language})
        return [_build(Span, s) for s in out["spans"]]

    def spans_at(self, text: str, start: int, end: int | None = None, language: str | None = None,
                 first_line: int = 1) -> list[Span]:
        out = self._op({"op": "spans_at", "text": text, "start": start, "end": end, "language": language,
                        "first_line": first_line, "settings": self._settings(None)})
        return [_build(Span, s) for s in out["spans"]]

    def fill(self, text: str, start: int, end: int | None = None, *, language: str | None = None,
             settings: Settings | None = None, callback=None, cancel=None) -> EditResult:
        return self._edit("fill", text, callback, cancel, start=start, end=end, language=language,
                          settings=self._settings(settings))

    def fill_all(self, text: str, *, language: str | None = None, settings: Settings | None = None,
                 callback=None, cancel=None, within: tuple[int, int] | None = None, rounds: int = 1) -> EditResult:
        return self._edit("fill_all", text, callback, cancel, language=language, settings=self._settings(settings),
                          within=list(within) if within is not None else None, rounds=rounds)

    def regenerate(self, text: str, start: int, end: int, *, language: str | None = None, n: int | None = None,
                   settings: Settings | None = None, callback=None, cancel=None) -> EditResult:
        return self._edit("regenerate", text, callback, cancel, start=start, end=end, language=language, n=n,
                          settings=self._settings(settings))

    def repair(self, text: str, start: int, end: int, *, language: str | None = None,
               settings: Settings | None = None, callback=None, cancel=None) -> EditResult:
        return self._edit("repair", text, callback, cancel, start=start, end=end, language=language,
                          settings=self._settings(settings))

    def instruct(self, text: str, start: int, end: int, instruction: str, *, language: str | None = None,
                 settings: Settings | None = None, callback=None, cancel=None) -> EditResult:
        if not self.cfg.instruct:
            raise InstructModelRequired(
                f"editing with an instruction needs an instruct checkpoint (kind 'bd-instruct'); the server's "
                f"model is a base '{self.cfg.kind}' model. Use fill, regenerate or repair, or serve an instruct "
                f"model.")
        return self._edit("instruct", text, callback, cancel, start=start, end=end, language=language,
                          instruction=instruction, settings=self._settings(settings))

    def score(self, text: str, start: int, end: int, *, language: str | None = None,
              settings: Settings | None = None) -> list[TokenScore]:
        out = self._op({"op": "score", "text": text, "start": start, "end": end, "language": language,
                        "settings": self._settings(settings)})
        return [_build(TokenScore, s) for s in out["scores"]]
