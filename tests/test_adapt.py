"""LoRA adapters (issue 19): ``remask train adapt`` on a synthetic repository with a made-up API, the adapter card,
save/load/merge, the base check, kill-and-resume, and the adapter used by ``remask fill`` and the language server.

One adapter of the built-in model is trained once for the module (about a minute on 2 CPU cores); the other tests
use the random ``test`` model.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.adapt import ADAPT_DEFAULTS, AdaptJob, EvalSettings, LoraSettings, run_adapt, source_files
from training.config import TrainConfig, apply_overrides
from training.trainer import TrainingError

ROOT = Path(__file__).resolve().parents[1]
HOLE = "import zorblax\n\n\ndef process_frame_77_0(frames, signal):\n    <FILL>\n"


def make_repo(root: Path, n_files: int = 24, seed: int = 0) -> Path:
    """A project whose code calls its own made-up API (``zorblax.quantize_flux``, ``zorblax.emit_glyph``), plus
    a git-ignored folder whose file must never reach the corpus."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "zorblax.py").write_text(
        '"""The zorblax flux toolkit."""\n\n\ndef quantize_flux(stream, level):\n    return [x // level for x in '
        'stream]\n\n\ndef emit_glyph(code, width):\n    return chr(code) * width\n')
    nouns = ["sensor", "reading", "packet", "frame", "sample", "signal", "batch", "record"]
    for i in range(n_files):
        lines = [f'"""Module {i}: flux handling."""', "import zorblax", "", ""]
        for j in range(3):
            a, b = rng.sample(nouns, 2)
            lvl = rng.randint(2, 9)
            lines += [f"def process_{a}_{i}_{j}({a}s, {b}):", f"    total = zorblax.quantize_flux({a}s, level={lvl})",
                      f"    mark = zorblax.emit_glyph(len(total), width={lvl})", f"    return total, mark, {b}", "", ""]
        (root / f"mod_{i:02d}.py").write_text("\n".join(lines).rstrip() + "\n")
    (root / ".gitignore").write_text("ignored/\n*.log\n")
    (root / "ignored").mkdir(exist_ok=True)
    (root / "ignored" / "secret.py").write_text("IGNORED_SECRET_MARKER = 1\n" * 20)
    return root


def job(model: str, repo: Path, out: Path, steps: int, lr: float, **cfg_overrides) -> AdaptJob:
    cfg = apply_overrides(TrainConfig(), {**ADAPT_DEFAULTS, "seq_len": 64, "batch_size": 4, "grad_accum": 1,
                                          "eval_every": 0, "save_every": 0, "eval_batches": 2, "warmup_steps": 5,
                                          "fim_rate": 0.9, "progress": False, **cfg_overrides}, "test")
    return AdaptJob(model=model, data=[str(repo)], out=str(out), cfg=cfg,
                    lora=LoraSettings(r=16, gradient_checkpointing=False),
                    evals=EvalSettings(per_kind=2, kinds=("line",), max_new_tokens=24), steps=steps, lr=lr)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """(adapter folder, card): the built-in model adapted to the synthetic repository."""
    base = tmp_path_factory.mktemp("adapt")
    repo = make_repo(base / "repo")
    out = base / "adapter"
    j = job("default", repo, out, steps=60, lr=6e-3)
    card = run_adapt(j, log=lambda s: None)
    return out, card


def _fill(adapter: str | None) -> str:
    from assistant.api import Settings
    from assistant.engine import Engine

    engine = Engine.load("default", settings=Settings(max_new_tokens=32), adapter=adapter)
    res = engine.fill(HOLE, HOLE.index("<FILL>"))
    return res.edits[0].new_text if res.edits else ""


def test_adaptation_lowers_heldout_loss_and_fills_the_projects_api(adapted):
    out, card = adapted
    ev = card["evaluation"]
    assert ev["heldout_files"] >= 2
    assert ev["after"]["loss"] < 0.8 * ev["before"]["loss"], ev
    assert ev["before"]["exact"]["spans"] == ev["after"]["exact"]["spans"] > 0  # the exact-match task ran twice
    # the PEFT folder and the card
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_card.json", "ADAPTER.md"):
        assert (out / name).is_file(), name
    from model.adapter import base_fingerprint
    from model.checkpoint import resolve_model

    base, _, _ = resolve_model("default")
    assert card["base"]["fingerprint"] == base_fingerprint(base)
    assert card["hyperparameters"]["r"] == 16 and card["hyperparameters"]["steps"] == 60
    assert "before" in (out / "ADAPTER.md").read_text() or "->" in (out / "ADAPTER.md").read_text()
    # .gitignore respected: the ignored file never reached the corpus; held-out files are whole files, not trained on
    manifest = json.loads((out / "train" / "corpus" / "manifest.json").read_text())
    paths = [f["path"] for f in manifest["files"]]
    assert not any("ignored" in p for p in paths) and any(p.endswith("zorblax.py") for p in paths)
    held = {f["path"] for f in manifest["files"] if f["split"] == "val"}
    assert held and held.isdisjoint(f["path"] for f in manifest["files"] if f["split"] == "train")
    # the adapted model writes calls to the made-up API; the base model never does
    base_fill, adapted_fill = _fill(None), _fill(str(out))
    assert "zorblax" not in base_fill
    assert "zorblax." in adapted_fill, adapted_fill


def test_cli_fill_uses_the_adapter_and_refuses_another_base(adapted, tmp_path, test_model_dir, capsys):
    out, _ = adapted
    f = tmp_path / "hole.py"
    f.write_text(HOLE)
    args = ["fill", str(f), "--all-holes", "--max-new-tokens", "32"]
    r = subprocess.run([sys.executable, "-m", "ui.cli", *args, "--json", "--adapter", str(out)], capture_output=True,
                       text=True, env=_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "zorblax." in json.loads(r.stdout)["new_text"].replace("import zorblax", "", 1)
    from ui.cli import main

    assert main([*args, "--apply", "--model", str(test_model_dir), "--adapter", str(out)]) == 2
    err = capsys.readouterr().err
    assert "trained on another base model" in err and str(out) in err
    assert f.read_text() == HOLE  # nothing written


@pytest.mark.asyncio
async def test_language_server_uses_the_adapter_setting(adapted):
    from lsprotocol import types as T
    from pytest_lsp import client_capabilities
    from pytest_lsp.client import make_test_lsp_client

    out, _ = adapted
    client = make_test_lsp_client()
    await client.start_io(sys.executable, "-m", "ui.cli", "lsp", env=_env(), cwd=str(ROOT))
    caps = client_capabilities("visual-studio-code")
    caps.text_document.inline_completion = T.InlineCompletionClientCapabilities()
    opts = {"remask": {"adapter": str(out), "debounceMs": 0, "inlineMaxTokens": 32, "minConfidence": 0}}
    await client.initialize_session(T.InitializeParams(capabilities=caps, root_uri=ROOT.as_uri(),
                                                       initialization_options=opts))
    try:
        import asyncio

        for _ in range(1200):
            st = await client.protocol.send_request_async("remask/status", None)
            if st.state != "loading":
                break
            await asyncio.sleep(0.05)
        assert st.state == "ready", st.detail
        text = HOLE.replace("<FILL>", "total")
        uri = (ROOT / "virtual-adapt.py").as_uri()
        client.text_document_did_open(T.DidOpenTextDocumentParams(
            text_document=T.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
        res = await client.text_document_inline_completion_async(T.InlineCompletionParams(
            text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=4, character=9),
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Invoked)))
        items = res.items if hasattr(res, "items") else res
        assert items and "zorblax." in items[0].insert_text, items
    finally:
        await client.shutdown_session()
        await client.stop()


def test_saved_adapter_merged_and_unmerged_give_the_adapters_logits(tmp_path, test_model_dir):
    from peft import LoraConfig, get_peft_model

    from model.adapter import AdapterError, apply_adapter, base_fingerprint, save_adapter, target_modules_for
    from model.checkpoint import load_checkpoint, resolve_model
    from model.testing import make_test_checkpoint

    model, _ = load_checkpoint(test_model_dir)
    ids = torch.randint(10, 1000, (2, 24))
    with torch.no_grad():
        base_logits = model(input_ids=ids).logits
    fp = base_fingerprint(model)
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules_for(model),
                                            init_lora_weights=False))  # non-zero B: the adapter changes the output
    peft.eval()
    with torch.no_grad():
        want = peft.base_model.model(input_ids=ids).logits
    assert not torch.allclose(want, base_logits, atol=1e-3)
    assert base_fingerprint(peft.base_model.model) == fp  # LoRA layers and renamed base weights are left out
    out = save_adapter(peft, tmp_path / "ad", {"base": {"path": str(test_model_dir), "fingerprint": fp}}, "# t\n")
    for merge in (True, False):
        m, _ = load_checkpoint(test_model_dir)
        got = apply_adapter(m, out, merge=merge)
        assert got.remask_config.kind == m.remask_config.kind
        assert any("lora_" in n for n, _ in got.named_parameters()) != merge
        with torch.no_grad():
            torch.testing.assert_close(got(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)
    # through the one loader every front end uses
    m, _, desc = resolve_model(str(test_model_dir), adapter=str(out))
    assert "adapter" in desc
    with torch.no_grad():
        torch.testing.assert_close(m(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)
    # another base of the same shape is refused, with what to do
    other = make_test_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(AdapterError, match="trained on another base model"):
        resolve_model(str(other), adapter=str(out))
    with pytest.raises(AdapterError, match="not a PEFT adapter"):
        resolve_model(str(other), adapter=str(other))


def test_killed_adapt_resumes_to_the_same_adapter(tmp_path, test_model_dir):
    from safetensors.torch import load_file

    repo = make_repo(tmp_path / "repo", n_files=10)

    def mk(out: str):
        j = job(str(test_model_dir), repo, tmp_path / out, steps=6, lr=5e-3, seq_len=32, save_every=2)
        j.evals.per_kind = 0  # loss only: this test is about resuming
        j.lora.gradient_checkpointing = True  # the default; it recomputes, so a resumed run still matches
        return j

    full = run_adapt(mk("full"), log=lambda s: None)

    class Killed(Exception):
        pass

    def kill(step, rec):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        run_adapt(mk("resumed"), on_step=kill, log=lambda s: None)
    assert not (tmp_path / "resumed" / "adapter_card.json").exists()
    state = json.loads((tmp_path / "resumed" / "train" / "checkpoint" / "training_state.json").read_text())
    assert state["step"] == 2
    other = mk("resumed")
    other.lora.r = 8
    with pytest.raises(TrainingError, match="r 16"):  # another rank would mistrain the saved state: refused
        run_adapt(other, log=lambda s: None)
    logs = []
    resumed = run_adapt(mk("resumed"), log=logs.append)
    assert any("resuming from step 2" in m for m in logs)
    a = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert resumed["evaluation"]["after"]["loss"] == pytest.approx(full["evaluation"]["after"]["loss"], rel=1e-5)

    def losses(run: str) -> list[float]:
        recs = [json.loads(x) for x in (tmp_path / run / "train" / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if "loss" in r]

    assert losses("full") == pytest.approx(losses("resumed"), rel=1e-5)
    # a finished adapter is not trained again
    again = run_adapt(mk("resumed"), log=logs.append)
    assert again == resumed and "already finished" in logs[-1]


def test_source_files_keeps_what_git_keeps(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("build/\n*.gen.py\n")
    (repo / "a.py").write_text("x = 1\n")
    (repo / "b.gen.py").write_text("x = 2\n")
    (repo / "build").mkdir()
    (repo / "build" / "c.py").write_text("x = 3\n")
    (repo / "sub").mkdir()
    (repo / "sub" / ".gitignore").write_text("local.py\n")
    (repo / "sub" / "local.py").write_text("x = 4\n")
    (repo / "sub" / "kept.py").write_text("x = 5\n")
    subprocess.run(["git", "-C", str(repo), "add", "a.py"], check=True)
    files, how = source_files(repo)
    names = sorted(str(f.relative_to(repo)) for f in files)
    assert names == [".gitignore", "a.py", "sub/.gitignore", "sub/kept.py"] and "git repository" in how
    folder = tmp_path / "folder"  # not a repository: its .gitignore files apply all the same
    import shutil

    shutil.copytree(repo, folder, ignore=shutil.ignore_patterns(".git"))
    files, how = source_files(folder)
    assert sorted(str(f.relative_to(folder)) for f in files) == names and ".gitignore respected" in how


def test_adapt_command_errors_are_one_line(tmp_path, capsys):
    import argparse

    from training.cli import add_arguments, run

    def call(*argv: str) -> tuple[int, str]:
        p = argparse.ArgumentParser()
        add_arguments("train", p)
        rc = run("train", p.parse_args(["adapt", *argv]))
        return rc, capsys.readouterr().err

    rc, err = call("--model", "default", "--out", str(tmp_path / "a"))
    assert rc == 2 and "--data" in err
    rc, err = call("--model", "random:test", "--data", str(tmp_path), "--out", str(tmp_path / "a"))
    assert rc == 2 and "trained checkpoint" in err
    (tmp_path / "file").write_text("x")
    rc, err = call("--model", "default", "--data", str(tmp_path), "--out", str(tmp_path / "file"))
    assert rc == 2 and "not an adapter folder" in err
    rc, err = call("--model", "default", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "b"))
    assert rc == 2 and "does not exist" in err


def test_ar_checkpoint_adapts_with_next_token_loss_and_sft_pairs(tmp_path):
    from model.testing import make_test_checkpoint
    from training.adapt import MixedRows

    ar = make_test_checkpoint(tmp_path / "ar", kind="ar", logit_shift=True)
    repo = make_repo(tmp_path / "repo", n_files=10)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Quantize stream {i}.", "response": f"zorblax.quantize_flux(s, "
                                         f"level={i})"}) + "\n" for i in range(5)))
    j = job(str(ar), repo, tmp_path / "ad", steps=4, lr=5e-3, seq_len=48, sft_data=[str(pairs)])
    j.evals.per_kind = 1
    card = run_adapt(j, log=lambda s: None)
    assert card["objective"].startswith("next-token") and card["data"]["sft_pairs"] == 5
    assert card["evaluation"]["loss"] == "next-token CE"
    assert card["evaluation"]["after"]["loss"] < card["evaluation"]["before"]["loss"]
    assert card["evaluation"]["after"]["exact"]["spans"] == 1  # decoded in AR mode
    # SFT rows keep the prompt clean (not eligible for masking); corpus rows may be masked anywhere
    from model.tokenizer import Tokenizer
    from training.data import PackedData, fim_settings
    from training.sft import SFTData

    tok = Tokenizer.from_folder(ar)
    corpus = tmp_path / "ad" / "train" / "corpus"
    import dataclasses

    sft = SFTData(corpus, "train", tok, 49, dataclasses.replace(j.cfg, sft_synthetic_rate=0.0))
    rows = MixedRows(PackedData(corpus, "train", tok, 49, 0.5, fim_settings(j.cfg), 0), sft, rate=0.5)
    elig = [rows.row(0, i)[1] for i in range(16)]
    assert any(e.all() for e in elig) and any(not e[0] and e.any() for e in elig)


@pytest.mark.parametrize("body", ["llama", "qwen2", "qwen3"])
def test_default_targets_cover_every_projection_of_each_body(body):
    from peft import LoraConfig, get_peft_model

    from model.adapter import base_fingerprint, target_modules_for
    from model.config import preset
    from model.network import build_model

    model = build_model(preset("test", body=body))
    fp = base_fingerprint(model)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=target_modules_for(model)))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in peft.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert base_fingerprint(peft.base_model.model) == fp
