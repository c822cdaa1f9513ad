"""DreamOn: Dream with variable-length infilling. The expand token turns one mask into two and EOS-as-delete
removes one, so the middle grows and shrinks while it is denoised; a hole needs no length guess.

Detected as a Dream folder whose tokenizer has ``<|expand|>`` (151667) or whose config names
``expand_token_id``. Prompts are ``[bos] prefix [mask] * min_len suffix [eos]`` with bos ``<|beginoftext|>``.
Decoding follows the official eval code (``batch_generate_with_expand_as_token``), in
model/families/dream_decode.py. Its approximate dual-cache mode (``DreamConfig(cache="dual")``, never the default)
must refresh the cache on every expand or delete: those shift the columns right of the edit.
"""

from __future__ import annotations

from typing import Any

from . import Family
from .dream import is_dream, read_qwen2


def _detect(raw: dict[str, Any], tokens: dict[str, int]) -> str | None:
    if raw.get("remask_family") == "dreamon":
        return "config.json has remask_family='dreamon'"
    why = is_dream(raw)
    if why and ("<|expand|>" in tokens or raw.get("expand_token_id") is not None):
        return f"{why} and it has an expand token (DreamOn's variable-length infilling)"
    return None


def _read(raw: dict[str, Any], tokens: dict[str, int]):
    return read_qwen2(raw, tokens, "dreamon")


FAMILY = Family(
    name="dreamon", title="DreamOn", body="qwen2", attention="full", logit_shift=True, decode="dreamon",
    infill="expand",
    capabilities=frozenset({"fill", "regenerate", "repair", "expand_delete", "in_place"}),
    detect=_detect, read_config=_read, default_block_size=None,
    notes="one position per step by confidence; <|expand|> -> two masks, EOS in the middle -> deleted")
