"""HumanEval-Infilling (openai/human-eval-infilling, MIT): fill the middle of a HumanEval solution, run the tests.

The program executed is ``prompt + completion + suffix + "\\n" + test + "\\ncheck(entry_point)\\n"`` in the
sandbox. Scores: pass@1 (greedy, or the unbiased estimator over samples) and pass@k.
"""

from __future__ import annotations

import functools
import gzip
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .common import (
    EvalError,
    Generation,
    context_ids,
    data_path,
    fim_prompt,
    full_attention,
    generate_batched,
    infill_batched,
    prompt_budget,
    select,
)
from .metrics import mean_pass_at_k
from .sandbox import Sandbox

SPLITS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
# Generation budget per split: about 2x the longest canonical middles' typical token counts.
MAX_NEW_TOKENS = {"single-line": 64, "multi-line": 256, "random-span": 128, "random-span-light": 128}
WRONG_COMPLETION = "\nraise SystemExit('deliberately wrong')\n"  # dedents out of any block, or exits


@dataclass
class Task:
    task_id: str
    prompt: str  # the prefix
    suffix: str
    canonical_solution: str
    test: str
    entry_point: str

    def program(self, completion: str) -> str:
        return self.prompt + completion + self.suffix + "\n" + self.test + f"\ncheck({self.entry_point})\n"


def load_tasks(split: str, data: str | Path | None = None) -> list[Task]:
    """Tasks of one split. ``data`` is a .jsonl(.gz) file, or a folder holding the upstream file names."""
    if split not in SPLITS:
        raise EvalError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    path = Path(data) if data else data_path("human-eval-infilling", SPLITS[split])
    if path.is_dir():
        path = path / SPLITS[split]
    if not path.is_file():
        raise EvalError(f"HumanEval-Infilling file not found: {path} (pass --data)")
    opener = gzip.open if path.suffix == ".gz" else open
    tasks = []
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                n += 1
                if not line.strip():
                    continue
                d = json.loads(line)
                tasks.append(Task(d["task_id"], d["prompt"], d["suffix"], d["canonical_solution"], d["test"],
                                  d["entry_point"]))
    except (OSError, EOFError, json.JSONDecodeError, KeyError) as e:
        raise EvalError(f"{path} is not a HumanEval-Infilling file (line {n}: {e})") from e
    if not tasks:
        raise EvalError(f"{path} holds no tasks")
    return tasks


def postprocess(split: str, text: str, truncate: str = "auto") -> str:
    """Cut the raw output the way the task is defined: single-line keeps up to its first newline."""
    mode = ("line" if split == "single-line" else "none") if truncate == "auto" else truncate
    if mode == "line" and "\n" in text:
        return text[: text.index("\n") + 1]
    return text


@dataclass
class Run:
    """Everything one evaluation produced: per-sample records and the summary."""

    records: list[dict]
    summary: dict
    extra: dict = field(default_factory=dict)


def summarize(records: list[dict], ks: list[int]) -> dict:
    by_task: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_task[r["task_id"]].append(r["passed"])
    counts = [(len(v), sum(v)) for v in by_task.values()]
    out: dict = {"tasks": len(by_task), "samples": len(records),
                 "statuses": dict(Counter(r["status"] for r in records))}
    for k in ks:
        out[f"pass@{k}"] = mean_pass_at_k(counts, k)
    gen = [r for r in records if "tokens" in r]
    if gen:
        toks = sum(r["tokens"] for r in gen)
        out["tokens"] = toks
        out["tokens_per_forward"] = toks / max(sum(r["nfe"] for r in gen), 1)
    return out


def evaluate(split: str, *, model=None, tok=None, dc=None, solutions: str | None = None, limit: int | None = None,
             seed: int = 0, samples: int = 1, ks: list[int] | None = None, batch_size: int = 8,
             sandbox: Sandbox | None = None, data: str | Path | None = None, truncate: str = "auto",
             bos: bool = False, progress: Callable[[str, int, int], None] | None = None, cache: str = "none",
             refresh: int = 8) -> Run:
    """Generate (or take ``solutions``: "canonical", "wrong" or a JSONL of task_id/completion) and execute.

    ``progress(stage, done, total)`` is called as generation and execution advance. Full-attention families
    fill each hole in place between prefix and suffix (``cache``/``refresh``: Dream's approximate dual cache).
    """
    ks = ks or [1]
    tasks = select(load_tasks(split, data), limit, seed)
    sandbox = sandbox or Sandbox()
    t0 = time.perf_counter()
    gens: list[Generation | None]
    if solutions is not None:
        completions, gens = _given_completions(tasks, solutions), None
    else:
        if model is None or tok is None or dc is None:
            raise EvalError("need a model, tokenizer and decode config (or --solutions)")
        budget = prompt_budget(model, dc)
        inplace = full_attention(model)
        if cache != "none" and not inplace:
            raise EvalError("--cache dual is for full-attention families (Dream, DreamOn); this checkpoint decodes "
                            "block by block with an exact KV cache already")
        if inplace:
            items = [context_ids(tok, t.prompt, t.suffix, budget) for t in tasks for _ in range(samples)]
            decode = functools.partial(infill_batched, cache=cache, refresh=refresh)
        else:
            items = [fim_prompt(tok, t.prompt, t.suffix, budget, bos=bos) for t in tasks for _ in range(samples)]
            decode = generate_batched
        done = [0]
        if progress:
            progress("generate", 0, len(items))

        def gen_progress(k: int) -> None:
            done[0] += k
            if progress:
                progress("generate", done[0], len(items))

        gens = decode(model, tok, items, dc, batch_size=batch_size, progress=gen_progress)
        completions = [(t, postprocess(split, g.text, truncate)) for t, g in
                       zip([t for t in tasks for _ in range(samples)], gens, strict=True)]
    gen_s = time.perf_counter() - t0
    executed = [0]
    if progress:
        progress("execute", 0, len(completions))

    def exec_progress(i, r) -> None:
        executed[0] += 1
        if progress:
            progress("execute", executed[0], len(completions))

    results = sandbox.run_many([t.program(c) for t, c in completions], progress=exec_progress)
    records = []
    sample_no: Counter = Counter()
    for j, ((t, c), res) in enumerate(zip(completions, results, strict=True)):
        rec = {"task_id": t.task_id, "split": split, "sample": sample_no[t.task_id], "completion": c,
               "passed": res.passed, "status": res.status, "reason": res.reason,
               "exec_s": res.duration_s}
        sample_no[t.task_id] += 1
        if gens is not None:
            g = gens[j]
            rec.update(raw=g.text, tokens=g.tokens, nfe=g.nfe, tokens_per_forward=round(g.tokens_per_forward, 4),
                       finish=g.finish, prompt_tokens=g.prompt_tokens)
        if t.canonical_solution:
            rec["exact_match"] = c.strip() == t.canonical_solution.strip()
        records.append(rec)
    summary = summarize(records, sorted({1, *(k for k in ks if k <= samples)}) if gens is not None else [1])
    summary.update(split=split, generate_s=round(gen_s, 2), execute_s=round(time.perf_counter() - t0 - gen_s, 2),
                   sandbox=sandbox.isolation)
    if gens is not None:
        summary["tokens_per_s"] = summary.get("tokens", 0) / max(gen_s, 1e-9)
    return Run(records, summary)


def _given_completions(tasks: list[Task], solutions: str) -> list[tuple[Task, str]]:
    if solutions == "canonical":
        return [(t, t.canonical_solution) for t in tasks]
    if solutions == "wrong":
        return [(t, WRONG_COMPLETION) for t in tasks]
    path = Path(solutions)
    if not path.is_file():
        raise EvalError(f"--solutions must be 'canonical', 'wrong' or a JSONL file; {path} does not exist")
    by_id = {t.task_id: t for t in tasks}
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                t = by_id.get(d["task_id"])
                completion = d["completion"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise EvalError(f"{path}:{n}: need a JSON object with task_id and completion ({e})") from e
            if t is not None:
                out.append((t, completion))
    if not out:
        raise EvalError(f"{path} has no completion for any selected task")
    return out
