"""Qwen2 / Qwen3 autoregressive folders (``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``): decoded one token per
forward, and the starting point of block-diffusion CPT (``remask train bd --init-from``: the Open-dCoder /
Tiny-A2D recipe, an AR model continued into block diffusion)."""

from __future__ import annotations

from typing import Any

from . import Family, first_id, qwen_shape

_ARCH = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}


def body_of(raw: dict[str, Any]) -> str | None:
    for a in raw.get("architectures") or []:
        if a in _ARCH:
            return _ARCH[a]
    mt = str(raw.get("model_type", "")).lower()
    return mt if mt in ("qwen2", "qwen3") else None


def _detect(raw: dict[str, Any], tokens: dict[str, int]) -> str | None:
    if raw.get("remask_family") == "qwen-ar":
        return "config.json has remask_family='qwen-ar'"
    body = body_of(raw)
    if body and raw.get("remask_kind") is None:
        return f"a plain {body} causal LM ({', '.join(raw.get('architectures') or [body])}): autoregressive"
    return None


def mask_id_for(raw: dict[str, Any], tokens: dict[str, int]) -> int:
    """The vocabulary's mask token, else the first embedding row no token uses (Qwen pads its embeddings)."""
    for name in ("<|mask|>", "<|MASK|>", "<MASK>"):
        if name in tokens:
            return tokens[name]
    if raw.get("mask_token_id") is not None:
        return int(raw["mask_token_id"])
    used = max(tokens.values(), default=raw["vocab_size"] - 2) + 1
    return used if used < raw["vocab_size"] else raw["vocab_size"] - 1


def read_qwen(raw: dict[str, Any], tokens: dict[str, int], family: str, kind: str, shift: bool):
    from ..config import ModelConfig

    eos = first_id(raw, "eos_token_id", tokens.get("<|endoftext|>", 151643))
    return ModelConfig(
        **qwen_shape(raw), block_size=int(raw.get("block_size") or 4), mask_token_id=mask_id_for(raw, tokens),
        bos_token_id=first_id(raw, "bos_token_id", eos), eos_token_id=eos,
        pad_token_id=first_id(raw, "pad_token_id", eos),
        fim_prefix_id=raw.get("fim_prefix_id", tokens.get("<|fim_prefix|>")),
        fim_suffix_id=raw.get("fim_suffix_id", tokens.get("<|fim_suffix|>")),
        fim_middle_id=raw.get("fim_middle_id", tokens.get("<|fim_middle|>")),
        attention_bias=bool(raw.get("attention_bias", False)), logit_shift=shift, kind=kind, family=family,
        body=body_of(raw) or "qwen2")


def _read(raw: dict[str, Any], tokens: dict[str, int]):
    return read_qwen(raw, tokens, "qwen-ar", "ar", True)


FAMILY = Family(
    name="qwen-ar", title="Qwen2 / Qwen3 (autoregressive)", body="qwen3", attention="causal", logit_shift=True,
    decode="ar", infill="fim_suffix_first",
    capabilities=frozenset({"fill", "regenerate", "repair", "ar", "eos_length", "chat"}),
    detect=_detect, read_config=_read, default_block_size=1,
    notes="next-token prediction; the body follows config.json (Qwen2 or Qwen3)")
