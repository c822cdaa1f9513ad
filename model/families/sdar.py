"""SDAR (JetLM/SDAR-*-Chat): Qwen3 body, block-causal, block 4, its threshold rule, our block decoder and cache.

Published config.json: ``architectures: ["SDARForCausalLM"]``, ``model_type: "sdar"``; some copies carry
``block_size`` and ``mask_token_id``, others leave them to generate.py's arguments (block 4, mask 151669). Its
commit rule (generate.py's ``low_confidence_dynamic``): the per-step count k comes from the block length split
over the steps; every masked position with p > tau is committed when there are at least k of them, else the
top k (``low_confidence_static`` when no threshold is given). Logits are not shifted. Deviations from the
published code, each tested (tests/test_parity_sdar.py): temperature 0 is greedy (the code divides by it); a
partial prompt block never has its prompt tokens overwritten (top-k is limited to the masks left); flash-attn
is not needed (plain attention with the same maths).
"""

from __future__ import annotations

from typing import Any

from . import Family, first_id, qwen_shape

MASK_NAMES = ("<|MASK|>", "<MASK>", "<|mask|>")
DEFAULT_MASK_ID = 151669


def _detect(raw: dict[str, Any], tokens: dict[str, int]) -> str | None:
    if raw.get("remask_family") == "sdar":
        return "config.json has remask_family='sdar'"
    if "SDARForCausalLM" in (raw.get("architectures") or []):
        return "architectures is SDARForCausalLM"
    if str(raw.get("model_type", "")).lower() == "sdar":
        return "model_type is 'sdar'"
    return None


def _read(raw: dict[str, Any], tokens: dict[str, int]):
    from ..config import ModelConfig

    mask = raw.get("mask_token_id")
    if mask is None:
        mask = next((tokens[n] for n in MASK_NAMES if n in tokens), DEFAULT_MASK_ID)
    eos = first_id(raw, "eos_token_id", 151643)
    name = str(raw.get("_name_or_path", "")).lower()
    return ModelConfig(
        **qwen_shape(raw), block_size=int(raw.get("block_size") or 4), mask_token_id=int(mask),
        bos_token_id=first_id(raw, "bos_token_id", eos), eos_token_id=eos,
        pad_token_id=first_id(raw, "pad_token_id", eos), attention_bias=bool(raw.get("attention_bias", False)),
        fim_prefix_id=tokens.get("<|fim_prefix|>"), fim_suffix_id=tokens.get("<|fim_suffix|>"),
        fim_middle_id=tokens.get("<|fim_middle|>"), logit_shift=False,
        kind="bd-instruct" if "chat" in name or "instruct" in name else "bd", family="sdar", body="qwen3")


FAMILY = Family(
    name="sdar", title="SDAR", body="qwen3", attention="block_causal", logit_shift=False, decode="block",
    infill="fim_suffix_first",
    capabilities=frozenset({"fill", "regenerate", "repair", "kv_cache", "eos_length", "chat"}),
    detect=_detect, read_config=_read, default_block_size=4, token_names={"mask": "<|MASK|>"},
    commit_rule="sdar", align_canvas=True,
    notes="generate.py's low_confidence_dynamic rule (p > tau, at least the scheduled k); the canvas ends on a "
          "block boundary; no documented infilling layout (Qwen FIM tokens are used)")
