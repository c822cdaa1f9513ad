"""The report's central claim at our scale: from one AR checkpoint, is block-diffusion CPT worth its compute?

    remask train experiment --init-from RUN/ar/checkpoint --corpus RUN/corpus --out RUN/experiment --steps N
        [--config FILE] [--no-warmup-arm] [--limit 200] [--thresholds 0.7,0.8,0.9,0.95] [--exact-files DIR ...]

Same data, architecture, batch and number of optimizer steps (so the same number of x_0 tokens) after the
shared AR stage:

- (a) AR continued for N steps, decoded autoregressively;
- (b) block-diffusion CPT for N steps (the config's block, warmup and clipped schedule), decoded at each
  threshold tau;
- (c) with ``--no-warmup-arm``: (b) without the warmup, for the gradient-norm spike the report describes
  (evaluated at one threshold: 0.9 when it is among ``--thresholds``).

Each arm is an ordinary training stage folder (``a/``, ``b/``, ``c/``), so a killed experiment resumes and a
finished arm is skipped. Then HumanEval-Infilling pass@1 on each ``--splits`` (a seeded subset of ``--limit``
tasks), exact match on held-out files when ``--exact-files`` are given, tokens per forward and tokens/s; the
table goes to ``experiment.md`` (+ ``experiment.json``) and the gradient norms of the BD arms to
``grad_norm.png``. Whatever the outcome, the table says it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .config import TrainConfig
from .pipeline import _log
from .trainer import Trainer, read_metrics

ARMS = {"a": ("ar", "AR continued"), "b": ("bd", "BD CPT"), "c": ("bd", "BD CPT, no warmup")}


def train_arms(cfg: TrainConfig, corpus: Path, init_from: Path, out: Path, steps: int, no_warmup_arm: bool,
               log=_log) -> dict[str, Path]:
    """Run the arms from the same checkpoint for the same steps; returns arm -> checkpoint folder."""
    ckpts = {}
    for arm in ("a", "b", "c") if no_warmup_arm else ("a", "b"):
        stage = ARMS[arm][0]
        c = dataclasses.replace(cfg, bd_warmup_steps=0) if arm == "c" else cfg
        log(f"experiment: arm ({arm}) {ARMS[arm][1]}, {steps} steps")
        ckpts[arm] = Trainer(c, stage, out / arm, corpus, init_from=init_from, max_steps=steps,
                             time_limit_min=0, log=log).run()
    return ckpts


def evaluate_arms(ckpts: dict[str, Path], *, splits: list[str], thresholds: list[float], limit: int | None,
                  seed: int, exact_files: list[str], device: str, batch_size: int, data: str | None,
                  log=_log) -> list[dict]:
    """One row per (arm, decoding): pass@1 per split, exact match, tokens per forward and tokens/s."""
    from model.decoder import DecodeConfig

    from .evals.common import load_model
    from .evals.humaneval import MAX_NEW_TOKENS, evaluate
    from .evals.sandbox import Sandbox

    sandbox = Sandbox()
    rows = []
    for arm, ckpt in ckpts.items():
        model, tok, _ = load_model(str(ckpt), device)
        if arm == "a":
            settings = [("ar", None)]
        elif arm == "b":
            settings = [("diffusion", t) for t in thresholds]
        else:  # (c) is there for its gradient norms: one threshold is enough to see what the spike cost
            settings = [("diffusion", 0.9 if 0.9 in thresholds else thresholds[-1])]
        for mode, tau in settings:
            row: dict = {"arm": arm, "what": ARMS[arm][1], "mode": mode, "threshold": tau}
            toks = nfe = 0
            gen_s = 0.0
            for split in splits:
                dc = DecodeConfig(max_new_tokens=MAX_NEW_TOKENS[split], mode=mode, threshold=tau,
                                  stop_strings=("\n",) if split == "single-line" else ())
                log(f"experiment: eval ({arm}) {mode} tau={tau} {split}")
                res = evaluate(split, model=model, tok=tok, dc=dc, limit=limit, seed=seed, batch_size=batch_size,
                               sandbox=sandbox, data=data)
                row[f"{split} pass@1"] = res.summary["pass@1"]
                row[f"{split} tasks"] = res.summary["tasks"]
                toks += sum(r["tokens"] for r in res.records)
                nfe += sum(r["nfe"] for r in res.records)
                gen_s += res.summary["generate_s"]
            if exact_files:
                row.update(_exact_match(model, tok, exact_files, mode, tau, seed, batch_size))
            row["tokens_per_forward"] = toks / max(nfe, 1)
            row["tokens_per_s"] = toks / max(gen_s, 1e-9)
            rows.append(row)
    return rows


def _exact_match(model, tok, files: list[str], mode: str, tau: float | None, seed: int, batch: int) -> dict:
    from model.decoder import DecodeConfig

    from .evals.spans import collect_files
    from .evals.spans import evaluate as span_eval

    dc = DecodeConfig(max_new_tokens=128, mode=mode, threshold=tau)
    paths = [f for spec in files for f in collect_files(spec)]
    records, _ = span_eval(paths, model, tok, dc, per_kind=50, seed=seed, batch_size=batch)
    return {"held-out exact match": sum(r["exact_match"] for r in records) / max(len(records), 1)}


def plot_grad_norms(out: Path, arms: list[str]) -> Path | None:
    """Gradient norm per step of the BD arms (and the AR arm for scale) in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    drawn = False
    for arm in arms:
        path = out / arm / "metrics.jsonl"
        if not path.is_file():
            continue
        recs = [r for r in read_metrics(path) if "grad_norm" in r]
        ax.plot([r["step"] for r in recs], [r["grad_norm"] for r in recs], label=f"({arm}) {ARMS[arm][1]}")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step after the shared AR stage")
    ax.set_ylabel("gradient norm (before clipping)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    png = out / "grad_norm.png"
    fig.savefig(png)
    plt.close(fig)
    return png


def report(out: Path, rows: list[dict], info: dict) -> Path:
    from .evals.common import markdown_table, write_atomic

    keys = [k for k in rows[0] if k.endswith("pass@1") or k == "held-out exact match"] if rows else []
    table = markdown_table(
        ["arm", "decoding", *keys, "tokens/forward", "tokens/s"],
        [[f"({r['arm']}) {r['what']}", "AR" if r["mode"] == "ar" else f"tau {r['threshold']:g}",
          *(f"{100 * r[k]:.1f}%" for k in keys), f"{r['tokens_per_forward']:.2f}", f"{r['tokens_per_s']:.0f}"]
         for r in rows])
    head = ["# AR continued vs block-diffusion CPT", ""] + [f"- **{k}**: {v}" for k, v in info.items()] + [""]
    write_atomic(out / "experiment.md", "\n".join(head) + "\n" + table)
    write_atomic(out / "experiment.json", json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    return out / "experiment.md"


def run_experiment(cfg: TrainConfig, corpus: Path, init_from: Path, out: Path, steps: int, *,
                   no_warmup_arm: bool = False, splits: list[str] | None = None, thresholds: list[float] | None = None,
                   limit: int | None = 200, seed: int = 0, exact_files: list[str] | None = None,
                   device: str = "auto", batch_size: int = 16, data: str | None = None, log=_log) -> Path:
    if steps <= 0:
        raise ValueError("--steps must be positive: the arms train for the same number of steps")
    if not (Path(init_from) / "config.json").is_file():
        raise ValueError(f"--init-from {init_from} is not a checkpoint folder (no config.json)")
    kind = json.loads((Path(init_from) / "config.json").read_text()).get("remask_kind", "ar")
    if kind != "ar":
        raise ValueError(f"--init-from {init_from} is a {kind!r} model; the experiment starts from an AR checkpoint "
                         f"(the pipeline's ar/checkpoint)")
    from .evals.humaneval import load_tasks

    for split in splits or ["single-line", "multi-line"]:  # before minutes of training, not after
        load_tasks(split, data)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpts = train_arms(cfg, corpus, init_from, out, steps, no_warmup_arm, log)
    train_s = time.perf_counter() - t0
    import torch

    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    rows = evaluate_arms(ckpts, splits=splits or ["single-line", "multi-line"],
                         thresholds=thresholds or [0.7, 0.8, 0.9, 0.95], limit=limit, seed=seed,
                         exact_files=exact_files or [], device=dev, batch_size=batch_size, data=data, log=log)
    png = plot_grad_norms(out, list(ckpts))
    tokens = steps * cfg.batch_size * cfg.seq_len
    info = {"shared AR checkpoint": str(init_from), "steps per arm": steps,
            "x_0 tokens per arm": f"{tokens:,}", "batch x seq": f"{cfg.batch_size} x {cfg.seq_len}",
            "BD warmup steps (b)": cfg.bd_warmup_steps,
            "block size": json.loads((ckpts["b"] / "config.json").read_text()).get("block_size"),
            "HumanEval subset": f"{limit or 'all'} tasks per split, seed {seed}", "device": dev,
            "training time": f"{train_s / 60:.1f} min", "gradient norms": png.name if png else "none"}
    md = report(out, rows, info)
    log(f"experiment: done -> {md}")
    return md
