"""Small checkpoints built on the fly, for tests and smoke runs (no download, a second or two)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .config import preset
from .network import build_model
from .tokenizer import Tokenizer, train_tokenizer


def stdlib_texts(limit: int = 60) -> list[str]:
    """Some Python source from the running interpreter's standard library."""
    lib = Path(sys.modules["os"].__file__).parent
    out = []
    for f in sorted(lib.glob("*.py"))[:limit]:
        try:
            out.append(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def make_test_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    return train_tokenizer(stdlib_texts(), vocab_size)


def make_test_checkpoint(folder: str | Path, preset_name: str = "test", seed: int = 0,
                         dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """A randomly initialised model of ``preset_name`` with a real BPE tokenizer, saved as a folder."""
    cfg = preset(preset_name, **overrides)
    tok = make_test_tokenizer(cfg.vocab_size)
    model = build_model(cfg, dtype=dtype, seed=seed)
    return save_checkpoint(model, folder, tokenizer=tok)
