"""``remask eval SUITE ...``: HumanEval-Infilling, exact match on held-out spans, CanItEdit, speed, tau sweep.

Every run writes into ``--out`` (default ``runs/eval/SUITE-TIMESTAMP``): ``samples.jsonl`` (one record per
sample), ``summary.md`` (table), ``summary.json``; ``sweep`` also writes ``sweep.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

SUITES = ("humaneval-infilling", "exact-match", "canitedit", "speed", "sweep")


def _ints(s: str) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from e
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError("values must be positive integers")
    return v


def _floats(s: str) -> list[float]:
    try:
        v = [float(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from e
    if not v or any(not 0 < x <= 1 for x in v):
        raise argparse.ArgumentTypeError("thresholds must be in (0, 1]")
    return v


def _common(p: argparse.ArgumentParser, split: bool = True, max_new: bool = True) -> None:
    from model.cli import add_model_arguments

    add_model_arguments(p)
    if split:
        from .humaneval import SPLITS

        p.add_argument("--split", choices=list(SPLITS), default="single-line", help="HumanEval-Infilling split")
        p.add_argument("--data", default=None, help="data file or folder (default ../shared/data/...)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N tasks")
    p.add_argument("--seed", type=int, default=0, help="subset and sampling seed")
    p.add_argument("--out", default=None, help="output folder (default runs/eval/SUITE-TIMESTAMP)")
    p.add_argument("--batch-size", type=int, default=8, help="tasks decoded together per generate call")
    if max_new:
        p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default per suite)")
    p.add_argument("--block-size", type=int, default=None, help="block size B (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="fixed steps per block instead of a threshold")
    p.add_argument("--confidence", default="low_confidence", choices=["low_confidence", "margin", "entropy", "random"])
    p.add_argument("--bos", action="store_true", help="start FIM prompts with the bos token")
    p.add_argument("--eos-fill", action="store_true",
                   help="once a block commits EOS, turn its later masks into EOS (not the reference's rule)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _sandbox_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=2, help="programs executed in parallel")
    p.add_argument("--timeout", type=float, default=5.0, help="wall-clock seconds per program")
    p.add_argument("--memory-mb", type=int, default=2048, help="address-space limit per program")
    p.add_argument("--sandbox-python", default=None,
                   help="interpreter for executed programs (default: this one if the sandbox uid can run it, "
                        "else the system python3)")


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)

    p = sub.add_parser("humaneval-infilling", help="HumanEval-Infilling pass@k (executed in the sandbox)")
    _common(p)
    _sandbox_args(p)
    p.add_argument("--mode", choices=["diffusion", "ar"], default="diffusion")
    p.add_argument("--threshold", type=float, default=0.9, help="confidence threshold tau")
    p.add_argument("--temperature", type=float, default=None, help="default 0 (greedy), 0.2 with --samples > 1")
    p.add_argument("--samples", type=int, default=1, help="samples per task (pass@k needs k <= samples)")
    p.add_argument("--k", type=_ints, default=[1], help="pass@k values, e.g. 1,10 (each needs --samples >= k)")
    p.add_argument("--truncate", choices=["auto", "line", "none"], default="auto",
                   help="cut outputs: auto = after the first newline on single-line, else as generated")
    p.add_argument("--solutions", default=None,
                   help="score given completions instead of a model: canonical, wrong, or a JSONL of "
                        "task_id/completion (checks the harness)")
    p.add_argument("--cache", choices=["none", "dual"], default="none",
                   help="Dream/DreamOn only: 'dual' reuses the keys outside the masked span between refreshes "
                        "(approximate, faster; default none = exact)")
    p.add_argument("--refresh", type=int, default=8, metavar="N",
                   help="with --cache dual: a full forward every N steps (default 8)")

    p = sub.add_parser("exact-match", help="exact match / edit similarity on tree-sitter spans of held-out files")
    _common(p, split=False)
    p.add_argument("--files", required=True, help="held-out files: folder, file or glob (never trained on)")
    p.add_argument("--per-kind", type=int, default=50, help="spans per kind")
    p.add_argument("--kinds", default="line,statement,block,call-args")
    p.add_argument("--mode", choices=["diffusion", "ar"], default="diffusion")
    p.add_argument("--threshold", type=float, default=0.9)

    p = sub.add_parser("canitedit", help="CanItEdit instruction edits (instruct checkpoints), pass@k")
    _common(p, split=False)
    _sandbox_args(p)
    p.add_argument("--data", default=None, help="CanItEdit test.jsonl (default ../shared/data/canitedit/)")
    p.add_argument("--mode", choices=["diffusion", "ar"], default="diffusion")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=None, help="default 0 (greedy), 0.2 with --samples > 1")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--k", type=_ints, default=[1])
    p.add_argument("--instructions", default="descriptive,lazy", help="descriptive, lazy or both")
    p.add_argument("--solutions", choices=["after", "before"], default=None,
                   help="execute the reference ('after') or unedited ('before') programs instead of a model")

    p = sub.add_parser("speed", help="tokens per forward, tokens/s, latency: diffusion against AR, same weights")
    _common(p)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--fixed-length", action="store_true",
                   help="ignore EOS so both modes generate exactly --max-new-tokens")

    p = sub.add_parser("sweep", help="HumanEval-Infilling pass@1 and speed as tau varies, plus AR; plot")
    _common(p)
    _sandbox_args(p)
    p.add_argument("--thresholds", type=_floats, default=[0.5, 0.7, 0.9, 0.95])
    p.add_argument("--no-ar", action="store_true", help="skip the AR baseline")


def _decode_config(args, **kw):
    from model.decoder import DecodeConfig

    threshold = None if args.steps else getattr(args, "threshold", 0.9)
    return DecodeConfig(max_new_tokens=kw.pop("max_new_tokens"), block_size=args.block_size, threshold=threshold,
                        steps_per_block=args.steps, confidence=args.confidence, seed=args.seed,
                        eos_fill=getattr(args, "eos_fill", False), **kw)


def _sandbox(args):
    from .sandbox import Limits, Sandbox

    return Sandbox(Limits(timeout_s=args.timeout, memory_mb=args.memory_mb), workers=args.workers,
                   python=args.sandbox_python)


def _progress(args):
    from .common import Progress

    bars: dict = {}

    def cb(stage: str, done: int, total: int) -> None:
        if args.quiet:
            return
        if done == 0 or stage not in bars:
            bars[stage] = Progress(total, stage)
        bar = bars[stage]
        bar(done - bar.n)

    return cb


def run(command: str, args: argparse.Namespace) -> int:
    from .common import EvalError

    try:
        return {"humaneval-infilling": _run_humaneval, "exact-match": _run_exact, "canitedit": _run_canitedit,
                "speed": _run_speed, "sweep": _run_sweep}[args.suite](args)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _out(args, name: str) -> Path:
    from .common import default_out_dir

    return Path(args.out) if args.out else default_out_dir(name)


def _check_args(args) -> None:
    from .common import EvalError

    if args.limit is not None and args.limit < 1:
        raise EvalError("--limit must be at least 1")
    if args.batch_size < 1:
        raise EvalError("--batch-size must be at least 1")
    if getattr(args, "samples", 1) < 1:
        raise EvalError("--samples must be at least 1")
    ks = getattr(args, "k", [1])
    if getattr(args, "solutions", None) is None and max(ks) > getattr(args, "samples", 1):
        raise EvalError(f"pass@{max(ks)} needs --samples {max(ks)} or more")
    if getattr(args, "workers", 1) < 1:
        raise EvalError("--workers must be at least 1")


def _run_humaneval(args) -> int:
    from .common import load_model, model_info, write_jsonl
    from .humaneval import MAX_NEW_TOKENS, evaluate
    from .report import results_table, write_summary

    _check_args(args)
    out = _out(args, f"humaneval-{args.split}")
    model = tok = dc = None
    info: dict = {"split": args.split}
    if args.solutions is None:
        model, tok, desc = load_model(args.model, args.device, args.dtype, args.adapter, not args.adapter_unmerged)
        temp = args.temperature if args.temperature is not None else (0.2 if args.samples > 1 else 0.0)
        line = args.truncate == "line" or (args.truncate == "auto" and args.split == "single-line")
        dc = _decode_config(args, max_new_tokens=args.max_new_tokens or MAX_NEW_TOKENS[args.split], mode=args.mode,
                            temperature=temp, stop_strings=("\n",) if line else ())
        info.update(model_info(model, desc), decode=_dc_info(dc))
    else:
        info["solutions"] = args.solutions
    t0 = time.perf_counter()
    res = evaluate(args.split, model=model, tok=tok, dc=dc, solutions=args.solutions, limit=args.limit,
                   seed=args.seed, samples=args.samples, ks=args.k, batch_size=args.batch_size, sandbox=_sandbox(args),
                   data=args.data, truncate=args.truncate, bos=args.bos, progress=_progress(args),
                   cache=args.cache, refresh=args.refresh)
    s = res.summary
    s.update(mode=args.mode if dc else "given", threshold=dc.threshold if dc else None, cache=args.cache,
             wall_s=round(time.perf_counter() - t0, 2))
    write_jsonl(out / "samples.jsonl", res.records)
    ks = sorted({1, *(k for k in args.k if f"pass@{k}" in s)})
    write_summary(out, f"HumanEval-Infilling {args.split}", {**info, "sandbox": s["sandbox"]},
                  results_table([s], ks), {"info": info, "summary": s})
    _print_result(out, s, ks)
    return 0


def _print_result(out: Path, s: dict, ks: list[int]) -> None:
    scores = "  ".join(f"pass@{k} {100 * s[f'pass@{k}']:.1f}%" for k in ks if s.get(f"pass@{k}") is not None)
    extra = f"  tokens/forward {s['tokens_per_forward']:.2f}" if "tokens_per_forward" in s else ""
    print(f"{s.get('split', '')}: {s['tasks']} tasks, {s['samples']} samples  {scores}{extra}  "
          f"statuses {s['statuses']}  ({s.get('wall_s', '?')} s)\nwrote {out}/summary.md, samples.jsonl")


def _dc_info(dc) -> dict:
    d = dataclasses.asdict(dc)
    return {k: v for k, v in d.items() if v not in (None, (), False) or k in ("threshold",)}


def _run_exact(args) -> int:
    from .common import Progress, load_model, markdown_table, model_info, write_jsonl
    from .report import write_summary
    from .spans import collect_files, evaluate, pick_spans

    _check_args(args)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    files = collect_files(args.files)
    pick_spans(files, args.per_kind, kinds, args.seed)  # fail on bad kinds / empty files before loading
    model, tok, desc = load_model(args.model, args.device, args.dtype, args.adapter, not args.adapter_unmerged)
    dc = _decode_config(args, max_new_tokens=args.max_new_tokens or 128, mode=args.mode)
    out = _out(args, "exact-match")
    t0 = time.perf_counter()
    n = args.per_kind * len(kinds)
    records, s = evaluate(files, model, tok, dc, per_kind=args.per_kind, kinds=kinds, seed=args.seed,
                          batch_size=args.batch_size, bos=args.bos, progress=Progress(n, "generate", args.quiet))
    s["wall_s"] = round(time.perf_counter() - t0, 2)
    info = {**model_info(model, desc), "files": args.files, "decode": _dc_info(dc)}
    table = markdown_table(["kind", "spans", "exact match", "edit similarity", "difflib ratio"],
                           [[k, v["spans"], f"{100 * v['exact_match']:.1f}%", v["edit_similarity"], v["difflib_ratio"]]
                            for k, v in s["kinds"].items()])
    write_jsonl(out / "samples.jsonl", records)
    write_summary(out, "Exact match on held-out spans", info, table, {"info": info, "summary": s})
    print(table + f"\ntokens/forward {s['tokens_per_forward']:.2f}  ({s['wall_s']} s)\nwrote {out}/summary.md")
    return 0


def _run_canitedit(args) -> int:
    from .canitedit import INSTRUCTION_KINDS, evaluate
    from .common import EvalError, load_model, markdown_table, model_info, write_jsonl
    from .report import write_summary

    _check_args(args)
    kinds = tuple(k.strip() for k in args.instructions.split(",") if k.strip())
    if not kinds or any(k not in INSTRUCTION_KINDS for k in kinds):
        raise EvalError(f"--instructions must name some of {', '.join(INSTRUCTION_KINDS)}")
    model = tok = dc = None
    info: dict = {}
    if args.solutions is None:
        model, tok, desc = load_model(args.model, args.device, args.dtype, args.adapter, not args.adapter_unmerged)
        from .canitedit import require_instruct

        require_instruct(model)
        temp = args.temperature if args.temperature is not None else (0.2 if args.samples > 1 else 0.0)
        dc = _decode_config(args, max_new_tokens=args.max_new_tokens or 1024, mode=args.mode, temperature=temp)
        info.update(model_info(model, desc), decode=_dc_info(dc))
    else:
        info["solutions"] = args.solutions
    out = _out(args, "canitedit")
    t0 = time.perf_counter()
    records, s = evaluate(model=model, tok=tok, dc=dc, solutions=args.solutions, kinds=kinds, limit=args.limit,
                          seed=args.seed, samples=args.samples, ks=args.k, batch_size=args.batch_size,
                          sandbox=_sandbox(args), data=args.data, progress=_progress(args))
    s["wall_s"] = round(time.perf_counter() - t0, 2)
    ks = sorted({int(key.split("@")[1]) for v in s["kinds"].values() for key in v})
    table = markdown_table(["instructions"] + [f"pass@{k}" for k in ks],
                           [[kind] + [None if v.get(f"pass@{k}") is None else f"{100 * v[f'pass@{k}']:.1f}%"
                                      for k in ks] for kind, v in s["kinds"].items()])
    table += f"\nmissing-module failures (environment, not model): {s['missing_module']}\n"
    write_jsonl(out / "samples.jsonl", records)
    write_summary(out, "CanItEdit", {**info, "sandbox": s["sandbox"]}, table, {"info": info, "summary": s})
    print(table + f"statuses {s['statuses']}  ({s['wall_s']} s)\nwrote {out}/summary.md")
    return 0


def _run_speed(args) -> int:
    from .common import Progress, fim_prompt, load_model, markdown_table, model_info, prompt_budget, select, write_jsonl
    from .humaneval import MAX_NEW_TOKENS, load_tasks
    from .report import write_summary
    from .speed import measure

    _check_args(args)
    tasks = select(load_tasks(args.split, args.data), args.limit if args.limit else 20, args.seed)
    model, tok, desc = load_model(args.model, args.device, args.dtype, args.adapter, not args.adapter_unmerged)
    dc = _decode_config(args, max_new_tokens=args.max_new_tokens or MAX_NEW_TOKENS[args.split],
                        stop_at_eos=not args.fixed_length)
    prompts = [fim_prompt(tok, t.prompt, t.suffix, prompt_budget(model, dc), bos=args.bos) for t in tasks]
    out = _out(args, "speed")
    records, s = measure(model, tok, prompts, [t.task_id for t in tasks], dc,
                         progress=Progress(len(tasks), "tasks", args.quiet))
    info = {**model_info(model, desc), "split": args.split, "device": args.device, "decode": _dc_info(dc)}
    rows = [[m, v["tasks"], v["tokens"], v["forwards"], v["tokens_per_forward"], v["tokens_per_s"],
             v["latency_mean_s"], v["latency_median_s"], v["latency_p90_s"]]
            for m, v in s.items() if isinstance(v, dict)]
    table = markdown_table(["decoding", "tasks", "tokens", "forwards", "tokens/forward", "tokens/s", "latency mean s",
                            "latency median s", "latency p90 s"], rows)
    table += (f"\nspeed-up (tokens/s, diffusion / AR): {s['speedup_tokens_per_s']:.2f}x; "
              f"tokens per forward ratio: {s['forward_reduction']:.2f}x\n")
    write_jsonl(out / "samples.jsonl", records)
    write_summary(out, "Speed: block diffusion against AR on the same weights", info, table,
                  {"info": info, "summary": s})
    print(table + f"wrote {out}/summary.md")
    return 0


def _run_sweep(args) -> int:
    from .common import load_model, model_info, write_jsonl
    from .humaneval import MAX_NEW_TOKENS, evaluate
    from .report import plot_sweep, results_table, write_summary

    _check_args(args)
    model, tok, desc = load_model(args.model, args.device, args.dtype, args.adapter, not args.adapter_unmerged)
    out = _out(args, f"sweep-{args.split}")
    sandbox = _sandbox(args)
    line = args.split == "single-line"
    settings: list[tuple[str, float | None]] = [("diffusion", t) for t in args.thresholds]
    if not args.no_ar:
        settings.append(("ar", None))
    points = []
    for mode, tau in settings:
        dc = _decode_config(args, max_new_tokens=args.max_new_tokens or MAX_NEW_TOKENS[args.split], mode=mode,
                            stop_strings=("\n",) if line else ())
        if tau is not None and not args.steps:
            dc.threshold = tau
        if not args.quiet:
            print(f"{mode} tau={tau}", file=sys.stderr)
        res = evaluate(args.split, model=model, tok=tok, dc=dc, limit=args.limit, seed=args.seed,
                       batch_size=args.batch_size, sandbox=sandbox, data=args.data, bos=args.bos,
                       progress=_progress(args))
        s = res.summary
        s.update(mode=mode, threshold=dc.threshold if mode == "diffusion" else None, steps=args.steps)
        tag = "ar" if mode == "ar" else (f"tau{tau:g}" if not args.steps else f"steps{args.steps}")
        write_jsonl(out / f"samples-{tag}.jsonl", res.records)
        points.append(s)
    info = {**model_info(model, desc), "split": args.split, "sandbox": sandbox.isolation}
    write_summary(out, f"Threshold sweep, HumanEval-Infilling {args.split}", info, results_table(points, [1]),
                  {"info": info, "points": points})
    plot_sweep(points, out / "sweep.png", title=f"HumanEval-Infilling {args.split} ({desc})")
    print(results_table(points, [1]) + f"wrote {out}/summary.md, sweep.png")
    return 0
