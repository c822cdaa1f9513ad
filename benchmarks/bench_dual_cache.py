"""The Dream family's approximate dual-cache mode against the exact mode: speed and how often tokens differ.

The exact mode (the published ``diffusion_generate``'s rule, the default) forwards the whole canvas every step.
``DreamConfig(cache="dual", refresh=N)`` forwards the whole canvas only every N steps and, between, only the
masked region over the other columns' keys from the last full forward (Fast-dLLM's dual cache). Under full
attention those keys depend on the middle, so tokens can differ. This measures that on one random checkpoint in
Dream's published layout: tokens/s of each mode (alternating rounds, median) and the share of generated tokens that
differ from the exact mode, per refresh interval. Quality on the eval harness needs a trained Dream-family
checkpoint; a random one scores zero either way, so agreement with the exact mode is the proxy reported here.

With ``--model DIR`` (a trained Dream-family folder, e.g. the one benchmarks/train_tiny_dream.py writes) it runs
HumanEval-Infilling instead, through what the engine calls for a full-attention family (``infill_generate``: Dream
fills masks in place between prefix and suffix, tries canvas lengths max/4, max/2 and max in one batch and keeps
the best-scored; DreamOn grows and shrinks its middle), with the harness's tasks, output cut (single-line keeps its
first line) and sandbox, once per mode on the same tasks: pass@1, exact match, answers that differ from the exact
mode's, forwards (all and full-canvas), generation wall time and tokens/s.

    python benchmarks/bench_dual_cache.py [--hidden 256] [--layers 4] [--prompt 64] [--gen 64] [--repeats 3]
    python benchmarks/bench_dual_cache.py --model ~/.cache/remask-bench/tiny-dream --split single-line \
        --limit 60 --gen 32 --refresh 2,4,8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import load_checkpoint  # noqa: E402
from model.families.dream_decode import DreamConfig, dream_generate, dreamon_infill  # noqa: E402
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
    ap.add_argument("--family", choices=["dream", "dreamon"], default="dream",
                    help="random checkpoint's family; dreamon: prefix/suffix halves of each prompt, middle up to --gen")
    ap.add_argument("--model", default=None, help="a trained Dream-family folder: run HumanEval-Infilling instead")
    ap.add_argument("--split", default="single-line", help="HumanEval-Infilling split (with --model)")
    ap.add_argument("--limit", type=int, default=60, help="tasks (a seeded subset, the harness's selection)")
    ap.add_argument("--context", type=int, default=256, help="prefix tokens kept nearest the hole (suffix: 1/4)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save", default=None, help="with --model: write every mode's completions to this JSONL")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        humaneval(args)
        return
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        # DreamOn: a boosted expand row, so that the random middles grow (and shrink: EOS-as-delete).
        boost = {"<|expand|>": 6.0, "<|endoftext|>": 1.0} if args.family == "dreamon" else None
        folder = write_family_checkpoint(Path(tmp) / args.family, args.family, hidden=args.hidden,
                                         layers=args.layers, heads=max(4, args.hidden // 64), kv_heads=2, boost=boost)
        model, _ = load_checkpoint(folder)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, min(vocab, 500), (args.prompt,), generator=g).tolist() for _ in range(args.prompts)]
    mcfg = model.remask_config
    if args.family == "dreamon":
        base_cfg = DreamConfig(min_gen_len=4, max_gen_len=args.gen, steps=2 * args.gen, alg="entropy", top_k=None)
    else:
        base_cfg = DreamConfig(max_new_tokens=args.gen, steps=args.gen, alg="entropy")
    modes = [("exact", base_cfg)]
    for r in (int(x) for x in args.refresh.split(",")):
        modes.append((f"dual, refresh {r}", replace(base_cfg, cache="dual", refresh=r)))

    def run(p: list[int], cfg: DreamConfig):
        if args.family == "dreamon":
            h = len(p) // 2
            return dreamon_infill(model, [mcfg.bos_token_id] + p[:h], p[h:], cfg)
        return dream_generate(model, [p], cfg)

    times: dict[str, list[float]] = {m: [] for m, _ in modes}
    tokens: dict[str, list[list[int]]] = {}
    forwards: dict[str, tuple[int, int]] = {}
    for _ in range(args.repeats):
        for name, cfg in modes:
            t0 = time.perf_counter()
            res = [run(p, cfg) for p in prompts]
            times[name].append(time.perf_counter() - t0)
            tokens[name] = [r.generated[0] for r in res]
            forwards[name] = (sum(r.nfe for r in res), sum(r.extra["full_forwards"] for r in res))
    exact = tokens["exact"]
    total = sum(len(t) for t in exact)
    base = statistics.median(times["exact"])
    print(f"{args.family}, hidden {args.hidden}, {args.layers} layers, {args.prompts} prompts of {args.prompt}, "
          f"gen {args.gen}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print(f"| mode | s per {args.prompts} prompts | speed-up | forwards (full canvas) | tokens differing from exact |")
    print("|---|---:|---:|---:|---:|")
    for name, _ in modes:
        diff = sum(a != b for x, y in zip(exact, tokens[name], strict=True) for a, b in zip(x, y, strict=False))
        diff += sum(abs(len(x) - len(y)) for x, y in zip(exact, tokens[name], strict=True))
        t = statistics.median(times[name])
        nfe, full = forwards[name]
        print(f"| {name} | {t:.2f} | {base / t:.2f}x | {nfe} ({full}) | "
              f"{diff}/{total} ({100 * diff / max(total, 1):.1f}%) |")


def humaneval(args) -> None:
    """Exact vs dual cache on HumanEval-Infilling tasks, through the engine's full-attention decode path."""
    from model.families.run import infill_generate
    from training.evals.common import select
    from training.evals.humaneval import load_tasks, postprocess
    from training.evals.sandbox import Sandbox

    model, tok = load_checkpoint(Path(args.model).expanduser(), dtype=torch.float32)
    tasks = select(load_tasks(args.split), args.limit, 0)
    modes = [("exact", "none", 1)] + [(f"dual, refresh {r}", "dual", r)
                                      for r in (int(x) for x in args.refresh.split(",")) if r > 1]
    sandbox = Sandbox(workers=2)
    jobs = []
    for t in tasks:
        p, s = tok.encode(t.prompt), tok.encode(t.suffix)
        jobs.append((p[max(0, len(p) - args.context):], s[: args.context // 4]))
    results = {name: dict(comps=[], tokens=0, nfe=0, full=0, gen_s=0.0) for name, _, _ in modes}
    infill_generate(model, jobs[:1], max_new_tokens=args.gen)  # warm-up, not timed
    # Task by task, every mode in turn (the shared machine's load drifts; each mode sees the same drift).
    for i, job in enumerate(jobs):
        for name, cache, refresh in modes:
            r = results[name]
            t0 = time.perf_counter()
            res = infill_generate(model, [job], max_new_tokens=args.gen, cache=cache, refresh=refresh)
            r["gen_s"] += time.perf_counter() - t0
            r["comps"].append(postprocess(args.split, tok.decode(res.tokens[0])))
            r["tokens"] += len(res.tokens[0])
            r["nfe"] += res.nfe
            r["full"] += res.extra["full_forwards"]
        if (i + 1) % 10 == 0:
            print(f"{i + 1}/{len(jobs)} tasks", file=sys.stderr, flush=True)
    for r in results.values():
        runs = sandbox.run_many([t.program(c) for t, c in zip(tasks, r["comps"], strict=True)])
        r["passed"] = sum(x.passed for x in runs)
        r["exact"] = sum(c.strip() == t.canonical_solution.strip() for t, c in zip(tasks, r["comps"], strict=True))
    n = len(tasks)
    base = results["exact"]
    if args.save:
        with open(Path(args.save).expanduser(), "w", encoding="utf-8") as f:
            for i, t in enumerate(tasks):
                f.write(json.dumps({"task_id": t.task_id, "canonical": t.canonical_solution,
                                    **{name: r["comps"][i] for name, r in results.items()}}) + "\n")
    canon = sum(r.passed for r in sandbox.run_many([t.program(t.canonical_solution) for t in tasks]))
    print(f"{args.model}, HumanEval-Infilling {args.split}, {n} tasks (seed 0), canvas up to {args.gen} tokens, "
          f"context {args.context}/{args.context // 4}, {torch.get_num_threads()} threads; canonical solutions pass "
          f"{canon}/{n}\n")
    print("| mode | pass@1 | exact match | empty answers | answers differing from exact | forwards (full canvas) | "
          "generation s | answer tokens/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        diff = sum(a != b for a, b in zip(base["comps"], r["comps"], strict=True))
        empty = sum(not c.strip() for c in r["comps"])
        print(f"| {name} | {r['passed']}/{n} ({100 * r['passed'] / n:.1f}%) | {r['exact']}/{n} | {empty}/{n} | "
              f"{diff}/{n} | {r['nfe']} ({r['full']}) | {r['gen_s']:.1f} | {r['tokens'] / r['gen_s']:.2f} | "
              f"{base['gen_s'] / r['gen_s']:.2f}x |")


if __name__ == "__main__":
    main()
