"""remask's own checkpoints (``remask_kind`` in config.json): Llama body, block-causal, Stable-DiffCoder's rules."""

from __future__ import annotations

from typing import Any

from . import Family


def _detect(raw: dict[str, Any], tokens: dict[str, int]) -> str | None:
    if raw.get("remask_kind") is not None and raw.get("remask_family") in (None, "remask"):
        return f"config.json has remask_kind={raw['remask_kind']!r} (a checkpoint remask wrote)"
    return None


def _read(raw: dict[str, Any], tokens: dict[str, int]):
    from ..config import ModelConfig
    from .qwen_ar import body_of, read_qwen

    if body_of(raw):  # trained by remask from a Qwen2 / Qwen3 AR folder (train bd --init-from)
        kind = str(raw["remask_kind"])
        shift = raw.get("logit_shift")
        return read_qwen(raw, tokens, "remask", kind, bool(kind == "ar" if shift is None else shift))
    return ModelConfig.from_json_dict(raw)


FAMILY = Family(
    name="remask", title="remask (own checkpoints)", body="llama", attention="block_causal", logit_shift=False,
    decode="block", infill="fim_suffix_first",
    capabilities=frozenset({"fill", "regenerate", "repair", "kv_cache", "eos_length"}),
    detect=_detect, read_config=_read, default_block_size=4,
    notes="block diffusion over a static KV cache; an 'ar' kind decodes one token per forward")
