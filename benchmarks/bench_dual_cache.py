"""The Dream family's approximate dual-cache mode against the exact mode: speed and how often tokens differ.

The exact mode (the published ``diffusion_generate``'s rule, the default) forwards the whole canvas every step.
``DreamConfig(cache="dual", refresh=N)`` forwards the whole canvas only every N steps and, between, only the
masked region over the other columns' keys from the last full forward (Fast-dLLM's dual cache). Under full
attention those keys depend on the middle, so tokens can differ. This measures that on one random checkpoint in
Dream's published layout: tokens/s of each mode (alternating rounds, median) and the share of generated tokens that
differ from the exact mode, per refresh interval. Quality on the eval harness needs a trained Dream-family
checkpoint; a random one scores zero either way, so agreement with the exact mode is the proxy reported here.

    python benchmarks/bench_dual_cache.py [--hidden 256] [--layers 4] [--prompt 64] [--gen 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import load_checkpoint  # noqa: E402
from model.families.dream_decode import DreamConfig, dream_generate  # noqa: E402
from model.families.testing import write_family_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--refresh", default="1,2,4,8,16")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_family_checkpoint(Path(tmp) / "dream", "dream", hidden=args.hidden, layers=args.layers,
                                         heads=max(4, args.hidden // 64), kv_heads=2)
        model, _ = load_checkpoint(folder)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, min(vocab, 500), (args.prompt,), generator=g).tolist() for _ in range(args.prompts)]
    modes = [("exact", DreamConfig(max_new_tokens=args.gen, steps=args.gen, alg="entropy"))]
    for r in (int(x) for x in args.refresh.split(",")):
        modes.append((f"dual, refresh {r}", DreamConfig(max_new_tokens=args.gen, steps=args.gen, alg="entropy",
                                                        cache="dual", refresh=r)))
    times: dict[str, list[float]] = {m: [] for m, _ in modes}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for name, cfg in modes:
            t0 = time.perf_counter()
            out = [dream_generate(model, [p], cfg).generated[0] for p in prompts]
            times[name].append(time.perf_counter() - t0)
            tokens[name] = out
    exact = tokens["exact"]
    total = sum(len(t) for t in exact)
    base = statistics.median(times["exact"])
    print(f"| mode | s per {args.prompts} prompts | speed-up | tokens differing from exact |")
    print("|---|---:|---:|---:|")
    for name, _ in modes:
        diff = sum(a != b for x, y in zip(exact, tokens[name], strict=True) for a, b in zip(x, y, strict=False))
        diff += sum(abs(len(x) - len(y)) for x, y in zip(exact, tokens[name], strict=True))
        t = statistics.median(times[name])
        print(f"| {name} | {t:.2f} | {base / t:.2f}x | {diff}/{total} ({100 * diff / max(total, 1):.1f}%) |")


if __name__ == "__main__":
    main()
