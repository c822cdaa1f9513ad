"""The open documents, as the server keeps them: the editor's text, changed by the LSP's own rules.

pygls applies incremental changes to lines split with ``str.splitlines`` (which also breaks at ``\\x0c``,
``\\x85``, ``\\u2028`` ...) and puts text sent for a character past the end of a line after that line's
break. Editors do neither, so its copy drifted from the editor's and edits computed on it landed in the
wrong place. Here a change goes through ``LineIndex``, the converter every answer is computed with: lines
end only at ``\\n``, ``\\r\\n`` or ``\\r``, and a character past the end of a line means the end of that line.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from lsprotocol import types as T
from pygls.uris import to_fs_path

from .textutil import LineIndex


def key(uri: str) -> str:
    """One key per document however its URI is percent-encoded (``file:///a%20b`` is ``file:///a b``)."""
    return unquote(uri)


@dataclass(eq=False)
class Document:
    uri: str  # as the editor sent it in didOpen
    source: str
    version: int | None = None
    language_id: str | None = None

    @property
    def path(self) -> str | None:
        try:
            return to_fs_path(self.uri)
        except Exception:
            return None

    def apply(self, change: T.TextDocumentContentChangeEvent, encoding: str, index: LineIndex | None = None) -> bool:
        """Apply one content change; False when its range started past the end (applied at the end).

        ``index``: a LineIndex of the current text in ``encoding`` when the caller has one (saves a rebuild)."""
        if not isinstance(change, T.TextDocumentContentChangePartial):
            self.source = change.text
            return True
        idx = index if index is not None and index.text is self.source else LineIndex(self.source, encoding)
        inside = True
        offsets = []
        for pos in (change.range.start, change.range.end):
            line, char = max(0, pos.line), max(0, pos.character)
            if line >= idx.line_count:
                offsets.append(len(self.source))
                inside = False
            else:
                offsets.append(idx.offset(line, char))
        start, end = min(offsets), max(offsets)
        self.source = self.source[:start] + change.text + self.source[end:]
        return inside
