"""A preallocated KV cache whose slots are absolute positions.

Slot ``p`` of row ``b`` holds the key/value of the token at position ``p`` of that row. A forward writes
its window's keys at their positions and attends to slots ``[0, kv_len)``; which slots count is decided
by the attention mask, not by the cache length. So rows of a batch may sit at different positions, a
provisional (still noisy) block is simply overwritten by the next step, and the memory never moves:
the layout a CUDA graph needs (issue 10) without changing this API.
"""

from __future__ import annotations

import torch


class BlockKVCache:
    """Duck-typed transformers cache: the Llama attention only calls ``update``."""

    def __init__(self, num_layers: int, batch: int, capacity: int) -> None:
        self.num_layers = num_layers
        self.batch = batch
        self.capacity = capacity
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self._write_idx: torch.Tensor | None = None  # [batch, q] slot of each query token
        self._kv_len = 0

    def prepare(self, positions: torch.Tensor, kv_len: int) -> None:
        """Set where the next forward writes (its tokens' positions) and how many slots it reads."""
        if positions.shape[0] != self.batch:
            raise ValueError("positions batch does not match the cache")
        if int(positions.max()) >= self.capacity or kv_len > self.capacity:
            raise ValueError(f"position beyond the cache capacity {self.capacity}")
        self._write_idx = positions
        self._kv_len = kv_len

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self._write_idx is None:
            raise RuntimeError("BlockKVCache.prepare() must be called before a forward")
        if self.keys[layer_idx] is None:
            b, h, _, d = key.shape
            self.keys[layer_idx] = key.new_zeros(b, h, self.capacity, d)
            self.values[layer_idx] = value.new_zeros(b, h, self.capacity, value.shape[-1])
        k_all, v_all = self.keys[layer_idx], self.values[layer_idx]
        idx = self._write_idx[:, None, :, None].expand(-1, key.shape[1], -1, key.shape[-1])
        k_all.scatter_(2, idx, key.to(k_all.dtype))
        v_all.scatter_(2, idx.expand(-1, -1, -1, value.shape[-1]), value.to(v_all.dtype))
        return k_all[:, :, : self._kv_len], v_all[:, :, : self._kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._kv_len

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only some rows (finished rows leave the batch)."""
        for i in range(self.num_layers):
            if self.keys[i] is not None:
                self.keys[i] = self.keys[i][rows]
                self.values[i] = self.values[i][rows]
        self.batch = int(rows.numel())
