"""``remask fill`` / ``remask edit`` in-process: diffs, --apply (atomic, with a backup), --json, stdin, errors."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from assistant import cli as acli
from ui.cli import main

SRC = '''def add(a, b):
    """Add two numbers."""
    pass


def mul(a, b):
    return <FILL>
'''


@pytest.fixture()
def src(tmp_path) -> Path:
    p = tmp_path / "m.py"
    p.write_text(SRC, encoding="utf-8")
    os.chmod(p, 0o640)
    return p


def _run(args, model_dir, capsys, extra=("--max-new-tokens", "6", "--steps", "1")):
    rc = main([*args, "--model", str(model_dir), *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_fill_prints_a_diff_and_writes_nothing(src, test_model_dir, capsys):
    rc, out, err = _run(["fill", str(src)], test_model_dir, capsys)
    assert rc == 0
    assert src.read_text(encoding="utf-8") == SRC
    assert not (src.parent / "m.py.orig").exists()
    if out:
        assert out.startswith(f"--- a/{str(src).lstrip('/')}") and "\x1b[" not in out  # no colour off a tty
        assert "-    pass" in out  # the first hole (the pass body) is the one filled
    else:
        assert "no change" in err


def test_color_flag_colours_the_diff(src, test_model_dir, capsys):
    rc, out, _ = _run(["fill", str(src), "--line", "7", "--color"], test_model_dir, capsys)
    assert rc == 0 and (not out or "\x1b[31m-    return <FILL>" in out)


def test_apply_is_atomic_and_keeps_a_backup(src, test_model_dir, capsys):
    rc, out, _ = _run(["fill", str(src), "--all-holes", "--json"], test_model_dir, capsys)
    expected = json.loads(out)["new_text"]
    rc, _, err = _run(["fill", str(src), "--all-holes", "--apply"], test_model_dir, capsys)
    assert rc == 0 and "wrote" in err
    assert src.read_text(encoding="utf-8") == expected != SRC
    assert (src.parent / "m.py.orig").read_text(encoding="utf-8") == SRC
    assert (src.stat().st_mode & 0o777) == 0o640  # permissions kept
    assert sorted(p.name for p in src.parent.iterdir()) == ["m.py", "m.py.orig"]  # no temp files left


def test_failed_write_leaves_the_file_intact(src, monkeypatch):
    def boom(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(acli.os, "replace", boom)
    with pytest.raises(acli.CliError, match="disk full; .* was not changed"):
        acli.write_atomic(src, "new text\n", backup=False)
    assert src.read_text(encoding="utf-8") == SRC
    assert [p.name for p in src.parent.iterdir()] == ["m.py"]


def test_apply_writes_through_a_symlink_and_refuses_a_read_only_file(src, tmp_path):
    link = tmp_path / "link.py"
    link.symlink_to(src)
    acli.write_atomic(link, "x = 1\n")
    assert link.is_symlink() and src.read_text(encoding="utf-8") == "x = 1\n"
    assert (tmp_path / "m.py.orig").read_text(encoding="utf-8") == SRC
    os.chmod(src, 0o444)
    with pytest.raises(acli.CliError, match="read-only"):
        acli.write_atomic(src, "y = 2\n")
    assert src.read_text(encoding="utf-8") == "x = 1\n"


def test_stdin_apply_keeps_a_bom(test_model_dir, capsysbinary, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbf" + SRC.encode("utf-8"))))
    rc = main(["fill", "-", "--language", "python", "--line", "7", "--apply", "--model", str(test_model_dir),
               "--max-new-tokens", "6", "--steps", "1"])
    out = capsysbinary.readouterr().out
    assert rc == 0 and out.startswith(b"\xef\xbb\xbfdef add(a, b):\n")


def test_stdin_apply_json_is_one_json_object(test_model_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SRC.encode("utf-8"))))
    rc, out, _ = _run(["fill", "-", "--language", "python", "--line", "7", "--apply", "--json"], test_model_dir,
                      capsys)
    assert rc == 0 and json.loads(out)["new_text"].startswith("def add(a, b):\n")


def test_file_changed_while_generating_is_not_overwritten(src):
    _, _, st = acli.read_source(str(src))
    src.write_text(SRC + "# edited meanwhile\n", encoding="utf-8")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    with pytest.raises(acli.CliError, match="changed on disk"):
        acli.write_atomic(src, "x\n", expect=st)
    assert src.read_text(encoding="utf-8").endswith("# edited meanwhile\n")


def test_stdin_and_apply_print_the_new_text(test_model_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SRC.encode("utf-8"))))
    rc, out, _ = _run(["fill", "-", "--language", "python", "--line", "7", "--apply"], test_model_dir, capsys)
    assert rc == 0
    assert out.startswith("def add(a, b):\n") and out.endswith("\n")
    assert "return <FILL>" not in out or out == SRC  # the hole on line 7 was filled (or nothing changed)


def test_json_record(src, test_model_dir, capsys):
    rc, out, _ = _run(["fill", str(src), "--line", "7", "--json"], test_model_dir, capsys)
    rec = json.loads(out)
    assert rc == 0 and rec["op"] == "fill" and rec["file"] == str(src)
    assert rec["spans"][0]["start"]["line"] == 6 and rec["spans"][0]["start"]["character"] == 11
    assert rec["stats"]["language"] == "python"
    for e in rec["edits"]:
        assert e["start"]["line"] == 6


def test_edit_repair_reports_flagged_tokens(src, test_model_dir, capsys):
    rc, out, err = _run(["edit", str(src), "--range", "2:3", "--op", "repair", "--repair-fraction", "0.2"],
                        test_model_dir, capsys)
    assert rc == 0 and "flagged " in err
    assert all(("m.py:2:" in line or "m.py:3:" in line) for line in err.splitlines() if line.startswith("flagged"))


def test_edit_regenerate_json_has_candidates(src, test_model_dir, capsys):
    rc, out, _ = _run(["edit", str(src), "--range", "7:7", "--op", "regenerate", "--candidates", "2", "--json"],
                      test_model_dir, capsys)
    rec = json.loads(out)
    assert rc == 0 and 1 <= len(rec["candidates"]) <= 2


def test_regenerate_samples_real_candidates(src, test_model_dir, capsys):
    """Candidates are sampled at candidate_temperature: different seeds give different text (a NaN in the
    sampler once made every sample the same token and every candidate empty)."""
    texts = set()
    for seed in ("1", "2", "3"):
        rc, out, _ = _run(["edit", str(src), "--range", "7:7", "--op", "regenerate", "--candidates", "3", "--json",
                           "--seed", seed], test_model_dir, capsys, extra=("--max-new-tokens", "8"))
        rec = json.loads(out)
        texts |= {c["diff"] for c in rec["candidates"]}
    assert len(texts) >= 3 and all(texts)


@pytest.mark.parametrize("setup, args, message", [
    (None, ["fill", "{dir}/missing.py"], "no such file"),
    (b"\x00\x01binary", ["fill", "{file}"], "binary content"),
    (b"\xff\xfe bad", ["fill", "{file}"], "not UTF-8"),
    (b"   \n", ["fill", "{file}"], "the file is empty"),
    (SRC.encode(), ["fill", "{file}", "--range", "5:99"], "outside the file"),
    (SRC.encode(), ["fill", "{file}", "--range", "x"], "expected A:B"),
    (SRC.encode(), ["edit", "{file}", "--range", "1:2", "--op", "instruct", "--instruction", "go"],
     "instruct checkpoint"),
    (SRC.encode(), ["edit", "{file}", "--range", "1:2", "--op", "instruct"], "needs --instruction"),
    (b"x = 1\n", ["fill", "{file}"], "no holes found"),
    (SRC.encode(), ["fill", "{file}", "--device", "bogus"], "unknown device 'bogus'"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, test_model_dir, capsys, setup, args, message):
    f = tmp_path / "f.py"
    if setup is not None:
        f.write_bytes(setup)
    argv = [a.format(dir=tmp_path, file=f) for a in args]
    rc, out, err = _run([*argv, "--apply"], test_model_dir, capsys)
    assert rc == 2 and message in err and err.startswith("error: ")
    if setup is not None:
        assert f.read_bytes() == setup
    assert not (tmp_path / "f.py.orig").exists()


@pytest.mark.skipif((Path(__file__).resolve().parents[1] / "model" / "default" / "config.json").is_file(),
                    reason="the default model is present")
def test_missing_default_model_is_a_clear_error(src, capsys):
    rc = main(["fill", str(src)])
    _, err = capsys.readouterr()
    assert rc == 2 and "cannot load the model" in err and "--model" in err


def test_line_picks_the_hole_on_that_line_only(src, test_model_dir, capsys):
    # Line 4 is blank: the pass hole of line 3 ends where line 4 starts, but it is not on line 4.
    rc, out, _ = _run(["fill", str(src), "--line", "4", "--json"], test_model_dir, capsys)
    rec = json.loads(out)
    assert rc == 0 and rec["spans"][0]["start"]["line"] == 3 and rec["spans"][0]["label"].startswith("insertion")
    rc, out, _ = _run(["fill", str(src), "--line", "3", "--json"], test_model_dir, capsys)
    assert json.loads(out)["spans"][0]["label"] == "placeholder body (line 3)"
