"""One worker thread that owns the model: requests queue up, and completions decode together.

Completion rows (every FIM/continuation dialect) of a block-diffusion checkpoint are decoded with continuous
batching (``model.decoder.BlockDecoder``): between two denoising steps the worker admits waiting requests into
the running batch (their prompts are prefilled into free slots of one KV pool while the others wait for that
one forward) and answers the rows the step finished, which leave at once. A row also leaves when its client
disconnects, a newer request for the same slot arrives, or its ``t_max_predict_ms`` passes after it has
written a line. Each row keeps its own length, temperature, seed and stop strings, so its answer does not
depend on who else is in the batch. Requests are admitted in arrival order, up to ``max_batch`` rows and
``max_batch_tokens`` tokens in the batch. Engine operations (``/remask/v1/edit``) run one at a time through
the engine's own methods, so they give exactly the in-process result; one at the head of the queue waits for
the running rows to finish and keeps later requests behind it. Checkpoints the block decoder cannot run
(autoregressive, full-attention families) decode the waiting rows as one ``generate`` batch instead. Each
client slot keeps its own prompt cache, so llama.vim's warm-up requests pay off.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .fim import cut_indent, cut_stop, render_extra
from .metrics import Metrics


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests; answer 503 with Retry-After."""


class ShuttingDown(Exception):
    """The server is stopping; no new work is accepted."""


class JobCancelled(Exception):
    """The job was cancelled (client gone, a newer request for its slot, shutdown) before it finished."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Completion:
    """One row to generate: FIM around a cursor (``suffix`` may be empty: a plain continuation)."""

    prefix: str = ""
    suffix: str = ""
    extra: list[tuple[str, str]] = field(default_factory=list)
    ids: list[int] | None = None  # a ready prompt (chat) instead of prefix/suffix
    max_new: int = 128  # 0: warm the slot's prompt cache only
    temperature: float = 0.0
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    n_indent: int = 0
    t_max_predict_ms: float | None = None
    slot: str | None = None


@dataclass
class CompletionResult:
    text: str
    tokens_predicted: int
    prompt_tokens: int
    tokens_cached: int
    truncated: bool
    finish: str  # "eos" | "stop" | "length" | "time"
    stopping_word: str | None
    prompt_ms: float
    predicted_ms: float
    batch_size: int
    nfe: int = 0
    queued_ms: float = 0.0  # from submission to the start of its batch (prompt building included)


@dataclass
class Job:
    kind: str  # "complete" | "op"
    payload: object
    slot: str | None = None
    progress: Callable[[object], None] | None = None  # called on the worker thread
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()

    def resolve(self, value=None, error: BaseException | None = None) -> bool:
        """Set the answer once; False when it was already set."""
        if self.future.done():
            return False
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)
        except concurrent.futures.InvalidStateError:
            return False
        return True


@dataclass
class _Live:
    """A completion row in the continuous batch."""

    job: Job
    row: object  # model.decoder._Row
    prompt_len: int
    truncated: bool
    t_join: float  # its prefill began
    t_ready: float  # its prefill ended
    cost: int  # tokens it holds (prompt + new): the batch's token budget
    nfe0: int  # the decoder's forward count before it joined
    batch_max: int = 1  # the most rows it shared a forward with
    sent: str = ""  # what was streamed so far


class Scheduler:
    """Queue plus worker thread over one ``Engine`` (see the module docstring)."""

    def __init__(self, engine_loader: Callable[[], object], *, max_queue: int = 64, max_batch: int = 16,
                 max_batch_tokens: int = 32768, max_slots: int = 32, metrics: Metrics | None = None) -> None:
        self._loader = engine_loader
        self.engine = None
        self.state = "loading"
        self.detail = ""
        self.max_queue = max_queue
        self.max_batch = max_batch
        # The tokens of the rows decoding together bound their KV pool (32768: 128 MB for the built-in model,
        # about 4 GB for an 8B one in bf16); 16 llama.vim-sized rows fit.
        self.max_batch_tokens = max_batch_tokens
        self.metrics = metrics or Metrics()
        self._pending: list[Job] = []
        self._running: list[Job] = []
        self._live: list[_Live] = []  # the continuous batch (worker thread only)
        self._decoder = None  # model.decoder.BlockDecoder, made on first use
        self._continuous: bool | None = None  # whether the checkpoint can use it
        self._by_slot: dict[str, Job] = {}
        self._caches: OrderedDict[str, object] = OrderedDict()
        self._max_slots = max_slots
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="remask-serve-worker", daemon=True)

    # ------------------------------------------------------------------------------------------ control

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Refuse new work, cancel what is queued or running (each answered), and join the worker."""
        with self._cv:
            self._stopping = True
            for j in self._pending + self._running:
                j.cancel("the server is shutting down")
            for j in self._pending:
                j.resolve(error=JobCancelled("the server is shutting down"))
            self._pending.clear()
            self._cv.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def drain(self) -> None:
        """Stop taking new requests; queued and running ones still finish."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()

    def wait_ready(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while self.state == "loading":
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.02)
        return self.state == "ready"

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, job: Job) -> Job:
        """Queue ``job``; a newer job for the same slot cancels the older one. Raises QueueFull/ShuttingDown."""
        with self._cv:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                self.metrics.inc("remask_rejected_total", {"reason": "queue_full"})
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry shortly")
            if job.slot is not None and not (job.kind == "complete" and job.payload.max_new == 0):
                old = self._by_slot.get(job.slot)
                if old is not None and not old.future.done():
                    self._cancel_locked(old, "superseded by a newer request for the same slot")
                self._by_slot[job.slot] = job
            self._pending.append(job)
            self.metrics.set("remask_queue_depth", len(self._pending))
            self._cv.notify_all()
        return job

    def cancel(self, job: Job, reason: str) -> None:
        with self._cv:
            self._cancel_locked(job, reason)

    def _cancel_locked(self, job: Job, reason: str) -> None:
        if not job.future.done() and not job.cancelled.is_set():
            cause = next((c for c in ("disconnect", "superseded", "shutting") if c in reason), "other")
            self.metrics.inc("remask_cancelled_total", {"reason": cause})
        job.cancel(reason)
        if job in self._pending:  # not started: answer now; a running one stops between steps
            self._pending.remove(job)
            job.resolve(error=JobCancelled(reason))
            self.metrics.set("remask_queue_depth", len(self._pending))

    # ------------------------------------------------------------------------------------------ worker

    def _main(self) -> None:
        try:
            self.engine = self._loader()
            self.state = "ready"
        except Exception as e:  # noqa: BLE001 - any load failure is reported on /health, not raised
            self.state, self.detail = "failed", str(e) or type(e).__name__
            with self._cv:
                for j in self._pending:
                    j.resolve(error=RuntimeError(f"the model failed to load: {self.detail}"))
                self._pending.clear()
            return
        while True:
            admit: list[Job] = []
            batch: list[Job] = []
            with self._cv:
                while not self._pending and not self._live and not self._stopping:
                    self._cv.wait()
                if not self._pending and not self._live:
                    return
                if self._live or (self._pending and self._pending[0].kind == "complete" and self._can_stream()):
                    admit = self._admit_locked()
                else:
                    batch = self._take_batch_locked()
                self._running = batch + admit + [lv.job for lv in self._live]
                self.metrics.set("remask_queue_depth", len(self._pending))
            try:
                if admit or self._live:
                    self._continue(admit)
                elif batch[0].kind == "op":
                    self._run_op(batch[0])
                elif getattr(self.engine.family, "attention", "block") == "full":
                    self._run_inplace(batch)
                else:
                    self._run_batch(batch)
            except BaseException as e:  # noqa: BLE001 - the worker must survive any request
                for j in batch + admit + [lv.job for lv in self._live]:
                    j.resolve(error=e)
                self._live, self._decoder = [], None  # a fresh pool: the old one's state is unknown
            finally:
                with self._cv:
                    self._running = [lv.job for lv in self._live]
                    for slot in [s for s, j in self._by_slot.items() if j.future.done()]:
                        del self._by_slot[slot]

    def _can_stream(self) -> bool:
        """Whether completions go through the continuous block decoder (a block-diffusion checkpoint)."""
        if self._continuous is None:
            eng = self.engine
            mode = eng._decode_config(eng.settings).mode
            self._continuous = mode == "diffusion" and getattr(eng.family, "attention", "block") != "full"
        return self._continuous

    def _admit_locked(self) -> list[Job]:
        """Waiting completions that join the running batch now: in arrival order, while rows and tokens fit
        (an operation at the head of the queue waits for the batch to drain, and keeps the rest behind it)."""
        rows = len(self._live)
        tokens = sum(lv.cost for lv in self._live)
        out = []
        while self._pending and self._pending[0].kind == "complete":
            j = self._pending[0]
            c = j.payload
            cost = 0 if c.max_new == 0 else self._estimate(c)  # a warm-up only prefills
            if cost and (rows >= self.max_batch or (rows and tokens + cost > self.max_batch_tokens)):
                break
            self._pending.pop(0)
            out.append(j)
            if cost:
                rows, tokens = rows + 1, tokens + cost
        return out

    def _take_batch_locked(self) -> list[Job]:
        """The head of the queue: an operation alone, or the completions that decode with it as one batch."""
        first = self._pending.pop(0)
        batch = [first]
        if first.kind == "complete" and first.payload.max_new > 0:  # a warm-up runs alone (its slot's cache)
            key = self._key(first.payload)
            budget = self.max_batch_tokens - self._estimate(first.payload)
            for j in list(self._pending):
                if len(batch) >= self.max_batch:
                    break
                if j.kind == "complete" and self._key(j.payload) == key:
                    cost = self._estimate(j.payload)
                    if cost > budget:
                        break
                    budget -= cost
                    batch.append(j)
                    self._pending.remove(j)
        return batch

    def _estimate(self, c: Completion) -> int:
        """Tokens a row will hold (prompt within the context budget, plus its new tokens), from its length in
        characters (code averages 3-4 characters per token): cheap enough to run under the queue's lock."""
        if c.ids is not None:
            return len(c.ids) + c.max_new
        chars = len(c.prefix) + len(c.suffix) + sum(len(t) for _, t in c.extra)
        budget = getattr(getattr(self.engine, "settings", None), "context_tokens", 1536)
        return min(chars // 3, budget + 1024) + c.max_new

    @staticmethod
    def _key(c: Completion) -> tuple:
        return (max(c.max_new, 1), c.temperature, c.seed, c.max_new == 0)

    def _run_op(self, job: Job) -> None:
        from assistant.api import Cancelled

        fn = job.payload
        if job.cancelled.is_set():
            job.resolve(error=JobCancelled(job.reason))
            return
        try:
            job.resolve(fn(self.engine, job.cancelled.is_set, job.progress))
        except Cancelled:
            job.resolve(error=JobCancelled(job.reason or "cancelled"))

    def cache_for(self, slot: str | None):
        """The prompt cache of a client slot (most recently used slots are kept)."""
        if slot is None:
            return self.engine.prompt_cache
        from model.cache import PromptCache

        c = self._caches.pop(slot, None) or PromptCache()
        self._caches[slot] = c
        while len(self._caches) > self._max_slots:
            self._caches.popitem(last=False)
        return c

    def prompt_ids(self, c: Completion) -> tuple[list[int], bool]:
        """Our layout: ``[bos] context <fim_suffix> S <fim_prefix> P <fim_middle>``; the context chunks go
        first so that a client's warm-up request (context only) leaves keys its next requests reuse."""
        eng = self.engine
        if c.ids is not None:  # checked here, so that one row too long fails alone, not its whole batch
            from assistant.api import EngineError

            B, ctx = eng.settings.block_size or eng.cfg.block_size, eng.cfg.max_position_embeddings
            if -(-(len(c.ids) + max(c.max_new, 1)) // B) * B > ctx:
                raise EngineError(f"the prompt is {len(c.ids)} tokens; with {c.max_new} new tokens it exceeds the "
                                  f"model's context of {ctx} tokens")
            return list(c.ids), False
        s = replace(eng.settings, max_new_tokens=max(c.max_new, 1))
        extra_ids = eng.tok.encode(render_extra(c.extra)) if c.extra else []
        room = eng.cfg.max_position_embeddings - s.max_new_tokens - 2 * eng.cfg.block_size - 8 - s.context_tokens
        keep = max(0, min(len(extra_ids), room, 1024))
        extra_ids = extra_ids[len(extra_ids) - keep:]
        p = eng._fim_prompt(c.prefix, c.suffix, s, reserve=len(extra_ids))
        head = 1 if eng.bos is not None else 0
        return p.ids[:head] + extra_ids + p.ids[head:], p.trimmed or keep < len(extra_ids)

    # ------------------------------------------------------------------------------- continuous batching

    def _row_config(self, c: Completion):
        """A row's own decoding settings: the server's, with the request's length, sampling and stops."""
        eng = self.engine
        s = replace(eng.settings, max_new_tokens=max(c.max_new, 1), temperature=c.temperature, seed=c.seed)
        return replace(eng._decode_config(s), stop_strings=tuple(c.stop))

    def _continue(self, admit: list[Job]) -> None:
        """Admit ``admit`` into the running batch, then run one denoising step and answer what it finished."""
        import torch

        from assistant.api import EngineError
        from model.decoder import BlockDecoder

        eng = self.engine
        if self._decoder is None:
            self._decoder = BlockDecoder(eng.model, eng._decode_config(eng.settings), tokenizer=eng.tok)
        dec = self._decoder
        self._drop_cancelled()
        joiners: list[tuple[Job, list[int], bool]] = []
        for j in admit:
            if j.cancelled.is_set():
                j.resolve(error=JobCancelled(j.reason))
                continue
            try:
                ids, trunc = self.prompt_ids(j.payload)
            except EngineError as e:
                j.resolve(error=e)
                continue
            joiners.append((j, ids, trunc))
        if joiners:
            cfgs = [self._row_config(j.payload) for j, _, _ in joiners]
            gens = [torch.Generator().manual_seed(j.payload.seed) if j.payload.seed is not None else None
                    for j, _, _ in joiners]
            t_join, nfe0 = time.perf_counter(), dec.nfe
            try:
                with eng._lock:
                    rows = dec.add([ids for _, ids, _ in joiners], cfgs,
                                   prompt_caches=[self.cache_for(j.slot) for j, _, _ in joiners], gens=gens)
            except ValueError as e:
                for j, _, _ in joiners:
                    j.resolve(error=EngineError(str(e)))
                rows = []
            t_ready = time.perf_counter()
            if rows and dec.nfe > nfe0:
                self.metrics.observe_batch(len(rows), dec.nfe - nfe0, 0)
            for (j, ids, trunc), row in zip(joiners, rows, strict=False):
                lv = _Live(job=j, row=row, prompt_len=len(ids), truncated=trunc, t_join=t_join, t_ready=t_ready,
                           cost=len(ids) + max(j.payload.max_new, 1), nfe0=nfe0)
                if j.payload.max_new == 0:  # a warm-up: its prompt's keys are in the slot's cache now
                    dec.remove([row])
                    self._answer(lv, [], "length")
                else:
                    self._live.append(lv)
        if not self._live:
            return
        n = len(self._live)
        with eng._lock:
            finished = dec.step()
        self.metrics.observe_batch(n, 1, 0)
        gone = {id(r) for r in finished}
        now = time.perf_counter()
        keep = []
        for lv in self._live:
            lv.batch_max = max(lv.batch_max, n)
            row = lv.row
            if id(row) in gone:
                res = dec.result([row])
                self._answer(lv, res.tokens[0], res.finish[0])
                continue
            c = lv.job.payload
            if lv.job.progress is not None or c.t_max_predict_ms is not None:
                toks = self._so_far(row.canvas(dec.B))
                if c.t_max_predict_ms is not None and (now - lv.t_join) * 1000 > c.t_max_predict_ms:
                    # A time cap: answer with the lines written so far (the whole text while there is no line)
                    dec.remove([row])
                    self._answer(lv, toks, "time", cut_line=True)
                    continue
                if lv.job.progress is not None:
                    text, _ = self._finish_text(c, toks)
                    safe = text.rstrip("\ufffd")
                    if len(safe) > len(lv.sent) and safe.startswith(lv.sent):
                        lv.job.progress(safe[len(lv.sent):])
                        lv.sent = safe
            keep.append(lv)
        self._live = keep

    def _drop_cancelled(self) -> None:
        """Rows whose client went away (or a newer request replaced) leave before the next forward."""
        out = [lv for lv in self._live if lv.job.cancelled.is_set() or lv.job.future.done()]
        if not out:
            return
        self._decoder.remove([lv.row for lv in out])
        for lv in out:
            lv.job.resolve(error=JobCancelled(lv.job.reason or "cancelled"))
        self._live = [lv for lv in self._live if lv not in out]

    def _so_far(self, seq: list[int]) -> list[int]:
        """Generated tokens (``mask`` where still masked) up to the first mask or EOS."""
        eng = self.engine
        if eng.mask in seq:
            seq = seq[: seq.index(eng.mask)]
        if eng.eos in seq:
            seq = seq[: seq.index(eng.eos)]
        return seq

    @staticmethod
    def _whole_lines(text: str, sent: str) -> str:
        """A time-capped answer: the lines written so far (all of it while there is no line), never less than
        what was already streamed."""
        if "\n" in text.rstrip("\n"):
            text = text[: text.rstrip("\n").rfind("\n") + 1]
            if len(sent) > len(text) and sent.startswith(text):
                text = sent
        return text

    def _finish_text(self, c: Completion, toks: list[int]) -> tuple[str, str | None]:
        text, word = cut_stop(self.engine.tok.decode(toks), c.stop)
        return cut_indent(text, c.n_indent), word

    def _answer(self, lv: _Live, toks: list[int], finish: str, cut_line: bool = False) -> None:
        c: Completion = lv.job.payload  # type: ignore[assignment]
        now = time.perf_counter()
        warm = c.max_new == 0
        text, word = ("", None) if warm else self._finish_text(c, toks)
        if cut_line:
            text = self._whole_lines(text, lv.sent)
        if word is not None:
            finish = "stop"
        row = lv.row
        res = CompletionResult(text=text, tokens_predicted=0 if warm else len(toks), prompt_tokens=lv.prompt_len,
                               tokens_cached=row.reused, truncated=lv.truncated, finish=finish,
                               stopping_word=word, prompt_ms=(lv.t_ready - lv.t_join) * 1000,
                               predicted_ms=(now - lv.t_ready) * 1000, batch_size=lv.batch_max,
                               nfe=self._decoder.nfe - lv.nfe0,  # its prefill and every step it was in
                               queued_ms=(lv.t_join - lv.job.submitted) * 1000)
        self.metrics.observe_completion(res)
        lv.job.resolve(res)

    def _run_inplace(self, batch: list[Job]) -> None:
        """Full-attention families (Dream, DreamOn): the rows' holes filled in place between prefix and suffix in
        one ``infill_generate`` call, as the engine fills a hole (context files go before the prefix)."""
        from assistant.api import EngineError
        from model.decoder import DecodeCancelled
        from model.families.run import infill_generate

        eng = self.engine
        live = [j for j in batch if not (j.cancelled.is_set() and j.resolve(error=JobCancelled(j.reason)))]
        jobs, ok = [], []
        c0: Completion = live[0].payload if live else Completion()  # type: ignore[assignment]
        s = replace(eng.settings, max_new_tokens=max(c0.max_new, 1), temperature=c0.temperature, seed=c0.seed)
        for j in live:
            c: Completion = j.payload  # type: ignore[assignment]
            try:
                if c.ids is not None:
                    raise EngineError("this model fills in place; it has no chat prompt")
                p = eng._fim_prompt(render_extra(c.extra) + c.prefix if c.extra else c.prefix, c.suffix, s)
            except EngineError as e:
                j.resolve(error=e)
                continue
            jobs.append((p.prefix_ids or [], p.suffix_ids or []))
            ok.append((j, p))
        if not ok:
            return
        t0 = time.perf_counter()
        try:
            with eng._lock:
                res = infill_generate(eng.model, jobs, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                      seed=s.seed, cancel=lambda: all(j.cancelled.is_set() for j, _ in ok),
                                      cache="dual" if s.dual_cache else "none", refresh=s.dual_cache or 8)
        except DecodeCancelled:
            for j, _ in ok:
                j.resolve(error=JobCancelled(j.reason or "cancelled"))
            return
        except ValueError as e:
            for j, _ in ok:
                j.resolve(error=EngineError(str(e)))
            return
        ms = (time.perf_counter() - t0) * 1000
        self.metrics.observe_batch(len(ok), res.nfe, res.generated)
        for k, (j, p) in enumerate(ok):
            c = j.payload  # type: ignore[assignment]
            toks = list(res.tokens[k]) if c.max_new > 0 else []
            text, word = self._finish_text(c, toks) if c.max_new > 0 else ("", None)
            r = CompletionResult(text=text, tokens_predicted=len(toks), prompt_tokens=len(jobs[k][0]) + len(jobs[k][1]),
                                 tokens_cached=0, truncated=p.trimmed, finish="stop" if word else res.finish[k],
                                 stopping_word=word, prompt_ms=0.0, predicted_ms=ms, batch_size=len(ok), nfe=res.nfe,
                                 queued_ms=(t0 - j.submitted) * 1000)
            self.metrics.observe_completion(r)
            j.resolve(r)

    def _run_batch(self, batch: list[Job]) -> None:
        from assistant.api import EngineError
        from model.decoder import DecodeCancelled, generate

        eng = self.engine
        live = []
        for j in batch:
            if j.cancelled.is_set():
                j.resolve(error=JobCancelled(j.reason))
            else:
                live.append(j)
        if not live:
            return
        rows: list[Completion] = [j.payload for j in live]  # type: ignore[misc]
        prompts = []
        for j, c in zip(live, rows, strict=True):
            try:
                prompts.append(self.prompt_ids(c))
            except EngineError as e:
                j.resolve(error=e)
        ok = [k for k, j in enumerate(live) if not j.future.done()]
        live, rows, prompts = [live[k] for k in ok], [rows[k] for k in ok], [prompts[k] for k in ok]
        if not live:
            return
        c0 = rows[0]
        s = replace(eng.settings, max_new_tokens=max(c0.max_new, 1), temperature=c0.temperature, seed=c0.seed)
        dc = eng._decode_config(s)
        stops = {c.stop for c in rows}
        if len(stops) == 1:
            dc = replace(dc, stop_strings=next(iter(stops)))
        cache = self.cache_for(live[0].slot) if len(live) == 1 else None
        n = len(live)
        t0 = time.perf_counter()
        first_step = [None]
        sent = [""] * n
        answered = [False] * n
        eos = eng.eos
        warm = c0.max_new == 0

        def answer(k: int, toks: list[int], finish: str, nfe: int, reused: int, cut_line: bool = False) -> None:
            if answered[k]:
                return
            answered[k] = True
            now = time.perf_counter()
            pm = ((first_step[0] or now) - t0) * 1000
            text, word = ("", None) if warm else self._finish_text(rows[k], toks)
            if cut_line:
                text = self._whole_lines(text, sent[k])
            if word is not None:
                finish = "stop"
            res = CompletionResult(text=text, tokens_predicted=0 if warm else len(toks),
                                   prompt_tokens=len(prompts[k][0]), tokens_cached=reused,
                                   truncated=prompts[k][1], finish=finish, stopping_word=word, prompt_ms=pm,
                                   predicted_ms=(now - t0) * 1000 - pm, batch_size=n, nfe=nfe,
                                   queued_ms=(t0 - live[k].submitted) * 1000)
            self.metrics.observe_completion(res)
            live[k].resolve(res)

        def on_step(ev) -> None:
            if first_step[0] is None:
                first_step[0] = time.perf_counter()
            last_nfe[0] = ev.nfe
            now = time.perf_counter()
            for k in range(n):
                if answered[k] or live[k].future.done():
                    answered[k] = True
                    continue
                c = rows[k]
                limit = max(c.max_new, 1)
                if ev.done[k]:
                    toks = self._so_far(ev.rows[k][:limit])
                    fin = "eos" if eos in ev.rows[k][:limit] and len(toks) < limit else "length"
                    answer(k, toks, fin, ev.nfe, 0 if cache is None else reused_box[0])
                    continue
                if warm:
                    continue
                need_text = live[k].progress is not None or c.t_max_predict_ms is not None
                if not need_text:
                    continue
                toks = self._so_far(ev.rows[k][:limit])
                text, _ = self._finish_text(c, toks)
                if c.t_max_predict_ms is not None and (now - t0) * 1000 > c.t_max_predict_ms:
                    # A time cap: answer with the lines written so far (the whole text while there is no line)
                    answer(k, toks, "time", ev.nfe, reused_box[0], cut_line=True)
                    continue
                if live[k].progress is not None:
                    safe = text.rstrip("\ufffd")
                    if len(safe) > len(sent[k]) and safe.startswith(sent[k]):
                        live[k].progress(safe[len(sent[k]):])
                        sent[k] = safe

        reused_box = [0]
        last_nfe = [0]

        def check() -> bool:
            for k in range(n):
                if not answered[k] and live[k].cancelled.is_set():
                    answered[k] = True
                    live[k].resolve(error=JobCancelled(live[k].reason))
            return all(answered[k] or live[k].future.done() for k in range(n))

        try:
            with eng._lock:
                if cache is not None:  # what generate will reuse, for rows answered from the step callback
                    B = dc.block_size or eng.cfg.block_size
                    ids = prompts[0][0]
                    reused_box[0] = cache.reusable(eng.model, ids[: len(ids) // B * B], B)
                res = generate(eng.model, [p[0] for p in prompts], dc, tokenizer=eng.tok, callback=on_step,
                               cancel=check, prompt_cache=cache)
        except DecodeCancelled:
            check()
            self.metrics.observe_batch(n, last_nfe[0], 0)
            return
        except ValueError as e:
            for k in range(n):
                live[k].resolve(error=EngineError(str(e)))
            return
        reused = res.extra.get("prompt_tokens_reused", 0)
        self.metrics.observe_batch(n, res.nfe, res.generated)
        for k in range(n):
            if not answered[k]:
                answer(k, res.tokens[k], res.finish[k], res.nfe, reused)
