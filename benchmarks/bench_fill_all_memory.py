"""Peak memory and time of "fill all holes" on a file with many holes: bounded batches vs one batch.

    python benchmarks/bench_fill_all_memory.py --holes 100

Each variant runs in its own process (peak RSS only grows), on the same random ``test``-preset checkpoint and
the same file of N ``pass`` stubs. "bounded" is the shipped engine: rows decoded a KV-budgeted batch at a time
(assistant.engine.MAX_BATCH_ROWS / KV_BUDGET_BYTES) and prompt prefill in memory-bounded query chunks
(model.decoder.PREFILL_BUDGET). "one batch" lifts all three limits, as the engine was before.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def child(holes: int, one_batch: bool, model_dir: str) -> dict:
    import assistant.engine as eng
    import model.decoder as dec
    from assistant.api import Settings

    if one_batch:
        eng.MAX_BATCH_ROWS = eng.KV_BUDGET_BYTES = dec.PREFILL_BUDGET = 1 << 62
    engine = eng.Engine.load(model_dir, settings=Settings(max_new_tokens=16, seed=0))
    text = "".join(f"def f{i}(x):\n    pass\n\n\n" for i in range(holes))
    t0 = time.perf_counter()
    res = engine.fill_all(text, language="python")
    return {"variant": "one batch" if one_batch else "bounded", "holes": res.stats["holes"],
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holes", type=int, default=100)
    ap.add_argument("--child", choices=("bounded", "one"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.holes, a.child == "one", a.model)))
        return 0
    from model.testing import make_test_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(make_test_checkpoint(Path(tmp) / "m"))
        rows = []
        for variant in ("bounded", "one"):
            out = subprocess.run([sys.executable, __file__, "--holes", str(a.holes), "--child", variant,
                                  "--model", model_dir], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"fill all holes: {a.holes} `pass` stubs, random test-preset model, 16 new tokens at most")
    print("| variant | holes | seconds | peak RSS MB |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['holes']} | {r['seconds']} | {r['peak_rss_mb']} |")
    print(f"peak memory one batch / bounded: {rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
