"""Exact match on held-out spans: tree-sitter picks the holes, the model fills them, we compare.

Span kinds (each a hole an editor user would make):
* ``line``: one whole non-blank line, indentation and newline included (as training's line middles);
* ``statement``: one single-line simple statement node, from its first character to its end;
* ``block``: the body of a function, loop or branch (2 to 15 lines), from its first statement to its end;
* ``call-args``: what is inside the parentheses of a call (non-empty).
Scores per kind: exact match (after trailing-whitespace normalisation) and edit similarity
(1 - normalised Levenshtein). ``line`` and ``statement`` outputs are cut after the first newline.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import EvalError, fim_prompt, generate_batched, prompt_budget
from .metrics import diff_ratio, edit_similarity, exact_match

KINDS = ("line", "statement", "block", "call-args")
GRAMMARS: dict[str, tuple[str, str]] = {
    ".py": ("tree_sitter_python", "language"), ".js": ("tree_sitter_javascript", "language"),
    ".mjs": ("tree_sitter_javascript", "language"), ".ts": ("tree_sitter_typescript", "language_typescript"),
    ".tsx": ("tree_sitter_typescript", "language_tsx"), ".rs": ("tree_sitter_rust", "language"),
    ".go": ("tree_sitter_go", "language"), ".java": ("tree_sitter_java", "language"),
    ".c": ("tree_sitter_c", "language"), ".h": ("tree_sitter_c", "language"),
    ".cc": ("tree_sitter_cpp", "language"), ".cpp": ("tree_sitter_cpp", "language"),
}
BLOCK_NODES = {"block", "statement_block", "compound_statement"}
ARG_NODES = {"argument_list", "arguments"}
# Statement-like node types beyond the ``*_statement`` naming most grammars use.
STATEMENT_NODES = {"local_variable_declaration", "let_declaration", "short_var_declaration", "declaration",
                   "lexical_declaration", "variable_declaration", "expression_statement"}
_parsers: dict[str, object] = {}


@dataclass
class Span:
    file: str
    kind: str
    start: int  # str offsets into the file text
    end: int
    target: str
    line: int  # 1-based line of the start


def _parser(ext: str):
    if ext not in _parsers:
        import tree_sitter

        mod, attr = GRAMMARS[ext]
        _parsers[ext] = tree_sitter.Parser(tree_sitter.Language(getattr(importlib.import_module(mod), attr)()))
    return _parsers[ext]


def collect_files(spec: str | Path) -> list[Path]:
    """A folder (searched recursively for known extensions), a file, or a glob pattern."""
    p = Path(spec)
    if p.is_dir():
        files = [f for f in sorted(p.rglob("*")) if f.suffix in GRAMMARS and f.is_file()]
    elif p.is_file():
        files = [p]
    else:
        files = [Path(f) for f in sorted(glob.glob(str(spec), recursive=True)) if Path(f).suffix in GRAMMARS]
    if not files:
        raise EvalError(f"no source files with a tree-sitter grammar found at {spec}")
    return files


def candidate_spans(text: str, ext: str, file: str = "") -> dict[str, list[Span]]:
    """Every candidate span of each kind in one file."""
    data = text.encode("utf-8")
    tree = _parser(ext).parse(data)
    out: dict[str, list[Span]] = defaultdict(list)

    def mk(kind: str, sb: int, eb: int) -> None:
        s, e = len(data[:sb].decode("utf-8", "replace")), len(data[:eb].decode("utf-8", "replace"))
        if text[s:e].strip():
            out[kind].append(Span(file, kind, s, e, text[s:e], text.count("\n", 0, s) + 1))

    stack = [tree.root_node]
    while stack:
        n = stack.pop()
        stack.extend(n.children)
        if n.has_error or n.parent is None:
            continue
        lines = n.end_point[0] - n.start_point[0] + 1
        if n.type in BLOCK_NODES and 2 <= lines <= 15:
            mk("block", n.start_byte, n.end_byte)
        elif n.type in ARG_NODES and n.end_byte - n.start_byte > 2:
            mk("call-args", n.start_byte + 1, n.end_byte - 1)
        elif (n.type.endswith("_statement") or n.type in STATEMENT_NODES) and lines == 1 and n.child_count \
                and n.parent.type not in STATEMENT_NODES and not n.type.startswith(("if", "for", "while", "try")):
            mk("statement", n.start_byte, n.end_byte)
    offset = 0
    for ln in text.splitlines(keepends=True):
        body = ln.strip()
        if body and not body.startswith(("#", "//")) and len(body) > 3:
            out["line"].append(Span(file, "line", offset, offset + len(ln), ln, text.count("\n", 0, offset) + 1))
        offset += len(ln)
    return out


def pick_spans(files: list[Path], per_kind: int, kinds: tuple[str, ...] = KINDS, seed: int = 0) -> list[Span]:
    """``per_kind`` spans of each kind drawn (seeded) from all files' candidates."""
    pool: dict[str, list[Span]] = defaultdict(list)
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for kind, spans in candidate_spans(text, f.suffix, str(f)).items():
            pool[kind] += spans
    rng = random.Random(seed)
    chosen = []
    for kind in kinds:
        if kind not in KINDS:
            raise EvalError(f"unknown span kind {kind!r}; choose from {', '.join(KINDS)}")
        c = pool.get(kind, [])
        chosen += rng.sample(c, min(per_kind, len(c)))
    if not chosen:
        raise EvalError("no spans found in the given files")
    return chosen


def cut(kind: str, text: str) -> str:
    if kind in ("line", "statement") and "\n" in text:
        return text[: text.index("\n") + (1 if kind == "line" else 0)]
    return text


def evaluate(files: list[Path], model, tok, dc, *, per_kind: int = 50, kinds: tuple[str, ...] = KINDS, seed: int = 0,
             batch_size: int = 8, bos: bool = False, progress: Callable[[int], None] | None = None,
             ) -> tuple[list[dict], dict]:
    """Fill each picked span; returns (records, summary with per-kind scores)."""
    spans = pick_spans(files, per_kind, kinds, seed)
    texts = {}
    prompts = []
    budget = prompt_budget(model, dc)
    for s in spans:
        if s.file not in texts:
            texts[s.file] = Path(s.file).read_text(encoding="utf-8")
        t = texts[s.file]
        prompts.append(fim_prompt(tok, t[: s.start], t[s.end:], budget, bos=bos))
    gens: list = [None] * len(spans)
    for one_line in (True, False):  # line and statement holes stop at the first newline: no wasted blocks
        idx = [i for i, s in enumerate(spans) if (s.kind in ("line", "statement")) == one_line]
        if not idx:
            continue
        cfg = dataclasses.replace(dc, stop_strings=("\n",)) if one_line else dc
        for i, g in zip(idx, generate_batched(model, tok, [prompts[i] for i in idx], cfg, batch_size=batch_size,
                                              progress=progress), strict=True):
            gens[i] = g
    records = []
    for s, g in zip(spans, gens, strict=True):
        pred = cut(s.kind, g.text)
        rec = asdict(s)
        rec.update(prediction=pred, raw=g.text, exact_match=exact_match(pred, s.target),
                   edit_similarity=round(edit_similarity(pred, s.target), 4),
                   difflib_ratio=round(diff_ratio(pred, s.target), 4), tokens=g.tokens, nfe=g.nfe,
                   finish=g.finish)
        records.append(rec)
    summary: dict = {"kinds": {}}
    for kind in kinds:
        rs = [r for r in records if r["kind"] == kind]
        if rs:
            summary["kinds"][kind] = {
                "spans": len(rs), "exact_match": sum(r["exact_match"] for r in rs) / len(rs),
                "edit_similarity": sum(r["edit_similarity"] for r in rs) / len(rs),
                "difflib_ratio": sum(r["difflib_ratio"] for r in rs) / len(rs)}
    toks = sum(r["tokens"] for r in records)
    summary.update(spans=len(records), files=len(files), tokens=toks,
                   tokens_per_forward=toks / max(sum(r["nfe"] for r in records), 1))
    return records, summary
