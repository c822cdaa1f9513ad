"""LoRA adapters (PEFT format) on top of a loaded model: check the base, then merge or keep them apart.

An adapter folder holds what PEFT writes (``adapter_config.json`` + ``adapter_model.safetensors``) plus our card
(``adapter_card.json`` and a readable ``ADAPTER.md``) naming the base model and its weight fingerprint. Loading an
adapter on another base would silently give a broken model, so a fingerprint mismatch is refused.

The fingerprint is a SHA-256 over every weight's name and shape and a strided sample of its values rounded to
bfloat16: the same whether the base is held in float32 or bfloat16, and computed in a second for an 8B model
(hashing 16 GB of shards would take minutes on every load).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError

CARD_NAME = "adapter_card.json"
CARD_MD = "ADAPTER.md"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
# LoRA targets per architecture (transformers' model_type). Every projection of attention and MLP: for code
# adaptation the MLP carries most of the new identifiers (QLoRA, Dettmers et al. 2023, found all-linear best).
TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],  # Dream family
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],  # SDAR
}
_SAMPLES_PER_TENSOR = 4096


class AdapterError(CheckpointError):
    """An adapter folder is missing, unreadable, or made for another base model; the message says which."""


def target_modules_for(model) -> list[str]:
    """The default LoRA targets for ``model``'s architecture (an AdapterError for one we have no list for)."""
    mt = getattr(model.config, "model_type", "")
    if mt not in TARGET_MODULES:
        raise AdapterError(f"no default LoRA target modules for model type {mt!r}; pass --target-modules "
                           "(names of its linear layers, e.g. q_proj,v_proj)")
    return list(TARGET_MODULES[mt])


def base_fingerprint(model) -> str:
    """A dtype-independent fingerprint of the base weights (LoRA layers, if injected, are left out)."""
    h = hashlib.sha256()
    items = []
    for name, p in model.state_dict().items():
        if "lora_" in name or "rotary_emb" in name:
            continue
        # PEFT renames a wrapped layer's weight to ``...q_proj.base_layer.weight``; the base's name is the plain one.
        items.append((name.replace(".base_layer.", "."), p))
    for name, p in sorted(items, key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::step][:_SAMPLES_PER_TENSOR].to("cpu", torch.float32).to(torch.bfloat16)
        h.update(f"{name}:{tuple(p.shape)};".encode())
        h.update(sample.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def read_card(folder: str | Path) -> dict[str, Any] | None:
    """The adapter's card, or None for a plain PEFT folder made elsewhere."""
    p = Path(folder) / CARD_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{p} is not valid JSON: {e}") from e


def check_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"adapter folder {folder} does not exist" if not folder.exists() else
                           f"{folder} is not a folder (an adapter is a folder with adapter_config.json)")
    missing = [n for n in PEFT_FILES if not (folder / n).is_file()]
    if missing:
        extra = " (it looks like a model checkpoint: pass it with --model)" if (folder / "config.json").is_file() \
            else ""
        raise AdapterError(f"{folder} is not a PEFT adapter: {', '.join(missing)} missing{extra}")
    return folder


def check_base(model, folder: str | Path, card: dict[str, Any] | None) -> None:
    """Refuse an adapter trained on other weights; warn when a foreign adapter has no card to check."""
    if card is None:
        print(f"warning: {folder} has no {CARD_NAME}; its base model cannot be checked", file=sys.stderr)
        return
    want = (card.get("base") or {}).get("fingerprint")
    if not want:
        raise AdapterError(f"{folder}/{CARD_NAME} names no base fingerprint; it cannot be checked against the model")
    have = base_fingerprint(model)
    if have != want:
        base = card.get("base") or {}
        raise AdapterError(
            f"adapter {folder} was trained on another base model ({base.get('path', '?')}, fingerprint "
            f"{want[:12]}), not on this one (fingerprint {have[:12]}): load it with --model "
            f"{base.get('path', 'THAT_MODEL')}, or train an adapter for this model with `remask train adapt`")


def apply_adapter(model, folder: str | Path, merge: bool = True):
    """``model`` with the adapter in ``folder``: merged into its weights (default) or as separate LoRA layers.

    Returns the same kind of object the loaders return (a ``LlamaForCausalLM`` whose ``remask_config`` is kept),
    so every front end uses it unchanged. Unmerged is slower per token but leaves the base weights untouched.
    """
    from peft import PeftModel

    folder = check_folder(folder)
    card = read_card(folder)
    check_base(model, folder, card)
    cfg = getattr(model, "remask_config", None)
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, OSError) as e:  # shape mismatch, unknown modules, bad safetensors
        raise AdapterError(f"cannot load the adapter {folder} on this model: {str(e).splitlines()[0][:300]}") from e
    inner = peft_model.merge_and_unload() if merge else peft_model.base_model.model
    if cfg is not None:
        inner.remask_config = cfg
    inner.remask_adapter = {"path": str(folder), "merged": merge}
    inner.eval()
    return inner


def save_adapter(peft_model, folder: str | Path, card: dict[str, Any], card_md: str) -> Path:
    """Write the PEFT files and the card into ``folder``; each file replaced atomically (the folder may also hold
    the training run), the card last, so a folder with a card always has the weights it describes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=folder))
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_MD).write_text(card_md, encoding="utf-8")
        for name in (*PEFT_FILES, CARD_MD, CARD_NAME):
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
