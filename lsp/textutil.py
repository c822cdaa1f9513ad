"""Text helpers for the server: strict position <-> offset conversion and ghost-text clean-up.

pygls' own codec clamps positions past the end of a document silently; an editor that sends a stale range
then gets an edit in the wrong place. ``LineIndex`` raises ``PositionError`` instead (a character past the end
of a line is clamped, as the LSP spec asks). Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` (the LSP's definition).
"""

from __future__ import annotations

import bisect
import re

from assistant.positions import units

_NL = re.compile(r"\r\n|\r|\n")
_CLOSERS = set(")]}>\"'`;:,")


class PositionError(ValueError):
    """A position outside the document."""


def _units(ch: str, encoding: str) -> int:
    o = ord(ch)
    if encoding == "utf-16":
        return 2 if o > 0xFFFF else 1
    if encoding == "utf-8":
        return 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4
    return 1


_CODECS = {"utf-16": "utf-16-le", "utf-8": "utf-8"}


def _count_chars(content: str, units: int, encoding: str) -> int | None:
    """Characters of ``content`` that span ``units`` code units (a unit inside a character counts that character);
    None when the line holds a lone surrogate (the caller counts character by character). C speed on MB lines."""
    try:
        data = content.encode(_CODECS[encoding])
    except UnicodeEncodeError:
        return None
    width = 2 if encoding == "utf-16" else 1
    cut = data[: units * width]
    if len(cut) >= len(data):
        return len(content)
    head = cut.decode(_CODECS[encoding], "ignore")  # drops a character cut in two
    return len(head) + (len(head.encode(_CODECS[encoding])) < len(cut))


class LineIndex:
    """Line starts of one version of a document; built once per version (fast even for several MB)."""

    def __init__(self, text: str, encoding: str = "utf-16") -> None:
        self.text = text
        self.encoding = str(encoding)
        self.starts = [0] + [m.end() for m in _NL.finditer(text)]

    @property
    def line_count(self) -> int:
        return len(self.starts)

    def line_bounds(self, line: int) -> tuple[int, int]:
        """(start, end) offsets of ``line``'s content, without its terminator."""
        start = self.starts[line]
        if line + 1 < len(self.starts):
            end = self.starts[line + 1]
            end -= 2 if self.text[end - 2:end] == "\r\n" else 1
        else:
            end = len(self.text)
        return start, end

    def offset(self, line: int, character: int) -> int:
        """Offset of (line, character in client units); raises PositionError past the last line."""
        if line < 0 or character < 0:
            raise PositionError(f"negative position {line}:{character}")
        if line >= len(self.starts):
            raise PositionError(f"position {line}:{character} is past the end of the document "
                                f"({len(self.starts)} lines)")
        start, end = self.line_bounds(line)
        content = self.text[start:end]
        if self.encoding == "utf-32" or content.isascii():
            return start + min(character, len(content))
        fast = _count_chars(content, character, self.encoding)
        if fast is not None:
            return start + fast
        n = 0
        for i, ch in enumerate(content):
            if n >= character:
                return start + i
            n += _units(ch, self.encoding)
        return end

    def position(self, offset: int) -> tuple[int, int]:
        """(line, character in client units) of an offset; clamps to the document."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self.starts, offset) - 1
        start, end = self.line_bounds(line)
        offset = min(offset, end)  # never point between \r and \n
        seg = self.text[start:offset]
        return line, units(seg, self.encoding)


WINDOW_LINE_ALIGN = 64


def window(text: str, start: int, end: int, max_chars: int) -> tuple[str, int]:
    """A slice of ``text`` around [start, end), cut at line boundaries, at most about ``max_chars`` long.

    Returns (slice, base offset). The engine only looks at a token budget around the cursor anyway; cutting
    a several-MB file first keeps tokenising and parsing from dominating the latency.
    """
    if len(text) <= max_chars:
        return text, 0
    half = max(0, (max_chars - (end - start)) // 2)
    lo = max(0, start - half)
    hi = min(len(text), end + half)
    if lo > 0:
        nl = text.rfind("\n", 0, lo)
        lo = nl + 1 if nl >= 0 else 0
        if lo > start:
            lo = start
        elif lo > 0:
            # Start at a line whose number is a multiple of WINDOW_LINE_ALIGN: typing then leaves the window's
            # start (and the line numbering the engine aligns its context cuts to) where it was, so the engine's
            # prompt cache keeps matching. Costs at most WINDOW_LINE_ALIGN - 1 lines more.
            for _ in range(text.count("\n", 0, lo) % WINDOW_LINE_ALIGN):
                lo = text.rfind("\n", 0, lo - 1) + 1
    if hi < len(text):
        nl = text.find("\n", hi)
        hi = len(text) if nl < 0 else nl + 1
    if hi - lo > 2 * max_chars + (end - start):  # a huge line (minified code): cut inside it, not at its ends
        lo = max(lo, start - half)
        hi = min(hi, end + half)
    return text[lo:hi], lo


def detect_indent(text: str, limit: int = 2000) -> str:
    """The document's indentation unit ("\\t" or N spaces), from its first ``limit`` lines."""
    tabs = spaces = 0
    widths: dict[int, int] = {}
    prev = 0
    for i, line in enumerate(text.splitlines()):
        if i >= limit:
            break
        if not line.strip():
            continue
        if line.startswith("\t"):
            tabs += 1
            continue
        n = len(line) - len(line.lstrip(" "))
        if n:
            spaces += 1
        if n > prev:
            widths[n - prev] = widths.get(n - prev, 0) + 1
        prev = n
    if tabs > spaces:
        return "\t"
    if not widths:
        return "    "
    return " " * max(widths, key=lambda w: (widths[w], -w))


def _reindent(line: str, unit: str) -> str:
    """Convert one line's leading indentation to the document's style."""
    body = line.lstrip(" \t")
    lead = line[: len(line) - len(body)]
    if not lead:
        return line
    if unit == "\t" and " " in lead:
        width = len(lead.expandtabs(4))
        return "\t" * (width // 4) + " " * (width % 4) + body
    if unit != "\t" and "\t" in lead:
        return lead.expandtabs(len(unit)) + body
    return line


def clean_insertion(text: str, offset: int, insertion: str, indent_unit: str | None = None) -> str:
    """Make model output fit as ghost text at ``offset``: never repeat what follows, keep indentation.

    - the cursor line's indentation is not repeated when the model restates it;
    - with code after the cursor on its line, only one line is inserted (a multi-line insertion would
      strand the rest of the line);
    - an ending that duplicates the text right after the cursor (an auto-closed bracket, a following line)
      is dropped;
    - later lines use the document's indentation style (tabs or spaces).
    """
    if not insertion:
        return ""
    line_start = text.rfind("\n", 0, offset) + 1
    nl = text.find("\n", offset)
    line_end = len(text) if nl < 0 else nl
    before = text[line_start:offset]
    rest = text[offset:line_end].rstrip("\r")
    if before and not before.strip() and insertion.startswith(before) and insertion[len(before):len(before) + 1] \
            not in (" ", "\t"):
        insertion = insertion[len(before):]  # the model restated the indentation the cursor already has
    if rest.strip():
        insertion = insertion.split("\n", 1)[0].rstrip("\r")
        # drop an ending that the rest of the line already provides ("foo(x))" before ")")
        insertion = _drop_overlap(insertion, rest)
    else:
        insertion = _drop_duplicate_lines(insertion, text[line_end + 1:] if nl >= 0 else "")
    if indent_unit and "\n" in insertion:
        first, *others = insertion.split("\n")
        insertion = "\n".join([first] + [_reindent(x, indent_unit) for x in others])
    if not insertion.strip():
        return ""
    return insertion


def _drop_overlap(ins: str, rest: str) -> str:
    """Remove the longest ending of ``ins`` that the text after the cursor starts with.

    A one-character overlap only counts for closers (brackets, quotes, ``:``/``;``/``,``), so an identifier
    that happens to end in the letter the next word starts with is left alone.
    """
    rest_s = rest.lstrip(" ")
    spaced = len(rest_s) != len(rest)
    for k in range(min(len(ins), len(rest_s)), 0, -1):
        piece = rest_s[:k]
        if ins.endswith(piece) and (k >= 2 and not piece.isalnum() or all(c in _CLOSERS for c in piece)):
            kept = ins[: len(ins) - k]
            return kept.rstrip(" ") if spaced else kept
    return ins


def _drop_duplicate_lines(ins: str, following: str) -> str:
    """Drop trailing lines of ``ins`` that repeat the next non-blank lines of the document."""
    ins_lines = ins.rstrip("\n").split("\n")
    nxt = [ln.strip() for ln in following.split("\n")[:50] if ln.strip()]
    if not nxt:
        return ins
    body = ins_lines
    for k in range(min(len(body), len(nxt)), 0, -1):
        tail = [ln.strip() for ln in body[-k:]]
        if all(tail) and tail == nxt[:k]:
            kept = body[:-k]
            return "\n".join(kept).rstrip(" \t")
    return ins
