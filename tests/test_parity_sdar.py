"""Parity with SDAR's published ``block_diffusion_generate`` (generate.py + modeling_sdar.py), run as published.

The reference (../shared/reference/sdar/, MIT / Apache-2.0) targets transformers 4.52.4, installed into a cache
folder with ``pip install --target``; it runs in a subprocess with that folder first on the path
(tests/reference/sdar_runner.py, which stands in for flash-attn's two functions with the same maths). remask
decodes the same small random checkpoints, written in SDAR's published layout, with its own block decoder and
KV cache on transformers' Qwen3 body, greedily in float32: token ids must be equal over a grid of prompt lengths,
block sizes, steps and both strategies, one prompt at a time and in a batch. Each published bug we deviate from
has its own test: temperature 0 (no greedy path), a partial prompt block overwritten, flash-attn required.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reference import transformers_at

from model import DecodeConfig, generate, load_checkpoint
from model.families import family_of
from model.families.testing import write_family_checkpoint

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "sdar"
RUNNER = Path(__file__).resolve().parent / "reference" / "sdar_runner.py"
TRANSFORMERS_VERSION = "4.52.4"

BLOCKS = (4, 8)
PROMPT_LENGTHS = (2, 3, 4, 5, 6, 7, 9, 11)
# (strategy, steps per block or "B", threshold)
SCHEDULES = (("low_confidence_dynamic", "B", 0.85), ("low_confidence_dynamic", 2, 0.5),
             ("low_confidence_static", "B", None), ("low_confidence_static", 2, None))
GEN_LENGTHS = (8, 12, 16)
CHECKPOINTS = ((22, 3.0),)  # (seed, EOS row boost): some answers stop early, others run to the length


def reference_env() -> Path:
    """transformers==4.52.4 and einops in a cache folder; skip only when they cannot be installed."""
    if not (REFERENCE / "generate.py").is_file():
        pytest.skip(f"the published reference is not at {REFERENCE}")
    return transformers_at(TRANSFORMERS_VERSION, ("einops",))


def run_reference(target: Path, job: dict) -> dict:
    job = {"reference": str(REFERENCE), **job}
    env = {**os.environ, "PYTHONPATH": str(target), "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, str(RUNNER)], input=json.dumps(job), capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _cases(ids: list[int], mask_id: int, eos_id: int) -> list[dict]:
    cases = []
    for B in BLOCKS:
        for si, (strategy, steps, tau) in enumerate(SCHEDULES):
            for L in PROMPT_LENGTHS:
                cases.append(dict(prompt=ids[:L], block_length=B, steps=B if steps == "B" else steps,
                                  gen_length=GEN_LENGTHS[(si + L) % len(GEN_LENGTHS)], strategy=strategy,
                                  threshold=tau, mask_id=mask_id, eos_id=eos_id))
    return cases


def _config(c: dict) -> DecodeConfig:
    fam = family_of_name("sdar")
    return DecodeConfig(max_new_tokens=c["gen_length"], block_size=c["block_length"], threshold=c["threshold"],
                        steps_per_block=c["steps"], commit_rule=fam.commit_rule, align_canvas=fam.align_canvas)


def family_of_name(name: str):
    from model.families import get

    return get(name)


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    target = reference_env()
    out = []
    for seed, boost in CHECKPOINTS:
        folder = write_family_checkpoint(tmp_path_factory.mktemp("sdar") / f"sdar-{seed}", "sdar", seed=seed,
                                         hidden=64, layers=2, boost={"<|endoftext|>": boost})
        model, tok = load_checkpoint(folder)
        ids = tok.encode("def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n")
        cases = _cases(ids, model.remask_config.mask_token_id, model.remask_config.eos_token_id)
        res = run_reference(target, {"folder": str(folder), "cases": cases})
        assert res["transformers"] == TRANSFORMERS_VERSION
        keep = [not o for o in res["overwrote"]]
        out.append((model, cases, res["tokens"], keep, folder))
    return out


def _mismatches(cases, got, want, keep) -> list[str]:
    return [f"L={len(c['prompt'])} B={c['block_length']} steps={c['steps']} {c['strategy']} tau={c['threshold']} "
            f"gen={c['gen_length']}: {g} != reference {w}"
            for c, g, w, k in zip(cases, got, want, keep, strict=True) if k and g != w]


def test_grid_covers_early_stops_and_partial_prompt_blocks(parity) -> None:
    stops = sum(len(t) < c["gen_length"] for _, cases, toks, *_ in parity for c, t in zip(cases, toks, strict=True))
    compared = sum(sum(p[3]) for p in parity)
    unaligned = sum(len(c["prompt"]) % c["block_length"] != 0 and k for _, cases, _, keep, _ in parity
                    for c, k in zip(cases, keep, strict=True))
    assert stops >= 3 and compared >= 35 and unaligned >= 20


def test_block_decoder_gives_the_reference_tokens(parity) -> None:
    """Every case where the published code never wrote over a committed position (the others: the deviation
    test below)."""
    for model, cases, want, keep, _ in parity:
        got = [generate(model, [c["prompt"]], _config(c)).tokens[0] for c in cases]
        bad = _mismatches(cases, got, want, keep)
        assert not bad, f"{len(bad)} mismatches:\n" + "\n".join(bad[:10])


def test_batched_rows_of_different_lengths_give_the_reference_tokens(parity) -> None:
    for model, cases, want, keep, _ in parity:
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(cases):
            groups.setdefault((c["block_length"], c["steps"], c["strategy"], c["threshold"], c["gen_length"]),
                              []).append(i)
        for idx in groups.values():
            res = generate(model, [cases[i]["prompt"] for i in idx], _config(cases[idx[0]]))
            bad = _mismatches([cases[i] for i in idx], res.tokens, [want[i] for i in idx], [keep[i] for i in idx])
            assert not bad, "\n".join(bad[:10])


def test_deviation_partial_prompt_block_is_never_overwritten(parity) -> None:
    """Published: top-k over the whole block picks non-mask positions when k exceeds the masks left, and writes
    its proposal there: a prompt token of a partial first block is overwritten (e.g. P = 5, B = 4, 1 step per
    block), and so is a token committed earlier in the block. remask commits only masks (k is capped at the masks
    left), so the prompt is what was given and a committed token stays."""
    model, cases, _, _, folder = parity[0]
    target = reference_env()
    prompt = cases[-1]["prompt"][:5]
    c = dict(prompt=prompt, block_length=4, steps=1, gen_length=8, strategy="low_confidence_static", threshold=None,
             mask_id=model.remask_config.mask_token_id, eos_id=model.remask_config.eos_token_id)
    res = run_reference(target, {"folder": str(folder), "cases": [c]})
    assert res["prompt_intact"] == [False]
    assert any(not k for p in parity for k in p[3])  # it happens across the grid too
    ours = generate(model, [prompt], _config(c))
    assert len(ours.tokens[0]) > 0  # decoded; the prompt is not part of the canvas we write


def test_deviation_temperature_zero_is_greedy(parity) -> None:
    """Published: logits / temperature at 0 gives NaN probabilities and multinomial fails. remask's temperature 0
    is argmax (the runner's greedy stand-in is what the parity above compares against)."""
    res = run_reference(reference_env(), {"probe": "temperature-0", "folder": "", "cases": []})
    assert res["error"] and "nan" in res["error"]
    model, cases, _, _, folder = parity[0]
    a = generate(model, [cases[0]["prompt"]], _config(cases[0])).tokens[0]
    b = generate(model, [cases[0]["prompt"]], _config(cases[0])).tokens[0]
    assert a == b and a


def test_deviation_flash_attn_is_not_needed(parity) -> None:
    """Published: modeling_sdar.py imports flash_attn unconditionally, so it does not load without it. remask runs
    the folder on transformers' Qwen3 with plain attention (this machine has no flash-attn)."""
    res = run_reference(reference_env(), {"probe": "no-flash-attn", "folder": "", "cases": []})
    assert res["error"] == "ModuleNotFoundError: No module named 'flash_attn'"
    model = parity[0][0]
    assert type(model).__name__ == "Qwen3ForCausalLM" and family_of(model).name == "sdar"
