"""What every suite shares: data paths, loading the model, FIM prompts, batched generation, output files."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.fileio import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


class EvalError(RuntimeError):
    """A user-facing problem (missing data, unsuitable model); the CLI prints the message and exits 2."""


def data_path(*parts: str, override: str | Path | None = None) -> Path:
    """``override`` when given, else ``../shared/data/<parts>`` relative to the repository root."""
    p = Path(override) if override else SHARED_DATA.joinpath(*parts)
    if not p.exists():
        raise EvalError(f"evaluation data not found: {p} (pass --data PATH)")
    return p


def select(items: list, limit: int | None, seed: int = 0) -> list:
    """A seeded random subset of ``limit`` items in their original order (the same for every run).

    The first N tasks of a split would all come from the first few problems; a spread sample does not.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise EvalError("--limit must be at least 1")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


# Prompts ------------------------------------------------------------------------------------------------
def fim_prompt(tok, prefix: str, suffix: str, budget: int = 2048, bos: bool = False) -> list[int]:
    """Suffix-first FIM, as training builds it (training/fim.py): ``<fim_suffix> S <fim_prefix> P <fim_middle>``.

    At most ``budget`` tokens: a long context keeps the prefix and suffix tokens nearest the hole, the
    suffix getting up to a third of the budget (what it does not use goes to the prefix).
    """
    pre_id, suf_id, mid_id = tok.fim_ids
    if None in (pre_id, suf_id, mid_id):
        raise EvalError("the tokenizer has no FIM tokens (fim-prefix / fim-suffix / fim-middle)")
    head = [tok.bos_id] if bos and tok.bos_id is not None else []
    room = budget - len(head) - 3
    if room < 2:
        raise EvalError(f"a prompt budget of {budget} tokens leaves no room for context")
    p, s = context_ids(tok, prefix, suffix, room)
    return head + [suf_id] + s + [pre_id] + p + [mid_id]


def context_ids(tok, prefix: str, suffix: str, room: int) -> tuple[list[int], list[int]]:
    """Prefix and suffix ids in at most ``room`` tokens, those nearest the hole; the suffix gets up to a third
    (what it does not use goes to the prefix). Also the in-place layout of full-attention families."""
    s = tok.encode(suffix)[: room // 3] if suffix else []
    p = tok.encode(prefix) if prefix else []
    return p[len(p) - min(len(p), room - len(s)):], s


def prompt_budget(model, dc) -> int:
    """Prompt tokens that fit the model's context with ``dc.max_new_tokens`` and block alignment to spare."""
    from model.network import remask_config

    cfg = remask_config(model)
    block = dc.block_size or cfg.block_size
    budget = cfg.max_position_embeddings - dc.max_new_tokens - 2 * block - 1
    if budget < 16:
        raise EvalError(f"--max-new-tokens {dc.max_new_tokens} leaves no room for a prompt in the model's "
                        f"context of {cfg.max_position_embeddings} tokens")
    return budget


# Model --------------------------------------------------------------------------------------------------
def load_model(spec: str | None, device: str = "cpu", dtype: str | None = None, adapter: str | None = None,
               merge_adapter: bool = True):
    """(model, tokenizer, description); a clear EvalError when the folder is unusable or has no tokenizer.
    ``adapter``: a LoRA folder applied to the model (``--adapter``)."""
    import torch

    from model.checkpoint import CheckpointError, resolve_model

    try:
        model, tok, desc = resolve_model(spec, device=device, dtype=getattr(torch, dtype) if dtype else None,
                                         adapter=adapter, merge_adapter=merge_adapter)
    except (CheckpointError, KeyError, OSError) as e:
        raise EvalError(str(e)) from e
    if tok is None:
        raise EvalError(f"{desc} has no tokenizer; evaluate a checkpoint folder that has tokenizer.json")
    return model, tok, desc


def model_info(model, desc: str) -> dict:
    from model.network import remask_config

    cfg = remask_config(model)
    return {"model": desc, "kind": cfg.kind, "parameters": sum(p.numel() for p in model.parameters()),
            "block_size": cfg.block_size, "logit_shift": cfg.logit_shift}


@dataclass
class Generation:
    text: str
    tokens: int
    nfe: int  # forwards this row took part in (prefill included): what batch-1 decoding would cost
    finish: str
    elapsed_s: float  # wall time of the batch the row was decoded in
    prompt_tokens: int
    ids: list[int] = dataclasses.field(default_factory=list, repr=False)  # generated token ids

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.nfe, 1)


def generate_batched(model, tok, prompts: Sequence[list[int]], dc, batch_size: int = 8,
                     progress: Callable[[int], None] | None = None) -> list[Generation]:
    """Decode many prompts, ``batch_size`` at a time, grouped by length so padding stays small.

    Per-row forward counts come from the step callback (a row counts every step until it is done), so
    tokens per forward is per task, not diluted by rows that finished earlier in the same batch.
    """
    from model.decoder import generate

    sampling = dc.temperature > 0 and dc.seed is not None
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Generation | None] = [None] * len(prompts)
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        batch = [prompts[i] for i in idx]
        steps = [0] * len(idx)
        was_done = [False] * len(idx)

        def count(ev, steps=steps, was_done=was_done) -> None:
            for j, d in enumerate(ev.done):
                if not was_done[j]:
                    steps[j] += 1
                was_done[j] = d

        t0 = time.perf_counter()
        try:
            # Sampling: a seed per batch, so copies of one task in different batches draw different noise.
            cfg = dataclasses.replace(dc, seed=dc.seed + b) if sampling else dc
            res = generate(model, batch, cfg, tokenizer=tok, callback=count)
        except ValueError as e:
            raise EvalError(str(e)) from e
        dt = time.perf_counter() - t0
        prefill = 1 if res.nfe > res.steps else 0
        for j, i in enumerate(idx):
            out[i] = Generation(text=tok.decode(res.tokens[j]), tokens=len(res.tokens[j]),
                                nfe=steps[j] + prefill, finish=res.finish[j], elapsed_s=dt,
                                prompt_tokens=len(prompts[i]), ids=list(res.tokens[j]))
        if progress is not None:
            progress(len(idx))
    return [g for g in out if g is not None]


def infill_batched(model, tok, jobs: Sequence[tuple[list[int], list[int]]], dc, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None, cache: str = "none",
                   refresh: int = 8) -> list[Generation]:
    """Full-attention families (Dream, DreamOn): each hole filled in place between its prefix and suffix ids, as
    the engine fills one (``model.families.run.infill_generate``); ``cache="dual"`` is the approximate mode."""
    from model.families.run import infill_generate

    out: list[Generation] = []
    for b in range(0, len(jobs), batch_size):
        batch = list(jobs[b: b + batch_size])
        t0 = time.perf_counter()
        try:
            res = infill_generate(model, batch, max_new_tokens=dc.max_new_tokens, temperature=dc.temperature,
                                  seed=None if dc.seed is None else dc.seed + b, cache=cache, refresh=refresh)
        except ValueError as e:
            raise EvalError(str(e)) from e
        dt = time.perf_counter() - t0
        for j, (pre, suf) in enumerate(batch):
            toks = list(res.tokens[j])
            out.append(Generation(text=tok.decode(toks), tokens=len(toks), nfe=max(res.nfe // len(batch), 1),
                                  finish=res.finish[j], elapsed_s=dt, prompt_tokens=len(pre) + len(suf), ids=toks))
        if progress is not None:
            progress(len(batch))
    return out


def full_attention(model) -> bool:
    """Whether the checkpoint's family fills holes in place (no FIM prompt, no block decoder)."""
    from model.families import family_of

    return family_of(model).attention == "full"


# Files --------------------------------------------------------------------------------------------------
def default_out_dir(name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("runs") / "eval" / f"{name}-{stamp}"


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file so that a reader sees the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def fmt(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


class Progress:
    """A one-line counter on stderr (silent when ``quiet``)."""

    def __init__(self, total: int, label: str, quiet: bool = False) -> None:
        import sys

        self.total, self.label, self.quiet, self.n = total, label, quiet, 0
        self.t0 = time.perf_counter()
        self.stream = sys.stderr

    def __call__(self, k: int = 1) -> None:
        self.n += k
        if not self.quiet and self.total:
            dt = time.perf_counter() - self.t0
            self.stream.write(f"\r{self.label}: {self.n}/{self.total} ({dt:.0f} s)")
            if self.n >= self.total:
                self.stream.write("\n")
            self.stream.flush()
