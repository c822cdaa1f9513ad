"""Train a tiny Dream-layout checkpoint on CPU, so that the dual cache's quality cost can be measured on a model
that has learned something (on a random checkpoint ~90% of tokens flip as soon as keys are reused, which says
nothing about a trained one).

The folder is what a Dream hub repo holds, at 5M parameters: ``config.json`` with ``architectures: DreamModel``,
Qwen2 keys, ``mask_token_id``; Qwen2 weights (q/k/v biases, untied ``lm_head``) in safetensors; a tokenizer whose
specials carry Dream's names (``<|endoftext|>`` eos and pad, ``<|mask|>``, ``<|beginoftext|>``, ``<|fim_*|>``).
It is initialised from the shipped default model (``model/default``: Llama, 4 layers, vocab 8192): a Qwen2 body with
zero q/k/v biases computes exactly what the Llama body does (checked before training), so the start knows the look
of Python tokens. What changes is Dream's: full bidirectional attention and shifted logits (position i is read from
hidden state i-1), which the model has to learn; the default was trained block-causal without a shift.

Objective: Dream's / LLaDA's masked diffusion loss. Draw t ~ U(eps, 1), mask each maskable position with
probability t (at least one), cross-entropy on the masked positions with the logit shift, weighted 1/t and divided
by the number of maskable positions (LLaDA's estimator; Dream's CART context re-weighting is not used). Two kinds
of rows, both under that loss (a choice of which positions are maskable, documented here):
- ``plain`` (1/3): a window of the packed corpus, every position but the first maskable (Dream's pre-training);
- ``infill`` (2/3): ``prefix + middle + <|endoftext|> * pad + suffix`` where the middle is 1-4 whole lines (half
  the time one line) and the canvas length n is 16, 32 or 64 (>= middle + 1); only the n canvas positions are
  maskable. That is the layout the engine decodes for a full-attention family (run.py: masks between prefix and
  suffix, the answer cut at the first EOS), i.e. Dream-Coder's SFT convention of padding an answer with EOS.

Data: the corpus builder's sources (this interpreter's standard library and site-packages, Python only, tests
dropped, the packages ``email`` and ``json`` held out), which refuses CanItEdit and HumanEval paths; neither is
ever trained on. Time-limited (the learning rate follows elapsed time), one thread by default; the weights go
outside the repository.

    OMP_NUM_THREADS=1 python benchmarks/train_tiny_dream.py [--minutes 15] [--out ~/.cache/remask-bench/tiny-dream]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import load_checkpoint  # noqa: E402
from model.families.testing import write_dream_from  # noqa: E402
from model.network import run_body  # noqa: E402

CACHE = Path.home() / ".cache" / "remask-bench"
CANVAS = (16, 32, 64)
def save_weights(model, out: Path) -> None:
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")


def check_conversion(init: Path, model) -> float:
    """Max |logit difference| between the Llama default and its Qwen2 copy under one (block-causal) mask."""
    ref, _ = load_checkpoint(init, dtype=torch.float32)
    x = torch.randint(12, 8192, (1, 24))
    pos = torch.arange(24)[None]
    allowed = torch.ones(1, 1, 24, 24, dtype=torch.bool)
    with torch.no_grad():
        a = ref.lm_head(run_body(ref, x, pos, allowed).last_hidden_state)
        b = model.lm_head(run_body(model, x, pos, allowed).last_hidden_state)
    return float((a - b).abs().max())


class Data:
    """Files of the corpus, their packed token stream, and the two kinds of training rows."""

    def __init__(self, texts: list[str], tok, seq: int, rng: random.Random) -> None:
        self.texts = [t for t in texts if t.count("\n") >= 8]
        self.tok, self.seq, self.rng = tok, seq, rng
        stream: list[int] = []
        for t in self.texts:
            stream += tok.encode(t) + [tok.eos_id]
        self.stream = torch.tensor(stream)

    def plain(self) -> tuple[list[int], list[bool]]:
        i = self.rng.randrange(0, len(self.stream) - self.seq)
        ids = self.stream[i: i + self.seq].tolist()
        return ids, [False] + [True] * (len(ids) - 1)

    def infill(self) -> tuple[list[int], list[bool]]:
        eos = self.tok.eos_id
        while True:
            lines = self.rng.choice(self.texts).splitlines(keepends=True)
            k = self.rng.randrange(1, len(lines) - 1)
            span = 1 if self.rng.random() < 0.5 else self.rng.randint(2, 4)
            mid_text = "".join(lines[k: k + span])
            if not mid_text.strip():
                continue
            mid = self.tok.encode(mid_text)
            if not 0 < len(mid) < CANVAS[-1]:
                continue
            pre = self.tok.encode("".join(lines[max(0, k - 40): k]))[-160:]
            suf = self.tok.encode("".join(lines[k + span: k + span + 12]))[:48]
            if not pre:
                continue
            n = self.rng.choice([c for c in CANVAS if c >= len(mid) + 1])
            canvas = mid + [eos] * (n - len(mid))
            return pre + canvas + suf, [False] * len(pre) + [True] * n + [False] * len(suf)


def batch_loss(model, rows: list[tuple[list[int], list[bool]]], mask_id: int, pad_id: int, eps: float,
               g: torch.Generator) -> torch.Tensor:
    """The masked-diffusion loss of a left-padded batch (full attention among real positions, shifted logits)."""
    width = max(len(r[0]) for r in rows)
    n = len(rows)
    x0 = torch.full((n, width), pad_id, dtype=torch.long)
    maskable = torch.zeros(n, width, dtype=torch.bool)
    real = torch.zeros(n, width, dtype=torch.bool)
    for i, (ids, m) in enumerate(rows):
        x0[i, width - len(ids):] = torch.tensor(ids)
        maskable[i, width - len(ids):] = torch.tensor(m)
        real[i, width - len(ids):] = True
    t = eps + (1 - eps) * torch.rand(n, 1, generator=g)
    masked = (torch.rand(n, width, generator=g) < t) & maskable
    for i in range(n):  # at least one masked position per row
        if not masked[i].any():
            c = maskable[i].nonzero().flatten()
            masked[i, c[torch.randint(len(c), (1,), generator=g)]] = True
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    pos = real.long().cumsum(-1) - 1
    pos.masked_fill_(~real, 1)
    allowed = ((real[:, None, :] & real[:, :, None]) | torch.eye(width, dtype=torch.bool)[None])[:, None]
    h = run_body(model, xt, pos, allowed, use_cache=False).last_hidden_state
    rows_i, cols_i = masked.nonzero(as_tuple=True)
    logits = model.lm_head(h[rows_i, cols_i - 1])  # shifted: position c is read from hidden state c - 1
    ce = F.cross_entropy(logits.float(), x0[rows_i, cols_i], reduction="none")
    w = 1.0 / t[rows_i, 0]
    per_row = torch.zeros(n).index_add_(0, rows_i, ce * w) / maskable.sum(1).clamp_min(1)
    return per_row.mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", default=str(ROOT / "model" / "default"))
    ap.add_argument("--out", default=str(CACHE / "tiny-dream"))
    ap.add_argument("--corpus", default=str(CACHE / "tiny-dream-corpus"))
    ap.add_argument("--corpus-mb", type=float, default=6.0)
    ap.add_argument("--minutes", type=float, default=15.0, help="training time (the lr schedule follows it)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256, help="plain rows' length")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--infill-share", type=float, default=2 / 3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from training.corpus import build_corpus, iter_texts

    out, corpus = Path(args.out).expanduser(), Path(args.corpus).expanduser()
    if not (corpus / "manifest.json").is_file():
        build_corpus(corpus, extensions=[".py"], holdout=["email", "json"], max_corpus_mb=args.corpus_mb,
                     log=lambda *a: None)
    write_dream_from(Path(args.init), out)
    model, tok = load_checkpoint(out, dtype=torch.float32)
    fam = model.remask_config
    assert fam.family == "dream" and fam.logit_shift and fam.body == "qwen2", (fam.family, fam.body)
    assert tok.mask_id == fam.mask_token_id == 5 and fam.eos_token_id == 2, (tok.mask_id, fam)
    print(f"converted {args.init} -> {out} (Dream layout); Llama vs Qwen2 max |dlogit| "
          f"{check_conversion(Path(args.init), model):.2e}", flush=True)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    train = Data(list(iter_texts(corpus, "train")), tok, args.seq, rng)
    val = Data(list(iter_texts(corpus, "val")), tok, args.seq, random.Random(1))
    val_rows = [val.infill() for _ in range(32)] + [val.plain() for _ in range(16)]
    print(f"data: {len(train.texts)} train files, {len(train.stream):,} tokens ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    g, gv = torch.Generator().manual_seed(args.seed), torch.Generator()

    def val_loss() -> float:
        model.eval()
        gv.manual_seed(123)
        with torch.no_grad():
            v = [float(batch_loss(model, val_rows[i: i + 8], fam.mask_token_id, fam.pad_token_id, 1e-3, gv))
                 for i in range(0, len(val_rows), 8)]
        model.train()
        return sum(v) / len(v)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    budget = args.minutes * 60
    log = {"val_start": val_loss(), "steps": 0, "rows": 0, "tokens": 0}
    print(f"val loss at start {log['val_start']:.3f}", flush=True)
    model.train()
    start = time.perf_counter()
    last_save = start
    step = 0
    while (el := time.perf_counter() - start) < budget:
        frac = el / budget
        lr = args.lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        rows = [train.infill() if rng.random() < args.infill_share else train.plain() for _ in range(args.batch)]
        loss = batch_loss(model, rows, fam.mask_token_id, fam.pad_token_id, 1e-3, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        log["tokens"] += sum(len(r[0]) for r in rows)
        if step % 25 == 0:
            print(f"step {step} {el / 60:.1f} min loss {float(loss):.3f} lr {lr:.2e}", flush=True)
        if time.perf_counter() - last_save > 300:
            save_weights(model, out)
            last_save = time.perf_counter()
    model.eval()
    save_weights(model, out)
    log.update(steps=step, rows=step * args.batch, minutes=round((time.perf_counter() - start) / 60, 2),
               val_end=val_loss(), threads=args.threads, batch=args.batch, lr=args.lr, init=str(args.init),
               date=time.strftime("%Y-%m-%d"))
    (out / "train_log.json").write_text(json.dumps(log, indent=2))
    print(json.dumps(log), flush=True)


if __name__ == "__main__":
    main()
