"""Attention masks for block diffusion.

Two layouts (diffusion.md 1.4 and 3):
- inference: block-causal on absolute positions, ``k // B <= q // B``;
- training (BD3-LM): one sequence [x_t ; x_0] of length 2L, both halves at positions 0..L-1. A noisy
  query sees its own noisy block and the clean blocks before it; a clean query sees clean blocks up to
  and including its own (exactly the KV an inference cache holds).

Boolean masks are True where attention is allowed. Dense masks serve SDPA on CPU; ``flex_*`` build
``BlockMask`` objects for ``flex_attention`` on GPU from the same predicates.
"""

from __future__ import annotations

import torch


def block_causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, block_size: int) -> torch.Tensor:
    """Allowed[q, k] = block(k) <= block(q), for given absolute query and key positions.

    Works batched: q_pos [..., Q], k_pos [..., K] -> [..., Q, K].
    """
    return (k_pos // block_size).unsqueeze(-2) <= (q_pos // block_size).unsqueeze(-1)


def bd3_predicate(q: torch.Tensor, k: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    """The BD3-LM rule for indices into [x_t ; x_0] (each half of length ``seq_len``)."""
    q_clean = q >= seq_len
    k_clean = k >= seq_len
    qb = (q % seq_len) // block_size
    kb = (k % seq_len) // block_size
    diagonal = (q_clean == k_clean) & (qb == kb) & ~q_clean  # noisy block sees itself
    offset_causal = ~q_clean & k_clean & (kb < qb)  # noisy sees earlier clean blocks
    clean_causal = q_clean & k_clean & (kb <= qb)  # clean stream is block-causal
    return diagonal | offset_causal | clean_causal


def bd3_training_mask(seq_len: int, block_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense [2L, 2L] boolean mask for the vectorised block-diffusion training forward."""
    idx = torch.arange(2 * seq_len, device=device)
    return bd3_predicate(idx[:, None], idx[None, :], seq_len, block_size)


def bd3_positions(seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rotary positions for [x_t ; x_0]: both halves at 0..L-1."""
    p = torch.arange(seq_len, device=device)
    return torch.cat([p, p])


def causal_mask(seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def flex_bd3_block_mask(seq_len: int, block_size: int, batch: int | None = None, device: str = "cuda"):
    """``BlockMask`` for the BD3 layout, built once per (L, B) and reused (a static mask, no recompiles)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return bd3_predicate(q_idx, kv_idx, seq_len, block_size)

    return create_block_mask(mask_mod, B=batch, H=None, Q_LEN=2 * seq_len, KV_LEN=2 * seq_len, device=device)


def flex_causal_block_mask(seq_len: int, device: str = "cuda"):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)


def flex_block_causal_block_mask(seq_len: int, block_size: int, device: str = "cuda"):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx // block_size) <= (q_idx // block_size)

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)
