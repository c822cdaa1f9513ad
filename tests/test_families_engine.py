"""The engine on a checkpoint of each family, asking the family what it can do: fill, regenerate, repair and
score run once per family; the full-attention families fill in place (Dream tries several canvas lengths in one
batch, DreamOn's middle changes length), SDAR goes through the block decoder with its own commit rule; and
``remask info`` says which family and why."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from assistant.api import Settings
from assistant.engine import Engine
from model import load_checkpoint
from model.families import capabilities, family_of
from model.families.testing import write_family_checkpoint

SRC = "def mean(xs):\n    total = 0\n    for x in xs:\n        <FILL>\n    return total / len(xs)\n"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam-engine")
    return {"sdar": write_family_checkpoint(root / "sdar", "sdar", seed=5, hidden=32, layers=1),
            "dream": write_family_checkpoint(root / "dream", "dream", seed=6, hidden=32, layers=1),
            "dreamon": write_family_checkpoint(root / "dreamon", "dreamon", seed=7, hidden=32, layers=1,
                                               boost={"<|expand|>": 2.5, "<|endoftext|>": 2.0})}


@pytest.mark.parametrize("name", ["sdar", "dream", "dreamon"])
def test_fill_regenerate_repair_and_score_run_on_each_family(folders, name) -> None:
    model, tok = load_checkpoint(folders[name])
    eng = Engine(model, tok, Settings(max_new_tokens=12))
    assert eng.family.name == name
    steps = []
    r = eng.fill(SRC, SRC.index("<FILL>"), callback=steps.append)
    assert r.candidates and steps and "<FILL>" not in r.candidates[0].new_text or r.candidates[0].empty
    a = SRC.index("total = 0")
    b = a + len("total = 0")
    r = eng.regenerate(SRC, a, b, n=2)
    assert r.candidates and all(c.new_text.startswith("def mean(xs):\n") for c in r.candidates)
    text = SRC.replace("<FILL>", "total += x")
    a = text.index("total += x")
    scores = eng.score(text, a, a + len("total += x"))
    assert scores and all(0 <= s.prob <= 1 for s in scores)
    rep = eng.repair(text, a, a + len("total += x"))
    assert rep.candidates and rep.stats["scored"] >= 1


def test_sdar_fill_uses_its_commit_rule(folders, monkeypatch) -> None:
    import model.decoder as dec

    seen = []
    real = dec.propose
    monkeypatch.setattr(dec, "propose", lambda lg, cfg, sch, gen: (seen.append(cfg.commit_rule), real(lg, cfg, sch,
                                                                                                         gen))[1])
    model, tok = load_checkpoint(folders["sdar"])
    Engine(model, tok, Settings(max_new_tokens=8)).fill(SRC, SRC.index("<FILL>"))
    assert seen and set(seen) == {"sdar"}


def test_dream_fill_tries_several_canvas_lengths_in_one_batch(folders, monkeypatch) -> None:
    from model.families import dream_decode

    batches = []

    orig = dream_decode.dream_canvas_generate

    def spy(model, canvases, cfg=None, **kw):
        batches.append([len(c) for c in canvases])
        return orig(model, canvases, cfg, **kw)

    monkeypatch.setattr(dream_decode, "dream_canvas_generate", spy)
    model, tok = load_checkpoint(folders["dream"])
    r = Engine(model, tok, Settings(max_new_tokens=12)).fill(SRC, SRC.index("<FILL>"))
    assert len(batches) == 1 and len(set(batches[0])) == 3  # lengths 3, 6 and 12 in one call
    assert r.candidates


def test_dreamon_fill_gets_its_length_from_the_model(folders) -> None:
    """No length guess: the middle starts at 4 masks and ends at whatever the expand/delete loop made it."""
    from model.families.run import infill_generate

    model, tok = load_checkpoint(folders["dreamon"])
    ids = tok.encode(SRC)
    cut = SRC.index("<FILL>")
    pre, suf = tok.encode(SRC[:cut]), tok.encode(SRC[cut + len("<FILL>"):])
    lengths = set()
    for k in range(4):
        res = infill_generate(model, [(pre[: len(pre) - k], suf)], max_new_tokens=16)
        lengths.add(len(res.tokens[0]))
        assert len(res.logprobs[0]) == len(res.tokens[0]) and all(lp < 0 for lp in res.logprobs[0])  # ranks
    assert ids and len(lengths) > 1


@pytest.mark.parametrize("name,why", [("sdar", "SDARForCausalLM"), ("dreamon", "expand token")])
def test_info_prints_family_attention_block_mask_capabilities_and_why(folders, name, why) -> None:
    out = subprocess.run([sys.executable, "-m", "ui.cli", "info", "--model", str(folders[name])],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout)
    model, _ = load_checkpoint(folders[name])
    fam = family_of(model)
    assert info["family"] == name and why in info["why"] and info["attention"] == fam.attention
    assert info["mask_id"] == model.remask_config.mask_token_id
    assert info["capabilities"] == sorted(capabilities(model))
    assert info["block_size"] == (4 if name == "sdar" else None)


def test_generate_runs_each_family_with_its_own_loop(folders) -> None:
    """``remask generate``'s path: SDAR's commit rule through the block decoder, Dream's diffusion_generate (cut at
    EOS), DreamOn's expand/delete loop."""
    from model import DecodeConfig, generate
    from model.families.dream_decode import DreamConfig, dream_generate
    from model.families.run import block_options, family_generate

    m, tok = load_checkpoint(folders["sdar"])
    ids = tok.encode("def f(x):")
    dc = DecodeConfig(max_new_tokens=10)
    assert family_generate(m, [ids], dc).tokens == generate(m, [ids], DecodeConfig(max_new_tokens=10,
                                                                                    **block_options(m))).tokens
    m, tok = load_checkpoint(folders["dream"])
    got = family_generate(m, [ids], DecodeConfig(max_new_tokens=10, confidence="entropy"), tokenizer=tok)
    want = dream_generate(m, [ids], DreamConfig(max_new_tokens=10, steps=10, alg="entropy")).generated[0]
    eos = m.remask_config.eos_token_id
    assert got.tokens[0] == (want[: want.index(eos)] if eos in want else want) and got.texts
    m, tok = load_checkpoint(folders["dreamon"])
    assert family_generate(m, [ids], DecodeConfig(max_new_tokens=10)).tokens[0] is not None


def test_the_lsp_and_demo_load_path_serves_each_family(folders) -> None:
    """The LSP (lsp.server._load_engine) and the demo (Engine.load, model_card) load a folder of each family and
    answer a fill with it."""
    from lsp.server import _load_engine
    from ui.demo.app import model_card

    for name, folder in folders.items():
        eng = _load_engine(str(folder), "cpu", Settings(max_new_tokens=6))
        assert eng.family.name == name
        assert isinstance(model_card(eng, folder), str)
        res = eng.fill(SRC, SRC.index("<FILL>"))
        assert res.candidates


def test_dream_dual_cache_is_an_option_exact_at_refresh_1_and_forwards_less(folders) -> None:
    """The approximate fast mode is off by default; with a refresh every step it is the exact mode; with
    refresh 4 three steps in four forward only the masked region (over cached prefix keys) and still finish."""
    from model.families.dream_decode import DreamConfig, dream_generate

    assert DreamConfig().cache == "none"
    model, tok = load_checkpoint(folders["dream"])
    rows = [tok.encode(SRC)[:20], tok.encode(SRC)[:12]]
    exact = dream_generate(model, rows, DreamConfig(max_new_tokens=12, steps=12)).generated
    assert dream_generate(model, rows, DreamConfig(max_new_tokens=12, steps=12, cache="dual", refresh=1)).generated \
        == exact
    widths = []
    hook = model.model.register_forward_pre_hook(lambda mod, a, kw: widths.append(kw["input_ids"].shape[1]),
                                                 with_kwargs=True)
    try:
        fast = dream_generate(model, rows, DreamConfig(max_new_tokens=12, steps=12, cache="dual", refresh=4))
    finally:
        hook.remove()
    mask = model.remask_config.mask_token_id
    assert all(mask not in g for g in fast.generated)
    assert widths[0] == 32 and max(widths[1:4]) <= 13 and widths[4] == 32


@pytest.mark.parametrize("name,flags", [("dream", []), ("dream", ["--cache", "dual", "--refresh", "2"]),
                                        ("dreamon", [])])
def test_eval_humaneval_infilling_fills_in_place_on_full_attention_families(folders, tmp_path, name, flags) -> None:
    """``remask eval humaneval-infilling`` runs Dream-family checkpoints (it used to refuse them as 'logit
    shift'): each hole is filled as the engine fills it, ``infill_generate`` over the task's prefix and suffix."""
    from model import DecodeConfig
    from model.families.run import infill_generate
    from training.evals.common import context_ids, prompt_budget, select
    from training.evals.humaneval import load_tasks

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "ui.cli", "eval", "humaneval-infilling", "--model",
                        str(folders[name]), "--limit", "2", "--max-new-tokens", "6", "--quiet", "--out", str(out),
                        *flags], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(x["status"] in ("passed", "failed", "error", "timeout") for x in rows)
    model, tok = load_checkpoint(folders[name])
    tasks = select(load_tasks("single-line"), 2, 0)
    cache, refresh = ("dual", 2) if flags else ("none", 8)
    for t, row in zip(tasks, rows, strict=True):
        job = context_ids(tok, t.prompt, t.suffix, prompt_budget(model, DecodeConfig(max_new_tokens=6)))
        want = infill_generate(model, [job], max_new_tokens=6, cache=cache, refresh=refresh)
        assert row["task_id"] == t.task_id and row["raw"] == tok.decode(want.tokens[0])


def test_eval_cache_option_is_for_full_attention_families(test_model_dir, tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "ui.cli", "eval", "humaneval-infilling", "--model", str(test_model_dir),
                        "--limit", "1", "--max-new-tokens", "4", "--quiet", "--out", str(tmp_path / "x"),
                        "--cache", "dual"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "full-attention" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["dream", "dreamon"])
def test_engine_dual_cache_setting(folders, name) -> None:
    """``Settings.dual_cache`` (``--dual-cache N``) reaches the full-attention loop: a refresh every step is the
    exact answer; a refresh every 3 steps forwards fewer full-width canvases and still fills the hole."""
    def fill(s: Settings) -> tuple[str, list[int]]:
        eng = Engine.load(str(folders[name]), settings=s)
        widths: list[int] = []
        hook = eng.model.model.register_forward_pre_hook(
            lambda mod, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
        try:
            r = eng.fill(SRC, SRC.index("<FILL>"))
        finally:
            hook.remove()
        return r.candidates[0].new_text, widths

    exact, w0 = fill(Settings(max_new_tokens=6))
    assert fill(Settings(max_new_tokens=6, dual_cache=1))[0] == exact
    text, w3 = fill(Settings(max_new_tokens=6, dual_cache=3))
    full = max(w0)
    assert text.startswith("def mean(xs):\n") and sum(w == full for w in w3) < sum(w == full for w in w0)
    r = subprocess.run([sys.executable, "-m", "ui.cli", "fill", "-", "--model", str(folders[name]), "--dual-cache",
                        "0"], input=SRC, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--dual-cache must be at least 1" in r.stderr


@pytest.mark.parametrize("name", ["dream", "dreamon"])
def test_serve_fills_in_place_on_full_attention_families(folders, name) -> None:
    """``remask serve`` on a Dream-family checkpoint answers /infill and /v1/completions (it used to refuse them as
    'logit shift'): the hole between prefix and suffix filled as ``infill_generate`` fills it."""
    from model.families.run import infill_generate
    from serve.app import ServeConfig
    from tests.test_serve import post, running

    prefix, suffix = "def f(x):\n    return ", "\n\nprint(f(2))\n"
    with running(ServeConfig(model=str(folders[name]))) as (url, state):
        eng = state.scheduler.engine
        p = eng._fim_prompt(prefix, suffix, Settings(max_new_tokens=8))
        want = eng.tok.decode(infill_generate(eng.model, [(p.prefix_ids, p.suffix_ids)], max_new_tokens=8).tokens[0])
        st, _, b = post(url + "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 8})
        assert st == 200 and json.loads(b)["content"] == want
        st, _, b = post(url + "/v1/completions", {"prompt": prefix, "suffix": suffix, "max_tokens": 8})
        assert st == 200 and json.loads(b)["choices"][0]["text"] == want
