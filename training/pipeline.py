"""corpus -> tokenizer -> token shards -> AR -> BD -> SFT, from one config, each step resumable.

Folders under ``out_dir``: ``corpus/``, ``tokenizer/``, ``ar/``, ``bd/``, ``sft/``. A step whose output
exists is skipped (a finished stage is recognised by its ``training_state.json``), so rerunning the same
command after a kill continues where it stopped. The final model is ``sft/checkpoint`` (or
``bd/checkpoint`` when ``sft_steps`` is 0).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from model.checkpoint import atomic_write_dir
from model.config import preset

from .config import STAGES, TrainConfig
from .corpus import build_corpus, iter_texts, read_manifest, refuse_foreign, tokenize_corpus
from .trainer import Trainer

# Share of a pipeline time budget given to each training stage (renormalised over the stages that run).
TIME_SHARES = {"ar": 0.45, "bd": 0.45, "sft": 0.10}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def corpus_step(cfg: TrainConfig, corpus_dir: Path, log=_log) -> None:
    refuse_foreign(corpus_dir, "manifest.json", "corpus")
    if (corpus_dir / "manifest.json").is_file():
        m = read_manifest(corpus_dir)
        log(f"corpus: using {corpus_dir} ({len(m['files'])} files)")
        return
    build_corpus(corpus_dir, cfg.sources or None, extensions=cfg.extensions, holdout=cfg.holdout,
                 min_file_bytes=cfg.min_file_bytes, max_file_bytes=cfg.max_file_bytes,
                 max_corpus_mb=cfg.max_corpus_mb, skip_tests=cfg.skip_tests, val_fraction=cfg.val_fraction,
                 min_val_files=cfg.min_val_files, seed=cfg.seed, log=log)


def tokenizer_step(cfg: TrainConfig, corpus_dir: Path, tok_dir: Path, log=_log) -> None:
    refuse_foreign(tok_dir, "tokenizer.json", "tokenizer folder")
    if (tok_dir / "tokenizer.json").is_file():
        log(f"tokenizer: using {tok_dir}")
        return
    from model.tokenizer import train_tokenizer

    vocab = cfg.vocab_size or preset(cfg.preset).vocab_size
    t0 = time.perf_counter()
    tok = train_tokenizer(iter_texts(corpus_dir, "train", cfg.tokenizer_max_mb, cfg.seed), vocab)
    atomic_write_dir(tok_dir, tok.save)
    log(f"tokenizer: vocabulary {tok.vocab_size} trained in {time.perf_counter() - t0:.0f} s -> {tok_dir}")


def stage_time_limits(cfg: TrainConfig, stages: list[str], spent_min: float) -> dict[str, float]:
    """Minutes per stage: its own ``{stage}_time_min``, else its share of what is left of the budget."""
    limits = {s: float(cfg.stage_value(s, "time_min")) for s in stages}
    if cfg.time_budget_min > 0:
        free = [s for s in stages if limits[s] <= 0]
        left = max(cfg.time_budget_min - spent_min - sum(limits.values()), 0.05 * len(free))
        total = sum(TIME_SHARES[s] for s in free) or 1.0
        for s in free:
            limits[s] = left * TIME_SHARES[s] / total
    return limits


def run_pipeline(cfg: TrainConfig, log=_log) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus_dir, tok_dir = out / "corpus", out / "tokenizer"
    corpus_step(cfg, corpus_dir, log)
    tokenizer_step(cfg, corpus_dir, tok_dir, log)
    tokenize_corpus(corpus_dir, tok_dir, log=log)
    stages = [s for s in STAGES if cfg.stage_value(s, "steps") > 0]
    if "ar" not in stages and not cfg.init_from:
        raise ValueError("ar_steps is 0 and no --init-from checkpoint was given: nothing to start from")
    limits = stage_time_limits(cfg, stages, (time.perf_counter() - t0) / 60)
    prev: Path | None = Path(cfg.init_from) if cfg.init_from else None
    final = None
    for s in stages:
        if limits[s]:
            m = limits[s]
            log(f"{s}: time limit " + (f"{m:.1f} min" if m >= 1 else f"{60 * m:.0f} s"))
        trainer = Trainer(cfg, s, out / s, corpus_dir, tokenizer_dir=tok_dir, init_from=prev,
                          time_limit_min=limits[s], log=log, extend_time_limited=False)
        final = trainer.run()
        prev = final
    log(f"pipeline: done in {(time.perf_counter() - t0) / 60:.1f} min; model: {final}")
    return final
