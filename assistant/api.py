"""The engine's public types: what the LSP server, the TUI and the web demo build on.

Offsets are Python string indices (code points) into the document text unless a name says otherwise;
``assistant.positions`` converts to and from (line, UTF-16 column) and bytes at the boundaries.
Operations never write files: they return ``EditResult`` (text edits plus a unified diff).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


class EngineError(ValueError):
    """Bad input or an impossible request; the message is meant for the user as it is."""


class InstructModelRequired(EngineError):
    """Edit-with-instruction asked of a base (non-instruct) checkpoint."""


class Cancelled(Exception):
    """The operation was cancelled between denoising steps; nothing was produced."""


@dataclass(frozen=True)
class TextEdit:
    """Replace ``text[start:end]`` of the original document with ``new_text``."""

    start: int
    end: int
    new_text: str


@dataclass(frozen=True)
class Span:
    """A region the engine can regenerate: a hole, or a tree-sitter node of an editable kind."""

    start: int
    end: int
    # "hole" | "line" | "expression" | "arguments" | "statement" | "block" | "body" | "function" | "selection"
    kind: str
    label: str  # for menus: "this statement (lines 3-5)"
    node_type: str | None = None  # the tree-sitter node type, when there is one


@dataclass
class TokenScore:
    """One token of a span as the model sees it: its text, where it is, and how probable it is."""

    start: int
    end: int
    text: str
    prob: float  # probability of the actual token when masked
    best: str | None = None  # the model's preferred token there


@dataclass
class Candidate:
    edits: list[TextEdit]
    new_text: str
    diff: str
    score: float  # mean log-probability of the generated tokens (higher is better; -inf when there were none)
    parses: bool = True
    indentation_ok: bool = True
    # The model answered nothing (EOS at once, or only whitespace): "no suggestion", so no edit, never a deletion.
    empty: bool = False


@dataclass
class EditResult:
    """What an operation returns. ``candidates[0]`` is the best; ``edits``/``new_text``/``diff`` mirror it."""

    op: str
    edits: list[TextEdit]
    new_text: str
    diff: str
    candidates: list[Candidate] = field(default_factory=list)
    flagged: list[TokenScore] = field(default_factory=list)  # repair: tokens found improbable
    spans: list[Span] = field(default_factory=list)  # the spans that were regenerated
    stats: dict = field(default_factory=dict)  # nfe, tokens, tokens_per_forward, elapsed_s, steps
    # One line for the user when the result needs a word: no suggestion (the model answered nothing), holes left
    # alone, or the suggestion does not parse. None when there is nothing to say.
    message: str | None = None


@dataclass
class EngineStep:
    """One denoising step, for streaming UIs.

    ``pieces[i]`` is the current state of the i-th regenerated span (or candidate) as a list of
    ``(text, masked)`` pairs, one per token; masked tokens have text ``""``, draw them as placeholders.
    """

    step: int
    nfe: int
    elapsed_s: float
    pieces: list[list[tuple[str, bool]]]
    committed: int  # tokens committed by this step (all spans)
    spans: list[Span] = field(default_factory=list)

    def preview(self, i: int = 0, placeholder: str = "░") -> str:
        return "".join(placeholder if m else t for t, m in self.pieces[i])


@dataclass
class Settings:
    """Decoding settings an editor exposes."""

    block_size: int | None = None  # None: the model's
    threshold: float | None = 0.9  # None: fixed ``steps`` per block
    steps: int | None = None
    temperature: float = 0.0
    confidence: str = "low_confidence"
    max_new_tokens: int = 128
    candidates: int = 3  # regenerate
    seed: int | None = 0
    repair_threshold: float = 0.05  # a token below this probability is flagged
    repair_fraction: float | None = None  # or flag this fraction of the span's least likely tokens
    repair_ratio: float = 1.0  # threshold mode: also require the model's best token this many times likelier (>1:
    # spares positions where the model is merely unsure, e.g. a fresh identifier; 1 = threshold alone)
    context_tokens: int = 1536  # budget for prefix + suffix around a span
    candidate_temperature: float = 0.8  # regenerate with n > 1 at temperature 0 samples the candidates at this
    span_tokens: int = 384  # spans_at offers enclosing spans up to this many tokens
    # Full-attention families (Dream, DreamOn) only: the approximate dual cache with a full forward every N steps
    # (faster, may change tokens: BENCHMARKS.md); None is the exact mode. Block families are exact already.
    dual_cache: int | None = None


StepCallback = Callable[[EngineStep], None]


class CancelToken:
    """A thread-safe flag checked between decoding steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self._event.is_set()
