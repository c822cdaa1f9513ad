"""Where to put the ghost-text floor (`minConfidence`): ghost text's mean token confidence, right against wrong.

    python benchmarks/measure_min_confidence.py --samples 200 [--model DIR]

The cursor is put inside random lines, after a token (where a user pauses), of files the default model never
trained on (the standard library's ``email`` and ``json`` packages, held out of its corpus), and the language
server's own ghost-text path runs there (``engine.fill`` with the server's inline settings, then
``RemaskServer.insertion``). A suggestion is *right* when its first token is the line's real next token
(``exact``: its whole first line is a prefix of the line's real rest), *wrong* otherwise. For each floor the
table gives how many right and wrong suggestions stay shown; the baseline (floor 0) is what the server showed
before the floor existed, in the same run.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

_TOKEN = re.compile(r"\s*(\w+|\S)")


def first_token(s: str) -> str | None:
    m = _TOKEN.match(s)
    return m.group(1) if m else None


def held_out_files() -> list[Path]:
    lib = Path(sys.modules["os"].__file__).parent
    return sorted([*(lib / "email").glob("*.py"), *(lib / "json").glob("*.py")])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--model", default=None, help="model folder (default: the built-in model)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from assistant.engine import Engine
    from lsp.common import MAX_CONTEXT_CHARS
    from lsp.config import ServerConfig
    from lsp.server import RemaskServer
    from lsp.textutil import window

    engine = Engine.load(a.model)
    settings = ServerConfig().settings(inline=True)
    rng = random.Random(a.seed)
    texts = [p.read_text(encoding="utf-8") for p in held_out_files()]
    rows: list[tuple[float, bool, bool]] = []  # (confidence, right, exact) for every suggestion shown
    asked = 0
    t0 = time.perf_counter()
    while asked < a.samples:
        text = rng.choice(texts)
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        line = lines[i]
        body = line.strip()
        if len(body) < 12 or body.startswith(("#", '"', "'")):
            continue
        indent = len(line) - len(line.lstrip())
        cuts = [indent + k for k in range(2, len(body) - 1) if not (body[k - 1].isalnum() or body[k - 1] == "_")]
        if not cuts:
            continue
        cut = rng.choice(cuts)
        offset = sum(len(x) + 1 for x in lines[:i]) + cut
        truth = line[cut:]
        asked += 1
        sub, base = window(text, offset, offset, MAX_CONTEXT_CHARS)
        res = engine.fill(sub, offset - base, offset - base, language="python", settings=settings)
        got = RemaskServer.insertion(res, sub, offset - base, 0)
        conf = res.stats.get("confidence")
        if got is None or conf is None:
            continue
        first = got[0].split("\n", 1)[0].rstrip()
        exact = bool(first.strip()) and truth.startswith(first)
        rows.append((conf, first_token(first) is not None and first_token(first) == first_token(truth), exact))
        print(f"{asked}/{a.samples}: confidence {conf:.3f} {'right' if rows[-1][1] else 'wrong'} {first!r} "
              f"(truth {truth!r})", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    right = [c for c, ok, _ in rows if ok]
    wrong = [c for c, ok, _ in rows if not ok]
    exact = [c for c, _, ex in rows if ex]
    print(f"{asked} cursors, {len(rows)} suggestions shown ({len(right)} right, {len(exact)} exact, "
          f"{len(wrong)} wrong), {elapsed:.1f} s, model: {engine.info['description']}")
    print("| floor | shown | right kept | exact kept | wrong hidden | right share of shown |\n"
          "|---:|---:|---:|---:|---:|---:|")
    for floor in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5):
        kept_r = sum(1 for c in right if c >= floor)
        kept_x = sum(1 for c in exact if c >= floor)
        kept_w = sum(1 for c in wrong if c >= floor)
        shown = kept_r + kept_w
        print(f"| {floor:.2f}{' (baseline)' if floor == 0 else ''} | {shown} | {kept_r}/{len(right)} | "
              f"{kept_x}/{len(exact)} | {len(wrong) - kept_w}/{len(wrong)} | "
              f"{(kept_r / shown if shown else 0):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
