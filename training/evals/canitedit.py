"""CanItEdit (nuprl/CanItEdit): instruction-following code edits, judged by hidden tests. EVALUATION ONLY.

The licence forbids training on this data; training/corpus.py refuses paths that name it. Each problem has a
``before`` program, a descriptive and a lazy instruction, and ``tests`` run after the edited program.
The model sees one chat turn (``Tokenizer.chat_prompt``) and answers with the whole edited program; the
first fenced code block of the answer (or the whole answer when there is none) is executed.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .common import EvalError, Generation, data_path, generate_batched, prompt_budget, select
from .metrics import mean_pass_at_k
from .sandbox import Sandbox

INSTRUCTION_KINDS = ("descriptive", "lazy")
_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:```|\Z)", re.S)


def load_problems(data: str | Path | None = None) -> list[dict]:
    path = Path(data) if data else data_path("canitedit", "test.jsonl")
    if path.is_dir():
        path = path / "test.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"cannot read CanItEdit data {path}: {e}") from e
    need = {"full_name", "before", "after", "tests", "instruction_descriptive", "instruction_lazy"}
    if not rows or not need <= rows[0].keys():
        raise EvalError(f"{path} is not the CanItEdit test set (need fields {sorted(need)})")
    return rows


def edit_messages(before: str, instruction: str) -> list[dict[str, str]]:
    """One user turn in the layout our SFT stage trains (``training.sft.instruct_prompt``), the whole
    program as the region to rewrite; the answer is the new program (a fenced block is also accepted)."""
    from training.sft import instruct_prompt

    return [{"role": "user", "content": instruct_prompt("python", "", before, "", instruction)}]


def extract_code(answer: str) -> str:
    m = _FENCE.search(answer)
    return m.group(1) if m else answer


def program(code: str, tests: str) -> str:
    return code.rstrip() + "\n\n" + tests + "\n"


def require_instruct(model) -> None:
    from model.network import remask_config

    cfg = remask_config(model)
    if not cfg.instruct:
        raise EvalError(f"CanItEdit needs an instruct checkpoint (kind 'bd-instruct'); this model is kind "
                        f"{cfg.kind!r}. Train one with `remask train sft` and pass its folder with --model.")


def evaluate(*, model=None, tok=None, dc=None, solutions: str | None = None, kinds=INSTRUCTION_KINDS,
             limit: int | None = None, seed: int = 0, samples: int = 1, ks: list[int] | None = None,
             batch_size: int = 4, sandbox: Sandbox | None = None, data: str | Path | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> tuple[list[dict], dict]:
    """pass@k per instruction kind. ``solutions``: "after" (reference programs) or "before" (unedited)."""
    problems = select(load_problems(data), limit, seed)
    sandbox = sandbox or Sandbox()
    jobs = [(p, kind) for p in problems for kind in kinds for _ in range(samples if solutions is None else 1)]
    t0 = time.perf_counter()
    gens = None
    if solutions in ("after", "before"):
        codes = [p[solutions] for p, _ in jobs]
    elif solutions is not None:
        raise EvalError("CanItEdit --solutions must be 'after' or 'before'")
    else:
        if model is None or tok is None or dc is None:
            raise EvalError("need a model, tokenizer and decode config (or --solutions)")
        require_instruct(model)
        prompts = [tok.chat_prompt(edit_messages(p["before"], p[f"instruction_{kind}"])) for p, kind in jobs]
        done = [0]
        if progress:
            progress("generate", 0, len(prompts))

        def gp(k: int) -> None:
            done[0] += k
            if progress:
                progress("generate", done[0], len(prompts))

        budget = prompt_budget(model, dc)
        fits = [i for i, p in enumerate(prompts) if len(p) <= budget]
        gens = [Generation("", 0, 0, "prompt-too-long", 0.0, len(p)) for p in prompts]
        for i, g in zip(fits, generate_batched(model, tok, [prompts[i] for i in fits], dc, batch_size=batch_size,
                                               progress=gp), strict=True):
            gens[i] = g
        codes = [extract_code(g.text) for g in gens]
    gen_s = time.perf_counter() - t0
    if progress:
        progress("execute", 0, len(jobs))
    counter = [0]

    def ep(i, r) -> None:
        counter[0] += 1
        if progress:
            progress("execute", counter[0], len(jobs))

    results = sandbox.run_many([program(c, p["tests"]) for c, (p, _) in zip(codes, jobs, strict=True)],
                               progress=ep)
    records = []
    for j, ((p, kind), code, res) in enumerate(zip(jobs, codes, results, strict=True)):
        rec = {"task_id": f"{p['full_name']}/{kind}", "problem": p["full_name"], "instruction": kind,
               "change_kind": p.get("taxonomy", {}).get("change_kind"), "code": code, "passed": res.passed,
               "status": res.status, "reason": res.reason}
        if gens is not None:
            g = gens[j]
            rec.update(raw=g.text, tokens=g.tokens, nfe=g.nfe, finish=g.finish, prompt_tokens=g.prompt_tokens)
        records.append(rec)
    ks = [k for k in (ks or [1]) if k <= (samples if gens is not None else 1)] or [1]
    summary: dict = {"problems": len(problems), "samples": len(records), "kinds": {},
                     "statuses": dict(Counter(r["status"] for r in records)), "generate_s": round(gen_s, 2),
                     # Failures of the environment, not the model (CanItEdit pins numpy, pandas, torch, z3...).
                     "missing_module": sum(r["reason"].startswith("ModuleNotFoundError") for r in records),
                     "sandbox": sandbox.isolation}
    for kind in kinds:
        per: dict[str, list[bool]] = {}
        for r in records:
            if r["instruction"] == kind:
                per.setdefault(r["problem"], []).append(r["passed"])
        counts = [(len(v), sum(v)) for v in per.values()]
        summary["kinds"][kind] = {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks}
    vals = [v["pass@1"] for v in summary["kinds"].values() if v.get("pass@1") is not None]
    summary["pass@1"] = sum(vals) / len(vals) if vals else None
    return records, summary
