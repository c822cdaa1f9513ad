"""HF-style checkpoint folders: config.json, safetensors shards (+ index), tokenizer files.

Loads our own folders, Stable-DiffCoder-8B(-Base/-Instruct) folders as published (``architectures:
StableDiffcoderForCausalLM``, ``auto_map`` to remote code we never run) and Seed-Coder / Llama folders.
Weights are read with safetensors only. Saving is atomic: a folder is written beside the target and
renamed into place, so a killed save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from .config import ModelConfig, preset
from .network import build_model
from .tokenizer import Tokenizer, TokenizerError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or corrupt; the message says which file and why."""


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    s = size.strip().upper()
    for unit, mult in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def _state_dict_for_save(model: LlamaForCausalLM, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    sd = {}
    tied = model.config.tie_word_embeddings
    for k, v in model.state_dict().items():
        if tied and k == "lm_head.weight":
            continue
        if "rotary_emb" in k:
            continue
        t = v.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        sd[k] = t.contiguous()
    return sd


def recover_swap(target: Path) -> None:
    """Put back the previous ``target`` when a swap was interrupted between its two renames."""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], target)


def atomic_write_dir(target: Path, fill) -> None:
    """Create ``target`` by filling a temporary sibling folder and renaming it into place.

    The old ``target`` is moved aside, the new one renamed in, the old one deleted; a failure in between puts
    the old one back (and ``recover_swap`` does so after a kill)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_swap(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    old = None
    try:
        fill(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(model: LlamaForCausalLM, folder: str | Path, tokenizer: Tokenizer | None = None,
                    config: ModelConfig | None = None, max_shard_size: int | str = "2GB",
                    dtype: torch.dtype | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write an HF-style folder atomically. ``extra`` files: name -> str/bytes/dict(json)."""
    from .network import remask_config

    cfg = config or remask_config(model)
    sd = _state_dict_for_save(model, dtype)
    limit = _parse_size(max_shard_size)

    def fill(tmp: Path) -> None:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for k, v in sd.items():
            n = v.numel() * v.element_size()
            if shards[-1] and size + n > limit:
                shards.append({})
                size = 0
            shards[-1][k] = v
            size += n
        meta = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata=meta)
        else:
            weight_map = {}
            total = 0
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata=meta)
                for k, v in shard.items():
                    weight_map[k] = name
                    total += v.numel() * v.element_size()
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        cdict = cfg.to_json_dict()
        saved_dtype = dtype or next(iter(sd.values())).dtype
        cdict["dtype"] = str(saved_dtype).replace("torch.", "")
        (tmp / "config.json").write_text(json.dumps(cdict, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
        for name, content in (extra or {}).items():
            p = tmp / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, dict):
                p.write_text(json.dumps(content, indent=2) + "\n")
            elif isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)

    atomic_write_dir(Path(folder), fill)
    return Path(folder)


def read_config(folder: str | Path) -> ModelConfig:
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder (a checkpoint is a folder with config.json)")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json: not a model checkpoint")
    from .families import FamilyError, read_folder_config

    try:
        json.loads(path.read_text(encoding="utf-8"))
        return read_folder_config(folder)[0]  # the family that claims it maps it to our config
    except FamilyError as e:
        raise CheckpointError(f"{path}: {e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: unusable model config ({e})") from e


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is corrupt: {e}") from e
        files = sorted({folder / f for f in wm.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{folder}: shard(s) listed in the index are missing: {', '.join(missing)}")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(f for f in folder.glob("*.safetensors") if f.name != "training_state.safetensors")
    if files:
        return files
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise CheckpointError(f"{folder} has only pickle weights (.bin/.pt); remask loads safetensors only")
    raise CheckpointError(f"{folder} has no safetensors weights")


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    attn: str = "sdpa") -> tuple[LlamaForCausalLM, Tokenizer | None]:
    """Load a model (and its tokenizer when the folder has one). Raises ``CheckpointError``."""
    folder = Path(folder)
    cfg = read_config(folder)
    tok = None
    if (folder / "tokenizer.json").is_file():
        try:
            tok = Tokenizer.from_folder(folder)
        except TokenizerError as e:
            raise CheckpointError(str(e)) from e
        # The tokenizer is the authority for special ids when the config does not name them.
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        upd: dict[str, Any] = {}
        if raw.get("mask_token_id") is None and tok.mask_id is not None and cfg.body == "llama":
            upd["mask_token_id"] = tok.mask_id  # (Qwen-vocabulary families chose theirs from the token list)
        for role, key in (("fim_prefix", "fim_prefix_id"), ("fim_suffix", "fim_suffix_id"),
                          ("fim_middle", "fim_middle_id")):
            if getattr(cfg, key) is None and tok.ids[role] is not None:
                upd[key] = tok.ids[role]
        if upd:
            cfg = cfg.replace(**upd)
        if cfg.body != "llama":
            _align_tokenizer(tok, cfg)
    files = _weight_files(folder)
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            sd.update(load_file(str(f), device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f} is corrupt or unreadable: {e}") from e
    if dtype is None:
        dtype = next((v.dtype for v in sd.values() if v.is_floating_point()), torch.float32)
    model = build_model(cfg, dtype=dtype, device="meta", seed=None, attn=attn)
    expected = {k for k in model.state_dict() if "rotary_emb" not in k}
    if cfg.tie_word_embeddings:
        expected.discard("lm_head.weight")
    sd = {k: v for k, v in sd.items() if "rotary_emb" not in k}
    missing = sorted(expected - sd.keys())
    unexpected = sorted(sd.keys() - expected - {"lm_head.weight"})
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not match config.json (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    shapes = model.state_dict()
    for k, v in sd.items():
        if k in shapes and tuple(shapes[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{folder}: {k} has shape {tuple(v.shape)}, config implies "
                                  f"{tuple(shapes[k].shape)}")
    model.to_empty(device=device)
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                          strict=False)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    # Rotary buffers were created on the meta device; rebuild them.
    from .network import body_classes

    with torch.device(device):
        model.model.rotary_emb = body_classes(cfg.body)[1](config=model.config)
    model.remask_config = cfg  # type: ignore[attr-defined]
    model.eval()
    return model, tok


def _align_tokenizer(tok: Tokenizer, cfg: ModelConfig) -> None:
    """Qwen-vocabulary families (Dream, DreamOn, SDAR): the config's special ids are the authority (the
    tokenizer's own guesses would take <|endoftext|> for bos, and miss SDAR's <|MASK|>)."""
    for role, i in (("mask", cfg.mask_token_id), ("bos", cfg.bos_token_id), ("eos", cfg.eos_token_id),
                    ("pad", cfg.pad_token_id), ("fim_prefix", cfg.fim_prefix_id), ("fim_suffix", cfg.fim_suffix_id),
                    ("fim_middle", cfg.fim_middle_id), ("expand", cfg.extra.get("expand_token_id")),
                    ("dlm_pad", cfg.extra.get("dlm_pad_id"))):
        if i is not None:
            tok.ids[role] = int(i)
    tok.special_ids = {i for i in tok.ids.values() if i is not None}


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device this machine has; a clear CheckpointError otherwise."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise CheckpointError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise CheckpointError(f"device {device!r}: this PyTorch sees no CUDA device (use --device cpu)")
        if d.index is not None and d.index >= n:
            raise CheckpointError(f"device {device!r}: there are {n} CUDA devices")
    elif d.type not in ("cpu", "mps", "xpu"):
        raise CheckpointError(f"device {device!r}: use cpu or cuda")
    return d


def resolve_model(spec: str | Path | None, device: str = "cpu", dtype: torch.dtype | None = None,
                  adapter: str | Path | None = None, merge_adapter: bool = True,
                  ) -> tuple[LlamaForCausalLM, Tokenizer | None, str]:
    """Load ``spec``: a folder, ``None``/"default" for the shipped default, or ``random:PRESET``.

    Returns (model, tokenizer, description). A random model is for smoke tests and says so. ``adapter``: a LoRA
    folder (``remask train adapt``) applied here, so every front end gets it; merged unless ``merge_adapter`` is off.
    """
    if adapter:
        from .adapter import apply_adapter

        model, tok, desc = resolve_model(spec, device=device, dtype=dtype)
        model = apply_adapter(model, adapter, merge=merge_adapter)
        return model, tok, f"{desc} + adapter {adapter}{'' if merge_adapter else ' (unmerged)'}"
    check_device(device)
    if spec is None or str(spec) == "default":
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise CheckpointError(f"the built-in default model is missing from {DEFAULT_MODEL_DIR}; "
                                  "pass --model DIR or reinstall remask")
        model, tok = load_checkpoint(DEFAULT_MODEL_DIR, device=device, dtype=dtype or torch.float32)
        return model, tok, f"default model ({DEFAULT_MODEL_DIR})"
    s = str(spec)
    if s.startswith("random:"):
        cfg = preset(s.split(":", 1)[1])
        model = build_model(cfg, dtype=dtype or torch.float32, device=device)
        return model, None, f"RANDOMLY INITIALISED {s.split(':', 1)[1]} model (untrained: output is noise)"
    model, tok = load_checkpoint(s, device=device, dtype=dtype)
    return model, tok, str(s)
