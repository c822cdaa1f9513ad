"""The approximate dual-cache mode of the full-attention families, DreamOn included.

DreamOn's middle grows (expand) and shrinks (EOS-as-delete) while it is denoised, which moves every column right
of the edit: cached keys would then sit at the wrong columns and positions, so the cache is refreshed by a full
forward on the step after every length change and reused otherwise. These tests count forwards (not time).
"""

from __future__ import annotations

import pytest

from model import load_checkpoint
from model.families.dream_decode import DreamConfig, dreamon_infill
from model.families.run import infill_generate
from model.families.testing import write_family_checkpoint

TEXT = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"
# (prefix tokens, suffix tokens, min_gen_len, max_gen_len, steps)
CASES = [(2, 3, 2, 8, 24), (8, 6, 4, 16, 48), (3, 9, 4, 16, 48), (6, 4, 2, 12, 40)]


@pytest.fixture(scope="module")
def dreamon(tmp_path_factory):
    # Boosted expand / EOS rows make a random model grow and shrink its middles (as in test_parity_dream.py).
    folder = write_family_checkpoint(tmp_path_factory.mktemp("dreamon") / "dreamon", "dreamon", seed=41, hidden=64,
                                     boost={"<|expand|>": 2.5, "<|endoftext|>": 2.0})
    model, tok = load_checkpoint(folder)
    ids = tok.encode(TEXT)
    jobs = [([tok.bos_id] + ids[:p], ids[10: 10 + s], lo, hi, steps) for p, s, lo, hi, steps in CASES]
    return model, jobs


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    folder = write_family_checkpoint(tmp_path_factory.mktemp("dream") / "dream", "dream", seed=5, hidden=32, layers=1)
    return load_checkpoint(folder)


def _run(model, job, **kw):
    """DreamOn on one job, recording each forward's width and the middle's length after each step."""
    prefix, suffix, lo, hi, steps = job
    widths: list[int] = []
    lengths: list[int] = []
    hook = model.model.register_forward_pre_hook(lambda mod, a, k: widths.append(k["input_ids"].shape[1]),
                                                 with_kwargs=True)
    try:
        res = dreamon_infill(model, prefix, suffix, DreamConfig(min_gen_len=lo, max_gen_len=hi, steps=steps, **kw),
                             callback=lambda step, middle: lengths.append(len(middle)))
    finally:
        hook.remove()
    return res, widths, lengths, len(prefix) + hi + len(suffix) + 1


def test_dreamon_dual_cache_is_off_by_default_and_exact_at_refresh_1(dreamon) -> None:
    model, jobs = dreamon
    assert DreamConfig().cache == "none"
    grew = shrank = False
    for job in jobs:
        exact, _, lengths, _ = _run(model, job)
        dual, widths, _, full_width = _run(model, job, cache="dual", refresh=1)
        assert dual.generated == exact.generated and dual.extra["middle_len"] == exact.extra["middle_len"]
        assert dual.logprobs == exact.logprobs
        assert dual.nfe == exact.nfe == dual.extra["full_forwards"] == len(widths)
        assert all(w == full_width for w in widths)
        lo = job[2]
        grew |= max(lengths) > lo
        shrank |= min(lengths) < lo
    # The cases exercise both directions, so the refresh-on-shift path is what refresh 1 was compared through.
    assert grew and shrank


def test_dreamon_dual_cache_refreshes_after_every_length_change_and_forwards_less(dreamon) -> None:
    model, jobs = dreamon
    saved = 0
    for job in jobs:
        res, widths, lengths, full_width = _run(model, job, cache="dual", refresh=1000)
        assert model.remask_config.mask_token_id not in res.generated[0]
        assert len(widths) == res.nfe == len(lengths)
        full = [w == full_width for w in widths]
        assert res.extra["full_forwards"] == sum(full)
        # Forward 0 is full; forward k > 0 is full exactly when step k - 1 changed the middle's length (with
        # refresh 1000 nothing else triggers one); every other forward covers only the masked region.
        lo = job[2]
        changed = [a != b for a, b in zip([lo, *lengths], lengths, strict=False)]
        assert full == [True] + changed[: len(full) - 1]
        assert all(w < full_width for w, f in zip(widths, full, strict=True) if not f)
        saved += res.nfe - sum(full)
    assert saved > 0


def test_dreamon_dual_cache_with_a_refresh_interval_counts_full_forwards(dreamon) -> None:
    model, jobs = dreamon
    job = jobs[1]
    res, widths, lengths, full_width = _run(model, job, cache="dual", refresh=3)
    full = [w == full_width for w in widths]
    # No run of more than refresh - 1 partial forwards, and fewer full forwards than forwards.
    run = longest = 0
    for f in full:
        run = 0 if f else run + 1
        longest = max(longest, run)
    assert longest <= 2 and sum(full) < len(full) == res.nfe


@pytest.mark.parametrize("family", ["dream", "dreamon"])
def test_infill_generate_passes_the_cache_choice_through(dream, dreamon, family) -> None:
    if family == "dream":
        model, tok = dream
        ids = tok.encode(TEXT)
        jobs = [(ids[:6], ids[12:18]), (ids[:9], ids[14:16])]
    else:
        model, djobs = dreamon
        jobs = [(p[1:], s) for p, s, *_ in djobs[:2]]
    exact = infill_generate(model, jobs, max_new_tokens=12)
    assert exact.extra["full_forwards"] == exact.nfe
    same = infill_generate(model, jobs, max_new_tokens=12, cache="dual", refresh=1)
    assert same.tokens == exact.tokens and same.nfe == exact.nfe
    fast = infill_generate(model, jobs, max_new_tokens=12, cache="dual", refresh=4)
    assert fast.extra["full_forwards"] < fast.nfe
    assert len(fast.tokens) == len(jobs)


def test_the_default_model_in_dreams_layout_loads_as_dream_and_computes_the_same(tmp_path) -> None:
    """The tiny trained Dream (benchmarks/train_tiny_dream.py) starts from this: a Qwen2 body with zero q/k/v biases
    computes what the Llama body does, and the folder is read as a Dream checkpoint with Dream's special tokens."""
    import torch

    from model import DEFAULT_MODEL_DIR
    from model.families.testing import write_dream_from
    from model.network import forward_logits

    folder = write_dream_from(DEFAULT_MODEL_DIR, tmp_path / "dream")
    model, tok = load_checkpoint(folder, dtype=torch.float32)
    ref, ref_tok = load_checkpoint(DEFAULT_MODEL_DIR, dtype=torch.float32)
    cfg = model.remask_config
    assert (cfg.family, cfg.body, cfg.logit_shift) == ("dream", "qwen2", True)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert tok.mask_id == cfg.mask_token_id == ref_tok.mask_id and cfg.eos_token_id == ref_tok.eos_id
    assert tok.token_str(cfg.mask_token_id) == "<|mask|>" and tok.token_str(cfg.eos_token_id) == "<|endoftext|>"
    assert tok.encode(TEXT) == ref_tok.encode(TEXT)
    x = torch.tensor([ref_tok.encode(TEXT)])
    pos = torch.arange(x.shape[1])[None]
    full = torch.ones(1, x.shape[1], x.shape[1], dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(model, x, pos, full), forward_logits(ref, x, pos, full))
