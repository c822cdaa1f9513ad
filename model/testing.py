"""Small checkpoints built on the fly, for tests and smoke runs (no download, a second or two)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .config import preset
from .network import build_model
from .tokenizer import Tokenizer, train_tokenizer


def stdlib_texts(limit: int = 60) -> list[str]:
    """Some Python source from the running interpreter's standard library."""
    lib = Path(sys.modules["os"].__file__).parent
    out = []
    for f in sorted(lib.glob("*.py"))[:limit]:
        try:
            out.append(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def make_test_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    return train_tokenizer(stdlib_texts(), vocab_size)


def make_test_checkpoint(folder: str | Path, preset_name: str = "test", seed: int = 0,
                         dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """A randomly initialised model of ``preset_name`` with a real BPE tokenizer, saved as a folder."""
    cfg = preset(preset_name, **overrides)
    tok = make_test_tokenizer(cfg.vocab_size)
    model = build_model(cfg, dtype=dtype, seed=seed)
    return save_checkpoint(model, folder, tokenizer=tok)


def write_stable_diffcoder_folder(folder: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                                  layout: str = "current", eos_boost: float = 1.0, block_size: int | None = None,
                                  tokenizer: Tokenizer | None = None) -> torch.nn.Module:
    """A small random model written exactly as Stable-DiffCoder is published, and the model itself.

    ``layout``: "current" (``architectures: StableDiffcoderForCausalLM``, as on the hub today) or "older"
    (``architectures: LlamaForCausalLM`` with an ``auto_map`` naming ``SeedDiffcoderForCausalLM``, as an earlier
    revision and third-party copies have it). The remote-code file is written but raises if anything runs it.
    ``eos_boost`` scales the EOS row of the output head (answers stop early); the mask token's row is shrunk,
    as in a trained model, which never proposes it. ``block_size`` writes that key into config.json.
    """
    import json

    from safetensors.torch import save_file

    from .config import preset

    folder = Path(folder)
    folder.mkdir(parents=True)
    cfg = preset("test", tie_word_embeddings=False)
    m = build_model(cfg, dtype=torch.float32, seed=seed)
    with torch.no_grad():
        m.lm_head.weight[cfg.eos_token_id] *= eos_boost
        m.lm_head.weight[cfg.mask_token_id] *= 0.01
    m.to(dtype)
    cls = "StableDiffcoderForCausalLM" if layout == "current" else "SeedDiffcoderForCausalLM"
    module = "modeling_stable_diffcoder" if layout == "current" else "modeling_seed_diffcoder"
    config = {
        "architectures": [cls] if layout == "current" else ["LlamaForCausalLM"],
        "auto_map": {"AutoModel": f"{module}.{cls}", "AutoModelForCausalLM": f"{module}.{cls}"},
        "model_type": "llama", "attention_bias": False, "attention_dropout": 0.1, "resid_pdrop": 0.1,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "hidden_act": "silu",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.hidden_size // cfg.num_attention_heads,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "rope_scaling": None, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "vocab_size": cfg.vocab_size, "mlp_bias": False,
        "initializer_range": 0.009882118, "torch_dtype": str(dtype).replace("torch.", ""),
        "transformers_version": "4.46.2",
    }
    if block_size is not None:
        config["block_size"] = block_size
    (folder / "config.json").write_text(json.dumps(config))
    sd = {k: v.contiguous() for k, v in m.state_dict().items() if "rotary" not in k}
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in ks})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / f"{module}.py").write_text("raise RuntimeError('remote code must never run')\n")
    (tokenizer or make_test_tokenizer()).save(folder)
    return m
