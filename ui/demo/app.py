"""The Gradio web demo: watch a block-diffusion model fill, regenerate, repair and rewrite code.

One ``Engine`` (one model instance) serves every visitor. Model calls run one at a time: their listeners
share ``concurrency_id="model"`` with ``concurrency_limit=1``, and the worker thread also holds a lock, so
a job cancelled mid-forward finishes its step before the next one starts. The engine runs in a thread and
its ``EngineStep`` callbacks go through a queue into a generator, so the page redraws at every denoising
step. Errors are reported in the page (a status line and a toast), never as a stack trace.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network: before gradio is imported

import dataclasses
import difflib
import html
import json
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import gradio as gr

from assistant.api import Cancelled, CancelToken, EditResult, EngineError, EngineStep, InstructModelRequired, Settings
from assistant.positions import line_starts

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).parent / "examples"

# Input limits: a public demo must not let one visitor occupy the model for minutes.
MAX_CHARS = 20_000
MAX_LINES = 1_000
MAX_INSTRUCTION_CHARS = 1_000
MAX_NEW_TOKENS = 512
MAX_CANDIDATES = 8
MAX_STEPS = 64
MAX_BLOCK_SIZE = 64
MAX_FILL_ALL_TOKENS = 8_192  # holes x max new tokens for "fill" with no span (every hole of the code)

# Languages the engine knows -> the gr.Code highlighter for them (None: plain text).
LANGUAGES: dict[str, str | None] = {
    "python": "python", "javascript": "javascript", "typescript": "typescript", "c": "c", "cpp": "cpp",
    "rust": None, "go": None, "java": None,
}
EXTENSIONS = {".py": "python", ".js": "javascript", ".mjs": "javascript", ".ts": "typescript", ".c": "c",
              ".h": "c", ".cpp": "cpp", ".cc": "cpp", ".hpp": "cpp", ".rs": "rust", ".go": "go", ".java": "java"}

OPS = ("fill", "regenerate", "repair", "instruct")

THEME = gr.themes.Default(  # system fonts only: nothing fetched from a font CDN
    font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace"],
)

CODE_CSS = """
.rm-code { font-family: var(--font-mono); font-size: 13px; line-height: 1.45; white-space: pre-wrap;
  word-break: break-all; margin: 0; padding: 8px 10px; border: 1px solid var(--border-color-primary);
  border-radius: var(--radius-md); background: var(--background-fill-secondary); max-height: 460px; overflow: auto; }
.rm-ctx { color: var(--body-text-color-subdued); }
.rm-mask { color: #9aa4b2; background: rgba(148, 163, 184, 0.22); }
.rm-new { background: rgba(250, 204, 21, 0.55); color: var(--body-text-color); }
.rm-gen { background: rgba(34, 197, 94, 0.18); color: var(--body-text-color); }
.rm-head { color: #6366f1; font-weight: 600; }
.rm-add { background: rgba(34, 197, 94, 0.18); display: block; }
.rm-del { background: rgba(239, 68, 68, 0.18); display: block; }
.rm-hunk { color: #6366f1; display: block; }
.rm-empty { color: var(--body-text-color-subdued); font-style: italic; }
"""

# Reads the CodeMirror selection of the editor (gr.Code has no select event) as code-point offsets and
# line numbers. Newer CodeMirror keeps its view at `.cm-content`.cmTile.root.view, older at .cmView.view.
SELECTION_JS = """
(chars, lines) => {
  const el = document.querySelector('#rm-editor .cm-content');
  const tile = el && (el.cmTile || el.cmView);
  const view = tile && ((tile.root && tile.root.view) || tile.view);
  if (!view) { return [chars, lines]; }
  const sel = view.state.selection.main;
  const cp = (a, b) => [...view.state.sliceDoc(a, b)].length;
  const start = cp(0, sel.from);
  const end = start + cp(sel.from, sel.to);
  const l0 = view.state.doc.lineAt(sel.from).number, l1 = view.state.doc.lineAt(sel.to).number;
  return [start === end ? `${start}` : `${start}-${end}`, l0 === l1 ? `${l0}` : `${l0}-${l1}`];
}
"""


class Verbatim(str):
    """Code for a ``gr.Code`` output, kept exactly.

    ``gr.Code.postprocess`` returns ``value.strip()``, which would eat the first line's indentation and the
    final newline of every applied edit. A str whose ``strip()`` is the identity survives it; a subclass of
    ``gr.Code`` would not (Gradio rebuilds components per session from their class, and writes a .pyi stub
    next to the module that defines one).
    """

    __slots__ = ()

    def strip(self, chars: str | None = None) -> str:
        return str(self)


# ----------------------------------------------------------------------------------------------- helpers


def load_examples(folder: Path = EXAMPLES_DIR) -> dict[str, str]:
    """Example files by name (sorted), read as text."""
    if not folder.is_dir():
        return {}
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix in EXTENSIONS}


def language_of(name: str, engine: Any = None) -> str:
    """The engine language for a file name (the engine decides when it can)."""
    lang = None
    if engine is not None and hasattr(engine, "language_for"):
        try:
            lang = engine.language_for(name)
        except Exception:  # noqa: BLE001 - a guess is enough here
            lang = None
    if lang not in LANGUAGES:
        lang = EXTENSIONS.get(Path(name).suffix, "python")
    return lang


def line_span(text: str, first: int, last: int) -> tuple[int, int]:
    """Offsets [start, end) of 1-based lines ``first``..``last`` inclusive, without the final line break."""
    starts = line_starts(text)  # \n, \r\n or \r only, as in the editor (not \x0c or U+2028)
    n = len(starts)
    if not 1 <= first <= n:
        raise EngineError(f"line {first} is outside the file (it has {n} lines)")
    if not first <= last <= n:
        raise EngineError(f"'to line' must be between {first} and {n}, not {last}")
    start, last_start = starts[first - 1], starts[last - 1]
    last_line = text[last_start: starts[last] if last < n else len(text)]
    return start, last_start + len(last_line.rstrip("\r\n"))


def _int_or_none(v: Any) -> int | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError) as e:
        raise EngineError(f"{v!r} is not a number") from e
    if not math.isfinite(f) or f != int(f):
        raise EngineError(f"{v!r} is not a whole number")
    return int(f)


def parse_range(value: Any, what: str) -> tuple[int, int] | None:
    """``"5"``, ``"5-7"``, ``"5:7"`` or ``"5..7"`` -> (5, 7); empty -> None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        n = _int_or_none(value)
        return (n, n) if n is not None else None
    s = str(value).strip()
    if not s:
        return None
    for sep in ("..", "-", ":", ","):
        if sep in s:
            a, b = s.split(sep, 1)
            break
    else:
        a = b = s
    try:
        lo, hi = int(a.strip()), int(b.strip())
    except ValueError as e:
        raise EngineError(f"{what} {s!r} is not a number or a range like 5-7") from e
    if lo < 0 or hi < 0:
        raise EngineError(f"{what} {s!r} must not be negative")
    return (lo, hi) if lo <= hi else (hi, lo)


def resolve_span(text: str, lines: Any, chars: Any) -> tuple[int, int] | None:
    """The span the visitor picked: character offsets when given, else a line range (1-based), else None."""
    c = parse_range(chars, "selection")
    if c is not None:
        if c[1] > len(text):
            raise EngineError(f"selection end {c[1]} is past the end of the code ({len(text)} characters)")
        return c
    r = parse_range(lines, "line range")
    if r is None:
        return None
    return line_span(text, r[0], r[1])


def check_inputs(text: str | None, instruction: str | None = None) -> str:
    """The code, or a clear EngineError when it is missing or too large for the demo."""
    if text is None or not text.strip():
        raise EngineError("the editor is empty: type some code or pick an example")
    if len(text) > MAX_CHARS:
        raise EngineError(f"the code is {len(text):,} characters; this demo accepts at most {MAX_CHARS:,}")
    n_lines = len(line_starts(text))
    if n_lines > MAX_LINES:
        raise EngineError(f"the code has {n_lines:,} lines; this demo accepts at most {MAX_LINES:,}")
    if instruction is not None and len(instruction) > MAX_INSTRUCTION_CHARS:
        raise EngineError(f"the instruction is {len(instruction):,} characters; the limit is {MAX_INSTRUCTION_CHARS:,}")
    return text


def make_settings(base: Settings, threshold: Any, steps: Any, block_size: Any, temperature: Any,
                  candidates: Any, seed: Any, max_new_tokens: Any) -> Settings:
    """Settings from the controls, validated (API callers can send anything)."""
    steps_i = _int_or_none(steps) or 0
    block_i = _int_or_none(block_size) or 0
    n = _int_or_none(candidates)
    n = 1 if n is None else n
    seed_i = _int_or_none(seed)
    mnt = _int_or_none(max_new_tokens)
    mnt = base.max_new_tokens if mnt is None else mnt
    if seed_i is not None and seed_i >= 2**63:
        raise EngineError(f"seed must be below 2**63, not {seed_i}")
    try:
        thr = float(threshold) if threshold not in (None, "") else 0.9
        temp = float(temperature) if temperature not in (None, "") else 0.0
    except (TypeError, ValueError) as e:
        raise EngineError(f"threshold and temperature must be numbers: {e}") from e
    if not 0.0 < thr <= 1.0:
        raise EngineError(f"threshold must be in (0, 1], not {thr}")
    if not 0 <= steps_i <= MAX_STEPS:
        raise EngineError(f"steps per block must be 0 (use the threshold) to {MAX_STEPS}, not {steps_i}")
    if not 0 <= block_i <= MAX_BLOCK_SIZE:
        raise EngineError(f"block size must be 0 (the model's) to {MAX_BLOCK_SIZE}, not {block_i}")
    if not 0.0 <= temp <= 2.0:
        raise EngineError(f"temperature must be between 0 and 2, not {temp}")
    if not 1 <= n <= MAX_CANDIDATES:
        raise EngineError(f"candidates must be 1 to {MAX_CANDIDATES}, not {n}")
    if not 1 <= mnt <= MAX_NEW_TOKENS:
        raise EngineError(f"max new tokens must be 1 to {MAX_NEW_TOKENS}, not {mnt}")
    return dataclasses.replace(
        base, threshold=None if steps_i else thr, steps=steps_i or None, block_size=block_i or None,
        temperature=temp, candidates=n, seed=None if seed_i is None or seed_i < 0 else seed_i, max_new_tokens=mnt)


def _esc(s: str) -> str:
    return html.escape(s, quote=False)


def _context(text: str, start: int, end: int, keep: int, where: str) -> str:
    """``text[start:end]`` cut to ``keep`` lines at its start ("head"), end ("tail") or both ("both")."""
    chunk = text[start:end]
    lines = chunk.split("\n")
    if where == "tail" and len(lines) > keep:
        return "⋯\n" + "\n".join(lines[-keep:])
    if where == "head" and len(lines) > keep:
        return "\n".join(lines[:keep]) + "\n⋯"
    if where == "both" and len(lines) > 2 * keep:
        return "\n".join(lines[:keep]) + "\n⋯\n" + "\n".join(lines[-keep:])
    return chunk


def render_pieces(pieces: list[tuple[str, bool]], before: list[bool] | None, placeholder: str = "░") -> str:
    """One span's tokens as HTML: masked ones as placeholders, the ones committed by this step highlighted."""
    out = []
    for i, (tok, masked) in enumerate(pieces):
        if masked:
            out.append(f'<span class="rm-mask">{placeholder}</span>')
        elif before is None or i >= len(before) or before[i]:
            out.append(f'<span class="rm-new">{_esc(tok)}</span>')
        else:
            out.append(f'<span class="rm-gen">{_esc(tok)}</span>')
    return "".join(out)


def render_step(step: EngineStep, text: str, span: tuple[int, int] | None,
                previous: list[list[bool]] | None, context_lines: int = 4) -> str:
    """The document around the spans being denoised, as it stands after ``step``."""
    prev = previous or []
    parts: list[str] = []
    spans = sorted(step.spans, key=lambda s: s.start) if step.spans else []
    disjoint = all(x.end <= y.start and (x.start, x.end) != (y.start, y.end) for x, y in pairwise(spans))
    if spans and len(spans) == len(step.pieces) and disjoint:  # each span in place in the document (fill all)
        pos = 0
        for i, (sp, pieces) in enumerate(zip(spans, step.pieces, strict=True)):
            where = "tail" if i == 0 else "both"
            parts.append(f'<span class="rm-ctx">{_esc(_context(text, pos, sp.start, context_lines, where))}</span>')
            parts.append(render_pieces(pieces, prev[i] if i < len(prev) else None))
            pos = sp.end
        parts.append(f'<span class="rm-ctx">{_esc(_context(text, pos, len(text), context_lines, "head"))}</span>')
    else:
        if step.spans:  # the engine's region (it may widen a selection to whole lines)
            span = (step.spans[0].start, step.spans[0].end)
        many = len(step.pieces) > 1
        for i, pieces in enumerate(step.pieces):
            if many:
                parts.append(f'<span class="rm-head">── candidate {i + 1} ──</span>\n')
            if span and (i == 0 or not many):
                parts.append(f'<span class="rm-ctx">{_esc(_context(text, 0, span[0], context_lines, "tail"))}</span>')
            parts.append(render_pieces(pieces, prev[i] if i < len(prev) else None))
            if span and not many:
                parts.append(f'<span class="rm-ctx">{_esc(_context(text, span[1], len(text), context_lines, "head"))}'
                             '</span>')
            if many:
                parts.append("\n\n")
    return f'<pre class="rm-code">{"".join(parts)}</pre>'


def step_status(op: str, step: EngineStep, committed_total: int, masked: int) -> str:
    total = committed_total + masked
    return (f"**{op}** · step {step.step} · **{step.committed}** token(s) committed this step · "
            f"{committed_total}/{total} generated · {step.nfe} forward pass(es) · {step.elapsed_s:.2f} s")


def render_diff(diff: str) -> str:
    """A unified diff as coloured HTML lines."""
    if not diff.strip():
        return '<pre class="rm-code"><span class="rm-empty">no change</span></pre>'
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            out.append(f'<span class="rm-head">{_esc(line)}</span>\n')
        elif line.startswith("+"):
            out.append(f'<span class="rm-add">{_esc(line)}</span>')
        elif line.startswith("-"):
            out.append(f'<span class="rm-del">{_esc(line)}</span>')
        elif line.startswith("@@"):
            out.append(f'<span class="rm-hunk">{_esc(line)}</span>')
        else:
            out.append(_esc(line) + "\n")
    return f'<pre class="rm-code">{"".join(out)}</pre>'


def make_diff(old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        "before", "after"))


def _fmt_count(n: Any) -> str:
    try:
        n = float(n)
    except (TypeError, ValueError):
        return str(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def find_model_dir(engine: Any, model_dir: str | Path | None) -> Path | None:
    """The checkpoint folder, given or guessed from what the engine says about itself."""
    if model_dir:
        p = Path(model_dir)
        return p if p.is_dir() else None
    info = getattr(engine, "info", None) or {}
    for key in ("folder", "path", "model_dir", "description", "name"):
        v = info.get(key)
        if not isinstance(v, str):
            continue
        for cand in (v, v[v.find("(") + 1: v.rfind(")")] if "(" in v else None):
            if cand and len(cand) < 4096 and Path(cand).is_dir():
                return Path(cand)
    return None


def model_card(engine: Any, model_dir: str | Path | None = None) -> str:
    """Markdown for the model panel: what the engine reports, then model_card.json, then MODEL.md/README.md."""
    info = dict(getattr(engine, "info", None) or {})
    params = _fmt_count(info["parameters"]) if "parameters" in info else None
    rows = [("name", info.get("name")), ("parameters", params),
            ("kind", info.get("kind")), ("block size", info.get("block_size")),
            ("instruct", "yes" if info.get("instruct") else "no"), ("description", info.get("description"))]
    folder = find_model_dir(engine, model_dir)
    card: dict[str, Any] = {}
    readme = ""
    if folder is not None:
        try:
            card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
            if not isinstance(card, dict):
                card = {}
        except (OSError, ValueError):
            card = {}
        for name in ("MODEL.md", "README.md"):
            try:
                readme = (folder / name).read_text(encoding="utf-8")
                break
            except OSError:
                continue
    evals = card.pop("evaluation", None) or card.pop("evals", None)
    if card.get("name"):  # the card names the model better than its folder does
        rows[0] = ("name", card.pop("name"))
    for key in ("training_tokens", "tokens"):
        if key in card:
            rows.append(("training tokens", _fmt_count(card.pop(key))))
    for k, v in card.items():
        if not isinstance(v, (dict, list)):
            rows.append((k.replace("_", " "), v))
    md = ["| model | |", "|---|---|"] + [f"| {k} | {_md_cell(v)} |" for k, v in rows if v not in (None, "")]
    if isinstance(evals, dict) and evals:
        md += ["", "**Evaluation**", "", "| benchmark | score |", "|---|---|"]
        md += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in evals.items()]
    if "RANDOM" in str(info.get("description", "")):
        md += ["", "⚠️ This model is **randomly initialised**: its output is noise. The demo shows the mechanics."]
    if readme:
        if readme.startswith("---"):
            end = readme.find("\n---", 3)
            readme = readme[end + 4:] if end > 0 else readme
        md += ["", readme.strip()[:8000]]
    return "\n".join(md)


def _md_cell(v: Any) -> str:
    if isinstance(v, float):
        v = f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------------------------------------- app


class DemoApp:
    """The handlers, bound to one engine. Kept apart from the layout so they can be called directly."""

    def __init__(self, engine: Any, model_dir: str | Path | None = None, examples: dict[str, str] | None = None):
        self.engine = engine
        self.model_dir = model_dir
        self.examples = load_examples() if examples is None else examples
        self._model_lock = threading.Lock()  # one forward pass at a time, even past a cancelled generator
        self._active: dict[str, CancelToken] = {}  # session -> the running job's token, for Stop
        self._active_lock = threading.Lock()

    # -- the engine in a thread, its steps through a queue

    def stream(self, call: Callable[..., EditResult], session: str = "") -> Iterator[EngineStep | EditResult]:
        """Run ``call(callback=..., cancel=...)`` in a thread; yield each EngineStep, then the EditResult.

        Closing the generator (Gradio's cancel, a dropped client) cancels the engine between steps.
        """
        q: queue.Queue = queue.Queue()
        cancel = CancelToken()
        done = object()

        def work() -> None:
            try:
                with self._model_lock:
                    if cancel.cancelled:
                        raise Cancelled("cancelled before it started")
                    result = call(callback=q.put, cancel=cancel)
                q.put((done, result, None))
            except BaseException as e:  # noqa: BLE001 - handed to the generator, which reports it
                q.put((done, None, e))

        with self._active_lock:
            old = self._active.get(session)
            if old is not None:
                old.cancel()
            self._active[session] = cancel
        thread = threading.Thread(target=work, name="remask-demo-engine", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, tuple) and len(item) == 3 and item[0] is done:
                    if item[2] is not None:
                        raise item[2]
                    yield item[1]
                    return
                yield item
        finally:
            if thread.is_alive():
                cancel.cancel()
            with self._active_lock:
                if self._active.get(session) is cancel:
                    del self._active[session]

    def stop(self, request: gr.Request | None = None) -> str:
        """Cancel this visitor's running job (between denoising steps)."""
        session = getattr(request, "session_hash", None) or ""
        with self._active_lock:
            token = self._active.get(session)
        if token is None:
            return "Nothing is running."
        token.cancel()
        return "Stopping…"

    # -- the operations

    def _call_for(self, op: str, text: str, span: tuple[int, int] | None, language: str | None,
                  instruction: str, settings: Settings) -> Callable[..., EditResult]:
        eng = self.engine
        if op == "fill":
            if span is None:
                holes = len(eng.holes(text, language))
                work = holes * settings.max_new_tokens
                if work > MAX_FILL_ALL_TOKENS:
                    raise EngineError(f"{holes} holes x {settings.max_new_tokens} new tokens is more than this demo "
                                      f"decodes in one request ({MAX_FILL_ALL_TOKENS:,} tokens): lower max new "
                                      "tokens or pick one hole")
                return lambda **kw: eng.fill_all(text, language=language, settings=settings, **kw)
            return lambda **kw: eng.fill(text, span[0], span[1], language=language, settings=settings, **kw)
        if span is None:
            raise EngineError(f"{op} needs a span: type 'Lines' (e.g. 9-11) or 'Characters', pick a hole, "
                              "or select code in the editor and press 'Use editor selection'")
        if op == "regenerate":
            return lambda **kw: eng.regenerate(text, span[0], span[1], language=language, n=settings.candidates,
                                               settings=settings, **kw)
        if op == "repair":
            return lambda **kw: eng.repair(text, span[0], span[1], language=language, settings=settings, **kw)
        if op == "instruct":
            if not (getattr(eng, "info", None) or {}).get("instruct"):
                raise InstructModelRequired(
                    "edit-with-instruction needs an instruct model (kind 'bd-instruct'); this one is a base model. "
                    "Start the demo with --model pointing at an instruct checkpoint, or use fill/regenerate/repair.")
            if not instruction or not instruction.strip():
                raise EngineError("write an instruction first, e.g. 'rename x to count'")
            return lambda **kw: eng.instruct(text, span[0], span[1], instruction.strip(), language=language,
                                             settings=settings, **kw)
        raise EngineError(f"unknown operation {op!r}")

    def run(self, op: str, text: str, language: str | None, lines: Any, chars: Any, instruction: str,
            threshold: Any, steps: Any, block_size: Any, temperature: Any, candidates: Any, seed: Any,
            max_new_tokens: Any, request: gr.Request | None = None) -> Iterator[tuple]:
        """Generator behind every operation button: yields (status, live, diff, code, candidates, details, state)."""
        skip = gr.skip()
        try:
            text = check_inputs(text, instruction)
            span = resolve_span(text, lines, chars)
            settings = make_settings(self.engine.settings, threshold, steps, block_size, temperature, candidates,
                                     seed, max_new_tokens)
            lang = language if language in LANGUAGES else None
            call = self._call_for(op, text, span, lang, instruction or "", settings)
        except EngineError as e:
            yield self._error(op, e)
            return
        yield (f"**{op}** · waiting for the model…", '<pre class="rm-code"><span class="rm-empty">…</span></pre>',
               "", "", gr.update(choices=[], value=None, visible=False), None, None)
        previous: list[list[bool]] | None = None
        committed = 0
        session = getattr(request, "session_hash", None) or ""
        try:
            for item in self.stream(call, session):
                if isinstance(item, EngineStep):
                    live = render_step(item, text, span, previous)
                    previous = [[m for _, m in p] for p in item.pieces]
                    masked = sum(m for p in previous for m in p)
                    committed = sum(len(p) for p in previous) - masked
                    yield step_status(op, item, committed, masked), live, skip, skip, skip, skip, skip
                else:
                    yield self._final(op, text, item)
        except Cancelled:
            yield "**Stopped.** Nothing was changed.", skip, skip, skip, skip, skip, skip
        except EngineError as e:
            yield self._error(op, e)
        except Exception as e:  # noqa: BLE001 - the page shows a message, the log keeps the trace
            log.exception("demo %s failed", op)
            yield self._error(op, f"internal error ({type(e).__name__}: {e})")

    @staticmethod
    def _error(op: str, e: Exception | str) -> tuple:
        msg = str(e) or type(e).__name__
        gr.Warning(msg)
        skip = gr.skip()
        return f"**Error** ({op}): {_esc(msg)}", skip, skip, skip, skip, skip, skip

    def _final(self, op: str, text: str, result: EditResult) -> tuple:
        cands = result.candidates or []
        stats = result.stats or {}
        bits = [f"**{op}** done"]
        if "steps" in stats:
            bits.append(f"{stats['steps']} step(s)")
        if "nfe" in stats:
            bits.append(f"{stats['nfe']} forward pass(es)")
        if "tokens" in stats:
            bits.append(f"{stats['tokens']} token(s)")
        if stats.get("tokens_per_forward") is not None:
            bits.append(f"{float(stats['tokens_per_forward']):.2f} tokens/forward")
        if "elapsed_s" in stats:
            bits.append(f"{float(stats['elapsed_s']):.2f} s")
        status = " · ".join(bits)
        if stats.get("notice"):
            status += f"\n\n*{_esc(str(stats['notice']))}*"
        if result.flagged:
            shown = ", ".join(f"`{t.text.strip() or repr(t.text)}` ({t.prob:.3f})" for t in result.flagged[:12])
            status += f"\n\nImprobable tokens: {shown}"
        state = {"text": text, "op": op, "stats": self._plain_stats(stats), "candidates": [
            {"new_text": c.new_text if not getattr(c, "empty", False) else text,
             "diff": "" if getattr(c, "empty", False) else c.diff or make_diff(text, c.new_text),
             "score": c.score if isinstance(c.score, (int, float)) and math.isfinite(c.score) else None,
             "parses": c.parses,
             "empty": bool(getattr(c, "empty", False)),
             "edits": [] if getattr(c, "empty", False) else [dataclasses.asdict(e) for e in c.edits]} for c in cands]}
        if not state["candidates"]:
            state["candidates"] = [{"new_text": result.new_text,
                                    "diff": result.diff or make_diff(text, result.new_text), "score": None,
                                    "parses": True, "empty": False,
                                    "edits": [dataclasses.asdict(e) for e in result.edits]}]
        # the best candidate that says something: an empty answer is never the one shown first
        order = sorted(range(len(state["candidates"])), key=lambda i: state["candidates"][i]["empty"])
        best_i = order[0]
        best = state["candidates"][best_i]
        if best["empty"] or (best["new_text"] == text and not best["edits"]):
            status = status.replace(f"**{op}** done", f"**{op}** · no change", 1)  # not "done": nothing was
        status += self._notes(text, best, getattr(result, "message", None))
        live = self._final_live(text, result) if not best["empty"] else \
            '<pre class="rm-code"><span class="rm-empty">no suggestion</span></pre>'
        choices = [(self._cand_label(i, c), i) for i, c in enumerate(state["candidates"])]
        radio = gr.update(choices=choices, value=best_i, visible=len(choices) > 1)
        return (status, live, render_diff(best["diff"]), Verbatim(best["new_text"]), radio,
                self._details(op, best, state["stats"]), state)

    @staticmethod
    def _notes(text: str, best: dict, message: str | None) -> str:
        """What the visitor must know about the result, in the status line: the engine's message, no suggestion
        (the model answered nothing), a suggestion that does not parse (also with a single candidate)."""
        notes: list[str] = []
        if message:
            notes.append(message)
        if best["empty"] or (best["new_text"] == text and not best["edits"]):
            if not any("no suggestion" in n or "unchanged" in n for n in notes):
                notes.append("no suggestion: the model proposed no change; the code is unchanged")
        elif not best.get("parses", True) and not any("parse" in n for n in notes):
            notes.append("the suggestion does not parse")
        return "".join(f"\n\n⚠️ **{_esc(n)}**" for n in notes)

    @staticmethod
    def _plain_stats(stats: dict) -> dict:
        """The statistics a JSON view can show (numbers, strings, booleans)."""
        return {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool)) or v is None}

    @staticmethod
    def _final_live(text: str, result: EditResult) -> str:
        """The edited regions of the result, generated text highlighted, as the last frame of the live view."""
        edits = sorted(result.edits, key=lambda e: e.start)
        if not edits:
            return '<pre class="rm-code"><span class="rm-empty">no change</span></pre>'
        parts, pos = [], 0
        for i, e in enumerate(edits):
            parts.append(f'<span class="rm-ctx">{_esc(_context(text, pos, e.start, 4, "tail" if i == 0 else "both"))}'
                         '</span>')
            parts.append(f'<span class="rm-gen">{_esc(e.new_text)}</span>')
            pos = e.end
        parts.append(f'<span class="rm-ctx">{_esc(_context(text, pos, len(text), 4, "head"))}</span>')
        return f'<pre class="rm-code">{"".join(parts)}</pre>'

    @staticmethod
    def _cand_label(i: int, c: dict) -> str:
        if c.get("empty"):
            return f"candidate {i + 1} · no suggestion (empty answer)"
        score = f" · mean log-prob {c['score']:.3f}" if isinstance(c.get("score"), (int, float)) else ""
        return f"candidate {i + 1}{score}{'' if c.get('parses', True) else ' · does not parse'}"

    @staticmethod
    def _details(op: str, cand: dict, stats: dict) -> dict:
        return {"op": op, "edits": cand["edits"], "score": cand.get("score"), "parses": cand.get("parses"),
                "empty": bool(cand.get("empty")), "stats": DemoApp._plain_stats(stats)}

    def choose(self, index: Any, state: dict | None) -> tuple:
        """Show candidate ``index`` of the last result."""
        if not state or index is None:
            return gr.skip(), gr.skip(), gr.skip()
        cands = state["candidates"]
        i = _int_or_none(index) or 0
        if not 0 <= i < len(cands):
            return gr.skip(), gr.skip(), gr.skip()
        c = cands[i]
        # the run's statistics belong to every candidate (the radio fires this right after a result, too)
        return render_diff(c["diff"]), Verbatim(c["new_text"]), self._details(state.get("op", ""), c,
                                                                             state.get("stats") or {})

    @staticmethod
    def apply(new_code: str | None, current: str | None, state: dict | None) -> tuple:
        """Put the result into the editor (only if the editor still holds the text it was computed from)."""
        if not new_code:
            gr.Warning("There is no result to apply yet.")
            return gr.skip(), "Nothing to apply.", gr.skip()
        if state and current is not None and current != state.get("text"):
            gr.Warning("The code changed since this result was computed; run the operation again.")
            return gr.skip(), "**Not applied:** the editor changed since this result was computed.", gr.skip()
        return Verbatim(new_code), "Applied to the editor.", ""

    def holes(self, text: str | None, language: str | None) -> Any:
        """Dropdown choices for the holes in the code, the first one shown.

        With no value the closed dropdown was blank under a label saying "1 found"; showing a hole does not pick
        it: only the visitor's own choice (the select event, ``pick_hole``) makes it the span."""
        if not text or len(text) > MAX_CHARS:
            return gr.update(choices=[], value=None, label="Holes in the code (none)")
        try:
            spans = self.engine.holes(text, language if language in LANGUAGES else None)
        except Exception:  # noqa: BLE001 - no holes list is better than an error while typing
            log.debug("holes() failed", exc_info=True)
            spans = []
        choices = []
        for sp in spans:
            line = text.count("\n", 0, sp.start) + 1
            snippet = text[sp.start:sp.end].strip().replace("\n", " ")[:30]
            label = sp.label or f"line {line}: {snippet or '(insertion point)'}"
            choices.append((label, f"{sp.start}-{sp.end}"))
        n = len(choices)
        label = (f"Holes in the code ({n} found; Fill with no span fills {'it' if n == 1 else 'all'}, or pick one)"
                 if n else "Holes in the code (none)")
        return gr.update(choices=choices, value=choices[0][1] if choices else None, label=label)

    @staticmethod
    def picked_hole(evt: gr.SelectData) -> tuple:
        """The visitor chose a hole in the dropdown (also the one already shown)."""
        return DemoApp.pick_hole(evt.value)

    @staticmethod
    def pick_hole(value: str | None) -> tuple:
        """A chosen hole becomes the selection (and clears the line range)."""
        if not value or "-" not in str(value):
            return gr.skip(), gr.skip()
        return str(value), ""

    def load_example(self, name: str | None) -> tuple:
        if not name or name not in self.examples:
            return gr.skip(), gr.skip(), gr.skip()
        lang = language_of(name, self.engine)
        return gr.update(value=Verbatim(self.examples[name]), language=LANGUAGES.get(lang)), lang, \
            gr.update(language=LANGUAGES.get(lang))


def build_app(engine: Any, model_dir: str | Path | None = None, examples: dict[str, str] | None = None,
              title: str = "remask: block-diffusion code editing") -> gr.Blocks:
    """The demo's page around ``engine`` (an ``assistant.engine.Engine``). Launch it with ``launch_app``."""
    app = DemoApp(engine, model_dir, examples)
    names = list(app.examples)
    first = "intervals.py" if "intervals.py" in names else (names[0] if names else None)
    first_lang = language_of(first, engine) if first else "python"
    info = getattr(engine, "info", None) or {}
    instruct = bool(info.get("instruct"))
    base: Settings = getattr(engine, "settings", None) or Settings()

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        demo.remask_app = app  # type: ignore[attr-defined]  # for tests and embedding
        gr.Markdown(
            "## remask · watch a diffusion model edit code\n"
            "A block-diffusion language model writes a span **all at once**: every position starts masked "
            "(`░`) and each denoising step commits the tokens it is confident about (yellow), block by block. "
            "Pick a span (a hole, a line range, or your selection), press an operation, and watch.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    example = gr.Dropdown(names, value=first, label="Example", scale=2)
                    language = gr.Dropdown(list(LANGUAGES), value=first_lang, label="Language", scale=1)
                    hole = gr.Dropdown([], value=None, label="Holes in the code", scale=2, allow_custom_value=False,
                                       interactive=True, elem_id="rm-holes")  # read by select only: say it
                editor = gr.Code(Verbatim(app.examples.get(first, "")), language=LANGUAGES.get(first_lang), lines=18,
                                    max_lines=30, interactive=True, label="Code", elem_id="rm-editor")
                with gr.Row(equal_height=True):
                    lines = gr.Textbox("", label="Lines", placeholder="e.g. 9 or 9-11", elem_id="rm-lines",
                                       info="the span as a line range")
                    chars = gr.Textbox("", label="Characters", placeholder="e.g. 120-134", elem_id="rm-chars",
                                       info="or as offsets; wins over lines")
                    use_sel = gr.Button("Use editor selection", size="md", elem_id="rm-use-selection", scale=0,
                                        min_width=120)
                instruction = gr.Textbox(label="Instruction (for Instruct)", lines=1, max_lines=3,
                                         placeholder="e.g. 'handle the empty list'" if instruct else
                                         "needs an instruct model; this one is a base model",
                                         elem_id="rm-instruction")
                with gr.Row():
                    b_fill = gr.Button("Fill", variant="primary", elem_id="rm-fill", min_width=80)
                    b_regen = gr.Button("Regenerate", elem_id="rm-regenerate", min_width=80)
                    b_repair = gr.Button("Repair", elem_id="rm-repair", min_width=80)
                    b_instruct = gr.Button("Instruct", elem_id="rm-instruct", min_width=80)
                    b_stop = gr.Button("Stop", variant="stop", elem_id="rm-stop", min_width=80)
            with gr.Column(scale=2):
                status = gr.Markdown("Ready. *Fill* with no span fills every hole.", elem_id="rm-status")
                gr.Markdown("**Denoising** (░ masked · yellow: committed this step · green: committed)")
                live = gr.HTML('<pre class="rm-code"><span class="rm-empty">the denoising steps appear here'
                               '</span></pre>', label="Denoising", css_template=CODE_CSS, elem_id="rm-live")
                with gr.Accordion("Decoding settings", open=False):
                    threshold = gr.Slider(0.05, 1.0, value=base.threshold or 0.9, step=0.05,
                                          label="Confidence threshold",
                                          info="commit every token above this (used when steps = 0)")
                    steps = gr.Slider(0, MAX_STEPS, value=base.steps or 0, step=1, label="Steps per block",
                                      info="0: threshold schedule; N: fixed N steps per block")
                    block_size = gr.Slider(0, MAX_BLOCK_SIZE, value=0, step=1, label="Block size",
                                           info=f"0: the model's ({info.get('block_size', '?')})")
                    temperature = gr.Slider(0.0, 2.0, value=base.temperature, step=0.05, label="Temperature")
                    candidates = gr.Slider(1, MAX_CANDIDATES, value=min(base.candidates, MAX_CANDIDATES), step=1,
                                           label="Candidates (regenerate)")
                    seed = gr.Number(-1 if base.seed is None else base.seed, label="Seed (-1: random)", precision=0)
                    max_new = gr.Slider(1, MAX_NEW_TOKENS, value=min(base.max_new_tokens, MAX_NEW_TOKENS), step=1,
                                        label="Max new tokens per span")
                with gr.Accordion("Model", open=False):
                    gr.Markdown(model_card(engine, model_dir), elem_id="rm-model-card")
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown("**Diff** (before → after)")
                choice = gr.Radio([], label="Candidates", visible=False, elem_id="rm-candidates")
                diff = gr.HTML("", label="Diff", css_template=CODE_CSS, elem_id="rm-diff")
            with gr.Column(scale=1):
                result = gr.Code("", language=LANGUAGES.get(first_lang), label="Result", interactive=False,
                                    lines=10, max_lines=30, elem_id="rm-result")
                b_apply = gr.Button("Apply to the editor", variant="primary", elem_id="rm-apply")
        with gr.Accordion("Edit details (JSON)", open=False):
            details = gr.JSON(None, label="edits and statistics")

        inputs = [editor, language, lines, chars, instruction, threshold, steps,
                  block_size, temperature, candidates, seed, max_new]
        outputs = [status, live, diff, result, choice, details, state]
        events = []
        for op, button in zip(OPS, (b_fill, b_regen, b_repair, b_instruct), strict=True):
            events.append(button.click(_handler(app, op), inputs, outputs, api_name=op, concurrency_limit=1,
                                       concurrency_id="model", show_progress="minimal"))
        b_stop.click(app.stop, None, status, cancels=events, api_name="stop")
        b_apply.click(app.apply, [result, editor, state], [editor, status, chars], api_name="apply")
        choice.change(app.choose, [choice, state], [diff, result, details], api_name=False)
        example.change(app.load_example, example, [editor, language, result], api_name=False)
        language.change(lambda lang: (gr.update(language=LANGUAGES.get(lang)), gr.update(language=LANGUAGES.get(lang))),
                        language, [editor, result], api_name=False)
        editor.change(app.holes, [editor, language], hole, api_name="holes", trigger_mode="always_last",
                      concurrency_limit=None)
        demo.load(app.holes, [editor, language], hole, api_name=False, concurrency_limit=None)
        hole.select(app.picked_hole, None, [chars, lines], api_name=False)  # the visitor's choice, not a refresh
        # typing a line range means "use lines": forget the character selection
        lines.input(lambda: "", None, chars, api_name=False)
        use_sel.click(None, [chars, lines], [chars, lines], js=SELECTION_JS, api_name=False)
    demo.queue(max_size=32, default_concurrency_limit=1)
    return demo


def _handler(app: DemoApp, op: str) -> Callable[..., Iterator[tuple]]:
    """A named generator per operation (Gradio reads the signature and shows the name in the API page)."""

    def handler(code: str, language: str | None, lines: str, chars: str, instruction: str, threshold: float,
                steps: float, block_size: float, temperature: float, candidates: float, seed: float | None,
                max_new_tokens: float, request: gr.Request) -> Iterator[tuple]:
        yield from app.run(op, code, language, lines, chars, instruction, threshold, steps, block_size, temperature,
                           candidates, seed, max_new_tokens, request)

    handler.__name__ = handler.__qualname__ = op
    return handler


def launch_app(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, **kw: Any) -> tuple:
    """Launch with the demo's theme and CSS (Gradio 6 takes them at launch); never shares publicly."""
    kw.pop("share", None)
    return demo.launch(server_name=host, server_port=port, theme=THEME, share=False, show_error=False, **kw)
