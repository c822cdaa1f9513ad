"""The infilling and edit engine: tree-sitter picks spans, the model regenerates them in parallel.

- ``assistant.api``: the public types (EditResult, Span, Settings, ...); ``assistant.engine.Engine`` the engine.
- ``assistant.spans``: holes (``<FILL>`` markers, ``pass`` / ``...`` / ``todo!()`` / TODO-only bodies, an empty
  selection) and span choices (line, expression, arguments, statement, block/body, function) from tree-sitter
  (python, javascript, typescript, tsx, rust, go, java, c, cpp), a line/paragraph fallback for other text.
- ``assistant.positions``: offsets <-> (line, UTF-16/UTF-8/UTF-32 character) and bytes <-> characters.
- ``assistant.cli``: ``remask fill`` / ``remask edit``.

Prompt layout (what training must produce for infilling to work): ``[bos] <fim_suffix> S <fim_prefix> P
<fim_middle> M <eos>``, suffix first because a block-causal model's masked middle cannot see anything placed
after it. Holes that sit alone on their lines are regenerated as whole lines (the prefix ends with a line
break and the middle carries its own indentation), one-line holes are cut at the first newline.

Importing this package does not import torch; ``assistant.engine`` does.
"""
