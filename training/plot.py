"""Training curves as a PNG: loss (and validation), gradient norm, learning rate, mask-ratio cap.

    python -m training.plot RUN_DIR [--out curves.png]

``RUN_DIR`` is a pipeline folder (its ``ar/``, ``bd/``, ``sft/`` metrics are drawn one after another on
a shared step axis) or one stage folder holding ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _read(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def stage_metrics(run: Path) -> list[tuple[str, list[dict]]]:
    if (run / "metrics.jsonl").is_file():
        return [(run.name, _read(run / "metrics.jsonl"))]
    found = [(s, _read(run / s / "metrics.jsonl")) for s in ("ar", "bd", "sft")
             if (run / s / "metrics.jsonl").is_file()]
    if not found:
        raise FileNotFoundError(f"no metrics.jsonl in {run} or its ar/, bd/, sft/ folders")
    return found


def plot(run: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    stages = stage_metrics(run)
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    offset = 0
    for name, recs in stages:
        val = [(offset + r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
        elbo = [(offset + r["step"], r["val_elbo"]) for r in recs if "val_elbo" in r]
        recs = [r for r in recs if "loss" in r]  # validation-only records (step 0) have no training loss
        if not recs:
            continue
        steps = [offset + r["step"] for r in recs]
        axes[0].plot(steps, [r["loss"] for r in recs], label=f"{name} loss")
        if any("masked_ce" in r for r in recs):
            axes[0].plot(steps, [r.get("masked_ce") for r in recs], label=f"{name} masked CE", alpha=0.6)
        if val:
            axes[0].plot(*zip(*val, strict=True), "o-", label=f"{name} val loss")
        if elbo:
            axes[0].plot(*zip(*elbo, strict=True), "s--", label=f"{name} val BD ELBO")
        axes[1].plot(steps, [r["grad_norm"] for r in recs], label=name)
        axes[2].plot(steps, [r["lr"] for r in recs], label=name)
        if any("mask_cap" in r for r in recs):
            axes[3].plot(steps, [r.get("mask_cap", 1.0) for r in recs], label=f"{name} cap")
            axes[3].plot(steps, [r.get("weighted", 0.0) for r in recs], ":", label=f"{name} 1/t weight on")
        offset = steps[-1]
        for ax in axes:
            ax.axvline(offset, color="grey", lw=0.5)
    for ax, title in zip(axes, ("loss", "gradient norm", "learning rate", "mask-ratio cap (BD warmup)"),
                         strict=True):
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[-1].set_xlabel("step (stages laid end to end)")
    fig.tight_layout()
    out = Path(out) if out else run / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="pipeline folder or stage folder")
    p.add_argument("--out", default=None, help="PNG path (default RUN/curves.png)")
    a = p.parse_args(argv)
    try:
        print(plot(a.run, a.out))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
