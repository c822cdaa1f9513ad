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

    # A slot pool for rows that join and leave between steps (``model.decoder.BlockDecoder``): the tensors are
    # allocated for more rows than are active; a forward runs over a view of a contiguous run of slots, so its
    # writes land in the pool and no step copies the cache.

    def reserve(self, rows: int, capacity: int, heads: int, head_dim: int, dtype: torch.dtype,
                device: torch.device | str) -> None:
        """Make room for ``rows`` slots of ``capacity`` positions; existing slots keep their keys."""
        have_rows = self.keys[0].shape[0] if self.keys[0] is not None else 0
        if self.keys[0] is not None and have_rows >= rows and self.capacity >= capacity:
            return
        new_rows, new_cap = max(rows, have_rows), max(capacity, self.capacity)
        for i in range(self.num_layers):
            k = torch.zeros(new_rows, heads, new_cap, head_dim, dtype=dtype, device=device)
            v = torch.zeros_like(k)
            if self.keys[i] is not None:
                old_k, old_v = self.keys[i], self.values[i]
                k[: old_k.shape[0], :, : old_k.shape[2]] = old_k
                v[: old_v.shape[0], :, : old_v.shape[2]] = old_v
            self.keys[i], self.values[i] = k, v
        self.capacity = new_cap
        self.batch = new_rows

    def view(self, start: int, stop: int) -> BlockKVCache:
        """A cache over slots ``[start, stop)`` that shares this one's memory (forwards write through it)."""
        if self.keys[0] is None or not 0 <= start < stop <= self.keys[0].shape[0]:
            raise ValueError(f"slots [{start}, {stop}) are not allocated")
        v = BlockKVCache(self.num_layers, stop - start, self.capacity)
        v.keys = [k[start:stop] for k in self.keys]  # type: ignore[index]
        v.values = [t[start:stop] for t in self.values]  # type: ignore[index]
        return v

    def move(self, src: int, dst: int) -> None:
        """Copy slot ``src`` into slot ``dst`` (a leaving row's slot takes the last active row)."""
        for k, v in zip(self.keys, self.values, strict=True):
            k[dst] = k[src]  # type: ignore[index]
            v[dst] = v[src]  # type: ignore[index]


class PromptCache:
    """The KV of the last prompt's whole blocks, for the next ``generate`` whose prompt starts the same way.

    An editor asks again at every keystroke with nearly the same prompt: in the suffix-first FIM layout
    ``<fim_suffix> S <fim_prefix> P <fim_middle>`` typing only extends P, so every block before the cursor's is
    unchanged. Under block-causal attention a block's keys depend only on the blocks up to it, so the keys of
    the whole blocks two prompts share are exact and only the rest needs a prefill. One entry (the last
    prompt): the editor's next request is almost always a neighbour of its previous one.
    """

    def __init__(self) -> None:
        self.owner: object | None = None  # the model the keys came from
        self.block = 0  # the block size they were computed with (it shapes the attention)
        self.ids: list[int] = []
        self.keys: list[torch.Tensor] = []  # per layer [heads, len(ids), head_dim]
        self.values: list[torch.Tensor] = []

    def reusable(self, model: torch.nn.Module, ids: list[int], block: int) -> int:
        """How many leading tokens of ``ids`` (a multiple of ``block``) have their keys here."""
        if self.owner is not model or self.block != block or not self.ids or not self.keys:
            return 0
        p = next(model.parameters())
        if self.keys[0].device != p.device or self.keys[0].dtype != p.dtype:  # the model was moved or cast
            return 0
        n = 0
        for a, b in zip(self.ids, ids, strict=False):
            if a != b:
                break
            n += 1
        return (n // block) * block

    def store(self, model: torch.nn.Module, ids: list[int], block: int, cache: BlockKVCache) -> None:
        """Keep the keys of ``ids`` (slots ``[0, len(ids))`` of row 0 of ``cache``)."""
        if cache.keys[0] is None:
            return
        n = len(ids)
        self.owner, self.block, self.ids = model, block, list(ids)
        self.keys = [k[0, :, :n].clone() for k in cache.keys]  # type: ignore[index]
        self.values = [v[0, :, :n].clone() for v in cache.values]  # type: ignore[index]

    def load_into(self, cache: BlockKVCache, n: int) -> None:
        """Write the first ``n`` cached slots into every row of ``cache``."""
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if cache.keys[i] is None:
                h, _, d = k.shape
                cache.keys[i] = k.new_zeros(cache.batch, h, cache.capacity, d)
                cache.values[i] = v.new_zeros(cache.batch, h, cache.capacity, v.shape[-1])
            cache.keys[i][:, :, :n] = k[None, :, :n]  # type: ignore[index]
            cache.values[i][:, :, :n] = v[None, :, :n]  # type: ignore[index]

    def clear(self) -> None:
        self.__init__()
