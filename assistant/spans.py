"""What to regenerate: holes and editable spans found with tree-sitter, or by lines for plain text.

Grammars come from the per-language wheels (``tree_sitter_python.language()`` ...), so nothing downloads
at run time. tree-sitter speaks UTF-8 bytes; everything leaving this module is a Python string offset
(code points), converted through ``positions.OffsetMap``.

A span choice list grows from the cursor outwards the way Zed's "editable region" does: the line, then
each enclosing node of an editable kind (expression, argument list, statement, block or body, function),
until the token budget is spent.
"""

from __future__ import annotations

import bisect
import importlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .api import EngineError, Span
from .positions import OffsetMap, _line_end, line_starts

# language -> (module, attribute returning the language pointer)
GRAMMARS: dict[str, tuple[str, str]] = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "rust": ("tree_sitter_rust", "language"),
    "go": ("tree_sitter_go", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}

EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".rs": "rust", ".go": "go", ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
}

# Editor language ids (LSP, Textual, Gradio) -> ours.
ALIASES: dict[str, str] = {
    "py": "python", "python3": "python", "js": "javascript", "javascriptreact": "javascript", "jsx": "javascript",
    "ts": "typescript", "typescriptreact": "tsx", "rs": "rust", "golang": "go", "c++": "cpp", "cxx": "cpp",
}

HOLE_MARKER = re.compile(r"<(?:FILL|Fill|fill)(?:[_-](?:ME|me))?>")
_COMMENT_ONLY_MARKER = re.compile(r"^\s*(?:#|//|/\*|--)?\s*" + HOLE_MARKER.pattern + r"\s*(?:\*/)?\s*$")
_TODO = re.compile(r"\b(TODO|FIXME|implement me)\b", re.IGNORECASE)

_FUNCTIONS = {
    "function_definition", "function_declaration", "function_expression", "arrow_function", "method_definition",
    "generator_function_declaration", "generator_function", "function_item", "method_declaration",
    "constructor_declaration", "func_literal", "lambda_expression", "closure_expression",
    "class_definition", "class_declaration", "class_specifier", "struct_specifier", "impl_item", "struct_item",
    "enum_item", "trait_item", "interface_declaration", "enum_declaration", "decorated_definition",
    "abstract_class_declaration", "type_declaration", "record_declaration",
}
_BLOCKS = {"block", "statement_block", "compound_statement", "constructor_body", "class_body", "declaration_list",
           "field_declaration_list", "switch_body", "switch_block", "enum_body", "interface_body"}
_STATEMENT_EXTRA = {
    "lexical_declaration", "variable_declaration", "let_declaration", "local_variable_declaration", "declaration",
    "short_var_declaration", "var_declaration", "const_declaration", "field_declaration", "assignment",
    "const_item", "static_item", "use_declaration", "import_declaration", "field_definition",
    "public_field_definition",
}
_ARGUMENTS = {"argument_list", "arguments", "parameters", "formal_parameters", "parameter_list", "type_arguments"}
_EXPRESSION_EXTRA = {
    "call", "binary_operator", "boolean_operator", "comparison_operator", "attribute", "subscript", "list",
    "dictionary", "tuple", "set", "list_comprehension", "dictionary_comprehension", "set_comprehension",
    "generator_expression", "lambda", "conditional_expression", "string", "not_operator", "unary_operator",
    "await", "template_string", "array", "object", "macro_invocation", "composite_literal", "selector_expression",
    "array_creation_expression", "object_creation_expression", "initializer_list", "concatenated_string",
}
_PLACEHOLDER_CALLS = re.compile(
    r"^(todo|unimplemented)!\s*\(.*\)\s*;?$"
    r"|^panic\(\s*\"(?i:todo|not implemented)[^\"]*\"\s*\)$"
    r"|^throw\s+new\s+\w*(Error|Exception)\s*\(.*(?i:todo|not ?implemented|unsupported).*\)\s*;?$",
    re.DOTALL)

_lang_cache: dict[str, object] = {}
_lang_lock = threading.Lock()


def normalize_language(name: str | None) -> str | None:
    """Our name for an editor's language id; ``None`` (plain text) for anything without a grammar."""
    if not name:
        return None
    n = name.strip().lower()
    n = ALIASES.get(n, n)
    return n if n in GRAMMARS else None


def language_for(path: str | None) -> str | None:
    """Language of a file from its name (``None``: plain text)."""
    if not path:
        return None
    ext = os.path.splitext(str(path))[1].lower()
    return EXTENSIONS.get(ext)


def ts_language(name: str):
    """The ``tree_sitter.Language`` for one of GRAMMARS (cached)."""
    with _lang_lock:
        if name not in _lang_cache:
            import tree_sitter

            module, attr = GRAMMARS[name]
            try:
                ptr = getattr(importlib.import_module(module), attr)()
            except ImportError as e:
                wheel = module.replace("_", "-")
                raise EngineError(f"the {name} grammar is not installed (pip install {wheel})") from e
            _lang_cache[name] = tree_sitter.Language(ptr)
        return _lang_cache[name]


@dataclass
class Parsed:
    """A parse of one text: the tree plus the byte <-> character map for its offsets."""

    text: str
    language: str | None
    tree: object | None
    omap: OffsetMap
    errors: int  # ERROR/MISSING nodes; 0 when the text parses (or when there is no grammar)

    @property
    def syntax(self) -> str:
        """"ok", "errors" (parsed with errors; the engine still works) or "plain text" (no grammar)."""
        if self.tree is None:
            return "plain text"
        return "errors" if self.errors else "ok"

    def char_range(self, node) -> tuple[int, int]:
        return self.omap.char(node.start_byte, round_down=True), self.omap.char(node.end_byte, round_down=True)


def _count_errors(node, limit: int = 1000) -> int:
    if not node.has_error:
        return 0
    n = 0
    stack = [node]
    while stack and n < limit:
        cur = stack.pop()
        if cur.is_error or cur.is_missing:
            n += 1
        if cur.has_error:
            stack.extend(cur.children)
    return max(n, 1)


def parse(text: str, language: str | None) -> Parsed:
    """Parse ``text``; an unknown language gives a tree-less ``Parsed`` (the plain-text fallback)."""
    lang = normalize_language(language)
    omap = OffsetMap(text)
    if lang is None:
        return Parsed(text, None, None, omap, 0)
    import tree_sitter

    parser = tree_sitter.Parser(ts_language(lang))  # parsers are not thread-safe; they are cheap to make
    # A <FILL> marker is not code in any grammar; parse it as an identifier of the same length, so a
    # file with holes still parses and every byte offset stays where it was.
    masked = HOLE_MARKER.sub(lambda m: "_" * len(m.group(0)), text)
    tree = parser.parse(masked.encode("utf-8", "surrogatepass"))
    return Parsed(text, lang, tree, omap, _count_errors(tree.root_node))


def syntax_errors(text: str, language: str | None) -> int | None:
    """Number of syntax errors, or ``None`` when there is no grammar to tell."""
    p = parse(text, language)
    return None if p.tree is None else p.errors


# ---------------------------------------------------------------------------------------------- holes


@dataclass
class Hole:
    """A hole to fill: the region ``[start, end)`` that the generated text replaces.

    ``whole_lines``: the region is a run of whole lines (line break included), so the model writes the
    indentation itself, the way it saw line-aligned middles in training. ``single_line``: the answer is
    one line (cut at the first newline).
    """

    start: int
    end: int
    what: str  # "marker" | "placeholder" | "todo" | "docstring" | "cursor" | "selection"
    whole_lines: bool
    single_line: bool
    node_type: str | None = None
    indent: str | None = None  # whole-line holes: the indentation the new lines should start at, when known

    def covers(self, offset: int) -> bool:
        """Is a cursor at ``offset`` in this hole? A whole-line region ends at the next line's start, which
        belongs to that next line; a cursor just after an inline marker still means the marker."""
        if self.start == self.end:
            return offset == self.start
        return self.start <= offset < self.end or (offset == self.end and not self.whole_lines)

    def span(self, text: str) -> Span:
        first = text.count("\n", 0, self.start) + 1
        last = text.count("\n", 0, max(self.start, self.end - 1)) + 1
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        names = {"marker": "<FILL> marker", "placeholder": "placeholder body", "todo": "TODO body",
                 "docstring": "empty body", "cursor": "insertion point", "selection": "selection"}
        kind = "selection" if self.what == "selection" else "hole"
        return Span(self.start, self.end, kind, f"{names.get(self.what, self.what)} ({where})", self.node_type)


def _line_bounds(text: str, offset: int) -> tuple[int, int, int]:
    """(line start, line content end, next line start) around ``offset``."""
    ls = text.rfind("\n", 0, offset) + 1
    le = text.find("\n", offset)
    if le < 0:
        return ls, len(text), len(text)
    content_end = le - 1 if le > ls and text[le - 1] == "\r" else le
    return ls, content_end, le + 1


def whole_line_region(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``[line start, next line start)`` when ``[start, end)`` only has blanks around it on its lines."""
    ls, _, _ = _line_bounds(text, start)
    _, le, nxt = _line_bounds(text, max(start, end - 1) if end > start else start)
    if end > le and end != nxt:
        return None
    if text[ls:start].strip() or text[end:le].strip():
        return None
    return ls, nxt


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _marker_holes(text: str) -> list[Hole]:
    out = []
    for m in HOLE_MARKER.finditer(text):
        ls, le, nxt = _line_bounds(text, m.start())
        line = text[ls:le]
        alone = len(HOLE_MARKER.findall(line)) == 1 and (
            not HOLE_MARKER.sub("", line).strip() or _COMMENT_ONLY_MARKER.match(line) is not None)
        if alone:
            out.append(Hole(ls, nxt, "marker", whole_lines=True, single_line=False, indent=_indent_of(line)))
        else:
            out.append(Hole(m.start(), m.end(), "marker", whole_lines=False, single_line=True))
    return out


def _is_docstring(node) -> bool:
    return node.type == "expression_statement" and node.named_child_count == 1 and \
        node.named_children[0].type in ("string", "concatenated_string")


def _python_placeholder(node, src: bytes) -> bool:
    t = node.type
    if t == "pass_statement":
        return True
    if t == "expression_statement" and node.named_child_count == 1 and node.named_children[0].type == "ellipsis":
        return True
    if t == "raise_statement":
        body = src[node.start_byte: node.end_byte].decode("utf-8", "replace")
        return "NotImplementedError" in body
    return False


def _brace_placeholder(node, src: bytes) -> bool:
    body = src[node.start_byte: node.end_byte].decode("utf-8", "replace").strip()
    if node.type in ("expression_statement", "macro_invocation", "throw_statement", "call_expression"):
        return bool(_PLACEHOLDER_CALLS.match(body))
    return False


def _body_of(func) -> object | None:
    body = func.child_by_field_name("body")
    if body is None and func.type == "decorated_definition":
        d = func.child_by_field_name("definition")
        body = d.child_by_field_name("body") if d is not None else None
    return body


def _tree_holes(parsed: Parsed) -> list[Hole]:
    """Placeholder bodies (``pass``, ``...``, ``todo!()``, TODO-only, docstring-only) of functions."""
    text, src = parsed.text, parsed.text.encode("utf-8", "surrogatepass")
    out: list[Hole] = []
    funcs = {"function_definition", "function_declaration", "function_item", "method_declaration",
             "method_definition", "constructor_declaration", "function_expression", "arrow_function",
             "generator_function_declaration", "func_literal"}
    stack = [parsed.tree.root_node]
    while stack:
        node = stack.pop()
        stack.extend(reversed(node.named_children))
        if node.type not in funcs:
            continue
        parent = node.parent
        if parent is not None and parent.type == "decorated_definition":
            decorators = src[parent.start_byte: node.start_byte].decode("utf-8", "replace")
            if re.search(r"@\s*(typing\.)?(overload|abstractmethod|abc\.abstractmethod)\b", decorators):
                continue  # an "..." body there is the declaration, not a hole
        body = _body_of(node)
        if body is None or body.type not in _BLOCKS and body.type != "block":
            continue
        kids = body.named_children
        if len(kids) == 1 and kids[0].type == "statement_list":  # Go wraps a block's statements
            kids = kids[0].named_children
        comments = [k for k in kids if "comment" in k.type]
        stmts = [k for k in kids if "comment" not in k.type]
        if parsed.language == "python":
            if stmts and _is_docstring(stmts[0]):
                doc, stmts = stmts[0], stmts[1:]
            else:
                doc = None
            if len(stmts) == 1 and _python_placeholder(stmts[0], src):
                target = stmts[0]
            elif not stmts and doc is not None:  # docstring only: write the body after it
                _, _, nxt = _line_bounds(text, parsed.char_range(doc)[1])
                if nxt <= parsed.char_range(doc)[1] or text[parsed.char_range(doc)[1]:nxt].strip():
                    continue  # no line break after the docstring to write below
                out.append(Hole(nxt, nxt, "docstring", whole_lines=True, single_line=False, node_type=body.type,
                                indent=_indent_of(text[_line_bounds(text, parsed.char_range(doc)[0])[0]:])))
                continue
            else:
                continue
        else:
            if len(stmts) == 1 and _brace_placeholder(stmts[0], src):
                target = stmts[0]
            elif not stmts and comments and any(_TODO.search(parsed.text[slice(*parsed.char_range(c))])
                                                for c in comments):
                last = comments[-1]
                c_start, c_end = parsed.char_range(last)
                _, le, nxt = _line_bounds(text, c_end)
                b_start, b_end = parsed.char_range(body)
                if nxt < b_end and not text[c_end:le].strip():  # the body goes on after the comment line
                    out.append(Hole(nxt, nxt, "todo", whole_lines=True, single_line=False, node_type=body.type,
                                    indent=_indent_of(text[_line_bounds(text, c_start)[0]:])))
                else:
                    out.append(Hole(c_start, c_end, "todo", whole_lines=False, single_line=False,
                                    node_type=last.type))
                continue
            else:
                continue
        t_start, t_end = parsed.char_range(target)
        region = whole_line_region(text, t_start, t_end)
        what = "placeholder"
        if region is not None:
            out.append(Hole(region[0], region[1], what, whole_lines=True, single_line=False, node_type=target.type,
                            indent=_indent_of(text[region[0]:])))
        else:
            out.append(Hole(t_start, t_end, what, whole_lines=False, single_line=False, node_type=target.type))
    return out


def find_holes(text: str, language: str | None = None, parsed: Parsed | None = None) -> list[Hole]:
    """Every hole in ``text``, in order: markers anywhere, placeholder bodies where there is a grammar."""
    holes = _marker_holes(text)
    parsed = parsed or parse(text, language)
    if parsed.tree is not None:
        for h in _tree_holes(parsed):
            if not any(h.start < o.end and o.start < h.end or h.start == o.start for o in holes):
                holes.append(h)
    holes.sort(key=lambda h: (h.start, h.end))
    return holes


def hole_at(text: str, start: int, end: int | None, language: str | None = None,
            parsed: Parsed | None = None) -> Hole:
    """The hole to fill for a cursor or selection: a hole under it, else the selection or the cursor."""
    end = start if end is None else end
    for h in find_holes(text, language, parsed):
        if h.covers(start) and (end <= h.end or end == start):
            return h
    if end > start:
        region = whole_line_region(text, start, end)
        single = "\n" not in text[start:end]
        if region is not None:
            return Hole(region[0], region[1], "selection", whole_lines=True, single_line=single,
                        indent=_indent_of(text[region[0]:]))
        return Hole(start, end, "selection", whole_lines=False, single_line=single)
    ls, le, nxt = _line_bounds(text, start)
    if not text[ls:le].strip():  # a blank line: write lines there, at the cursor's column if it has one
        return Hole(ls, nxt, "cursor", whole_lines=True, single_line=False, indent=text[ls:start] or None)
    # At the end of a line that opens a block ("def f():", "if (x) {"), the answer is the block: several lines.
    opens = not text[start:le].strip() and text[ls:start].rstrip().endswith((":", "{", "(", "[", "=>"))
    return Hole(start, start, "cursor", whole_lines=False, single_line=not opens)


# ---------------------------------------------------------------------------------------------- spans


# Same range, several kinds: the name a menu shows.
_PRIORITY = {"function": 6, "statement": 5, "line": 4, "arguments": 3, "expression": 2, "body": 1, "block": 0,
             "selection": 7}


def _classify(node) -> str | None:
    t = node.type
    if t in _FUNCTIONS:
        return "function"
    if t == "export_statement" and any(c.type in _FUNCTIONS for c in node.named_children):
        return "function"
    if t in _BLOCKS:
        parent = node.parent
        if parent is not None and parent.type in _FUNCTIONS:
            return "body"
        return "block"
    if t.endswith("_statement") or t in _STATEMENT_EXTRA or t.endswith("_definition") and t != "method_definition":
        return "statement"
    if t in _ARGUMENTS:
        return "arguments"
    if t.endswith("expression") or t.endswith("_literal") or t in _EXPRESSION_EXTRA:
        return "expression"
    return None


_NAMES = {"class_definition": "class", "class_declaration": "class", "class_specifier": "class",
          "struct_specifier": "struct", "struct_item": "struct", "impl_item": "impl block", "enum_item": "enum",
          "trait_item": "trait", "interface_declaration": "interface", "method_definition": "method",
          "method_declaration": "method", "constructor_declaration": "constructor", "arrow_function": "function",
          "lambda_expression": "lambda", "closure_expression": "closure", "enum_declaration": "enum"}


def _label(text: str, kind: str, start: int, end: int, node_type: str | None, first_line: int = 1) -> str:
    first = text.count("\n", 0, start) + first_line
    last = text.count("\n", 0, max(start, end - 1)) + first_line
    where = f"line {first}" if first == last else f"lines {first}-{last}"
    name = kind
    if kind == "function" and node_type:
        name = _NAMES.get(node_type, "function")
    elif kind == "line" and first != last:
        name = "lines"
    elif kind == "arguments" and node_type and "param" in node_type:
        name = "parameters"
    det = "these" if name in ("arguments", "parameters", "lines") else "this"
    return f"{det} {name} ({where})"


def _inside_braces(text: str, s: int, e: int) -> tuple[int, int]:
    """A braced block's lines between its braces (what "this body" means to a user); else unchanged."""
    if not (text[s:s + 1] == "{" and text[e - 1:e] == "}"):
        return s, e
    inner = text[s + 1: e - 1]
    lines = inner.split("\n")
    if len(lines) < 3 or lines[0].strip() or lines[-1].strip():
        return s, e
    i0 = s + 1 + len(lines[0]) + 1
    i1 = e - 1 - len(lines[-1]) - 1
    body = text[i0:i1]
    if not body.strip():
        return s, e
    return i0 + len(body) - len(body.lstrip()), i0 + len(body.rstrip())


def _approx_tokens(s: str) -> int:
    return max(1, len(s) // 3)


def spans_at(text: str, start: int, end: int | None = None, language: str | None = None, *,
             count_tokens: Callable[[str], int] | None = None, budget: int = 512,
             parsed: Parsed | None = None, first_line: int = 1) -> list[Span]:
    """Span choices around a cursor (``end`` None or equal) or a selection, smallest first.

    A hole under the cursor comes first; then the line(s), then every enclosing node of an editable kind
    (expression, arguments, statement, block/body, function) whose text fits ``budget`` tokens.
    Ranges are whole nodes (what a UI highlights); the engine extends them to whole lines when it
    generates, so the model writes its own indentation.
    """
    n = len(text)
    end = start if end is None else end
    if not 0 <= start <= end <= n:
        raise EngineError(f"range {start}..{end} is outside the text (0..{n})")
    count = count_tokens or _approx_tokens
    parsed = parsed or parse(text, language)
    choices: list[Span] = []

    def name(s: int, e: int, kind: str, node_type: str | None) -> str:
        return _label(text, kind, s, e, node_type, first_line)

    def add(s: int, e: int, kind: str, node_type: str | None = None, label: str | None = None) -> None:
        if e <= s or any(c.start == s and c.end == e for c in choices):
            if e > s:  # one choice per range, named by the most telling kind ("this statement", not "this block")
                for i, c in enumerate(choices):
                    if c.start == s and c.end == e and c.kind != "hole" and \
                            _PRIORITY.get(kind, 0) > _PRIORITY.get(c.kind, 0):
                        choices[i] = Span(s, e, kind, label or name(s, e, kind, node_type), node_type)
            return
        choices.append(Span(s, e, kind, label or name(s, e, kind, node_type), node_type))

    for h in find_holes(text, parsed.language, parsed):
        if h.covers(start) and end <= max(h.end, start):
            choices.append(h.span(text))
            break
    if end > start:
        add(start, end, "selection", label=name(start, end, "selection", None).replace("this ", "the "))
    # The line(s): content without the indentation and the line break.
    ls, _, _ = _line_bounds(text, start)
    _, le, _ = _line_bounds(text, max(start, end - 1) if end > start else start)
    body = text[ls:le]
    s = ls + (len(body) - len(body.lstrip()))
    e = ls + len(body.rstrip())
    if e > s:
        add(s, e, "line")
    if parsed.tree is not None:
        om = parsed.omap
        node = parsed.tree.root_node.named_descendant_for_byte_range(om.byte(start), om.byte(end))
        while node is not None and node.parent is not None:  # the root (module) is not a choice
            kind = _classify(node)
            if kind is not None:
                s, e = parsed.char_range(node)
                if kind in ("body", "block"):
                    s, e = _inside_braces(text, s, e)
                if s <= start and end <= e:
                    if count(text[s:e]) > budget:
                        break
                    add(s, e, kind, node.type)
            node = node.parent
    else:
        # Plain text: the paragraph (lines up to blank lines) around the cursor. Lines are the LSP's (\n, \r\n,
        # \r), the same ones line_starts counts: str.splitlines would also split at form feeds and U+2028.
        starts = line_starts(text)

        def content(i: int) -> str:
            return text[starts[i]: _line_end(text, starts, i)]

        first = bisect.bisect_right(starts, start) - 1
        last = max(first, bisect.bisect_right(starts, max(start, end - 1)) - 1)
        while first > 0 and content(first - 1).strip():
            first -= 1
        while last + 1 < len(starts) and content(last + 1).strip():
            last += 1
        s, e = starts[first], _line_end(text, starts, last)
        if count(text[s:e]) <= budget:
            add(s, e, "block")
    # Whatever a grammar's error recovery reports, a choice never leaves the document.
    choices = [c for c in choices if 0 <= c.start <= c.end <= n]
    choices.sort(key=lambda c: (0 if c.kind == "hole" else 1, c.end - c.start))
    return choices
