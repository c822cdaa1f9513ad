"""The Starlette application: every dialect's endpoints over one ``Scheduler``.

Errors are answers, never tracebacks: bad JSON, wrong types and impossible values get 400 with a message,
oversized bodies 413, a full queue 503 with Retry-After, a missing or wrong API key 401. Each dialect gets
errors in the shape its clients parse (``{"error": {...}}``; Ollama: ``{"error": "..."}``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .fim import BadRequest, extra_chunks, field_of, parse_prompt, stop_list, text_prompt
from .metrics import Metrics
from .scheduler import Completion, CompletionResult, Job, JobCancelled, QueueFull, Scheduler, ShuttingDown

OLLAMA_VERSION = "0.12.0"  # what /api/version reports: clients compare it against features they need


# A token budget above this is a mistake, not a ceiling: no model has a context that long.
IMPOSSIBLE_PREDICT = 1 << 20


@dataclass
class ServeConfig:
    """What ``remask serve`` was started with (the server's side of every request)."""

    model: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    adapter: str | None = None  # a LoRA folder (remask train adapt) for ``model``
    merge_adapter: bool = True
    host: str = "127.0.0.1"
    port: int = 8012
    api_key: str | None = None
    cors: list[str] = field(default_factory=list)
    max_queue: int = 64
    max_batch: int = 16
    max_batch_tokens: int = 32768  # prompt + new tokens of the rows decoding together (their KV cache)
    max_body: int = 4 << 20
    max_predict: int = 1024  # the largest n_predict / max_tokens a request may ask for
    default_predict: int = 128  # when a request names none
    model_name: str = "remask"
    grace_s: float = 10.0
    settings: object | None = None  # assistant.api.Settings; None: the engine's defaults


class ClientGone(Exception):
    """The client closed the connection; nothing is sent."""


# ---------------------------------------------------------------------------------------------- plumbing


def _finite(o):
    """JSON has no NaN or infinity: such floats travel as the strings "inf", "-inf", "nan"."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _dumps(o) -> str:
    return json.dumps(_finite(o), ensure_ascii=False, separators=(",", ":"))


class _JSON(JSONResponse):
    def render(self, content) -> bytes:
        return _dumps(content).encode("utf-8")


def _reject_constant(name: str):
    raise BadRequest(f"invalid JSON: {name} is not a JSON value")


async def read_json(request: Request, limit: int) -> dict:
    """The request body as a JSON object; 413 past ``limit`` bytes, 400 for anything that is not an object."""
    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.strip().isdigit():
            raise BadRequest("invalid Content-Length header")
        if int(cl) > limit:
            raise BadRequest(f"the body is {int(cl)} bytes; the limit is {limit}", 413)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise BadRequest(f"the body is over the limit of {limit} bytes", 413)
    if not data.strip():
        return {}
    try:
        body = json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise BadRequest("the body is not UTF-8") from e
    except json.JSONDecodeError as e:
        raise BadRequest(f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from e
    except RecursionError as e:
        raise BadRequest("invalid JSON: nested too deeply") from e
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _error(status: int, message: str, dialect: str, headers: dict | None = None) -> Response:
    if dialect == "ollama":
        return _JSON({"error": message}, status_code=status, headers=headers)
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            413: "invalid_request_error", 503: "unavailable_error"}.get(status, "server_error")
    return _JSON({"error": {"code": status, "message": message, "type": kind}}, status_code=status, headers=headers)


class Server:
    """State shared by the handlers: config, scheduler, metrics."""

    def __init__(self, cfg: ServeConfig, scheduler: Scheduler | None = None) -> None:
        self.cfg = cfg
        self.metrics = scheduler.metrics if scheduler is not None else Metrics()
        self.scheduler = scheduler or Scheduler(self._load, max_queue=cfg.max_queue, max_batch=cfg.max_batch,
                                                max_batch_tokens=cfg.max_batch_tokens, metrics=self.metrics)
        self.started = int(time.time())

    def _load(self):
        import torch

        from assistant.engine import Engine

        dtype = getattr(torch, self.cfg.dtype) if self.cfg.dtype else None
        return Engine.load(self.cfg.model, device=self.cfg.device, settings=self.cfg.settings, dtype=dtype,
                           adapter=self.cfg.adapter, merge_adapter=self.cfg.merge_adapter)

    # ------------------------------------------------------------------------------------------ checks

    def ready(self) -> None:
        s = self.scheduler
        if s.state == "loading":
            raise BadRequest("the model is still loading; retry shortly", 503)
        if s.state == "failed":
            raise BadRequest(f"the model failed to load: {s.detail}", 503)

    def n_predict(self, body: dict, name: str, default: int | None = None) -> int:
        """A token budget: absent -> the default; -1 (and Ollama's -2) -> the server's limit; 0 -> warm-up."""
        v = field_of(body, name, int, None)
        if v is None:
            return self.cfg.default_predict if default is None else default
        if v in (-1, -2):
            return self.cfg.max_predict
        if v < 0:
            raise BadRequest(f"'{name}' must be -1 (as many as allowed) or a count from 0 to {self.cfg.max_predict}")
        if v > IMPOSSIBLE_PREDICT:
            raise BadRequest(f"'{name}' is {v}; no model has that many positions (this server allows at most "
                             f"{self.cfg.max_predict}; start it with --max-predict to raise the limit)")
        # A budget above the server's limit is a ceiling, not an error, as llama.cpp and Ollama treat it:
        # Continue asks for 4096 tokens unless configured otherwise.
        return min(v, self.cfg.max_predict)

    def sampling(self, body: dict, seed_name: str = "seed") -> tuple[float, int | None]:
        t = field_of(body, "temperature", float, 0.0, minimum=0.0, maximum=100.0)
        seed = field_of(body, seed_name, int, 0)
        if seed is not None and (seed < 0 or seed >= 2 ** 63):
            seed = None if seed == -1 or seed == 0xFFFFFFFF else seed % (2 ** 63)
        return t, seed

    # ------------------------------------------------------------------------------------------ running jobs

    def submit(self, jobs: list[Job]) -> None:
        done = []
        try:
            for j in jobs:
                self.scheduler.submit(j)
                done.append(j)
        except (QueueFull, ShuttingDown):
            for j in done:
                self.scheduler.cancel(j, "a sibling request was refused")
            raise

    async def wait(self, request: Request, jobs: list[Job]) -> list:
        """Answers of ``jobs``; a client that disconnects cancels them between denoising steps."""
        futs = [asyncio.wrap_future(j.future) for j in jobs]
        try:
            while True:
                _, pending = await asyncio.wait(futs, timeout=0.05)
                if not pending:
                    break
                if await request.is_disconnected():
                    for j in jobs:
                        self.scheduler.cancel(j, "the client disconnected")
                    await asyncio.wait(futs, timeout=5)
                    raise ClientGone()
        finally:
            for f in futs:
                if f.done() and not f.cancelled():
                    f.exception()  # retrieved: no "never retrieved" warnings
        return [f.result() for f in futs]

    def stream(self, jobs: list[Job], on_item: Callable[[int, object], str | None],
               on_done: Callable[[int, object, BaseException | None], str | None], trailer: str | None,
               media_type: str) -> StreamingResponse:
        """Submit ``jobs`` with progress callbacks and stream what ``on_item``/``on_done`` render."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        for i, j in enumerate(jobs):
            j.progress = (lambda item, i=i: loop.call_soon_threadsafe(q.put_nowait, ("item", i, item)))
            j.future.add_done_callback(lambda f, i=i: loop.call_soon_threadsafe(q.put_nowait, ("done", i, None)))
        self.submit(jobs)

        async def gen():
            left = len(jobs)
            try:
                while left:
                    kind, i, item = await q.get()
                    if kind == "item":
                        out = on_item(i, item)
                    else:
                        left -= 1
                        f = jobs[i].future
                        exc = f.exception()
                        out = on_done(i, None if exc else f.result(), exc)
                    if out:
                        yield out
                if trailer:
                    yield trailer
            finally:
                for j in jobs:
                    if not j.future.done():
                        self.scheduler.cancel(j, "the client disconnected")

        return StreamingResponse(gen(), media_type=media_type,
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _status_of(exc: BaseException) -> tuple[int, str]:
    from assistant.api import EngineError

    if isinstance(exc, BadRequest):
        return exc.status, str(exc)
    if isinstance(exc, QueueFull):
        return 503, str(exc)
    if isinstance(exc, ShuttingDown):
        return 503, str(exc)
    if isinstance(exc, JobCancelled):
        return (503 if "shutting down" in exc.reason else 409), f"cancelled: {exc.reason}"
    if isinstance(exc, (EngineError, ValueError)):
        return 400, str(exc)
    return 500, f"internal error: {type(exc).__name__}: {exc}"


def endpoint(name: str, dialect: str = "openai"):
    """Wrap a handler: exceptions become answers in the dialect's error shape, and every answer is counted."""

    def deco(fn):
        async def handler(request: Request) -> Response:
            srv: Server = request.app.state.server
            t0 = time.perf_counter()
            try:
                resp = await fn(srv, request)
            except ClientGone:
                resp = Response(status_code=499)
            except Exception as e:  # noqa: BLE001 - every failure is an answer, never a traceback
                status, msg = _status_of(e)
                retry = {"Retry-After": "1" if isinstance(e, QueueFull) else "5"} if status == 503 else None
                resp = _error(status, msg, dialect, retry)
            srv.metrics.inc("remask_requests_total", {"endpoint": name, "code": resp.status_code})
            srv.metrics.observe("remask_request_duration_seconds", time.perf_counter() - t0, {"endpoint": name})
            return resp

        handler.__name__ = fn.__name__
        return handler

    return deco


# ---------------------------------------------------------------------------------------------- completions


def _slot(request: Request, body: dict) -> str | None:
    s = field_of(body, "id_slot", int, None)
    if s is None or s < 0:
        return None
    host = request.client.host if request.client else "?"
    return f"{host}#{s}"


def _timings(r: CompletionResult) -> dict:
    pn = max(r.prompt_tokens - r.tokens_cached, 0)
    return {"prompt_n": pn, "prompt_ms": round(r.prompt_ms, 3),
            "prompt_per_token_ms": round(r.prompt_ms / max(pn, 1), 3),
            "prompt_per_second": round(pn / (r.prompt_ms / 1000), 3) if r.prompt_ms > 0 else 0.0,
            "predicted_n": r.tokens_predicted, "predicted_ms": round(r.predicted_ms, 3),
            "predicted_per_token_ms": round(r.predicted_ms / max(r.tokens_predicted, 1), 3),
            "predicted_per_second": round(r.tokens_predicted / max(r.predicted_ms / 1000, 1e-9), 3),
            "batch_rows": r.batch_size, "forwards": r.nfe, "queued_ms": round(r.queued_ms, 3)}


def _pick_fields(d: dict, fields: list[str] | None) -> dict:
    """llama.cpp's ``response_fields``: only these paths, nested ones flattened under their ``a/b`` name."""
    if not fields:
        return d
    out = {}
    for path in fields:
        cur = d
        for part in path.split("/"):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                break
        else:
            out[path] = cur
    return out


def _llama_body(srv: Server, r: CompletionResult, slot: int, final: bool = True) -> dict:
    return {"index": 0, "content": r.text, "id_slot": slot, "stop": final, "model": srv.cfg.model_name,
            "tokens_predicted": r.tokens_predicted, "tokens_evaluated": r.prompt_tokens,
            "has_new_line": "\n" in r.text, "truncated": r.truncated,
            "stop_type": {"eos": "eos", "stop": "word"}.get(r.finish, "limit"),
            "stopping_word": r.stopping_word or "", "tokens_cached": r.tokens_cached, "timings": _timings(r),
            # llama.vscode's status line reads generation_settings.n_ctx unguarded (src/statusbar.ts)
            "generation_settings": {"n_ctx": _context(srv), "model": srv.cfg.model_name}}


def _context(srv: Server) -> int:
    eng = srv.scheduler.engine
    return int(eng.cfg.max_position_embeddings) if eng is not None else 0


async def _llama(srv: Server, request: Request, infill: bool) -> Response:
    body = await read_json(request, srv.cfg.max_body)
    if infill:
        prefix = field_of(body, "input_prefix", str, "")
        suffix = field_of(body, "input_suffix", str, "")
        extra = extra_chunks(body)
        typed = text_prompt(body, "prompt", required=False)
        parts_prefix, parts_suffix = prefix + typed, suffix
    else:
        parts = parse_prompt(text_prompt(body, "prompt"))
        parts_prefix, parts_suffix, extra = parts.prefix, parts.suffix, parts.extra
    # llama.cpp takes max_tokens as an alias of n_predict (Twinny's llamacpp provider sends only that)
    n = srv.n_predict(body, "n_predict" if "n_predict" in body or "max_tokens" not in body else "max_tokens")
    temperature, seed = srv.sampling(body)
    stream = field_of(body, "stream", bool, False)
    fields = body.get("response_fields")
    if fields is not None and (not isinstance(fields, list) or not all(isinstance(f, str) for f in fields)):
        raise BadRequest("'response_fields' must be an array of strings")
    fields = [f for f in fields or [] if f] or None
    t_max = field_of(body, "t_max_predict_ms", float, None, minimum=0)
    c = Completion(prefix=parts_prefix, suffix=parts_suffix, extra=extra, max_new=n, temperature=temperature,
                   seed=seed, stop=stop_list(body), n_indent=field_of(body, "n_indent", int, 0, minimum=0),
                   t_max_predict_ms=t_max or None, slot=_slot(request, body))
    slot_id = field_of(body, "id_slot", int, -1)
    srv.ready()
    job = Job("complete", c, slot=c.slot)
    if stream:
        sent = {"text": ""}

        def on_item(i, delta):
            sent["text"] += delta
            return f"data: {_dumps({'index': 0, 'content': delta, 'stop': False, 'id_slot': slot_id})}\n\n"

        def on_done(i, r, exc):
            if exc is not None:
                st, msg = _status_of(exc)
                return f"error: {_dumps({'error': {'code': st, 'message': msg}})}\n\n"
            rest = r.text[len(sent["text"]):] if r.text.startswith(sent["text"]) else ""
            out = ""
            if rest:
                out += f"data: {_dumps({'index': 0, 'content': rest, 'stop': False, 'id_slot': slot_id})}\n\n"
            last = _llama_body(srv, r, slot_id)
            last["content"] = ""
            return out + f"data: {_dumps(_pick_fields(last, fields))}\n\n"

        return srv.stream([job], on_item, on_done, None, "text/event-stream")
    srv.submit([job])
    (r,) = await srv.wait(request, [job])
    return _JSON(_pick_fields(_llama_body(srv, r, slot_id), fields))


@endpoint("/infill", "llama")
async def infill(srv: Server, request: Request) -> Response:
    return await _llama(srv, request, infill=True)


@endpoint("/completion", "llama")
async def completion(srv: Server, request: Request) -> Response:
    return await _llama(srv, request, infill=False)


def _finish_reason(r: CompletionResult) -> str:
    return "length" if r.finish == "length" else "stop"


async def _openai_like(srv: Server, request: Request, mistral: bool) -> Response:
    body = await read_json(request, srv.cfg.max_body)
    prompt = text_prompt(body, "prompt")
    suffix = field_of(body, "suffix", str, None)
    if suffix is not None:
        parts_prefix, parts_suffix, extra = prompt, suffix, []
    else:
        p = parse_prompt(prompt)
        parts_prefix, parts_suffix, extra = p.prefix, p.suffix, p.extra
    n_tok = srv.n_predict(body, "max_tokens")
    temperature, seed = srv.sampling(body, "random_seed" if mistral else "seed")
    n = field_of(body, "n", int, 1, minimum=1, maximum=8)
    stream = field_of(body, "stream", bool, False)
    stops = stop_list(body)
    srv.ready()
    jobs = [Job("complete", Completion(prefix=parts_prefix, suffix=parts_suffix, extra=extra, max_new=max(n_tok, 1),
                                       temperature=temperature, seed=None if seed is None else seed + i, stop=stops))
            for i in range(n)]
    cid = ("cmpl-" if not mistral else "fim-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    obj = "chat.completion" if mistral else "text_completion"

    def choice(i: int, text: str, finish: str | None) -> dict:
        if mistral:
            key = "delta" if stream else "message"
            return {"index": i, key: {"role": "assistant", "content": text}, "finish_reason": finish}
        return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}

    def usage(rs: list[CompletionResult]) -> dict:
        p = rs[0].prompt_tokens if rs else 0
        c = sum(r.tokens_predicted for r in rs)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    if stream:
        sent = [""] * n
        chunk_obj = "chat.completion.chunk" if mistral else "text_completion"

        def event(i, text, finish, extra_fields=None):
            d = {"id": cid, "object": chunk_obj, "created": created, "model": srv.cfg.model_name,
                 "choices": [choice(i, text, finish)]}
            d.update(extra_fields or {})
            return f"data: {_dumps(d)}\n\n"

        def on_item(i, delta):
            sent[i] += delta
            return event(i, delta, None)

        def on_done(i, r, exc):
            if exc is not None:
                st, msg = _status_of(exc)
                return f"data: {_dumps({'error': {'code': st, 'message': msg}})}\n\n"
            rest = r.text[len(sent[i]):] if r.text.startswith(sent[i]) else ""
            return event(i, rest, _finish_reason(r), {"usage": usage([r])})

        return srv.stream(jobs, on_item, on_done, "data: [DONE]\n\n", "text/event-stream")
    srv.submit(jobs)
    rs = await srv.wait(request, jobs)
    return _JSON({"id": cid, "object": obj, "created": created, "model": srv.cfg.model_name,
                  "choices": [choice(i, r.text, _finish_reason(r)) for i, r in enumerate(rs)], "usage": usage(rs)})


@endpoint("/v1/completions")
async def v1_completions(srv: Server, request: Request) -> Response:
    return await _openai_like(srv, request, mistral=False)


@endpoint("/v1/fim/completions")
async def v1_fim(srv: Server, request: Request) -> Response:
    return await _openai_like(srv, request, mistral=True)


@endpoint("/v1/chat/completions")
async def v1_chat(srv: Server, request: Request) -> Response:
    body = await read_json(request, srv.cfg.max_body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty array of {role, content} objects")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"'messages[{i}]' must be an object with a string 'role'")
        content = m.get("content", "")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            if not all(isinstance(p, dict) for p in content):
                raise BadRequest(f"'messages[{i}].content' parts must be objects")
            content = "".join(p.get("text", "") for p in content if p.get("type") == "text"
                              and isinstance(p.get("text", ""), str))
        if not isinstance(content, str):
            raise BadRequest(f"'messages[{i}].content' must be a string")
        clean.append({"role": m["role"], "content": content})
    n_tok = srv.n_predict(body, "max_tokens" if "max_tokens" in body else "max_completion_tokens")
    temperature, seed = srv.sampling(body)
    stream = field_of(body, "stream", bool, False)
    stops = stop_list(body)
    srv.ready()
    eng = srv.scheduler.engine
    if not eng.cfg.instruct:
        raise BadRequest(f"chat needs an instruct checkpoint (kind 'bd-instruct'); this server runs a base "
                         f"'{eng.cfg.kind}' model. Use /infill, /v1/completions or /remask/v1/edit instead.")
    from model.tokenizer import TokenizerError

    try:
        ids = eng.tok.chat_prompt(clean)
    except TokenizerError as e:
        raise BadRequest(str(e)) from e
    job = Job("complete", Completion(ids=ids, max_new=max(n_tok, 1), temperature=temperature, seed=seed, stop=stops))
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    if stream:
        sent = [""]

        def ev(delta: dict, finish):
            return f"data: {_dumps({'id': cid, 'object': 'chat.completion.chunk', 'created': created, 'model': srv.cfg.model_name, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]})}\n\n"  # noqa: E501

        def on_item(i, delta):
            first = not sent[0]
            sent[0] += delta
            return ev({"role": "assistant", "content": delta} if first else {"content": delta}, None)

        def on_done(i, r, exc):
            if exc is not None:
                st, msg = _status_of(exc)
                return f"data: {_dumps({'error': {'code': st, 'message': msg}})}\n\n"
            rest = r.text[len(sent[0]):] if r.text.startswith(sent[0]) else ""
            return ev({"role": "assistant", "content": rest} if not sent[0] else {"content": rest}, _finish_reason(r))

        return srv.stream([job], on_item, on_done, "data: [DONE]\n\n", "text/event-stream")
    srv.submit([job])
    (r,) = await srv.wait(request, [job])
    return _JSON({"id": cid, "object": "chat.completion", "created": created, "model": srv.cfg.model_name,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                               "finish_reason": _finish_reason(r)}],
                  "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.tokens_predicted,
                            "total_tokens": r.prompt_tokens + r.tokens_predicted}})


@endpoint("/v1/models")
async def v1_models(srv: Server, request: Request) -> Response:
    return _JSON({"object": "list", "data": [{"id": srv.cfg.model_name, "object": "model", "created": srv.started,
                                              "owned_by": "remask"}]})


# ---------------------------------------------------------------------------------------------- Ollama


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


@endpoint("/api/generate", "ollama")
async def api_generate(srv: Server, request: Request) -> Response:
    body = await read_json(request, srv.cfg.max_body)
    prompt = field_of(body, "prompt", str, "")
    suffix = field_of(body, "suffix", str, None)
    raw = field_of(body, "raw", bool, False)
    stream = field_of(body, "stream", bool, True)
    opts = field_of(body, "options", dict, {})
    n_tok = srv.n_predict(opts, "num_predict")
    temperature, seed = srv.sampling(opts)
    stops = stop_list(opts)
    if suffix is not None and not raw:
        prefix, suf, extra = prompt, suffix, []
    else:
        p = parse_prompt(prompt)
        prefix, suf, extra = p.prefix, p.suffix, p.extra
    if not prompt and not suffix:  # Ollama: an empty prompt only loads the model
        srv.ready()
        return _JSON({"model": srv.cfg.model_name, "created_at": _iso_now(), "response": "", "done": True,
                      "done_reason": "load"})
    srv.ready()
    job = Job("complete", Completion(prefix=prefix, suffix=suf, extra=extra, max_new=max(n_tok, 1),
                                     temperature=temperature, seed=seed, stop=stops))
    t0 = time.perf_counter_ns()

    def final(r: CompletionResult, text: str) -> dict:
        return {"model": srv.cfg.model_name, "created_at": _iso_now(), "response": text, "done": True,
                "done_reason": _finish_reason(r), "context": [], "total_duration": time.perf_counter_ns() - t0,
                "load_duration": 0, "prompt_eval_count": r.prompt_tokens,
                "prompt_eval_duration": int(r.prompt_ms * 1e6), "eval_count": r.tokens_predicted,
                "eval_duration": int(r.predicted_ms * 1e6)}

    if stream:
        sent = [""]

        def on_item(i, delta):
            sent[0] += delta
            return _dumps({"model": srv.cfg.model_name, "created_at": _iso_now(), "response": delta,
                           "done": False}) + "\n"

        def on_done(i, r, exc):
            if exc is not None:
                return _dumps({"error": _status_of(exc)[1]}) + "\n"
            rest = r.text[len(sent[0]):] if r.text.startswith(sent[0]) else ""
            out = ""
            if rest:
                out = _dumps({"model": srv.cfg.model_name, "created_at": _iso_now(), "response": rest,
                              "done": False}) + "\n"
            return out + _dumps(final(r, "")) + "\n"

        return srv.stream([job], on_item, on_done, None, "application/x-ndjson")
    srv.submit([job])
    (r,) = await srv.wait(request, [job])
    return _JSON(final(r, r.text))


@endpoint("/api/tags", "ollama")
async def api_tags(srv: Server, request: Request) -> Response:
    info = srv.scheduler.engine.info if srv.scheduler.engine is not None else {}
    params = info.get("parameters", 0)
    return _JSON({"models": [{"name": srv.cfg.model_name, "model": srv.cfg.model_name,
                              "modified_at": _iso_now(), "size": params * 4, "digest": "",
                              "details": {"format": "safetensors", "family": "remask", "families": ["remask"],
                                          "parameter_size": f"{params / 1e6:.1f}M" if params else "",
                                          "quantization_level": srv.cfg.dtype or "F32"}}]})


@endpoint("/api/version", "ollama")
async def api_version(srv: Server, request: Request) -> Response:
    return _JSON({"version": OLLAMA_VERSION})


# ---------------------------------------------------------------------------------------------- remask's own

_OPS = ("fill", "fill_all", "regenerate", "repair", "instruct", "score", "holes", "spans_at")
_SETTING_TYPES = {"block_size": (int, True), "threshold": (float, True), "steps": (int, True),
                  "temperature": (float, False), "confidence": (str, False), "max_new_tokens": (int, False),
                  "candidates": (int, False), "seed": (int, True), "repair_threshold": (float, False),
                  "repair_fraction": (float, True), "repair_ratio": (float, False), "context_tokens": (int, False),
                  "candidate_temperature": (float, False), "span_tokens": (int, False)}


def _settings_overrides(srv: Server, raw) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("'settings' must be an object")
    out = {}
    for k, (kind, nullable) in _SETTING_TYPES.items():
        if k in raw:
            v = field_of(raw, k, kind, None, nullable=True)
            if v is None and not nullable:
                raise BadRequest(f"'settings.{k}' may not be null")
            out[k] = v
    if out.get("max_new_tokens") is not None and not 1 <= out["max_new_tokens"] <= srv.cfg.max_predict:
        raise BadRequest(f"'settings.max_new_tokens' must be from 1 to {srv.cfg.max_predict}")
    if out.get("candidates") is not None and not 1 <= out["candidates"] <= 16:
        raise BadRequest("'settings.candidates' must be from 1 to 16")
    if out.get("context_tokens") is not None and not 0 <= out["context_tokens"] <= 1 << 20:
        raise BadRequest("'settings.context_tokens' must be from 0 to 1048576")
    if out.get("seed") is not None and not 0 <= out["seed"] < 2 ** 63:
        raise BadRequest("'settings.seed' must be from 0 to 2**63-1")
    return out


def step_json(st) -> dict:
    return {"step": st.step, "nfe": st.nfe, "elapsed_s": st.elapsed_s, "committed": st.committed,
            "pieces": [[[t, m] for t, m in row] for row in st.pieces],
            "spans": [dataclasses.asdict(s) for s in st.spans]}


def _edit_job(srv: Server, body: dict):
    """(function the worker runs, slot) for a /remask/v1/edit body, validated here on the event loop."""
    op = field_of(body, "op", str, None)
    if op not in _OPS:
        raise BadRequest(f"'op' must be one of {', '.join(_OPS)}")
    text = field_of(body, "text", str, None)
    if text is None:
        raise BadRequest("'text' (the document) is required")
    n = len(text)
    start = field_of(body, "start", int, None, minimum=0, maximum=n)
    end = field_of(body, "end", int, None, minimum=0, maximum=n)
    if op in ("fill", "regenerate", "repair", "instruct", "score", "spans_at") and start is None:
        raise BadRequest(f"op '{op}' needs 'start' (a code-point offset into 'text')")
    if op in ("regenerate", "repair", "instruct", "score") and end is None:
        raise BadRequest(f"op '{op}' needs 'end'")
    if start is not None and end is not None and end < start:
        raise BadRequest("'end' is before 'start'")
    language = field_of(body, "language", str, None)
    instruction = field_of(body, "instruction", str, "")
    cands = field_of(body, "n", int, None, minimum=1, maximum=16)
    rounds = field_of(body, "rounds", int, 1, minimum=1, maximum=4)
    first_line = field_of(body, "first_line", int, 1, minimum=1)
    within = body.get("within")
    if within is not None:
        if not (isinstance(within, list) and len(within) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) for x in within)):
            raise BadRequest("'within' must be [start, end], two integers")
        within = (within[0], within[1])
    over = _settings_overrides(srv, body.get("settings"))

    def run(engine, cancel, progress):
        from assistant.api import Settings

        base = engine.settings if isinstance(engine.settings, Settings) else Settings()
        s = dataclasses.replace(base, **over)
        cb = (lambda st: progress(step_json(st))) if progress is not None else None
        kw = {"language": language}
        if op == "holes":
            return {"spans": [dataclasses.asdict(x) for x in engine.holes(text, language)]}
        if op == "spans_at":
            return {"spans": [dataclasses.asdict(x) for x in engine.spans_at(text, start, end, language,
                                                                             first_line=first_line)]}
        if op == "score":
            return {"scores": [dataclasses.asdict(x) for x in engine.score(text, start, end, settings=s, **kw)]}
        kw.update(settings=s, callback=cb, cancel=cancel)
        if op == "fill":
            r = engine.fill(text, start, end, **kw)
        elif op == "fill_all":
            r = engine.fill_all(text, within=within, rounds=rounds, **kw)
        elif op == "regenerate":
            r = engine.regenerate(text, start, end, n=cands, **kw)
        elif op == "repair":
            r = engine.repair(text, start, end, **kw)
        else:
            r = engine.instruct(text, start, end, instruction, **kw)
        return {"result": dataclasses.asdict(r)}

    return run, op


@endpoint("/remask/v1/edit")
async def remask_edit(srv: Server, request: Request) -> Response:
    body = await read_json(request, srv.cfg.max_body)
    run, _op = _edit_job(srv, body)
    stream = field_of(body, "stream", bool, False)
    slot = field_of(body, "slot", str, None)
    srv.ready()
    job = Job("op", run, slot=f"edit:{slot}" if slot else None)
    if stream:
        def on_item(i, st):
            return f"event: step\ndata: {_dumps(st)}\n\n"

        def on_done(i, r, exc):
            if exc is not None:
                st, msg = _status_of(exc)
                return f"event: error\ndata: {_dumps({'error': {'code': st, 'message': msg}})}\n\n"
            return f"event: result\ndata: {_dumps(r)}\n\n"

        return srv.stream([job], on_item, on_done, None, "text/event-stream")
    srv.submit([job])
    (r,) = await srv.wait(request, [job])
    return _JSON(r)


@endpoint("/remask/v1/info")
async def remask_info(srv: Server, request: Request) -> Response:
    srv.ready()
    eng = srv.scheduler.engine
    return _JSON({"info": eng.info, "settings": dataclasses.asdict(eng.settings), "instruct": bool(eng.cfg.instruct),
                  "model_name": srv.cfg.model_name})


@endpoint("/health")
async def health(srv: Server, request: Request) -> Response:
    s = srv.scheduler
    body = {"status": {"ready": "ok"}.get(s.state, s.state), "state": s.state, "queue": s.depth}
    if s.state == "failed":
        body["detail"] = s.detail
    if s.engine is not None:
        body["model"] = s.engine.info.get("description", "")
    return _JSON(body, status_code=200 if s.state == "ready" else 503)


@endpoint("/metrics")
async def metrics(srv: Server, request: Request) -> Response:
    srv.metrics.set("remask_queue_depth", srv.scheduler.depth)
    return PlainTextResponse(srv.metrics.render(), media_type="text/plain; version=0.0.4")


# ---------------------------------------------------------------------------------------------- auth


class _Auth:
    """``Authorization: Bearer KEY`` on every path but /health (and CORS preflights); 401 otherwise."""

    def __init__(self, app, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health" or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        got = b""
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                got = v
        scheme, _, token = got.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            msg = "missing API key (send Authorization: Bearer KEY)" if not got else "invalid API key"
            resp = _error(401, msg, "ollama" if scope["path"].startswith("/api/") else "openai",
                          {"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(cfg: ServeConfig, scheduler: Scheduler | None = None) -> Starlette:
    """The ASGI app; the scheduler (and the model load) starts with the app's lifespan."""
    srv = Server(cfg, scheduler)
    routes = [
        Route("/infill", infill, methods=["POST"]),
        Route("/completion", completion, methods=["POST"]),
        Route("/completions", completion, methods=["POST"]),  # llama.cpp's alias
        Route("/v1/completions", v1_completions, methods=["POST"]),
        Route("/v1/fim/completions", v1_fim, methods=["POST"]),
        Route("/v1/chat/completions", v1_chat, methods=["POST"]),
        Route("/v1/models", v1_models, methods=["GET"]),
        Route("/api/generate", api_generate, methods=["POST"]),
        Route("/api/tags", api_tags, methods=["GET"]),
        Route("/api/version", api_version, methods=["GET"]),
        Route("/remask/v1/edit", remask_edit, methods=["POST"]),
        Route("/remask/v1/info", remask_info, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    middleware = []
    if cfg.cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=cfg.cors, allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))
    if cfg.api_key:  # inside CORS, so that a 401 still carries the CORS headers
        middleware.append(Middleware(_Auth, key=cfg.api_key))
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if not srv.scheduler._thread.is_alive() and srv.scheduler.state == "loading":
            srv.scheduler.start()
        yield
        srv.scheduler.stop()

    async def not_found(request: Request, exc) -> Response:
        status = getattr(exc, "status_code", 404)
        msg = "method not allowed" if status == 405 else f"no such endpoint: {request.url.path}"
        return _error(status, msg, "ollama" if request.url.path.startswith("/api/") else "openai")

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_found})
    app.state.server = srv
    return app
