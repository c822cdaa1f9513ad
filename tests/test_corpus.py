"""Corpus builder: filters, dedup, split, holdout, manifest, eval-set refusal; token shards; FIM spans."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from model.testing import stdlib_texts
from model.tokenizer import Tokenizer
from training.corpus import CorpusError, TextStore, TokenStore, build_corpus, read_manifest, tokenize_corpus
from training.fim import FimSettings, fim_sample, line_span, node_span

EXTS = [".py", ".js"]


def _src(tmp_path, n=30):
    root = tmp_path / "src"
    texts = stdlib_texts(n)
    for i, t in enumerate(texts):
        pkg = root / f"pkg{i % 5}"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / f"mod{i}.py").write_text(t, encoding="utf-8")
    return root, texts


def test_filters_dedup_split_manifest(tmp_path):
    root, texts = _src(tmp_path)
    (root / "pkg0" / "copy.py").write_text(texts[0], encoding="utf-8")  # exact duplicate
    (root / "pkg0" / "mini.js").write_text("var a=1;" * 400, encoding="utf-8")  # one 3200-char line
    (root / "pkg0" / "latin.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1") * 20)
    (root / "pkg0" / "gen.py").write_text("# This file is auto-generated. Do not edit.\n" + "x = 1\n" * 30)
    (root / "pkg0" / "tiny.py").write_text("x=1\n")
    (root / "pkg0" / "tests").mkdir()
    (root / "pkg0" / "tests" / "test_a.py").write_text(texts[1] + "\n# test copy\n")
    m = build_corpus(tmp_path / "corpus", [str(root)], extensions=EXTS, holdout=["pkg4"], seed=1,
                     val_fraction=0.1, min_val_files=2, log=lambda s: None)
    d = m["dropped"]
    assert d["duplicate"] == 1 and d["minified"] == 1 and d["not_utf8"] == 1
    assert d["generated"] == 1 and d["too_small"] == 1
    assert not any("tests/" in f["path"] for f in m["files"])
    assert {f["split"] for f in m["files"] if f["package"] == "pkg4"} == {"holdout"}
    assert m["splits"]["val"]["files"] >= 2 and m["splits"]["train"]["files"] > 0
    # Manifest hashes are the files' own; the text store round-trips each split in manifest order.
    store = TextStore(tmp_path / "corpus", "train")
    train_files = [f for f in m["files"] if f["split"] == "train"]
    assert len(store) == len(train_files)
    for i, f in enumerate(train_files):
        data = (root / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] == hashlib.sha256(store[i].encode()).hexdigest()
        assert f["root"] == str(root.resolve())
    assert read_manifest(tmp_path / "corpus")["version"] == 1
    # The same seed gives the same split.
    m2 = build_corpus(tmp_path / "corpus2", [str(root)], extensions=EXTS, holdout=["pkg4"], seed=1,
                      val_fraction=0.1, min_val_files=2, log=lambda s: None)
    assert [f["split"] for f in m2["files"]] == [f["split"] for f in m["files"]]


def test_refuses_eval_sets(tmp_path):
    bad = tmp_path / "CanItEdit" / "code"
    bad.mkdir(parents=True)
    (bad / "a.py").write_text("def f():\n    return 1\n" * 10)
    with pytest.raises(CorpusError, match="evaluation set"):
        build_corpus(tmp_path / "c", [str(bad)], extensions=EXTS, holdout=[], log=lambda s: None)
    # Inside an allowed root, eval-set folders are skipped and counted.
    root, _ = _src(tmp_path, 6)
    inner = root / "pkg0" / "canitedit"
    inner.mkdir()
    (inner / "leak.py").write_text("def leak():\n    return 42\n" * 10)
    m = build_corpus(tmp_path / "c2", [str(root)], extensions=EXTS, holdout=[], log=lambda s: None)
    assert m["dropped"]["eval_set_refused"] == 1
    assert not any("canitedit" in f["path"].lower() for f in m["files"])


def test_cli_refuses_canitedit(tmp_path, capsys):
    from ui.cli import main

    bad = tmp_path / "canitedit"
    bad.mkdir()
    (bad / "a.py").write_text("x = 1\n" * 40)
    rc = main(["corpus", "build", "--out", str(tmp_path / "c"), "--sources", str(bad)])
    assert rc == 2
    assert "CanItEdit" in capsys.readouterr().err


def test_token_shards(tmp_path, test_model_dir):
    root, _ = _src(tmp_path, 12)
    build_corpus(tmp_path / "corpus", [str(root)], extensions=EXTS, holdout=[], log=lambda s: None)
    tokenize_corpus(tmp_path / "corpus", test_model_dir, log=lambda s: None)
    tok = Tokenizer.from_folder(test_model_dir)
    ts, txt = TokenStore(tmp_path / "corpus", "train"), TextStore(tmp_path / "corpus", "train")
    assert ts.tokens.dtype == np.uint16
    for i in range(len(txt)):
        a, b = int(ts.offsets[i]), int(ts.offsets[i + 1])
        assert list(ts.tokens[a:b]) == tok.encode(txt[i]) + [tok.eos_id]
    meta = json.loads((tmp_path / "corpus" / "tokens.json").read_text())
    assert meta["tokens"]["train"] == len(ts)


def test_fim_spans_are_user_like(test_model_dir):
    tok = Tokenizer.from_folder(test_model_dir)
    text = stdlib_texts(3)[2]
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = line_span(text, rng, 4)
        assert (a == 0 or text[a - 1] == "\n") and (b == len(text) or text[b - 1] == "\n")
        assert 1 <= text[a:b].count("\n") <= 4
    import tree_sitter
    import tree_sitter_python

    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_python.language()))
    src = "def f(x):\n    if x > 1:\n        return g(x, 2)\n    return 0\n"
    root = parser.parse(src.encode()).root_node
    nodes = set()
    stack = [root]
    while stack:
        n = stack.pop()
        nodes.add((n.start_byte, n.end_byte))
        stack.extend(n.children)
    for _ in range(20):
        span = node_span(src, "py", rng, 4)
        assert span in nodes and span != (0, len(src))
    s = FimSettings(prefix_tokens=50, suffix_tokens=60)
    pre, suf, mid = tok.fim_ids
    for seed in range(10):
        ids = fim_sample(text, "py", tok, np.random.default_rng(seed), s)
        assert ids[0] == suf and ids[-1] == tok.eos_id
        i_pre, i_mid = ids.index(pre), ids.index(mid)
        assert i_pre - 1 <= 60 and i_mid - i_pre - 1 <= 50
