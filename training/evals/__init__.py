"""Evaluation harness (``remask eval ...``): what the model and the engine are worth, on data nobody here wrote.

Suites (``cli.py``): ``humaneval-infilling`` (pass@k, executed), ``exact-match`` (tree-sitter spans of held-out
files), ``canitedit`` (instruction edits, instruct checkpoints only; EVALUATION ONLY, never train on it),
``speed`` (block diffusion against AR decoding of the same weights) and ``sweep`` (quality against tokens per
forward as the threshold tau varies; PNG plot). Model-written code runs in ``sandbox.Sandbox``.

Data is read from ``../shared/data/`` relative to the repository root (``--data`` to override); nothing is
downloaded.
"""
