"""Losses: causal LM (AR stage) and the block-diffusion objective (BD CPT and SFT).

Block diffusion (diffusion.md 1.5 and 3):
- one forward over [x_t ; x_0] (length 2L) under the BD3-LM mask, both halves at positions 0..L-1;
- t drawn per block; u_blk = min(1, max(u, 1/B)); each eligible token masked i.i.d. with p = u_blk;
  a block left without a mask gets one forced mask, so no block step is wasted;
- warmup: u <= cap(s) with cap rising linearly from u_init to 1 over S_warmup steps, loss unweighted;
  afterwards the ELBO weight 1/u_blk (<= B with the clip);
- no logit shift: the output at position i predicts token i; loss only on masked positions of the noisy
  half; the mask token is never a prediction (its logit is -inf).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.masks import bd3_positions, bd3_training_mask


def mask_cap(step: int, warmup_steps: int, u_init: float) -> float:
    """u_max(s) = u_init + (1 - u_init) * s / S_warmup, then 1."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return u_init + (1.0 - u_init) * step / warmup_steps


def weighted(step: int, warmup_steps: int) -> bool:
    """Whether the 1/u ELBO weight is on (it is dropped during warmup)."""
    return step >= warmup_steps


@dataclass
class Noise:
    xt: torch.Tensor  # [b, L] noisy tokens
    masked: torch.Tensor  # [b, L] bool
    weight: torch.Tensor  # [b, L] float: loss weight of each position (0 where not masked)
    u_blk: torch.Tensor  # [b, L / B] per-block mask rate


def bd_noise(x0: torch.Tensor, block: int, mask_id: int, cap: float, use_weight: bool,
             draws: tuple[torch.Tensor, torch.Tensor, torch.Tensor], eligible: torch.Tensor | None = None,
             clip: bool = True) -> Noise:
    """Corrupt ``x0`` block by block.

    ``draws`` are uniforms (per block [b, L/B], per token [b, L], tie-break [b, L/B, B]) made per row by
    the caller, so that the noise of a row does not depend on which process or micro-batch holds it.
    ``eligible`` (bool [b, L]) limits which positions may be masked (SFT: the response only).
    """
    b, L = x0.shape
    if L % block:
        raise ValueError(f"sequence length {L} is not a multiple of the block size {block}")
    nb = L // block
    dev = x0.device
    u01, r, tie = (t.to(dev) for t in draws)
    u = u01 * cap
    if clip:
        u_blk = u.clamp(min=1.0 / block, max=1.0)
    else:
        u_blk = u.clamp(min=1e-4, max=1.0)
    elig = torch.ones_like(x0, dtype=torch.bool) if eligible is None else eligible
    masked = (r < u_blk.repeat_interleave(block, dim=1)) & elig
    if clip:
        # Force one uniformly chosen eligible position in every block that has none masked.
        mb = masked.view(b, nb, block)
        eb = elig.view(b, nb, block)
        empty = ~mb.any(-1) & eb.any(-1)
        if bool(empty.any()):
            score = tie.masked_fill(~eb, -1.0)
            pick = F.one_hot(score.argmax(-1), block).bool() & empty[..., None]
            masked = (mb | pick).view(b, L)
    w_blk = (1.0 / u_blk) if use_weight else torch.ones_like(u_blk)
    weight = w_blk.repeat_interleave(block, dim=1) * masked
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return Noise(xt=xt, masked=masked, weight=weight, u_blk=u_blk)


def ar_loss(model, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy over a packed row of L+1 tokens."""
    inp, tgt = x[:, :-1], x[:, 1:]
    h = model.model(input_ids=inp).last_hidden_state
    logits = model.lm_head(h).float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
    return loss, {"ce": float(loss.detach())}


class BD3Masks:
    """The static training mask per sequence length: dense for SDPA, a BlockMask for flex attention."""

    def __init__(self, block: int, flex: bool, device: torch.device) -> None:
        self.block, self.flex, self.device = block, flex, device
        self._cache: dict[int, object] = {}

    def get(self, L: int, batch: int):
        if L not in self._cache:
            if self.flex:
                from model.masks import flex_bd3_block_mask

                self._cache[L] = flex_bd3_block_mask(L, self.block, batch=None, device=str(self.device))
            else:
                self._cache[L] = bd3_training_mask(L, self.block, device=self.device)
        m = self._cache[L]
        if self.flex:
            return m
        return m[None].expand(batch, -1, -1)


def bd_forward_masked(model, noise: Noise, x0: torch.Tensor, masks: BD3Masks) -> torch.Tensor:
    """Logits of the masked positions of the noisy half, from one forward over [x_t ; x_0]."""
    b, L = x0.shape
    inp = torch.cat([noise.xt, x0], dim=1)
    pos = bd3_positions(L, device=x0.device)[None].expand(b, -1)
    mask = masks.get(L, b)
    if isinstance(mask, torch.Tensor):
        mask = mask[:, None]
    h = model.model(input_ids=inp, position_ids=pos, attention_mask=mask).last_hidden_state
    h = h[:, :L][noise.masked]
    return model.lm_head(h).float()


def bd_loss(model, x0: torch.Tensor, noise: Noise, masks: BD3Masks, mask_id: int,
            normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted masked cross-entropy normalised by the token count (LLaDA: b * L), or ``normalizer``."""
    logits = bd_forward_masked(model, noise, x0, masks)
    logits[:, mask_id] = float("-inf")
    ce = F.cross_entropy(logits, x0[noise.masked], reduction="none")
    w = noise.weight[noise.masked]
    denom = normalizer if normalizer is not None else float(x0.numel())
    loss = (w * ce).sum() / denom
    n = max(int(noise.masked.sum()), 1)
    stats = {"masked_ce": float(ce.detach().sum()) / n, "masked_frac": n / x0.numel(),
             "elbo": float((ce.detach() / noise.u_blk.repeat_interleave(x0.shape[1] // noise.u_blk.shape[1], 1)
                            [noise.masked]).sum()) / denom}
    return loss, stats
