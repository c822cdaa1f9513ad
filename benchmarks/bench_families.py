"""Tokens/s of remask's decoders against each family's published decoder, same checkpoint, same tokens.

For SDAR, Dream and DreamOn: a random checkpoint in the published layout (model/families/testing.py), the
published code run under the transformers version it targets (the parity tests' runners, in a subprocess, timed
inside it around each generate call, model loading excluded), and remask's decoder in this process, in alternating
rounds (the machine's load drifts; the median of each is reported). Greedy,
float32, CPU threads as given. Prints a Markdown table and checks that both produced the same tokens.

Two rows per family: one prompt, and ``--batch`` different prompts of different lengths. In the batched rows
remask decodes all prompts in one call (SDAR: the block decoder's batch; Dream: one left-padded canvas; DreamOn has
no batched loop, its middles change length independently, so it runs once per prompt) and the reference runs once
per prompt (its generate calls summed), which is how the published SDAR and DreamOn code is used at batch > 1.

    python benchmarks/bench_families.py [--hidden 256] [--layers 4] [--gen 64] [--repeats 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "reference"
CACHE = Path(os.environ.get("REMASK_REF_CACHE", Path.home() / ".cache" / "remask-ref"))


def _reference(runner: str, version: str, job: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(CACHE / f"tf-{version}"), "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "reference" / runner)], input=json.dumps(job),
                       capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"{runner} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _each_dreamon(infill, model, cases: list[dict], dcfg) -> list:
    return [infill(model, c["prefix"], c["suffix"], dcfg) for c in cases]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--gen", type=int, default=64, help="tokens to generate (SDAR, Dream); DreamOn's max middle")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="prompts in the batched rows (1: batch-1 rows only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from model import DecodeConfig, generate, load_checkpoint
    from model.families import get
    from model.families.dream_decode import DreamConfig, dream_generate, dreamon_infill
    from model.families.testing import write_family_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench-families-"))
    rows = []
    for fam in ("sdar", "dream", "dreamon"):
        folder = write_family_checkpoint(tmp / fam, fam, seed=3, hidden=args.hidden, layers=args.layers,
                                         heads=max(2, args.hidden // 64), kv_heads=max(1, args.hidden // 128),
                                         boost={"<|endoftext|>": 0.2, "<|expand|>": 2.5 if fam == "dreamon" else 1.0})
        model, tok = load_checkpoint(folder)
        cfg = model.remask_config
        text = tok.encode(Path(__file__).read_text()) * 4
        # Batch 1: the prompt alone. Batch N: N different prompts of different lengths (prompt, prompt - 2, ...).
        batches = [[text[: args.prompt]]]
        if args.batch > 1:
            batches.append([text[7 * k: 7 * k + args.prompt - 2 * k] for k in range(args.batch)])
        for prompts in batches:
            n_p = len(prompts)
            if fam == "sdar":
                f = get("sdar")
                cases = [dict(prompt=ids, mask_id=cfg.mask_token_id, eos_id=cfg.eos_token_id, gen_length=args.gen,
                              block_length=4, steps=4, strategy="low_confidence_dynamic", threshold=0.85)
                         for ids in prompts]
                again = partial(_reference, "sdar_runner.py", "4.52.4", {"reference": str(SHARED / "sdar"),
                                                                         "folder": str(folder), "cases": cases})
                ref_tokens = (lambda r: r["tokens"])
                dc = DecodeConfig(max_new_tokens=args.gen, block_size=4, threshold=0.85, steps_per_block=4,
                                  commit_rule=f.commit_rule, align_canvas=f.align_canvas)
                call, out = partial(generate, model, prompts, dc), (lambda r: r.tokens)
                label, ref_label = "block decoder + KV cache", "generate.py block_diffusion_generate"
            elif fam == "dream":
                cases = [dict(rows=[ids], max_new_tokens=args.gen, steps=args.gen, alg="entropy", top_k=None)
                         for ids in prompts]
                again = partial(_reference, "dream_runner.py", "4.46.2", {"reference": str(SHARED / "dream"),
                                                                          "folder": str(folder), "mode": "dream",
                                                                          "cases": cases})
                ref_tokens = (lambda r: [o[0] for o in r["out"]])
                dcfg = DreamConfig(max_new_tokens=args.gen, steps=args.gen, alg="entropy", top_k=None)
                call, out = partial(dream_generate, model, prompts, dcfg), (lambda r: r.generated)
                label, ref_label = "dream_generate (exact)", "diffusion_generate"
            else:
                cases = []
                for ids in prompts:
                    half = len(ids) // 2
                    cases.append(dict(prefix=[cfg.bos_token_id] + ids[:half], suffix=ids[half:], min_gen_len=4,
                                      max_gen_len=args.gen, steps=2 * args.gen, alg="entropy",
                                      expand_id=cfg.extra["expand_token_id"], top_k=None))
                again = partial(_reference, "dream_runner.py", "4.46.2", {"reference": str(SHARED / "dream"),
                                                                          "folder": str(folder), "mode": "dreamon",
                                                                          "cases": cases})
                ref_tokens = (lambda r: [o["middle"] for o in r["out"]])
                dcfg = DreamConfig(min_gen_len=4, max_gen_len=args.gen, steps=2 * args.gen, alg="entropy", top_k=None)

                # DreamOn's loop is batch 1 (its middles change length independently): once per prompt.
                call = partial(_each_dreamon, dreamon_infill, model, cases, dcfg)
                out = (lambda r: [x.generated[0] for x in r])
                label = "dreamon_infill" if n_p == 1 else "dreamon_infill, once per prompt (no batched loop)"
                ref_label = "eval generator batch_generate_with_expand_as_token"
            if n_p > 1:
                ref_label += ", once per prompt"
            # Rounds alternate the two (the shared machine's load drifts): one reference run, then one of ours.
            # A reference round is the sum of its per-prompt generate calls.
            times, ref_times, ref_out = [], [], None
            for _ in range(args.repeats):
                ref = again()
                ref_out = ref_tokens(ref)
                ref_times.append(sum(ref["seconds"]))
                t0 = time.perf_counter()
                got = out(call())
                times.append(time.perf_counter() - t0)
            ref_s = sorted(ref_times)[len(ref_times) // 2]
            our_s = sorted(times)[len(times) // 2]
            n = sum(len(g) for g in got)
            rows.append((fam, n_p, label, ref_label, n, got == ref_out, n / our_s, n / ref_s, ref_s / our_s))
    print(f"hidden {args.hidden}, {args.layers} layers, prompt {args.prompt}, gen {args.gen}, "
          f"{args.threads} threads, median of {args.repeats}\n")
    print("| family | prompts | remask | reference | tokens | same tokens | remask tok/s | reference tok/s | "
          "speed-up |")
    print("|---|---:|---|---|---:|---|---:|---:|---:|")
    for fam, n_p, label, ref_label, n, same, ours_tps, ref_tps, x in rows:
        print(f"| {fam} | {n_p} | {label} | {ref_label} | {n} | {'yes' if same else 'NO'} | {ours_tps:.1f} | "
              f"{ref_tps:.1f} | {x:.2f}x |")

if __name__ == "__main__":
    main()
