"""Batches of packed sequences, addressed by (step, row) so that resuming is exact.

Every row of every step is built from its own generator seeded with (seed, split, step, row). The data
position is therefore just the step number: a resumed run sees the same batches as an uninterrupted one,
and any split of the rows over processes (DDP) sees the same global batch.

A row is either a random window of the token stream (files separated by EOS, no document masking, as
in Stable-DiffCoder's packing) or, with probability ``fim_rate``, FIM samples packed back to back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .corpus import CorpusError, TextStore, TokenStore
from .fim import FimSettings, fim_sample

_SPLIT_SALT = {"train": 0, "val": 1, "holdout": 2}


def fim_settings(cfg) -> FimSettings:
    return FimSettings(line_frac=cfg.fim_line_frac, inline_frac=cfg.fim_inline_frac, node_frac=cfg.fim_node_frac,
                       max_middle_lines=cfg.fim_max_middle_lines, prefix_tokens=cfg.fim_prefix_tokens,
                       suffix_tokens=cfg.fim_suffix_tokens)


def split_languages(corpus_dir: str | Path, split: str) -> list[str]:
    """File extension (language) of each text of a split, in store order."""
    manifest = json.loads((Path(corpus_dir) / "manifest.json").read_text())
    return [f["language"] for f in manifest["files"] if f["split"] == split]


class PackedData:
    """Rows of ``length`` tokens for a split. ``row(step, index)`` is a pure function of its arguments."""

    def __init__(self, corpus_dir: str | Path, split: str, tokenizer, length: int, fim_rate: float,
                 fim: FimSettings, seed: int, stage_salt: int = 0) -> None:
        self.tokens = TokenStore(corpus_dir, split)
        if len(self.tokens) < length + 1:
            raise CorpusError(f"the {split} split has {len(self.tokens)} tokens, fewer than one sequence "
                              f"({length + 1}); build a larger corpus or lower seq_len")
        self.texts = TextStore(corpus_dir, split) if fim_rate > 0 else None
        self.langs = split_languages(corpus_dir, split) if fim_rate > 0 else []
        self.tokenizer = tokenizer
        self.length = length
        self.fim_rate = fim_rate
        self.fim = fim
        self.seed = seed
        self.salt = (_SPLIT_SALT.get(split, 3), stage_salt)

    def rng(self, step: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *self.salt, step, index])

    def _doc_at(self, rng: np.random.Generator) -> int:
        """A file drawn in proportion to its length (as a stream window would be)."""
        pos = int(rng.integers(0, len(self.tokens)))
        return int(np.searchsorted(self.tokens.offsets, pos, side="right") - 1)

    def row(self, step: int, index: int) -> np.ndarray:
        rng = self.rng(step, index)
        n = self.length
        if self.texts is not None and rng.random() < self.fim_rate:
            out: list[int] = []
            while len(out) < n:
                d = self._doc_at(rng)
                out += fim_sample(self.texts[d], self.langs[d], self.tokenizer, rng, self.fim,
                                  bos=bool(rng.random() < 0.5))
            return np.asarray(out[:n], dtype=np.int64)
        start = int(rng.integers(0, len(self.tokens) - n + 1))
        return np.asarray(self.tokens.tokens[start: start + n], dtype=np.int64)

    def batch(self, step: int, rows: range) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.row(step, i) for i in rows]))


class StepDataset(torch.utils.data.Dataset):
    """Map-style view for a DataLoader with workers: item k = micro-batch k of the run."""

    def __init__(self, source, rows_for_micro) -> None:
        self.source = source
        self.rows_for_micro = rows_for_micro  # micro index -> (step, range of global rows)

    def __len__(self) -> int:  # pragma: no cover - the sampler decides
        return 1 << 40

    def __getitem__(self, k: int):
        step, rows = self.rows_for_micro(k)
        return self.source.batch(step, rows)


def loader(source, rows_for_micro, start: int, stop: int, num_workers: int):
    """Iterate micro-batches ``start..stop-1`` (optionally in worker processes, same content)."""
    ds = StepDataset(source, rows_for_micro)
    if num_workers <= 0:
        return (ds[k] for k in range(start, stop))
    # Workers are forked: tokenizers must not use its thread pool from here on (it would warn in every
    # worker). Set only now, so that tokenizer training and corpus tokenization before this use every core.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, sampler=range(start, stop),
                                            num_workers=num_workers, prefetch_factor=4, persistent_workers=False))
