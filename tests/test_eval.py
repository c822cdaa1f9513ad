"""Evaluation harness: scoring, HumanEval-Infilling with the canonical and a wrong answer, spans, CanItEdit, CLI."""

from __future__ import annotations

import dataclasses
import json
from math import comb

import pytest

from training.evals import canitedit, humaneval, spans
from training.evals.common import SHARED_DATA, EvalError, fim_prompt, select
from training.evals.metrics import edit_similarity, exact_match, levenshtein, mean_pass_at_k, pass_at_k, pass_at_k_exact
from training.evals.sandbox import Limits, Sandbox
from ui.cli import main as remask

needs_he = pytest.mark.skipif(not (SHARED_DATA / "human-eval-infilling").is_dir(),
                              reason="../shared/data/human-eval-infilling is not present")
needs_cie = pytest.mark.skipif(not (SHARED_DATA / "canitedit" / "test.jsonl").is_file(),
                               reason="../shared/data/canitedit is not present")


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(Limits(timeout_s=20), workers=2)


# pass@k ------------------------------------------------------------------------------------------------------
def test_pass_at_k_known_values():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)  # 1 - C(7,2)/C(10,2)
    assert pass_at_k(4, 1, 4) == 1.0  # n - c < k: some draw of 4 always holds the correct one
    assert pass_at_k(20, 1, 10) == pytest.approx(0.5)
    for n, c, k in [(200, 13, 100), (200, 1, 1), (1000, 7, 10), (50, 49, 2)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), rel=1e-12)
        assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_exact(n, c, k), rel=1e-12)
    assert mean_pass_at_k([(1, 1), (1, 0), (1, 0), (1, 1)], 1) == 0.5
    assert mean_pass_at_k([(5, 1), (1, 1)], 2) is None  # a task with fewer than k samples
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6)


def test_exact_match_and_edit_similarity():
    assert exact_match("    return x  \n\n", "    return x\n")
    assert not exact_match("return x", "    return x")  # indentation matters in code
    assert edit_similarity("abc", "abc") == 1.0
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert levenshtein("flaw", "lawn") == 2
    assert edit_similarity("", "") == 1.0 and edit_similarity("x", "") == 0.0


# HumanEval-Infilling -----------------------------------------------------------------------------------------
@needs_he
@pytest.mark.parametrize("split", list(humaneval.SPLITS))
def test_canonical_solutions_pass_and_wrong_ones_fail(split, sandbox):
    good = humaneval.evaluate(split, solutions="canonical", limit=20, seed=1, sandbox=sandbox)
    assert good.summary["tasks"] == 20 and good.summary["pass@1"] == 1.0, \
        [(r["task_id"], r["reason"]) for r in good.records if not r["passed"]]
    bad = humaneval.evaluate(split, solutions="wrong", limit=20, seed=1, sandbox=sandbox)
    assert bad.summary["pass@1"] == 0.0 and bad.summary["statuses"] == {"failed": 20}


@needs_he
def test_tasks_program_and_given_completions(tmp_path, sandbox):
    tasks = humaneval.load_tasks("single-line")
    assert len(tasks) == 1033 and tasks[0].task_id.startswith("SingleLineInfilling/HumanEval/")
    t = tasks[0]
    prog = t.program(t.canonical_solution)
    assert prog.startswith(t.prompt + t.canonical_solution + t.suffix) and prog.endswith(f"check({t.entry_point})\n")
    # A JSONL of completions, upstream style: one right, one wrong answer for the same task -> pass@1 0.5.
    f = tmp_path / "samples.jsonl"
    f.write_text(json.dumps({"task_id": t.task_id, "completion": t.canonical_solution}) + "\n"
                 + json.dumps({"task_id": t.task_id, "completion": "    return None\n"}) + "\n")
    run = humaneval.evaluate("single-line", solutions=str(f), sandbox=sandbox)
    assert run.summary["tasks"] == 1 and run.summary["samples"] == 2 and run.summary["pass@1"] == 0.5
    with pytest.raises(EvalError, match="unknown split"):
        humaneval.load_tasks("two-line")
    with pytest.raises(EvalError, match="not found"):
        humaneval.load_tasks("single-line", tmp_path / "missing.jsonl.gz")
    (tmp_path / "junk.jsonl").write_text("{not json\n")
    with pytest.raises(EvalError, match="not a HumanEval-Infilling file"):
        humaneval.load_tasks("single-line", tmp_path / "junk.jsonl")


def test_single_line_output_is_cut_after_its_first_newline():
    assert humaneval.postprocess("single-line", "    return x\n    y = 2\n") == "    return x\n"
    assert humaneval.postprocess("single-line", "    return x") == "    return x"
    assert humaneval.postprocess("multi-line", "a\nb\n") == "a\nb\n"
    assert humaneval.postprocess("multi-line", "a\nb\n", truncate="line") == "a\n"


def test_select_is_a_seeded_spread_subset():
    items = list(range(100))
    a, b = select(items, 10, seed=3), select(items, 10, seed=3)
    assert a == b == sorted(a) and len(set(a)) == 10 and a != list(range(10))
    assert select(items, None) == items and select(items, 500) == items


def test_fim_prompt_layout_and_budget(test_model_dir):
    from model.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(test_model_dir)
    pre, suf, mid = tok.fim_ids
    ids = fim_prompt(tok, "def f(x):\n    ", "\n    return y\n")
    assert ids[0] == suf and ids[-1] == mid and ids.count(pre) == 1
    assert tok.decode(ids[1: ids.index(pre)]) == "\n    return y\n"
    assert tok.decode(ids[ids.index(pre) + 1: -1]) == "def f(x):\n    "
    long = fim_prompt(tok, "x = 1\n" * 2000, "y = 2\n" * 2000, budget=300)
    assert len(long) <= 300
    # The prefix keeps its end (nearest the hole), the suffix its start.
    assert tok.decode(long[long.index(pre) + 1: -1]).endswith("x = 1\n")
    assert tok.decode(long[1: long.index(pre)]).startswith("y = 2\n")


# Held-out spans ----------------------------------------------------------------------------------------------
SOURCE = '''import os


def walk(root, pattern):
    """Yield matching files."""
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(pattern):
                yield os.path.join(dirpath, n)


total = sum(len(p) for p in walk(".", ".py"))
'''


def test_spans_of_each_kind(tmp_path):
    (tmp_path / "m.py").write_text(SOURCE)
    cands = spans.candidate_spans(SOURCE, ".py", "m.py")
    assert set(cands) == set(spans.KINDS)
    targets = {k: [s.target for s in v] for k, v in cands.items()}
    assert "            if n.endswith(pattern):\n" in targets["line"]
    assert "import os" in targets["statement"] and "yield os.path.join(dirpath, n)" in targets["statement"]
    assert "dirpath, n" in targets["call-args"] and "root" in targets["call-args"]
    assert any(t.startswith('"""Yield matching files."""\n    for dirpath') for t in targets["block"])
    for _kind, ss in cands.items():
        for s in ss:
            assert SOURCE[s.start: s.end] == s.target
    picked = spans.pick_spans(spans.collect_files(tmp_path), per_kind=2, seed=0)
    assert picked == spans.pick_spans(spans.collect_files(tmp_path), per_kind=2, seed=0)
    with pytest.raises(EvalError, match="no source files"):
        spans.collect_files(tmp_path / "nothing-here")


def test_exact_match_suite_runs_a_model(test_model_dir, tmp_path):
    from model.checkpoint import load_checkpoint
    from model.decoder import DecodeConfig

    (tmp_path / "m.py").write_text(SOURCE)
    model, tok = load_checkpoint(test_model_dir)
    records, summary = spans.evaluate([tmp_path / "m.py"], model, tok, DecodeConfig(max_new_tokens=8), per_kind=1)
    assert len(records) == 4 and set(summary["kinds"]) == set(spans.KINDS)
    for r in records:
        assert 0.0 <= r["edit_similarity"] <= 1.0 and r["exact_match"] in (True, False)
        if r["kind"] in ("line", "statement"):
            assert "\n" not in r["prediction"].rstrip("\n")


# CanItEdit ---------------------------------------------------------------------------------------------------
@needs_cie
def test_canitedit_reference_passes_and_unedited_fails(sandbox, tmp_path):
    probs = [p for p in canitedit.load_problems() if not p["taxonomy"]["libraries"]][:3]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in probs))
    records, s = canitedit.evaluate(solutions="after", sandbox=sandbox, data=data)
    assert len(records) == 6 and s["pass@1"] == 1.0, [r["reason"] for r in records]
    assert set(s["kinds"]) == {"descriptive", "lazy"}
    records, s = canitedit.evaluate(solutions="before", sandbox=sandbox, data=data)
    assert s["pass@1"] == 0.0 and s["statuses"].get("passed", 0) == 0


def test_canitedit_code_extraction():
    ans = "Here you go:\n```python\ndef f():\n    return 2\n```\nDone."
    assert canitedit.extract_code(ans) == "def f():\n    return 2\n"
    assert canitedit.extract_code("def g(): pass") == "def g(): pass"
    assert canitedit.extract_code("```\nx = 1\n") == "x = 1\n"  # unterminated fence: take the rest


@needs_cie
def test_canitedit_needs_an_instruct_model(test_model_dir, tmp_path, capsys):
    assert remask(["eval", "canitedit", "--model", str(test_model_dir), "--limit", "1", "--out", str(tmp_path)]) == 2
    assert "needs an instruct checkpoint" in capsys.readouterr().err


@needs_cie
def test_canitedit_with_an_instruct_checkpoint(tmp_path):
    from model.testing import make_test_checkpoint

    folder = make_test_checkpoint(tmp_path / "inst", kind="bd-instruct")
    out = tmp_path / "out"
    assert remask(["eval", "canitedit", "--model", str(folder), "--limit", "1", "--instructions", "lazy",
                   "--max-new-tokens", "8", "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["instruction"] == "lazy" and not rows[0]["passed"]
    s = json.loads((out / "summary.json").read_text())["summary"]
    assert s["kinds"]["lazy"]["pass@1"] == 0.0


# CLI ---------------------------------------------------------------------------------------------------------
@needs_he
def test_cli_humaneval_five_tasks_with_a_test_model(test_model_dir, tmp_path, capsys):
    out = tmp_path / "he"
    rc = remask(["eval", "humaneval-infilling", "--split", "single-line", "--limit", "5", "--model",
                 str(test_model_dir), "--max-new-tokens", "16", "--out", str(out), "--quiet"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and len({r["task_id"] for r in rows}) == 5
    for r in rows:
        assert r["status"] in ("passed", "failed", "timeout", "error") and r["nfe"] >= 1
        assert r["completion"].count("\n") <= 1 and r["tokens"] <= 16
    s = json.loads((out / "summary.json").read_text())["summary"]
    assert s["tasks"] == 5 and 0.0 <= s["pass@1"] <= 1.0 and s["tokens_per_forward"] > 0
    assert "| single-line | diffusion |" in (out / "summary.md").read_text()
    assert "pass@1" in capsys.readouterr().out


@needs_he
def test_sampling_gives_pass_at_k(test_model_dir, sandbox):
    from model.checkpoint import load_checkpoint
    from model.decoder import DecodeConfig

    model, tok = load_checkpoint(test_model_dir)
    run = humaneval.evaluate("random-span-light", model=model, tok=tok, limit=2, samples=2, ks=[1, 2, 5],
                             dc=DecodeConfig(max_new_tokens=4, temperature=1.0, seed=0), batch_size=4, sandbox=sandbox)
    s = run.summary
    assert s["tasks"] == 2 and s["samples"] == 4 and {"pass@1", "pass@2"} <= s.keys() and "pass@5" not in s
    assert sorted(r["sample"] for r in run.records) == [0, 0, 1, 1]


def test_sampling_draws_a_seed_per_batch(test_model_dir, monkeypatch):
    """Copies of one task may straddle batches; a fixed seed per call would give them identical noise."""
    import model.decoder as decoder
    from model.checkpoint import load_checkpoint
    from model.decoder import DecodeConfig
    from training.evals.common import generate_batched

    model, tok = load_checkpoint(test_model_dir)
    seeds = []
    real = decoder.generate

    def spy(m, prompts, cfg, **kw):
        seeds.append(cfg.seed)
        return real(m, prompts, dataclasses.replace(cfg, max_new_tokens=2), **kw)

    monkeypatch.setattr(decoder, "generate", spy)
    prompts = [[7, 100, 200, 6, 300, 8]] * 5
    generate_batched(model, tok, prompts, DecodeConfig(temperature=0.7, seed=10), batch_size=2)
    assert seeds == [10, 12, 14]  # seed + first row index of the batch
    seeds.clear()
    gens = generate_batched(model, tok, prompts, DecodeConfig(temperature=0.0, seed=10), batch_size=2)
    assert seeds == [10, 10, 10] and len(gens) == 5 and all(g.nfe >= 1 for g in gens)


@needs_he
def test_cli_canonical_check_and_errors(tmp_path, capsys):
    out = tmp_path / "canon"
    assert remask(["eval", "humaneval-infilling", "--split", "random-span-light", "--solutions", "canonical",
                   "--limit", "10", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["summary"]["pass@1"] == 1.0
    assert remask(["eval", "humaneval-infilling", "--model", str(tmp_path / "missing"), "--limit", "1"]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        remask(["eval", "humaneval-infilling", "--split", "no-such-split"])
    assert remask(["eval", "humaneval-infilling", "--k", "1,10", "--samples", "5", "--model", "x"]) == 2
    assert "needs --samples 10" in capsys.readouterr().err


@needs_he
def test_cli_speed_and_sweep(test_model_dir, tmp_path):
    out = tmp_path / "speed"
    assert remask(["eval", "speed", "--split", "single-line", "--limit", "2", "--model", str(test_model_dir),
                   "--max-new-tokens", "4", "--fixed-length", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())["summary"]
    assert s["ar"]["tokens"] == s["diffusion"]["tokens"] == 8  # --fixed-length: exactly 4 per task
    assert s["ar"]["tokens_per_forward"] <= 1.0 and s["diffusion"]["forwards"] >= 1
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["mode"] for r in rows) == ["ar", "ar", "diffusion", "diffusion"]

    out = tmp_path / "sweep"
    assert remask(["eval", "sweep", "--split", "single-line", "--limit", "1", "--model", str(test_model_dir),
                   "--thresholds", "0.5,0.9", "--max-new-tokens", "4", "--out", str(out), "--quiet"]) == 0
    points = json.loads((out / "summary.json").read_text())["points"]
    assert [(p["mode"], p["threshold"]) for p in points] == [("diffusion", 0.5), ("diffusion", 0.9), ("ar", None)]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {f.name for f in out.glob("samples-*.jsonl")} == {"samples-tau0.5.jsonl", "samples-tau0.9.jsonl",
                                                             "samples-ar.jsonl"}
