"""The block-diffusion code LM (transformers Llama + block-causal masks) and its decoder.

The names below are imported on first use (PEP 562), so ``import model.fileio`` or ``model.config`` does not
pay for torch and transformers: ``remask --help`` and argument errors come back at once.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BlockKVCache": "cache", "CheckpointError": "checkpoint", "DEFAULT_MODEL_DIR": "checkpoint",
    "load_checkpoint": "checkpoint", "resolve_model": "checkpoint", "save_checkpoint": "checkpoint",
    "PRESETS": "config", "ModelConfig": "config", "preset": "config",
    "DecodeCancelled": "decoder", "DecodeConfig": "decoder", "DecodeResult": "decoder", "StepEvent": "decoder",
    "generate": "decoder", "reference_generate": "decoder",
    "build_model": "network", "forward_logits": "network", "remask_config": "network",
    "set_attention_backend": "network",
    "OWN_SPECIAL_TOKENS": "tokenizer", "Tokenizer": "tokenizer", "TokenizerError": "tokenizer",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
