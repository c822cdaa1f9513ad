"""The infilling and edit engine: tree-sitter picks spans, the model regenerates them in parallel."""
