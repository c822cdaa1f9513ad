"""Latency of the engine's operations, block diffusion against the AR baseline on the same weights.

    python benchmarks/bench_engine.py [--model DIR] [--device cpu|cuda] [--repeats 10] [--threads N]

Operations on ``assistant/examples/stats.py``: a single-line fill (cursor inside a line), a statement
regenerate (1 and 3 candidates), a repair of a function body and ``fill_all`` over the file's three holes.
Each runs ``--warmup`` times untimed, then ``--repeats`` times; the table gives p50/p95 wall time, forwards
(NFE), generated tokens and tokens per forward. The AR rows decode the same prompts one token per forward
(``DecodeConfig(mode="ar")``); repair has no AR counterpart, so its AR row rewrites the whole span.

Every timed call above starts from an empty prompt cache (cold). The "typing" rows then type ``--keys``
characters into a line in the middle of ``assistant/engine.py`` (a long file: the prompt is the full context
budget) and fill after each keystroke, as an editor's inline completion does: once with the prompt cache
cleared before each request (cold) and once keeping it (warm: only the blocks from the cursor on are
prefilled). Same requests, same answers (checked), in the same run; with ``--max-new-tokens`` and with 8
new tokens (a short ghost-text completion, where the prefill is most of the cost).

Without ``--model`` it uses the shipped default model, or an untrained ``random:small`` with a notice: an
untrained model never writes EOS, so every decode runs to ``--max-new-tokens`` (a worst case).
Prints a Markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXAMPLE = ROOT / "assistant" / "examples" / "stats.py"


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def workloads(text: str):
    """(name, callable(engine, settings) -> EditResult) pairs over the example file."""
    line = "    return [(x - m) / s for x in xs]"
    cut = line.index("/ s") + 2
    fill_text = text.replace(line, line[:cut])
    fill_at = fill_text.index(line[:cut]) + cut
    stmt = "    m, s = mean(xs), stdev(xs)"
    s0 = text.index(stmt) + 4
    s1 = text.index(stmt) + len(stmt)
    body0 = text.index("    if not xs:")
    body1 = text.index("return sum(xs) / len(xs)") + len("return sum(xs) / len(xs)")
    return [
        ("fill (single line)", lambda e, s: e.fill(fill_text, fill_at, language="python", settings=s)),
        ("regenerate statement", lambda e, s: e.regenerate(text, s0, s1, language="python", n=1, settings=s)),
        ("regenerate statement, 3 candidates",
         lambda e, s: e.regenerate(text, s0, s1, language="python", n=3, settings=s)),
        ("repair function body", lambda e, s: (
            e.repair(text, body0, body1, language="python", settings=s) if e.decode_mode != "ar"
            else e.regenerate(text, body0, body1, language="python", n=1, settings=s))),
        ("fill_all (3 holes)", lambda e, s: e.fill_all(text, language="python", settings=s)),
    ]


def typing_rows(engine, settings, keys: int) -> list[tuple]:
    """Fill after each of ``keys`` keystrokes at one cursor, without and with the prompt cache."""
    text = (ROOT / "assistant" / "engine.py").read_text(encoding="utf-8")
    line = "        self.decode_mode: str | None = None\n"
    cursor = text.index(line) + len(line) + 8
    text = text[:cursor - 8] + " " * 8 + "\n" + text[cursor - 8:]  # a new indented line, the cursor at its end
    typed = "self.prompt_tokens_seen = 0"[:keys]
    out, answers = [], {}
    for warm in (False, True):
        engine.prompt_cache.clear()
        engine.fill(text, cursor, language="python", settings=settings)  # warm-up
        times, nfe, reused, toks = [], [], [], []
        for k in range(1, len(typed) + 1):
            t = text[:cursor] + typed[:k] + text[cursor:]
            if not warm:
                engine.prompt_cache.clear()
            t0 = time.perf_counter()
            r = engine.fill(t, cursor + k, language="python", settings=settings)
            times.append(time.perf_counter() - t0)
            nfe.append(r.stats["nfe"])
            toks.append(r.stats["tokens"])
            reused.append(r.stats["prompt_tokens_reused"] / r.stats["prompt_tokens"])
            if answers.setdefault(k, r.new_text) != r.new_text:
                raise SystemExit(f"the prompt cache changed the answer at keystroke {k}")
        label = (f"prompt cache ({100 * statistics.mean(reused):.1f}% of the prompt reused)" if warm
                 else "no prompt cache")
        name = f"typing: fill after each of {len(typed)} keys, max {settings.max_new_tokens} new"
        out.append((name, label, percentile(times, 0.5) * 1000,
                    percentile(times, 0.95) * 1000, statistics.mean(nfe), statistics.mean(toks),
                    statistics.mean(toks) / max(statistics.mean(nfe), 1e-9), ""))
    if len(out) == 2:
        n, lbl, a, b, c, d, e_, _ = out[1]
        out[1] = (n, lbl, a, b, c, d, e_, f"{out[0][2] / a:.2f}x (cold / warm)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model, else random:small)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-ar", action="store_true", help="skip the AR baseline")
    ap.add_argument("--keys", type=int, default=12, help="keystrokes of the typing rows")
    args = ap.parse_args(argv)

    import torch

    from assistant.api import Settings
    from assistant.engine import Engine
    from model.checkpoint import DEFAULT_MODEL_DIR

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = args.model
    if spec is None and not (DEFAULT_MODEL_DIR / "config.json").is_file():
        spec = "random:small"
        print("notice: no default model in model/default/; timing an untrained random:small model "
              "(it never writes EOS, so every decode runs to --max-new-tokens)", file=sys.stderr)
    engine = Engine.load(spec, device=args.device)
    settings = Settings(max_new_tokens=args.max_new_tokens, threshold=args.threshold, seed=0)
    text = EXAMPLE.read_text(encoding="utf-8")
    modes = [None] if args.no_ar or engine.cfg.logit_shift else [None, "ar"]
    rows = []
    for name, op in workloads(text):
        p50s = {}
        for mode in modes:
            engine.decode_mode = mode
            s = replace(settings)
            for _ in range(args.warmup):
                op(engine, s)
            times, nfe, toks = [], [], []
            for _ in range(args.repeats):
                engine.prompt_cache.clear()
                t0 = time.perf_counter()
                r = op(engine, s)
                times.append(time.perf_counter() - t0)
                nfe.append(r.stats.get("nfe", 0))
                toks.append(r.stats.get("tokens", 0))
            label = "block diffusion" if mode is None else "AR baseline"
            if mode is None and engine.cfg.logit_shift:
                label = "AR checkpoint"
            p50 = percentile(times, 0.5)
            p50s[mode] = p50
            rows.append((name, label, p50 * 1000, percentile(times, 0.95) * 1000, statistics.mean(nfe),
                         statistics.mean(toks), statistics.mean(toks) / max(statistics.mean(nfe), 1e-9), ""))
        if None in p50s and "ar" in p50s:
            n, lbl, a, b, c, d, e_, _ = rows[-2]
            rows[-2] = (n, lbl, a, b, c, d, e_, f"{p50s['ar'] / p50s[None]:.2f}x")
    engine.decode_mode = None
    for max_new in sorted({args.max_new_tokens, 8}, reverse=True):  # 8: a short ghost-text completion
        rows += typing_rows(engine, replace(settings, max_new_tokens=max_new), args.keys)

    dev = args.device if args.device != "cpu" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nEngine latency: {engine.info['description']}, {engine.info['parameters'] / 1e6:.1f}M parameters, "
          f"block {engine.info['block_size']}, threshold {args.threshold}, max {args.max_new_tokens} new tokens, "
          f"{dev}, {args.repeats} runs after {args.warmup} warm-up\n")
    print("| operation | decoding | p50 ms | p95 ms | forwards | tokens | tokens/forward | AR p50 / BD p50 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, label, p50, p95, nfe, toks, tpf, speed in rows:
        print(f"| {name} | {label} | {p50:.0f} | {p95:.0f} | {nfe:.1f} | {toks:.1f} | {tpf:.2f} | {speed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
