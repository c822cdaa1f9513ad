"""``remask train bd --init-from`` a published autoregressive Qwen2 / Qwen3 folder (the Open-dCoder / Tiny-A2D
recipe): a few block-diffusion steps at a tiny scale give one of our checkpoints on the same transformers body,
which loads back as such and decodes with the block decoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model import DecodeConfig, generate, load_checkpoint
from model.families import detect, family_of
from model.families.testing import write_family_checkpoint
from training.config import TrainConfig, apply_overrides
from training.corpus import build_corpus, tokenize_corpus
from training.trainer import Trainer


@pytest.mark.parametrize("layout,cls", [("qwen3-ar", "Qwen3ForCausalLM"), ("qwen2-ar", "Qwen2ForCausalLM")])
def test_bd_from_a_qwen_ar_folder(tmp_path, layout, cls) -> None:
    ar = write_family_checkpoint(tmp_path / layout, layout, seed=1, hidden=32, layers=1, sharded=False)
    fam, why = detect(ar)
    assert fam.name == "qwen-ar" and "autoregressive" in why
    src = tmp_path / "src"
    src.mkdir()
    for i, f in enumerate(sorted((Path(__file__).resolve().parents[1] / "model").glob("*.py"))):
        (src / f"m{i}.py").write_text(f.read_text())
    corpus = tmp_path / "corpus"
    build_corpus(corpus, [str(src)], extensions=[".py"], holdout=[], val_fraction=0.05, seed=0, log=lambda s: None)
    tokenize_corpus(corpus, ar, log=lambda s: None)
    cfg = apply_overrides(TrainConfig(), dict(preset="test", seq_len=32, batch_size=4, warmup_steps=1, eval_every=0,
                                              save_every=0, log_every=1, progress=False, seed=3, bd_steps=3,
                                              bd_warmup_steps=1, eval_batches=1), "test")
    out = Trainer(cfg, "bd", tmp_path / "bd", corpus, init_from=ar, log=lambda s: None).run()
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == [cls] and raw["remask_kind"] == "bd" and raw["remask_family"] == "remask"
    model, tok = load_checkpoint(out)
    assert type(model).__name__ == cls and family_of(model).name == "remask"
    cfg_ = model.remask_config
    assert cfg_.kind == "bd" and not cfg_.logit_shift and cfg_.mask_token_id == tok.tok.token_to_id("<|mask|>")
    before, after = load_file(str(ar / "model.safetensors")), model.state_dict()
    moved = [k for k, v in before.items() if not torch.equal(v, after[k].to(v.dtype))]
    assert moved  # trained from the AR weights (same names and shapes), not from scratch
    assert all(before[k].shape == after[k].shape for k in before)
    res = generate(model, [tok.encode("def f(x):")], DecodeConfig(max_new_tokens=8))
    assert res.finish[0] in ("eos", "length") and res.nfe >= 1
