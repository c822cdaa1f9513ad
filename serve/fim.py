"""Client-side FIM prompt dialects, and checked access to request fields.

Clients that template prompts themselves (Continue's llama.cpp provider, Twinny, Zed, Tabby with a
``prompt_template``) send one string with another model family's FIM tokens. ``parse_prompt`` recognises
those token sets and returns prefix, suffix and context files, which the server lays out in its own
suffix-first format. A repository-level prompt with file separators but no FIM markers (Twinny's
"repository level" Qwen template: ``<|repo_name|>r\\n<|file_sep|>a.py\\n...<|file_sep|>cur.py\\n{prefix}``)
is its context files and a prefix; a prompt with none of them is a plain continuation (prefix only).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field


class BadRequest(ValueError):
    """A request the server cannot honour as sent; the message goes back to the client (HTTP ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class FimParts:
    prefix: str
    suffix: str
    extra: list[tuple[str, str]] = field(default_factory=list)  # (filename, text) context chunks
    dialect: str | None = None  # None: a plain prompt (continue it)


@dataclass(frozen=True)
class _Dialect:
    name: str
    prefix: str
    suffix: str
    middle: str | None
    file_sep: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()  # tokens that carry no text (bos, repo name markers)


DIALECTS: tuple[_Dialect, ...] = (
    _Dialect("seed-coder", "<[fim-prefix]>", "<[fim-suffix]>", "<[fim-middle]>", ("<[file_sep]>",)),
    _Dialect("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", ("<|file_sep|>", "<|file_separator|>"),
             ("<|repo_name|>", "<|endoftext|>", "<bos>")),
    _Dialect("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", ("<file_sep>", "<filename>"),
             ("<repo_name>", "<|endoftext|>", "<reponame>")),
    _Dialect("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", (), ("<｜begin▁of▁sentence｜>",)),
    _Dialect("codellama", "<PRE>", "<SUF>", "<MID>", (), ("<s>",)),
    _Dialect("codestral", "[PREFIX]", "[SUFFIX]", None, (), ("<s>",)),
    _Dialect("glm", "<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>", (), ("<|endoftext|>",)),  # Zed
)


def _strip_one_space(s: str, left: bool, right: bool) -> str:
    if left and s.startswith(" "):
        s = s[1:]
    if right and s.endswith(" "):
        s = s[:-1]
    return s


def _context_files(preamble: str, d: _Dialect) -> list[tuple[str, str]]:
    """``<file_sep>path\\ncontent`` chunks before the FIM part; the last one naming only the current file
    (a path and nothing else) is its header, not context."""
    for t in d.drop:
        preamble = preamble.replace(t, "")
    if not d.file_sep or not any(t in preamble for t in d.file_sep):
        return [("", preamble)] if preamble.strip() else []
    parts = re.split("|".join(re.escape(t) for t in d.file_sep), preamble)
    out = []
    for i, part in enumerate(parts):
        if i == 0:
            continue  # before the first separator: a repository name, if anything
        name, _, text = part.partition("\n")
        if text.strip():
            out.append((name.strip(), text))
    return out


def parse_prompt(prompt: str) -> FimParts:
    """Split a client-templated prompt into prefix, suffix and context files (see the module docstring)."""
    for d in DIALECTS:
        si = prompt.find(d.suffix)
        pi = prompt.find(d.prefix) if d.prefix else -1
        if si < 0 or pi < 0:
            continue
        preamble = prompt[:min(si, pi)]
        markers = sorted([(si, d.suffix), (pi, d.prefix)])
        mi = prompt.find(d.middle, max(si, pi)) if d.middle else -1
        if mi >= 0:
            markers.append((mi, d.middle))
        pieces: dict[str, str] = {}
        for k, (i, t) in enumerate(markers):
            end = markers[k + 1][0] if k + 1 < len(markers) else len(prompt)
            pieces[t] = prompt[i + len(t): end]
        spaced = d.name == "codellama"
        prefix = _strip_one_space(pieces.get(d.prefix, ""), spaced, spaced)
        suffix = _strip_one_space(pieces.get(d.suffix, ""), spaced, spaced)
        middle = pieces.get(d.middle, "") if d.middle else ""
        if d.middle and d.middle in pieces and markers[-1][1] != d.middle:
            middle = ""  # middle token before the others: nothing typed after it
        for t in d.drop:
            prefix = prefix.replace(t, "")
            suffix = suffix.replace(t, "")
        for t in (d.suffix, d.prefix, d.middle):  # anything after the markers that is itself a marker
            if t:
                suffix = suffix.replace(t, "")
        return FimParts(prefix + _strip_one_space(middle, spaced, False), suffix, _context_files(preamble, d), d.name)
    for d in DIALECTS:
        if any(t in prompt for t in d.file_sep):
            return _file_level(prompt, d)
    return FimParts(prompt, "", [], None)


def _file_level(prompt: str, d: _Dialect) -> FimParts:
    """A repository-level prompt without FIM markers: the chunks before the last separator are context files,
    the last one is the current file's ``path\\n`` header and its text up to the cursor (the prefix)."""
    for t in d.drop:
        prompt = prompt.replace(t, "")
    last, sep = max((prompt.rfind(t), t) for t in d.file_sep if t in prompt)
    _, _, prefix = prompt[last + len(sep):].partition("\n")
    return FimParts(prefix, "", _context_files(prompt[:last], d), d.name)


# ---------------------------------------------------------------------------------------------- fields


_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number", list: "an array",
               dict: "an object"}


def field_of(body: dict, name: str, kind: type, default=None, *, minimum=None, maximum=None, nullable: bool = False):
    """``body[name]`` checked to be of ``kind`` (and within bounds), else ``default`` when absent.

    JSON has one number type: an integer-valued float passes as an int, a bool never passes as a number.
    """
    if name not in body or (body[name] is None and not nullable):
        return default
    v = body[name]
    if v is None:
        return None
    if kind is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadRequest(f"'{name}' must be {_TYPE_NAMES[float]}")
        v = float(v)
        if not math.isfinite(v):
            raise BadRequest(f"'{name}' must be a finite number")
    elif kind is int:
        if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53:
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise BadRequest(f"'{name}' must be {_TYPE_NAMES[int]}")
    elif not isinstance(v, kind):
        raise BadRequest(f"'{name}' must be {_TYPE_NAMES.get(kind, kind.__name__)}")
    if minimum is not None and v < minimum:
        raise BadRequest(f"'{name}' must be at least {minimum} (got {v})")
    if maximum is not None and v > maximum:
        raise BadRequest(f"'{name}' must be at most {maximum} (got {v})")
    return v


def stop_list(body: dict, name: str = "stop") -> tuple[str, ...]:
    """A stop field: one string or an array of strings (empty strings are dropped)."""
    v = body.get(name)
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise BadRequest(f"'{name}' must be a string or an array of strings")
    if len(v) > 16:
        raise BadRequest(f"'{name}' may hold at most 16 strings")
    return tuple(s for s in v if s)


def text_prompt(body: dict, name: str = "prompt", required: bool = True) -> str:
    """A prompt field: a string, or an array holding exactly one string (OpenAI allows both)."""
    v = body.get(name)
    if v is None:
        if required:
            raise BadRequest(f"'{name}' is required")
        return ""
    if isinstance(v, list):
        if len(v) != 1 or not isinstance(v[0], str):
            raise BadRequest(f"'{name}' must be a string (an array of one string is accepted; token ids are not)")
        v = v[0]
    if not isinstance(v, str):
        raise BadRequest(f"'{name}' must be a string")
    return v


def extra_chunks(body: dict, name: str = "input_extra") -> list[tuple[str, str]]:
    """llama.cpp's ``input_extra``: an array of ``{filename, text}`` objects."""
    v = body.get(name)
    if v is None:
        return []
    if not isinstance(v, list):
        raise BadRequest(f"'{name}' must be an array of {{filename, text}} objects")
    out = []
    for i, c in enumerate(v):
        if not isinstance(c, dict) or not isinstance(c.get("text", ""), str) \
                or not isinstance(c.get("filename", ""), str):
            raise BadRequest(f"'{name}[{i}]' must be an object with string 'filename' and 'text'")
        if c.get("text"):
            out.append((c.get("filename", ""), c["text"]))
    return out


def render_extra(chunks: list[tuple[str, str]]) -> str:
    """Context chunks as plain text ahead of the FIM prompt (our layout has no file-separator token)."""
    return "".join(t if t.endswith("\n") else t + "\n" for _, t in chunks)


def cut_indent(text: str, n_indent: int) -> str:
    """llama.cpp's ``n_indent``: stop before the first later line indented less than ``n_indent`` columns."""
    if n_indent <= 0 or "\n" not in text:
        return text
    pos = text.find("\n") + 1
    while pos < len(text):
        nl = text.find("\n", pos)
        line = text[pos: nl if nl >= 0 else len(text)]
        if line.strip() and len(line) - len(line.lstrip(" \t")) < n_indent:
            return text[:pos]
        if nl < 0:
            break
        pos = nl + 1
    return text


def cut_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """``text`` up to the earliest stop string, and that string (None when none occurs)."""
    best, word = len(text), None
    for s in stops:
        i = text.find(s)
        if 0 <= i < best:
            best, word = i, s
    return text[:best], word
