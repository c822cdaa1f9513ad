"""Parity with Stable-DiffCoder's published ``generate_block``, run as it is published.

The reference (../shared/reference/stable-diffcoder/modeling_stable_diffcoder.py, MIT) targets transformers
5.3.0, so that version is installed into a cache folder (``pip install --target``) and the reference runs in
a subprocess with it first on the path; remask keeps the installed transformers. Both decode small random
checkpoints written in the published folder layout, greedily in float32, and every remask decode path must
give the reference's token ids: the cached decoder with the fused commit on and off, the uncached path,
the prompt cache, a batch of rows of different prompt lengths, rows that join a running batch between
steps (the server's continuous batching), and ``remask generate --json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import transformers_at

from model import DecodeConfig, generate, load_checkpoint, reference_generate
from model.cache import PromptCache
from model.decoder import BlockDecoder
from model.testing import make_test_tokenizer, write_stable_diffcoder_folder

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "stable-diffcoder"
RUNNER = Path(__file__).resolve().parent / "reference" / "sdc_runner.py"
TRANSFORMERS_VERSION = "5.3.0"

BLOCKS = (2, 4, 8)
PROMPT_LENGTHS = range(1, 18)
# (steps per block or None, threshold or None): fixed schedules of 1, 2 and B steps, thresholds 0.5 and 0.9.
SCHEDULES = ((1, None), (2, None), ("B", None), (None, 0.5), (None, 0.9))
GEN_LENGTHS = (8, 16, 24, 32)
# (seed, EOS row scale, layout): the larger scales make answers stop early, some inside a cut last block; the
# second folder has the older release's config (LlamaForCausalLM + an auto_map naming SeedDiffcoderForCausalLM).
CHECKPOINTS = ((12, 3.0, "current"), (13, 6.0, "older"))


def _reference_env() -> Path:
    """transformers==5.3.0 (with what it needs) in a cache folder; skip only when it cannot be installed."""
    if not (REFERENCE / "modeling_stable_diffcoder.py").is_file():
        pytest.skip(f"the published reference is not at {REFERENCE}")
    return transformers_at(TRANSFORMERS_VERSION)


def _cases(ids: list[int]) -> list[dict]:
    """The grid: prompt lengths (prefixes of ``ids``) x block sizes x schedules."""
    cases = []
    for B in BLOCKS:
        for si, (steps, threshold) in enumerate(SCHEDULES):
            gen = GEN_LENGTHS[(si + B) % len(GEN_LENGTHS)]
            per_block = B if steps == "B" else (steps or B)
            # A third of the prompt lengths per (B, schedule), rotating, so that the grid holds every length
            # with every block size and the suite stays fast.
            for L in (L for L in PROMPT_LENGTHS if (L + si + B) % 3 == 0):
                cases.append(dict(prompt=ids[:L], block_length=B, gen_length=gen, threshold=threshold,
                                  steps=per_block * (gen // B), steps_per_block=None if threshold else per_block,
                                  mask_id=5, eos_id=2))
    return cases


def _config(c: dict, **kw) -> DecodeConfig:
    return DecodeConfig(max_new_tokens=c["gen_length"], block_size=c["block_length"], threshold=c["threshold"],
                        steps_per_block=c["steps_per_block"], **kw)


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """Per checkpoint: (folder, cases, the reference's tokens)."""
    target = _reference_env()
    tok = make_test_tokenizer()
    ids = [tok.bos_id] + tok.encode("def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n")
    assert len(ids) >= max(PROMPT_LENGTHS)
    out = []
    for seed, boost, layout in CHECKPOINTS:
        folder = tmp_path_factory.mktemp("sdc") / f"sdc-{seed}"
        write_stable_diffcoder_folder(folder, seed=seed, dtype=torch.float32, eos_boost=boost, tokenizer=tok,
                                      layout=layout)
        cases = _cases(ids)
        job = json.dumps({"reference": str(REFERENCE), "folder": str(folder), "cases": cases})
        env = {**os.environ, "PYTHONPATH": str(target), "TRANSFORMERS_VERBOSITY": "error"}
        r = subprocess.run([sys.executable, str(RUNNER)], input=job, capture_output=True, text=True, env=env,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["transformers"] == TRANSFORMERS_VERSION
        out.append((folder, cases, res["tokens"]))
    return out


def _mismatches(cases, got, want) -> list[str]:
    return [f"L={len(c['prompt'])} B={c['block_length']} gen={c['gen_length']} steps/block={c['steps_per_block']} "
            f"tau={c['threshold']}: {g} != reference {w}"
            for c, g, w in zip(cases, got, want, strict=True) if g != w]


def test_grid_covers_early_stops_and_cut_blocks(parity) -> None:
    """The grid exercises what differed: unaligned prompts and answers that stop before the length."""
    stops = sum(len(t) < c["gen_length"] for _, cases, toks in parity for c, t in zip(cases, toks, strict=True))
    unaligned = sum(len(c["prompt"]) % c["block_length"] != 0 for _, cases, _ in parity for c in cases)
    lengths = {(len(c["prompt"]), c["block_length"]) for _, cases, _ in parity for c in cases}
    assert stops >= 10 and unaligned >= 60 and len(lengths) == len(PROMPT_LENGTHS) * len(BLOCKS)


def test_cached_decoder_gives_the_reference_tokens(parity) -> None:
    for folder, cases, want in parity:
        model, _ = load_checkpoint(folder)
        got = [generate(model, [c["prompt"]], _config(c)).tokens[0] for c in cases]
        assert not _mismatches(cases, got, want), "\n".join(_mismatches(cases, got, want)[:10])


def test_unfused_and_uncached_paths_give_the_reference_tokens(parity) -> None:
    """The commit forward on its own (fuse_commit off) and the uncached path, on every other case."""
    for folder, cases, want in parity:
        model, _ = load_checkpoint(folder)
        sub = range(0, len(cases), 2)
        cs, ws = [cases[i] for i in sub], [want[i] for i in sub]
        got = [generate(model, [c["prompt"]], _config(c, fuse_commit=False)).tokens[0] for c in cs]
        assert not _mismatches(cs, got, ws), "\n".join(_mismatches(cs, got, ws)[:10])
        got = [reference_generate(model, c["prompt"], _config(c)) for c in cs]
        assert not _mismatches(cs, got, ws), "\n".join(_mismatches(cs, got, ws)[:10])


def test_prompt_cache_gives_the_reference_tokens(parity) -> None:
    """Prompts that grow a token at a time through one cache (reused whole blocks), as an editor does."""
    for folder, cases, want in parity:
        model, _ = load_checkpoint(folder)
        pc = PromptCache()
        order = sorted(range(len(cases)), key=lambda i: (cases[i]["block_length"], len(cases[i]["prompt"])))[1::2]
        cs, ws = [cases[i] for i in order], [want[i] for i in order]
        got = [generate(model, [c["prompt"]], _config(c), prompt_cache=pc).tokens[0] for c in cs]
        assert not _mismatches(cs, got, ws), "\n".join(_mismatches(cs, got, ws)[:10])


def test_batched_rows_of_different_lengths_give_the_reference_tokens(parity) -> None:
    for folder, cases, want in parity:
        model, _ = load_checkpoint(folder)
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(cases):
            groups.setdefault((c["block_length"], c["gen_length"], c["threshold"], c["steps_per_block"]), []).append(i)
        for idx in groups.values():
            res = generate(model, [cases[i]["prompt"] for i in idx], _config(cases[idx[0]]))
            bad = _mismatches([cases[i] for i in idx], res.tokens, [want[i] for i in idx])
            assert not bad, "\n".join(bad[:10])


def test_rows_joining_a_running_batch_give_the_reference_tokens(parity) -> None:
    """The server's continuous batching: rows join between denoising steps (a new one every other step, shorter
    and longer prompts, so the KV pool grows and slots freed by finished rows are reused), each with its own
    schedule, length and threshold; two thirds come through per-client prompt caches. Every row must still
    decode exactly as the reference decodes it alone."""
    for folder, cases, want in parity:
        model, _ = load_checkpoint(folder)
        for B in BLOCKS:
            idx = [i for i, c in enumerate(cases) if c["block_length"] == B]
            dec = BlockDecoder(model, DecodeConfig(block_size=B))
            caches = [PromptCache(), PromptCache(), None]
            got: dict[int, list[int]] = {}
            live: dict[int, object] = {}
            queue = list(idx)
            joined = 0
            while queue or dec.rows:
                if queue and (dec.steps % 2 == 0 or not dec.rows):
                    i = queue.pop(0)
                    (row,) = dec.add([cases[i]["prompt"]], [_config(cases[i])],
                                     prompt_caches=[caches[joined % 3]])
                    live[i] = row
                    joined += 1
                if dec.rows:
                    dec.step()
                for i, row in list(live.items()):
                    if row.done:
                        got[i] = dec.result([row]).tokens[0]
                        del live[i]
            cs, ws, gs = [cases[i] for i in idx], [want[i] for i in idx], [got[i] for i in idx]
            assert not _mismatches(cs, gs, ws), "\n".join(_mismatches(cs, gs, ws)[:10])
            assert dec.pool.keys[0].shape[0] < len(idx)  # freed slots were reused


def test_generate_cli_json_gives_the_reference_tokens(parity) -> None:
    """``remask generate --json`` on the published folder: a fixed schedule and a threshold, unaligned prompts."""
    folder, cases, want = parity[-1]
    tok = make_test_tokenizer()
    picked: dict[bool, int] = {}
    for i, c in enumerate(cases):
        prompt = tok.decode(c["prompt"][1:])
        if c["block_length"] == 4 and len(c["prompt"]) % 4 and [tok.bos_id] + tok.encode(prompt) == c["prompt"]:
            picked[c["threshold"] is None] = i  # the text of these ids tokenizes back to them
    assert len(picked) == 2
    for i in picked.values():
        c = cases[i]
        flags = ["--threshold", str(c["threshold"])] if c["threshold"] else ["--steps", str(c["steps_per_block"])]
        r = subprocess.run([sys.executable, "-m", "ui.cli", "generate", "--model", str(folder), "--json",
                            "--block-size", "4", "--max-new-tokens", str(c["gen_length"]), *flags,
                            tok.decode(c["prompt"][1:])], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", r.stderr  # no library warning either
        assert json.loads(r.stdout)["token_ids"] == want[i], c
