"""Supervised fine-tuning data: chat-templated prompt kept clean, response noised, 1-4 EOS after it.

Sources: JSONL files of ``{"prompt": ..., "response": ...}`` and built-in synthetic edit tasks made from
the corpus with tree-sitter spans (the same user-like spans as FIM):
- ``fill``: a span removed and marked ``<FILL>``; the response is the span;
- ``repair``: a span corrupted (operator flipped, token dropped, line dropped...) and marked with
  ``<EDIT>...</EDIT>``; the response is the original span.
The prompt builders below are public so that the editing engine can ask the model the same way.
Samples are packed back to back (no document masking); ``eligible`` marks the positions that may be
masked (response + its EOS run), so the prompt stays clean as the decoder will see it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from .corpus import CorpusError, TextStore
from .data import _SPLIT_SALT, fim_settings, split_languages
from .fim import fim_parts

FILL_MARK = "<FILL>"
EDIT_OPEN, EDIT_CLOSE = "<EDIT>", "</EDIT>"
LANG_NAMES = {"py": "Python", "pyi": "Python", "js": "JavaScript", "mjs": "JavaScript", "jsx": "JavaScript",
              "ts": "TypeScript", "tsx": "TypeScript", "rs": "Rust", "go": "Go", "java": "Java", "c": "C",
              "h": "C", "cc": "C++", "cpp": "C++", "hpp": "C++", "rb": "Ruby", "sh": "shell", "lua": "Lua"}


def fill_prompt(language: str, before: str, after: str) -> str:
    """Ask for the code that replaces the ``<FILL>`` marker (answer: that code only)."""
    return (f"Write the code that replaces {FILL_MARK} in this {language} code. Reply with that code only.\n\n"
            f"{before}{FILL_MARK}{after}")


def repair_prompt(language: str, before: str, region: str, after: str) -> str:
    """Ask for a corrected version of the marked region (answer: the region's new text only)."""
    return (f"The code between {EDIT_OPEN} and {EDIT_CLOSE} in this {language} code is broken. Reply with the "
            f"corrected code for that region only.\n\n{before}{EDIT_OPEN}{region}{EDIT_CLOSE}{after}")


def instruct_prompt(language: str, before: str, region: str, after: str, instruction: str) -> str:
    """Ask for the marked region rewritten according to an instruction (answer: the region's new text)."""
    return (f"{instruction.strip()}\nRewrite the code between {EDIT_OPEN} and {EDIT_CLOSE} in this {language} "
            f"code accordingly. Reply with the new code for that region only.\n\n"
            f"{before}{EDIT_OPEN}{region}{EDIT_CLOSE}{after}")


_FLIPS = [("==", "!="), ("!=", "=="), ("<=", "<"), (">=", ">"), (" < ", " <= "), (" > ", " >= "), ("+", "-"),
          ("-", "+"), (" and ", " or "), (" or ", " and "), ("True", "False"), ("False", "True"), ("0", "1"),
          ("&&", "||"), ("||", "&&")]


def corrupt(region: str, rng: np.random.Generator) -> str:
    """A plausible bug in ``region`` (differs from it whenever the region has two characters or more)."""
    for _ in range(6):
        kind = int(rng.integers(4))
        out = region
        if kind == 0:  # flip an operator or a literal
            cands = [(a, b) for a, b in _FLIPS if a in region]
            if cands:
                a, b = cands[int(rng.integers(len(cands)))]
                idx = [m.start() for m in re.finditer(re.escape(a), region)]
                i = idx[int(rng.integers(len(idx)))]
                out = region[:i] + b + region[i + len(a):]
        elif kind == 1:  # drop a word-like token
            toks = list(re.finditer(r"\w+|[^\w\s]", region))
            if toks:
                m = toks[int(rng.integers(len(toks)))]
                out = region[:m.start()] + region[m.end():]
        elif kind == 2:  # drop or duplicate a line
            lines = region.splitlines(keepends=True)
            if len(lines) > 1:
                i = int(rng.integers(len(lines)))
                out = "".join(lines[:i] + lines[i + 1:]) if rng.random() < 0.5 else "".join(
                    lines[: i + 1] + lines[i:])
        else:  # a typo in an identifier
            words = list(re.finditer(r"[A-Za-z_]{3,}", region))
            if words:
                m = words[int(rng.integers(len(words)))]
                w = m.group()
                j = int(rng.integers(len(w)))
                out = region[:m.start()] + w[:j] + w[j + 1:] + region[m.end():]
        if out != region:
            return out
    return region[1:] if len(region) > 1 else region + region


def load_jsonl_pairs(paths: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise CorpusError(f"SFT data file {p} does not exist")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                prompt, response = rec["prompt"], rec["response"]
                if not isinstance(prompt, str) or not isinstance(response, str):
                    raise TypeError("prompt and response must be strings")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CorpusError(f"{p}:{n}: expected a JSON object with string 'prompt' and 'response' ({e})") from e
            pairs.append((prompt, response))
    return pairs


class SFTData:
    """Packed SFT rows: ``batch(step, rows) -> (tokens [b, L], eligible [b, L])``, pure in (step, row)."""

    def __init__(self, corpus_dir: str | Path, split: str, tokenizer, length: int, cfg, stage_salt: int = 33):
        self.tok = tokenizer
        self.length = length
        self.seed = cfg.seed
        self.salt = (_SPLIT_SALT.get(split, 3), stage_salt)
        self.max_eos = max(1, cfg.sft_max_eos)
        self.fim = fim_settings(cfg)
        # Keep a task's code small enough that prompt + response fit one row.
        self.fim.window_chars = max(400, length * 3)
        self.fim.max_middle_lines = min(cfg.fim_max_middle_lines, 4)
        self.pairs = load_jsonl_pairs(cfg.sft_data) if cfg.sft_data else []
        self.synthetic_rate = cfg.sft_synthetic_rate if self.pairs else 1.0
        self.texts = TextStore(corpus_dir, split) if self.synthetic_rate > 0 else None
        self.langs = split_languages(corpus_dir, split) if self.texts is not None else []
        if self.texts is not None and len(self.texts) == 0:
            if not self.pairs:
                raise CorpusError(f"no SFT data: the {split} split is empty and no --sft-data was given")
            self.texts, self.synthetic_rate = None, 0.0

    def synthetic(self, rng: np.random.Generator) -> tuple[str, str]:
        d = int(rng.integers(len(self.texts)))
        ext = self.langs[d]
        lang = LANG_NAMES.get(ext, ext)
        before, middle, after = fim_parts(self.texts[d], ext, rng, self.fim)
        if not middle.strip():
            middle = middle or "\n"
        if rng.random() < 0.5:
            return fill_prompt(lang, before, after), middle
        return repair_prompt(lang, before, corrupt(middle, rng), after), middle

    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        if self.texts is not None and (not self.pairs or rng.random() < self.synthetic_rate):
            prompt, response = self.synthetic(rng)
        else:
            prompt, response = self.pairs[int(rng.integers(len(self.pairs)))]
        p_ids = self.tok.chat_prompt([{"role": "user", "content": prompt}])
        r_ids = self.tok.encode(response) + [self.tok.eos_id] * int(rng.integers(1, self.max_eos + 1))
        return p_ids, r_ids

    def row(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, *self.salt, step, index])
        ids: list[int] = []
        elig: list[bool] = []
        tries = 0
        while len(ids) < self.length:
            p, r = self.sample(rng)
            tries += 1
            if len(p) + min(len(r), 8) > self.length and tries < 20:
                continue  # a prompt that leaves no room for its answer teaches nothing
            ids += p + r
            elig += [False] * len(p) + [True] * len(r)
        return np.asarray(ids[: self.length], dtype=np.int64), np.asarray(elig[: self.length], dtype=bool)

    def check(self, rows: int = 8) -> float:
        """Share of response positions in a few rows; an error when there are none (nothing would train)."""
        share = float(self.batch(0, range(rows))[1].float().mean())
        if share == 0.0:
            raise CorpusError(f"SFT rows of {self.length} tokens hold no response: the prompts alone fill them; "
                              "raise --seq-len")
        return share

    def batch(self, step: int, rows: range) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.row(step, i) for i in rows]
        return (torch.from_numpy(np.stack([a for a, _ in items])), torch.from_numpy(np.stack([b for _, b in items])))
