"""The engine: fill, regenerate, repair, score and rewrite spans of code with a block-diffusion model.

Prompts are suffix-first fill-in-the-middle, ``[bos] <fim_suffix> S <fim_prefix> P <fim_middle>``: under the
block-causal mask a masked token sees only earlier blocks, so the suffix has to come before the middle for
the middle to see it. The middle is decoded block by block until EOS, so its length is never guessed.

Repair needs what an autoregressive model cannot give cheaply: the probability of every token of a span
given everything around it, each predicted while masked. ``Engine._token_logprobs`` gets all of them
exactly from one clean prefill plus one batched forward of B noisy copies; the flagged tokens are then
re-decoded in place over the same clean keys (``Engine._inpaint``).

Typing at the cursor changes only the end of such a prompt, so the engine keeps the keys of the last
prompt's whole blocks (``model.cache.PromptCache``) and the next request prefills only from the first block
that differs; the context cuts move in steps so that the prompt's head stays put while the user types.

Operations never write files; they return ``EditResult`` (edits, new text, unified diff, candidates).
One model call runs at a time (a lock), so a server may call the engine from several threads.
"""

from __future__ import annotations

import difflib
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from model.cache import BlockKVCache, PromptCache
from model.checkpoint import CheckpointError, resolve_model
from model.decoder import DecodeCancelled, DecodeConfig, DecodeResult, StepEvent, generate
from model.families import capabilities as family_capabilities
from model.families import family_of
from model.families.run import block_options as family_block_options
from model.families.run import infill_generate
from model.network import forward_logits, remask_config, run_body

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
from .spans import Hole, Parsed, find_holes, hole_at, language_for, normalize_language, parse, whole_line_region
from .spans import spans_at as _spans_at

CancelCheck = Callable[[], bool]


class ModelLoadError(EngineError, CheckpointError):
    """The model could not be loaded; catchable as either an ``EngineError`` or a ``CheckpointError``."""


@dataclass
class _Job:
    """One region to generate: ``hole`` in the original text, with the context the model sees around it."""

    hole: Hole
    prefix: str
    suffix: str
    original: str


@dataclass
class _Prompt:
    ids: list[int]
    trimmed: bool
    prefix_ids: list[int] | None = None  # the context as trimmed, for families that fill in place
    suffix_ids: list[int] | None = None


def unified_diff(old: str, new: str, name: str = "text") -> str:
    """A git-style unified diff (``a/NAME`` -> ``b/NAME``), with the no-newline-at-end marker."""
    a = old.splitlines(keepends=True)
    b = new.splitlines(keepends=True)
    out = []
    for line in difflib.unified_diff(a, b, fromfile=f"a/{name}", tofile=f"b/{name}"):
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _minimal_edit(start: int, old: str, new: str) -> TextEdit | None:
    """The smallest replacement turning ``old`` (at ``start``) into ``new``; None when they are equal."""
    if old == new:
        return None
    cp = 0
    n = min(len(old), len(new))
    while cp < n and old[cp] == new[cp]:
        cp += 1
    cs = 0
    while cs < n - cp and old[len(old) - 1 - cs] == new[len(new) - 1 - cs]:
        cs += 1
    return TextEdit(start + cp, start + len(old) - cs, new[cp: len(new) - cs])


def apply_edits(text: str, edits: list[TextEdit]) -> str:
    """Apply non-overlapping edits (any order) to ``text``."""
    out = text
    for e in sorted(edits, key=lambda e: (e.start, e.end), reverse=True):
        out = out[: e.start] + e.new_text + out[e.end:]
    return out


_INDENT = re.compile(r"[ \t]*")


def _newlines_like(job, out: str) -> str:
    """``out`` with the line breaks of the text around the span (CRLF files stay CRLF)."""
    if "\r\n" in job.prefix[-2000:] + job.suffix[:2000] + job.original:
        return out.replace("\r\n", "\n").replace("\n", "\r\n")
    return out
# A file with hundreds of holes is filled a batch at a time: at most MAX_BATCH_ROWS rows, and no more than
# fit KV_BUDGET_BYTES of KV cache (an 8B model: about 9 rows of 1,600 tokens; the small default: 64).
MAX_BATCH_ROWS = 64
KV_BUDGET_BYTES = 2 << 30


def _indent(line: str) -> str:
    return _INDENT.match(line).group(0)  # type: ignore[union-attr]


def _python_compiles(text: str) -> bool:
    """CPython's own parser accepts ``text`` (stricter than tree-sitter about blocks and indentation)."""
    import ast
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(text)
        return True
    except (SyntaxError, ValueError):
        return False


def _indent_width(s: str) -> int:
    return len(s.expandtabs(4))


class _CleanKV:
    """Duck-typed transformers cache (like ``model.cache.BlockKVCache``, the attention only calls ``update``).

    While ``storing``, a forward keeps its keys and values (the clean prefill); afterwards a forward attends
    to those plus its own keys and stores nothing, so several noisy rows can share one clean prefix.
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.storing = True

    def prepare(self, positions: torch.Tensor, kv_len: int) -> None:  # forward_logits' hook; nothing to do
        pass

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.storing:
            self.keys[layer_idx], self.values[layer_idx] = key, value
            return key, value
        k0, v0 = self.keys[layer_idx], self.values[layer_idx]
        n = key.shape[0]
        return (torch.cat([k0.expand(n, -1, -1, -1), key], 2),  # type: ignore[union-attr]
                torch.cat([v0.expand(n, -1, -1, -1), value], 2))  # type: ignore[union-attr]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        k = self.keys[layer_idx]
        return 0 if k is None else int(k.shape[2])


class Engine:
    """The infilling and edit engine over one loaded model (see the module docstring)."""

    def __init__(self, model, tokenizer, settings: Settings | None = None, description: str = "") -> None:
        if tokenizer is None:
            raise EngineError("this model folder has no tokenizer (tokenizer.json); the engine needs one")
        self.model = model
        self.tok = tokenizer
        self.settings = settings or Settings()
        self.cfg = remask_config(model)
        self.family = family_of(model)  # how the model decodes and lays out a fill
        self.caps = family_capabilities(model)  # what this checkpoint can do
        self.device = next(model.parameters()).device
        self._lock = threading.RLock()
        # None: the model's own decoding (diffusion, or AR for a shifted checkpoint). "ar" forces one token per
        # forward on the same weights: the speed baseline of benchmarks/bench_engine.py.
        self.decode_mode: str | None = None
        # The keys of the last prompt's whole blocks: the next keystroke's request prefills only what changed.
        self.prompt_cache = PromptCache()
        fp, fs, fm = tokenizer.fim_ids
        self.fim_prefix = fp if fp is not None else self.cfg.fim_prefix_id
        self.fim_suffix = fs if fs is not None else self.cfg.fim_suffix_id
        self.fim_middle = fm if fm is not None else self.cfg.fim_middle_id
        self.bos = tokenizer.bos_id if tokenizer.bos_id is not None else None
        self.eos = self.cfg.eos_token_id
        self.mask = self.cfg.mask_token_id
        n_params = sum(p.numel() for p in model.parameters())
        self.info = {
            "name": description.split(" (")[0] if description else f"{self.cfg.kind} model",
            "parameters": n_params,
            "kind": self.cfg.kind,
            "block_size": self.cfg.block_size,
            "instruct": self.cfg.instruct,
            "context": self.cfg.max_position_embeddings,
            "description": description or f"{self.cfg.kind} model, {n_params / 1e6:.1f}M parameters",
        }

    @classmethod
    def load(cls, model: str | None = None, device: str = "cpu", settings: Settings | None = None,
             dtype: torch.dtype | None = None, adapter: str | None = None, merge_adapter: bool = True) -> Engine:
        """An engine over a model folder, ``None``/"default" (the shipped model) or ``random:PRESET``, optionally
        with a LoRA ``adapter`` folder (merged unless ``merge_adapter`` is off)."""
        try:
            m, tok, desc = resolve_model(model, device=device, dtype=dtype, adapter=adapter,
                                         merge_adapter=merge_adapter)
        except (CheckpointError, KeyError) as e:
            raise ModelLoadError(str(e).strip("'\"")) from e
        if tok is None and str(model).startswith("random:"):
            # An untrained model has no tokenizer; train a small BPE on the standard library (seconds, offline)
            # so the mechanics can be exercised end to end.
            from model.testing import make_test_tokenizer

            tok = make_test_tokenizer(remask_config(m).vocab_size)
            desc += " with a BPE tokenizer trained on the standard library"
        return cls(m, tok, settings, desc)

    # ------------------------------------------------------------------------------------ spans

    def language_for(self, path: str | None) -> str | None:
        return language_for(path)

    def holes(self, text: str, language: str | None = None) -> list[Span]:
        self._check_text(text)
        return [h.span(text) for h in find_holes(text, language)]

    def spans_at(self, text: str, start: int, end: int | None = None, language: str | None = None,
                 first_line: int = 1) -> list[Span]:
        """Span choices at a cursor or selection; ``first_line``: the number of ``text``'s first line in labels
        (a window cut from a larger file)."""
        self._check_text(text)
        return _spans_at(text, start, end, language, count_tokens=lambda s: len(self.tok.encode(s)),
                         budget=self.settings.span_tokens, first_line=first_line)

    # ------------------------------------------------------------------------------------ operations

    def fill(self, text: str, start: int, end: int | None = None, *, language: str | None = None,
             settings: Settings | None = None, callback=None, cancel=None) -> EditResult:
        """Fill the hole at/around ``[start, end)``: a marker, a placeholder body, a selection or the cursor."""
        self._check_text(text)
        self._check_range(text, start, start if end is None else end)
        start, end = self._whole_breaks(text, start, end)
        parsed = parse(text, language)
        hole = hole_at(text, start, end, parsed.language, parsed)
        return self._fill_holes("fill", text, [hole], parsed, language, settings, callback, cancel)

    def fill_all(self, text: str, *, language: str | None = None, settings: Settings | None = None,
                 callback=None, cancel=None, within: tuple[int, int] | None = None, rounds: int = 1) -> EditResult:
        """Fill every hole of the file in one batched decode, each conditioned on the others' current text.

        ``within=(start, end)`` limits it to the holes inside that range. ``rounds=2`` decodes all holes
        again, each seeing the others' first answers (one more batched call).
        """
        self._check_text(text)
        if not text.strip():
            raise EngineError("the text is empty: there are no holes to fill")
        parsed = parse(text, language)
        holes = find_holes(text, parsed.language, parsed)
        if within is not None:
            self._check_range(text, *within)
            holes = [h for h in holes if within[0] <= h.start and h.end <= within[1]]
        if not holes:
            raise EngineError("no holes found: mark one with <FILL>, or leave a pass / ... / TODO body")
        return self._fill_holes("fill_all", text, holes, parsed, language, settings, callback, cancel, rounds)

    def regenerate(self, text: str, start: int, end: int, *, language: str | None = None, n: int | None = None,
                   settings: Settings | None = None, callback=None, cancel=None) -> EditResult:
        """Replace ``[start, end)`` with new versions: ``n`` candidates decoded as one batch, best first."""
        self._check_text(text)
        self._check_range(text, start, end)
        start, end = self._whole_breaks(text, start, end)
        if end <= start:
            raise EngineError("regenerate needs a non-empty span (use fill for an insertion point)")
        s = settings or self.settings
        n = n if n is not None else s.candidates
        if n < 1:
            raise EngineError("the number of candidates must be at least 1")
        parsed = parse(text, language)
        region = whole_line_region(text, start, end)
        single = "\n" not in text[start:end].rstrip("\r\n")
        if region is not None:
            hole = Hole(region[0], region[1], "selection", whole_lines=True, single_line=single)
        else:
            hole = Hole(start, end, "selection", whole_lines=False, single_line=single)
        job = self._job(text, hole)
        span_tokens = len(self.tok.encode(job.original))
        ctx = self.cfg.max_position_embeddings
        if span_tokens + 64 > ctx:
            raise EngineError(f"the span is {span_tokens} tokens, too long for the model's context of {ctx} "
                              f"tokens; select less")
        max_new = min(max(s.max_new_tokens, math.ceil(span_tokens * 1.5) + 8), ctx - 48)
        temperature = s.temperature if (n == 1 or s.temperature > 0) else s.candidate_temperature
        rs = replace(s, max_new_tokens=max_new, temperature=temperature)
        prompt = self._fim_prompt(job.prefix, job.suffix, rs)
        res = self._generate([prompt.ids] * n, rs, hole.single_line, [hole.span(text)] * n, callback, cancel,
                             infill=[prompt] * n, hints=[span_tokens] * n)
        cands: dict[str | None, Candidate] = {}
        for i in range(n):
            out, empty = self._answer(job, self.tok.decode(res.tokens[i]))
            c = self._candidate(text, [(job, out)], float("-inf") if empty else res.score(i), parsed, empty=empty)
            key = None if empty else out  # all empty answers are one "no suggestion" candidate
            if key not in cands or cands[key].score < c.score:
                cands[key] = c
        # An empty answer ranks last: it is the default only when every candidate is empty.
        ranked = sorted(cands.values(), key=lambda c: (c.empty, not c.parses, not c.indentation_ok, -c.score))
        message = None
        if ranked[0].empty:
            message = "no suggestion: the model answered nothing for this span" + \
                (f" ({n} candidates)" if n > 1 else "")
        return self._result("regenerate", text, ranked, [hole.span(text)], parsed, language, res, prompt,
                            message=message, candidates_decoded=n, temperature=temperature,
                            empty_answers=sum(1 for i in range(n) if not res.tokens[i]))

    def score(self, text: str, start: int, end: int, *, language: str | None = None,
              settings: Settings | None = None) -> list[TokenScore]:
        """Probability of every token of ``[start, end)`` under the model, each predicted while masked."""
        self._check_text(text)
        self._check_range(text, start, end)
        start, end = self._whole_breaks(text, start, end)
        if end <= start:
            raise EngineError("score needs a non-empty span")
        s = settings or self.settings
        out: list[TokenScore] = []
        with self._lock:
            # Cost per piece grows with (context + B * piece)^2: pieces of about a quarter of the context.
            chunk_chars = int(3.5 * max(64, min(384, s.context_tokens // 4)))
            for cs, ce in self._chunks(text, start, end, chunk_chars):
                prompt, span_ids, offsets, a, _job = self._span_prompt(text, cs, ce, s)
                logp, best = self._token_logprobs(prompt.ids + span_ids + self._after_span(prompt), a,
                                                  a + len(span_ids))
                out += self._token_scores(text, span_ids, offsets, logp, best, cs, ce)
        return out

    @staticmethod
    def _chunks(text: str, start: int, end: int, size: int) -> list[tuple[int, int]]:
        """``[start, end)`` split at line starts into pieces of about ``size`` characters.

        A long span (a whole file for a heat map) is scored piece by piece, each with its own context, so
        neither the model's window nor the quadratic scoring forward limits its length.
        """
        out = []
        cur = start
        while end - cur > size:
            cut = text.rfind("\n", cur, cur + size)
            if cut < 0 or cut + 1 >= end:
                cut = text.find("\n", cur + size, end)
                if cut < 0 or cut + 1 >= end:
                    break
            out.append((cur, cut + 1))
            cur = cut + 1
        out.append((cur, end))
        return out

    def repair(self, text: str, start: int, end: int, *, language: str | None = None,
               settings: Settings | None = None, callback=None, cancel=None) -> EditResult:
        """Score the span in one pass, remask its improbable tokens, regenerate only those.

        Flagged: tokens with probability below ``settings.repair_threshold``, or with ``repair_fraction``
        set, that fraction of the span's least likely tokens. The span keeps its token count: the masked
        positions are re-decoded in place (block by block, each block seeing the clean text after it
        through the suffix-first prompt and the unflagged tokens of its own block).
        """
        self._check_text(text)
        self._check_range(text, start, end)
        start, end = self._whole_breaks(text, start, end)
        if end <= start:
            raise EngineError("repair needs a non-empty span")
        if "ar" in self.caps:
            raise EngineError("repair re-decodes tokens in place, which needs a block-diffusion model; "
                              "this checkpoint is autoregressive")
        s = settings or self.settings
        parsed = parse(text, language)
        t0 = time.perf_counter()
        with self._lock:
            prompt, span_ids, offsets, a, job = self._span_prompt(text, start, end, s)
            full = prompt.ids + span_ids + self._after_span(prompt)
            logp, best, clean_kv = self._token_logprobs(full, a, a + len(span_ids), keep_kv=True)
            scores = self._token_scores(text, span_ids, offsets, logp, best, start, end)
            # Only tokens that overlap the user's span may be flagged (the region may add indentation).
            cand_idx = [i for i, (o0, o1) in enumerate(offsets)
                        if job.hole.start + o0 < end and job.hole.start + max(o1, o0 + 1) > start]
            flagged_idx = self._flag(cand_idx, logp, best, s)
            if not flagged_idx:
                c = Candidate([], text, "", sum(logp) / max(len(logp), 1), True, True)
                r = self._result("repair", text, [c], [self._selection(text, start, end)], parsed, language,
                                 None, prompt)
                r.stats.update(scored=len(span_ids), flagged=0, elapsed_s=round(time.perf_counter() - t0, 4))
                return r
            canvas = list(full)
            for i in flagged_idx:
                canvas[a + i] = self.mask
            span = self._selection(text, start, end)
            inpaint = self._inpaint_full if self.family.attention == "full" else self._inpaint
            new_full, new_lp, stats = inpaint(canvas, a, a + len(span_ids), s, [span], callback, cancel,
                                                    clean_kv=clean_kv)
        new_ids = self._whole_characters(span_ids, new_full[a: a + len(span_ids)], offsets, flagged_idx)
        out = _newlines_like(job, self.tok.decode(new_ids))
        by_token = {i: new_lp[i] for i in flagged_idx}
        total = [by_token.get(i, logp[i]) for i in range(len(span_ids))]
        cand = self._candidate(text, [(job, out)], sum(total) / len(total), parsed)
        flagged = [scores_by_index for scores_by_index in (self._score_at(scores, offsets, job, i, start, end)
                                                            for i in flagged_idx) if scores_by_index is not None]
        r = self._result("repair", text, [cand], [span], parsed, language, None, prompt)
        r.flagged = flagged
        r.stats.update(stats)
        r.stats.update(scored=len(span_ids), flagged=len(flagged_idx), elapsed_s=round(time.perf_counter() - t0, 4))
        return r

    def instruct(self, text: str, start: int, end: int, instruction: str, *, language: str | None = None,
                 settings: Settings | None = None, callback=None, cancel=None) -> EditResult:
        """Rewrite ``[start, end)`` following ``instruction`` (instruct checkpoints only)."""
        if not self.cfg.instruct:
            raise InstructModelRequired(
                f"editing with an instruction needs an instruct checkpoint (kind 'bd-instruct'); this model is a "
                f"base '{self.cfg.kind}' model. Use fill, regenerate or repair, or load an instruct model.")
        self._check_text(text)
        self._check_range(text, start, end)
        start, end = self._whole_breaks(text, start, end)
        if not instruction or not instruction.strip():
            raise EngineError("the instruction is empty")
        s = settings or self.settings
        parsed = parse(text, language)
        lang = parsed.language or "code"
        region = whole_line_region(text, start, end) if end > start else None
        hole = Hole(*(region or (start, end)), "selection", whole_lines=region is not None, single_line=False)
        job = self._job(text, hole)
        before = "\n".join(job.prefix.splitlines()[-30:])
        after = "\n".join(job.suffix.splitlines()[:30])
        body = (f"{instruction.strip()}\n\nRewrite the span of {lang} below. Reply with the rewritten span only, "
                f"in one fenced code block.\n\nCode before the span:\n```\n{before}\n```\n\nSpan:\n```\n"
                f"{job.original.rstrip()}\n```\n\nCode after the span:\n```\n{after}\n```")
        ids = self.tok.chat_prompt([{"role": "user", "content": body}])
        span_tokens = len(self.tok.encode(job.original))
        ctx = self.cfg.max_position_embeddings
        max_new = min(max(s.max_new_tokens, 2 * span_tokens + 32), ctx - len(ids) - 8)
        if max_new < 8:
            raise EngineError(f"the request is {len(ids)} tokens, too long for the model's context of {ctx}")
        rs = replace(s, max_new_tokens=max_new)
        res = self._generate([ids], rs, False, [hole.span(text)], callback, cancel)
        reply = self.tok.decode(res.tokens[0])
        code = self._extract_code(reply)
        empty = not code.strip()
        if empty:  # no code in the reply: no suggestion, never a deletion of the span
            out = job.original
        else:
            out = self._reindent(job, code)
            if hole.whole_lines and out and not out.endswith("\n") and job.original.endswith("\n"):
                out += "\n"
            out = _newlines_like(job, out)
        cand = self._candidate(text, [(job, out)], float("-inf") if empty else res.score(0), parsed, empty=empty)
        return self._result("instruct", text, [cand], [hole.span(text)], parsed, language, res,
                            _Prompt(ids, False), reply=reply,
                            message="no suggestion: the model's reply had no code" if empty else None)

    # ------------------------------------------------------------------------------------ internals

    def _check_text(self, text: str) -> None:
        if not isinstance(text, str):
            raise EngineError("the text must be a str (decode files as UTF-8 first)")
        if "\x00" in text:
            raise EngineError("the text contains NUL bytes: it looks like binary content, which is not edited")

    @staticmethod
    def _check_range(text: str, start: int, end: int) -> None:
        n = len(text)
        if not (isinstance(start, int) and isinstance(end, int)):
            raise EngineError("offsets must be integers")
        if start < 0 or end > n or start > end:
            raise EngineError(f"range {start}..{end} is outside the text (0..{n})")

    @staticmethod
    def _whole_breaks(text: str, start: int, end: int | None) -> tuple[int, int | None]:
        """Move a range boundary that falls between the CR and the LF of a CRLF out of the line break (a start
        after it, an end or an insertion point before it), so no edit ever keeps half of one."""
        def inside(i: int | None) -> bool:
            return i is not None and 0 < i < len(text) and text[i - 1] == "\r" and text[i] == "\n"

        if end is None or end == start:
            return (start - 1, None if end is None else start - 1) if inside(start) else (start, end)
        start = start + 1 if inside(start) else start
        end = end - 1 if inside(end) else end
        return (start, end) if start <= end else (end, end)

    @staticmethod
    def _selection(text: str, start: int, end: int) -> Span:
        return Hole(start, end, "selection", whole_lines=False, single_line=False).span(text)

    @staticmethod
    def _job(text: str, hole: Hole) -> _Job:
        return _Job(hole, text[: hole.start], text[hole.end:], text[hole.start: hole.end])

    def _cancel(self, cancel) -> CancelCheck | None:
        if cancel is None:
            return None
        if callable(cancel):
            return cancel
        raise EngineError("cancel must be a CancelToken or a zero-argument callable")

    def _decode_config(self, s: Settings, stop_newline: bool = False) -> DecodeConfig:
        return DecodeConfig(max_new_tokens=s.max_new_tokens, block_size=s.block_size,
                            threshold=None if s.steps else s.threshold, steps_per_block=s.steps,
                            confidence=s.confidence, temperature=s.temperature, seed=s.seed,
                            mode=self.decode_mode or ("ar" if "ar" in self.caps else "diffusion"),
                            stop_strings=("\n",) if stop_newline else (), **family_block_options(self.model))

    def _encode_trim_left(self, text: str, enc, k: int, line0: int = 0) -> tuple[list[int], bool]:
        """Ids of the end of ``text`` (encoded as ``enc``) in at most ``k`` tokens, cut at a line start.

        The cut goes to a line whose number (``line0`` is that of ``text``'s first line) is a multiple of
        ``CUT_LINES``: typing at the cursor then leaves the cut, and so the prompt's head, where it was for
        many keystrokes, which is what lets the prompt cache skip the unchanged blocks.
        """
        if k <= 0:
            return [], bool(text)
        if len(enc.ids) <= k:
            return list(enc.ids), False
        cut = enc.offsets[len(enc.ids) - k][0]
        nl = text.find("\n", cut)
        if 0 <= nl < len(text) - 1:
            cut = plain = nl + 1
            line = line0 + text.count("\n", 0, cut)
            while line % self.CUT_LINES:
                nxt = text.find("\n", cut)
                if nxt < 0 or nxt >= len(text) - 1:
                    cut = plain  # no aligned line before the cursor's: keep the plain cut
                    break
                cut, line = nxt + 1, line + 1
        ids = self.tok.encode(text[cut:])
        return ids[-k:], True

    def _encode_trim_right(self, text: str, enc, k: int) -> tuple[list[int], bool]:
        """Ids of the start of ``text`` (encoded as ``enc``) in at most ``k`` tokens, cut at a line end."""
        if k <= 0:
            return [], bool(text)
        if len(enc.ids) <= k:
            return list(enc.ids), False
        cut = enc.offsets[k - 1][1]
        nl = text.rfind("\n", 0, cut)
        if nl > 0:
            cut = nl + 1
        return self.tok.encode(text[:cut])[:k], True

    # Share of the context budget for the prefix when both sides are long: training/fim.py caps FIM samples
    # at 400 prefix and 600 suffix tokens, so the model knows that proportion.
    PREFIX_SHARE = 0.4
    # Context cuts move in steps (a line number multiple of CUT_LINES for the prefix's head, a multiple of
    # ROOM_STEP tokens for the room left to the suffix) so that a keystroke rarely changes the prompt's head.
    CUT_LINES = 8
    ROOM_STEP = 32

    def _context(self, prefix: str, suffix: str, budget: int) -> tuple[list[int], list[int], bool]:
        """Prefix and suffix ids within ``budget`` tokens, split 40/60 unless one side is short.

        Cuts fall on line boundaries, so the model never sees half a line at either edge.
        """
        budget = max(budget, 0)
        # Tokenize only what can fit: code averages 3-4 characters per token, so a window of 8 characters
        # per token of budget (cut at a line boundary) keeps the cost independent of the file's size.
        window = 8 * budget + 64
        pre_cut = len(prefix) > window
        line0 = 0
        if pre_cut:
            cut = len(prefix) - window
            nl = prefix.find("\n", cut)
            cut = nl + 1 if 0 <= nl < len(prefix) - 1 else cut
            line0 = prefix.count("\n", 0, cut) if prefix[cut - 1: cut] == "\n" else 0
            prefix = prefix[cut:]
        suf_cut = len(suffix) > window
        if suf_cut:
            nl = suffix.rfind("\n", 0, window)
            suffix = suffix[: nl + 1] if nl > 0 else suffix[:window]
        p_enc = self.tok.tok.encode(prefix, add_special_tokens=False)
        s_enc = self.tok.tok.encode(suffix, add_special_tokens=False)
        p_len, s_len = len(p_enc.ids), len(s_enc.ids)
        # A checkpoint may record the FIM windows it was trained with; never show it more than that.
        p_len = min(p_len, int(self.cfg.extra.get("fim_prefix_tokens") or p_len))
        s_len = min(s_len, int(self.cfg.extra.get("fim_suffix_tokens") or s_len))
        if p_len + s_len <= budget:
            kp, ks = p_len, s_len
        else:
            share = int(budget * self.PREFIX_SHARE)
            if s_len <= budget - share:
                kp, ks = budget - s_len, s_len
            elif p_len <= share:
                # The suffix gets what the prefix leaves, in steps: typing must not move the suffix's cut.
                kp = min(-(-p_len // self.ROOM_STEP) * self.ROOM_STEP, share)
                ks = budget - kp
            else:
                kp, ks = share, budget - share
        p_ids, t1 = self._encode_trim_left(prefix, p_enc, kp, line0)
        s_ids, t2 = self._encode_trim_right(suffix, s_enc, ks)
        return p_ids, s_ids, t1 or t2 or pre_cut or suf_cut

    def _fim_ids(self) -> tuple[int, int, int]:
        if None in (self.fim_prefix, self.fim_suffix, self.fim_middle):
            raise EngineError("this model's tokenizer has no fill-in-the-middle tokens; it cannot infill")
        return self.fim_prefix, self.fim_suffix, self.fim_middle  # type: ignore[return-value]

    def _fim_prompt(self, prefix: str, suffix: str, s: Settings, reserve: int = 0) -> _Prompt:
        """``[bos] <fim_suffix> S <fim_prefix> P <fim_middle>`` with S and P trimmed to the budget."""
        fp, fs, fm = self._fim_ids()
        B = s.block_size or self.cfg.block_size
        room = self.cfg.max_position_embeddings - s.max_new_tokens - reserve - 2 * B - 4
        budget = min(s.context_tokens, room)
        if budget < 0:
            raise EngineError("max_new_tokens leaves no room for context in the model's "
                              f"{self.cfg.max_position_embeddings}-token window")
        p_ids, s_ids, trimmed = self._context(prefix, suffix, budget)
        if self.family.infill != "fim_suffix_first":  # masks in place between prefix and suffix
            return _Prompt(p_ids + [self.mask] + s_ids, trimmed, p_ids, s_ids)
        head = [self.bos] if self.tok.fim_bos else []  # the evidence is in Tokenizer.fim_bos
        return _Prompt(head + [fs] + s_ids + [fp] + p_ids + [fm], trimmed, p_ids, s_ids)

    def _span_prompt(self, text: str, start: int, end: int, s: Settings):
        """FIM prompt whose middle is the span's own tokens: (prompt, span ids, span offsets, index, job).

        The span is extended to whole lines when only blanks surround it, the layout the model trained on.
        Its tokens come from encoding the span text alone, so each one maps to exact offsets.
        """
        region = whole_line_region(text, start, end)
        hole = Hole(*(region or (start, end)), "selection", whole_lines=region is not None,
                    single_line="\n" not in text[start:end])
        job = self._job(text, hole)
        enc = self.tok.tok.encode(job.original, add_special_tokens=False)
        span_ids, offsets = list(enc.ids), [tuple(o) for o in enc.offsets]
        if not span_ids:
            raise EngineError("the span has no tokens")
        B = s.block_size or self.cfg.block_size
        ctx = self.cfg.max_position_embeddings
        if len(span_ids) + 2 * B + 8 > ctx:
            raise EngineError(f"the span is {len(span_ids)} tokens, too long for the model's context of {ctx} "
                              f"tokens; select less")
        rs = replace(s, max_new_tokens=0)
        prompt = self._fim_prompt(job.prefix, job.suffix, rs, reserve=len(span_ids) + 1)
        if self.family.attention == "full":  # the span sits in place: prefix, span, suffix
            prompt = _Prompt(list(prompt.prefix_ids or []), prompt.trimmed, prompt.prefix_ids, prompt.suffix_ids)
        return prompt, span_ids, offsets, len(prompt.ids), job

    def _after_span(self, prompt: _Prompt) -> list[int]:
        """What follows the span when it is scored: EOS after the FIM middle, or the suffix in place."""
        return list(prompt.suffix_ids or []) if self.family.attention == "full" else [self.eos]

    @torch.no_grad()
    def _token_logprobs(self, ids: list[int], a: int, b: int, keep_kv: bool = False):
        """log p(token) and (best token, its log p) for positions ``[a, b)`` of ``ids``, each predicted masked.

        Block diffusion: a token is scored by masking it and predicting it, conditioned on every earlier
        block and the other tokens of its own block (the conditional a block's last denoising step uses;
        the span's right context reaches it through the suffix-first prompt). Masking one position per
        block at a time needs B passes; they run as B noisy copies of the span region over one clean
        prefill (the BD3 training layout ``[x_t ; x_0]``): the clean sequence is forwarded once under the
        block-causal mask and its keys kept; then the copies, one per batch row, each with a different
        position of every block masked, attend to the clean keys of earlier blocks and to their own block.
        Every token is scored exactly, in two forwards, at the cost of L + B * (span) tokens.

        Returns ``(logp, best)``, plus the clean keys with ``keep_kv`` (repair reuses them as its prefill).
        Autoregressive checkpoints: one causal forward, log p(token | everything before it).
        """
        L = len(ids)
        x0 = torch.tensor(ids, dtype=torch.long)
        dev = self.device
        kv = None
        if self.family.attention == "full":
            # One row per span token, that token masked and everything else visible (prefix and suffix in
            # place); shifted logits: position p is read from hidden state p - 1. Rows in bounded batches.
            targets = list(range(a, b))
            pos = torch.arange(L)
            allowed = torch.ones(1, L, L, dtype=torch.bool)
            parts = []
            for c0 in range(0, len(targets), 16):
                chunk = targets[c0: c0 + 16]
                rows = x0.repeat(len(chunk), 1)
                rows[torch.arange(len(chunk)), torch.tensor(chunk)] = self.mask
                keep = (torch.tensor(chunk) - (1 if self.family.logit_shift else 0)).clamp_min(0)[:, None]
                parts.append(forward_logits(self.model, rows.to(dev), pos.expand(len(chunk), -1).to(dev),
                                            allowed.expand(len(chunk), -1, -1).to(dev), keep=keep.to(dev))
                             .float()[:, 0])
            logits = torch.cat(parts)
        elif self.cfg.logit_shift:
            pos = torch.arange(L)
            allowed = pos[None, :] <= pos[:, None]
            logits = forward_logits(self.model, x0[None].to(dev), pos[None].to(dev), allowed[None].to(dev),
                                    keep=slice(a - 1, b - 1)).float()[0]
        else:
            B = self.cfg.block_size
            s0 = (a // B) * B
            pos = torch.arange(L)
            kv = _CleanKV(self.cfg.num_hidden_layers)
            allowed = pos[None, :] // B <= pos[:, None] // B
            forward_logits(self.model, x0[None].to(dev), pos[None].to(dev), allowed[None].to(dev), cache=kv,
                           keep=slice(0, 0))
            kv.storing = False
            region = torch.arange(s0, L)
            copies = sorted({p % B for p in range(a, b)})
            rows = x0[s0:L].repeat(len(copies), 1)
            for r, c in enumerate(copies):
                rows[r, (region >= a) & (region < b) & (region % B == c)] = self.mask
            blk = region // B
            to_clean = pos[None, :] < (blk * B)[:, None]  # [m, L]: clean keys of earlier blocks
            to_own = blk[None, :] == blk[:, None]  # [m, m]: its own block of its own copy
            mask = torch.cat([to_clean, to_own], 1)[None].expand(len(copies), -1, -1)
            h = run_body(self.model, rows.to(dev), region.expand(len(copies), -1).to(dev), mask[:, None].to(dev),
                         cache=kv).last_hidden_state
            targets = torch.arange(a, b)
            row_of = torch.tensor([copies.index(int(p) % B) for p in targets])
            logits = self.model.lm_head(h[row_of.to(dev), (targets - s0).to(dev)]).float()
        targets_ids = x0[a:b]
        logits[:, self.mask] = float("-inf")
        lp = torch.log_softmax(logits.double(), -1)
        got = lp.gather(-1, targets_ids[:, None].to(lp.device))[:, 0]
        best = lp.max(-1)
        out = got.tolist(), list(zip(best.indices.tolist(), best.values.tolist(), strict=True))
        return (*out, kv) if keep_kv else out

    def _token_scores(self, text, span_ids, offsets, logp, best, start, end) -> list[TokenScore]:
        """TokenScores (absolute offsets) for the span tokens that overlap ``[start, end)``."""
        region = whole_line_region(text, start, end)
        base = region[0] if region else start
        out = []
        for i, t in enumerate(span_ids):
            o0, o1 = offsets[i]
            s, e = base + o0, base + o1
            if s < end and max(e, s + 1) > start:
                out.append(TokenScore(s, e, self.tok.token_str(t), math.exp(logp[i]),
                                      self.tok.token_str(best[i][0])))
        return out

    def _score_at(self, scores, offsets, job, i, start, end) -> TokenScore | None:
        o0, o1 = offsets[i]
        s, e = job.hole.start + o0, job.hole.start + o1
        for sc in scores:
            if sc.start == s and sc.end == e:
                return sc
        return None

    @staticmethod
    def _flag(candidates: list[int], logp: list[float], best: list[tuple[int, float]], s: Settings) -> list[int]:
        """Indices to remask: the least likely fraction, or tokens below the threshold that the model would
        confidently replace (its best token ``repair_ratio`` times likelier), so that positions where the
        model is merely unsure (a fresh identifier, a literal) are left alone. A token the model would put there
        itself (its own first choice) is never flagged, however low its probability: re-decoding could only
        give the same token back."""
        if not candidates:
            return []
        if s.repair_fraction is not None:
            if not 0 < s.repair_fraction <= 1:
                raise EngineError("repair_fraction must be in (0, 1]")
            k = max(1, math.ceil(s.repair_fraction * len(candidates)))
            least = sorted(candidates, key=lambda i: logp[i])[:k]
            return sorted(i for i in least if logp[i] < best[i][1])
        candidates = [i for i in candidates if logp[i] < best[i][1]]
        thr = math.log(max(s.repair_threshold, 1e-300))
        margin = math.log(max(s.repair_ratio, 1.0))
        return [i for i in candidates if logp[i] < thr and best[i][1] - logp[i] >= margin]

    @torch.no_grad()
    def _inpaint(self, canvas: list[int], a: int, b: int, s: Settings, spans: list[Span],
                 callback, cancel, clean_kv: _CleanKV | None = None) -> tuple[list[int], dict[int, float], dict]:
        """Decode the masked positions of ``canvas`` in place, block by block, with a KV cache.

        Clean blocks before the next masked block are prefilled in one forward; each masked block takes
        denoising steps over the cache (same commit rule as the decoder: a confidence threshold, always the
        top-1, or a fixed number of steps), then is re-forwarded clean with the next prefill.
        ``clean_kv``: the scoring pass's keys of the same tokens; everything before the first masked block
        is taken from it instead of being forwarded again.
        """
        from model.decoder import _fixed_schedule, propose

        check = self._cancel(cancel)
        B = s.block_size or self.cfg.block_size
        L = len(canvas)
        x = torch.tensor(canvas, dtype=torch.long)
        masked_pos = [p for p in range(L) if canvas[p] == self.mask]
        blocks = sorted({p // B for p in masked_pos})
        cap = math.ceil(L / B) * B
        cache = BlockKVCache(self.cfg.num_hidden_layers, 1, cap)
        gen = torch.Generator().manual_seed(s.seed) if s.seed is not None else None
        done = 0  # positions [0, done) hold final keys in the cache
        if clean_kv is not None and clean_kv.keys[0] is not None and B == self.cfg.block_size and blocks:
            done = min(blocks[0] * B, int(clean_kv.keys[0].shape[2]))
            for i, (k, v) in enumerate(zip(clean_kv.keys, clean_kv.values, strict=True)):
                cache.keys[i] = k.new_zeros(1, k.shape[1], cap, k.shape[3])
                cache.values[i] = v.new_zeros(1, v.shape[1], cap, v.shape[3])
                cache.keys[i][:, :, :done] = k[:, :, :done]
                cache.values[i][:, :, :done] = v[:, :, :done]
        nfe = steps = 0
        new_lp: dict[int, float] = {}
        t0 = time.perf_counter()
        dev = self.device
        # the decoder's commit rule; with neither a threshold nor steps, one token per step
        rule = DecodeConfig(threshold=None if s.steps else (1.0 if s.threshold is None else s.threshold),
                            temperature=s.temperature, confidence=s.confidence)
        for blk in blocks:
            bs, be = blk * B, min(blk * B + B, L)
            if bs > done:
                q = torch.arange(done, bs)
                k = torch.arange(bs)
                allowed = (k[None, :] // B <= q[:, None] // B)
                forward_logits(self.model, x[None, done:bs].to(dev), q[None].to(dev), allowed[None].to(dev),
                               cache=cache, kv_len=bs, keep=slice(0, 0))
                nfe += 1
            n_masked = int((x[bs:be] == self.mask).sum())
            schedule = [k for k in _fixed_schedule(n_masked, s.steps or B) if k > 0] if s.steps else []
            while (x[bs:be] == self.mask).any():
                if check is not None and check():
                    raise Cancelled()
                win = x[bs:be]
                pos = torch.arange(bs, be)
                allowed = torch.ones(1, be - bs, be, dtype=torch.bool)
                logits = forward_logits(self.model, win[None].to(dev), pos[None].to(dev), allowed.to(dev),
                                        cache=cache, kv_len=be).float()[0]
                nfe += 1
                steps += 1
                logits[:, self.mask] = float("-inf")
                m = (win == self.mask).nonzero().flatten()
                x0, logp, chosen = propose(logits[m], rule, schedule, gen)
                for c in chosen.tolist():
                    p = bs + int(m[c])
                    x[p] = int(x0[c])
                    new_lp[p - a] = float(logp[c])
                if callback is not None:
                    pieces = [(("", True) if t == self.mask else (self.tok.token_str(t), False))
                              for t in x[a:b].tolist()]
                    callback(EngineStep(step=steps, nfe=nfe, elapsed_s=time.perf_counter() - t0, pieces=[pieces],
                                        committed=len(chosen), spans=list(spans)))
            done = bs
        stats = {"nfe": nfe, "steps": steps, "tokens": len(masked_pos),
                 "tokens_per_forward": round(len(masked_pos) / max(nfe, 1), 3)}
        return x.tolist(), new_lp, stats

    def _inpaint_full(self, canvas: list[int], a: int, b: int, s: Settings, spans: list[Span], callback, cancel,
                      clean_kv=None) -> tuple[list[int], dict[int, float], dict]:
        """Full-attention families: the masked positions of ``canvas`` decoded in place over the whole canvas
        (the family's diffusion loop, one step per masked token)."""
        from model.families.dream_decode import DreamConfig, dream_canvas_generate

        n_mask = sum(1 for t in canvas if t == self.mask)

        def on_step(step: int, x) -> None:
            if callback is not None:
                row = x[0, a:b].tolist()
                pieces = [("", True) if t == self.mask else (self.tok.token_str(t), False) for t in row]
                callback(EngineStep(step=step + 1, nfe=step + 1, elapsed_s=0.0, pieces=[pieces], committed=1,
                                    spans=list(spans)))

        try:
            res = dream_canvas_generate(self.model, [canvas], DreamConfig(
                steps=max(1, n_mask), temperature=s.temperature, seed=s.seed, top_k=None, alg="entropy",
                cache="dual" if s.dual_cache else "none", refresh=s.dual_cache or 8),
                callback=on_step, cancel=self._cancel(cancel))
        except DecodeCancelled as e:
            raise Cancelled() from e
        new = res.sequences[0]
        new_lp = {p - a: res.logprobs[0][p] for p in range(a, b) if canvas[p] == self.mask}
        stats = {"nfe": res.nfe, "steps": res.nfe, "tokens": n_mask,
                 "tokens_per_forward": round(n_mask / max(res.nfe, 1), 3)}
        return new, new_lp, stats

    def _batch_rows(self, tokens: int) -> int:
        """Rows per decode call whose KV cache of ``tokens`` positions fits KV_BUDGET_BYTES."""
        c = self.cfg
        head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
        elem = next(self.model.parameters()).element_size()
        per_row = c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * tokens * elem
        return max(1, min(MAX_BATCH_ROWS, KV_BUDGET_BYTES // max(per_row, 1)))

    def _whole_characters(self, old: list[int], new: list[int], offsets: list[tuple[int, int]],
                          flagged: list[int]) -> list[int]:
        """``new`` with no character broken: byte-level pieces re-decoded in place need not form UTF-8.

        A flagged token that shares a character with another token, or that alone is not whole characters,
        keeps its old id when the new ids decode to more U+FFFD than the old ones; if that is not enough, the
        span is left as it was."""
        bad = self.tok.decode(old).count("\ufffd")
        if self.tok.decode(new).count("\ufffd") <= bad:
            return new

        def shares(i: int) -> bool:
            o0, o1 = offsets[i]
            return any(j != i and offsets[j][0] < max(o1, o0 + 1) and o0 < max(offsets[j][1], offsets[j][0] + 1)
                       for j in range(max(0, i - 4), min(len(offsets), i + 5)))

        fixed = list(new)
        for i in flagged:
            if shares(i) or "\ufffd" in self.tok.decode([new[i]]):
                fixed[i] = old[i]
        return fixed if self.tok.decode(fixed).count("\ufffd") <= bad else list(old)

    def _generate(self, prompts: list[list[int]], s: Settings, stop_newline: bool, spans: list[Span],
                  callback, cancel, infill: list[_Prompt] | None = None, hints: list[int | None] | None = None):
        """Run the decoder over a batch, translating steps to EngineSteps and cancellation to Cancelled.

        ``infill``: the prompts' prefix/suffix ids, for families that fill in place (full attention); ``hints``:
        a length per hole (a regenerated span's own length)."""
        check = self._cancel(cancel)
        if self.family.attention == "full" and infill is not None:
            return self._generate_in_place(infill, hints, s, stop_newline, spans, callback, check)
        dc = self._decode_config(s, stop_newline)

        def on_step(ev: StepEvent, spans: list[Span]) -> None:
            pieces = []
            for row in ev.rows:
                toks: list[tuple[str, bool]] = []
                for t in row:
                    if t == self.eos:
                        break
                    toks.append(("", True) if t == ev.mask_id else (self.tok.token_str(t), False))
                pieces.append(toks)
            callback(EngineStep(step=ev.step, nfe=ev.nfe, elapsed_s=ev.elapsed_s, pieces=pieces,
                                committed=sum(ev.committed), spans=list(spans)))

        parts: list[DecodeResult] = []
        try:
            with self._lock:
                step = self._batch_rows(max(len(p) for p in prompts) + s.max_new_tokens)
                for a in range(0, len(prompts), step):
                    b = a + step
                    sub = spans[a:b] if len(spans) == len(prompts) else spans

                    def chunk_step(ev: StepEvent, sub=sub) -> None:
                        on_step(ev, sub)

                    parts.append(generate(self.model, prompts[a:b], dc, tokenizer=self.tok,
                                          callback=chunk_step if callback is not None else None, cancel=check,
                                          prompt_cache=self.prompt_cache))
        except DecodeCancelled as e:
            raise Cancelled() from e
        except ValueError as e:
            raise EngineError(str(e)) from e
        if len(parts) == 1:
            return parts[0]
        return DecodeResult(tokens=[t for r in parts for t in r.tokens],
                            logprobs=[lp for r in parts for lp in r.logprobs],
                            commit_steps=[c for r in parts for c in r.commit_steps],
                            finish=[f for r in parts for f in r.finish], nfe=sum(r.nfe for r in parts),
                            steps=sum(r.steps for r in parts), elapsed_s=sum(r.elapsed_s for r in parts),
                            texts=[t for r in parts for t in r.texts] if all(r.texts for r in parts) else None,
                            extra={"batches": len(parts)})

    def _generate_in_place(self, prompts: list[_Prompt], hints, s: Settings, stop_newline: bool, spans, callback,
                           check) -> DecodeResult:
        """Full-attention families: each hole is filled in place between its prefix and suffix (Dream tries a
        few canvas lengths in one batch and keeps the best; DreamOn's middle grows and shrinks)."""
        stop_ids = [i for i in (self.tok.ids.get("dlm_pad"),) if i is not None]

        def on_step(ev: StepEvent) -> None:
            pieces = [[("", True) if t == ev.mask_id else (self.tok.token_str(t), False) for t in row]
                      for row in ev.rows]
            callback(EngineStep(step=ev.step, nfe=ev.nfe, elapsed_s=ev.elapsed_s, pieces=pieces,
                                committed=sum(ev.committed), spans=list(spans)))

        try:
            with self._lock:
                res = infill_generate(self.model, [(p.prefix_ids or [], p.suffix_ids or []) for p in prompts],
                                      max_new_tokens=s.max_new_tokens, hints=hints, temperature=s.temperature,
                                      seed=s.seed, stop_ids=stop_ids, callback=on_step if callback else None,
                                      cancel=check, cache="dual" if s.dual_cache else "none",
                                      refresh=s.dual_cache or 8)
        except DecodeCancelled as e:
            raise Cancelled() from e
        except ValueError as e:
            raise EngineError(str(e)) from e
        if stop_newline:  # a single-line hole keeps its first line
            for i, t in enumerate(res.tokens):
                keep: list[int] = []
                for tok in t:
                    if "\n" in self.tok.decode(keep + [tok]):
                        break
                    keep.append(tok)
                res.tokens[i], res.logprobs[i] = keep, res.logprobs[i][: len(keep)]
        return res

    def _fill_holes(self, op: str, text: str, holes: list[Hole], parsed: Parsed, language, settings,
                    callback, cancel, rounds: int = 1) -> EditResult:
        """Fill ``holes`` in one batched decode per round.

        Round 1 conditions each hole on the others' current text (a marker, a ``pass``); each later round
        decodes every hole again with the others' answers from the round before in its context (a Jacobi
        sweep: still one batched call per round).
        """
        if rounds < 1:
            raise EngineError("rounds must be at least 1")
        s = settings or self.settings
        spans = [h.span(text) for h in holes]
        jobs = [self._job(text, h) for h in holes]
        nfe = steps = 0
        trimmed = False
        outs: list[tuple[_Job, str]] = []
        for rnd in range(rounds):
            if rnd:
                segs = [text[: holes[0].start]] + [text[holes[i].end: holes[i + 1].start]
                                                   for i in range(len(holes) - 1)] + [text[holes[-1].end:]]
                answers = [out for _, out in outs]
                jobs = [_Job(h, "".join(segs[k] + answers[k] for k in range(i)) + segs[i],
                             "".join(segs[k] + answers[k] for k in range(i + 1, len(holes))) + segs[-1]
                             if i + 1 < len(holes) else segs[-1], text[h.start: h.end])
                        for i, h in enumerate(holes)]
            prompts = [self._fim_prompt(j.prefix, j.suffix, s) for j in jobs]
            trimmed = trimmed or any(p.trimmed for p in prompts)
            res = self._generate([p.ids for p in prompts], s, all(h.single_line for h in holes), spans,
                                 callback, cancel, infill=prompts)
            nfe += res.nfe
            steps += res.steps
            answers = [self._answer(j, self.tok.decode(res.tokens[i])) for i, j in enumerate(jobs)]
            outs = [(j, out) for j, (out, _) in zip(jobs, answers, strict=True)]
        empty = [i for i, (_, e) in enumerate(answers) if e]
        # An empty answer is "no suggestion": its hole keeps its text, and it does not count in the score.
        scored = [i for i in range(len(jobs)) if i not in empty]
        score = sum(res.score(i) for i in scored) / len(scored) if scored else float("-inf")
        cand = self._candidate(text, outs, score, parsed, empty=len(empty) == len(jobs))
        message = None
        if len(empty) == len(jobs):
            message = "no suggestion: the model answered nothing for " + \
                ("this hole" if len(jobs) == 1 else f"any of the {len(jobs)} holes")
        elif empty:
            message = f"{len(empty)} of {len(jobs)} holes got no suggestion (the model answered nothing): " \
                      "left as they were"
        r = self._result(op, text, [cand], spans, parsed, language, res, _Prompt(prompts[0].ids, trimmed),
                         message=message)
        r.stats.update(holes=len(holes), rounds=rounds, nfe=nfe, steps=steps, empty_answers=len(empty),
                       confidence=self._confidence(res, scored))
        return r

    @staticmethod
    def _confidence(res, rows: list[int]) -> float | None:
        """Mean probability of the tokens the model wrote in ``rows`` (when it committed them); None if none."""
        probs = [math.exp(lp) for i in rows for lp in res.logprobs[i]]
        return round(sum(probs) / len(probs), 4) if probs else None

    def _answer(self, job: _Job, raw: str) -> tuple[str, bool]:
        """(the region's new text, whether the answer was empty).

        Nothing, or only whitespace, once tidied (EOS at once, a one-line hole answered with a line break, a
        repeat of the text after the region) is no suggestion: the region keeps its text instead of being
        deleted; a deletion must never be the model's way of saying nothing.
        """
        out = self._tidy(job, raw)
        if out.strip():
            return out, False
        return job.original, True

    def _finish(self, job: _Job, raw: str) -> str:
        """The region's new text for a generated middle: ``_tidy``, and the region as it was for an empty answer."""
        return self._answer(job, raw)[0]

    def _tidy(self, job: _Job, raw: str) -> str:
        """Cut and tidy a generated middle the way the task is defined.

        One-line holes end at the first newline; whole-line regions end with exactly one line break and
        no trailing blanks on their lines; nothing that already follows the region is repeated.
        """
        h = job.hole
        out = raw.replace("\r\n", "\n")
        if h.single_line:
            nl = out.find("\n")
            if nl >= 0:
                out = out[: nl + 1] if h.whole_lines else out[:nl]
        if h.whole_lines:
            lines = [ln.rstrip() for ln in out.split("\n")]
            while lines and not lines[-1]:
                lines.pop()
            # A region written shallower than the lines it replaces would break out of its block: shift it in.
            want = _indent(job.original.split("\n", 1)[0]) if job.original.strip() else ""
            first = next((ln for ln in lines if ln.strip()), None)
            if first is not None and _indent_width(_indent(first)) < _indent_width(want):
                have = _indent(first)
                pad = want[len(have):] if want.startswith(have) else want
                lines = [pad + ln if ln.strip() else ln for ln in lines]
            suffix_lines = [ln.rstrip() for ln in job.suffix.replace("\r\n", "\n").split("\n")]
            while suffix_lines and not suffix_lines[0]:  # blank lines between don't hide a repeat
                suffix_lines.pop(0)
            for k in range(min(len(lines), len(suffix_lines)), 0, -1):
                if lines[-k:] == suffix_lines[:k] and any(x.strip() for x in lines[-k:]):
                    lines = lines[:-k]
                    while lines and not lines[-1]:
                        lines.pop()
                    break
            out = "".join(ln + "\n" for ln in lines)
            if not job.suffix and job.original and not job.original.endswith("\n"):
                out = out.rstrip("\n")  # the file's last line had no line break: neither has its replacement
        else:
            rest = job.suffix.split("\n", 1)[0].rstrip("\r")
            if h.single_line:
                if not rest.strip():
                    out = out.rstrip()
                else:
                    r = rest.strip()
                    o = out.rstrip()
                    if o.endswith(r) and len(o) > len(r):
                        out = o[: len(o) - len(r)].rstrip() if rest.startswith(" ") else o[: len(o) - len(r)]
            else:  # several lines written from inside a line (after "def f():" or a "{")
                lines = [ln.rstrip() for ln in out.split("\n")]
                suffix_lines = [ln.rstrip() for ln in job.suffix.replace("\r\n", "\n").split("\n")][1:]
                for k in range(min(len(lines) - 1, len(suffix_lines)), 0, -1):
                    if lines[-k:] == suffix_lines[:k] and any(x.strip() for x in lines[-k:]):
                        lines = lines[:-k]
                        break
                out = "\n".join(lines).rstrip()
        return _newlines_like(job, out)

    def _indentation_ok(self, text: str, job: _Job, out: str) -> bool:
        """False when the new text would move the code around it into another block, or mixes tabs/spaces.

        The first line must keep the region's indentation and no later line may dedent below it; for an
        insertion on a blank line, the indentation of the line after the region is the reference.
        """
        file_indents = [_indent(ln) for ln in text.splitlines() if ln.strip() and _indent(ln)]
        uses_tabs = sum(1 for i in file_indents if i.startswith("\t")) > len(file_indents) / 2
        lines = [ln for ln in out.replace("\r\n", "\n").split("\n") if ln.strip()]
        if not lines:
            return True
        for ln in lines:
            ind = _indent(ln)
            if ind and (("\t" in ind) != uses_tabs) and file_indents:
                return False
        if job.hole.whole_lines:
            if job.hole.indent is not None:
                ref = _indent_width(job.hole.indent)
            else:  # a bare blank line: after an opener the block goes one level in, else the next line's level
                nxt = [ln for ln in job.suffix.split("\n") if ln.strip()]
                prv = [ln for ln in job.prefix.split("\n") if ln.strip()]
                if prv and prv[-1].rstrip().endswith((":", "{")):
                    ref = _indent_width(_indent(prv[-1])) + 1
                    return all(_indent_width(_indent(ln)) >= ref for ln in lines)
                if not nxt and not prv:
                    return True
                ref = _indent_width(_indent(nxt[0] if nxt else prv[-1]))
            if _indent_width(_indent(lines[0])) != ref:
                return False
            return all(_indent_width(_indent(ln)) >= ref for ln in lines)
        line_start = job.prefix.rfind("\n") + 1
        ref = _indent_width(_indent(job.prefix[line_start:]))
        return all(_indent_width(_indent(ln)) >= ref for ln in lines[1:])

    def _candidate(self, text: str, outs: list[tuple[_Job, str]], score: float, parsed: Parsed,
                   empty: bool = False) -> Candidate:
        edits = []
        for job, out in outs:
            e = _minimal_edit(job.hole.start, job.original, out)
            if e is not None:
                edits.append(e)
        new_text = apply_edits(text, edits)
        parses = True
        if parsed.tree is not None and edits:
            after = parse(new_text, parsed.language).errors
            parses = after == 0 or (parsed.errors > 0 and after <= parsed.errors)
            if parses and parsed.language == "python" and _python_compiles(text):
                # tree-sitter-python tolerates an empty or dedented block; CPython's parser does not.
                parses = _python_compiles(new_text)
        indent_ok = all(self._indentation_ok(text, job, out) for job, out in outs)
        return Candidate(edits, new_text, unified_diff(text, new_text), float(score), parses, indent_ok, empty)

    def _result(self, op: str, text: str, cands: list[Candidate], spans: list[Span], parsed: Parsed,
                language, res, prompt: _Prompt | None, message: str | None = None, **extra) -> EditResult:
        best = cands[0]
        if best.edits and not best.parses and parsed.tree is not None and parsed.errors == 0:
            # The original parsed and the suggestion does not: every front end says so, not only --json.
            note = f"the suggestion does not parse ({parsed.language}); check it before keeping it"
            message = f"{message}; {note}" if message else note
        stats: dict = {"language": parsed.language or "plain text", "syntax": parsed.syntax}
        if language and normalize_language(language) is None:
            stats["notice"] = f"no grammar for {language!r}: plain-text fallback"
        elif parsed.syntax == "errors":
            stats["notice"] = "the file does not parse; spans and checks fall back to what tree-sitter recovered"
        if res is not None:
            stats.update(nfe=res.nfe, steps=res.steps, tokens=res.generated,
                         tokens_per_forward=round(res.tokens_per_forward, 3), elapsed_s=round(res.elapsed_s, 4),
                         finish=list(res.finish), prompt_tokens_reused=res.extra.get("prompt_tokens_reused", 0))
        if prompt is not None:
            stats.update(prompt_tokens=len(prompt.ids), context_trimmed=prompt.trimmed)
        stats.update(extra)
        return EditResult(op=op, edits=best.edits, new_text=best.new_text, diff=best.diff, candidates=cands,
                          spans=spans, stats=stats, message=message)

    @staticmethod
    def _extract_code(reply: str) -> str:
        m = re.search(r"```[^\n`]*\n(.*?)(?:```|$)", reply, re.DOTALL)
        return m.group(1) if m else reply.strip("\n")

    @staticmethod
    def _reindent(job: _Job, code: str) -> str:
        """Give a reply written at column 0 the indentation of the span it replaces."""
        orig = [ln for ln in job.original.split("\n") if ln.strip()]
        new = [ln for ln in code.split("\n") if ln.strip()]
        if not orig or not new or not job.hole.whole_lines:
            return code
        want = _indent(orig[0])
        have = min((_indent(ln) for ln in new), key=len)
        if want and not have:
            return "\n".join((want + ln) if ln.strip() else ln for ln in code.split("\n"))
        return code

