"""Summary tables (Markdown) and the quality / tokens-per-forward plot (PNG)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import markdown_table, write_atomic


def header(title: str, info: dict) -> str:
    lines = [f"# {title}", ""]
    for k, v in info.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        lines.append(f"- **{k}**: {v}")
    return "\n".join(lines) + "\n\n"


def write_summary(out: Path, title: str, info: dict, table: str, data: dict) -> None:
    write_atomic(out / "summary.md", header(title, info) + table)
    write_atomic(out / "summary.json", json.dumps(data, indent=2, default=str) + "\n")


def plot_sweep(points: list[dict], path: Path, metric: str = "pass@1", title: str = "") -> None:
    """Quality against tokens per forward, one point per threshold tau, the AR baseline marked apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    diff = sorted((p for p in points if p["mode"] == "diffusion"), key=lambda p: p["tokens_per_forward"])
    if diff:
        ax.plot([p["tokens_per_forward"] for p in diff], [100 * (p[metric] or 0) for p in diff], "o-",
                color="tab:blue", label="block diffusion")
        for p in diff:
            ax.annotate(f"τ={p['threshold']:g}" if p.get("threshold") is not None else f"steps={p.get('steps')}",
                        (p["tokens_per_forward"], 100 * (p[metric] or 0)), textcoords="offset points",
                        xytext=(4, 6), fontsize=8)
    for p in points:
        if p["mode"] == "ar":
            ax.plot([p["tokens_per_forward"]], [100 * (p[metric] or 0)], "s", color="tab:red",
                    label="AR (same weights)")
    top = max([100 * (p[metric] or 0) for p in points] + [1.0])
    ax.set_ylim(0, min(100, top * 1.15 + 1))
    ax.set_xlabel("tokens per forward")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or f"{metric} against decoding parallelism", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def results_table(rows: list[dict], ks: list[int]) -> str:
    heads = ["split", "mode", "tau", "tasks", "samples"] + [f"pass@{k}" for k in ks] + \
        ["tokens/forward", "tokens/s", "generate s", "statuses"]
    body = []
    for r in rows:
        body.append([r.get("split"), r.get("mode"), r.get("threshold"), r.get("tasks"), r.get("samples")]
                    + [_pct(r.get(f"pass@{k}")) for k in ks]
                    + [r.get("tokens_per_forward"), r.get("tokens_per_s"), r.get("generate_s"),
                       ", ".join(f"{a} {b}" for a, b in (r.get("statuses") or {}).items())])
    return markdown_table(heads, body)


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.1f}%"
