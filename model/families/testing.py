"""Small random checkpoints written in each family's published folder layout, for tests and benchmarks.

The folder is what the family's hub repo holds (config.json with its architectures / model_type / auto_map and
its own keys, safetensors named as its modeling file names them, a tokenizer.json with the family's special
tokens), at a tiny size and with small ids. Weights are drawn with a large scale so that the random model's
distributions are peaked: greedy parity against the published code is then not at the mercy of near-ties.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# Special tokens appended after the BPE vocabulary, in this order (ids = base vocab + index).
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
                 "<|fim_suffix|>", "<|fim_pad|>", "<|beginoftext|>", "<|mask|>", "<|expand|>", "<|MASK|>"]


def _tokenizer(folder: Path, base_vocab: int) -> dict[str, int]:
    from tokenizers import AddedToken

    from ..testing import make_test_tokenizer

    tok = make_test_tokenizer(base_vocab).tok
    n = tok.get_vocab_size()
    ids = {}
    for s in QWEN_SPECIALS:
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False)])
        ids[s] = tok.token_to_id(s)
    assert min(ids.values()) >= n - len(QWEN_SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    return ids


def _weights(cfg: dict[str, Any], body: str, seed: int, scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, inter, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nh
    V = cfg["vocab_size"]

    def w(*shape: int, s: float | None = None) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * (s if s is not None else scale / shape[-1] ** 0.5)

    sd = {"model.embed_tokens.weight": w(V, h, s=1.0), "model.norm.weight": 1 + 0.1 * w(h, s=1.0),
          "lm_head.weight": w(V, h, s=3.0 / h ** 0.5)}
    for i in range(L):
        p = f"model.layers.{i}."
        sd.update({p + "self_attn.q_proj.weight": w(nh * hd, h), p + "self_attn.k_proj.weight": w(nkv * hd, h),
                   p + "self_attn.v_proj.weight": w(nkv * hd, h), p + "self_attn.o_proj.weight": w(h, nh * hd),
                   p + "mlp.gate_proj.weight": w(inter, h), p + "mlp.up_proj.weight": w(inter, h),
                   p + "mlp.down_proj.weight": w(h, inter), p + "input_layernorm.weight": 1 + 0.1 * w(h, s=1.0),
                   p + "post_attention_layernorm.weight": 1 + 0.1 * w(h, s=1.0)})
        if body == "qwen2":
            for n_, d in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
                sd[p + f"self_attn.{n_}_proj.bias"] = w(d, s=0.1)
        if body == "qwen3":
            sd[p + "self_attn.q_norm.weight"] = 1 + 0.1 * w(hd, s=1.0)
            sd[p + "self_attn.k_norm.weight"] = 1 + 0.1 * w(hd, s=1.0)
    return {k: v.contiguous() for k, v in sd.items()}


def write_family_checkpoint(folder: str | Path, family: str, seed: int = 0, hidden: int = 64, layers: int = 2,
                            heads: int = 4, kv_heads: int = 2, base_vocab: int = 512, scale: float = 2.0,
                            sharded: bool = True, boost: dict[str, float] | None = None) -> Path:
    """A random ``sdar``, ``dream``, ``dreamon``, ``qwen2-ar`` or ``qwen3-ar`` folder in the published layout.

    ``boost`` scales the output rows of some tokens (e.g. ``{"<|endoftext|>": 3.0}``) so that a random model
    writes them often: answers that stop early, DreamOn middles that grow and shrink."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = _tokenizer(folder, base_vocab)
    V = max(ids.values()) + 1
    shape = dict(vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                 num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                 rms_norm_eps=1e-6, rope_scaling=None, tie_word_embeddings=False, hidden_act="silu",
                 initializer_range=0.02, attention_dropout=0.0, use_cache=False, torch_dtype="float32")
    eos = ids["<|endoftext|>"]
    if family == "sdar":
        cfg = dict(architectures=["SDARForCausalLM"], model_type="sdar",
                   auto_map={"AutoConfig": "configuration_sdar.SDARConfig", "AutoModel": "modeling_sdar.SDARModel",
                             "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
                   attention_bias=False, attn_implementation="flex_attention", bos_token_id=eos, eos_token_id=eos,
                   head_dim=hidden // heads, rope_theta=1000000, sliding_window=None, use_sliding_window=False,
                   max_window_layers=layers, fuse_cross_entropy=False, ep_size=1, micro_forward=False,
                   skip_checkpoint=False, use_deepep=False, debug=False, block_size=4,
                   mask_token_id=ids["<|MASK|>"], transformers_version="4.52.4", **shape)
        body = "qwen3"
        gen_cfg = {"bos_token_id": eos, "eos_token_id": [ids["<|im_end|>"], eos], "pad_token_id": eos}
    elif family in ("dream", "dreamon"):
        cfg = dict(architectures=["DreamModel"], model_type="Dream",
                   auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
                   bos_token_id=ids["<|beginoftext|>"], eos_token_id=eos, pad_token_id=eos,
                   mask_token_id=ids["<|mask|>"], rope_theta=10000.0, use_sliding_window=False, sliding_window=None,
                   max_window_layers=layers, transformers_version="4.46.2", **shape)
        body = "qwen2"
        gen_cfg = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": eos, "pad_token_id": eos,
                   "mask_token_id": cfg["mask_token_id"], "steps": 512, "alg": "origin"}
        if family == "dream":  # no expand token in a Dream-v0 / Dream-Coder vocabulary
            tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] != "<|expand|>"]
            (folder / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    elif family in ("qwen2-ar", "qwen3-ar"):  # a plain autoregressive Qwen folder (save_pretrained's layout)
        body = family[:5]
        cfg = dict(architectures=["Qwen2ForCausalLM" if body == "qwen2" else "Qwen3ForCausalLM"], model_type=body,
                   bos_token_id=eos, eos_token_id=eos, rope_theta=10000.0, use_sliding_window=False,
                   sliding_window=None, max_window_layers=layers, attention_bias=False, head_dim=hidden // heads,
                   transformers_version="4.52.4", **shape)
        gen_cfg = {"bos_token_id": eos, "eos_token_id": eos}
    else:
        raise ValueError(f"no published layout for {family!r}")
    sd = _weights(cfg, body, seed, scale)
    for name, factor in (boost or {}).items():
        sd["lm_head.weight"][ids[name]] *= factor
    if sharded:
        keys = sorted(sd)
        half = len(keys) // 2
        parts = [keys[:half], keys[half:]]
        wm = {}
        for i, part in enumerate(parts):
            name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
            save_file({k: sd[k] for k in part}, str(folder / name), metadata={"format": "pt"})
            wm.update({k: name for k in part})
        total = sum(v.numel() * v.element_size() for v in sd.values())
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": wm}, indent=2))
    else:
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
         "mask_token": "<|MASK|>" if family == "sdar" else "<|mask|>",
         "bos_token": "<|beginoftext|>" if family != "sdar" else None}, indent=2))
    return folder


# remask's tokenizer trainer's special ids 0-8 (the default model's) under the names a Dream folder gives them;
# 9-11 (chat roles) keep theirs.
DEFAULT_TO_DREAM_NAMES = {0: "<|beginoftext|>", 1: "<|fim_pad|>", 2: "<|endoftext|>", 3: "<|im_start|>",
                          4: "<|im_end|>", 5: "<|mask|>", 6: "<|fim_prefix|>", 7: "<|fim_suffix|>", 8: "<|fim_middle|>"}


def write_dream_from(init: str | Path, out: str | Path) -> Path:
    """A Llama-body remask folder (e.g. ``model/default``) rewritten in Dream's published layout: the same
    weights, zero q/k/v biases (a Qwen2 body then computes what the Llama body does), an untied ``lm_head`` copied
    from the embeddings, the tokenizer's specials renamed as Dream names them. The start of a trained tiny Dream
    (benchmarks/train_tiny_dream.py); it becomes a Dream model only by training with full attention and the shift."""
    from safetensors.torch import load_file

    init, out = Path(init), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = json.loads((init / "config.json").read_text())
    tj = json.loads((init / "tokenizer.json").read_text(encoding="utf-8"))
    old = {t["id"]: t["content"] for t in tj["added_tokens"]}
    for t in tj["added_tokens"]:
        t["content"] = DEFAULT_TO_DREAM_NAMES.get(t["id"], t["content"])
    vocab = tj["model"]["vocab"]
    for i, name in DEFAULT_TO_DREAM_NAMES.items():
        vocab[name] = vocab.pop(old[i])
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>", "mask_token": "<|mask|>", "model_max_length": 2048}, indent=2))
    L = src["num_hidden_layers"]
    cfg = dict(architectures=["DreamModel"], model_type="Dream", _name_or_path="remask-tiny-dream",
               auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
               vocab_size=src["vocab_size"], hidden_size=src["hidden_size"],
               intermediate_size=src["intermediate_size"], num_hidden_layers=L,
               num_attention_heads=src["num_attention_heads"], num_key_value_heads=src["num_key_value_heads"],
               max_position_embeddings=src["max_position_embeddings"], rms_norm_eps=src["rms_norm_eps"],
               rope_theta=src["rope_parameters"]["rope_theta"], rope_scaling=None, use_sliding_window=False,
               sliding_window=None, max_window_layers=L, attention_dropout=0.0, hidden_act="silu",
               initializer_range=0.02, tie_word_embeddings=False, use_cache=False, torch_dtype="float32",
               bos_token_id=0, eos_token_id=2, pad_token_id=2, mask_token_id=5, transformers_version="4.46.2")
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 2, "mask_token_id": 5, "alg": "entropy"}, indent=2))
    sd = {k: v.float() for k, v in load_file(str(init / "model.safetensors")).items()}
    sd["lm_head.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"]).clone()
    for i in range(L):
        p = f"model.layers.{i}.self_attn."
        for n in "qkv":
            sd[p + f"{n}_proj.bias"] = torch.zeros(sd[p + f"{n}_proj.weight"].shape[0])
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
