"""Training-data throughput of one data-loader worker: AR, BD and SFT rows, FIM samples tokenised on the fly.

    python benchmarks/bench_data.py --corpus RUN/corpus --tokenizer RUN/tokenizer [--seq-len 1024] [--rows 64]

Each stage's data source builds ``--steps`` batches of ``--rows`` rows in this process (one core, as one
worker would), after one untimed batch; reported as ms per batch and tokens/s. Divide a GPU's training speed
in tokens/s by these figures for the number of workers (``num_workers``) that keeps it fed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="corpus folder (remask corpus build + tokenize)")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--fim-rate", type=float, default=0.5)
    a = p.parse_args(argv)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as in a forked worker

    from model.tokenizer import Tokenizer
    from training.config import TrainConfig, apply_overrides
    from training.data import PackedData, fim_settings
    from training.sft import SFTData

    tok = Tokenizer.from_folder(a.tokenizer)
    cfg = apply_overrides(TrainConfig(), {"seq_len": a.seq_len, "fim_rate": a.fim_rate}, "bench")
    sources = [("ar", PackedData(a.corpus, "train", tok, a.seq_len + 1, cfg.fim_rate, fim_settings(cfg), cfg.seed, 11)),
               ("bd", PackedData(a.corpus, "train", tok, a.seq_len, cfg.fim_rate, fim_settings(cfg), cfg.seed, 22)),
               ("sft", SFTData(a.corpus, "train", tok, a.seq_len, cfg, 33))]
    print(f"{a.rows} rows x {a.seq_len} tokens, FIM rate {a.fim_rate}, one process, {a.steps} batches after 1 warm-up")
    print(f"{'stage':<6}{'ms per batch':>14}{'tokens/s':>14}")
    for name, src in sources:
        src.batch(0, range(a.rows))
        t0 = time.perf_counter()
        for step in range(1, a.steps + 1):
            src.batch(step, range(a.rows))
        dt = (time.perf_counter() - t0) / a.steps
        print(f"{name:<6}{1000 * dt:>14.0f}{a.rows * a.seq_len / dt:>14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
