"""What the ``eos_fill`` option buys and costs: HumanEval-Infilling with and without it, same model and tasks.

``eos_fill`` (off by default since issue 15: Stable-DiffCoder's generate_block does not do it) turns a block's
masks after a committed EOS into EOS at once. It can only save forwards; it can also change the answer, because
the positions before the EOS then see EOS instead of MASK. This runs the eval harness twice and prints pass@1,
forwards (NFE) and tokens per forward for each, and the ratios, for BENCHMARKS.md.

    python benchmarks/bench_eos_fill.py --limit 40 [--model DIR] [--split single-line]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(args, eos_fill: bool, out: Path) -> dict:
    cmd = [sys.executable, "-m", "ui.cli", "eval", "humaneval-infilling", "--split", args.split, "--limit",
           str(args.limit), "--out", str(out), "--quiet", "--max-new-tokens", str(args.max_new_tokens)]
    if args.model:
        cmd += ["--model", args.model]
    if eos_fill:
        cmd.append("--eos-fill")
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    summary = json.loads((out / "summary.json").read_text())["summary"]
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()]
    return {"pass@1": summary["pass@1"], "exact_match": sum(r.get("exact_match", False) for r in recs),
            "nfe": sum(r["nfe"] for r in recs), "tokens": summary["tokens"],
            "tokens_per_forward": round(summary["tokens_per_forward"], 4), "tasks": len(recs),
            "answers": {r["task_id"]: r["raw"] for r in recs}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--split", default="single-line")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        off = run(args, False, Path(tmp) / "off")
        on = run(args, True, Path(tmp) / "on")
    changed = sum(off["answers"][t] != on["answers"].get(t) for t in off["answers"])
    for r in (off, on):
        del r["answers"]
    print(json.dumps({"eos_fill_off": off, "eos_fill_on": on, "answers_changed": changed,
                      "nfe_ratio_on_over_off": round(on["nfe"] / max(off["nfe"], 1), 4)}, indent=2))


if __name__ == "__main__":
    main()
