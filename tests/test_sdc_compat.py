"""Stable-DiffCoder compatibility beyond decoding: transformers versions, warnings, the FIM prompt's BOS,
the eos_fill option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from reference import transformers_at
from tokenizers import processors

from model import DecodeConfig, build_model, generate, load_checkpoint, preset
from model.testing import make_test_tokenizer
from model.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
OLDEST = "5.0.0"  # the oldest transformers pyproject.toml allows; the newest is the one installed here

PROBE = """
import json, sys, warnings
warnings.simplefilter("error")  # any library warning fails the run
import transformers
from model import DecodeConfig, generate, load_checkpoint
model, tok = load_checkpoint(sys.argv[1])
out = []
for B, thr, steps, n in [(4, 0.9, None, 16), (2, None, 2, 12), (8, 0.5, None, 24), (4, None, 4, 9)]:
    cfg = DecodeConfig(max_new_tokens=n, block_size=B, threshold=thr, steps_per_block=steps)
    out.append(generate(model, [[0] + tok.encode("def add(a, b):\\n    return")], cfg).tokens[0])
print(json.dumps({"version": transformers.__version__, "tokens": out}))
"""


def test_oldest_and_newest_transformers_decode_alike_without_warnings(test_model_dir) -> None:
    """The decoder passes the cache under the name each transformers version knows, silently."""
    runs = {}
    for name, path in (("installed", None), ("oldest", transformers_at(OLDEST))):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(path) if path else "", str(ROOT)) if p)}
        r = subprocess.run([sys.executable, "-c", PROBE, str(test_model_dir)], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stderr == "", r.stderr
        runs[name] = json.loads(r.stdout.strip().splitlines()[-1])
    assert runs["oldest"]["version"] == OLDEST and runs["installed"]["version"] != OLDEST
    assert runs["oldest"]["tokens"] == runs["installed"]["tokens"]


def test_engine_operations_raise_no_library_warning(test_model_dir) -> None:
    from assistant.engine import Engine

    engine = Engine.load(str(test_model_dir))
    text = "def mean(xs):\n    <FILL>\n\n\ndef total(xs):\n    return sum(xs)\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.fill(text, text.index("<FILL>"))
        engine.regenerate(text, text.index("return"), len(text) - 1, n=2)
        engine.repair(text, text.index("return"), len(text) - 1)


def test_fill_cli_prints_no_warning(test_model_dir, tmp_path) -> None:
    f = tmp_path / "a.py"
    f.write_text("def add(a, b):\n    <FILL>\n")
    r = subprocess.run([sys.executable, "-m", "ui.cli", "fill", str(f), "--all-holes", "--model", str(test_model_dir),
                        "--json", "--max-new-tokens", "8"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr


def test_fim_prompt_bos_follows_the_tokenizer_files(tmp_path) -> None:
    """BOS leads the FIM prompt exactly when the folder's tokenizer files say sequences start with it."""
    from assistant.engine import Engine

    model = build_model(preset("test"))
    own = make_test_tokenizer()
    own.save(tmp_path / "own")
    assert json.loads((tmp_path / "own" / "tokenizer_config.json").read_text())["add_bos_token"] is True
    silent = tmp_path / "silent"  # a foreign folder that says nothing: the Seed-Coder report's format
    own.save(silent)
    cfg = json.loads((silent / "tokenizer_config.json").read_text())
    del cfg["add_bos_token"]
    (silent / "tokenizer_config.json").write_text(json.dumps(cfg))
    templated = make_test_tokenizer()  # a Llama-style post-processor that AutoTokenizer would apply
    templated.add_bos = None
    templated.tok.post_processor = processors.TemplateProcessing(
        single="<[begin▁of▁sentence]> $A", special_tokens=[("<[begin▁of▁sentence]>", 0)])
    templated.save(tmp_path / "templated")
    off = tmp_path / "off"
    own.save(off)
    cfg = json.loads((off / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = False
    (off / "tokenizer_config.json").write_text(json.dumps(cfg))
    starts = {}
    for name in ("own", "silent", "templated", "off"):
        engine = Engine(model, Tokenizer.from_folder(tmp_path / name))
        ids = engine._fim_prompt("def f(x):\n    ", "\n", engine.settings).ids
        assert ids.count(engine.fim_suffix) == 1 and ids.index(engine.fim_suffix) in (0, 1)
        starts[name] = ids[0] == own.bos_id
    assert starts == {"own": True, "silent": False, "templated": True, "off": False}


def test_eos_fill_is_an_option_that_saves_forwards_and_can_change_answers() -> None:
    """Off by default (the reference's rule). On, the masks after a committed EOS become EOS: fewer forwards,
    and the positions before it see EOS instead of MASK, which can change the answer."""
    model = build_model(preset("test", tie_word_embeddings=False), seed=5)
    with torch.no_grad():
        model.lm_head.weight[2] *= 4.0  # EOS wins often
    assert DecodeConfig().eos_fill is False
    saved, changed = 0, 0
    for i in range(12):
        prompt = [0] + [(7 * i + 13 * k + 5) % 1000 + 9 for k in range(1 + i % 9)]
        for B in (4, 8):
            cfg = dict(max_new_tokens=16, block_size=B, steps_per_block=B, threshold=None)
            base = generate(model, [prompt], DecodeConfig(**cfg))
            fill = generate(model, [prompt], DecodeConfig(**cfg, eos_fill=True))
            assert fill.nfe <= base.nfe
            saved += base.nfe - fill.nfe
            changed += base.tokens != fill.tokens
    assert saved > 0 and changed > 0


def test_loaded_published_folder_decodes_through_the_old_layout_as_diffusion(tmp_path) -> None:
    """The older release layout (LlamaForCausalLM + an auto_map naming SeedDiffcoderForCausalLM) is diffusion."""
    from model.testing import write_stable_diffcoder_folder

    write_stable_diffcoder_folder(tmp_path / "old", seed=1, dtype=torch.float32, layout="older")
    write_stable_diffcoder_folder(tmp_path / "new", seed=1, dtype=torch.float32)
    old, _ = load_checkpoint(tmp_path / "old")
    new, _ = load_checkpoint(tmp_path / "new")
    assert old.remask_config.kind == "bd" and not old.remask_config.logit_shift
    cfg = DecodeConfig(max_new_tokens=12)
    assert generate(old, [[0, 11, 12, 13, 14, 15]], cfg).tokens == generate(new, [[0, 11, 12, 13, 14, 15]], cfg).tokens
    r = subprocess.run([sys.executable, "-m", "ui.cli", "info", "--model", str(tmp_path / "old")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "SeedDiffcoderForCausalLM" in r.stdout, r.stdout  # info says why it chose diffusion
