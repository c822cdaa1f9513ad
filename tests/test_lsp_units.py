"""Unit tests of the language server's pure parts: settings, positions, ghost-text clean-up, error handling."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types as T
from pygls.exceptions import JsonRpcException, JsonRpcInternalError

from assistant.api import EngineError
from assistant.positions import offset_to_position, position_to_offset
from lsp.config import ConfigError, ServerConfig
from lsp.server import REQUEST_FAILED, guarded, parse_tcp
from lsp.textutil import LineIndex, PositionError, detect_indent, window


def test_config_accepts_camel_and_snake_case_and_a_section():
    cfg = ServerConfig().updated({"remask": {"maxTokens": 64, "inline_max_tokens": 5, "threshold": None,
                                             "steps": 2, "features": {"diagnostics": True}}})
    assert (cfg.max_tokens, cfg.inline_max_tokens, cfg.threshold, cfg.steps) == (64, 5, None, 2)
    assert cfg.features.diagnostics and cfg.features.inline_completion
    s = cfg.settings(inline=True)
    assert s.max_new_tokens == 5 and s.steps == 2 and s.threshold is None
    assert cfg.settings().max_new_tokens == 64
    assert ServerConfig().updated({"otherTool": 1}) == ServerConfig()  # unknown keys are someone else's


@pytest.mark.parametrize("raw,word", [({"threshold": 0}, "threshold"), ({"threshold": 1.5}, "threshold"),
                                      ({"maxTokens": "10"}, "maxTokens"), ({"blockSize": True}, "blockSize"),
                                      ({"device": "gpu0"}, "device"), ({"features": {"nope": True}}, "nope"),
                                      ({"features": {"diagnostics": "yes"}}, "diagnostics"),
                                      ({"temperature": -1}, "temperature"), ("text", "object")])
def test_config_rejects_bad_values_by_name(raw, word):
    with pytest.raises(ConfigError, match=word):
        ServerConfig().updated(raw)


def test_line_index_matches_the_engine_conversion_in_every_encoding():
    text = "a = '\U0001F600é'\r\nb\rc\n\n😀x = 1"
    for enc in ("utf-16", "utf-8", "utf-32"):
        idx = LineIndex(text, enc)
        for off in range(len(text) + 1):
            if text[off - 1:off + 1] == "\r\n":
                continue  # between \r and \n: not a position
            line, ch = idx.position(off)
            assert (line, ch) == offset_to_position(text, off, enc)
            assert idx.offset(line, ch) == position_to_offset(text, line, ch, enc) == off


def test_line_index_is_strict_past_the_end_and_clamps_characters():
    idx = LineIndex("ab\ncd\n")
    assert idx.line_count == 3
    assert idx.offset(1, 99) == 5  # past the end of a line: its end (the LSP rule)
    assert idx.offset(2, 0) == 6
    with pytest.raises(PositionError, match="past the end"):
        idx.offset(3, 0)
    with pytest.raises(PositionError):
        idx.offset(-1, 0)


def test_window_cuts_at_line_boundaries_around_the_cursor():
    text = "".join(f"line {i}\n" for i in range(10_000))
    at = text.index("line 5000")
    sub, base = window(text, at, at, 1000)
    assert len(sub) < 1200 + 64 * 10 and sub.startswith("line ") and sub.endswith("\n")
    assert text[base:base + len(sub)] == sub and base <= at < base + len(sub)
    assert window("short", 2, 2, 1000) == ("short", 0)


def test_window_start_stays_put_while_typing():
    """The window starts at a line number that is a multiple of 64, so keystrokes at the cursor rarely move it
    (the engine's prompt cache relies on the prompt's head staying the same)."""
    text = "".join(f"value_{i} = {i}\n" for i in range(20_000))
    at = text.index("value_9000 =")
    bases = []
    for k in range(120):
        t = text[:at] + "x" * k + text[at:]
        sub, base = window(t, at + k, at + k, 2000)
        assert t.count("\n", 0, base) % 64 == 0 and base <= at + k < base + len(sub)
        bases.append(base)
    assert len(set(bases)) <= 2, sorted(set(bases))  # a plain line-start cut moves every ~15 keystrokes here


def test_detect_indent():
    assert detect_indent("if x:\n\ty\n") == "\t"
    assert detect_indent("if x:\n  y\n  if z:\n    w\n") == "  "
    assert detect_indent("x = 1\n") == "    "


def test_parse_tcp_defaults_to_loopback():
    assert parse_tcp("9000") == ("127.0.0.1", 9000)
    assert parse_tcp("0.0.0.0:1") == ("0.0.0.0", 1)
    assert parse_tcp("[::1]:7") == ("::1", 7)
    with pytest.raises(ValueError):
        parse_tcp("localhost:http")


class _FakeServer:
    def __init__(self) -> None:
        self.logged: list[tuple[str, T.MessageType]] = []

    def log(self, message: str, level: T.MessageType = T.MessageType.Info) -> None:
        self.logged.append((message, level))


def test_an_exception_in_a_handler_is_logged_and_answered_with_an_error():
    @guarded
    async def broken(ls, params):
        raise KeyError("boom")

    @guarded
    async def bad_input(ls, params):
        raise EngineError("the span is empty")

    ls = _FakeServer()
    with pytest.raises(JsonRpcInternalError, match="KeyError"):
        asyncio.run(broken(ls, None))
    assert ls.logged[-1][1] == T.MessageType.Error and "Traceback" in ls.logged[-1][0]
    with pytest.raises(JsonRpcException) as ei:
        asyncio.run(bad_input(ls, None))
    assert ei.value.code == REQUEST_FAILED and "the span is empty" in ei.value.message


def test_random_preset_gets_a_tokenizer_so_the_server_can_run():
    from assistant.api import Settings
    from lsp.server import _load_engine

    engine = _load_engine("random:test", "cpu", Settings(max_new_tokens=4))
    assert engine.info["kind"] == "bd" and "RANDOM" in engine.info["description"]
    res = engine.fill("def f(x):\n    return \n", 20, 20, language="python")
    assert res.op == "fill"


def test_window_cuts_inside_one_huge_line():
    text = "var a=1;" * 50_000 + "\nvar b=2;\n"  # minified: one 400k-character line
    at = 200_000
    sub, base = window(text, at, at, 64_000)
    assert len(sub) <= 64_000 + 1 and base <= at <= base + len(sub) and sub == text[base:base + len(sub)]


def test_line_index_fast_conversion_equals_counting_characters():
    import random

    from lsp.textutil import _units

    rng = random.Random(0)
    alphabet = ["a", "é", "中", "\U0001F600", " ", "\u0301"]
    for _ in range(300):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        for enc in ("utf-16", "utf-8"):
            idx = LineIndex(line, enc)
            for off in range(len(line) + 1):
                units = sum(_units(c, enc) for c in line[:off])
                assert idx.position(off) == (0, units) and idx.offset(0, units) == off
            inside = [sum(_units(c, enc) for c in line[:i]) + 1 for i, c in enumerate(line) if _units(c, enc) > 1]
            for u in inside:  # a unit inside a character: that character's end (as before)
                assert idx.offset(0, u) == next(i + 1 for i in range(len(line))
                                                if sum(_units(c, enc) for c in line[:i + 1]) >= u)


def test_requests_before_initialize_get_server_not_initialized():
    from pygls.exceptions import JsonRpcServerNotInitialized

    class Ls:
        initialized = False

    @guarded
    async def handler(ls, params):
        return "answered"

    with pytest.raises(JsonRpcServerNotInitialized):
        asyncio.run(handler(Ls(), None))
    Ls.initialized = True
    assert asyncio.run(handler(Ls(), None)) == "answered"


def test_span_labels_number_lines_in_the_whole_file():
    from assistant.spans import spans_at

    window_text = "def f(x):\n    return x + 1\n"  # lines 4001-4002 of a file cut to a window
    labels = [s.label for s in spans_at(window_text, window_text.index("return"), language="python",
                                        first_line=4001)]
    assert any("line 4002" in label for label in labels) and not any("line 2)" in label for label in labels)


def test_min_confidence_setting_and_flag():
    from lsp.config import MIN_CONFIDENCE
    from lsp.server import add_arguments, config_from_args

    assert ServerConfig().min_confidence == MIN_CONFIDENCE > 0  # on by default
    assert ServerConfig().updated({"minConfidence": 0}).min_confidence == 0.0
    assert ServerConfig().as_json()["minConfidence"] == MIN_CONFIDENCE
    for bad in (1.5, -0.1, "high", None):
        with pytest.raises(ConfigError, match="minConfidence"):
            ServerConfig().updated({"minConfidence": bad})
    import argparse

    p = argparse.ArgumentParser()
    add_arguments("lsp", p)
    assert config_from_args(p.parse_args([])).min_confidence == MIN_CONFIDENCE
    assert config_from_args(p.parse_args(["--min-confidence", "0.05"])).min_confidence == 0.05


def test_dual_cache_setting_reaches_the_engine_settings() -> None:
    cfg = ServerConfig().updated({"remask": {"dualCache": 4}})
    assert cfg.settings().dual_cache == 4 and ServerConfig().settings().dual_cache is None
    assert cfg.as_json()["dualCache"] == 4
    for bad in (0, "4", 2.5):
        with pytest.raises(ConfigError, match="dualCache"):
            cfg.updated({"dualCache": bad})
