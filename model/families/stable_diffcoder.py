"""Stable-DiffCoder-8B (Base / Instruct) folders as published: Llama body, block-causal, block 4, mask id 5.

Two layouts: ``architectures: ["StableDiffcoderForCausalLM"]`` (transformers 5 remote code), and the older
``["LlamaForCausalLM"]`` with an ``auto_map`` naming the SeedDiffcoder / StableDiffcoder classes (4.46.2 remote
code). Either way the remote code is never run: the body is transformers' Llama.
"""

from __future__ import annotations

from typing import Any

from . import Family, arch_text, auto_map_text

_NAMES = ("StableDiffcoder", "SeedDiffcoder", "Diffcoder")


def _detect(raw: dict[str, Any], tokens: dict[str, int]) -> str | None:
    if raw.get("remask_family") == "stable-diffcoder":
        return "config.json has remask_family='stable-diffcoder'"
    arch = arch_text(raw)
    if any(n in arch for n in _NAMES):
        return f"architectures names {arch!r}"
    am = auto_map_text(raw)
    if any(n in am for n in _NAMES):
        return f"auto_map names the diffusion class {am.split()[0]!r} (older Stable-DiffCoder layout)"
    return None


def _read(raw: dict[str, Any], tokens: dict[str, int]):
    from ..config import ModelConfig

    cfg = ModelConfig.from_json_dict(raw)
    instruct = "instruct" in str(raw.get("_name_or_path", "")).lower() or raw.get("remask_kind") == "bd-instruct"
    return cfg.replace(kind="bd-instruct" if instruct else "bd", logit_shift=False)


FAMILY = Family(
    name="stable-diffcoder", title="Stable-DiffCoder", body="llama", attention="block_causal", logit_shift=False,
    decode="block", infill="fim_suffix_first",
    capabilities=frozenset({"fill", "regenerate", "repair", "kv_cache", "eos_length", "chat"}),
    detect=_detect, read_config=_read, default_block_size=4,
    notes="low-confidence remasking; block 4, mask <[MASK_TOKEN]> id 5")
