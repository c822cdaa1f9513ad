"""Span selection and hole finding on real code in each language (golden), plus the plain-text fallback."""

from __future__ import annotations

import pytest

from assistant.api import EngineError
from assistant.spans import find_holes, hole_at, language_for, normalize_language, parse, spans_at

# Source, and the text the cursor sits in (one character into it).
SNIPS = {
"python": ('''import math


def area(shapes, scale=1.0):
    total = 0
    for s in shapes:
        total += math.pi * s.radius ** 2 * scale
    return total
''', "s.radius"),
"javascript": ('''function total(items, tax) {
  let sum = 0;
  for (const it of items) {
    sum += it.price * it.qty;
  }
  return Math.round(sum * (1 + tax));
}
''', "it.qty"),
"typescript": ('''export function greet(name: string, times: number): string {
  const parts: string[] = [];
  for (let i = 0; i < times; i++) {
    parts.push(`hello ${name}`);
  }
  return parts.join(", ");
}
''', "name}`"),
"tsx": ('''export function List({ items }: { items: string[] }) {
  const n = items.length;
  return <ul>{items.map((x) => <li key={x}>{x}</li>)}</ul>;
}
''', "items.length"),
"rust": ('''fn mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let total: f64 = xs.iter().sum();
    Some(total / xs.len() as f64)
}
''', "xs.len()"),
"go": ('''package main

func Sum(xs []int) int {
	total := 0
	for _, x := range xs {
		total += x * 2
	}
	return total
}
''', "x * 2"),
"java": ('''class Stats {
    static int max(int[] xs) {
        int best = xs[0];
        for (int x : xs) {
            best = Math.max(best, x);
        }
        return best;
    }
}
''', "best, x"),
"c": ('''#include <stdio.h>

int clamp(int v, int lo, int hi) {
    if (v < lo) {
        return lo;
    }
    return v > hi ? hi : v;
}
''', "v > hi"),
"cpp": ('''#include <vector>

int count_even(const std::vector<int>& xs) {
    int n = 0;
    for (int x : xs) {
        if (x % 2 == 0) n++;
    }
    return n;
}
''', "x % 2"),
}

# (kind, label, first line of the span's text), smallest first.
GOLDEN = {
    'python': [
        ('expression', 'this expression (line 7)', 's.radius'),
        ('expression', 'this expression (line 7)', 's.radius ** 2'),
        ('expression', 'this expression (line 7)', 'math.pi * s.radius ** 2'),
        ('expression', 'this expression (line 7)', 'math.pi * s.radius ** 2 * scale'),
        ('statement', 'this statement (line 7)', 'total += math.pi * s.radius ** 2 * scale'),
        ('statement', 'this statement (lines 6-7)', 'for s in shapes:'),
        ('body', 'this body (lines 5-8)', 'total = 0'),
        ('function', 'this function (lines 4-8)', 'def area(shapes, scale=1.0):'),
    ],
    'javascript': [
        ('expression', 'this expression (line 4)', 'it.qty'),
        ('expression', 'this expression (line 4)', 'it.price * it.qty'),
        ('expression', 'this expression (line 4)', 'sum += it.price * it.qty'),
        ('statement', 'this statement (line 4)', 'sum += it.price * it.qty;'),
        ('statement', 'this statement (lines 3-5)', 'for (const it of items) {'),
        ('body', 'this body (lines 2-6)', 'let sum = 0;'),
        ('function', 'this function (lines 1-7)', 'function total(items, tax) {'),
    ],
    'typescript': [
        ('expression', 'this expression (line 4)', '`hello ${name}`'),
        ('arguments', 'these arguments (line 4)', '(`hello ${name}`)'),
        ('expression', 'this expression (line 4)', 'parts.push(`hello ${name}`)'),
        ('statement', 'this statement (line 4)', 'parts.push(`hello ${name}`);'),
        ('statement', 'this statement (lines 3-5)', 'for (let i = 0; i < times; i++) {'),
        ('body', 'this body (lines 2-6)', 'const parts: string[] = [];'),
        ('function', 'this function (lines 1-7)', 'function greet(name: string, times: number): string {'),
        ('function', 'this function (lines 1-7)', 'export function greet(name: string, times: number): string {'),
    ],
    'tsx': [
        ('expression', 'this expression (line 2)', 'items.length'),
        ('statement', 'this statement (line 2)', 'const n = items.length;'),
        ('body', 'this body (lines 2-3)', 'const n = items.length;'),
        ('function', 'this function (lines 1-4)', 'function List({ items }: { items: string[] }) {'),
        ('function', 'this function (lines 1-4)', 'export function List({ items }: { items: string[] }) {'),
    ],
    'rust': [
        ('expression', 'this expression (line 6)', 'xs.len'),
        ('expression', 'this expression (line 6)', 'xs.len()'),
        ('expression', 'this expression (line 6)', 'xs.len() as f64'),
        ('expression', 'this expression (line 6)', 'total / xs.len() as f64'),
        ('arguments', 'these arguments (line 6)', '(total / xs.len() as f64)'),
        ('line', 'this line (line 6)', 'Some(total / xs.len() as f64)'),
        ('body', 'this body (lines 2-6)', 'if xs.is_empty() {'),
        ('function', 'this function (lines 1-7)', 'fn mean(xs: &[f64]) -> Option<f64> {'),
    ],
    'go': [
        ('expression', 'this expression (line 6)', 'x * 2'),
        ('statement', 'this statement (line 6)', 'total += x * 2'),
        ('statement', 'this statement (lines 5-7)', 'for _, x := range xs {'),
        ('body', 'this body (lines 4-8)', 'total := 0'),
        ('function', 'this function (lines 3-9)', 'func Sum(xs []int) int {'),
    ],
    'java': [
        ('arguments', 'these arguments (line 5)', '(best, x)'),
        ('expression', 'this expression (line 5)', 'best = Math.max(best, x)'),
        ('statement', 'this statement (line 5)', 'best = Math.max(best, x);'),
        ('statement', 'this statement (lines 4-6)', 'for (int x : xs) {'),
        ('body', 'this body (lines 3-7)', 'int best = xs[0];'),
        ('function', 'this method (lines 2-8)', 'static int max(int[] xs) {'),
        ('function', 'this class (lines 1-9)', 'class Stats {'),
    ],
    'c': [
        ('expression', 'this expression (line 7)', 'v > hi'),
        ('expression', 'this expression (line 7)', 'v > hi ? hi : v'),
        ('statement', 'this statement (line 7)', 'return v > hi ? hi : v;'),
        ('body', 'this body (lines 4-7)', 'if (v < lo) {'),
        ('function', 'this function (lines 3-8)', 'int clamp(int v, int lo, int hi) {'),
    ],
    'cpp': [
        ('expression', 'this expression (line 6)', 'x % 2'),
        ('expression', 'this expression (line 6)', 'x % 2 == 0'),
        ('statement', 'this statement (line 6)', 'if (x % 2 == 0) n++;'),
        ('body', 'this body (lines 4-8)', 'int n = 0;'),
        ('function', 'this function (lines 3-9)', 'int count_even(const std::vector<int>& xs) {'),
    ],
}


@pytest.mark.parametrize("lang", sorted(SNIPS))
def test_span_choices_golden(lang):
    src, needle = SNIPS[lang]
    off = src.index(needle) + 1
    got = [(s.kind, s.label, src[s.start:s.end].splitlines()[0]) for s in spans_at(src, off, language=lang)]
    assert got == GOLDEN[lang]
    # Every choice contains the cursor and they grow outwards.
    spans = spans_at(src, off, language=lang)
    assert all(s.start <= off <= s.end for s in spans)
    assert [s.end - s.start for s in spans] == sorted(s.end - s.start for s in spans)


HOLE_SOURCES = {
"python": '''def f(x):
    """Doc."""
    pass


def g(x):
    """Only a docstring."""


def h(x):
    # TODO: implement
    ...


def k(x):
    raise NotImplementedError("later")


def ok(x):
    try:
        return x
    except Exception:
        pass
''',
"javascript": '''function f(a) {
  // TODO: sum the values
}

function g(a) {
  throw new Error("not implemented");
}

const x = <FILL>;
''',
"rust": '''fn f(a: i32) -> i32 {
    todo!()
}

fn g() {
    // TODO
}
''',
"go": '''package main

func F(a int) int {
	panic("TODO")
}
''',
"java": '''class A {
    int f(int a) {
        // TODO compute
    }
    int g() {
        throw new UnsupportedOperationException("not implemented");
    }
}
''',
"c": '''int f(int a) {
    /* TODO */
}
int g(int a) { /* TODO */ }
''',
"cpp": '''int f(int a) {
    // TODO
}
''',
"typescript": '''function f(a: number): number {
  // TODO
}
''',
}

# (what, whole_lines, text of the region) per hole, in file order.
HOLES_GOLDEN = {
    "python": [("placeholder", True, "    pass\n"), ("docstring", True, ""), ("placeholder", True, "    ...\n"),
               ("placeholder", True, '    raise NotImplementedError("later")\n')],
    "javascript": [("todo", True, ""), ("placeholder", True, '  throw new Error("not implemented");\n'),
                   ("marker", False, "<FILL>")],
    "rust": [("placeholder", True, "    todo!()\n"), ("todo", True, "")],
    "go": [("placeholder", True, '\tpanic("TODO")\n')],
    "java": [("todo", True, ""),
             ("placeholder", True, '        throw new UnsupportedOperationException("not implemented");\n')],
    "c": [("todo", True, ""), ("todo", False, "/* TODO */")],
    "cpp": [("todo", True, "")],
    "typescript": [("todo", True, "")],
}


@pytest.mark.parametrize("lang", sorted(HOLE_SOURCES))
def test_holes_golden(lang):
    src = HOLE_SOURCES[lang]
    got = [(h.what, h.whole_lines, src[h.start:h.end]) for h in find_holes(src, lang)]
    assert got == HOLES_GOLDEN[lang]


def test_todo_insertion_point_is_after_the_comment_line():
    src = HOLE_SOURCES["javascript"]
    h = find_holes(src, "javascript")[0]
    assert src[:h.start].endswith("// TODO: sum the values\n") and src[h.start:].startswith("}")
    assert h.indent == "  "


def test_overloads_and_abstract_methods_are_not_holes():
    src = ("from typing import overload\n\n\n@overload\ndef f(x: int) -> int: ...\n\n\n"
           "class A:\n    @abstractmethod\n    def g(self):\n        ...\n\n    def h(self):\n        ...\n")
    holes = find_holes(src, "python")
    assert [src[h.start:h.end] for h in holes] == ["        ...\n"] and holes[0].start > src.index("def h")


def test_except_pass_is_not_a_hole():
    src = HOLE_SOURCES["python"]
    assert all(h.start < src.index("def ok") for h in find_holes(src, "python"))


def test_markers_inline_and_alone():
    src = "def f(x):\n    <FILL>\n\ny = f(<FILL_ME>) + 1\n"
    holes = find_holes(src, "python")
    assert [(h.whole_lines, h.single_line, src[h.start:h.end]) for h in holes] == [
        (True, False, "    <FILL>\n"), (False, True, "<FILL_ME>")]
    # A marker does not make the file unparseable: it is parsed as an identifier.
    assert parse(src, "python").syntax == "ok"
    # Several holes, also in plain text.
    assert len(find_holes("a <FILL> b\n<FILL>\n", None)) == 2


def test_hole_at_cursor_selection_and_blank_line():
    src = "def f(x):\n    y = x\n\n    return y\n"
    h = hole_at(src, src.index("y = x") + 5, None, "python")  # end of a non-blank line: continue it
    assert (h.what, h.single_line, h.start, h.end) == ("cursor", True, src.index("y = x") + 5, src.index("y = x") + 5)
    blank = src.index("\n\n") + 1
    h = hole_at(src, blank, None, "python")
    assert (h.what, h.whole_lines, h.start, h.end) == ("cursor", True, blank, blank + 1)
    s = src.index("y = x")
    h = hole_at(src, s, s + 5, "python")  # a whole line selected: regenerate the line, indentation included
    assert (h.what, h.whole_lines, src[h.start:h.end]) == ("selection", True, "    y = x\n")


def test_non_ascii_offsets_are_characters_not_bytes():
    src = 's = "😀漢字"\nt = len(s) + 1\n'
    off = src.index("len") + 1
    spans = spans_at(src, off, language="python")
    assert src[spans[0].start:spans[0].end] == "len(s)"
    assert any(src[s.start:s.end] == "len(s) + 1" for s in spans)


def test_plain_text_fallback_lines_and_paragraphs():
    src = "first para line one\nline two\n\nsecond para\n"
    spans = spans_at(src, 3, language="markdown")
    assert [(s.kind, src[s.start:s.end]) for s in spans] == [
        ("line", "first para line one"), ("block", "first para line one\nline two")]
    assert parse(src, "markdown").syntax == "plain text"


def test_unparseable_file_still_offers_spans():
    src = "def f(x:\n    return x +\n"
    p = parse(src, "python")
    assert p.syntax == "errors" and p.errors > 0
    assert spans_at(src, src.index("return") + 2, language="python")[0].kind == "line"


def test_budget_limits_growth():
    src, needle = SNIPS["python"]
    off = src.index(needle) + 1
    small = spans_at(src, off, language="python", budget=12)
    assert max(s.end - s.start for s in small) < len("total += math.pi * s.radius ** 2 * scale") + 1
    assert all(s.kind != "function" for s in small)


def test_selection_is_first_after_holes_and_range_checked():
    src, _ = SNIPS["go"]
    s = src.index("total := 0")
    spans = spans_at(src, s, s + 5, language="go")
    assert spans[0].kind == "selection" and (spans[0].start, spans[0].end) == (s, s + 5)
    with pytest.raises(EngineError, match="outside"):
        spans_at(src, 0, len(src) + 1, language="go")


def test_language_names():
    assert language_for("a/b.py") == "python" and language_for("x.tsx") == "tsx" and language_for("m.hpp") == "cpp"
    assert language_for("README") is None and language_for(None) is None
    assert normalize_language("typescriptreact") == "tsx" and normalize_language("cobol") is None


def test_a_cursor_on_the_line_after_a_whole_line_hole_is_not_in_it():
    src = "def f():\n    pass\nx = 1\n"
    after = src.index("x = 1")
    assert hole_at(src, after, None, "python").what == "cursor"
    assert hole_at(src, src.index("pass"), None, "python").what == "placeholder"
    inline = "y = <FILL>\n"
    assert hole_at(inline, inline.index("\n"), None, None).what == "marker"  # just after the marker


def test_a_docstring_at_the_end_of_the_file_is_a_hole():
    src = 'def add(a, b):\n    """Return the sum of a and b."""\n'
    (h,) = find_holes(src, "python")
    assert (h.what, h.start, h.end, h.indent) == ("docstring", len(src), len(src), "    ")
    assert find_holes(src.rstrip("\n"), "python") == []
