"""``remask train --help`` is the reference a user reads: every option says what it is and what it takes."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from training.cli import add_arguments
from training.config import TrainConfig, build_config
from ui.cli import COMMANDS, main


def _parser(command: str = "train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"remask {command}")
    add_arguments(command, p)
    return p


@pytest.mark.parametrize("command", ["train", "corpus", "tokenizer"])
def test_every_option_has_help_and_a_meaningful_metavar(command):
    p = _parser(command)
    shown = [a for a in p._actions if a.help != argparse.SUPPRESS and a.option_strings and a.dest != "help"]
    assert len(shown) > 40
    for a in shown:
        assert a.help and len(a.help) > 10, a.option_strings
        if a.nargs != 0:  # takes a value: its metavar names it
            assert a.metavar not in (None, "V"), a.option_strings
    text = p.format_help()
    assert " V " not in text and " V\n" not in text
    assert "None" not in text  # no `(default None)`, no None among choices


def test_every_config_field_is_an_option_with_help():
    from training.config import FIELD_HELP

    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(FIELD_HELP)  # a new field needs its help
    text = _parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("preset", "time_budget_min"):  # train's own --preset / --time-budget-min
            continue
        assert f"--{f.name.replace('_', '-')} " in text, f.name
    assert "--out_dir" not in text  # the underscore spelling still parses but does not double the help


def test_booleans_say_how_to_turn_them_off_and_parse_every_way(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at hyphens: --no-bd-clip would split
    p = _parser()
    text = " ".join(p.format_help().split())
    for name in ("compile", "progress", "skip-tests", "bd-clip", "fused-adamw"):
        assert f"--no-{name}" in text, name
    assert "default on; --no-progress turns it off" in text
    assert "default off; --compile turns it on, --no-compile off" in text

    def cfg(*flags: str) -> TrainConfig:
        return build_config(p.parse_args(["ar", *flags]), None)

    assert (cfg().compile, cfg().progress) == (False, True)
    assert cfg("--compile").compile is True
    assert cfg("--compile", "true").compile is True  # the older spelling, as config files write it
    assert cfg("--progress", "false").progress is False
    assert cfg("--no-progress").progress is False
    assert cfg("--skip_tests", "no").skip_tests is False
    assert cfg("--no-fused-adamw").fused_adamw is False
    assert cfg("--preset", "small", "--no-compile").compile is False  # a preset that turns it on, turned off
    with pytest.raises(ValueError, match="cannot use"):
        cfg("--compile", "maybe")


def test_closed_choices_are_checked_by_argparse_and_list_no_none(capsys):
    p = _parser()
    dtype = next(a for a in p._actions if "--dtype" in a.option_strings)
    assert list(dtype.choices) == ["auto", "float32", "bfloat16"]
    with pytest.raises(SystemExit):
        p.parse_args(["ar", "--dtype", "None"])
    assert "invalid choice" in capsys.readouterr().err
    assert build_config(p.parse_args(["ar", "--schedule", "wsd", "--dtype", "bfloat16"]), None).schedule == "wsd"


def test_experiment_is_in_the_summary_line_and_data_has_no_private_default(capsys):
    actions = next(a for a in _parser()._actions if a.dest == "action").choices
    summary = COMMANDS["train"][1]
    assert all(a in summary.replace("|", " ").split() for a in actions), summary
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "experiment" in capsys.readouterr().out
    data = next(a for a in _parser()._actions if "--data" in a.option_strings)
    assert data.default is None and "shared" not in data.help and "human-eval-infilling" in data.help
