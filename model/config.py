"""Model configuration: the Seed-Coder / Llama architecture plus the block-diffusion fields.

One dataclass describes a model; it converts to and from a transformers ``LlamaConfig`` so that the
network is transformers' own Llama and real checkpoints load unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from transformers import LlamaConfig

# Fields we add to config.json on top of the Llama ones. Stable-DiffCoder folders have none of them; we
# fill them in from the published defaults (block 4, mask id 5) when loading.
DIFFUSION_KEYS = ("block_size", "mask_token_id", "fim_prefix_id", "fim_suffix_id", "fim_middle_id",
                  "logit_shift", "remask_kind")


@dataclass
class ModelConfig:
    """Architecture and diffusion fields of one model.

    ``logit_shift`` is True for an autoregressive checkpoint (position i predicts token i+1) and False
    for a block-diffusion one (position i predicts token i). ``kind`` records which objective trained it.
    """

    vocab_size: int = 155136
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    max_position_embeddings: int = 8192
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # Diffusion and special tokens.
    block_size: int = 4
    mask_token_id: int = 5
    bos_token_id: int = 0
    pad_token_id: int = 1
    eos_token_id: int = 2
    fim_prefix_id: int | None = None
    fim_suffix_id: int | None = None
    fim_middle_id: int | None = None
    logit_shift: bool = False
    kind: str = "bd"  # "bd" (block diffusion), "ar" (autoregressive), "bd-instruct"
    # Which model family (model/families) decodes it, and which transformers class is its body. Our own and
    # Stable-DiffCoder / Seed-Coder folders are Llama bodies; Dream-family and SDAR folders are Qwen2 / Qwen3.
    family: str = "remask"
    body: str = "llama"  # "llama" | "qwen2" | "qwen3"
    attention_bias: bool = False  # Qwen3's q/k/v/o bias switch (Qwen2 always has q/k/v biases)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def instruct(self) -> bool:
        return self.kind.endswith("instruct")

    def num_parameters(self) -> int:
        """Parameter count computed from the shapes (no model needed)."""
        hd = self.head_dim or self.hidden_size // self.num_attention_heads
        attn = self.hidden_size * hd * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        per_layer = attn + mlp + 2 * self.hidden_size
        emb = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + emb + self.hidden_size

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def to_hf(self) -> LlamaConfig:
        """The transformers config, with our diffusion fields stored as extra attributes."""
        if self.body != "llama":
            return self._to_hf_qwen()
        hf = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim or self.hidden_size // self.num_attention_heads,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            initializer_range=self.initializer_range,
            bos_token_id=self.bos_token_id,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            attention_bias=False,
            mlp_bias=False,
            hidden_act="silu",
        )
        hf.architectures = ["LlamaForCausalLM"] if self.kind == "ar" else ["BlockDiffusionLM"]
        return self._stamp(hf)

    def _stamp(self, hf):
        """The keys of ours that config.json carries beside the body's own."""
        hf.block_size = self.block_size
        hf.mask_token_id = self.mask_token_id
        hf.fim_prefix_id = self.fim_prefix_id
        hf.fim_suffix_id = self.fim_suffix_id
        hf.fim_middle_id = self.fim_middle_id
        hf.logit_shift = self.logit_shift
        hf.remask_kind = self.kind
        return hf

    def _to_hf_qwen(self):
        """A Qwen2 / Qwen3 config (Dream family, SDAR): same fields, the body's own class."""
        from transformers import Qwen2Config, Qwen3Config

        common = dict(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta, rms_norm_eps=self.rms_norm_eps, tie_word_embeddings=self.tie_word_embeddings,
            initializer_range=self.initializer_range, bos_token_id=self.bos_token_id, pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id, hidden_act="silu", use_sliding_window=False, sliding_window=None,
            attention_dropout=0.0)
        if self.body == "qwen2":
            hf = Qwen2Config(**common)
            hf.architectures = ["Qwen2ForCausalLM"]
        elif self.body == "qwen3":
            hf = Qwen3Config(head_dim=self.head_dim or self.hidden_size // self.num_attention_heads,
                             attention_bias=self.attention_bias, **common)
            hf.architectures = ["Qwen3ForCausalLM"]
        else:
            raise ValueError(f"unknown body {self.body!r}: llama, qwen2 or qwen3")
        hf.remask_family = self.family
        return self._stamp(hf)

    def to_json_dict(self) -> dict[str, Any]:
        d = self.to_hf().to_dict()
        d.pop("transformers_version", None)
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Read a config.json: ours, a Stable-DiffCoder one, or a Seed-Coder / plain Llama one."""
        if d.get("model_type", "llama") != "llama":
            raise ValueError(f"unsupported model_type {d.get('model_type')!r}: remask loads Llama-architecture models")
        arch = " ".join(d.get("architectures") or [])
        rope_theta = d.get("rope_theta")
        if rope_theta is None:
            rope_theta = (d.get("rope_parameters") or {}).get("rope_theta", 500000.0)
        if d.get("rope_scaling"):
            raise ValueError("rope_scaling is not supported")
        kind = d.get("remask_kind")
        if kind is None:
            if "Diffcoder" in arch or "Diffusion" in arch:
                kind = "bd"
            else:
                kind = "ar"
        logit_shift = d.get("logit_shift")
        if logit_shift is None:
            logit_shift = kind == "ar"
        eos = d.get("eos_token_id", 2)
        if isinstance(eos, list):
            eos = eos[0]
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in d.items() if k not in known and k not in DIFFUSION_KEYS}
        n_heads = d["num_attention_heads"]
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=n_heads,
            num_key_value_heads=d.get("num_key_value_heads", n_heads),
            head_dim=d.get("head_dim"),
            max_position_embeddings=d.get("max_position_embeddings", 8192),
            rope_theta=float(rope_theta),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            initializer_range=d.get("initializer_range", 0.02),
            block_size=d.get("block_size") or 4,
            mask_token_id=d["mask_token_id"] if d.get("mask_token_id") is not None else 5,
            bos_token_id=d.get("bos_token_id", 0) if d.get("bos_token_id") is not None else 0,
            pad_token_id=d.get("pad_token_id", 1) if d.get("pad_token_id") is not None else 1,
            eos_token_id=eos if eos is not None else 2,
            fim_prefix_id=d.get("fim_prefix_id"),
            fim_suffix_id=d.get("fim_suffix_id"),
            fim_middle_id=d.get("fim_middle_id"),
            logit_shift=bool(logit_shift),
            kind=kind,
            extra=extra,
        )


def _preset(**kw: Any) -> ModelConfig:
    return ModelConfig(**kw)


# Special-token layout of our own tokenizers (training/tokenizer.py): the first ids mirror Seed-Coder's
# (bos 0, pad 1, eos 2, mask 5) so code written against one works with the other.
_OWN_TOKENS = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2, mask_token_id=5,
                   fim_prefix_id=6, fim_suffix_id=7, fim_middle_id=8)

PRESETS: dict[str, ModelConfig] = {
    # A few hundred thousand parameters: unit tests on CPU.
    "test": _preset(vocab_size=1024, hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                    rope_theta=10000.0, tie_word_embeddings=True, **_OWN_TOKENS),
    # CPU stopgap for the default model when no GPU is lent (~5M parameters).
    "tiny": _preset(vocab_size=8192, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                    rope_theta=10000.0, tie_word_embeddings=True, **_OWN_TOKENS),
    # The default model: about 30M parameters, fast on a 2-core CPU.
    "small": _preset(vocab_size=16384, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                     rope_theta=10000.0, tie_word_embeddings=True, **_OWN_TOKENS),
    # A mid-size preset for training benchmarks on one GPU (~350M parameters).
    "medium": _preset(vocab_size=32768, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096,
                      rope_theta=100000.0, tie_word_embeddings=True, **_OWN_TOKENS),
    # Stable-DiffCoder-8B / Seed-Coder-8B shape (diffusion.md 1.2).
    "seed-coder-8b": _preset(vocab_size=155136, hidden_size=4096, intermediate_size=14336,
                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             head_dim=128, max_position_embeddings=8192, rope_theta=500000.0,
                             rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.009882118,
                             bos_token_id=0, pad_token_id=1, eos_token_id=2, mask_token_id=5),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, copied, with optional field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
