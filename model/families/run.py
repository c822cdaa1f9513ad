"""What the engine and the CLI call to decode with any family: the family decides the loop and the layout.

Block families (remask, Stable-DiffCoder, SDAR) go through ``model.decoder.generate`` with the family's commit
rule. Full-attention families fill a hole in place: Dream (fixed canvas) decodes several middle lengths in one
batch, each ``prefix + masks + suffix``, cuts each answer at its first EOS and keeps the best-scored per hole;
DreamOn grows and shrinks one middle per hole with its expand/delete loop. Results are ``DecodeResult`` objects
either way, so ranking, scoring and the front ends need no family test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import family_of


def block_options(model: Any) -> dict[str, Any]:
    """DecodeConfig fields a block family sets (its commit rule, where its canvas ends)."""
    fam = family_of(model)
    return {"commit_rule": fam.commit_rule, "align_canvas": fam.align_canvas}


def fill_lengths(max_new_tokens: int, hint: int | None = None) -> list[int]:
    """Canvas lengths a fixed-canvas family tries for one hole: the hint (a span's own length) alone, else a
    spread up to ``max_new_tokens`` (short answers are the common case in an editor)."""
    if hint is not None:
        return [max(1, hint)]
    return sorted({max(1, max_new_tokens // 4), max(1, max_new_tokens // 2), max_new_tokens})


def infill_generate(model, jobs: Sequence[tuple[Sequence[int], Sequence[int]]], *, max_new_tokens: int,
                    hints: Sequence[int | None] | None = None, steps: int | None = None, temperature: float = 0.0,
                    seed: int | None = 0, stop_ids: Sequence[int] = (), callback: Callable | None = None,
                    cancel: Callable[[], bool] | None = None, cache: str = "none", refresh: int = 8):
    """Fill each ``(prefix ids, suffix ids)`` hole with a full-attention family; returns a ``DecodeResult``.

    ``cache="dual"`` is the approximate dual-cache mode (``DreamConfig.cache``; a full forward every ``refresh``
    steps, for DreamOn also after every length change); the default is the exact mode. The result's
    ``extra['full_forwards']`` counts the forwards over whole canvases."""
    from ..decoder import DecodeResult, StepEvent
    from ..network import remask_config
    from .dream_decode import DreamConfig, dream_canvas_generate, dreamon_infill

    fam = family_of(model)
    cfg = remask_config(model)
    if fam.attention != "full":
        raise ValueError(f"{fam.title} is not a full-attention family: use model.decoder.generate")
    hints = list(hints) if hints is not None else [None] * len(jobs)
    stops = {cfg.eos_token_id, *stop_ids}
    if cfg.extra.get("dlm_pad_id") is not None:
        stops.add(int(cfg.extra["dlm_pad_id"]))
    toks: list[list[int]] = []
    lps: list[list[float]] = []
    fin: list[str] = []
    nfe = n_full = 0
    elapsed = 0.0
    if fam.can("expand_delete"):
        for j, ((prefix, suffix), hint) in enumerate(zip(jobs, hints, strict=True)):
            lo = max(1, hint or 4)
            hi = max(lo, max_new_tokens)
            head = [] if list(prefix[:1]) == [cfg.bos_token_id] else [cfg.bos_token_id]

            def step_cb(step: int, middle: list[int], j=j, nfe0=nfe, el0=elapsed) -> None:
                if callback is not None:
                    rows = [toks[i] if i < j else (middle if i == j else []) for i in range(len(jobs))]
                    callback(StepEvent(step=step + 1, nfe=nfe0 + step + 1, rows=rows,
                                       committed=[1 if i == j else 0 for i in range(len(jobs))],
                                       done=[i < j for i in range(len(jobs))], mask_id=cfg.mask_token_id,
                                       elapsed_s=el0))

            res = dreamon_infill(model, head + list(prefix), list(suffix),
                                 DreamConfig(min_gen_len=lo, max_gen_len=hi, steps=steps or 2 * hi + lo,
                                             temperature=temperature, seed=seed, top_k=None, alg="entropy",
                                             cache=cache, refresh=refresh),
                                 callback=step_cb, cancel=cancel)
            nfe += res.nfe
            n_full += res.extra["full_forwards"]
            elapsed += res.elapsed_s
            mid = res.generated[0]
            cut = next((i for i, t in enumerate(mid) if t in stops), None)
            toks.append(mid[:cut] if cut is not None else mid)
            lps.append(res.logprobs[0][: len(toks[-1])])
            fin.append("eos" if cut is not None else "length")
        return DecodeResult(tokens=toks, logprobs=lps, commit_steps=[[0] * len(t) for t in toks], finish=fin,
                            nfe=nfe, steps=nfe, elapsed_s=elapsed,
                            extra={"family": fam.name, "full_forwards": n_full})
    rows: list[tuple[int, int, int]] = []  # (job, canvas length n, prefix length)
    canvases: list[list[int]] = []
    for j, ((prefix, suffix), hint) in enumerate(zip(jobs, hints, strict=True)):
        for n in fill_lengths(max_new_tokens, hint):
            rows.append((j, n, len(prefix)))
            canvases.append(list(prefix) + [cfg.mask_token_id] * n + list(suffix))
    longest = max(n for _, n, _ in rows)

    def on_step(step: int, x) -> None:
        if callback is None:
            return
        best_rows = []
        for j in range(len(jobs)):
            i = next(i for i, r in enumerate(rows) if r[0] == j)
            _, n, p = rows[i]
            w = x.shape[1]
            best_rows.append(x[i, w - len(canvases[i]) + p: w - len(canvases[i]) + p + n].tolist())
        callback(StepEvent(step=step + 1, nfe=step + 1, rows=best_rows, committed=[0] * len(jobs),
                           done=[False] * len(jobs), mask_id=cfg.mask_token_id, elapsed_s=0.0))

    res = dream_canvas_generate(model, canvases, DreamConfig(steps=steps or longest, temperature=temperature,
                                                             seed=seed, top_k=None, alg="entropy", cache=cache,
                                                             refresh=refresh),
                                callback=on_step, cancel=cancel)
    best: dict[int, tuple[float, list[int], list[float], str]] = {}
    for i, (j, n, p) in enumerate(rows):
        mid = res.sequences[i][p: p + n]
        lp = res.logprobs[i][p: p + n]
        cut = next((k for k, t in enumerate(mid) if t in stops), None)
        keep = mid[:cut] if cut is not None else mid
        score = sum(lp[: len(keep)]) / len(keep) if keep else float("-inf")
        if j not in best or score > best[j][0]:
            best[j] = (score, keep, lp[: len(keep)], "eos" if cut is not None else "length")
    for j in range(len(jobs)):
        _, keep, lp, f = best[j]
        toks.append(keep)
        lps.append(lp)
        fin.append(f)
    return DecodeResult(tokens=toks, logprobs=lps, commit_steps=[[0] * len(t) for t in toks], finish=fin,
                        nfe=res.nfe, steps=res.nfe, elapsed_s=res.elapsed_s,
                        extra={"family": fam.name, "canvas_lengths": sorted({n for _, n, _ in rows}),
                               "full_forwards": res.extra["full_forwards"]})


# DecodeConfig.confidence -> the Dream family's alg of the same rule.
DREAM_ALG = {"low_confidence": "maskgit_plus", "margin": "topk_margin", "entropy": "entropy", "random": "origin"}


def family_generate(model, prompts: Sequence[Sequence[int]], cfg, *, tokenizer=None, callback=None, cancel=None):
    """Continue each prompt with the model's own family loop (``remask generate``); returns a ``DecodeResult``.

    Block families: ``model.decoder.generate`` with the family's commit rule. Dream: ``diffusion_generate`` with
    ``max_new_tokens`` masks after the prompt (steps: ``steps_per_block`` or one per token), cut at EOS. DreamOn:
    its expand/delete loop with an empty suffix (the middle grows up to ``max_new_tokens``)."""
    from dataclasses import replace

    from ..decoder import DecodeResult, generate
    from ..network import remask_config
    from .dream_decode import DreamConfig, dream_generate

    fam = family_of(model)
    if fam.attention != "full":
        return generate(model, prompts, replace(cfg, **block_options(model)), tokenizer=tokenizer,
                        callback=callback, cancel=cancel)
    mcfg = remask_config(model)
    if fam.can("expand_delete"):
        res = infill_generate(model, [(p, []) for p in prompts], max_new_tokens=cfg.max_new_tokens,
                              steps=cfg.steps_per_block, temperature=cfg.temperature, seed=cfg.seed, cancel=cancel)
    else:
        out = dream_generate(model, prompts, DreamConfig(
            max_new_tokens=cfg.max_new_tokens, steps=cfg.steps_per_block or cfg.max_new_tokens,
            alg=DREAM_ALG[cfg.confidence], temperature=cfg.temperature, seed=cfg.seed), cancel=cancel)
        toks, lps, fin = [], [], []
        for g, lp in zip(out.generated, out.logprobs, strict=True):
            cut = g.index(mcfg.eos_token_id) if cfg.stop_at_eos and mcfg.eos_token_id in g else None
            toks.append(g[:cut] if cut is not None else g)
            lps.append(lp[: len(toks[-1])])
            fin.append("eos" if cut is not None else "length")
        res = DecodeResult(tokens=toks, logprobs=lps, commit_steps=[[0] * len(t) for t in toks], finish=fin,
                           nfe=out.nfe, steps=out.nfe, elapsed_s=out.elapsed_s, extra={"family": fam.name})
    if tokenizer is not None:
        res.texts = [tokenizer.decode(t) for t in res.tokens]
    return res
