"""``remask train adapt``: a LoRA adapter (PEFT) that fits a model to your own code.

Data: folders or git repositories. The files git would keep (tracked and untracked, ``.gitignore`` respected:
``git ls-files``, in a scratch git dir for a folder that is not a repository) go through the corpus builder's
filters (``corpus.build_corpus``: extensions, size, binary, minified, generated, duplicates, evaluation sets
refused), which also splits off a held-out set of whole files (``--val-fraction``, at least ``--min-val-files``)
that is never trained on. Optional SFT pairs (``--sft-data`` JSONL) are mixed into a share of the rows.

Objective: the checkpoint's own (``objectives.py``): for a diffusion checkpoint the block-diffusion loss with the
clipped schedule, no mask-rate warmup (the model already denoises; as the SFT stage); for an AR checkpoint
next-token loss on packed rows of which ``--fim-rate`` are FIM. Only the LoRA weights train.

Run folder: ``OUT/train/`` holds the corpus, the held-out files, ``metrics.jsonl`` and ``checkpoint/`` (adapter
weights + optimizer and RNG state), so a killed run resumes where its last checkpoint left it (data and noise
are functions of (seed, step, row), as in every stage). The adapter itself is ``OUT/adapter_config.json`` +
``OUT/adapter_model.safetensors`` (PEFT) with ``adapter_card.json`` and ``ADAPTER.md``: the base model and
its fingerprint, the data, the hyperparameters, and held-out loss and masked-span exact match before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig, apply_overrides, load_config
from .corpus import CorpusError, build_corpus, check_allowed, read_manifest, tokenize_corpus
from .trainer import TrainingError

# Adapt defaults where they differ from TrainConfig's: one 24 GB GPU (micro-batch 1 of 1024 tokens, 16 of them
# per step), a share of held-out files large enough to measure, no weight decay on LoRA weights.
ADAPT_DEFAULTS: dict[str, Any] = dict(seq_len=1024, batch_size=16, grad_accum=16, warmup_steps=20, weight_decay=0.0,
                                      val_fraction=0.1, min_val_files=2, eval_every=50, eval_batches=4,
                                      save_every=50, log_every=10, skip_tests=False)
ADAPT_STEPS = 300
ADAPT_LR = 2e-4
_SALT = 44
_EVAL_SEED = 7919


@dataclass
class LoraSettings:
    r: int = 16
    alpha: float | None = None  # None: 2 r
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: per architecture (model.adapter.TARGET_MODULES)
    gradient_checkpointing: bool = True


@dataclass
class EvalSettings:
    per_kind: int = 20  # masked spans per kind for exact match
    kinds: tuple[str, ...] = ("line", "statement", "call-args", "block")
    max_new_tokens: int = 64
    threshold: float = 0.9


@dataclass
class AdaptJob:
    model: str  # checkpoint folder or "default"
    data: list[str]
    out: str
    cfg: TrainConfig = field(default_factory=lambda: apply_overrides(TrainConfig(), ADAPT_DEFAULTS, "adapt"))
    lora: LoraSettings = field(default_factory=LoraSettings)
    evals: EvalSettings = field(default_factory=EvalSettings)
    steps: int = ADAPT_STEPS
    lr: float = ADAPT_LR
    sft_rate: float = 0.5  # share of rows made of SFT pairs when --sft-data is given


# ------------------------------------------------------------------------------------------------------- data
def source_files(path: Path) -> tuple[list[Path], str]:
    """The files under ``path`` that git would keep, and how they were listed."""
    if path.is_file():
        return [path], "file"
    if not path.is_dir():
        raise CorpusError(f"data path {path} does not exist")
    git = shutil.which("git")
    inside = False
    if git:
        r = subprocess.run([git, "-C", str(path), "rev-parse", "--is-inside-work-tree"], capture_output=True,
                           text=True)
        inside = r.returncode == 0 and r.stdout.strip() == "true"
    if inside:
        out = subprocess.run([git, "-C", str(path), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
        how = "git repository (tracked + untracked, .gitignore respected)"
    else:
        if not any(path.rglob(".gitignore")):
            return sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts), "folder"
        if not git:
            raise CorpusError(f"{path} has .gitignore files and git is not installed to apply them: install git")
        with tempfile.TemporaryDirectory() as gd:  # a scratch repository whose work tree is the folder
            subprocess.run([git, "init", "-q", gd], capture_output=True, check=True)
            out = subprocess.run([git, f"--git-dir={gd}/.git", f"--work-tree={path.resolve()}", "-C", str(path),
                                  "ls-files", "-z", "--others", "--exclude-standard"],
                                 capture_output=True, check=True).stdout
        how = "folder (.gitignore respected)"
    files = [path / n for n in out.decode("utf-8", "surrogateescape").split("\0") if n]
    return sorted(f for f in files if f.is_file()), how


def build_adapt_corpus(data: list[str], corpus_dir: Path, cfg: TrainConfig, log: Callable[[str], None]) -> dict:
    """The corpus of ``data`` through the corpus builder: a scratch folder of links to the kept files is its source.

    Returns a summary of where the files came from (written into the card)."""
    exts = {e if e.startswith(".") else f".{e}" for e in (x.lower() for x in cfg.extensions)}
    stage = Path(tempfile.mkdtemp(prefix=".stage.", dir=corpus_dir.parent))
    sources = []
    try:
        used: set[str] = set()
        for spec in data:
            path = Path(spec).expanduser()
            check_allowed(path)
            check_allowed(path.resolve())
            files, how = source_files(path)
            label = path.resolve().name or "root"
            while label in used:
                label += "_"
            used.add(label)
            n = 0
            base = path if path.is_dir() else path.parent
            for f in files:
                if f.suffix.lower() not in exts:
                    continue
                link = stage / label / f.relative_to(base)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(f.resolve())
                n += 1
            sources.append({"path": str(path.resolve()), "listed_by": how, "files_listed": len(files),
                            "files_with_known_extensions": n})
        build_corpus(corpus_dir, [str(stage)], extensions=cfg.extensions, holdout=[],
                     min_file_bytes=cfg.min_file_bytes, max_file_bytes=cfg.max_file_bytes,
                     max_corpus_mb=cfg.max_corpus_mb, skip_tests=cfg.skip_tests, val_fraction=cfg.val_fraction,
                     min_val_files=cfg.min_val_files, seed=cfg.seed, log=log)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"sources": sources}


def write_heldout(corpus_dir: Path, folder: Path) -> list[Path]:
    """Copy the held-out (validation) files out of the corpus, under their paths, for the exact-match task."""
    from .corpus import TextStore

    manifest = read_manifest(corpus_dir)
    store = TextStore(corpus_dir, "val")
    out = []
    for i, item in enumerate(f for f in manifest["files"] if f["split"] == "val"):
        p = folder / item["path"]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(store[i], encoding="utf-8")
        out.append(p)
    return out


class MixedRows:
    """Rows of the packed corpus (all positions may be masked), and with ``sft`` a share of SFT-pair rows whose
    prompt stays clean: ``batch(step, rows) -> (tokens, eligible)``, pure in (step, row) as every source."""

    def __init__(self, packed, sft=None, rate: float = 0.0, seed: int = 0) -> None:
        self.packed, self.sft, self.rate, self.seed = packed, sft, rate if sft is not None else 0.0, seed

    def row(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.rate > 0 and np.random.default_rng([self.seed, _SALT, 5, step, index]).random() < self.rate:
            return self.sft.row(step, index)
        x = self.packed.row(step, index)
        return x, np.ones(len(x), dtype=bool)

    def batch(self, step: int, rows: range):
        import torch

        items = [self.row(step, i) for i in rows]
        return (torch.from_numpy(np.stack([a for a, _ in items])), torch.from_numpy(np.stack([b for _, b in items])))


# ------------------------------------------------------------------------------------------------ memory
def memory_estimate(mc, r: int = 16, seq_len: int = 1024, micro: int = 1, diffusion: bool = True,
                    n_targets: int = 7, mask_share: float = 1.0) -> dict[str, float]:
    """GB needed to train a LoRA of rank ``r`` on every projection of ``mc`` with bf16 weights and gradient
    checkpointing (the arithmetic written out in training/README.md). Worst case: every position masked."""
    h, inter, layers, v = mc.hidden_size, mc.intermediate_size, mc.num_hidden_layers, mc.vocab_size
    hd = mc.head_dim or h // mc.num_attention_heads
    q, kv = mc.num_attention_heads * hd, mc.num_key_value_heads * hd
    pairs = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)][:n_targets]
    lora = layers * r * sum(a + b for a, b in pairs)
    tokens = micro * seq_len * (2 if diffusion else 1)  # BD forwards [x_t ; x_0]
    gb = 1e9
    est = {
        "base_weights_bf16": mc.num_parameters() * 2 / gb,
        "lora_fp32_weights_grads_adam": lora * 4 * 4 / gb,  # weight, gradient, two Adam moments
        "checkpointed_layer_inputs_bf16": layers * tokens * h * 2 / gb,
        # one layer recomputed in the backward: q, k, v, attention out, 2 residual inputs (bf16), MLP gate/up/act/prod
        "one_layer_recompute_bf16": tokens * (q + 2 * kv + q + 2 * h + 4 * inter) * 2 / gb,
        # logits of the predicted positions in fp32 (loss is taken in fp32), their softmax and gradient: 3 copies
        "logits_fp32_x3": micro * seq_len * mask_share * v * 4 * 3 / gb,
        "cuda_context_and_allocator": 1.0,
    }
    est["lora_parameters_M"] = lora / 1e6
    est["total"] = sum(val for k, val in est.items() if k != "lora_parameters_M")
    return est


# ------------------------------------------------------------------------------------------------ evaluation
def heldout_loss(net, src, objective: str, mc, cfg: TrainConfig, rows: range, masks, device, autocast) -> dict:
    """Loss on fixed held-out rows and fixed noise (the same before and after, so the two compare)."""
    import torch

    from .objectives import ar_loss, bd_loss, bd_noise
    from .trainer import noise_draws

    sums: dict[str, float] = {}
    with torch.no_grad(), autocast:
        for k in range(max(cfg.eval_batches, 1)):
            x0 = src.batch(k, rows)
            x0 = (x0[0] if isinstance(x0, tuple) else x0).to(device)
            if objective == "ar":
                loss, stats = ar_loss(net, x0)
                stats = {"ce": float(loss)}
            else:
                draws = noise_draws(cfg.seed + _EVAL_SEED, _SALT, k, rows, x0.shape[1], mc.block_size)
                noise = bd_noise(x0, mc.block_size, mc.mask_token_id, 1.0, True, draws, None, clip=cfg.bd_clip)
                loss, stats = bd_loss(net, x0, noise, masks, mc.mask_token_id)
            sums["loss"] = sums.get("loss", 0.0) + float(loss)
            for key in ("masked_ce", "ce"):
                if key in stats:
                    sums[key] = sums.get(key, 0.0) + float(stats[key])
    n = max(cfg.eval_batches, 1)
    return {k: v / n for k, v in sums.items()}


def heldout_exact(net, tok, files: list[Path], objective: str, ev: EvalSettings, seed: int) -> dict | None:
    """Masked-span exact match on the held-out files (the eval harness's exact-match task)."""
    from model.decoder import DecodeConfig

    from .evals.common import EvalError
    from .evals.spans import GRAMMARS, evaluate

    files = [f for f in files if f.suffix in GRAMMARS]
    if not files or ev.per_kind <= 0:
        return None
    dc = DecodeConfig(max_new_tokens=ev.max_new_tokens, threshold=ev.threshold,
                      mode="ar" if objective == "ar" else "diffusion")
    try:
        _, s = evaluate(files, net, tok, dc, per_kind=ev.per_kind, kinds=ev.kinds, seed=seed)
    except EvalError:  # no spans of these kinds in the held-out files
        return None
    spans = s["spans"]
    em = sum(v["exact_match"] * v["spans"] for v in s["kinds"].values()) / max(spans, 1)
    return {"exact_match": em, "spans": spans,
            "kinds": {k: {"spans": v["spans"], "exact_match": v["exact_match"],
                          "edit_similarity": v["edit_similarity"]} for k, v in s["kinds"].items()}}


# --------------------------------------------------------------------------------------------------- the run
def _model_folder(spec: str) -> Path:
    from model.checkpoint import DEFAULT_MODEL_DIR

    if spec in ("", "default"):
        return DEFAULT_MODEL_DIR
    if spec.startswith("random:"):
        raise TrainingError("adapt needs a trained checkpoint folder with a tokenizer, not a random model")
    return Path(spec).expanduser()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def run_adapt(job: AdaptJob, on_step: Callable[[int, dict], None] | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Train (or resume, or report a finished) adapter; returns the card."""
    from .trainer import _exclusive

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainingError("adapt runs in one process (a LoRA of an 8B model fits one 24 GB GPU); not with torchrun")
    if job.steps <= 0:
        raise TrainingError("adapt: the number of steps must be positive")
    if not job.data:
        raise TrainingError("adapt: pass --data PATH (folders, repositories or files of your code)")
    model_dir = _model_folder(job.model)
    if not (model_dir / "config.json").is_file() or not (model_dir / "tokenizer.json").is_file():
        raise TrainingError(f"{model_dir} is not a checkpoint folder with config.json and tokenizer.json: adapt needs "
                            "the checkpoint and its own tokenizer")
    for d in job.data:
        if not Path(d).expanduser().exists():
            raise TrainingError(f"data path {d} does not exist")
    out = Path(job.out)
    work = out / "train"
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not work.is_dir()
                         and not (out / "adapter_card.json").is_file()):
        raise TrainingError(f"{out} exists and is not an adapter folder; it would be overwritten: choose another --out")
    with _exclusive(work, True):
        return _Run(job, work, on_step, log).run()


class _Run:
    def __init__(self, job: AdaptJob, work: Path, on_step, log) -> None:
        self.job, self.cfg, self.work, self.on_step, self.log = job, job.cfg, work, on_step, log
        self.ckpt = work / "checkpoint"
        self.corpus = work / "corpus"

    def _data(self, model_dir: Path) -> dict:
        info_path = self.work / "data.json"
        if (self.corpus / "manifest.json").is_file() and info_path.is_file():
            info = json.loads(info_path.read_text())
            if sorted(info["data"]) != sorted(str(Path(d).expanduser().resolve()) for d in self.job.data):
                raise TrainingError(f"{self.work} was started on other data ({', '.join(info['data'])}); resume with "
                                    "the same --data or choose another --out")
            self.log(f"adapt: using the corpus in {self.corpus}")
        else:
            shutil.rmtree(self.corpus, ignore_errors=True)
            summary = build_adapt_corpus(self.job.data, self.corpus, self.cfg, self.log)
            info = {"data": [str(Path(d).expanduser().resolve()) for d in self.job.data], **summary}
            info_path.write_text(json.dumps(info, indent=1) + "\n")
        tokenize_corpus(self.corpus, model_dir, log=self.log)
        shutil.rmtree(self.work / "heldout", ignore_errors=True)
        self.heldout = write_heldout(self.corpus, self.work / "heldout")
        m = read_manifest(self.corpus)
        info["files"] = {"train": m["splits"]["train"]["files"], "heldout": m["splits"]["val"]["files"]}
        info["bytes"] = {"train": m["splits"]["train"]["bytes"], "heldout": m["splits"]["val"]["bytes"]}
        info["languages"] = m["languages"]
        info["dropped"] = m["dropped"]
        return info

    def run(self) -> dict:
        import torch
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file
        from safetensors.torch import save as st_save

        from model.adapter import CARD_NAME, base_fingerprint, save_adapter, target_modules_for
        from model.checkpoint import atomic_write_dir, load_checkpoint
        from model.network import remask_config, set_attention_backend

        from .data import PackedData, fim_settings, loader
        from .objectives import BD3Masks, ar_loss, bd_loss, bd_noise
        from .trainer import (
            _append_jsonl,
            _load_opt_state,
            _opt_state,
            _truncate_metrics,
            lr_at,
            noise_draws,
            pick_device,
            read_state,
        )

        job, cfg, out = self.job, self.cfg, Path(self.job.out)
        state = read_state(self.ckpt)
        if state and state.get("finished") and state.get("max_steps") == job.steps and (out / CARD_NAME).is_file():
            card = json.loads((out / CARD_NAME).read_text())
            self.log(f"adapt: already finished ({out}); delete {self.work} to train again")
            return card
        device = pick_device(cfg, 0)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        amp = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
        model_dir = _model_folder(job.model)
        info = self._data(model_dir)
        # The base is frozen: held in bf16 when training in bf16 (16 GB for 8B instead of 32), LoRA weights in fp32.
        model, tok = load_checkpoint(model_dir, device=device, dtype=torch.bfloat16 if amp else torch.float32)
        mc = remask_config(model)
        objective = "ar" if (mc.kind == "ar" or mc.logit_shift) else "bd"
        fingerprint = base_fingerprint(model)
        if state is not None and state.get("base_fingerprint") != fingerprint:
            raise TrainingError(f"{self.ckpt} was trained on another base model; resume with the same --model "
                                f"({state.get('base_path')}) or choose another --out")
        length = cfg.seq_len + (1 if objective == "ar" else 0)
        if length > mc.max_position_embeddings:
            raise TrainingError(f"seq_len {cfg.seq_len} exceeds the model context {mc.max_position_embeddings}")
        if objective == "bd" and cfg.seq_len % mc.block_size:
            raise TrainingError(f"seq_len {cfg.seq_len} must be a multiple of the block size {mc.block_size}")
        if cfg.batch_size % cfg.grad_accum:
            raise TrainingError(f"batch_size {cfg.batch_size} must be divisible by grad_accum {cfg.grad_accum}")
        micro = cfg.batch_size // cfg.grad_accum

        targets = job.lora.target_modules or target_modules_for(model)
        # What a resumed run must keep: another rank, targets, row length or batch would mistrain the saved state.
        shape = {"r": job.lora.r, "alpha": job.lora.alpha or 2 * job.lora.r, "target_modules": sorted(targets),
                 "seq_len": cfg.seq_len, "batch_size": cfg.batch_size}
        if state is not None and state.get("shape", shape) != shape:
            diff = ", ".join(f"{k} {state['shape'].get(k)!r} (now {v!r})" for k, v in shape.items()
                             if state["shape"].get(k) != v)
            raise TrainingError(f"{self.ckpt} was trained with {diff}: resume with the same values, or choose another "
                                "--out")
        lcfg = LoraConfig(r=job.lora.r, lora_alpha=job.lora.alpha or 2 * job.lora.r, lora_dropout=job.lora.dropout,
                          target_modules=targets, bias="none")
        torch.manual_seed(cfg.seed)  # LoRA A's initialisation and dropout: a rerun is the same run
        try:
            peft_model = get_peft_model(model, lcfg)
        except ValueError as e:
            raise TrainingError(f"--target-modules {','.join(targets)}: {e}") from None
        net = peft_model.base_model.model  # the Llama with LoRA layers inside: what the objectives and decoder call
        net.remask_config = mc
        use_flex = objective == "bd" and (cfg.attn == "flex_attention"
                                          or (cfg.attn == "auto" and device.type == "cuda"))
        if cfg.attn == "flex_attention" and device.type == "cpu":
            raise TrainingError("flex attention has no backward pass on CPU in PyTorch: use --attn sdpa (or auto)")
        set_attention_backend(net, "flex_attention" if use_flex else ("sdpa" if cfg.attn == "auto" else cfg.attn))
        net.config.use_cache = False
        if job.lora.gradient_checkpointing:
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in trainable)

        fs = fim_settings(cfg)
        train_packed = PackedData(self.corpus, "train", tok, length, cfg.fim_rate, fs, cfg.seed, _SALT)
        val_src = PackedData(self.corpus, "val", tok, length, cfg.fim_rate, fs, cfg.seed, _SALT)
        sft, n_pairs = None, 0
        if cfg.sft_data:
            from .sft import SFTData

            sft = SFTData(self.corpus, "train", tok, length, dataclasses.replace(cfg, sft_synthetic_rate=0.0), _SALT)
            n_pairs = len(sft.pairs)
        train_src = MixedRows(train_packed, sft, job.sft_rate, cfg.seed)
        masks = BD3Masks(mc.block_size, use_flex, device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        eval_rows = range(min(max(micro, 4), 8))

        def objective_fn(batch, step: int, rows: range):
            x0, elig = batch[0].to(device), batch[1].to(device)
            with autocast:
                if objective == "ar":
                    return ar_loss(net, x0)
                draws = noise_draws(cfg.seed, _SALT, step, rows, x0.shape[1], mc.block_size)
                noise = bd_noise(x0, mc.block_size, mc.mask_token_id, 1.0, True, draws, elig, clip=cfg.bd_clip)
                return bd_loss(net, x0, noise, masks, mc.mask_token_id)

        def evaluate(with_exact: bool) -> dict:
            net.eval()
            try:
                res = heldout_loss(net, val_src, objective, mc, cfg, eval_rows, masks, device, autocast)
                if with_exact:
                    with autocast:
                        res["exact"] = heldout_exact(net, tok, self.heldout, objective, job.evals, cfg.seed)
            finally:
                net.train()
            return res

        opt = torch.optim.AdamW(trainable, lr=job.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                                fused=cfg.fused_adamw, foreach=None if cfg.fused_adamw else True)
        start, elapsed_before, tokens_seen = 0, 0.0, 0
        if state is not None:
            try:
                set_peft_model_state_dict(peft_model, load_file(str(self.ckpt / "adapter_model.safetensors")))
                tensors = load_file(str(self.ckpt / "training_state.safetensors"))
                _load_opt_state(peft_model, opt, tensors, state["optimizer"])
            except Exception as e:  # noqa: BLE001 - any unreadable state is the same advice
                raise TrainingError(f"{self.ckpt}: the saved state cannot be read ({type(e).__name__}: {e}); delete "
                                    f"{self.ckpt} to restart") from None
            torch.set_rng_state(tensors["rng/cpu"])
            start, elapsed_before, tokens_seen = state["step"], state["elapsed_s"], state["tokens"]
            before = state["before"]
            self.log(f"adapt: resuming from step {start} ({self.ckpt})")
        else:
            self.log(f"adapt: {objective} objective, LoRA r={job.lora.r} on {','.join(targets)} "
                     f"({n_trainable / 1e6:.2f}M trainable of {mc.num_parameters() / 1e6:.1f}M), "
                     f"{info['files']['train']} training / {info['files']['heldout']} held-out files; "
                     "measuring the base on the held-out files")
            net.train()
            before = evaluate(True)
        peft_model.train()
        metrics = self.work / "metrics.jsonl"
        _truncate_metrics(metrics, start if state is not None else -1)
        if state is None:
            _append_jsonl(metrics, {"step": 0, "val_loss": before["loss"]})

        def save(step: int, finished: bool, elapsed: float) -> None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opt_sd = get_optimizer_state_dict(peft_model, opt, options=StateDictOptions(full_state_dict=True,
                                                                                          cpu_offload=True))
            tensors, meta = _opt_state(opt_sd)
            tensors["rng/cpu"] = torch.get_rng_state()
            weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
            st = {"stage": "adapt", "step": step, "max_steps": job.steps, "finished": finished, "elapsed_s": elapsed,
                  "tokens": tokens_seen, "optimizer": meta, "before": before, "base_fingerprint": fingerprint,
                  "base_path": str(model_dir), "model_kind": mc.kind, "shape": shape}

            def fill(tmp: Path) -> None:
                from safetensors.torch import save_file

                save_file(weights, str(tmp / "adapter_model.safetensors"))
                (tmp / "training_state.safetensors").write_bytes(st_save(tensors))
                (tmp / "training_state.json").write_text(json.dumps(st, indent=1) + "\n")
                cfg.save_json(tmp / "train_config.json")

            atomic_write_dir(self.ckpt, fill)

        from tqdm import tqdm

        bar = tqdm(total=job.steps, initial=start, desc="adapt", dynamic_ncols=True, disable=not cfg.progress,
                   file=sys.stderr)

        def rows_for_micro(k: int) -> tuple[int, range]:
            step, a = divmod(k, cfg.grad_accum)
            return step, range(a * micro, (a + 1) * micro)

        batches = loader(train_src, rows_for_micro, start * cfg.grad_accum, job.steps * cfg.grad_accum, 0)
        t0 = time.perf_counter()
        step = start
        tok_per_step = cfg.batch_size * cfg.seq_len
        try:
            while step < job.steps:
                lr = lr_at(cfg, job.lr, step, step / job.steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss_acc = 0.0
                for a in range(cfg.grad_accum):
                    loss, _ = objective_fn(next(batches), step, rows_for_micro(step * cfg.grad_accum + a)[1])
                    (loss / cfg.grad_accum).backward()
                    loss_acc += float(loss.detach()) / cfg.grad_accum
                gnorm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip if cfg.grad_clip > 0 else 1e30))
                if not (math.isfinite(loss_acc) and math.isfinite(gnorm)):
                    raise TrainingError(f"adapt: the loss became {loss_acc} (gradient norm {gnorm}) at step {step}; "
                                        f"stopped before the bad update. Try a lower --lr (now {job.lr:g}).")
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += tok_per_step
                elapsed = elapsed_before + time.perf_counter() - t0
                rec = {"step": step, "loss": loss_acc, "lr": lr, "grad_norm": gnorm, "tokens": tokens_seen,
                       "tok_s": (step - start) * tok_per_step / max(time.perf_counter() - t0, 1e-9),
                       "elapsed_s": elapsed}
                if cfg.eval_every and step % cfg.eval_every == 0 and step < job.steps:
                    rec["val_loss"] = evaluate(False)["loss"]
                if step % max(cfg.log_every, 1) == 0 or "val_loss" in rec:
                    _append_jsonl(metrics, rec)
                post = {"loss": f"{loss_acc:.3f}", "lr": f"{lr:.1e}", "tok/s": f"{rec['tok_s']:.0f}"}
                if "val_loss" in rec:
                    post["val"] = f"{rec['val_loss']:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(step, rec)
                if cfg.save_every > 0 and step % cfg.save_every == 0 and step < job.steps:
                    save(step, False, elapsed)
        finally:
            bar.close()
        elapsed = elapsed_before + time.perf_counter() - t0
        self.log("adapt: measuring the adapted model on the held-out files")
        after = evaluate(True)
        _append_jsonl(metrics, {"step": step, "val_loss": after["loss"]})
        save(step, True, elapsed)
        card = {
            "format": "remask-adapter/1",
            "base": {"path": str(model_dir.resolve()), "fingerprint": fingerprint, "kind": mc.kind,
                     "config_sha256": _file_sha256(model_dir / "config.json"), "parameters": mc.num_parameters()},
            "objective": "block diffusion, clipped schedule (objectives.bd_loss)" if objective == "bd"
            else f"next-token with FIM rate {cfg.fim_rate} (objectives.ar_loss)",
            "data": {**info, "sft_pairs": n_pairs, "sft_rate": job.sft_rate if n_pairs else 0.0},
            "hyperparameters": {"r": job.lora.r, "alpha": job.lora.alpha or 2 * job.lora.r,
                                "dropout": job.lora.dropout, "target_modules": targets, "steps": job.steps,
                                "lr": job.lr, "schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps,
                                "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "seq_len": cfg.seq_len,
                                "fim_rate": cfg.fim_rate, "weight_decay": cfg.weight_decay, "seed": cfg.seed,
                                "precision": "bf16 autocast, bf16 base" if amp else "fp32",
                                "gradient_checkpointing": job.lora.gradient_checkpointing,
                                "trainable_parameters": n_trainable},
            "evaluation": {"heldout_files": len(self.heldout), "loss": "BD ELBO-weighted masked CE per token"
                           if objective == "bd" else "next-token CE", "before": before, "after": after},
            "trained": {"steps": step, "tokens": tokens_seen, "elapsed_s": round(elapsed, 1),
                        "device": str(device), "date": time.strftime("%Y-%m-%d", time.gmtime())},
        }
        save_adapter(peft_model, out, card, card_markdown(card))
        self.log(f"adapt: done, {step} steps, {elapsed:.0f} s -> {out}")
        return card


def _pct(e: dict | None) -> str:
    return "n/a" if not e else f"{100 * e['exact_match']:.1f}% of {e['spans']} spans"


def report_lines(card: dict) -> list[str]:
    ev = card["evaluation"]
    b, a = ev["before"], ev["after"]
    return [f"held-out files: {ev['heldout_files']}",
            f"held-out loss ({ev['loss']}): {b['loss']:.4f} -> {a['loss']:.4f}",
            f"masked-span exact match: {_pct(b.get('exact'))} -> {_pct(a.get('exact'))}"]


def card_markdown(card: dict) -> str:
    """ADAPTER.md: the card for people."""
    hp, base, data = card["hyperparameters"], card["base"], card["data"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in hp.items())
    srcs = "\n".join(f"- {s['path']}: {s['listed_by']}, {s['files_with_known_extensions']} source files"
                     for s in data.get("sources", []))
    return (f"# LoRA adapter\n\nBase model: `{base['path']}` ({base['kind']}, {base['parameters'] / 1e6:.1f}M "
            f"parameters), weight fingerprint `{base['fingerprint'][:16]}`; config.json sha256 "
            f"`{base['config_sha256'][:16]}`. Loading it on another base is refused.\n\n"
            f"Use: `remask fill FILE --model {base['path']} --adapter THIS_FOLDER` (every model command takes "
            f"`--adapter`; the language server has an `adapter` setting).\n\n"
            f"Objective: {card['objective']}.\n\n## Data\n\n{srcs}\n\nTraining files {data['files']['train']} "
            f"({data['bytes']['train'] / 1e3:.0f} kB), held-out files {data['files']['heldout']} (never trained on), "
            f"languages {data['languages']}, dropped {data['dropped']}; SFT pairs {data['sft_pairs']}.\n\n"
            f"## Before and after (held-out files)\n\n" + "\n".join(f"- {x}" for x in report_lines(card)[1:])
            + f"\n\n## Hyperparameters\n\n| | |\n|---|---|\n{rows}\n\nTrained {card['trained']['steps']} steps, "
            f"{card['trained']['tokens']:,} tokens, {card['trained']['elapsed_s']} s on {card['trained']['device']} "
            f"({card['trained']['date']}).\n")


# ------------------------------------------------------------------------------------------------ command line
def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("adapt (a LoRA adapter for your code: --model DIR --data PATH ... --out ADAPTER)")
    g.add_argument("--model", default=None, metavar="DIR", help="checkpoint folder to adapt ('default': built-in)")
    g.add_argument("--lora-r", type=int, default=16, metavar="R", help="LoRA rank (default 16)")
    g.add_argument("--lora-alpha", type=float, default=None, metavar="A", help="LoRA alpha (default 2 x rank)")
    g.add_argument("--lora-dropout", type=float, default=0.05, metavar="P", help="LoRA dropout (default 0.05)")
    g.add_argument("--target-modules", default=None, metavar="NAME,...",
                   help="linear layers to adapt (default per architecture: every attention and MLP projection)")
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute layer activations in the backward (default on: fits 8B on 24 GB)")
    g.add_argument("--sft-rate", type=float, default=0.5, metavar="P",
                   help="share of rows made of --sft-data pairs when given (default 0.5)")
    g.add_argument("--eval-per-kind", type=int, default=20, metavar="N",
                   help="held-out spans per kind for exact match before/after (default 20; 0 = loss only)")
    g.add_argument("--eval-kinds", default="line,statement,call-args,block", metavar="KIND,...",
                   help="span kinds for exact match (default line,statement,call-args,block)")
    g.add_argument("--eval-max-new-tokens", type=int, default=64, metavar="N",
                   help="tokens per filled span in the exact-match task (default 64)")


def job_from_args(args: argparse.Namespace) -> AdaptJob:
    if getattr(args, "preset", None):
        raise ValueError("--preset does not apply to adapt: the model's shape is --model's")
    if not args.model:
        raise ValueError("adapt needs --model DIR (the checkpoint to adapt; 'default' for the built-in one)")
    if not args.out:
        raise ValueError("adapt needs --out ADAPTER (the folder to write the adapter to)")
    cfg = apply_overrides(TrainConfig(), ADAPT_DEFAULTS, "adapt defaults")
    if getattr(args, "config", None):
        cfg = apply_overrides(cfg, load_config(args.config), str(args.config))
    cfg = apply_overrides(cfg, {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None},
                          "command line")
    cfg.validate()
    if args.lora_r < 1 or not 0 <= args.lora_dropout < 1 or not 0 <= args.sft_rate <= 1:
        raise ValueError("--lora-r must be >= 1, --lora-dropout in [0, 1), --sft-rate in [0, 1]")
    targets = [t.strip() for t in args.target_modules.split(",") if t.strip()] if args.target_modules else None
    kinds = tuple(k.strip() for k in args.eval_kinds.split(",") if k.strip())
    from .evals.spans import KINDS

    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"--eval-kinds: unknown {bad}; choose from {', '.join(KINDS)}")
    return AdaptJob(model=args.model, data=list(args.data or []), out=args.out, cfg=cfg,
                    lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                                      target_modules=targets, gradient_checkpointing=args.gradient_checkpointing),
                    evals=EvalSettings(per_kind=args.eval_per_kind, kinds=kinds,
                                       max_new_tokens=args.eval_max_new_tokens),
                    steps=args.steps if args.steps is not None else ADAPT_STEPS,
                    lr=args.lr if args.lr is not None else ADAPT_LR, sft_rate=args.sft_rate)


def run_command(args: argparse.Namespace) -> int:
    card = run_adapt(job_from_args(args))
    print("\n".join(report_lines(card)))
    print(args.out)
    return 0
