"""Model core: masks, cached vs uncached decoding, commit rules, batching, checkpoints."""

from __future__ import annotations

import json
import random

import pytest
import torch

from model import (
    CheckpointError,
    DecodeCancelled,
    DecodeConfig,
    build_model,
    forward_logits,
    generate,
    load_checkpoint,
    preset,
    reference_generate,
    save_checkpoint,
)
from model.cache import BlockKVCache, PromptCache
from model.masks import bd3_positions, bd3_training_mask, block_causal_mask
from model.testing import make_test_tokenizer, write_stable_diffcoder_folder


def loop_block_causal(n: int, B: int) -> torch.Tensor:
    m = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            m[q, k] = (k // B) <= (q // B)
    return m


def loop_bd3(L: int, B: int) -> torch.Tensor:
    """Plain reference: which keys of [x_t ; x_0] each query may see."""
    m = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for q in range(2 * L):
        for k in range(2 * L):
            q_noisy, k_noisy = q < L, k < L
            qb, kb = (q % L) // B, (k % L) // B
            if q_noisy and k_noisy:
                m[q, k] = qb == kb
            elif q_noisy and not k_noisy:
                m[q, k] = kb < qb
            elif not q_noisy and not k_noisy:
                m[q, k] = kb <= qb
    return m


@pytest.mark.parametrize("n,B", [(1, 4), (7, 4), (16, 4), (12, 1), (10, 3), (33, 32)])
def test_block_causal_mask_matches_loop(n: int, B: int) -> None:
    pos = torch.arange(n)
    assert torch.equal(block_causal_mask(pos, pos, B), loop_block_causal(n, B))


@pytest.mark.parametrize("L,B", [(8, 4), (12, 4), (6, 2), (5, 1), (9, 3)])
def test_bd3_training_mask_matches_loop(L: int, B: int) -> None:
    assert torch.equal(bd3_training_mask(L, B), loop_bd3(L, B))


def test_bd3_clean_stream_equals_inference_mask() -> None:
    L, B = 16, 4
    m = bd3_training_mask(L, B)
    assert torch.equal(m[L:, L:], block_causal_mask(torch.arange(L), torch.arange(L), B))
    assert not m[L:, :L].any()  # clean tokens never see noisy ones
    assert torch.equal(bd3_positions(L), torch.cat([torch.arange(L), torch.arange(L)]))


def test_bd3_forward_noisy_block_equals_cached_inference() -> None:
    """Training layout logits for a noisy block = the cached decoder's logits for that block."""
    torch.manual_seed(0)
    cfg = preset("test")
    m = build_model(cfg, dtype=torch.float64)
    L, B = 12, 4
    x0 = torch.randint(10, 1000, (1, L))
    xt = x0.clone()
    xt[0, 5] = xt[0, 7] = xt[0, 8] = cfg.mask_token_id
    ids = torch.cat([xt, x0], 1)
    logits = forward_logits(m, ids, bd3_positions(L)[None], bd3_training_mask(L, B)[None])[:, :L]
    # Cached: prefill clean blocks, then the noisy block alone over the cache.
    for blk in range(L // B):
        s = blk * B
        cache = BlockKVCache(cfg.num_hidden_layers, 1, L)
        if s:
            pos = torch.arange(s)[None]
            forward_logits(m, x0[:, :s], pos, block_causal_mask(pos, pos, B), cache=cache, kv_len=s)
        pos = torch.arange(s, s + B)[None]
        kpos = torch.arange(s + B)[None]
        got = forward_logits(m, xt[:, s:s + B], pos, block_causal_mask(pos, kpos, B), cache=cache, kv_len=s + B)
        assert torch.allclose(got, logits[:, s:s + B], atol=1e-10)


@pytest.fixture(scope="module")
def model64():
    return build_model(preset("test"), dtype=torch.float64, seed=1)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("threshold", [None, 0.9, 0.02])
@pytest.mark.parametrize("plen", [1, 3, 4, 9])
def test_cached_equals_uncached(model64, threshold, plen, fuse) -> None:
    rng = random.Random(plen)
    prompt = [rng.randrange(10, 1000) for _ in range(plen)]
    cfg = DecodeConfig(max_new_tokens=11, threshold=threshold, fuse_commit=fuse)
    assert generate(model64, [prompt], cfg).tokens[0] == reference_generate(model64, prompt, cfg)


def test_fused_commit_saves_one_forward_per_block(model64) -> None:
    prompt = [40, 41, 42, 43, 44]
    plain = generate(model64, [prompt], DecodeConfig(max_new_tokens=16, threshold=None, stop_at_eos=False,
                                                     fuse_commit=False))
    fused = generate(model64, [prompt], DecodeConfig(max_new_tokens=16, threshold=None, stop_at_eos=False,
                                                     fuse_commit=True))
    assert fused.tokens == plain.tokens
    blocks_committed = (5 + 16) // 4 - 1  # blocks finished before the last one
    assert plain.nfe - fused.nfe == blocks_committed


def test_cached_equals_uncached_sampling_and_steps(model64) -> None:
    prompt = [17, 300, 4, 99, 512]
    for cfg in (DecodeConfig(max_new_tokens=10, threshold=None, steps_per_block=2, temperature=0.8, seed=3),
                DecodeConfig(max_new_tokens=10, threshold=0.5, confidence="margin"),
                DecodeConfig(max_new_tokens=10, threshold=None, confidence="entropy", block_size=8)):
        assert generate(model64, [prompt], cfg).tokens[0] == reference_generate(model64, prompt, cfg)


def test_prompt_cache_reuses_shared_blocks_exactly(model64) -> None:
    """Keystroke after keystroke, a prompt that only grows (or changes late) reuses its shared whole blocks,
    and the tokens and log-probabilities are those of a fresh prefill."""
    rng = random.Random(5)
    base = [rng.randrange(10, 1000) for _ in range(30)]
    pc = PromptCache()
    cfg = DecodeConfig(max_new_tokens=9, threshold=0.5)
    prompts = [base[:21], base[:22], base[:25], base[:26], base[:14] + [7] + base[15:26], base[:26]]
    expected_reuse = [0, 20, 20, 24, 12, 12]  # whole blocks of 4 shared with the previous prompt
    for prompt, want in zip(prompts, expected_reuse, strict=True):
        fresh = generate(model64, [prompt], cfg)
        got = generate(model64, [prompt], cfg, prompt_cache=pc)
        assert got.extra["prompt_tokens_reused"] == want
        assert got.tokens == fresh.tokens
        assert got.logprobs[0] == pytest.approx(fresh.logprobs[0], abs=1e-9)
        assert got.nfe == fresh.nfe - (1 if want == (len(prompt) // 4) * 4 else 0)  # no prefill left to run
    # N identical prompts (regenerate's candidates) share it too; different prompts, block size or model: no.
    many = generate(model64, [base[:26]] * 3, cfg, prompt_cache=pc)
    assert many.extra["prompt_tokens_reused"] == 24
    assert many.tokens == [generate(model64, [base[:26]], cfg).tokens[0]] * 3
    assert generate(model64, [base[:26], base[:25]], cfg, prompt_cache=pc).extra["prompt_tokens_reused"] == 0
    assert generate(model64, [base[:26]], DecodeConfig(max_new_tokens=9, block_size=8),
                    prompt_cache=pc).extra["prompt_tokens_reused"] == 0
    other = build_model(preset("test"), dtype=torch.float64, seed=2)
    assert generate(other, [base[:26]], cfg, prompt_cache=pc).extra["prompt_tokens_reused"] == 0
    assert generate(other, [base[:26]], cfg, prompt_cache=pc).extra["prompt_tokens_reused"] == 24
    other.float()  # cast in place: same object, other keys
    assert generate(other, [base[:26]], cfg, prompt_cache=pc).extra["prompt_tokens_reused"] == 0


def test_threshold_commits_at_least_one_and_never_remasks(model64) -> None:
    events = []
    cfg = DecodeConfig(max_new_tokens=12, threshold=0.999)
    res = generate(model64, [[20, 21, 22]], cfg, callback=events.append)
    mask = events[0].mask_id
    prev: list[int] = []
    for ev in events:
        row = ev.rows[0]
        # committed tokens stay what they were
        for i, t in enumerate(prev):
            if t != mask and i < len(row):
                assert row[i] == t
        done_now = sum(t != mask for t in row)
        done_before = sum(t != mask for t in prev)
        if ev.committed[0] == 0:  # a commit forward (block finished) commits nothing new
            assert done_now == done_before
        else:
            assert done_now == done_before + ev.committed[0] >= done_before + 1
        prev = row
    assert all(s >= 1 for s in res.commit_steps[0])
    assert res.steps >= 12 // 1  # high threshold: about one token per step


def test_high_confidence_commits_many_per_step() -> None:
    """A model whose head always predicts one token commits a whole block per step at any threshold."""
    cfg = preset("test", eos_token_id=2)
    m = build_model(cfg, dtype=torch.float64)

    class Head(torch.nn.Module):
        def forward(self, h):
            out = torch.zeros(*h.shape[:-1], cfg.vocab_size, dtype=h.dtype)
            out[..., 42] = 30.0
            return out

    m.lm_head = Head()
    res = generate(m, [[7, 8, 9, 10]], DecodeConfig(max_new_tokens=16, threshold=0.9, fuse_commit=False))
    assert res.tokens[0] == [42] * 16
    # 4 blocks: one denoising forward each, plus 3 commit forwards, plus the prompt prefill.
    assert res.nfe == 1 + 4 + 3
    fused = generate(m, [[7, 8, 9, 10]], DecodeConfig(max_new_tokens=16, threshold=0.9))
    assert fused.tokens == res.tokens and fused.nfe == 1 + 4  # commits ride along with the next block's step


def test_eos_in_prompt_does_not_stop(model64) -> None:
    eos = 2
    prompt = [10, 11, eos, 12, 13, eos]  # ends with EOS inside the first generation block
    res = generate(model64, [prompt], DecodeConfig(max_new_tokens=8, threshold=0.9))
    assert len(res.tokens[0]) > 0 or res.finish[0] == "eos"
    assert res.steps > 0


def test_eos_stops_and_is_removed() -> None:
    cfg = preset("test")
    m = build_model(cfg, dtype=torch.float64)

    class Head(torch.nn.Module):
        def forward(self, h):
            out = torch.zeros(*h.shape[:-1], cfg.vocab_size, dtype=h.dtype)
            out[..., 2] = 30.0  # always EOS
            return out

    m.lm_head = Head()
    res = generate(m, [[5, 6, 7]], DecodeConfig(max_new_tokens=40, threshold=0.9))
    assert res.tokens[0] == [] and res.finish[0] == "eos"
    assert res.nfe <= 3


def test_batch_equals_per_row(model64) -> None:
    rng = random.Random(0)
    prompts = [[rng.randrange(10, 1000) for _ in range(n)] for n in (1, 5, 6, 11, 4)]
    for cfg in (DecodeConfig(max_new_tokens=9, threshold=0.3), DecodeConfig(max_new_tokens=9, threshold=None),
                DecodeConfig(max_new_tokens=9, threshold=0.3, fuse_commit=True),
                DecodeConfig(max_new_tokens=9, mode="ar")):
        batch = generate(model64, prompts, cfg)
        for i, p in enumerate(prompts):
            single = generate(model64, [p], cfg)
            assert batch.tokens[i] == single.tokens[0]


def test_temperature_samples_from_the_softmax() -> None:
    """Gumbel-max at temperature T draws token i with probability softmax(logits / T)_i."""
    from model.decoder import _pick

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(20000, -1)
    for temp in (1.0, 0.5):
        picks = _pick(logits, temp, torch.Generator().manual_seed(0))
        freq = torch.bincount(picks, minlength=4).double() / picks.numel()
        torch.testing.assert_close(freq, torch.softmax(logits[0].double() / temp, -1), atol=0.015, rtol=0)
    a, b = (_pick(logits[:50], 1.0, torch.Generator().manual_seed(s)) for s in (1, 2))
    assert not torch.equal(a, b)  # seeds matter


def test_chunked_prefill_equals_one_forward(model64, monkeypatch) -> None:
    """A batch of long prompts prefills in query chunks (bounded memory) with the same tokens and scores. (Their
    lengths are within a tenth of each other, so the block decoder prefills them in one padded forward.)"""
    import model.decoder as dec

    rng = random.Random(3)
    prompts = [[rng.randrange(10, 1000) for _ in range(n)] for n in (37, 38, 40, 39)]
    cache = PromptCache()
    for cfg in (DecodeConfig(max_new_tokens=9, threshold=0.3), DecodeConfig(max_new_tokens=9, mode="ar")):
        whole = generate(model64, prompts, cfg)
        calls: list[int] = []
        real = dec.forward_logits

        def counting(*a, calls=calls, real=real, **k):
            calls.append(a[1].shape[1])
            return real(*a, **k)

        monkeypatch.setattr(dec, "forward_logits", counting)
        monkeypatch.setattr(dec, "PREFILL_BUDGET", 4 * 40 * 8)  # rows x keys x 8 queries: chunks of 8 tokens
        chunked = generate(model64, prompts, cfg)
        monkeypatch.undo()
        assert calls[:5] == [8, 8, 8, 8, 8 if cfg.mode == "diffusion" else 7]  # prefill of 40 / 39 keys
        assert chunked.tokens == whole.tokens and chunked.nfe == whole.nfe
        for a, b in zip(chunked.logprobs, whole.logprobs, strict=True):
            assert a == pytest.approx(b, abs=1e-9)
    # the prompt cache reuses blocks written by a chunked prefill exactly as by a single one
    monkeypatch.setattr(dec, "PREFILL_BUDGET", 40 * 8)
    cfg = DecodeConfig(max_new_tokens=9, threshold=0.3)
    first = generate(model64, [prompts[0]], cfg, prompt_cache=cache)
    again = generate(model64, [prompts[0][:30] + [7, 8, 9]], cfg, prompt_cache=cache)
    assert again.extra["prompt_tokens_reused"] == 28
    monkeypatch.undo()
    assert again.tokens == generate(model64, [prompts[0][:30] + [7, 8, 9]], cfg).tokens
    assert first.tokens == generate(model64, [prompts[0]], cfg).tokens


def test_identical_prompts_prefill_once_and_long_cpu_prompts_alone(model64, monkeypatch) -> None:
    """N candidates of one prompt prefill once (the others copy its keys); on a CPU long prompts of different
    lengths prefill one by one (a padded batch costs more there). The tokens are those of each row alone."""
    import model.decoder as dec

    rng = random.Random(5)
    one = [rng.randrange(10, 1000) for _ in range(30)]
    long_a, long_b = ([rng.randrange(10, 1000) for _ in range(n)] for n in (700, 420))
    cfg = DecodeConfig(max_new_tokens=8, threshold=0.5)
    alone = {tuple(p): generate(model64, [p], cfg).tokens[0] for p in (one, long_a, long_b)}
    groups: list[int] = []
    real = dec._prefill

    def counting(model, x, *a, **k):
        groups.append(x.shape[0])
        return real(model, x, *a, **k)

    monkeypatch.setattr(dec, "_prefill", counting)
    res = generate(model64, [one, one, one], cfg)
    assert groups == [1] and res.tokens == [alone[tuple(one)]] * 3
    groups.clear()
    res = generate(model64, [long_a, one, long_b], cfg)
    assert sorted(groups) == [1, 1, 1] and res.tokens == [alone[tuple(p)] for p in (long_a, one, long_b)]


def test_cpu_attention_shares_grouped_heads(model64) -> None:
    """On a CPU, "sdpa" runs with the grouped key/value heads shared, not copied: the same logits as
    transformers' own SDPA (which repeats them), under a block-causal mask with a padded row."""
    from model.network import SDPA_GQA, set_attention_backend

    assert model64.config.num_key_value_heads < model64.config.num_attention_heads
    assert model64.config._attn_implementation == SDPA_GQA
    ids = torch.tensor([[random.Random(k).randrange(10, 1000) for k in range(24)]] * 2)
    pos = torch.arange(24)[None].expand(2, -1)
    mask = block_causal_mask(pos, pos, 4)
    mask[1, :, 20:] = False
    mask[1] |= torch.eye(24, dtype=torch.bool)
    ours = forward_logits(model64, ids, pos, mask)
    try:
        for m in model64.modules():
            if hasattr(m, "config"):
                m.config._attn_implementation = "sdpa"
        assert torch.allclose(forward_logits(model64, ids, pos, mask), ours, atol=1e-12)
    finally:
        set_attention_backend(model64, "sdpa")


def test_ar_mode_matches_full_forward_argmax(model64) -> None:
    """AR on a no-shift model = predict a mask after the prefix under a causal mask, one token per forward."""
    prompt = [30, 31, 32]
    res = generate(model64, [prompt], DecodeConfig(max_new_tokens=5, mode="ar", stop_at_eos=False))
    seq = list(prompt)
    mask = model64.remask_config.mask_token_id
    for _ in range(5):
        ids = torch.tensor([seq + [mask]])
        n = ids.shape[1]
        pos = torch.arange(n)[None]
        logits = forward_logits(model64, ids, pos, torch.ones(n, n, dtype=torch.bool).tril()[None])[0, -1]
        logits[mask] = float("-inf")
        seq.append(int(logits.argmax()))
    assert res.tokens[0] == seq[3:]
    assert res.nfe == 1 + 5


def test_cancel_between_steps(model64) -> None:
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(DecodeCancelled):
        generate(model64, [[1, 2, 3]], DecodeConfig(max_new_tokens=32, threshold=0.99), cancel=cancel)
    assert len(calls) == 3


def test_stop_strings(test_model_dir) -> None:
    model, tok = load_checkpoint(test_model_dir)
    res = generate(model, [tok.encode("def f(x):\n")], DecodeConfig(max_new_tokens=24, threshold=0.9), tokenizer=tok)
    text = res.texts[0]
    if len(text) > 3:
        stop = text[2:4]
        res2 = generate(model, [tok.encode("def f(x):\n")],
                        DecodeConfig(max_new_tokens=24, threshold=0.9, stop_strings=(stop,)), tokenizer=tok)
        assert stop not in res2.texts[0] and res2.finish[0] == "stop"
        assert tok.mask_id not in res2.tokens[0] and len(res2.tokens[0]) < 24
    ar = generate(model, [tok.encode("def f(x):\n")], DecodeConfig(max_new_tokens=24, mode="ar",
                                                                    stop_strings=(res.texts[0][:1] or "x",)),
                  tokenizer=tok)
    assert tok.mask_id not in ar.tokens[0] and len(ar.tokens[0]) == ar.nfe - 1


def test_bad_decode_config(model64) -> None:
    with pytest.raises(ValueError):
        generate(model64, [[1]], DecodeConfig(threshold=2.0))
    with pytest.raises(ValueError):
        generate(model64, [[]], DecodeConfig())
    with pytest.raises(ValueError, match="context"):
        generate(model64, [[1] * 2040], DecodeConfig(max_new_tokens=64))


def test_save_load_round_trip_bit_exact(tmp_path) -> None:
    m = build_model(preset("test"), seed=3)
    tok = make_test_tokenizer()
    save_checkpoint(m, tmp_path / "ck", tokenizer=tok, max_shard_size="200KB")
    assert (tmp_path / "ck" / "model.safetensors.index.json").is_file()
    m2, tok2 = load_checkpoint(tmp_path / "ck")
    sd1, sd2 = m.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    assert tok2 is not None and tok2.mask_id == 5 and tok2.encode("x = 1") == tok.encode("x = 1")
    prompt = tok.encode("import os\n")
    cfg = DecodeConfig(max_new_tokens=8)
    assert generate(m, [prompt], cfg).tokens == generate(m2, [prompt], cfg).tokens


def _write_stable_diffcoder_folder(folder, seed: int = 0) -> torch.nn.Module:
    """A small random model written exactly as Stable-DiffCoder-8B is published on the hub."""
    return write_stable_diffcoder_folder(folder, seed=seed)


def test_stable_diffcoder_folder_loads_and_decodes(tmp_path) -> None:
    ref = _write_stable_diffcoder_folder(tmp_path / "sdc")
    m, tok = load_checkpoint(tmp_path / "sdc")
    cfg = m.remask_config
    assert cfg.kind == "bd" and not cfg.logit_shift and cfg.mask_token_id == 5 and cfg.eos_token_id == 2
    assert cfg.block_size == 4 and cfg.rope_theta == 500000.0 and m.dtype == torch.bfloat16
    for k, v in ref.state_dict().items():
        assert torch.equal(v, m.state_dict()[k]), k
    res = generate(m, [tok.encode("def add(a, b):\n")], DecodeConfig(max_new_tokens=8), tokenizer=tok)
    assert res.nfe > 0 and isinstance(res.texts[0], str)


def test_seed_coder_ar_folder_loads_as_ar(tmp_path) -> None:
    _write_stable_diffcoder_folder(tmp_path / "sc")
    cfgp = tmp_path / "sc" / "config.json"
    d = json.loads(cfgp.read_text())
    d["architectures"] = ["LlamaForCausalLM"]
    d.pop("auto_map")
    cfgp.write_text(json.dumps(d))
    m, _ = load_checkpoint(tmp_path / "sc")
    assert m.remask_config.kind == "ar" and m.remask_config.logit_shift
    with pytest.raises(ValueError, match="mode='ar'"):
        generate(m, [[1, 2]], DecodeConfig(max_new_tokens=4))
    res = generate(m, [[1, 2]], DecodeConfig(max_new_tokens=4, mode="ar", stop_at_eos=False))
    assert len(res.tokens[0]) == 4 and res.nfe == 5


def test_missing_and_corrupt_checkpoints(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path / "empty")
    m = build_model(preset("test"))
    save_checkpoint(m, tmp_path / "ck")
    w = tmp_path / "ck" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: 1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(build_model(preset("test", hidden_size=64, intermediate_size=128)), tmp_path / "ck2")
    d = json.loads((tmp_path / "ck2" / "config.json").read_text())
    d["hidden_size"] = 96
    (tmp_path / "ck2" / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path / "ck2")


def test_atomic_save_keeps_old_checkpoint_on_failure(tmp_path, monkeypatch) -> None:
    m = build_model(preset("test"))
    save_checkpoint(m, tmp_path / "ck")
    before = (tmp_path / "ck" / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("model.checkpoint.save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(build_model(preset("test"), seed=9), tmp_path / "ck")
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
