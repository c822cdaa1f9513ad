"""Decode loops of the full-attention families: Dream's ``diffusion_generate`` and DreamOn's expand/delete.

Exact mode, as the published code: every step forwards the whole canvas (there is no KV cache under full
attention). Token ids equal the published code's at temperature 0 for ``maskgit_plus``, ``topk_margin`` and
``entropy`` (tests/test_parity_dream.py runs it). What differs, on purpose:
- the logits head runs only on the rows the step reads (the hidden state before each mask), not the canvas;
- a left-padded pad position attends to itself (the published mask leaves its row empty): only pad rows change;
- per-row top-k is capped at the row's masks (the published code can pick a non-mask position and write a mask
  over a prompt token when rows hold different numbers of masks);
- callbacks and cancellation between steps, and a seeded generator for the random paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..network import forward_logits, remask_config

ALGS = ("maskgit_plus", "topk_margin", "entropy", "origin")


@dataclass
class DreamConfig:
    """``diffusion_generate``'s options (DreamGenerationConfig), plus DreamOn's."""

    max_new_tokens: int = 128
    steps: int = 128
    alg: str = "entropy"
    eps: float = 1e-3
    temperature: float = 0.0
    top_p: float | None = None
    # The published diffusion_generate inherits transformers' legacy config default top_k = 50 (a config.json
    # without generation fields still has it), so its probabilities are renormalised over the top 50 unless the
    # caller says otherwise; the same default here gives the same tokens. None: no top-k filter.
    top_k: int | None = 50
    alg_temp: float | None = None
    seed: int | None = 0
    # DreamOn (eval config defaults): the middle starts at min_gen_len masks and may grow to max_gen_len.
    min_gen_len: int = 4
    max_gen_len: int = 64
    max_tokens: int = 2048
    pad_eos_to_right: bool = True
    delete_eos: bool = True
    # Fast approximate mode (never the default): "dual" keeps the keys of the columns outside the masked region
    # from the last full forward (Fast-dLLM's dual cache) and forwards only the masked region between refreshes,
    # every ``refresh`` steps (DreamOn: also after every expand or delete, which shift the columns). Under full
    # attention those keys depend on the middle, so tokens can differ from the exact mode; refresh 1 is the exact
    # mode. Results count the full forwards in ``extra['full_forwards']``.
    cache: str = "none"
    refresh: int = 8

    def validate(self) -> None:
        if self.alg not in ALGS:
            raise ValueError(f"alg must be one of {ALGS}")
        if self.steps < 1 or self.max_new_tokens < 1:
            raise ValueError("steps and max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.min_gen_len <= self.max_gen_len:
            raise ValueError("need 0 < min_gen_len <= max_gen_len")
        if self.cache not in ("none", "dual") or self.refresh < 1:
            raise ValueError("cache must be 'none' or 'dual', refresh at least 1")


@dataclass
class DreamResult:
    sequences: list[list[int]]  # per row: the whole canvas (prompt included, left padding removed)
    generated: list[list[int]]  # per row: the generated part (the canvas after the prompt / DreamOn's middle)
    logprobs: list[list[float]]
    nfe: int = 0
    elapsed_s: float = 0.0
    extra: dict = field(default_factory=dict)


def _filter(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Top-p then top-k filtering, the published order, with the dtype's minimum as the removed value."""
    if top_p is not None and top_p < 1:
        sl, si = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(sl, dim=-1), dim=-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, si, drop), torch.finfo(logits.dtype).min)
    if top_k is not None:
        k = min(top_k, logits.shape[-1])
        logits = logits.masked_fill(logits < torch.topk(logits, k)[0][..., -1, None], torch.finfo(logits.dtype).min)
    return logits


def _propose(logits: torch.Tensor, cfg: DreamConfig, gen: torch.Generator | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(confidence, token, probability of the token) per masked row, by the alg's confidence rule."""
    if cfg.temperature > 0:
        logits = logits / cfg.temperature
    probs = torch.softmax(_filter(logits, cfg.top_p, cfg.top_k), dim=-1)
    if cfg.temperature > 0:
        x0 = torch.multinomial(probs.cpu(), 1, generator=gen)[:, 0].to(probs.device)
        conf = probs.gather(-1, x0[:, None])[:, 0]
    else:
        conf, x0 = probs.max(dim=-1)
    p = probs.gather(-1, x0[:, None])[:, 0]
    if cfg.alg == "topk_margin":
        top2 = torch.sort(probs, dim=-1, descending=True).values
        conf = top2[:, 0] - top2[:, 1]
    elif cfg.alg == "entropy":
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return conf, x0, p


class _ColumnCache:
    """Keys and values per canvas column for the dual-cache mode (transformers' attention calls ``update``)."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.cols: torch.Tensor | None = None  # the columns the next forward writes

    def prepare(self, positions: torch.Tensor, kv_len: int) -> None:  # forward_logits' hook: columns preset
        pass

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx not in self.keys or self.cols is None or len(self.cols) == self.keys[layer_idx].shape[2]:
            self.keys[layer_idx], self.values[layer_idx] = key.clone(), value.clone()
        else:
            self.keys[layer_idx][:, :, self.cols] = key
            self.values[layer_idx][:, :, self.cols] = value
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if layer_idx not in self.keys else int(self.keys[layer_idx].shape[2])


def _shifted_logits(model, x: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor, mask_index: torch.Tensor,
                    cache: _ColumnCache | None = None, full: bool = True) -> torch.Tensor:
    """Logits of the masked positions, row-major (as ``logits[mask_index]``): position i reads hidden state i-1
    (position 0 its own), so the head runs on those rows only. With ``cache`` and not ``full``: only the columns
    from the first mask's predecessor to the last mask are forwarded, over the cached keys of the others."""
    n = x.shape[0]
    idx = [((m.nonzero().flatten() - 1).clamp_min(0)) for m in mask_index]
    lo = 0
    if cache is not None:
        if full:
            cache.cols = None
        else:
            lo = min(int(i.min()) for i in idx if len(i))
            hi = max(int(m.nonzero().max()) for m in mask_index if m.any()) + 1
            cache.cols = torch.arange(lo, hi, device=x.device)
            x, pos, allowed = x[:, lo:hi], pos[:, lo:hi], allowed[:, lo:hi]
    width = max(1, max(len(i) for i in idx))
    keep = torch.zeros(n, width, dtype=torch.long, device=x.device)
    for r, i in enumerate(idx):
        keep[r, : len(i)] = i - lo
    lg = forward_logits(model, x, pos, allowed, cache=cache, keep=keep).float()
    return torch.cat([lg[r, : len(i)] for r, i in enumerate(idx)])


@torch.no_grad()
def dream_generate(model, prompts: Sequence[Sequence[int]], cfg: DreamConfig | None = None, *,
                   callback: Callable[[int, torch.Tensor], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> DreamResult:
    """``diffusion_generate`` on a batch: prompts are left-padded with the pad id to one length, then every row
    gets ``max_new_tokens`` masks. ``callback(step, canvas)`` after each step."""
    cfg = cfg or DreamConfig()
    cfg.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    mcfg = remask_config(model)
    mask_id, pad_id = mcfg.mask_token_id, mcfg.pad_token_id
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    t0 = time.perf_counter()
    n, plen = len(prompts), max(len(p) for p in prompts)
    total = plen + cfg.max_new_tokens
    if total > mcfg.max_position_embeddings:
        raise ValueError(f"prompt plus {cfg.max_new_tokens} new tokens ({total}) exceeds the model context "
                         f"({mcfg.max_position_embeddings})")
    x = torch.full((n, total), mask_id, dtype=torch.long)
    real = torch.ones(n, total, dtype=torch.bool)
    for i, p in enumerate(prompts):
        x[i, plen - len(p): plen] = torch.tensor(list(p))
        x[i, : plen - len(p)] = pad_id
        real[i, : plen - len(p)] = False
    x, logp_of, nfe, full = _denoise(model, x, real, cfg, gen, callback, cancel)
    seqs, gens, lps = [], [], []
    for i, p in enumerate(prompts):
        row = x[i].tolist()
        seqs.append(row[plen - len(p):])
        gens.append(row[plen:])
        lps.append([logp_of.get((i, c), 0.0) for c in range(plen, total)])
    return DreamResult(sequences=seqs, generated=gens, logprobs=lps, nfe=nfe, elapsed_s=time.perf_counter() - t0,
                       extra={"full_forwards": full})


@torch.no_grad()
def dream_canvas_generate(model, canvases: Sequence[Sequence[int]], cfg: DreamConfig | None = None, *,
                          callback: Callable[[int, torch.Tensor], None] | None = None,
                          cancel: Callable[[], bool] | None = None) -> DreamResult:
    """Denoise canvases that hold their masks in place (infilling: prefix, masks, suffix), left-padded to one
    length. Each row's k per step comes from its own mask count, so canvases of several lengths share a batch
    and each decodes as it would alone. ``logprobs[i][j]``: log p of canvas position j when it was committed."""
    cfg = cfg or DreamConfig()
    cfg.validate()
    mcfg = remask_config(model)
    n, width = len(canvases), max(len(c) for c in canvases)
    if width > mcfg.max_position_embeddings:
        raise ValueError(f"the canvas ({width} tokens) exceeds the model context ({mcfg.max_position_embeddings})")
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    t0 = time.perf_counter()
    x = torch.full((n, width), mcfg.pad_token_id, dtype=torch.long)
    real = torch.zeros(n, width, dtype=torch.bool)
    for i, c in enumerate(canvases):
        x[i, width - len(c):] = torch.tensor(list(c))
        real[i, width - len(c):] = True
    x, logp_of, nfe, full = _denoise(model, x, real, cfg, gen, callback, cancel, per_row_k=True)
    seqs = [x[i, width - len(c):].tolist() for i, c in enumerate(canvases)]
    lps = [[logp_of.get((i, width - len(c) + j), 0.0) for j in range(len(c))] for i, c in enumerate(canvases)]
    return DreamResult(sequences=seqs, generated=seqs, logprobs=lps, nfe=nfe, elapsed_s=time.perf_counter() - t0,
                       extra={"full_forwards": full})


def _denoise(model, x: torch.Tensor, real: torch.Tensor, cfg: DreamConfig, gen: torch.Generator | None,
             callback, cancel, per_row_k: bool = False
             ) -> tuple[torch.Tensor, dict[tuple[int, int], float], int, int]:
    """The diffusion_generate loop over a left-padded canvas (``real`` marks non-pad positions). Returns the
    canvas, log p per committed (row, column), forwards, and how many of those ran over the whole canvas."""
    n, total = x.shape
    mask_id = remask_config(model).mask_token_id
    device = next(model.parameters()).device
    pos = real.long().cumsum(-1) - 1
    pos.masked_fill_(~real, 1)
    eye = torch.eye(total, dtype=torch.bool)[None]
    allowed = (real[:, None, :] & real[:, :, None]) | eye  # a pad row sees itself only
    x, pos, allowed = x.to(device), pos.to(device), allowed.to(device)
    timesteps = torch.linspace(1, cfg.eps, cfg.steps + 1)
    logp_of: dict[tuple[int, int], float] = {}
    nfe = n_full = 0
    cache = _ColumnCache() if cfg.cache == "dual" else None
    for step in range(cfg.steps):
        if cancel is not None and cancel():
            from ..decoder import DecodeCancelled

            raise DecodeCancelled()
        mask_index = x == mask_id
        if not mask_index.any():
            break
        full = cache is None or step % cfg.refresh == 0
        logits = _shifted_logits(model, x, pos, allowed, mask_index, cache=cache, full=full)
        nfe += 1
        n_full += full
        t, s = timesteps[step], timesteps[step + 1]
        rows, cols = mask_index.nonzero(as_tuple=True)
        if cfg.alg == "origin":
            p_transfer = 1 - s / t if step < cfg.steps - 1 else 1
            move = torch.rand(rows.shape, generator=gen) < p_transfer
            if move.any():
                _, x0, p = _propose(logits[move.to(logits.device)], cfg, gen)
                for r, c, tok, pr in zip(rows[move].tolist(), cols[move].tolist(), x0.tolist(), p.tolist(),
                                         strict=True):
                    x[r, c] = tok
                    logp_of[(r, c)] = float(torch.tensor(pr).clamp_min(1e-30).log())
        else:
            conf, x0, p = _propose(logits, cfg, gen)
            if per_row_k:  # rows with different numbers of masks (several canvas lengths in one batch)
                counts = mask_index.sum(1).tolist()
                ks = [int(torch.tensor(float(c)) * (1 - s / t)) if step < cfg.steps - 1 else c for c in counts]
            else:  # the published rule: the batch's average mask count
                n_mask = mask_index.sum() / mask_index.shape[0]
                ks = [int(n_mask * (1 - s / t)) if step < cfg.steps - 1 else int(n_mask)] * n
            k = max(ks)
            if k > 0:
                full = torch.full(x.shape, -torch.inf, dtype=conf.dtype, device=conf.device)
                full[mask_index] = conf
                if cfg.alg_temp:
                    w = F.softmax(full / cfg.alg_temp, dim=-1)
                    pick = torch.multinomial(w.cpu(), num_samples=k, generator=gen).to(x.device)
                else:
                    pick = torch.topk(full, k).indices
                proposal = torch.full_like(x, mask_id)
                proposal[mask_index] = x0
                prob = torch.zeros(x.shape, dtype=p.dtype, device=p.device)
                prob[mask_index] = p
                for r in range(n):
                    for c in pick[r, : ks[r]].tolist():
                        if mask_index[r, c]:  # never a non-mask position (see the module note)
                            x[r, c] = proposal[r, c]
                            logp_of[(r, c)] = float(prob[r, c].clamp_min(1e-30).log())
        if callback is not None:
            callback(step, x)
    return x.cpu(), logp_of, nfe, n_full


@torch.no_grad()
def dreamon_infill(model, prefix: Sequence[int], suffix: Sequence[int], cfg: DreamConfig | None = None, *,
                   callback: Callable[[int, list[int]], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> DreamResult:
    """DreamOn's variable-length infilling (``batch_generate_with_expand_as_token``, batch 1).

    ``prefix`` starts with bos; the canvas is ``prefix + [mask] * min_gen_len + suffix + [eos]``, then masks up
    to the maximum length. Each step reveals the single most confident mask of the window; an expand token
    becomes two masks, an EOS written at a mask is deleted (a mask appended at the end), and with
    ``pad_eos_to_right`` the masks right of the first EOS become EOS (then deleted). The middle is the window
    slice after the prefix; its length is the result's ``extra['middle_len']``.

    ``cfg.cache == "dual"`` (approximate, never the default): a full forward every ``cfg.refresh`` steps and on
    the step after any expand or delete (those shift every column right of the edit, so cached keys would sit at
    the wrong columns and positions); between, only the columns from the first mask's predecessor to the last mask
    of the window are forwarded over the other columns' cached keys. ``extra['full_forwards']`` counts the full
    ones; with ``refresh=1`` every forward is full and the tokens are the exact mode's.
    """
    cfg = cfg or DreamConfig()
    cfg.validate()
    if cfg.alg == "origin":
        raise ValueError("DreamOn decoding has no 'origin' alg (the published code raises NotImplementedError)")
    mcfg = remask_config(model)
    mask_id, eos_id = mcfg.mask_token_id, mcfg.eos_token_id
    expand_id = mcfg.extra.get("expand_token_id")
    if expand_id is None:
        raise ValueError("this model has no expand token: variable-length infilling needs a DreamOn checkpoint")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    t0 = time.perf_counter()
    prompt = list(prefix) + [mask_id] * cfg.min_gen_len + list(suffix) + [eos_id]
    L0 = len(prompt)
    max_tokens = min(cfg.max_tokens, L0 + cfg.max_gen_len - cfg.min_gen_len)
    if max_tokens > mcfg.max_position_embeddings:
        raise ValueError(f"the canvas ({max_tokens} tokens) exceeds the model context "
                         f"({mcfg.max_position_embeddings})")
    x = torch.tensor(prompt + [mask_id] * (max_tokens - L0), dtype=torch.long, device=device)[None]
    lp = [0.0] * max_tokens  # log p of each position's token when it was written, moved with the edits
    n_gen, budget, nfe = cfg.min_gen_len, cfg.max_gen_len, 0
    ar = torch.arange(max_tokens, device=device)
    cache = _ColumnCache() if cfg.cache == "dual" else None
    n_full, since_full, shifted = 0, 0, True  # the first forward is full
    for step in range(cfg.steps):
        if cancel is not None and cancel():
            from ..decoder import DecodeCancelled

            raise DecodeCancelled()
        window = L0 - cfg.min_gen_len + n_gen
        inside = ar < window
        mask_index = (x[0] == mask_id) & inside
        if not mask_index.any():
            break
        pos = torch.where(inside, ar, torch.ones_like(ar))[None]
        allowed = ((inside[None, :] & inside[:, None]) | torch.eye(max_tokens, dtype=torch.bool, device=device))
        full = cache is None or shifted or since_full >= cfg.refresh
        logits = _shifted_logits(model, x, pos, allowed[None], mask_index[None], cache=cache, full=full)
        nfe += 1
        n_full += full
        since_full = 1 if full else since_full + 1
        shifted = False
        if window == max_tokens or budget == 0:
            logits[:, expand_id] -= 1e9
        conf, x0, p_tok = _propose(logits, cfg, gen)
        if cfg.alg_temp:
            pick = int(torch.multinomial(F.softmax(conf / cfg.alg_temp, dim=-1).cpu(), 1, generator=gen)[0])
        else:
            pick = int(torch.topk(conf, 1).indices[0])
        where = mask_index.nonzero().flatten()
        x[0, int(where[pick])] = x0[pick]
        lp[int(where[pick])] = float(p_tok[pick].clamp_min(1e-30).log())
        if cfg.pad_eos_to_right:
            eos_at = (x[0] == eos_id).nonzero().flatten()
            if eos_at.numel():
                x[0, (ar >= int(eos_at[0])) & mask_index] = eos_id
        seq = x[0].tolist()
        for idx in sorted((i for i, t in enumerate(seq) if t == expand_id), reverse=True):
            seq[idx: idx + 1] = [mask_id, mask_id]
            lp[idx: idx + 1] = [0.0, 0.0]
            n_gen += 1
            shifted = True
            budget -= 1
            seq, lp = seq[:max_tokens], lp[:max_tokens]
        if cfg.delete_eos:
            was_mask = mask_index.tolist()
            for idx in sorted((i for i, t in enumerate(seq) if t == eos_id and i < len(was_mask) and was_mask[i]),
                              reverse=True):
                del seq[idx]
                del lp[idx]
                seq.append(mask_id)
                lp.append(0.0)
                n_gen -= 1
                shifted = True
        x = torch.tensor(seq, dtype=torch.long, device=device)[None]
        if callback is not None:
            callback(step, seq[len(prefix): len(prefix) + n_gen])
    seq = x[0].tolist()
    middle = seq[len(prefix): len(prefix) + n_gen]
    return DreamResult(sequences=[seq[: L0 - cfg.min_gen_len + n_gen]], generated=[middle],
                       logprobs=[lp[len(prefix): len(prefix) + n_gen]], nfe=nfe, elapsed_s=time.perf_counter() - t0,
                       extra={"middle_len": n_gen, "full_forwards": n_full})
