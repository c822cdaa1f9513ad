"""The training loop shared by the AR, BD and SFT stages.

What it does, in order: set up torch.distributed when launched by torchrun (WORLD_SIZE > 1; gloo on
CPU, nccl on GPU), load or build the model, wrap it (DDP or FSDP2 ``fully_shard``), resume from the
stage's checkpoint when there is one, then step: micro-batches with bf16 autocast (default on CUDA), gradient
clipping, a NaN/inf guard, AdamW (fused by default), cosine or WSD schedule, metrics JSONL (+ TensorBoard
when installed), a tqdm bar, validation every ``eval_every`` steps and atomic checkpoints.

A stage folder holds ``checkpoint/`` (an HF-style model folder with ``train_config.json`` and the
resume state: ``training_state.json`` for scalars, ``training_state.safetensors`` for optimizer and RNG
tensors) and ``metrics.jsonl``. Data and noise are functions of (seed, step, row), so resuming from a
checkpoint replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from model.checkpoint import CheckpointError, check_device, load_checkpoint, recover_swap, save_checkpoint
from model.config import preset
from model.network import build_model, remask_config, set_attention_backend
from model.tokenizer import Tokenizer

from .config import TrainConfig
from .data import PackedData, fim_settings, loader
from .objectives import BD3Masks, ar_loss, bd_loss, bd_noise, mask_cap, weighted

STAGE_KIND = {"ar": ("ar", True), "bd": ("bd", False), "sft": ("bd-instruct", False)}
_STAGE_SALT = {"ar": 11, "bd": 22, "sft": 33}


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to try."""


# ----------------------------------------------------------------------------------------------- setup
class Dist:
    """Rank/world of this process; initialises the process group when torchrun started several."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.device = device  # NCCL reduces only tensors on the GPU
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, x: float) -> float:
        if not self.enabled:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        d = check_device(cfg.device)
        if d.type == "cuda" and d.index is None:
            d = check_device(torch.device("cuda", local_rank))
    except CheckpointError as e:
        raise TrainingError(f"--device: {e}") from None
    if d.type not in ("cpu", "cuda"):
        raise TrainingError(f"--device {cfg.device}: training runs on cpu or cuda")
    return d


def lr_at(cfg: TrainConfig, base_lr: float, step: int, progress: float) -> float:
    """Linear warmup, then cosine to ``min_lr_ratio``, WSD (flat then linear decay), or constant."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return base_lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    lo = base_lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return base_lr
    if cfg.schedule == "wsd":
        start = 1.0 - cfg.wsd_decay_frac
        if p <= start:
            return base_lr
        return base_lr - (base_lr - lo) * (p - start) / max(cfg.wsd_decay_frac, 1e-9)
    return lo + 0.5 * (base_lr - lo) * (1 + math.cos(math.pi * p))


class LossModule(torch.nn.Module):
    """The network plus its objective, so DDP/FSDP see one module whose forward returns the loss."""

    def __init__(self, model, fn: Callable) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch, step: int, rows: range, eval_mode: bool = False):  # noqa: D401
        return self.fn(self.model, batch, step, rows, eval_mode=eval_mode)


# -------------------------------------------------------------------------------------------- resume IO
def _opt_state(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A full (FQN-keyed) optimizer state dict as safetensors tensors + JSON scalars."""
    tensors, scalars = {}, {}
    for fqn, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt/{fqn}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{fqn}/{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_opt_state(module, opt, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state: dict[str, dict[str, Any]] = {}
    for key, v in tensors.items():
        if not key.startswith("opt/"):
            continue
        fqn, k = key[4:].rsplit("/", 1)
        state.setdefault(fqn, {})[k] = v
    for key, v in meta["scalars"].items():
        fqn, k = key.rsplit("/", 1)
        state.setdefault(fqn, {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    set_optimizer_state_dict(module, opt, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def _exclusive(folder: Path, main: bool):
    """Hold an exclusive lock on ``folder`` for one run: two runs writing one stage folder corrupt each other."""
    if not main:
        yield
        return
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TrainingError(f"another run is using {folder}; wait for it or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_state(ckpt: Path) -> dict[str, Any] | None:
    recover_swap(ckpt)
    p = ckpt / "training_state.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TrainingError(f"{p} is corrupt ({e}); delete {ckpt} to restart the stage") from e


# -------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One stage (``ar``, ``bd`` or ``sft``) of one run, in ``stage_dir``."""

    def __init__(self, cfg: TrainConfig, stage: str, stage_dir: str | Path, corpus_dir: str | Path,
                 tokenizer_dir: str | Path | None = None, init_from: str | Path | None = None,
                 max_steps: int | None = None, time_limit_min: float | None = None,
                 on_step: Callable[[int, dict], None] | None = None, log: Callable[[str], None] | None = None,
                 extend_time_limited: bool = True):
        if stage not in STAGE_KIND:
            raise ValueError(f"unknown stage {stage!r}")
        self.cfg, self.stage = cfg, stage
        self.dir = Path(stage_dir)
        self.ckpt_dir = self.dir / "checkpoint"
        self.corpus_dir = Path(corpus_dir)
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else None
        self.init_from = Path(init_from) if init_from else (Path(cfg.init_from) if cfg.init_from else None)
        self.max_steps = int(max_steps if max_steps is not None else cfg.stage_value(stage, "steps"))
        tl = time_limit_min if time_limit_min is not None else cfg.stage_value(stage, "time_min")
        self.time_limit_s = float(tl) * 60.0 if tl else 0.0
        self.base_lr = float(cfg.stage_value(stage, "lr"))
        self.on_step = on_step
        self._log = log or (lambda s: print(s, file=sys.stderr))
        # A stage its time limit ended continues when run again with a longer one (a user's explicit rerun);
        # the pipeline turns this off: its limits are shares of what is left of a budget, larger on a rerun.
        self.extend_time_limited = extend_time_limited

    def log(self, msg: str) -> None:
        if self.dist.main:
            self._log(msg)

    # ------------------------------------------------------------------ building blocks
    def _tokenizer(self, folder: Path | None) -> Tokenizer:
        for cand in (self.tokenizer_dir, folder):
            if cand is not None and (cand / "tokenizer.json").is_file():
                return Tokenizer.from_folder(cand)
        raise TrainingError("no tokenizer: pass --tokenizer DIR (or start from a checkpoint that has one)")

    def _model(self, tok: Tokenizer, resume: bool):
        kind, shift = STAGE_KIND[self.stage]
        src = self.ckpt_dir if resume else self.init_from
        if src is not None:
            model, _ = load_checkpoint(src, device="cpu", dtype=torch.float32)
            mc = remask_config(model)
            expect = {"ar": ("ar",), "bd": ("ar", "bd"), "sft": ("bd", "bd-instruct")}[self.stage]
            if not resume and mc.kind not in expect:
                self.log(f"warning: {src} is a {mc.kind!r} checkpoint; the {self.stage} stage usually starts from "
                         f"{' or '.join(repr(k) for k in expect)} (the pipeline's previous stage)")
            if mc.vocab_size < tok.vocab_size:
                raise TrainingError(f"{src} has vocabulary {mc.vocab_size}, the tokenizer {tok.vocab_size}")
        else:
            if self.stage != "ar":
                raise TrainingError(f"the {self.stage} stage starts from a checkpoint: pass --init-from DIR "
                                    f"(the {'ar' if self.stage == 'bd' else 'bd'} stage's checkpoint folder)")
            mc = preset(self.cfg.preset)
            mc = mc.replace(vocab_size=tok.vocab_size,
                            max_position_embeddings=max(mc.max_position_embeddings, self.cfg.seq_len + 1))
            model = build_model(mc, dtype=torch.float32, seed=self.cfg.seed)
        need = self.cfg.seq_len + (1 if self.stage == "ar" else 0)
        if need > mc.max_position_embeddings:
            raise TrainingError(f"seq_len {self.cfg.seq_len} exceeds the model context {mc.max_position_embeddings}")
        if self.stage != "ar" and self.cfg.seq_len % mc.block_size:
            raise TrainingError(f"seq_len {self.cfg.seq_len} must be a multiple of the block size {mc.block_size}")
        # A published AR folder (Seed-Coder / Llama, Qwen2, Qwen3: --init-from) becomes one of our checkpoints: its
        # family is ours from here on (block-causal, our rules); its body class stays.
        mc = mc.replace(kind=kind, logit_shift=shift, family="remask")
        model.remask_config = mc
        model.config.logit_shift = shift
        model.config.remask_kind = kind
        return model

    # ------------------------------------------------------------------ main
    def run(self) -> Path:
        cfg = self.cfg
        device = pick_device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "cuda":  # before the process group: NCCL binds each rank to the current device
            torch.cuda.set_device(device)
        self.dist = Dist(device)
        if self.max_steps <= 0:
            raise TrainingError(f"{self.stage}: the number of steps must be positive")
        with _exclusive(self.dir, self.dist.main):
            return self._run(device)

    def _check_resume(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of another stage or shape: resuming it would silently overwrite or mistrain it."""
        if state.get("stage", self.stage) != self.stage:
            raise TrainingError(f"{self.ckpt_dir} holds the {state['stage']} stage's checkpoint, not {self.stage}'s: "
                                "choose another --out")
        try:
            saved = json.loads((self.ckpt_dir / "train_config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return
        for key in ("preset", "seq_len"):
            if key in saved and saved[key] != getattr(self.cfg, key):
                raise TrainingError(f"{self.ckpt_dir} was trained with {key} {saved[key]!r}, this run asks for "
                                    f"{getattr(self.cfg, key)!r}: resume with the same value, or choose another --out")

    def _run(self, device: torch.device) -> Path:
        cfg = self.cfg
        d = self.dist
        state = read_state(self.ckpt_dir)
        if state is not None:
            self._check_resume(state)
        if state and state.get("finished") and state.get("max_steps") == self.max_steps:
            by_time = self.extend_time_limited and state.get("reason") == "time" and state["step"] < self.max_steps
            if not by_time or (self.time_limit_s and self.time_limit_s <= state.get("elapsed_s", 0.0) + 1.0):
                self.log(f"{self.stage}: already finished at step {state['step']} ({self.ckpt_dir}); skipping")
                return self.ckpt_dir
            self.log(f"{self.stage}: the time limit ended it at step {state['step']} of {self.max_steps}; "
                     "continuing under the new limit")
        resume = state is not None
        if not resume and self.stage != "ar" and self.init_from is None:
            raise TrainingError(f"the {self.stage} stage starts from a checkpoint: pass --init-from DIR (the "
                                f"{'ar' if self.stage == 'bd' else 'bd'} stage's checkpoint folder)")
        tok = self._tokenizer(self.ckpt_dir if resume else self.init_from)
        model = self._model(tok, resume).to(device)
        mc = remask_config(model)
        use_flex = self.stage != "ar" and (cfg.attn == "flex_attention"
                                           or (cfg.attn == "auto" and device.type == "cuda"))
        if cfg.attn == "flex_attention" and device.type == "cpu":
            raise TrainingError("flex attention has no backward pass on CPU in PyTorch: use --attn sdpa (or auto)")
        set_attention_backend(model, "flex_attention" if use_flex else ("sdpa" if cfg.attn == "auto" else cfg.attn))
        model.train()
        model.config.use_cache = False

        # Batches: the global batch is split over processes and gradient-accumulation micro-steps.
        per_step = cfg.batch_size
        if per_step % (d.world * cfg.grad_accum):
            raise TrainingError(f"batch_size {per_step} must be divisible by world size {d.world} x grad_accum "
                                f"{cfg.grad_accum}")
        micro = per_step // (d.world * cfg.grad_accum)
        length = cfg.seq_len + 1 if self.stage == "ar" else cfg.seq_len

        def rows_for_micro(k: int) -> tuple[int, range]:
            step, a = divmod(k, cfg.grad_accum)
            first = (a * d.world + d.rank) * micro
            return step, range(first, first + micro)

        salt = _STAGE_SALT[self.stage]
        if self.stage == "sft":
            from .sft import SFTData

            train_src = SFTData(self.corpus_dir, "train", tok, length, cfg, salt)
            val_src = SFTData(self.corpus_dir, "val", tok, length, cfg, salt)
            train_src.check()
        else:
            fs = fim_settings(cfg)
            train_src = PackedData(self.corpus_dir, "train", tok, length, cfg.fim_rate, fs, cfg.seed, salt)
            val_src = PackedData(self.corpus_dir, "val", tok, length, cfg.fim_rate, fs, cfg.seed, salt)

        masks = BD3Masks(mc.block_size, use_flex, device)
        # Weights and optimizer state stay fp32; matmuls run in bf16 under autocast (CUDA by default).
        amp = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        self.cur_step = 0

        def objective(net, batch, step: int, rows: range, *, eval_mode: bool = False):
            with autocast:
                if self.stage == "ar":
                    return ar_loss(net, batch.to(device, non_blocking=True))
                if isinstance(batch, (tuple, list)):
                    x0, elig = batch[0].to(device), batch[1].to(device)
                else:
                    x0, elig = batch.to(device), None
                warm = cfg.bd_warmup_steps if self.stage == "bd" else 0  # SFT starts from a BD model
                cap = 1.0 if eval_mode else mask_cap(step, warm, cfg.bd_u_init)
                w_on = True if eval_mode else weighted(step, warm)
                draws = noise_draws(cfg.seed + (7919 if eval_mode else 0), salt, step, rows, x0.shape[1],
                                    mc.block_size)
                noise = bd_noise(x0, mc.block_size, mc.mask_token_id, cap, w_on, draws, elig, clip=cfg.bd_clip)
                loss, stats = bd_loss(net, x0, noise, masks, mc.mask_token_id)
                stats["mask_cap"] = cap
                stats["weighted"] = float(w_on)
                return loss, stats

        lm = LossModule(model, objective)
        if cfg.compile:
            for layer in model.model.layers:
                layer.compile()
        if d.enabled:
            if cfg.parallel == "fsdp":
                from torch.distributed.fsdp import fully_shard

                for layer in model.model.layers:
                    fully_shard(layer)
                fully_shard(lm)
                wrapped = lm
            else:
                from torch.nn.parallel import DistributedDataParallel as DDP

                wrapped = DDP(lm, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            wrapped = lm

        decay = [p for n, p in lm.named_parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for n, p in lm.named_parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.base_lr,
                                betas=(cfg.beta1, cfg.beta2), fused=cfg.fused_adamw,
                                foreach=None if cfg.fused_adamw else True)

        start_step, elapsed_before, tokens_seen = 0, 0.0, 0
        if resume:
            try:
                tensors = load_file(str(self.ckpt_dir / "training_state.safetensors"))
                _load_opt_state(lm, opt, tensors, state["optimizer"])
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
                raise TrainingError(f"{self.ckpt_dir}: the optimizer state cannot be read ({type(e).__name__}: "
                                    f"{e}); delete {self.ckpt_dir} to restart the stage") from None
            if "rng/cpu" in tensors:
                torch.set_rng_state(tensors["rng/cpu"])
            start_step, elapsed_before, tokens_seen = state["step"], state["elapsed_s"], state["tokens"]
            self.log(f"{self.stage}: resuming from step {start_step} ({self.ckpt_dir})")
        elif self.init_from:
            self.log(f"{self.stage}: starting from {self.init_from}")

        self.dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.dir / "metrics.jsonl"
        if d.main:
            _truncate_metrics(metrics_path, start_step if resume else -1)
            cfg.save_json(self.dir / "train_config.json")
        tb = _tensorboard(self.dir) if d.main else None

        def save(step: int, finished: bool, elapsed: float, reason: str = "") -> None:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            # Collective under FSDP: every rank takes part, rank 0 receives the full tensors and writes.
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            opt_sd = get_optimizer_state_dict(lm, opt, options=opts)
            full = get_model_state_dict(lm, options=opts)
            if not d.main:
                return
            tensors, opt_meta = _opt_state(opt_sd)
            tensors["rng/cpu"] = torch.get_rng_state()
            st = {"stage": self.stage, "step": step, "max_steps": self.max_steps, "finished": finished,
                  "elapsed_s": elapsed, "tokens": tokens_seen, "world_size": d.world, "optimizer": opt_meta,
                  "model_kind": mc.kind, "reason": reason}
            snap = build_model(mc, dtype=torch.float32, device="cpu", seed=None)
            snap.load_state_dict({k[len("model."):]: v for k, v in full.items() if k.startswith("model.")},
                                 strict=False)
            snap.remask_config = mc
            save_checkpoint(snap, self.ckpt_dir, tokenizer=tok, extra={
                "train_config.json": cfg.to_dict(), "training_state.json": st,
                "training_state.safetensors": st_save(tensors)})

        eval_every = cfg.eval_every if cfg.eval_every > 0 else 0

        def evaluate(step: int) -> dict[str, float]:
            lm.eval()
            sums: dict[str, float] = {}
            with torch.no_grad():
                for k in range(cfg.eval_batches):
                    rows = range(d.rank * micro, (d.rank + 1) * micro)
                    # Through the root module: under FSDP its hooks gather the root's own (sharded) weights.
                    loss, stats = lm(val_src.batch(k, rows), k, rows, eval_mode=True)
                    sums["val_loss"] = sums.get("val_loss", 0.0) + float(loss)
                    if "elbo" in stats:
                        sums["val_elbo"] = sums.get("val_elbo", 0.0) + stats["elbo"]
                        sums["val_masked_ce"] = sums.get("val_masked_ce", 0.0) + stats["masked_ce"]
            if hasattr(lm, "reshard"):  # FSDP2 keeps the root's weights gathered after a forward with no backward;
                lm.reshard()  # shard them again, or the optimizer and the checkpoint see other tensors
            lm.train()
            return {k: d.mean(v / max(cfg.eval_batches, 1)) for k, v in sums.items()}

        from tqdm import tqdm

        bar = tqdm(total=self.max_steps, initial=start_step, desc=self.stage, dynamic_ncols=True,
                   disable=not (d.main and cfg.progress), file=sys.stderr)
        batches = loader(train_src, rows_for_micro, start_step * cfg.grad_accum, self.max_steps * cfg.grad_accum,
                         cfg.num_workers)
        t_start = time.perf_counter()
        tok_per_step = cfg.batch_size * cfg.seq_len
        step = start_step
        finished_reason = "steps"
        window_t, window_tokens = time.perf_counter(), 0
        def record(rec: dict) -> None:
            _append_jsonl(metrics_path, rec)
            if tb is not None:
                for k, v in rec.items():
                    if k != "step":
                        tb.add_scalar(f"{self.stage}/{k}", v, rec["step"])

        if eval_every and start_step == 0:  # the baseline the curve starts from
            rec0 = {"step": 0, **evaluate(0)}
            if d.main:
                record(rec0)
        try:
            while step < self.max_steps:
                elapsed = elapsed_before + time.perf_counter() - t_start
                if self.time_limit_s and elapsed >= self.time_limit_s:
                    finished_reason = "time"
                    break
                progress = step / self.max_steps
                if self.time_limit_s:
                    progress = max(progress, elapsed / self.time_limit_s)
                lr = lr_at(cfg, self.base_lr, step, progress)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss_acc = 0.0
                stats_acc: dict[str, float] = {}
                for a in range(cfg.grad_accum):
                    batch = next(batches)
                    rows = rows_for_micro(step * cfg.grad_accum + a)[1]
                    sync = (a == cfg.grad_accum - 1) or not (d.enabled and cfg.parallel == "ddp")
                    ctx = contextlib.nullcontext() if sync else wrapped.no_sync()
                    with ctx:
                        loss, stats = wrapped(batch, step, rows)
                        (loss / cfg.grad_accum).backward()
                    loss_acc += float(loss.detach()) / cfg.grad_accum
                    for k, v in stats.items():
                        stats_acc[k] = stats_acc.get(k, 0.0) + v / cfg.grad_accum
                gn = torch.nn.utils.clip_grad_norm_(lm.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else 1e30)
                if hasattr(gn, "full_tensor"):
                    gn = gn.full_tensor()
                gnorm = float(gn)
                loss_mean = d.mean(loss_acc)
                if not (math.isfinite(loss_mean) and math.isfinite(gnorm)):
                    raise TrainingError(
                        f"{self.stage}: the loss became {loss_mean} (gradient norm {gnorm}) at step {step}, lr "
                        f"{lr:.3g}. Training stopped before the bad update; the last good checkpoint is "
                        f"{self.ckpt_dir if self.ckpt_dir.exists() else 'not written yet'}. Try a lower "
                        f"--{self.stage}-lr, more --warmup-steps" + (", a longer --bd-warmup-steps" if
                                                                   self.stage != "ar" else "") + ".")
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += tok_per_step
                window_tokens += tok_per_step
                rec = {"step": step, "loss": loss_mean, "lr": lr, "grad_norm": gnorm, "tokens": tokens_seen}
                rec.update({k: d.mean(v) for k, v in stats_acc.items() if k != "ce"})
                now = time.perf_counter()
                rec["tok_s"] = window_tokens / max(now - window_t, 1e-9)
                rec["elapsed_s"] = elapsed_before + now - t_start
                if eval_every and (step % eval_every == 0 or step == self.max_steps):
                    rec.update(evaluate(step))
                if d.main and (step % max(cfg.log_every, 1) == 0 or "val_loss" in rec or step == self.max_steps):
                    record(rec)
                    window_t, window_tokens = now, 0
                post = {"loss": f"{loss_mean:.3f}", "tok/s": f"{rec['tok_s']:.0f}", "lr": f"{lr:.2e}"}
                if "mask_cap" in rec:
                    post["cap"] = f"{rec['mask_cap']:.2f}"
                if "val_loss" in rec:
                    post["val"] = f"{rec['val_loss']:.3f}"
                bar.set_postfix(post, refresh=False)
                if self.time_limit_s:  # the time limit, not the step cap, may end the stage: say when
                    bar.total = steps_within(step, self.max_steps, rec["elapsed_s"] - elapsed_before,
                                             step - start_step, self.time_limit_s - rec["elapsed_s"])
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(step, rec)
                if cfg.save_every > 0 and step % cfg.save_every == 0 and step < self.max_steps:
                    save(step, False, rec["elapsed_s"])
        finally:
            bar.close()
            if tb is not None:
                tb.close()
        elapsed = elapsed_before + time.perf_counter() - t_start
        save(step, True, elapsed, finished_reason)
        d.barrier()
        if finished_reason == "time":
            self.log(f"{self.stage}: time limit reached after {step} steps")
        self.log(f"{self.stage}: done, {step} steps, {tokens_seen:,} tokens, {elapsed:.0f} s -> {self.ckpt_dir}")
        return self.ckpt_dir


def steps_within(step: int, max_steps: int, run_s: float, run_steps: int, left_s: float) -> int:
    """The step a time-limited stage will end at, at this run's pace (for the progress bar's total and ETA)."""
    if run_steps <= 0 or run_s <= 0:
        return max_steps
    return max(step, min(max_steps, step + int(max(left_s, 0.0) * run_steps / run_s)))


def noise_draws(seed: int, salt: int, step: int, rows: range, L: int, block: int):
    """Uniform draws for the noise of each row, seeded by (seed, stage, step, row): same for any split of rows."""
    nb = L // block
    us, rs, ss = [], [], []
    for r in rows:
        g = np.random.default_rng([seed, salt, 7, step, r])
        us.append(g.random(nb, dtype=np.float32))
        rs.append(g.random(L, dtype=np.float32))
        ss.append(g.random((nb, block), dtype=np.float32))
    return torch.from_numpy(np.stack(us)), torch.from_numpy(np.stack(rs)), torch.from_numpy(np.stack(ss))


def _append_jsonl(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in rec.items()}) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records past ``step`` (written after the checkpoint we resume from), so the curve stays one curve."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(str(folder / "tensorboard"))


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
