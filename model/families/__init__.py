"""The registry of model families: what a published folder is, and how remask runs it natively.

A family says how its ``config.json`` and tokenizer map to our ``ModelConfig`` (body class, special tokens),
its attention (block-causal or full), whether its logits are shifted, which decode loop runs it, how it lays
out an infilling prompt, whether it has a chat template, and what it can do. Everything above ``model/``
(engine, CLI, LSP, TUI, demo, eval, training) asks the family (``family_of(model)``) and never tests names.

``detect(folder)`` reads only JSON files (no torch) and returns the family with the reason it was chosen; a
folder no family claims is a ``FamilyError`` naming the supported ones. Families are tried in a fixed order,
the most specific first (a DreamOn folder is also a Dream folder; an old Stable-DiffCoder folder also says
``LlamaForCausalLM``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import ModelConfig

# What a family can do. The engine and the front ends read these, never family names.
CAPABILITIES = {
    "fill": "fill a hole",
    "regenerate": "regenerate a span",
    "repair": "score tokens and repair improbable ones",
    "instruct": "rewrite with an instruction (instruct checkpoints)",
    "kv_cache": "block decoding with a KV cache (block-causal attention)",
    "eos_length": "a fill's length is decided by EOS (block decoding)",
    "expand_delete": "a fill's length grows and shrinks during denoising (expand token, EOS-as-delete)",
    "fixed_canvas": "full attention over a fixed canvas: a fill needs a length (tried in a batch and ranked)",
    "in_place": "regenerate and repair mask the span in place with prefix and suffix visible",
    "chat": "has a chat template",
    "ar": "autoregressive decoding (the checkpoint was trained to predict the next token)",
}


class FamilyError(ValueError):
    """A folder no family claims, or a family that cannot do what was asked; the message says which."""


@dataclass(frozen=True)
class Family:
    """One model family. ``detect`` returns the reason it claims a config (None: not this family)."""

    name: str  # stable key, stored as ModelConfig.family
    title: str  # for people: "SDAR", "Dream / Dream-Coder / DiffuCoder"
    body: str  # transformers class of the network: "llama" | "qwen2" | "qwen3"
    attention: str  # "block_causal" | "full" | "causal"
    logit_shift: bool  # logit i comes from hidden state i-1 (Dream family, AR models)
    decode: str  # decode loop: "block" (model.decoder), "dream" (diffusion_generate), "dreamon", "ar"
    infill: str  # "fim_suffix_first" | "masks_between" (prefix, masks, suffix) | "expand" (DreamOn's layout)
    capabilities: frozenset[str]
    detect: Callable[[dict[str, Any], dict[str, int]], str | None]
    read_config: Callable[[dict[str, Any], dict[str, int]], ModelConfig]
    default_block_size: int | None = None
    token_names: dict[str, str] = field(default_factory=dict)  # tokenizer role -> token string override
    commit_rule: str = "remask"  # DecodeConfig.commit_rule the block decoder uses for this family
    align_canvas: bool = False  # block decoder: the canvas ends on a block boundary (SDAR)
    notes: str = ""

    def can(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise KeyError(f"unknown capability {capability!r}")
        return capability in self.capabilities

    def describe(self) -> dict[str, Any]:
        """What ``remask info`` prints about the family."""
        return {"family": self.name, "title": self.title, "body": self.body, "attention": self.attention,
                "logit_shift": self.logit_shift, "decode": self.decode, "infill": self.infill,
                "capabilities": sorted(self.capabilities), "notes": self.notes}


def _registry() -> list[Family]:
    from . import dream, dreamon, own, qwen_ar, sdar, seed_coder, stable_diffcoder

    # Most specific first: DreamOn before Dream, Stable-DiffCoder before plain Llama (Seed-Coder).
    return [own.FAMILY, stable_diffcoder.FAMILY, sdar.FAMILY, dreamon.FAMILY, dream.FAMILY, seed_coder.FAMILY,
            qwen_ar.FAMILY]


def families() -> list[Family]:
    return _registry()


def get(name: str) -> Family:
    for f in _registry():
        if f.name == name:
            return f
    raise FamilyError(f"unknown model family {name!r}; known: {', '.join(f.name for f in _registry())}")


def supported() -> str:
    return "; ".join(f"{f.title} ({f.name})" for f in _registry())


def special_tokens(folder: str | Path) -> dict[str, int]:
    """Added/special token string -> id from a folder's tokenizer files (tokenizer.json, added_tokens.json,
    tokenizer_config.json), without loading a tokenizer."""
    folder = Path(folder)
    out: dict[str, int] = {}
    tj = folder / "tokenizer.json"
    if tj.is_file():
        try:
            for t in json.loads(tj.read_text(encoding="utf-8")).get("added_tokens") or []:
                out[t["content"]] = int(t["id"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    at = folder / "added_tokens.json"
    if at.is_file():
        try:
            for k, v in json.loads(at.read_text(encoding="utf-8")).items():
                out.setdefault(k, int(v))
        except (OSError, ValueError, AttributeError, TypeError):
            pass
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        try:
            for k, v in (json.loads(tc.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}).items():
                out.setdefault(v["content"], int(k))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    return out


def detect_config(raw: dict[str, Any], tokens: dict[str, int] | None = None) -> tuple[Family, str]:
    """The family that claims a parsed config.json (and the folder's special tokens), with the reason."""
    tokens = tokens or {}
    for fam in _registry():
        why = fam.detect(raw, tokens)
        if why:
            return fam, why
    arch = ", ".join(raw.get("architectures") or []) or "none"
    raise FamilyError(f"unsupported model: architectures [{arch}], model_type {raw.get('model_type')!r}. "
                      f"remask runs these families: {supported()}")


def detect(folder: str | Path) -> tuple[Family, str]:
    """The family of a checkpoint folder and why (reads config.json and the tokenizer files only)."""
    folder = Path(folder)
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FamilyError(f"{folder} has no config.json: not a model checkpoint") from None
    except (OSError, ValueError) as e:
        raise FamilyError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise FamilyError(f"{path} is not a JSON object")
    return detect_config(raw, special_tokens(folder))


def read_folder_config(folder: str | Path) -> tuple[ModelConfig, Family, str]:
    """(our config, family, reason) for a folder."""
    folder = Path(folder)
    fam, why = detect(folder)
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg = fam.read_config(raw, special_tokens(folder))
    extra = dict(cfg.extra)
    extra["family_reason"] = why
    return cfg.replace(family=fam.name, extra=extra), fam, why


def family_of(model_or_config: Any) -> Family:
    """The family of a loaded model (or of a ``ModelConfig``)."""
    from ..config import ModelConfig

    cfg = model_or_config if isinstance(model_or_config, ModelConfig) else None
    if cfg is None:
        from ..network import remask_config

        cfg = remask_config(model_or_config)
    return get(cfg.family)


def capabilities(model_or_config: Any) -> frozenset[str]:
    """What a loaded checkpoint can do: its family's capabilities, adjusted by the checkpoint itself (an
    autoregressive ``kind`` of a block family decodes one token per forward; an instruct one takes instructions)."""
    from ..config import ModelConfig

    cfg = model_or_config if isinstance(model_or_config, ModelConfig) else None
    if cfg is None:
        from ..network import remask_config

        cfg = remask_config(model_or_config)
    caps = set(get(cfg.family).capabilities)
    if cfg.kind == "ar" or (cfg.logit_shift and get(cfg.family).attention != "full"):
        caps.add("ar")
    if cfg.instruct:
        caps.add("instruct")
    return frozenset(caps)


def family_reason(model_or_config: Any) -> str:
    from ..config import ModelConfig

    cfg = model_or_config if isinstance(model_or_config, ModelConfig) else None
    if cfg is None:
        from ..network import remask_config

        cfg = remask_config(model_or_config)
    return str(cfg.extra.get("family_reason") or "built in this process")


def first_id(raw: dict[str, Any], key: str, default: int) -> int:
    """An id field of config.json: an int, the first of a list, or the default when absent/null."""
    v = raw.get(key)
    if isinstance(v, list):
        v = v[0] if v else None
    return int(v) if v is not None else default


def qwen_shape(raw: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig fields from a Qwen2 / Qwen3-style config.json (Dream, SDAR)."""
    if raw.get("rope_scaling"):
        raise ValueError("rope_scaling is not supported")
    if raw.get("use_sliding_window"):
        raise ValueError("sliding-window attention is not supported")
    rope = raw.get("rope_theta")
    if rope is None:
        rope = (raw.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    n_heads = raw["num_attention_heads"]
    return dict(vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
                intermediate_size=raw["intermediate_size"], num_hidden_layers=raw["num_hidden_layers"],
                num_attention_heads=n_heads, num_key_value_heads=raw.get("num_key_value_heads", n_heads),
                head_dim=raw.get("head_dim"), max_position_embeddings=raw.get("max_position_embeddings", 32768),
                rope_theta=float(rope), rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                initializer_range=raw.get("initializer_range", 0.02))


def arch_text(raw: dict[str, Any]) -> str:
    return " ".join(raw.get("architectures") or [])


def auto_map_text(raw: dict[str, Any]) -> str:
    am = raw.get("auto_map") or {}
    return " ".join(str(v) for v in am.values()) if isinstance(am, dict) else ""
