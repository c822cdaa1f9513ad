"""The network: transformers' Llama, used with explicit masks and positions.

Nothing here re-implements the transformer. A block-diffusion model differs from Seed-Coder only in the
mask it is run with and in the loss (no logit shift), so ``LlamaForCausalLM`` loads real checkpoints
unchanged; we choose the attention backend and pass 4-D masks (dense boolean for SDPA, ``BlockMask`` for
flex attention), which transformers hands to the kernel as they are.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .cache import BlockKVCache
from .config import ModelConfig

BACKENDS = ("sdpa", "flex_attention", "eager", "flash_attention_2")
# What "sdpa" runs as: transformers' SDPA, except that on CPU with a mask the grouped key/value heads are shared
# (``enable_gqa``) instead of copied for every query head, which copies the whole KV cache on every step.
SDPA_GQA = "remask_sdpa"


def _sdpa_gqa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs):
    """transformers repeats K/V per query head whenever a mask is given, because its CUDA kernels need that;
    PyTorch's CPU kernels take the grouped heads as they are (the same numbers, about half the step time with 16
    rows of 500 cached tokens: bench_serve.py)."""
    if (attention_mask is None or query.device.type != "cpu" or key.shape[1] == query.shape[1]
            or kwargs.get("output_attentions") or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask[:, :, :, : key.shape[-2]],
        dropout_p=dropout if module.training else 0.0, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _register_sdpa_gqa() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(SDPA_GQA, _sdpa_gqa)
    AttentionMaskInterface.register(SDPA_GQA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


_register_sdpa_gqa()


def _kernel(name: str) -> str:
    return SDPA_GQA if name == "sdpa" else name


def body_classes(body: str) -> tuple[type, type]:
    """(CausalLM class, rotary-embedding class) of a body: transformers' own Llama, Qwen2 or Qwen3."""
    if body == "llama":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        return LlamaForCausalLM, LlamaRotaryEmbedding
    if body == "qwen2":
        from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM, Qwen2RotaryEmbedding

        return Qwen2ForCausalLM, Qwen2RotaryEmbedding
    if body == "qwen3":
        from transformers.models.qwen3.modeling_qwen3 import Qwen3ForCausalLM, Qwen3RotaryEmbedding

        return Qwen3ForCausalLM, Qwen3RotaryEmbedding
    raise ValueError(f"unknown body {body!r}: llama, qwen2 or qwen3")


def build_model(config: ModelConfig, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                seed: int | None = 0, attn: str = "sdpa") -> LlamaForCausalLM:
    """A randomly initialised model of the given shape (its body's transformers class)."""
    hf = config.to_hf()
    hf._attn_implementation = _kernel(attn)
    if seed is not None:
        torch.manual_seed(seed)
    cls, _ = body_classes(config.body)
    with torch.device(device):
        model = cls(hf)
    model.to(dtype=dtype)
    model.remask_config = config  # type: ignore[attr-defined]
    model.eval()
    return model


def set_attention_backend(model: LlamaForCausalLM, name: str) -> None:
    """Switch the attention kernel; flash-attn only makes sense for plain causal masks."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {BACKENDS}")
    if name == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError as e:
            raise RuntimeError("flash-attn is not installed (pip install 'remask[flash]')") from e
    model.config._attn_implementation = _kernel(name)
    for m in model.modules():
        if hasattr(m, "config") and m.config is not model.config:
            m.config._attn_implementation = _kernel(name)


def remask_config(model: LlamaForCausalLM) -> ModelConfig:
    cfg = getattr(model, "remask_config", None)
    if cfg is None:
        cfg = ModelConfig.from_json_dict(model.config.to_dict())
        model.remask_config = cfg  # type: ignore[attr-defined]
    return cfg


@functools.cache
def _cache_keyword(body_class: type) -> str:
    """The name the installed transformers gives the cache argument: ``cache`` from 5.24 on (where
    ``past_key_values`` warns, and goes in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(body_class.forward).parameters else "past_key_values"


def run_body(model: LlamaForCausalLM, input_ids: torch.Tensor, position_ids: torch.Tensor, mask,
             cache=None, use_cache: bool | None = None):
    """The transformer body (no head) with an explicit mask and our cache, on any transformers 5.x."""
    kw = {} if cache is None else {_cache_keyword(type(model.model)): cache}
    return model.model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                       use_cache=cache is not None if use_cache is None else use_cache, **kw)


def forward_logits(model: LlamaForCausalLM, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   mask, cache: BlockKVCache | None = None, kv_len: int | None = None,
                   keep: torch.Tensor | slice | None = None) -> torch.Tensor:
    """Logits for ``input_ids`` at ``position_ids`` under an explicit mask.

    ``mask`` is a boolean [batch, q, k] tensor (True = may attend) or a flex ``BlockMask``. With a cache,
    keys are the cache slots ``[0, kv_len)`` and the mask's k axis indexes those slots. ``keep`` selects
    the query positions whose logits are needed (the head is the largest matmul for small models): a slice,
    or a [batch, k] index tensor of per-row positions.
    """
    if isinstance(mask, torch.Tensor) and mask.dim() == 3:
        mask = mask[:, None]
    if cache is not None:
        cache.prepare(position_ids, kv_len if kv_len is not None else int(position_ids.max()) + 1)
    out = run_body(model, input_ids, position_ids, mask, cache=cache)
    h = out.last_hidden_state
    if isinstance(keep, torch.Tensor) and keep.dim() == 2:  # per-row positions [batch, k]
        h = torch.gather(h, 1, keep[..., None].expand(-1, -1, h.shape[-1]))
    elif keep is not None:
        h = h[:, keep]
    return model.lm_head(h)
