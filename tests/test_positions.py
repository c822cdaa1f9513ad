"""Offsets <-> (line, character) in UTF-16 / UTF-8 / UTF-32 and bytes <-> characters, on non-ASCII text."""

from __future__ import annotations

import pytest

from assistant.api import EngineError
from assistant.positions import (
    LineIndex,
    OffsetMap,
    byte_to_char,
    char_to_byte,
    line_range_to_offsets,
    offset_to_position,
    position_to_offset,
    units,
)

# An emoji (outside the BMP: 2 UTF-16 units, 4 UTF-8 bytes), CJK (1 unit, 3 bytes), an accent (1 unit, 2 bytes).
TEXT = 'x = "😀"\ns = "漢字é"  # 😀😀\r\nend'


def test_units_per_encoding():
    assert units("😀", "utf-16") == 2 and units("😀", "utf-8") == 4 and units("😀", "utf-32") == 1
    assert units("漢", "utf-16") == 1 and units("漢", "utf-8") == 3
    assert units("é", "utf-8") == 2 and units("abc", "utf-16") == 3


def test_offset_to_position_after_emoji():
    off = TEXT.index('"', 5)  # the closing quote after the emoji
    assert offset_to_position(TEXT, off, "utf-32") == (0, 6)
    assert offset_to_position(TEXT, off, "utf-16") == (0, 7)
    assert offset_to_position(TEXT, off, "utf-8") == (0, 9)


def test_round_trip_every_offset_every_encoding():
    for enc in ("utf-16", "utf-8", "utf-32"):
        for off in range(len(TEXT) + 1):
            if TEXT[off - 1: off + 1] == "\r\n":
                continue  # between \r and \n is not a position an editor can express
            line, ch = offset_to_position(TEXT, off, enc)
            assert position_to_offset(TEXT, line, ch, enc) == off, (enc, off)


def test_crlf_line_breaks_and_second_line_columns():
    start2 = TEXT.index("s =")
    assert offset_to_position(TEXT, start2) == (1, 0)
    hash_ = TEXT.index("#")
    # 's = "漢字é"  ' is 11 code points, 11 UTF-16 units, 16 UTF-8 bytes.
    assert offset_to_position(TEXT, hash_, "utf-16") == (1, 11)
    assert offset_to_position(TEXT, hash_, "utf-8") == (1, 16)
    assert position_to_offset(TEXT, 2, 0) == TEXT.index("end")
    # Line 1 ends before \r\n: its last position is the character count of the line in UTF-16.
    line1 = 's = "漢字é"  # 😀😀'
    assert position_to_offset(TEXT, 1, units(line1, "utf-16")) == TEXT.index("\r\n")


def test_errors_past_the_end_and_inside_a_surrogate_pair():
    with pytest.raises(EngineError, match="past the end"):
        position_to_offset(TEXT, 3, 0)
    with pytest.raises(EngineError, match="past the end of line 1"):
        position_to_offset(TEXT, 0, 50)
    emoji_col = 5  # UTF-16 column of the emoji on line 0
    with pytest.raises(EngineError, match="inside a character"):
        position_to_offset(TEXT, 0, emoji_col + 1, "utf-16")
    with pytest.raises(EngineError):
        offset_to_position(TEXT, len(TEXT) + 1)
    with pytest.raises(EngineError, match="unknown position encoding"):
        offset_to_position(TEXT, 0, "latin-1")


def test_clamp_follows_the_lsp_rule():
    assert position_to_offset(TEXT, 0, 500, clamp=True) == TEXT.index("\n")
    assert position_to_offset(TEXT, 99, 0, clamp=True) == len(TEXT)


def test_bytes_and_chars():
    off = TEXT.index("é")
    b = char_to_byte(TEXT, off)
    assert TEXT.encode("utf-8")[b:].decode("utf-8").startswith("é")
    assert byte_to_char(TEXT, b) == off
    with pytest.raises(EngineError, match="inside a character"):
        byte_to_char(TEXT, b + 1)
    om = OffsetMap(TEXT)
    assert om.n_bytes == len(TEXT.encode("utf-8"))
    assert om.char(b + 1, round_down=True) == off
    assert all(om.char(om.byte(i)) == i for i in range(len(TEXT) + 1))


def test_line_ranges_are_one_based_inclusive():
    text = "a\nbb\nccc\n"
    assert line_range_to_offsets(text, 2, 2) == (2, 4)
    assert line_range_to_offsets(text, 1, 3) == (0, 8)
    with pytest.raises(EngineError, match="outside the file"):
        line_range_to_offsets(text, 2, 4)
    with pytest.raises(EngineError, match="1-based"):
        line_range_to_offsets(text, 0, 1)


def test_line_index_agrees_with_the_functions():
    idx = LineIndex(TEXT)
    for enc in ("utf-16", "utf-8"):
        for off in range(len(TEXT) + 1):
            pos = offset_to_position(TEXT, off, enc)
            assert idx.offset_to_position(off, enc) == pos
            if TEXT[off - 1: off + 1] != "\r\n":
                assert idx.position_to_offset(*pos, enc) == off
    with pytest.raises(EngineError):
        idx.position_to_offset(0, 99)
    assert idx.position_to_offset(0, 99, clamp=True) == TEXT.index("\n")


def test_an_offset_between_cr_and_lf_is_the_end_of_its_line_in_every_encoding():
    """Before: the character was one past the line's end (the \\r counted), a position no editor can express."""
    text = "é😀x\r\nb\r\n\r\nend"
    for enc, width in (("utf-16", 4), ("utf-8", 7), ("utf-32", 3)):
        idx = LineIndex(text)
        for cr in (i for i, c in enumerate(text) if c == "\r"):
            line_end = offset_to_position(text, cr, enc)
            assert offset_to_position(text, cr + 1, enc) == line_end, (enc, cr)
            assert idx.offset_to_position(cr + 1, enc) == line_end, (enc, cr)
            assert position_to_offset(text, *line_end, enc) == cr  # and it maps back to the line's end
        assert offset_to_position(text, text.index("\r") + 1, enc) == (0, width)
