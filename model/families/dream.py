"""The Dream family: Dream-v0, Dream-Coder, DiffuCoder. Qwen2 body, full attention, shifted logits.

Published config.json: ``architectures: ["DreamModel"]``, ``model_type: "Dream"``, Qwen2 keys plus
``mask_token_id`` (151666). Decoding is ``diffusion_generate`` (model/families/dream_decode.py): every step
forwards the whole canvas; ``maskgit_plus`` / ``topk_margin`` / ``entropy`` confidences with the
``linspace(1, eps, steps + 1)`` schedule (``origin`` draws random numbers even at temperature 0, so it is
supported but has no parity). Infilling puts masks between prefix and suffix; the canvas length is chosen by the
caller (the engine tries a few in one batch and ranks them).
"""

from __future__ import annotations

from typing import Any

from . import Family, first_id, qwen_shape

DEFAULT_MASK_ID = 151666


def is_dream(raw: dict[str, Any]) -> str | None:
    if "DreamModel" in (raw.get("architectures") or []):
        return "architectures is DreamModel"
    if str(raw.get("model_type", "")).lower() == "dream":
        return "model_type is 'Dream'"
    return None


def variant(raw: dict[str, Any], tokens: dict[str, int]) -> str:
    name = str(raw.get("_name_or_path", "")).lower()
    if "<|dlm_pad|>" in tokens or "diffucoder" in name:
        return "DiffuCoder"
    if "coder" in name:
        return "Dream-Coder"
    return "Dream"


def _detect(raw: dict[str, Any], tokens: dict[str, int]) -> str | None:
    if raw.get("remask_family") == "dream":
        return "config.json has remask_family='dream'"
    why = is_dream(raw)
    if why:
        return f"{why} and the tokenizer has no <|expand|> token ({variant(raw, tokens)} layout)"
    return None


def read_qwen2(raw: dict[str, Any], tokens: dict[str, int], family: str):
    from ..config import ModelConfig

    eos = first_id(raw, "eos_token_id", 151643)
    mask = raw.get("mask_token_id")
    if mask is None:
        mask = tokens.get("<|mask|>", DEFAULT_MASK_ID)
    name = str(raw.get("_name_or_path", "")).lower()
    extra = {}
    if "<|dlm_pad|>" in tokens:
        extra["dlm_pad_id"] = tokens["<|dlm_pad|>"]
    if "<|expand|>" in tokens or raw.get("expand_token_id") is not None:
        extra["expand_token_id"] = int(raw.get("expand_token_id") or tokens["<|expand|>"])
    return ModelConfig(
        **qwen_shape(raw), block_size=1, mask_token_id=int(mask),
        bos_token_id=tokens.get("<|beginoftext|>", first_id(raw, "bos_token_id", eos)), eos_token_id=eos,
        pad_token_id=first_id(raw, "pad_token_id", eos), logit_shift=True,
        fim_prefix_id=tokens.get("<|fim_prefix|>"), fim_suffix_id=tokens.get("<|fim_suffix|>"),
        fim_middle_id=tokens.get("<|fim_middle|>"),
        kind="bd-instruct" if "instruct" in name else "bd", family=family, body="qwen2", extra=extra)


def _read(raw: dict[str, Any], tokens: dict[str, int]):
    return read_qwen2(raw, tokens, "dream")


FAMILY = Family(
    name="dream", title="Dream / Dream-Coder / DiffuCoder", body="qwen2", attention="full", logit_shift=True,
    decode="dream", infill="masks_between",
    capabilities=frozenset({"fill", "regenerate", "repair", "fixed_canvas", "in_place", "chat"}),
    detect=_detect, read_config=_read, default_block_size=None,
    notes="diffusion_generate: full canvas each step; algs maskgit_plus, topk_margin, entropy (origin: random)")
