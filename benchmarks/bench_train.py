"""Training-step throughput: AR vs block-diffusion (dense-mask SDPA, and flex attention on CUDA).

    python benchmarks/bench_train.py                      # CPU: test preset, short sequences, dense SDPA only
    python benchmarks/bench_train.py --preset medium --seq-len 2048 --batch 8 --compile --parity  # one H100

Each variant runs the trainer's own objective (training/objectives.py) with fused AdamW, bf16 autocast
(default on CUDA; ``--dtype``), for ``--warmup`` untimed and ``--steps`` timed steps on random tokens.
Reported per variant:
step time, tokens/s (tokens of x_0, i.e. B x L per step for both AR and BD) and model FLOPs utilisation
(MFU) = useful FLOPs / (time x peak). Useful FLOPs = 6 x non-embedding params x tokens forwarded
(L for AR, 2L for BD: the [x_t ; x_0] stream) + 6 x d x V x positions with logits + 12 x d x layers x
attended (query, key) pairs (causal half for AR, the BD3 mask's true entries for BD). Peak defaults to
989 TFLOP/s (H100 SXM dense bf16) on CUDA; pass --peak-tflops for other hardware (none on CPU).
Targets (issue 3): a BD step at most 2.3x an AR step on the same batch; AR MFU >= 35% on an H100.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import preset  # noqa: E402
from model.masks import bd3_training_mask  # noqa: E402
from model.network import build_model, set_attention_backend  # noqa: E402
from training.objectives import BD3Masks, ar_loss, bd_loss, bd_noise  # noqa: E402
from training.trainer import noise_draws  # noqa: E402


def useful_flops(cfg, batch: int, L: int, kind: str, masked_frac: float) -> float:
    d, V, n = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    emb = V * d * (1 if cfg.tie_word_embeddings else 2)
    non_emb = cfg.num_parameters() - emb
    if kind == "ar":
        fwd_tokens, head_tokens, pairs = L, L, L * (L + 1) / 2
    else:
        fwd_tokens, head_tokens = 2 * L, masked_frac * L
        pairs = float(bd3_training_mask(L, cfg.block_size).sum()) if L <= 4096 else L * L + L * cfg.block_size
    per_row = 6 * non_emb * fwd_tokens + 6 * d * V * head_tokens + 12 * d * n * pairs
    return batch * per_row


def parity(cfg, batch: int, L: int, device: torch.device, bf16: bool) -> dict:
    """Flex BlockMask vs dense-mask SDPA on one BD batch: loss and (on CUDA) gradients must agree.

    Flex attention has no backward on CPU, so there only the loss is compared."""
    model = build_model(cfg, dtype=torch.float32, device=device, seed=0)
    model.config.use_cache = False
    x = torch.randint(20, cfg.vocab_size, (batch, L), generator=torch.Generator().manual_seed(1)).to(device)
    noise = bd_noise(x, cfg.block_size, cfg.mask_token_id, 1.0, True, noise_draws(0, 1, 0, range(batch), L,
                                                                                   cfg.block_size))
    grad = device.type == "cuda"
    out = {}
    for attn in ("sdpa", "flex_attention"):
        set_attention_backend(model, attn)
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grad), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = bd_loss(model, x, noise, BD3Masks(cfg.block_size, attn != "sdpa", device), cfg.mask_token_id)
        if grad:
            loss.backward()
        out[attn] = (float(loss), [p.grad.float().clone() for p in model.parameters()] if grad else [])
    (l0, g0), (l1, g1) = out["sdpa"], out["flex_attention"]
    rel = (max(((a - b).norm() / a.norm().clamp_min(1e-12)).item() for a, b in zip(g0, g1, strict=True))
           if grad else None)
    return {"loss_sdpa": l0, "loss_flex": l1, "loss_rel_diff": abs(l0 - l1) / abs(l0), "grad_max_rel_diff": rel}


def run_variant(cfg, kind: str, attn: str, batch: int, L: int, steps: int, warmup: int, device: torch.device,
                compile_: bool, bf16: bool) -> dict:
    model = build_model(cfg, dtype=torch.float32, device=device, seed=0)
    set_attention_backend(model, attn)
    model.train()
    model.config.use_cache = False
    if compile_:
        for layer in model.model.layers:
            layer.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    masks = BD3Masks(cfg.block_size, attn == "flex_attention", device)
    g = torch.Generator().manual_seed(0)
    n_tok = L + 1 if kind == "ar" else L
    frac = []

    def step(i: int) -> None:
        x = torch.randint(20, cfg.vocab_size, (batch, n_tok), generator=g).to(device)
        with autocast:
            if kind == "ar":
                loss, _ = ar_loss(model, x)
            else:
                noise = bd_noise(x, cfg.block_size, cfg.mask_token_id, 1.0, True,
                                 noise_draws(0, 1, i, range(batch), L, cfg.block_size))
                frac.append(float(noise.masked.float().mean()))
                loss, _ = bd_loss(model, x, noise, masks, cfg.mask_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    mf = sum(frac) / len(frac) if frac else 1.0
    return {"variant": f"{kind}-{attn}", "step_s": dt, "tokens_per_s": batch * L / dt,
            "flops_per_step": useful_flops(cfg, batch, L, kind, mf)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--preset", default="medium" if cuda else "test")
    p.add_argument("--seq-len", type=int, default=2048 if cuda else 128)
    p.add_argument("--batch", type=int, default=8 if cuda else 4)
    p.add_argument("--steps", type=int, default=10 if cuda else 3)
    p.add_argument("--warmup", type=int, default=3 if cuda else 1)
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16" if cuda else "float32",
                   help="autocast dtype (weights stay fp32)")
    p.add_argument("--parity", action="store_true",
                   help="first check flex vs dense-mask SDPA on one BD batch (loss; gradients on CUDA)")
    p.add_argument("--peak-tflops", type=float, default=989.0 if cuda else 0.0)
    p.add_argument("--json", default=None, help="also write the results to this file")
    a = p.parse_args(argv)
    device = torch.device("cuda" if cuda else "cpu")
    cfg = preset(a.preset, max_position_embeddings=max(preset(a.preset).max_position_embeddings, a.seq_len + 1))
    bf16 = a.dtype == "bfloat16"
    checks = parity(cfg, min(a.batch, 2), a.seq_len, device, bf16) if a.parity else None
    if checks:
        g = checks["grad_max_rel_diff"]
        print(f"parity flex vs sdpa: loss {checks['loss_flex']:.5f} vs {checks['loss_sdpa']:.5f} "
              f"(rel {checks['loss_rel_diff']:.1e}); worst gradient rel diff "
              f"{'n/a (no flex backward on CPU)' if g is None else f'{g:.1e}'}")
    variants = [("ar", "sdpa"), ("bd", "sdpa")]
    if cuda:
        variants.append(("bd", "flex_attention"))
    else:
        print("flex attention needs CUDA: skipping the flex variant (dense-mask SDPA only on CPU)", file=sys.stderr)
    rows = []
    for kind, attn in variants:
        try:
            r = run_variant(cfg, kind, attn, a.batch, a.seq_len, a.steps, a.warmup, device, a.compile, bf16)
        except torch.OutOfMemoryError:
            print(f"{kind}-{attn}: out of memory at batch {a.batch} x {a.seq_len}", file=sys.stderr)
            continue
        r["mfu"] = r["flops_per_step"] / r["step_s"] / (a.peak_tflops * 1e12) if a.peak_tflops else None
        rows.append(r)
        if cuda:
            torch.cuda.empty_cache()
    ar = next((r for r in rows if r["variant"] == "ar-sdpa"), None)
    print(f"preset {a.preset} ({cfg.num_parameters() / 1e6:.1f}M params), batch {a.batch} x seq {a.seq_len}, "
          f"{device.type}, {a.dtype}{', compiled' if a.compile else ''}")
    print(f"{'variant':<18}{'step ms':>10}{'tokens/s':>14}{'MFU':>8}{'x AR step':>11}")
    for r in rows:
        ratio = r["step_s"] / ar["step_s"] if ar else float("nan")
        r["vs_ar"] = ratio
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['variant']:<18}{1000 * r['step_s']:>10.1f}{r['tokens_per_s']:>14,.0f}{mfu:>8}{ratio:>11.2f}")
    result = {"preset": a.preset, "seq_len": a.seq_len, "batch": a.batch, "device": device.type,
              "compile": a.compile, "dtype": a.dtype, "parity": checks, "results": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
