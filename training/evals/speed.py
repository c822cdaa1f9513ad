"""Speed: block diffusion against AR decoding of the same weights, in the same run, one task at a time.

Per task and mode: generated tokens, forwards (NFE), tokens per forward, wall latency and tokens/s.
Batch size 1 so that latency is what an editor user waits for; a warm-up call per mode first.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable

from .common import generate_batched


def _stats(rows: list[dict]) -> dict:
    toks = sum(r["tokens"] for r in rows)
    secs = sum(r["latency_s"] for r in rows)
    lat = sorted(r["latency_s"] for r in rows)
    return {"tasks": len(rows), "tokens": toks, "forwards": sum(r["nfe"] for r in rows),
            "tokens_per_forward": toks / max(sum(r["nfe"] for r in rows), 1),
            "tokens_per_s": toks / max(secs, 1e-9), "latency_mean_s": secs / max(len(rows), 1),
            "latency_median_s": statistics.median(lat) if lat else None,
            "latency_p90_s": lat[min(len(lat) - 1, int(0.9 * len(lat)))] if lat else None}


def measure(model, tok, prompts: list[list[int]], task_ids: list[str], dc,
            progress: Callable[[int], None] | None = None) -> tuple[list[dict], dict]:
    """Decode every prompt with ``dc`` (diffusion) and with ``mode="ar"``; returns (records, summary)."""
    modes = {"diffusion": dataclasses.replace(dc, mode="diffusion"), "ar": dataclasses.replace(dc, mode="ar")}
    for cfg in modes.values():  # warm-up: first calls pay for allocation and kernel selection
        generate_batched(model, tok, prompts[:1], dataclasses.replace(cfg, max_new_tokens=8), batch_size=1)
    records = []
    for tid, p in zip(task_ids, prompts, strict=True):
        for mode, cfg in modes.items():  # alternate modes so drifting machine load hits both alike
            g = generate_batched(model, tok, [p], cfg, batch_size=1)[0]
            records.append({"task_id": tid, "mode": mode, "tokens": g.tokens, "nfe": g.nfe,
                            "tokens_per_forward": round(g.tokens_per_forward, 4), "latency_s": round(g.elapsed_s, 5),
                            "tokens_per_s": round(g.tokens / max(g.elapsed_s, 1e-9), 2), "finish": g.finish,
                            "prompt_tokens": g.prompt_tokens})
        if progress:
            progress(1)
    summary = {m: _stats([r for r in records if r["mode"] == m]) for m in modes}
    d, a = summary["diffusion"], summary["ar"]
    summary["speedup_tokens_per_s"] = d["tokens_per_s"] / max(a["tokens_per_s"], 1e-9)
    summary["forward_reduction"] = d["tokens_per_forward"] / max(a["tokens_per_forward"], 1e-9)
    summary["threshold"] = dc.threshold
    summary["steps_per_block"] = dc.steps_per_block
    return records, summary
