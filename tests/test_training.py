"""Training pipeline: losses fall, BD noise schedule, warmup switch, train/inference mask parity,
kill-and-resume, NaN guard, SFT data, config layering, the end-to-end pipeline and a 2-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.cache import BlockKVCache
from model.checkpoint import load_checkpoint
from model.decoder import DecodeConfig, generate
from model.network import forward_logits, set_attention_backend
from model.testing import stdlib_texts
from model.tokenizer import Tokenizer
from training.config import TrainConfig, apply_overrides, build_config, load_config
from training.corpus import CorpusError, build_corpus, tokenize_corpus
from training.objectives import BD3Masks, Noise, bd_forward_masked, bd_noise, mask_cap, weighted
from training.trainer import Trainer, TrainingError, noise_draws, read_metrics

ROOT = Path(__file__).resolve().parent.parent


def _cfg(**kw) -> TrainConfig:
    base = dict(preset="test", seq_len=32, batch_size=4, warmup_steps=2, eval_every=0, save_every=0, log_every=1,
                progress=False, fim_rate=0.5, seed=3, ar_lr=3e-3, bd_lr=2e-3, bd_warmup_steps=4, eval_batches=2)
    base.update(kw)
    return apply_overrides(TrainConfig(), base, "test")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    for i, t in enumerate(stdlib_texts(60)):
        pkg = root / f"pkg{i % 6}"
        pkg.mkdir(exist_ok=True)
        (pkg / f"m{i}.py").write_text(t, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def corpus(sources, tmp_path_factory, test_model_dir):
    out = tmp_path_factory.mktemp("corpus") / "c"
    build_corpus(out, [str(sources)], extensions=[".py"], holdout=[], val_fraction=0.05, seed=0, log=lambda s: None)
    tokenize_corpus(out, test_model_dir, log=lambda s: None)
    return out


def _val(path: Path, key: str = "val_loss") -> list[float]:
    return [r[key] for r in read_metrics(path / "metrics.jsonl") if key in r]


def _draws(b, L, B, seed=0):
    return noise_draws(seed, 1, 0, range(b), L, B)


# --------------------------------------------------------------------------------- losses fall
def test_ar_and_bd_losses_fall(corpus, tmp_path, test_model_dir):
    cfg = _cfg(ar_steps=15, bd_steps=15, eval_every=15, bd_warmup_steps=0, ar_lr=1e-2, bd_lr=1e-2, warmup_steps=3)
    ar = Trainer(cfg, "ar", tmp_path / "ar", corpus, tokenizer_dir=test_model_dir, log=lambda s: None).run()
    v = _val(tmp_path / "ar")
    assert v[-1] < v[0] - 0.3, v
    model, tok = load_checkpoint(ar)
    assert model.remask_config.kind == "ar" and model.remask_config.logit_shift
    assert json.loads((ar / "train_config.json").read_text())["ar_steps"] == 15
    # BD from the random test model: the weighted ELBO loss and the masked CE both fall.
    bd = Trainer(cfg, "bd", tmp_path / "bd", corpus, init_from=test_model_dir, log=lambda s: None).run()
    v, ce = _val(tmp_path / "bd"), _val(tmp_path / "bd", "val_masked_ce")
    assert v[-1] < v[0] - 0.5 and ce[-1] < ce[0] - 0.5, (v, ce)
    model, tok = load_checkpoint(bd)
    assert model.remask_config.kind == "bd" and not model.remask_config.logit_shift
    res = generate(model, [[tok.bos_id] + tok.encode("def f(x):\n")], DecodeConfig(max_new_tokens=8), tokenizer=tok)
    assert res.nfe > 0


# --------------------------------------------------------------------------------- noise schedule
def test_clipped_schedule_never_leaves_a_block_empty():
    b, L, B = 512, 64, 4
    x0 = torch.randint(10, 100, (b, L))
    n = bd_noise(x0, B, 5, 1.0, True, _draws(b, L, B))
    per_block = n.masked.view(b, L // B, B).sum(-1).float()
    assert float((per_block == 0).float().mean()) == 0.0
    assert float(per_block.mean()) >= 1.0
    assert torch.all(n.u_blk >= 1 / B) and torch.all(n.weight <= B + 1e-6)
    assert torch.all(n.xt[n.masked] == 5) and torch.equal(n.xt[~n.masked], x0[~n.masked])
    w = n.weight.view(b, L // B, B)
    assert torch.allclose(w[n.masked.view(b, L // B, B)],
                          (1 / n.u_blk)[..., None].expand(-1, -1, B)[n.masked.view(b, L // B, B)])
    # Without the clip and fallback a linear schedule leaves about 1/(B+1) of the blocks empty.
    raw = bd_noise(x0, B, 5, 1.0, True, _draws(b, L, B), clip=False)
    empty = float((raw.masked.view(b, L // B, B).sum(-1) == 0).float().mean())
    assert 0.15 < empty < 0.25
    # Only eligible positions are ever masked, and a block with any eligible position gets one.
    elig = torch.zeros(b, L, dtype=torch.bool)
    elig[:, L // 2 + 1:] = True
    e = bd_noise(x0, B, 5, 1.0, True, _draws(b, L, B), eligible=elig)
    assert not e.masked[~elig].any()
    blocks = e.masked.view(b, L // B, B).sum(-1)
    assert torch.all(blocks[:, L // B // 2:] >= 1) and torch.all(blocks[:, : L // B // 2] == 0)


def test_warmup_cap_and_weight_switch():
    S, u0 = 100, 1e-3
    assert mask_cap(0, S, u0) == pytest.approx(u0)
    assert mask_cap(50, S, u0) == pytest.approx(u0 + (1 - u0) * 0.5)
    assert mask_cap(S, S, u0) == 1.0 and mask_cap(S + 5, S, u0) == 1.0
    assert not weighted(S - 1, S) and weighted(S, S)
    b, L, B = 64, 32, 4
    x0 = torch.randint(10, 100, (b, L))
    early = bd_noise(x0, B, 5, mask_cap(1, S, u0), weighted(1, S), _draws(b, L, B))
    assert torch.allclose(early.u_blk, torch.full_like(early.u_blk, 1 / B))  # the clip floor
    assert torch.equal(early.weight, early.masked.float())  # no 1/t weight during warmup
    late = bd_noise(x0, B, 5, mask_cap(S, S, u0), weighted(S, S), _draws(b, L, B))
    assert float(late.weight.max()) > 1.0


# --------------------------------------------------------------------------------- train == infer
def test_training_mask_matches_cached_inference(corpus, tmp_path, test_model_dir):
    bd = Trainer(_cfg(bd_steps=3), "bd", tmp_path / "bd", corpus, init_from=test_model_dir, log=lambda s: None).run()
    model, _ = load_checkpoint(bd)  # a BD-trained test model
    assert model.remask_config.kind == "bd"
    L, B, mask_id = 16, 4, model.remask_config.mask_token_id
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(20, 1000, (1, L), generator=g)
    xt = x0.clone()
    xt[0, [1, 9, 10, 14]] = mask_id  # noise in several blocks, block 2 is the one compared
    noise = Noise(xt=xt, masked=torch.ones(1, L, dtype=torch.bool), weight=torch.ones(1, L),
                  u_blk=torch.ones(1, L // B))
    with torch.no_grad():
        train_logits = bd_forward_masked(model, noise, x0, BD3Masks(B, False, torch.device("cpu"))).view(L, -1)
        cache = BlockKVCache(model.config.num_hidden_layers, 1, L)
        pos = torch.arange(8)
        forward_logits(model, x0[:, :8], pos[None], (pos[None, :] // B <= pos[:, None] // B)[None], cache=cache,
                       kv_len=8)
        win = torch.arange(8, 12)
        infer = forward_logits(model, xt[:, 8:12], win[None], torch.ones(1, 4, 12, dtype=torch.bool), cache=cache,
                               kv_len=12)[0]
    torch.testing.assert_close(train_logits[8:12], infer, atol=1e-4, rtol=1e-4)


def test_flex_training_mask_matches_dense_sdpa(test_model_dir):
    """The BlockMask the trainer uses on GPU gives the dense-mask logits (forward only: no flex backward on CPU)."""
    model, _ = load_checkpoint(test_model_dir)
    mc = model.remask_config
    L, b = 32, 2
    x0 = torch.randint(20, 1000, (b, L), generator=torch.Generator().manual_seed(1))
    noise = bd_noise(x0, mc.block_size, mc.mask_token_id, 1.0, True, _draws(b, L, mc.block_size), None, clip=True)
    out = {}
    with torch.no_grad():
        for name in ("sdpa", "flex_attention"):
            set_attention_backend(model, name)
            out[name] = bd_forward_masked(model, noise, x0, BD3Masks(mc.block_size, name != "sdpa",
                                                                     torch.device("cpu")))
    torch.testing.assert_close(out["flex_attention"], out["sdpa"], atol=1e-4, rtol=1e-4)
    # A mask that let the noisy half see its own clean block would change the logits: the check has teeth.
    leaky = BD3Masks(mc.block_size, False, torch.device("cpu"))
    full = leaky.get(L, b).clone()
    full[:, :L, L:] = True
    leaky._cache[L] = full[0]
    set_attention_backend(model, "sdpa")
    with torch.no_grad():
        assert not torch.allclose(bd_forward_masked(model, noise, x0, leaky), out["sdpa"], atol=1e-3)


def test_precision_optimizer_and_compile_options(corpus, tmp_path, test_model_dir):
    """bf16 autocast, foreach vs fused AdamW and torch.compile'd layers all train the same run (CPU here)."""
    def losses(name: str, stage: str, **kw) -> list[float]:
        cfg = _cfg(ar_steps=5, bd_steps=5, **kw)
        Trainer(cfg, stage, tmp_path / f"{name}-{stage}", corpus, tokenizer_dir=test_model_dir,
                init_from=None if stage == "ar" else test_model_dir, log=lambda s: None).run()
        return [r["loss"] for r in read_metrics(tmp_path / f"{name}-{stage}" / "metrics.jsonl")]

    for stage in ("ar", "bd"):
        ref = losses("fp32", stage)
        assert losses("foreach", stage, fused_adamw=False) == pytest.approx(ref, rel=1e-5)
        bf16 = losses("bf16", stage, dtype="bfloat16")
        assert bf16 == pytest.approx(ref, rel=2e-3) and bf16 != ref  # autocast really ran, and stayed close
    assert losses("compiled", "bd", compile=True) == pytest.approx(ref, rel=1e-4)
    with pytest.raises(TrainingError, match="no backward pass on CPU"):
        Trainer(_cfg(attn="flex_attention"), "bd", tmp_path / "flex", corpus, init_from=test_model_dir,
                log=lambda s: None).run()


# --------------------------------------------------------------------------------- resume, guards
def test_kill_and_resume_reproduces_losses(corpus, tmp_path, test_model_dir):
    cfg = _cfg(bd_steps=8, save_every=3, bd_warmup_steps=3)
    Trainer(cfg, "bd", tmp_path / "a", corpus, init_from=test_model_dir, log=lambda s: None).run()

    def kill(step, rec):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, "bd", tmp_path / "b", corpus, init_from=test_model_dir, on_step=kill, log=lambda s: None).run()
    state = json.loads((tmp_path / "b" / "checkpoint" / "training_state.json").read_text())
    assert state["step"] == 3 and not state["finished"]
    Trainer(cfg, "bd", tmp_path / "b", corpus, init_from=test_model_dir, log=lambda s: None).run()
    a, b = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4, abs=1e-6)
    # The warmup ends at the configured step: records 1..3 are steps 0..2.
    assert [r["weighted"] for r in a] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert all(r["mask_cap"] < 1 for r in a[:3]) and all(r["mask_cap"] == 1 for r in a[3:])
    # A finished stage is skipped when rerun.
    logs = []
    Trainer(cfg, "bd", tmp_path / "b", corpus, init_from=test_model_dir, log=logs.append).run()
    assert any("already finished" in m for m in logs)


def test_nan_guard_stops_with_a_clear_message(corpus, tmp_path, test_model_dir):
    cfg = _cfg(ar_steps=6, ar_lr=1e30, warmup_steps=0, grad_clip=0)
    with pytest.raises(TrainingError, match="loss became"):
        Trainer(cfg, "ar", tmp_path / "nan", corpus, tokenizer_dir=test_model_dir, log=lambda s: None).run()


# --------------------------------------------------------------------------------- SFT
def test_sft_rows_keep_prompt_clean(corpus, tmp_path, test_model_dir):
    from training.sft import SFTData

    jl = tmp_path / "pairs.jsonl"
    jl.write_text(json.dumps({"prompt": "Say hi.", "response": "print('hi')\n"}) + "\n")
    tok = Tokenizer.from_folder(test_model_dir)
    cfg = _cfg(sft_data=[str(jl)], sft_synthetic_rate=0.5, seq_len=128)
    data = SFTData(corpus, "train", tok, 128, cfg)
    x, elig = data.batch(0, range(8))
    assert x.shape == (8, 128) and elig.any() and (~elig).any()
    n = bd_noise(x, 4, tok.mask_id, 1.0, True, _draws(8, 128, 4), eligible=elig)
    assert not n.masked[~elig].any()
    # Responses end with 1..4 EOS inside the eligible part, after the chat prompt.
    p, r = data.sample(np.random.default_rng(1))
    k = len(r) - len(tok.encode(tok.decode(r)))
    assert 1 <= k <= 4 and r[-k:] == [tok.eos_id] * k
    assert p[-len(tok.encode("assistant\n")):] == tok.encode("assistant\n")
    with pytest.raises(CorpusError, match="hold no response"):  # rows too short for any prompt: a clear error
        Trainer(_cfg(sft_steps=3, seq_len=32), "sft", tmp_path / "short", corpus, init_from=test_model_dir,
                log=lambda s: None).run()
    ck = Trainer(_cfg(sft_steps=3, sft_data=[str(jl)], seq_len=128), "sft", tmp_path / "sft", corpus,
                 init_from=test_model_dir, log=lambda s: None).run()
    assert all(r["loss"] > 0 for r in read_metrics(tmp_path / "sft" / "metrics.jsonl"))
    model, _ = load_checkpoint(ck)
    assert model.remask_config.kind == "bd-instruct" and model.remask_config.instruct


# --------------------------------------------------------------------------------- config, CLI
def test_config_layers_and_errors(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('seq_len = 128\n[ar]\nar_steps = 7\nar_lr = 1e-3\n[corpus]\nholdout = ["numpy"]\n')
    import argparse

    from training.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments("train", p)
    args = p.parse_args(["ar", "--preset", "test", "--config", str(toml), "--ar-lr", "5e-4", "--compile", "true"])
    cfg = build_config(args, args.preset)
    assert (cfg.preset, cfg.seq_len, cfg.ar_steps, cfg.ar_lr, cfg.holdout, cfg.compile) == (
        "test", 128, 7, 5e-4, ["numpy"], True)
    assert cfg.batch_size == 4  # from the test pipeline preset
    assert load_config(toml)["ar_steps"] == 7
    yml = tmp_path / "c.yaml"
    yml.write_text("seq_len: 96\nar:\n  ar_steps: 9\n")
    args = p.parse_args(["ar", "--preset", "test", "--config", str(yml)])
    assert (build_config(args, args.preset).seq_len, load_config(yml)["ar_steps"]) == (96, 9)
    yml.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(yml)
    yml.write_text("seq_len: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(yml)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(SystemExit):  # argparse checks the choices now; a config file's value is still validated
        p.parse_args(["ar", "--preset", "test", "--dtype", "fp8"])
    with pytest.raises(ValueError, match="dtype must be"):
        apply_overrides(TrainConfig(), {"dtype": "fp8"}, "x").validate()
    with pytest.raises(ValueError, match="unknown config field 'seq_lenn'"):
        apply_overrides(TrainConfig(), {"seq_lenn": 3}, "x")
    with pytest.raises(ValueError, match="cannot use"):
        apply_overrides(TrainConfig(), {"seq_len": "long"}, "x")


def test_pipeline_end_to_end_and_rerun(sources, tmp_path):
    from training.plot import plot
    from ui.cli import main

    args = ["train", "pipeline", "--preset", "test", "--out", str(tmp_path / "run"), "--sources", str(sources),
            "--ar-steps", "4", "--bd-steps", "4", "--sft-steps", "2", "--seq-len", "128", "--eval-every", "0",
            "--progress", "false", "--tokenizer-max-mb", "0.5"]
    assert main(args) == 0
    run = tmp_path / "run"
    for d in ("corpus/manifest.json", "tokenizer/tokenizer.json", "ar/checkpoint/config.json",
              "bd/checkpoint/training_state.json", "sft/checkpoint/model.safetensors", "sft/metrics.jsonl"):
        assert (run / d).is_file(), d
    model, tok = load_checkpoint(run / "sft" / "checkpoint")
    assert model.remask_config.kind == "bd-instruct" and tok is not None
    sft = [r for r in read_metrics(run / "sft" / "metrics.jsonl") if "loss" in r]
    assert sft and all(r["loss"] > 0 and r["masked_frac"] > 0 for r in sft)  # the rows held responses
    mtime = (run / "bd" / "checkpoint" / "model.safetensors").stat().st_mtime
    assert main(args) == 0  # everything done: skipped, nothing rewritten
    assert (run / "bd" / "checkpoint" / "model.safetensors").stat().st_mtime == mtime
    png = plot(run)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_runs_refuse_what_they_would_overwrite_or_mistrain(corpus, sources, tmp_path, test_model_dir):
    """A corpus or tokenizer over a foreign folder, a stage over another stage's checkpoint, a resume with
    another shape, two runs in one folder: each refused with a message, nothing touched."""
    from training.pipeline import corpus_step, tokenizer_step
    from training.trainer import _exclusive

    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    for step in (lambda: corpus_step(_cfg(sources=[str(sources)]), precious, log=lambda s: None),
                 lambda: tokenizer_step(_cfg(), corpus, precious, log=lambda s: None)):
        with pytest.raises(CorpusError, match="is not a"):
            step()
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    ar = Trainer(_cfg(ar_steps=2), "ar", tmp_path / "ar", corpus, tokenizer_dir=test_model_dir,
                 log=lambda s: None).run()
    before = (ar / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="holds the ar stage's checkpoint"):
        Trainer(_cfg(bd_steps=3), "bd", tmp_path / "ar", corpus, init_from=test_model_dir, log=lambda s: None).run()
    with pytest.raises(TrainingError, match="seq_len 32, this run asks for 64"):
        Trainer(_cfg(ar_steps=4, seq_len=64), "ar", tmp_path / "ar", corpus, tokenizer_dir=test_model_dir,
                log=lambda s: None).run()
    assert (ar / "model.safetensors").read_bytes() == before
    with _exclusive(tmp_path / "ar", True), pytest.raises(TrainingError, match="another run is using"):
        Trainer(_cfg(ar_steps=4), "ar", tmp_path / "ar", corpus, tokenizer_dir=test_model_dir,
                log=lambda s: None).run()


def test_a_stage_ended_by_its_time_limit_continues_under_a_longer_one(corpus, tmp_path, test_model_dir):
    cfg = _cfg(ar_steps=6)
    logs: list[str] = []
    Trainer(cfg, "ar", tmp_path / "t", corpus, tokenizer_dir=test_model_dir, time_limit_min=1e-9,
            log=logs.append).run()
    state = json.loads((tmp_path / "t" / "checkpoint" / "training_state.json").read_text())
    assert state["finished"] and state["reason"] == "time" and state["step"] < 6
    Trainer(cfg, "ar", tmp_path / "t", corpus, tokenizer_dir=test_model_dir, time_limit_min=1e-9,
            log=logs.append).run()  # the same limit: nothing to add
    assert "already finished" in logs[-1]
    # the pipeline's limits are shares of what is left of its budget (larger on a rerun): it never extends
    Trainer(cfg, "ar", tmp_path / "t", corpus, tokenizer_dir=test_model_dir, time_limit_min=5.0,
            log=logs.append, extend_time_limited=False).run()
    assert "already finished" in logs[-1]
    Trainer(cfg, "ar", tmp_path / "t", corpus, tokenizer_dir=test_model_dir, log=logs.append).run()
    assert any("continuing under the new limit" in m for m in logs)
    assert json.loads((tmp_path / "t" / "checkpoint" / "training_state.json").read_text())["step"] == 6


def test_an_interrupted_checkpoint_swap_is_recovered(tmp_path):
    from model.checkpoint import atomic_write_dir, recover_swap

    target = tmp_path / "checkpoint"
    atomic_write_dir(target, lambda d: (d / "a").write_text("old"))
    assert oct(target.stat().st_mode & 0o777) != oct(0o700)  # an ordinary folder, not mkdtemp's private one
    os.replace(target, tmp_path / ".checkpoint.old-123")  # killed between the two renames
    recover_swap(target)
    assert (target / "a").read_text() == "old"

    def fail(d):
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_dir(target, fail)
    assert (target / "a").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_a_corrupt_optimizer_state_is_a_clear_error(corpus, tmp_path, test_model_dir):
    cfg = _cfg(ar_steps=4, save_every=2)

    def stop(step, rec):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, "ar", tmp_path / "c", corpus, tokenizer_dir=test_model_dir, on_step=stop,
                log=lambda s: None).run()
    (tmp_path / "c" / "checkpoint" / "training_state.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(TrainingError, match="optimizer state cannot be read.*delete"):
        Trainer(cfg, "ar", tmp_path / "c", corpus, tokenizer_dir=test_model_dir, log=lambda s: None).run()


def test_training_cli_errors_are_one_line(tmp_path, corpus, capsys):
    from ui.cli import main

    for argv, words in [
        (["train", "bd", "--corpus", str(corpus), "--init-from", str(tmp_path / "missing"), "--out",
          str(tmp_path / "o")], "missing"),
        (["train", "ar", "--corpus", str(corpus), "--tokenizer", str(corpus), "--out", str(tmp_path / "o")],
         "no tokenizer"),
        (["train", "ar", "--corpus", str(corpus), "--device", "tpu", "--out", str(tmp_path / "o")], "device"),
        (["train", "pipeline", "--corpus", str(corpus), "--out", str(tmp_path / "p")], "--corpus apply to one"),
        (["train", "ar", "--min-lr-ratio", "-3", "--out", str(tmp_path / "o")], "min_lr_ratio"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (argv, err)


# --------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_single(corpus, tmp_path, test_model_dir, parallel):
    flags = dict(bd_steps=3, seq_len=32, batch_size=4, warmup_steps=1, bd_warmup_steps=1, fim_rate=0.5, seed=3,
                 save_every=0, eval_every=2, eval_batches=1, log_every=1, progress=False)
    cfg = _cfg(**flags)
    Trainer(cfg, "bd", tmp_path / "one", corpus, init_from=test_model_dir, log=lambda s: None).run()
    toml = tmp_path / "same.toml"  # the very same config, through the TOML path of the command line
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.to_dict().items()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ui.cli",
           "train", "bd", "--config", str(toml), "--init-from", str(test_model_dir), "--corpus", str(corpus),
           "--out", str(tmp_path / "two"), "--device", "cpu", "--parallel", parallel]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == 4  # the step-0 validation, then steps 1-3 (validation at 2 and 3)
    for a, b in zip(one, two, strict=True):
        if "loss" in a:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
        assert ("val_loss" in a) == ("val_loss" in b)
        if "val_loss" in a:  # validation runs through the wrapped model (FSDP: its sharded root weights)
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    assert json.loads((tmp_path / "two" / "checkpoint" / "training_state.json").read_text())["world_size"] == 2
    # The checkpoint gathered from the two processes (FSDP: from the shards) holds the single-process weights.
    (m1, _), (m2, _) = (load_checkpoint(tmp_path / run / "checkpoint") for run in ("one", "two"))
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("path", sorted((ROOT / "training" / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_validate(path):
    cfg = apply_overrides(TrainConfig(), load_config(path), str(path))
    cfg.validate()
    if path.name == "small-gpu.toml":  # the one-command GPU pipeline is bounded by one budget (issue 3: < 9 min)
        assert 0 < cfg.time_budget_min <= 8.5 and not any(cfg.stage_value(s, "time_min") for s in ("ar", "bd", "sft"))


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "human-eval-infilling").is_dir(),
                    reason="HumanEval-Infilling not found in ../shared/data")
def test_experiment_arms_share_checkpoint_steps_and_tokens(corpus, tmp_path, test_model_dir, capsys):
    """`remask train experiment`: (a) AR, (b) BD, (c) BD without warmup, all from one AR checkpoint for the
    same steps and tokens, evaluated and reported; a rerun skips the finished arms."""
    from ui.cli import main

    ar = Trainer(_cfg(ar_steps=3), "ar", tmp_path / "ar", corpus, tokenizer_dir=test_model_dir,
                 log=lambda s: None).run()
    argv = ["train", "experiment", "--preset", "test", "--init-from", str(ar), "--corpus", str(corpus),
            "--out", str(tmp_path / "exp"), "--steps", "3", "--no-warmup-arm", "--limit", "3",
            "--splits", "single-line", "--thresholds", "0.5,0.9", "--seq-len", "32", "--batch-size", "4",
            "--bd-warmup-steps", "2", "--eval-every", "0", "--save-every", "0", "--progress", "false",
            "--log-every", "1", "--device", "cpu", "--eval-batch-size", "4"]
    assert main(argv) == 0
    exp = tmp_path / "exp"
    rows = json.loads((exp / "experiment.json").read_text())["rows"]
    assert [(r["arm"], r["mode"], r["threshold"]) for r in rows] == [
        ("a", "ar", None), ("b", "diffusion", 0.5), ("b", "diffusion", 0.9), ("c", "diffusion", 0.9)]
    assert all(r["single-line tasks"] == 3 and 0 <= r["single-line pass@1"] <= 1 for r in rows)
    assert rows[0]["tokens_per_forward"] == pytest.approx(1.0, abs=0.05)  # AR: one token per forward
    metrics = {arm: read_metrics(exp / arm / "metrics.jsonl") for arm in "abc"}
    assert {arm: [r["step"] for r in m] for arm, m in metrics.items()} == {a: [1, 2, 3] for a in "abc"}
    assert len({m[-1]["tokens"] for m in metrics.values()}) == 1  # the same x_0 tokens per arm
    assert [r["weighted"] for r in metrics["b"]] == [0, 0, 1] and [r["weighted"] for r in metrics["c"]] == [1, 1, 1]
    for arm in "abc":  # every arm starts from the shared AR weights
        assert json.loads((exp / arm / "train_config.json").read_text())["init_from"] == str(ar)
    assert (exp / "grad_norm.png").stat().st_size > 1000
    assert "tau 0.9" in (exp / "experiment.md").read_text() and "(c) BD CPT, no warmup" in capsys.readouterr().out
    # Rerun: finished arms are skipped, the report is written again.
    assert main(argv) == 0
    assert [r["step"] for r in read_metrics(exp / "b" / "metrics.jsonl")] == [1, 2, 3]
    assert main(argv[:-2] + ["--thresholds", "1.5"]) == 2
    bd_init = [a if a != str(ar) else str(exp / "b" / "checkpoint") for a in argv]
    assert main(bd_init) == 2 and "starts from an AR checkpoint" in capsys.readouterr().err


def test_progress_total_follows_the_time_limit():
    from training.trainer import steps_within

    assert steps_within(10, 1000, run_s=5.0, run_steps=10, left_s=20.0) == 50  # 2 steps/s for 20 s more
    assert steps_within(10, 30, run_s=5.0, run_steps=10, left_s=20.0) == 30  # the step cap comes first
    assert steps_within(10, 1000, run_s=5.0, run_steps=10, left_s=-1.0) == 10  # time is up
    assert steps_within(0, 1000, run_s=0.0, run_steps=0, left_s=60.0) == 1000  # no pace yet
