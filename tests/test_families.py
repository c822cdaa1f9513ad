"""The family registry: detection (with its reason) of every supported layout, a clear error otherwise, and
published-layout folders loaded natively into the right transformers body with the family's special ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.checkpoint import CheckpointError, load_checkpoint, read_config
from model.families import FamilyError, detect, detect_config, family_of, get
from model.families.testing import write_family_checkpoint

LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, model_type="llama")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: write_family_checkpoint(root / f, f, seed=1, hidden=32, layers=1) for f in ("sdar", "dream", "dreamon")}


@pytest.mark.parametrize("raw,tokens,name,why", [
    (dict(LLAMA, remask_kind="bd", architectures=["BlockDiffusionLM"]), {}, "remask", "remask_kind"),
    (dict(LLAMA, architectures=["StableDiffcoderForCausalLM"]), {}, "stable-diffcoder", "StableDiffcoder"),
    (dict(LLAMA, architectures=["LlamaForCausalLM"],
          auto_map={"AutoModelForCausalLM": "modeling_seed_diffcoder.SeedDiffcoderForCausalLM"}), {},
     "stable-diffcoder", "older Stable-DiffCoder layout"),
    (dict(LLAMA, architectures=["LlamaForCausalLM"]), {}, "seed-coder", "autoregressive"),
    (dict(LLAMA, architectures=["SDARForCausalLM"], model_type="sdar"), {}, "sdar", "SDARForCausalLM"),
    (dict(LLAMA, architectures=["DreamModel"], model_type="Dream"), {}, "dream", "no <|expand|>"),
    (dict(LLAMA, architectures=["DreamModel"], model_type="Dream"), {"<|dlm_pad|>": 9}, "dream", "DiffuCoder"),
    (dict(LLAMA, architectures=["DreamModel"], model_type="Dream"), {"<|expand|>": 7}, "dreamon", "expand token"),
    (dict(LLAMA, architectures=["Qwen3ForCausalLM"], model_type="qwen3"), {}, "qwen-ar", "autoregressive"),
    (dict(LLAMA, architectures=["Qwen3ForCausalLM"], model_type="qwen3", remask_kind="bd", remask_family="remask"),
     {}, "remask", "remask_kind"),
])
def test_detect_names_the_family_and_why(raw, tokens, name, why) -> None:
    fam, reason = detect_config(raw, tokens)
    assert fam.name == name and why in reason


def test_unknown_architecture_is_a_clear_error_naming_the_supported_ones(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(dict(LLAMA, architectures=["MistralForCausalLM"],
                                                          model_type="mistral")))
    with pytest.raises(FamilyError) as e:
        detect(tmp_path)
    msg = str(e.value)
    assert "MistralForCausalLM" in msg and "mistral" in msg
    for title in ("SDAR", "DreamOn", "Stable-DiffCoder", "Dream / Dream-Coder / DiffuCoder", "Seed-Coder"):
        assert title in msg
    with pytest.raises(CheckpointError, match="remask runs these families"):
        read_config(tmp_path)


def test_capabilities_differ_where_the_families_do() -> None:
    assert get("sdar").can("kv_cache") and get("sdar").attention == "block_causal" and not get("sdar").logit_shift
    assert get("dream").can("fixed_canvas") and get("dream").attention == "full" and get("dream").logit_shift
    assert get("dreamon").can("expand_delete") and not get("dreamon").can("fixed_canvas")
    assert get("seed-coder").can("ar") and not get("remask").can("ar")
    with pytest.raises(KeyError):
        get("sdar").can("fly")


@pytest.mark.parametrize("name,cls", [("sdar", "Qwen3ForCausalLM"), ("dream", "Qwen2ForCausalLM"),
                                      ("dreamon", "Qwen2ForCausalLM")])
def test_published_layouts_load_natively(folders, name, cls) -> None:
    raw = json.loads((folders[name] / "config.json").read_text())
    model, tok = load_checkpoint(folders[name])
    assert type(model).__name__ == cls
    fam = family_of(model)
    assert fam.name == name
    cfg = model.remask_config
    assert cfg.mask_token_id == raw["mask_token_id"] == tok.mask_id
    assert "family_reason" in cfg.extra
    if name == "dreamon":
        assert cfg.extra["expand_token_id"] == tok.tok.token_to_id("<|expand|>") == tok.ids["expand"]
        assert tok.bos_id == tok.tok.token_to_id("<|beginoftext|>") == raw["bos_token_id"]
    if name == "sdar":
        assert cfg.block_size == 4 and tok.tok.id_to_token(tok.mask_id) == "<|MASK|>"
    # Every weight of the published names was used: a forward gives finite logits.
    import torch

    from model.network import forward_logits

    ids = torch.tensor([[1, 2, 3, 4]])
    lg = forward_logits(model, ids, torch.arange(4)[None], torch.ones(1, 4, 4, dtype=torch.bool))
    assert torch.isfinite(lg).all() and lg.shape == (1, 4, cfg.vocab_size)


@pytest.mark.parametrize("template", ["sdar", "ours"])
def test_chat_prompt_renders_as_transformers_apply_chat_template(tmp_path, template) -> None:
    """A folder's chat template (SDAR keeps it in chat_template.jinja) renders as transformers renders it."""
    import shutil

    from transformers import PreTrainedTokenizerFast

    from model.testing import make_test_tokenizer
    from model.tokenizer import Tokenizer

    tok = make_test_tokenizer()
    if template == "sdar":
        tok.chat_template = None
        tok.save(tmp_path)
        shutil.copy(Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "sdar" /
                    "chat_template.jinja", tmp_path / "chat_template.jinja")
    else:
        tok.save(tmp_path)
    ours = Tokenizer.from_folder(tmp_path)
    assert ours.chat_template
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), chat_template=ours.chat_template,
                                 bos_token="<[begin▁of▁sentence]>", eos_token="<[end▁of▁sentence]>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def f(x):\n    pass"}]
    want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.tok.decode(ours.chat_prompt(messages), skip_special_tokens=False) == want
