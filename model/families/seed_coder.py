"""Seed-Coder and other plain Llama autoregressive folders: decoded one token per forward (the AR baseline)."""

from __future__ import annotations

from typing import Any

from . import Family


def _detect(raw: dict[str, Any], tokens: dict[str, int]) -> str | None:
    if raw.get("remask_family") == "seed-coder":
        return "config.json has remask_family='seed-coder'"
    if raw.get("model_type", "llama") == "llama" and "LlamaForCausalLM" in (raw.get("architectures") or []):
        return "architectures is LlamaForCausalLM with no diffusion auto_map: an autoregressive Llama"
    return None


def _read(raw: dict[str, Any], tokens: dict[str, int]):
    from ..config import ModelConfig

    return ModelConfig.from_json_dict(raw).replace(kind="ar", logit_shift=True)


FAMILY = Family(
    name="seed-coder", title="Seed-Coder / Llama (autoregressive)", body="llama", attention="causal",
    logit_shift=True, decode="ar", infill="fim_suffix_first",
    capabilities=frozenset({"fill", "regenerate", "repair", "ar", "eos_length", "chat"}),
    detect=_detect, read_config=_read, default_block_size=1,
    notes="next-token prediction; the starting point of block-diffusion CPT (remask train bd --init-from)")
