"""Block-diffusion decoding with a KV cache, and the autoregressive baseline on the same weights.

Semantics are Stable-DiffCoder's ``generate_block`` (diffusion.md 1.4; tests/test_parity_sdc.py runs the
published code and compares token ids): the canvas is exactly prompt + max_new_tokens; blocks are aligned to
absolute positions, so a prompt that does not end on a block boundary makes the first block hold its tail
and the last block cut short (it holds P mod B masks); prefill of the whole prompt blocks; each step forwards
only the current block over the cache; provisional keys are never kept (the next step overwrites their
slots); one commit forward per finished block; EOS looked for only in generated tokens, once a block has no
mask left. Commit rule: a fixed number of steps per block, or a confidence threshold (always the top-1, then
every masked position at or above tau).

Beyond the reference: batches with per-row prompt lengths and per-row stopping (rows step in lockstep,
a row's commit forward shares the batched forward with other rows' denoising steps), rows that join and leave
between steps (``BlockDecoder``, the server's continuous batching), a callback after every step, cancellation
between steps, stop strings, NFE and tokens-per-forward counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .cache import BlockKVCache, PromptCache
from .masks import block_causal_mask
from .network import forward_logits, remask_config

CONFIDENCES = ("low_confidence", "margin", "entropy", "random")
# Prefill queries per forward are cut so that rows x queries x keys stays under this many mask/score
# entries: one request prefills in one forward, a batch of a hundred long prompts (fill all holes of a
# file) in several instead of one [rows, heads, L, L] attention matrix that runs a laptop out of memory.
PREFILL_BUDGET = 1 << 25
# On a CPU, rows joining a batch prefill together only while their padded prompt tokens stay under this (see
# ``BlockDecoder._fits``).
CPU_PREFILL_TOKENS = 1024


def _prefill(model, x: torch.Tensor, limit: torch.Tensor, q0: int, q1: int, block: int, cache: BlockKVCache,
             device) -> None:
    """Write the keys of positions [q0, q1) of every row into ``cache``, in memory-bounded query chunks.

    Query q sees key k when k's block is not after q's (``block`` 1: plain causal) and k is one of its row's
    prompt positions (k < ``limit[row]``); a padded query sees itself (no NaN). A chunk never needs later
    keys, so it attends to the cache slots [0, chunk end) that the chunks before it filled.
    """
    n = x.shape[0]
    chunk = max(block, PREFILL_BUDGET // max(n * q1, 1) // block * block)
    for a in range(q0, q1, chunk):
        b = min(q1, a + chunk)
        qp, kp = torch.arange(a, b)[None, :, None], torch.arange(b)[None, None, :]
        allowed = ((kp // block <= qp // block) & (kp < limit[:, None, None])) | (kp == qp)
        forward_logits(model, x[:, a:b].to(device), qp[0, :, 0].expand(n, -1).to(device), allowed.to(device),
                       cache=cache, kv_len=b, keep=slice(0, 0))


class DecodeCancelled(Exception):
    """Raised between steps when the cancel check says so; nothing is committed after it."""


@dataclass
class DecodeConfig:
    max_new_tokens: int = 128
    block_size: int | None = None  # None: the model's
    threshold: float | None = 0.9  # None: fixed schedule of ``steps_per_block`` steps
    steps_per_block: int | None = None  # fixed schedule; None: one token per step
    confidence: str = "low_confidence"
    temperature: float = 0.0
    seed: int | None = 0
    mode: str = "diffusion"  # "diffusion" or "ar"
    stop_at_eos: bool = True
    stop_strings: tuple[str, ...] = ()
    # Not the reference's rule, so off by default: once EOS is committed, the block's later masks become EOS
    # (fewer steps, but the positions before it then see EOS instead of MASK). BENCHMARKS.md measures it.
    eos_fill: bool = False
    # Write a finished block's clean keys in the same forward as the next block's first step (a 2B window)
    # instead of a forward of its own: the same tokens, one forward fewer per block.
    fuse_commit: bool = True
    # The block families' commit rules (model/families): "remask" (above), or "sdar" (SDAR's generate.py: the
    # step's count k is the block length split over the steps; with a threshold every mask with p > tau is
    # committed when there are at least k of them, else the top k; top-k only when threshold is None).
    commit_rule: str = "remask"
    # The canvas ends on a block boundary (SDAR) instead of at prompt + max_new_tokens (Stable-DiffCoder).
    align_canvas: bool = False

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {CONFIDENCES}")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.mode not in ("diffusion", "ar"):
            raise ValueError("mode must be 'diffusion' or 'ar'")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError("block_size must be at least 1")
        if self.steps_per_block is not None and self.steps_per_block < 1:
            raise ValueError("steps_per_block must be at least 1")
        if self.commit_rule not in ("remask", "sdar"):
            raise ValueError("commit_rule must be 'remask' or 'sdar'")


@dataclass
class StepEvent:
    """What a UI needs to draw one denoising step."""

    step: int
    nfe: int
    rows: list[list[int]]  # per input row: generated tokens so far, ``mask_id`` where still masked
    committed: list[int]  # tokens committed by this step, per input row
    done: list[bool]
    mask_id: int
    elapsed_s: float


@dataclass
class DecodeResult:
    tokens: list[list[int]]  # per row: generated tokens, EOS and anything after it removed
    logprobs: list[list[float]]  # per token: log p of the committed token when it was committed
    commit_steps: list[list[int]]  # per token: the step that committed it
    finish: list[str]  # "eos" | "stop" | "length"
    nfe: int = 0
    steps: int = 0
    elapsed_s: float = 0.0
    texts: list[str] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def generated(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tokens_per_forward(self) -> float:
        return self.generated / max(self.nfe, 1)

    def score(self, row: int) -> float:
        """Mean log-probability of a row's tokens: the model's own ranking score."""
        lp = self.logprobs[row]
        return sum(lp) / len(lp) if lp else float("-inf")


def _confidence(logp: torch.Tensor, x0: torch.Tensor, kind: str, gen: torch.Generator | None) -> torch.Tensor:
    """How sure the model is of each proposal, from float64 log-probabilities (higher is surer)."""
    if kind == "low_confidence":
        return torch.gather(logp, -1, x0[..., None])[..., 0].exp()
    if kind == "margin":
        top2 = logp.topk(2, dim=-1).values.exp()
        return top2[..., 0] - top2[..., 1]
    if kind == "entropy":
        return (logp.exp() * logp).sum(-1)  # negative entropy
    return torch.rand(x0.shape, generator=gen, dtype=torch.float64, device="cpu").to(x0.device)


def _pick(logits: torch.Tensor, temperature: float, gen: torch.Generator | None) -> torch.Tensor:
    """Argmax, or a Gumbel-max sample at temperature T computed in float64 (as the reference does)."""
    if temperature <= 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=gen, dtype=torch.float64, device="cpu").to(logits.device)
    g = -torch.log((-torch.log(u.clamp(1e-300, 1.0))).clamp_min(1e-300))  # Gumbel(0, 1)
    return (logits.double() + temperature * g).argmax(-1)


def propose(lg: torch.Tensor, cfg: DecodeConfig, schedule: list[int], gen: torch.Generator | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one block's masked positions: proposed tokens, their log-probs, and the indices to commit now.

    Fixed schedule: the next count of ``schedule`` (most confident first). Threshold: the most confident one
    always, then every other at or above tau.
    """
    if cfg.commit_rule == "sdar":
        return _propose_sdar(lg, cfg, schedule, gen)
    x0 = _pick(lg, cfg.temperature, gen)
    logp_all = torch.log_softmax(lg.double(), -1)
    conf = _confidence(logp_all, x0, cfg.confidence, gen)
    logp = logp_all.gather(-1, x0[:, None])[:, 0]
    return x0, logp, _choose(conf, cfg, schedule)


def _choose(conf: torch.Tensor, cfg: DecodeConfig, schedule: list[int]) -> torch.Tensor:
    """The remask commit rule on one block's confidences: indices to commit now."""
    order = torch.argsort(conf, descending=True)
    if cfg.threshold is None:
        k = schedule.pop(0) if schedule else len(order)
        return order[: max(1, min(k, len(order)))]
    keep = conf[order] >= cfg.threshold
    keep[0] = True
    return order[keep]


def _greedy(cfg: DecodeConfig) -> bool:
    """Rows whose proposals need no random numbers and no full distribution: decided for the whole batch in
    two tensor calls instead of one set per row (the same numbers; a row's softmax is its own)."""
    return cfg.commit_rule == "remask" and cfg.temperature <= 0 and cfg.confidence == "low_confidence"


def _propose_sdar(lg: torch.Tensor, cfg: DecodeConfig, schedule: list[int], gen: torch.Generator | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SDAR's rule; p is the probability of the chosen token under softmax(logits / T) (T = 1 when greedy).

    k never exceeds the masks left: the published top-k can pick a non-mask position and overwrite a prompt
    token of a partial first block (tests/test_parity_sdar.py shows it)."""
    x0 = _pick(lg, cfg.temperature, gen)
    logp_all = torch.log_softmax(lg.double() / (cfg.temperature if cfg.temperature > 0 else 1.0), -1)
    logp = logp_all.gather(-1, x0[:, None])[:, 0]
    conf = logp.exp()
    k = min(schedule.pop(0) if schedule else len(conf), len(conf))
    order = torch.argsort(conf, descending=True)
    if cfg.threshold is not None:
        high = (conf > cfg.threshold).nonzero().flatten()
        if len(high) >= k:
            return x0, logp, high
    return x0, logp, order[:k]


def _fixed_schedule(n_masked: int, steps: int) -> list[int]:
    """Split a block's masked count evenly over the steps, remainder first (LLaDA / SDC)."""
    base, rem = divmod(n_masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


class _Row:
    """Decoding state of one row: its canvas ``x`` (prompt, then masks), block pointer, schedule and scores."""

    def __init__(self, prompt: list[int], max_new: int, block: int, align: bool = False) -> None:
        self.prompt = prompt
        self.prompt_len = len(prompt)
        self.limit = len(prompt) + max_new  # canvas end: the last block may be cut short
        if align:  # ``DecodeConfig.align_canvas``: the canvas ends on a block boundary instead
            self.limit = math.ceil(self.limit / block) * block
        self.width = math.ceil(self.limit / block) * block  # block aligned
        self.block_start = (len(prompt) // block) * block
        self.done = False
        self.finish = "length"
        self.commit_pending = False  # the current window is final and needs its commit forward
        self.carry = False  # fused commit: the previous block's clean keys are still to be written
        self.schedule: list[int] = []
        self.logp: dict[int, float] = {}
        self.step_of: dict[int, int] = {}
        self.x = torch.empty(0, dtype=torch.long)  # set by the decoder: width + one block of masks (windows)
        self.cfg: DecodeConfig | None = None
        self.gen: torch.Generator | None = None
        self.reused = 0  # prompt tokens whose keys came from a prompt cache
        self.committed = 0  # tokens committed by the step numbered ``committed_step``
        self.committed_step = -1

    def canvas(self, block: int) -> list[int]:
        """Generated tokens so far, ``mask_id`` where still masked (up to the current block's end)."""
        end = min(self.block_start + block, self.limit)
        return self.x[self.prompt_len: max(end, self.prompt_len)].tolist()


class BlockDecoder:
    """Block-diffusion decoding over rows that join and leave between denoising steps (continuous batching).

    ``add`` prefills new rows into free slots of one KV pool while the others wait; ``step`` runs one batched
    forward over every active row (each at its own block) and returns the rows it finished, which leave the
    batch at once (the last active slot moves into a freed one: one row's keys copied, never the whole cache).
    ``generate`` is this class with every row added up front, so the parity tests against Stable-DiffCoder's
    published code hold for the server's continuous batching too. Rows may carry their own ``DecodeConfig``
    (length, threshold, temperature, stop strings) and generator; the block size is the decoder's.
    """

    def __init__(self, model, cfg: DecodeConfig | None = None, *, tokenizer=None,
                 gen: torch.Generator | None = None) -> None:
        cfg = cfg or DecodeConfig()
        cfg.validate()
        mcfg = remask_config(model)
        if cfg.mode != "diffusion":
            raise ValueError("BlockDecoder decodes diffusion checkpoints; use generate(mode='ar') for AR")
        if mcfg.logit_shift:
            raise ValueError("this checkpoint is autoregressive (logit shift); decode it with mode='ar'")
        self.model, self.cfg, self.mcfg, self.tokenizer = model, cfg, mcfg, tokenizer
        self.B = cfg.block_size or mcfg.block_size
        self.mask_id, self.eos_id = mcfg.mask_token_id, mcfg.eos_token_id
        p = next(model.parameters())
        self.device, self._dtype = p.device, p.dtype
        hf = model.config
        self._heads = hf.num_key_value_heads or hf.num_attention_heads
        self._head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        self.gen = gen if gen is not None else (
            torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None)
        self.rows: list[_Row] = []  # active; row k sits in cache slot k
        self.pool = BlockKVCache(mcfg.num_hidden_layers, 0, 0)
        self.nfe = 0
        self.steps = 0
        self.t0 = time.perf_counter()

    # ---------------------------------------------------------------------------------------------- rows

    @torch.no_grad()
    def add(self, prompts: Sequence[Sequence[int]], cfgs: Sequence[DecodeConfig | None] | None = None, *,
            prompt_caches: Sequence[PromptCache | None] | None = None,
            gens: Sequence[torch.Generator | None] | None = None) -> list[_Row]:
        """Prefill new rows and make them active; returns them in input order.

        A row with a prompt cache reuses the keys of the whole blocks its prompt shares with the cache's last
        prompt and leaves its own there. Identical prompts prefill once; others share a forward when ``_fits``.
        """
        n = len(prompts)
        if n == 0:
            return []
        cfgs = list(cfgs) if cfgs is not None else [None] * n
        pcs = list(prompt_caches) if prompt_caches is not None else [None] * n
        gens = list(gens) if gens is not None else [None] * n
        if not len(cfgs) == len(pcs) == len(gens) == n:
            raise ValueError("prompts, cfgs, prompt_caches and gens differ in length")
        B, ctx = self.B, self.mcfg.max_position_embeddings
        new: list[_Row] = []
        for p, c in zip(prompts, cfgs, strict=True):
            c = c or self.cfg
            if c is not self.cfg:
                c.validate()
                if (c.block_size or self.mcfg.block_size) != B or c.mode != "diffusion":
                    raise ValueError(f"a row's block size must be the decoder's ({B}), its mode diffusion")
            if len(p) == 0:
                raise ValueError("a prompt is empty: start it with at least one token (e.g. bos)")
            r = _Row(list(p), c.max_new_tokens, B, c.align_canvas)
            if r.limit > ctx:
                raise ValueError(f"prompt plus {c.max_new_tokens} new tokens ({r.limit}) exceeds the model "
                                 f"context ({ctx}); shorten the context")
            r.cfg = c
            r.x = torch.full((r.width + B,), self.mask_id, dtype=torch.long)
            r.x[: r.prompt_len] = torch.tensor(r.prompt, dtype=torch.long)
            new.append(r)
        for r, pc, g in zip(new, pcs, gens, strict=True):
            r.gen = g
            if pc is not None and r.block_start > 0:
                r.reused = pc.reusable(self.model, r.prompt[: r.block_start], B)
        base = len(self.rows)
        # Rows that reuse as much and have similar lengths sit in adjacent slots and prefill together.
        order = sorted(range(n), key=lambda k: (new[k].reused, new[k].block_start))
        self.pool.reserve(base + n, max(r.width for r in new) + B, self._heads, self._head_dim, self._dtype,
                          self.device)
        # Rows whose prompts are the same (N candidates of one request) prefill once; the others get a copy.
        first: dict[tuple, int] = {}
        copy_of = {k: first.setdefault((new[k].reused, tuple(new[k].prompt[: new[k].block_start])), k)
                   for k in order}
        todo = [k for k in order if copy_of[k] == k]
        layout = todo + [k for k in order if copy_of[k] != k]  # a prefill group's slots are adjacent
        slot = {k: base + j for j, k in enumerate(layout)}
        # Every load before any prefill or store: two rows may share a cache (an editor's slot, N candidates).
        for k in todo:
            if new[k].reused:
                pcs[k].load_into(self.pool.view(slot[k], slot[k] + 1), new[k].reused)  # type: ignore[union-attr]
        j = 0
        while j < len(todo):
            group = [todo[j]]
            while j + len(group) < len(todo) and self._fits(group, new[todo[j + len(group)]], new):
                group.append(todo[j + len(group)])
            j += len(group)
            a, reused = slot[group[0]], new[group[0]].reused
            pre = max(new[k].block_start for k in group)
            if pre > reused:
                xs = torch.stack([new[k].x[:pre] if len(new[k].x) >= pre else torch.cat(
                    [new[k].x, torch.full((pre - len(new[k].x),), self.mask_id, dtype=torch.long)])
                    for k in group])
                _prefill(self.model, xs, torch.tensor([new[k].block_start for k in group]), reused, pre, B,
                         self.pool.view(a, a + len(group)), self.device)
                self.nfe += 1  # one prefill, however many memory-bounded chunks it took
        for k, src in copy_of.items():
            if src != k and new[k].block_start > 0:
                self.pool.move(slot[src], slot[k])
        stored: set[int] = set()
        for k in range(n):
            pc = pcs[k]
            if pc is not None and new[k].block_start > 0 and id(pc) not in stored:
                stored.add(id(pc))
                pc.store(self.model, new[k].prompt[: new[k].block_start], B, self.pool.view(slot[k], slot[k] + 1))
        for r in new:
            _new_block(r, r.cfg, B, self.mask_id)  # type: ignore[arg-type]
        self.rows.extend(new[k] for k in layout)
        return new

    def _fits(self, group: list[int], r: _Row, new: list[_Row]) -> bool:
        """Whether ``r`` prefills in one forward with ``group``: the same reused prefix, padding every row to the
        longest wastes at most a tenth of the work, and on a CPU the forward stays small. A prefill's cost is its
        padded token count; on a CPU a batch of long prompts is also slower than the same prompts one by one (its
        [rows, L, L] attention scores leave the cache), so there only short prompts share a forward, which saves
        each its fixed cost."""
        g = [new[k] for k in group]
        if r.reused != g[0].reused:
            return False
        width = r.block_start - r.reused
        if self.device.type == "cpu" and (len(g) + 1) * width > CPU_PREFILL_TOKENS:
            return False
        real = sum(q.block_start - q.reused for q in g) + width
        return (len(g) + 1) * width <= 1.1 * max(real, 1)

    def remove(self, rows: Sequence[_Row]) -> None:
        """Take rows out of the batch (finished, or their client went away); their slots are reused."""
        slots = sorted((k for k, r in enumerate(self.rows) if any(r is q for q in rows)), reverse=True)
        for k in slots:  # highest first, so the last active row is never one being removed
            last = len(self.rows) - 1
            if k != last:
                self.pool.move(last, k)
                self.rows[k] = self.rows[last]
            self.rows.pop()

    # --------------------------------------------------------------------------------------------- steps

    @torch.no_grad()
    def step(self) -> list[_Row]:
        """One batched forward over every active row; returns the rows that finished (they have left)."""
        rows = self.rows
        if not rows:
            return []
        B, mask_id, eos_id = self.B, self.mask_id, self.eos_id
        starts = torch.tensor([r.block_start for r in rows])
        if any(r.carry for r in rows):
            # Fused commit: the window also holds the previous block, whose clean keys get written now.
            ws = (starts - B).clamp_min(0)
            win_pos = ws[:, None] + torch.arange(2 * B)[None]
            offset = starts - ws
        else:
            win_pos = starts[:, None] + torch.arange(B)[None]
            offset = torch.zeros_like(starts)
        full_ids = torch.stack([r.x[w] for r, w in zip(rows, win_pos, strict=True)])
        kv_len = int(win_pos.max()) + 1
        key_pos = torch.arange(kv_len)[None]
        limits = torch.tensor([r.limit for r in rows])[:, None]
        # Positions past a row's canvas end do not exist: no query sees them (a cut last block is shorter).
        allowed = block_causal_mask(win_pos, key_pos, B) & (key_pos < limits)[:, None, :]
        allowed |= win_pos[:, :, None] == key_pos[:, None, :]  # a padded query sees itself (no NaN)
        sel = offset[:, None] + torch.arange(B)[None]  # the current block inside the window
        d = self.device
        logits = forward_logits(self.model, full_ids.to(d), win_pos.to(d), allowed.to(d),
                                cache=self.pool.view(0, len(rows)), kv_len=kv_len, keep=sel.to(d)).float()
        win_ids = torch.gather(full_ids, 1, sel)
        self.nfe += 1
        self.steps += 1
        step = self.steps
        logits[..., mask_id] = float("-inf")
        fast = [j for j, r in enumerate(rows) if _greedy(r.cfg)]  # type: ignore[arg-type]
        where: dict[int, int] = {}
        if fast:
            lg = logits[fast]
            g_x0 = lg.argmax(-1)
            g_logp = torch.log_softmax(lg.double(), -1).gather(-1, g_x0[..., None])[..., 0]
            where = {j: k for k, j in enumerate(fast)}
        finished = []
        for j, r in enumerate(rows):
            cfg = r.cfg
            assert cfg is not None
            r.carry = False
            if r.commit_pending:  # this forward was the row's commit pass
                r.commit_pending = False
                r.block_start += B
                if r.block_start >= r.limit:
                    r.done, r.finish = True, "length"
                    finished.append(r)
                else:
                    _new_block(r, cfg, B, mask_id)
                continue
            block_end = min(r.block_start + B, r.limit)
            masked = (win_ids[j, : block_end - r.block_start] == mask_id).nonzero().flatten()
            if masked.numel() == 0:
                continue
            if j in where:
                x0, logp = g_x0[where[j], masked], g_logp[where[j], masked]
                chosen = _choose(logp.exp(), cfg, r.schedule)
            else:
                x0, logp, chosen = propose(logits[j, masked], cfg, r.schedule,
                                           r.gen if r.gen is not None else self.gen)
            for c in chosen.tolist():
                p = int(r.block_start + masked[c])
                r.x[p] = int(x0[c])
                r.logp[p] = float(logp[c])
                r.step_of[p] = step
            r.committed, r.committed_step = len(chosen), step
            window = r.x[r.block_start: block_end]
            gen_from = max(r.block_start, r.prompt_len)
            if cfg.stop_at_eos and cfg.eos_fill:
                _fill_after_eos(r.x[gen_from: block_end], eos_id, mask_id)
            if (window == mask_id).any():
                continue
            # Block finished: EOS (generated part only), stop strings, length, or commit and go on.
            if cfg.stop_at_eos and (r.x[gen_from: block_end] == eos_id).any():
                r.done, r.finish = True, "eos"
            elif cfg.stop_strings and self.tokenizer is not None and _hit_stop(
                    self.tokenizer, r.x[r.prompt_len: block_end], cfg.stop_strings):
                r.done, r.finish = True, "stop"
            elif block_end >= r.limit:
                r.done, r.finish = True, "length"
            elif self.cfg.fuse_commit:
                r.block_start += B
                r.carry = True
                _new_block(r, cfg, B, mask_id)
            else:
                r.commit_pending = True
            if r.done:
                finished.append(r)
        if finished:
            self.remove(finished)
        return finished

    def result(self, rows: Sequence[_Row]) -> DecodeResult:
        """Tokens, scores and finish reasons of ``rows`` (finished or not) as a ``DecodeResult``."""
        return _result(list(rows), self.tokenizer, self.eos_id, self.mask_id, self.nfe, self.steps,
                       time.perf_counter() - self.t0)


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], cfg: DecodeConfig | None = None, *,
             tokenizer=None, callback: Callable[[StepEvent], None] | None = None,
             cancel: Callable[[], bool] | None = None, prompt_cache: PromptCache | None = None) -> DecodeResult:
    """Generate continuations of each prompt. ``prompts`` are lists of token ids (lengths may differ).

    ``prompt_cache`` (diffusion mode, all prompts equal, e.g. one request or N candidates of it): reuse the
    keys of the whole blocks this prompt shares with the previous one, and keep this prompt's for the next.
    """
    cfg = cfg or DecodeConfig()
    cfg.validate()
    if not prompts:
        raise ValueError("no prompts")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt is empty: start it with at least one token (e.g. bos)")
    if cfg.mode == "ar":
        return _generate_ar(model, prompts, cfg, tokenizer, callback, cancel)
    dec = BlockDecoder(model, cfg, tokenizer=tokenizer)
    same = prompt_cache is not None and all(list(p) == list(prompts[0]) for p in prompts[1:])
    rows = dec.add(prompts, prompt_caches=[prompt_cache] * len(prompts) if same else None)
    while dec.rows:
        if cancel is not None and cancel():
            raise DecodeCancelled()
        dec.step()
        if callback is not None:
            s = dec.steps
            callback(StepEvent(step=s, nfe=dec.nfe, rows=[r.canvas(dec.B) for r in rows],
                               committed=[r.committed if r.committed_step == s else 0 for r in rows],
                               done=[r.done for r in rows], mask_id=dec.mask_id,
                               elapsed_s=time.perf_counter() - dec.t0))
    res = dec.result(rows)
    res.extra["prompt_tokens_reused"] = rows[0].reused
    return res


def _new_block(r: _Row, cfg: DecodeConfig, B: int, mask_id: int) -> None:
    n_masked = int((r.x[r.block_start: min(r.block_start + B, r.limit)] == mask_id).sum())
    steps = cfg.steps_per_block or B
    if cfg.commit_rule == "sdar":  # from the block length, not the masks left (SDAR's get_num_transfer_tokens)
        r.schedule = _fixed_schedule(B, steps)
        return
    r.schedule = [k for k in _fixed_schedule(n_masked, steps) if k > 0]


def _fill_after_eos(gen: torch.Tensor, eos_id: int, mask_id: int) -> None:
    """The ``eos_fill`` option: the masks after the first committed EOS of a block become EOS, in place."""
    eos_pos = (gen == eos_id).nonzero().flatten()
    if eos_pos.numel():
        tail = gen[int(eos_pos[0]):]
        tail[tail == mask_id] = eos_id


def _hit_stop(tokenizer, ids: torch.Tensor, stops: tuple[str, ...]) -> bool:
    text = tokenizer.decode(ids.tolist())
    return any(s in text for s in stops)


def _result(rows: list[_Row], tokenizer, eos_id, mask_id, nfe, steps, elapsed) -> DecodeResult:
    toks, lps, sts, fin, texts = [], [], [], [], []
    for r in rows:
        cfg = r.cfg
        assert cfg is not None
        seq = r.x[r.prompt_len: r.limit].tolist()
        if mask_id in seq:  # a row that stopped early (stop string) leaves masks after its last block
            seq = seq[: seq.index(mask_id)]
        if cfg.stop_at_eos and eos_id in seq:
            seq = seq[: seq.index(eos_id)]
            r.finish = "eos"
        positions = range(r.prompt_len, r.prompt_len + len(seq))
        text = None
        if tokenizer is not None:
            text = tokenizer.decode(seq)
            for s in cfg.stop_strings:
                if s in text:
                    text = text[: text.index(s)]
                    r.finish = "stop"
        toks.append(seq)
        lps.append([r.logp.get(p, 0.0) for p in positions])
        sts.append([r.step_of.get(p, 0) for p in positions])
        fin.append(r.finish)
        texts.append(text)
    return DecodeResult(tokens=toks, logprobs=lps, commit_steps=sts, finish=fin, nfe=nfe, steps=steps,
                        elapsed_s=elapsed, texts=texts if tokenizer is not None else None)


@torch.no_grad()
def _generate_ar(model, prompts, cfg: DecodeConfig, tokenizer, callback, cancel) -> DecodeResult:
    """One token per forward on the same weights: the baseline for every speed figure.

    A shifted (AR-trained) model predicts the next token from the last one; a no-shift (diffusion) model
    predicts a mask placed after the last token, its window [last, MASK] under a causal mask, which is
    block diffusion with B = 1 and the commit forward merged into the next step.
    """
    mcfg = remask_config(model)
    shift = mcfg.logit_shift
    mask_id, eos_id = mcfg.mask_token_id, mcfg.eos_token_id
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    t0 = time.perf_counter()
    n = len(prompts)
    lens = [len(p) for p in prompts]
    cap = max(lens) + cfg.max_new_tokens + 1
    if cap > mcfg.max_position_embeddings:
        raise ValueError(f"prompt plus {cfg.max_new_tokens} new tokens exceeds the model context "
                         f"({mcfg.max_position_embeddings}); shorten the context")
    x = torch.full((n, cap), mask_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        x[i, : lens[i]] = torch.tensor(list(p))
    rows = [_Row(list(p), cfg.max_new_tokens, 1) for p in prompts]
    for i, r in enumerate(rows):
        r.x, r.cfg = x[i], cfg
    cache = BlockKVCache(mcfg.num_hidden_layers, n, cap)
    nfe = 0
    pre = max(lens) - 1  # every row's prompt except its last token
    if pre > 0:
        _prefill(model, x, torch.tensor([L - 1 for L in lens]), 0, pre, 1, cache, device)
        nfe += 1
    cur = torch.tensor([L for L in lens])  # position of the next token to produce, per row
    active = list(range(n))
    step = 0
    W = 1 if shift else 2
    while active:
        if cancel is not None and cancel():
            raise DecodeCancelled()
        c = cur[active]
        win_pos = c[:, None] - 1 + torch.arange(W)[None]
        win_ids = torch.gather(x[active], 1, win_pos)
        kv_len = int(win_pos.max()) + 1
        allowed = torch.arange(kv_len)[None, None, :] <= win_pos[:, :, None]
        logits = forward_logits(model, win_ids.to(device), win_pos.to(device), allowed.to(device), cache=cache,
                                kv_len=kv_len, keep=slice(W - 1, W)).float()[:, 0]
        nfe += 1
        step += 1
        logits[:, mask_id] = float("-inf")
        tok = _pick(logits, cfg.temperature, gen)
        logp = torch.log_softmax(logits.double(), -1).gather(-1, tok[:, None])[:, 0]
        committed = [0] * n
        keep_rows = []
        for j, i in enumerate(active):
            p = int(cur[i])
            x[i, p] = int(tok[j])
            rows[i].logp[p] = float(logp[j])
            rows[i].step_of[p] = step
            committed[i] = 1
            cur[i] += 1
            r = rows[i]
            if cfg.stop_at_eos and int(tok[j]) == eos_id:
                r.done, r.finish = True, "eos"
            elif cfg.stop_strings and tokenizer is not None and _hit_stop(tokenizer, x[i, r.prompt_len: p + 1],
                                                                          cfg.stop_strings):
                r.done, r.finish = True, "stop"
            elif p + 1 >= r.limit:
                r.done, r.finish = True, "length"
            else:
                keep_rows.append(j)
        if callback is not None:
            callback(StepEvent(step=step, nfe=nfe, rows=[x[i, rows[i].prompt_len: int(cur[i])].tolist()
                                                          for i in range(n)],
                               committed=committed, done=[r.done for r in rows], mask_id=mask_id,
                               elapsed_s=time.perf_counter() - t0))
        if len(keep_rows) < len(active):
            active = [active[j] for j in keep_rows]
            if active:
                cache.select_rows(torch.tensor(keep_rows, device=device))
    return _result(rows, tokenizer, eos_id, mask_id, nfe, step, time.perf_counter() - t0)


@torch.no_grad()
def reference_generate(model, prompt: Sequence[int], cfg: DecodeConfig) -> list[int]:
    """Uncached, batch-1 decoding: every step forwards the whole canvas under the block-causal mask.

    Slow and simple; the tests hold the cached decoder to it token for token.
    """
    mcfg = remask_config(model)
    B = cfg.block_size or mcfg.block_size
    mask_id, eos_id = mcfg.mask_token_id, mcfg.eos_token_id
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    r = _Row(list(prompt), cfg.max_new_tokens, B, cfg.align_canvas)
    x = torch.full((1, r.limit), mask_id, dtype=torch.long)
    x[0, : r.prompt_len] = torch.tensor(list(prompt))
    r.x = x[0]
    _new_block(r, cfg, B, mask_id)
    device = next(model.parameters()).device
    while True:
        end = min(r.block_start + B, r.limit)
        pos = torch.arange(end)
        allowed = (pos[None, :] // B <= pos[:, None] // B)[None]
        logits = forward_logits(model, x[:, :end].to(device), pos[None].to(device), allowed.to(device)).float()
        logits = logits[0, r.block_start:end]
        logits[:, mask_id] = float("-inf")
        win = x[0, r.block_start:end]
        masked = (win == mask_id).nonzero().flatten()
        x0, _, chosen = propose(logits[masked], cfg, r.schedule, gen)
        for c in chosen.tolist():
            x[0, r.block_start + int(masked[c])] = int(x0[c])
        gen_from = max(r.block_start, r.prompt_len)
        if cfg.stop_at_eos and cfg.eos_fill:
            _fill_after_eos(x[0, gen_from:end], eos_id, mask_id)
        if (x[0, r.block_start:end] == mask_id).any():
            continue
        if cfg.stop_at_eos and (x[0, gen_from:end] == eos_id).any():
            break
        if end >= r.limit:
            break
        r.block_start += B
        _new_block(r, cfg, B, mask_id)
    seq = x[0, r.prompt_len: r.limit].tolist()
    if cfg.stop_at_eos and eos_id in seq:
        seq = seq[: seq.index(eos_id)]
    return seq
