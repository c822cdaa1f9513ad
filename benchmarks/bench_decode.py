"""Decoding speed: ms per block step over a KV cache, and end-to-end tokens/s against the AR baseline.

Usage:
  python benchmarks/bench_decode.py --preset small --context 512            # random weights, step timing
  python benchmarks/bench_decode.py --model model/default --gen 256         # real weights, end to end too
  python benchmarks/bench_decode.py --preset seed-coder-8b --device cuda --dtype bfloat16 --context 2048

Every figure is measured in the same run as its baseline: one-token (AR) steps for the step table, and
``mode="ar"`` decoding of the same weights for the end-to-end table. The floor is the time to read the
weights once at ``--bandwidth`` GB/s (only printed when given).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import DecodeConfig, build_model, forward_logits, generate, load_checkpoint, preset  # noqa: E402
from model.cache import BlockKVCache  # noqa: E402
from model.network import remask_config  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def step_ms(model, context: int, block: int, device: str, repeats: int) -> float:
    """Median ms of one forward of a ``block``-token window at ``context`` cached tokens."""
    cfg = remask_config(model)
    cap = context + block
    cache = BlockKVCache(cfg.num_hidden_layers, 1, cap)
    ids = torch.randint(10, cfg.vocab_size, (1, cap), device=device)
    pos = torch.arange(context, device=device)[None]
    allowed = (pos[0][None, :] // max(block, 1) <= pos[0][:, None] // max(block, 1))[None]
    forward_logits(model, ids[:, :context], pos, allowed, cache=cache, kv_len=context, keep=slice(0, 0))
    wpos = torch.arange(context, context + block, device=device)[None]
    wmask = torch.ones(1, block, cap, dtype=torch.bool, device=device)
    times = []
    for i in range(repeats + 3):
        sync(device)
        t = time.perf_counter()
        forward_logits(model, ids[:, context:], wpos, wmask, cache=cache, kv_len=cap)
        sync(device)
        if i >= 3:
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


@torch.no_grad()
def prefill_ms(model, context: int, device: str) -> float:
    cfg = remask_config(model)
    ids = torch.randint(10, cfg.vocab_size, (1, context), device=device)
    pos = torch.arange(context, device=device)[None]
    allowed = (pos[0][None, :] // 4 <= pos[0][:, None] // 4)[None]
    times = []
    for i in range(4):
        sync(device)
        t = time.perf_counter()
        forward_logits(model, ids, pos, allowed, keep=slice(-1, None))
        sync(device)
        if i >= 1:
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def end_to_end(model, tok, prompt_text: str, gen: int, thresholds: list[float], block: int | None,
               repeats: int) -> list[dict]:
    ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(prompt_text)
    rows = []
    runs = [("ar", None)] + [("diffusion", t) for t in thresholds]
    for mode, tau in runs:
        best = None
        for _ in range(repeats):
            cfg = DecodeConfig(max_new_tokens=gen, threshold=tau, mode=mode, block_size=block, stop_at_eos=False)
            res = generate(model, [ids], cfg)
            if best is None or res.elapsed_s < best.elapsed_s:
                best = res
        rows.append({"mode": mode if mode == "ar" else f"diffusion tau={tau}", "tokens": best.generated,
                     "nfe": best.nfe, "tpf": best.tokens_per_forward, "s": best.elapsed_s,
                     "tps": best.generated / best.elapsed_s})
    base = rows[0]["tps"]
    for r in rows:
        r["ratio"] = r["tps"] / base
    return rows


PROMPT = '''import os
import sys


def read_config(path):
    """Read a key=value config file into a dict."""
    result = {}
    with open(path) as f:
        for line in f:
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--model", default=None, help="model folder (real weights; enables the end-to-end table)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--block-sizes", default="1,4,32")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--thresholds", default="0.9,0.95")
    ap.add_argument("--bandwidth", type=float, default=None, help="memory bandwidth in GB/s for the floor")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    tok = None
    if args.model:
        model, tok = load_checkpoint(args.model, device=args.device, dtype=dtype)
        name = args.model
    else:
        with torch.device(args.device):
            model = build_model(preset(args.preset), dtype=dtype, device=args.device)
        name = f"{args.preset} (random weights)"
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# bench_decode: {name}, {n_params / 1e6:.1f}M params, {args.dtype}, device {args.device} ({dev}), "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")
    print(f"prefill {args.context} tokens: {prefill_ms(model, args.context, args.device):.1f} ms\n")
    print(f"| window (tokens) at {args.context} cached | ms per step | vs 1-token step | tokens/s if all commit |")
    print("|---|---|---|---|")
    base = None
    for b in [int(x) for x in args.block_sizes.split(",")]:
        ms = step_ms(model, args.context, b, args.device, args.repeats)
        base = base or ms
        print(f"| {b} | {ms:.2f} | {ms / base:.2f}x | {b / ms * 1000:.0f} |")
    if args.bandwidth:
        print(f"\nmemory floor (weights {weight_bytes / 1e9:.2f} GB at {args.bandwidth:.0f} GB/s): "
              f"{weight_bytes / (args.bandwidth * 1e9) * 1000:.2f} ms per step")
    if tok is not None:
        print(f"\nend to end, {args.gen} tokens, B={remask_config(model).block_size}, same weights:\n")
        print("| decoding | tokens | forwards | tokens/forward | seconds | tokens/s | vs AR |")
        print("|---|---|---|---|---|---|---|")
        for r in end_to_end(model, tok, PROMPT, args.gen, [float(t) for t in args.thresholds.split(",")], None,
                            repeats=2):
            print(f"| {r['mode']} | {r['tokens']} | {r['nfe']} | {r['tpf']:.2f} | {r['s']:.2f} | {r['tps']:.1f} | "
                  f"{r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
