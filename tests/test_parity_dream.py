"""Parity with the Dream family's published decoders, run as published: Dream's ``diffusion_generate``
(Dream-v0, Dream-Coder, DiffuCoder) and DreamOn's expand/delete infilling (the official eval generator).

The references (../shared/reference/dream/, Apache-2.0) target transformers 4.46.2, installed into a cache folder
with ``pip install --target``; they run in a subprocess with that folder first on the path
(tests/reference/dream_runner.py). remask decodes the same small random checkpoints, written in the published
layout, on transformers' Qwen2 body, greedily in float32. Token ids must be equal over a grid of prompt lengths,
steps, lengths, algorithms (``origin`` draws random numbers even at temperature 0: no parity) and top-k, including
a left-padded batch; DreamOn's middles must be equal, length included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reference import transformers_at

from model import load_checkpoint
from model.families.dream_decode import DreamConfig, dream_generate, dreamon_infill
from model.families.testing import write_family_checkpoint

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "dream"
RUNNER = Path(__file__).resolve().parent / "reference" / "dream_runner.py"
TRANSFORMERS_VERSION = "4.46.2"
ALGS = ("maskgit_plus", "topk_margin", "entropy")
TEXT = "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs)\n"


def reference_env() -> Path:
    """transformers==4.46.2 (and omegaconf, which DreamOn's eval module imports) in a cache folder; skip only
    when they cannot be installed."""
    if not (REFERENCE / "generation_utils.py").is_file():
        pytest.skip(f"the published reference is not at {REFERENCE}")
    return transformers_at(TRANSFORMERS_VERSION, ("omegaconf",))


def run_reference(folder: Path, mode: str, cases: list[dict]) -> list:
    job = {"reference": str(REFERENCE), "folder": str(folder), "mode": mode, "cases": cases}
    env = {**os.environ, "PYTHONPATH": str(reference_env()), "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, str(RUNNER)], input=json.dumps(job), capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["transformers"] == TRANSFORMERS_VERSION
    return res["out"]


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    reference_env()
    folder = write_family_checkpoint(tmp_path_factory.mktemp("dream") / "dream", "dream", seed=31, hidden=64)
    model, tok = load_checkpoint(folder)
    ids = tok.encode(TEXT)
    cases = []
    for ai, alg in enumerate(ALGS):
        for li, L in enumerate((1, 5, 10)):
            for si, (steps, new) in enumerate(((8, 8), (4, 8), (5, 12))):
                cases.append(dict(rows=[ids[:L]], steps=steps, max_new_tokens=new, alg=alg,
                                  top_k=50 if (ai + li + si) % 2 else None))
    for alg in ALGS:  # left-padded batches: rows of different lengths
        for steps, new in ((8, 8), (6, 12)):
            cases.append(dict(rows=[ids[:3], ids[:9], ids[:6]], steps=steps, max_new_tokens=new, alg=alg, top_k=50))
    return model, cases, run_reference(folder, "dream", cases)


def test_dream_grid_gives_the_reference_tokens(dream) -> None:
    model, cases, want = dream
    bad = []
    for c, w in zip(cases, want, strict=True):
        got = dream_generate(model, c["rows"], DreamConfig(steps=c["steps"], max_new_tokens=c["max_new_tokens"],
                                                           alg=c["alg"], top_k=c["top_k"])).generated
        if got != w:
            bad.append(f"{c['alg']} lens={[len(r) for r in c['rows']]} steps={c['steps']} new={c['max_new_tokens']} "
                       f"top_k={c['top_k']}: {got} != reference {w}")
    assert not bad, f"{len(bad)} of {len(cases)} differ:\n" + "\n".join(bad[:8])
    assert sum(len(c["rows"]) > 1 for c in cases) >= 6


def test_left_padded_rows_decode_as_they_would_alone(dream) -> None:
    """The batch pads on the left (pads attend to nothing real, positions count real tokens only): every row of
    a batch gets what it gets alone. (The published code agrees: the grid above holds its batches.)"""
    model, cases, _ = dream
    c = next(c for c in cases if len(c["rows"]) > 1)
    cfg = DreamConfig(steps=c["steps"], max_new_tokens=c["max_new_tokens"], alg=c["alg"], top_k=c["top_k"])
    batch = dream_generate(model, c["rows"], cfg).generated
    alone = [dream_generate(model, [r], cfg).generated[0] for r in c["rows"]]
    # Not always equal in the published algorithm: k per step is the batch's average mask count. Equal here
    # because every row has the same number of masks.
    assert batch == alone


@pytest.fixture(scope="module")
def dreamon(tmp_path_factory):
    reference_env()
    folder = write_family_checkpoint(tmp_path_factory.mktemp("dreamon") / "dreamon", "dreamon", seed=41, hidden=64,
                                     boost={"<|expand|>": 2.5, "<|endoftext|>": 2.0})
    model, tok = load_checkpoint(folder)
    ids = tok.encode(TEXT)
    expand = model.remask_config.extra["expand_token_id"]
    cases = []
    for ai, alg in enumerate(ALGS):
        for pi, (p, s) in enumerate(((2, 3), (8, 6), (3, 9))):
            for mi, (lo, hi, steps) in enumerate(((2, 8, 24), (4, 16, 48))):
                cases.append(dict(prefix=[tok.bos_id] + ids[:p], suffix=ids[10: 10 + s], min_gen_len=lo,
                                  max_gen_len=hi, steps=steps, alg=alg, expand_id=expand,
                                  top_k=None if (ai + pi + mi) % 2 else 50))
    return model, cases, run_reference(folder, "dreamon", cases)


def test_dreamon_middles_and_their_lengths_equal_the_reference(dreamon) -> None:
    model, cases, want = dreamon
    bad, lengths = [], []
    for c, w in zip(cases, want, strict=True):
        res = dreamon_infill(model, c["prefix"], c["suffix"], DreamConfig(
            steps=c["steps"], alg=c["alg"], min_gen_len=c["min_gen_len"], max_gen_len=c["max_gen_len"],
            top_k=c["top_k"]))
        lengths.append((c["min_gen_len"], w["middle_len"]))
        if res.generated[0] != w["middle"] or res.extra["middle_len"] != w["middle_len"] \
                or res.sequences[0] != w["window"]:
            bad.append(f"{c['alg']} P={len(c['prefix'])} S={len(c['suffix'])} min={c['min_gen_len']} "
                       f"max={c['max_gen_len']}: {res.generated[0]} != reference {w['middle']}")
    assert not bad, f"{len(bad)} of {len(cases)} differ:\n" + "\n".join(bad[:8])
    # The grid exercises both directions: middles that grew (expand) and shrank (EOS-as-delete).
    assert any(n > lo for lo, n in lengths) and any(n < lo for lo, n in lengths)
