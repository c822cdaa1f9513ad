"""Offsets, (line, character) positions and byte offsets, converted explicitly.

Every front end counts differently: Python strings (and so the engine) use code points, LSP uses UTF-16
code units by default, tree-sitter uses UTF-8 bytes, Textual uses code points, browsers UTF-16. Mixing
them up is invisible on ASCII and wrong on the first emoji, so every boundary goes through here.

Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` (the LSP definition; ``str.splitlines`` also splits on form
feeds and U+2028, which editors do not).
"""

from __future__ import annotations

import bisect
import re
from itertools import accumulate

from .api import EngineError

ENCODINGS = ("utf-16", "utf-8", "utf-32")
_NEWLINE = re.compile(r"\r\n|\r|\n")


def _check_encoding(encoding: str) -> str:
    enc = encoding.lower().replace("_", "-")
    if enc in ("utf16", "utf-16"):
        return "utf-16"
    if enc in ("utf8", "utf-8"):
        return "utf-8"
    if enc in ("utf32", "utf-32"):
        return "utf-32"
    raise EngineError(f"unknown position encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")


def units(s: str, encoding: str = "utf-16") -> int:
    """Length of ``s`` in code units of ``encoding`` (UTF-16 units, UTF-8 bytes or code points)."""
    enc = _check_encoding(encoding)
    if enc == "utf-32" or s.isascii():
        return len(s)
    if enc == "utf-8":
        return len(s.encode("utf-8", "surrogatepass"))
    return len(s.encode("utf-16-le", "surrogatepass")) // 2  # an astral character is two units


def line_starts(text: str) -> list[int]:
    """Offsets where each line begins (always starts with 0)."""
    return [0] + [m.end() for m in _NEWLINE.finditer(text)]


def _line_end(text: str, starts: list[int], line: int) -> int:
    """Offset of the end of ``line``'s content (before its line break)."""
    if line + 1 < len(starts):
        end = starts[line + 1]
        if text[end - 2: end] == "\r\n":
            return end - 2
        return end - 1
    return len(text)


def _check_offset(text: str, offset: int) -> None:
    if not isinstance(offset, int) or offset < 0 or offset > len(text):
        raise EngineError(f"offset {offset} is outside the text (0..{len(text)})")


def offset_to_position(text: str, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
    """(0-based line, character in ``encoding`` units) of a code-point offset."""
    _check_offset(text, offset)
    starts = line_starts(text)
    line = bisect.bisect_right(starts, offset) - 1
    # An offset between \r and \n belongs to the line the \r ends; report it at the line's end.
    return line, units(text[starts[line]: min(offset, _line_end(text, starts, line))], encoding)


def position_to_offset(text: str, line: int, character: int, encoding: str = "utf-16",
                       clamp: bool = False) -> int:
    """Code-point offset of (line, character).

    Strict by default: a line past the last one, a character past the end of its line, or a UTF-16
    position inside a surrogate pair raise ``EngineError``. ``clamp=True`` follows the LSP rule instead
    (a character past the end means the end of the line; a line past the end means the end of the text).
    """
    enc = _check_encoding(encoding)
    if line < 0 or character < 0:
        raise EngineError(f"position ({line}, {character}) is negative")
    starts = line_starts(text)
    if line >= len(starts):
        if clamp:
            return len(text)
        raise EngineError(f"line {line + 1} is past the end of the text ({len(starts)} lines)")
    start, end = starts[line], _line_end(text, starts, line)
    if enc == "utf-32" or text[start:end].isascii():
        if start + character > end:
            if clamp:
                return end
            raise EngineError(f"character {character} is past the end of line {line + 1} "
                              f"({end - start} characters)")
        return start + character
    count = 0
    for i in range(start, end):
        if count == character:
            return i
        count += units(text[i], enc)
        if count > character:
            if clamp:
                return i
            raise EngineError(f"position ({line}, {character}) falls inside a character ({enc})")
    if count == character or clamp:
        return end
    raise EngineError(f"character {character} is past the end of line {line + 1} ({count} {enc} units)")


def char_to_byte(text: str, offset: int) -> int:
    """UTF-8 byte offset of a code-point offset."""
    _check_offset(text, offset)
    return len(text[:offset].encode("utf-8", "surrogatepass"))


def byte_to_char(text: str, byte_offset: int) -> int:
    """Code-point offset of a UTF-8 byte offset; a byte inside a character raises ``EngineError``."""
    return OffsetMap(text).char(byte_offset)


class OffsetMap:
    """Byte <-> code-point conversion for one text, precomputed (tree-sitter hands back many byte offsets)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.ascii = text.isascii()
        self._bytes: list[int] | None = None
        if not self.ascii:
            self._bytes = [0, *accumulate(len(c.encode("utf-8", "surrogatepass")) for c in text)]
        self.n_bytes = len(text) if self.ascii else self._bytes[-1]  # type: ignore[index]

    def byte(self, offset: int) -> int:
        """Byte offset of code-point ``offset``."""
        _check_offset(self.text, offset)
        return offset if self._bytes is None else self._bytes[offset]

    def char(self, byte_offset: int, round_down: bool = False) -> int:
        """Code-point offset of ``byte_offset``; inside a character: error, or its start with ``round_down``."""
        if byte_offset < 0 or byte_offset > self.n_bytes:
            raise EngineError(f"byte offset {byte_offset} is outside the text (0..{self.n_bytes})")
        if self._bytes is None:
            return byte_offset
        i = bisect.bisect_right(self._bytes, byte_offset) - 1
        if self._bytes[i] != byte_offset and not round_down:
            raise EngineError(f"byte offset {byte_offset} falls inside a character")
        return i


def line_of(text: str, offset: int) -> int:
    """0-based line number of ``offset``."""
    return offset_to_position(text, offset, "utf-32")[0]


def line_range_to_offsets(text: str, first: int, last: int) -> tuple[int, int]:
    """[start, end) offsets of the 1-based inclusive line range ``first..last``, line break of ``last`` excluded.

    The command line's ``--range A:B`` and ``--line N`` mean this.
    """
    starts = line_starts(text)
    n = len(starts)
    if text.endswith(("\n", "\r")):
        n -= 1  # a final line break does not open a new line a user can point at
    n = max(n, 1)
    if first < 1 or last < first:
        raise EngineError(f"bad line range {first}:{last}: lines are 1-based and A <= B")
    if last > n:
        raise EngineError(f"line range {first}:{last} is outside the file ({n} line{'s' if n != 1 else ''})")
    return starts[first - 1], _line_end(text, starts, last - 1)


class LineIndex:
    """Line starts of one text, computed once: for converting many positions of the same document."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = line_starts(text)

    def offset_to_position(self, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
        _check_offset(self.text, offset)
        line = bisect.bisect_right(self.starts, offset) - 1
        end = min(offset, _line_end(self.text, self.starts, line))  # between \r and \n: the line's end
        return line, units(self.text[self.starts[line]: end], encoding)

    def position_to_offset(self, line: int, character: int, encoding: str = "utf-16", clamp: bool = False) -> int:
        if 0 <= line < len(self.starts):
            start = self.starts[line]
            end = _line_end(self.text, self.starts, line)
            # Convert within the line only: the same rules as the module function, on a one-line text.
            try:
                return start + position_to_offset(self.text[start:end], 0, character, encoding, clamp=clamp)
            except EngineError as e:
                raise EngineError(f"position ({line}, {character}): {e}".replace("line 1 ", f"line {line + 1} ")) \
                    from None
        return position_to_offset(self.text, line, character, encoding, clamp=clamp)
