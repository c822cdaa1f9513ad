"""``remask serve``: every dialect with the bodies real clients send, batching, cancellation, limits, auth.

Servers run in a thread on a loopback port chosen by the OS and stop at the end of each module; the default
model decodes the dialect tests (a real tokenizer and real answers), an untrained ``test`` model (which rarely
writes EOS, so its decodes run as long as asked) the cancellation and queue tests.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve.app import ServeConfig, create_app
from serve.fim import parse_prompt

# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def running(cfg: ServeConfig, wrap=None):
    """A server in a thread; yields (base URL, Server state). ``wrap``: an ASGI middleware around the app."""
    import uvicorn

    app = create_app(cfg)
    state = app.state.server
    config = uvicorn.Config(wrap(app) if wrap else app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    end = time.monotonic() + 60
    while not (server.started and state.scheduler.state != "loading"):
        assert time.monotonic() < end, "the server did not start"
        assert t.is_alive(), "the server thread died"
        time.sleep(0.02)
    assert state.scheduler.state == "ready", state.scheduler.detail
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.should_exit = True
        t.join(15)


def post(url: str, body, headers: dict | None = None, raw: bytes | None = None, timeout: float = 60):
    """(status, headers, body bytes) of a POST; never raises on HTTP errors."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def sse(data: bytes) -> list[str]:
    return [ln[5:].strip() for ln in data.decode().splitlines() if ln.startswith("data:")]


PREFIX = "def mean(values):\n    total = 0\n    for v in values:\n"
SUFFIX = "\n    return total / len(values)\n"

# What llama.vim sends (autoload/llama.vim, llama#fim): the typed part of the line is "prompt".
LLAMA_VIM_BODY = {
    "id_slot": 0, "input_prefix": "def mean(values):\n    total = 0\n", "input_suffix": SUFFIX,
    "input_extra": [{"text": "import math\n\n\ndef median(xs):\n    return sorted(xs)[len(xs) // 2]\n",
                     "filename": "stats.py"}],
    "prompt": "    for v in values:\n", "n_predict": 24, "stop": [], "n_indent": 4, "top_k": 40, "top_p": 0.90,
    "samplers": ["top_k", "top_p", "infill"], "stream": False, "cache_prompt": True, "t_max_prompt_ms": 500,
    "t_max_predict_ms": 60000,
    "response_fields": ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                        "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                        "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated",
                        "tokens_cached"],
}


@pytest.fixture(scope="module")
def server():
    with running(ServeConfig(model=None, default_predict=24, max_batch=16)) as s:
        yield s


def infill(url: str, prefix: str, suffix: str, n: int = 24, **kw) -> str:
    st, _, b = post(url + "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": n, **kw})
    assert st == 200, b
    return json.loads(b)["content"]


# ---------------------------------------------------------------------------------------------- prompt dialects


@pytest.mark.parametrize("prompt,prefix,suffix,dialect,extra", [
    # Twinny / Continue templates (fim-templates.ts), context files where the family has them
    ("<PRE> def f(): <SUF>\n  return 1 <MID>", "def f():", "\n  return 1", "codellama", []),
    ("<｜fim▁begin｜>def f():<｜fim▁hole｜>\n  return 1<｜fim▁end｜>", "def f():", "\n  return 1", "deepseek", []),
    ("[SUFFIX]\n  return 1[PREFIX]def f():", "def f():", "\n  return 1", "codestral", []),
    ("<|fim_prefix|>def f():<|fim_suffix|>\n  return 1<|fim_middle|>", "def f():", "\n  return 1", "qwen", []),
    ("<|repo_name|>r\n<|file_sep|>a.py\nimport os\n<|file_sep|>b.py\n<|fim_prefix|>x = <|fim_suffix|>\n"
     "<|fim_middle|>", "x = ", "\n", "qwen", [("a.py", "import os\n")]),
    ("<|file_separator|>u.py\nA = 1\n<|fim_prefix|>B<|fim_suffix|>C<|fim_middle|>", "B", "C", "qwen",
     [("u.py", "A = 1\n")]),
    ("<repo_name>r<file_sep>lib.py\ndef g(): pass\n<file_sep>main.py\n<fim_prefix>g(<fim_suffix>)\n<fim_middle>",
     "g(", ")\n", "starcoder", [("lib.py", "def g(): pass\n")]),
    ("<[fim-suffix]>\n  return 1<[fim-prefix]>def f():<[fim-middle]>", "def f():", "\n  return 1", "seed-coder", []),
    ("<fim_prefix>a<fim_suffix>b<fim_middle>typed", "atyped", "b", "starcoder", []),  # text after the middle token
    ("def plain():\n", "def plain():\n", "", None, []),  # no FIM tokens: continue the prompt
])
def test_parse_prompt_dialects(prompt, prefix, suffix, dialect, extra):
    p = parse_prompt(prompt)
    assert (p.prefix, p.suffix, p.dialect, p.extra) == (prefix, suffix, dialect, extra)


# ---------------------------------------------------------------------------------------------- llama.cpp


def test_infill_llama_vim_body(server):
    url, _ = server
    st, h, b = post(url + "/infill", LLAMA_VIM_BODY)
    assert st == 200 and h["content-type"].startswith("application/json")
    # llama.vim's own check before it decodes: compact JSON with "content":" (s:fim_on_response)
    assert re.match(rb'^\s*{', b) and re.search(rb'"content"\s*:"', b)
    d = json.loads(b)
    assert set(d) == set(LLAMA_VIM_BODY["response_fields"])  # flattened "timings/..." keys, nothing else
    assert isinstance(d["content"], str) and d["timings/predicted_n"] >= 0 and d["truncated"] is False
    # the same request with the context folded into the prefix by hand gives a different prompt but the same
    # content as a request that sends the identical fields again (deterministic, greedy)
    assert json.loads(post(url + "/infill", LLAMA_VIM_BODY)[2])["content"] == d["content"]


def test_infill_full_response_and_typed_prompt(server):
    url, _ = server
    body = {k: v for k, v in LLAMA_VIM_BODY.items() if k not in ("response_fields", "input_extra")}
    d = json.loads(post(url + "/infill", body)[2])
    for k in ("content", "stop", "tokens_predicted", "tokens_cached", "truncated", "timings", "id_slot"):
        assert k in d
    assert set(d["timings"]) >= {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"}
    # "prompt" (typed after the cursor's line start) is part of the prefix: moving it there changes nothing
    moved = dict(body, input_prefix=body["input_prefix"] + body["prompt"], prompt="")
    assert json.loads(post(url + "/infill", moved)[2])["content"] == d["content"]


def test_warmup_fills_the_slot_cache(server):
    url, _ = server
    extra = [{"filename": "ctx.py", "text": "".join(f"CONSTANT_{i} = {i}\n" for i in range(40))}]
    warm = {"id_slot": 3, "input_prefix": "", "input_suffix": "", "input_extra": extra, "prompt": "",
            "n_predict": 0, "temperature": 0.0, "samplers": [], "stream": False, "cache_prompt": True,
            "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""]}
    st, _, b = post(url + "/infill", warm)
    assert st == 200
    real = dict(LLAMA_VIM_BODY, id_slot=3, input_extra=extra)
    d = json.loads(post(url + "/infill", real)[2])
    assert d["tokens_cached"] >= 100  # the context's keys came from the warm-up


def test_infill_stream_matches_plain(server):
    url, _ = server
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 24}
    plain = json.loads(post(url + "/infill", body)[2])["content"]
    st, h, b = post(url + "/infill", dict(body, stream=True))
    assert st == 200 and h["content-type"].startswith("text/event-stream")
    events = [json.loads(e) for e in sse(b)]
    assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])
    assert "".join(e["content"] for e in events) == plain


# What Continue's llama.cpp provider / Tabby's llama.cpp kind send: a client-templated prompt to /completion.
TEMPLATES = {
    "codellama": f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>",
    "deepseek": f"<｜fim▁begin｜>{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>",
    "codestral": f"[SUFFIX]{SUFFIX}[PREFIX]{PREFIX}",
    "qwen": f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
    "starcoder": f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>",
}


@pytest.mark.parametrize("dialect", sorted(TEMPLATES))
def test_completion_with_client_templates(server, dialect):
    url, _ = server
    want = infill(url, PREFIX, SUFFIX)
    body = {"prompt": TEMPLATES[dialect], "n_predict": 24, "temperature": 0, "stream": False, "seed": 0,
            "stop": ["<|endoftext|>"]}
    d = json.loads(post(url + "/completion", body)[2])
    assert d["content"] == want
    # streaming, as Continue and Tabby read it
    events = [json.loads(e) for e in sse(post(url + "/completion", dict(body, stream=True))[2])]
    assert "".join(e["content"] for e in events) == want and events[-1]["stop"] is True


def test_plain_prompt_is_a_continuation(server):
    url, _ = server
    d = json.loads(post(url + "/completion", {"prompt": PREFIX, "n_predict": 16})[2])
    assert d["content"] == infill(url, PREFIX, "", 16)


# ---------------------------------------------------------------------------------------------- OpenAI / Mistral


def test_openai_completions_with_suffix(server):
    url, _ = server
    want = infill(url, PREFIX, SUFFIX)
    # Tabby openai/completion, minuet-ai openai_fim_compatible
    body = {"model": "remask", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 24, "temperature": 0,
            "stop": ["\n\n\n"], "stream": False}
    d = json.loads(post(url + "/v1/completions", body)[2])
    assert d["object"] == "text_completion" and d["choices"][0]["text"] == want.split("\n\n\n")[0]
    assert d["choices"][0]["finish_reason"] in ("stop", "length") and d["usage"]["prompt_tokens"] > 0
    st, h, b = post(url + "/v1/completions", dict(body, stream=True))
    chunks = sse(b)
    assert chunks[-1] == "[DONE]"
    text = "".join(json.loads(c)["choices"][0]["text"] for c in chunks[:-1])
    assert text == d["choices"][0]["text"]
    # Zed's open_ai_compatible_api: no suffix, a FIM-templated prompt, non-streaming
    zed = {"model": "remask", "prompt": TEMPLATES["qwen"], "max_tokens": 24, "stop": []}
    assert json.loads(post(url + "/v1/completions", zed)[2])["choices"][0]["text"] == want


def test_mistral_fim_completions(server):
    url, _ = server
    want = infill(url, PREFIX, SUFFIX)
    body = {"model": "codestral-latest", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 24, "temperature": 0,
            "stream": False}  # Continue's Mistral provider
    d = json.loads(post(url + "/v1/fim/completions", body)[2])
    assert d["choices"][0]["message"]["content"] == want
    chunks = sse(post(url + "/v1/fim/completions", dict(body, stream=True))[2])
    assert chunks[-1] == "[DONE]"
    assert "".join(json.loads(c)["choices"][0]["delta"]["content"] for c in chunks[:-1]) == want


def test_models_and_chat(server):
    url, _ = server
    d = json.loads(get(url + "/v1/models")[2])
    assert d["data"][0]["id"] == "remask"
    # llama.vim's instruction edits and Continue's chat: the default model is an instruct checkpoint
    body = {"model": "remask", "messages": [{"role": "system", "content": "You edit code."},
                                            {"role": "user", "content": "Write a function that adds two numbers."}],
            "max_tokens": 24, "temperature": 0}
    st, _, b = post(url + "/v1/chat/completions", body)
    d = json.loads(b)
    assert st == 200 and d["object"] == "chat.completion" and d["choices"][0]["message"]["role"] == "assistant"
    chunks = sse(post(url + "/v1/chat/completions", dict(body, stream=True))[2])
    assert chunks[-1] == "[DONE]"
    text = "".join(json.loads(c)["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == d["choices"][0]["message"]["content"]


def test_chat_on_a_base_model_is_a_clear_400(slow_server):
    url, _ = slow_server
    st, _, b = post(url + "/v1/chat/completions", {"model": "remask", "messages": [{"role": "user", "content": "hi"}]})
    assert st == 400 and "instruct checkpoint" in json.loads(b)["error"]["message"]


# ---------------------------------------------------------------------------------------------- Ollama


def test_ollama_generate(server):
    url, _ = server
    want = infill(url, PREFIX, SUFFIX)
    # Continue / minuet-ai: prompt + suffix; stream defaults to true (NDJSON)
    st, h, b = post(url + "/api/generate", {"model": "remask", "prompt": PREFIX, "suffix": SUFFIX,
                                            "options": {"num_predict": 24, "temperature": 0}, "keep_alive": "5m"})
    assert st == 200 and h["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in b.decode().splitlines()]
    assert lines[-1]["done"] is True and all(x["done"] is False for x in lines[:-1])
    assert "".join(x["response"] for x in lines) == want
    # Twinny / Zed: raw FIM prompt built by the client, not streamed
    raw = {"model": "remask", "prompt": TEMPLATES["codellama"], "raw": True, "stream": False,
           "options": {"num_predict": 24, "temperature": 0, "stop": ["<EOT>"]}}
    d = json.loads(post(url + "/api/generate", raw)[2])
    assert d["response"] == want and d["done"] is True and d["eval_count"] >= 0
    assert json.loads(get(url + "/api/tags")[2])["models"][0]["name"] == "remask"
    assert "version" in json.loads(get(url + "/api/version")[2])
    st, _, b = post(url + "/api/generate", {"model": "remask", "options": {"num_predict": "x"}})
    assert st == 400 and isinstance(json.loads(b)["error"], str)  # Ollama's error shape


# ---------------------------------------------------------------------------------------------- bad input


BAD = [
    ("invalid JSON", b'{"input_prefix": ', 400, "invalid JSON"),
    ("not an object", b"[1, 2]", 400, "JSON object"),
    ("NaN literal", b'{"input_prefix": "x", "temperature": NaN}', 400, "NaN"),
    ("not UTF-8", b'{"input_prefix": "\xff"}', 400, "UTF-8"),
    ("prefix not a string", {"input_prefix": 3}, 400, "'input_prefix' must be a string"),
    ("n_predict a string", {"input_prefix": "x", "n_predict": "12"}, 400, "'n_predict' must be an integer"),
    ("n_predict fractional", {"input_prefix": "x", "n_predict": 1.5}, 400, "integer"),
    ("n_predict a bool", {"input_prefix": "x", "n_predict": True}, 400, "integer"),
    ("negative n_predict", {"input_prefix": "x", "n_predict": -7}, 400, "n_predict"),
    ("enormous n_predict", {"input_prefix": "x", "n_predict": 10 ** 12}, 400, "no model has"),
    ("negative temperature", {"input_prefix": "x", "temperature": -1}, 400, "temperature"),
    ("stream not a bool", {"input_prefix": "x", "stream": "yes"}, 400, "'stream'"),
    ("input_extra not an array", {"input_prefix": "x", "input_extra": "ctx"}, 400, "input_extra"),
    ("input_extra item", {"input_prefix": "x", "input_extra": [{"text": 5}]}, 400, "input_extra[0]"),
    ("stop not strings", {"input_prefix": "x", "stop": [1]}, 400, "'stop'"),
    ("response_fields", {"input_prefix": "x", "response_fields": "content"}, 400, "response_fields"),
]


@pytest.mark.parametrize("name,body,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(server, name, body, status, message):
    url, _ = server
    raw = body if isinstance(body, bytes) else None
    st, _, b = post(url + "/infill", body, raw=raw)
    assert st == status, b
    assert message in json.loads(b)["error"]["message"] and b"Traceback" not in b


def test_bad_inputs_other_endpoints(server):
    url, _ = server
    cases = [
        ("/v1/completions", {"prompt": [1, 2, 3]}, "token ids"),
        ("/v1/completions", {"prompt": "x", "n": 0}, "'n'"),
        ("/v1/completions", {}, "'prompt' is required"),
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        ("/remask/v1/edit", {"op": "explode", "text": "x"}, "'op'"),
        ("/remask/v1/edit", {"op": "fill", "text": "abc", "start": 9}, "at most 3"),
        ("/remask/v1/edit", {"op": "fill", "text": "abc", "start": 1, "settings": {"threshold": "high"}}, "threshold"),
        ("/remask/v1/edit", {"op": "fill", "text": "abc", "start": 1, "settings": {"threshold": 7}}, "threshold"),
        ("/remask/v1/edit", {"op": "repair", "text": "abc", "start": 2, "end": 1}, "before"),
    ]
    for path, body, msg in cases:
        st, _, b = post(url + path, body)
        assert st == 400 and msg in json.loads(b)["error"]["message"], (path, body, b)
    assert get(url + "/nope")[0] == 404 and get(url + "/infill")[0] == 405


def test_huge_body_is_413_and_unknown_fields_are_ignored(server):
    url, state = server
    import http.client

    host, port = url.removeprefix("http://").split(":")
    for chunked in (False, True):  # a declared length over the limit, and a chunked body that grows past it
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.putrequest("POST", "/infill")
        conn.putheader("Content-Type", "application/json")
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            piece = b"x" * 65536
            with contextlib.suppress(OSError):
                for _ in range(state.cfg.max_body // len(piece) + 2):
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        else:
            conn.putheader("Content-Length", str(state.cfg.max_body + 10))
            conn.endheaders()
        r = conn.getresponse()
        assert r.status == 413 and b"limit" in r.read()
        conn.close()
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 24, "mirostat": 2, "dry_multiplier": 0.8,
            "future_field": {"nested": [1, 2]}}
    st, _, b = post(url + "/infill", body)
    assert st == 200 and json.loads(b)["content"] == infill(url, PREFIX, SUFFIX)


# ---------------------------------------------------------------------------------------------- batching


def test_sixteen_clients_at_once_decode_together(server):
    url, state = server
    prefixes = [f"def f{i}(x):\n    y = x * {i}\n" for i in range(16)]
    f0 = state.metrics.get("remask_forwards_total")
    solo = [infill(url, p, "\n", 16) for p in prefixes]
    f1 = state.metrics.get("remask_forwards_total")
    barrier = threading.Barrier(16)

    def client(p):
        barrier.wait()
        return infill(url, p, "\n", 16)

    with ThreadPoolExecutor(16) as ex:
        got = list(ex.map(client, prefixes))
    assert got == solo  # every client answered, each with what it gets alone
    together = state.metrics.get("remask_forwards_total") - f1
    assert together < (f1 - f0) / 3  # the rows shared their forwards
    assert "remask_batch_rows_bucket" in get(url + "/metrics")[2].decode()


@pytest.fixture(scope="module")
def join_server(test_model_dir):
    """An untrained model (long decodes) with room for several rows."""
    with running(ServeConfig(model=str(test_model_dir), max_batch=8, max_predict=1500)) as s:
        yield s


def test_requests_join_a_batch_that_is_decoding(join_server):
    """Continuous batching: a request that arrives while another decodes joins it between denoising steps and
    is answered as soon as it is done, long before the first; neither answer changes."""
    url, state = join_server
    sch = state.scheduler
    long_body = {"input_prefix": "x = ", "input_suffix": "", "n_predict": 240, "id_slot": 1}
    # The joining row samples (its own seeded generator: its draws do not depend on who else is in the batch).
    short_body = {"input_prefix": "def g(y):\n    return ", "input_suffix": "\n", "n_predict": 8, "id_slot": 2,
                  "temperature": 0.8, "seed": 7}
    solo_long = json.loads(post(url + "/infill", long_body)[2])
    solo_short = json.loads(post(url + "/infill", short_body)[2])
    assert solo_long["timings"]["batch_rows"] == 1 and solo_long["tokens_predicted"] > 100
    out = {}

    def first():
        out["long"] = json.loads(post(url + "/infill", long_body)[2])
        out["long_done"] = time.monotonic()

    t = threading.Thread(target=first)
    t.start()
    _wait(lambda: sch._live)
    time.sleep(0.01)  # well inside the long decode (hundreds of steps)
    short = json.loads(post(url + "/infill", short_body)[2])
    short_done = time.monotonic()
    t.join(60)
    assert short["content"] == solo_short["content"] and out["long"]["content"] == solo_long["content"]
    assert short["timings"]["batch_rows"] == 2 and out["long"]["timings"]["batch_rows"] == 2
    assert short_done < out["long_done"]  # it did not wait for the long row
    assert short["timings"]["forwards"] < solo_long["timings"]["forwards"] / 4


# ---------------------------------------------------------------------------------------------- remask's own


def test_remote_engine_matches_in_process(server):
    url, state = server
    from assistant.api import Settings
    from assistant.remote import RemoteEngine

    text = "def mean(values):\n    total = <FILL>\n    return total / len(values)\n"
    s = Settings(max_new_tokens=24, candidates=2)
    remote = RemoteEngine(url, settings=s)
    local = state.scheduler.engine
    assert remote.info["parameters"] == local.info["parameters"]
    start = text.index("<FILL>")
    a, b = remote.fill(text, start, language="python"), local.fill(text, start, language="python", settings=s)
    assert (a.edits, a.new_text, a.diff) == (b.edits, b.new_text, b.diff)
    steps = []
    c = remote.fill(text, start, language="python", callback=steps.append)  # streamed over SSE
    assert c.new_text == b.new_text and steps and steps[-1].pieces
    line = (text.index("    total"), text.index("\n    return") + 1)
    a = remote.regenerate(text, *line, language="python")
    b = local.regenerate(text, *line, language="python", settings=s)
    assert [x.new_text for x in a.candidates] == [x.new_text for x in b.candidates]
    a, b = remote.repair(text, 0, len(text), language="python"), local.repair(text, 0, len(text), settings=s,
                                                                               language="python")
    assert a.new_text == b.new_text and [f.text for f in a.flagged] == [f.text for f in b.flagged]
    assert remote.holes(text, "python") == local.holes(text, "python")
    from assistant.api import Cancelled, EngineError

    with pytest.raises(Cancelled):
        remote.fill(text, start, language="python", cancel=lambda: True)
    a = remote.instruct(text, *line, "add a comment", language="python")
    b = local.instruct(text, *line, "add a comment", language="python", settings=s)
    assert a.new_text == b.new_text
    with pytest.raises(EngineError, match="at most 68"):
        remote.fill(text, len(text) + 5)


def test_cli_server_flag_gives_the_in_process_result(server, tmp_path, capsys, monkeypatch):
    url, _ = server
    from ui.cli import main

    f = tmp_path / "m.py"
    f.write_text("def mean(values):\n    total = <FILL>\n    return total / len(values)\n")
    base = ["fill", str(f), "--json", "--max-new-tokens", "24"]
    outs = []
    for extra in (["--server", url], []):
        capsys.readouterr()
        assert main(base + extra) == 0
        outs.append(json.loads(capsys.readouterr().out))
    r, lo = outs
    assert (r["edits"], r["diff"], r["new_text"]) == (lo["edits"], lo["diff"], lo["new_text"])
    monkeypatch.setenv("REMASK_SERVER", "http://127.0.0.1:9")  # nothing listens there: a clear error
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "cannot reach the remask server" in err and "Traceback" not in err


def test_edit_streams_steps(server):
    url, _ = server
    text = "def mean(values):\n    total = <FILL>\n"
    st, h, b = post(url + "/remask/v1/edit", {"op": "fill", "text": text, "start": text.index("<FILL>"),
                                             "stream": True, "settings": {"max_new_tokens": 16}})
    assert st == 200
    events = re.findall(r"event: (\w+)\ndata: (.*)\n", b.decode())
    kinds = [k for k, _ in events]
    assert kinds[-1] == "result" and kinds.count("step") >= 1
    step = json.loads(events[0][1])
    assert {"step", "nfe", "pieces", "committed"} <= set(step)


def test_health_and_metrics(server):
    url, _ = server
    infill(url, PREFIX, SUFFIX)
    st, _, b = get(url + "/health")
    assert st == 200 and json.loads(b)["status"] == "ok"
    text = get(url + "/metrics")[2].decode()
    for name in ("remask_requests_total", "remask_tokens_generated_total", "remask_forwards_total",
                 "remask_tokens_per_forward", "remask_queue_depth", "remask_request_duration_seconds_bucket"):
        assert name in text
    assert re.search(r'remask_requests_total\{code="200",endpoint="/infill"\} \d+', text)


# ---------------------------------------------------------------------------------------------- slow decodes


@pytest.fixture(scope="module")
def slow_server(test_model_dir):
    """An untrained model: it seldom writes EOS, so a decode runs to n_predict (hundreds of steps)."""
    with running(ServeConfig(model=str(test_model_dir), max_queue=1, max_batch=1, max_predict=1500)) as s:
        yield s


def _wait(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


def _open_request(url: str, body: dict) -> socket.socket:
    """Send a request on a raw socket and leave it unanswered-read (to disconnect from it)."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    s.sendall(b"POST /infill HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


LONG = {"input_prefix": "x = ", "input_suffix": "", "n_predict": 1400}


def test_disconnect_cancels_between_steps(slow_server):
    url, state = slow_server
    sch = state.scheduler
    before = state.metrics.get("remask_cancelled_total", {"reason": "disconnect"})
    nfe0 = state.metrics.get("remask_forwards_total")
    s = _open_request(url, LONG)
    _wait(lambda: sch._running)
    time.sleep(0.2)
    s.close()
    _wait(lambda: not sch._running, 10)
    assert state.metrics.get("remask_cancelled_total", {"reason": "disconnect"}) == before + 1
    assert state.metrics.get("remask_forwards_total") - nfe0 < 700  # stopped long before its 1,400 tokens
    st, _, b = post(url + "/infill", {"input_prefix": "x = ", "n_predict": 4})
    assert st == 200  # the worker is free again


def test_queue_full_is_503_with_retry_after(slow_server):
    url, state = slow_server
    sch = state.scheduler
    with sch.engine._lock:  # the worker takes A, then waits for the model: B stays queued, deterministically
        a = _open_request(url, LONG)
        _wait(lambda: sch._running)
        b = _open_request(url, LONG)
        _wait(lambda: sch.depth == 1)
        try:
            st, h, body = post(url + "/infill", {"input_prefix": "y", "n_predict": 4})
            assert st == 503 and h.get("retry-after") == "1" and b"queue is full" in body
            assert state.metrics.get("remask_rejected_total", {"reason": "queue_full"}) >= 1
        finally:
            a.close()
            b.close()
    _wait(lambda: not sch._running and sch.depth == 0, 10)


def test_newer_request_for_the_slot_cancels_the_older(slow_server):
    url, state = slow_server
    sch = state.scheduler
    out = {}

    def first():
        out["a"] = post(url + "/infill", dict(LONG, id_slot=0))

    t = threading.Thread(target=first)
    t.start()
    _wait(lambda: sch._running)
    st, _, _ = post(url + "/infill", {"id_slot": 0, "input_prefix": "z = ", "n_predict": 4})
    t.join(20)
    assert st == 200 and out["a"][0] == 409 and b"newer request" in out["a"][2]


def test_t_max_predict_ms_caps_the_time(slow_server):
    url, _ = slow_server
    t0 = time.monotonic()
    st, _, b = post(url + "/infill", dict(LONG, t_max_predict_ms=300))
    took = time.monotonic() - t0
    d = json.loads(b)
    assert st == 200 and d["stop_type"] == "limit" and d["tokens_predicted"] < 1400
    assert took < 10  # bounded by the cap, not by 1,400 tokens


# ---------------------------------------------------------------------------------------------- access


def test_api_key_and_loopback(test_model_dir):
    with running(ServeConfig(model=str(test_model_dir), api_key="s3cret")) as (url, _):
        body = {"input_prefix": "x = ", "n_predict": 4}
        assert post(url + "/infill", body)[0] == 401
        st, h, b = post(url + "/infill", body, {"Authorization": "Bearer wrong"})
        assert st == 401 and "invalid API key" in json.loads(b)["error"]["message"] and "www-authenticate" in {
            k.lower() for k in h}
        assert post(url + "/infill", body, {"Authorization": "Bearer s3cret"})[0] == 200
        assert get(url + "/health")[0] == 200  # health checks need no key
        assert get(url + "/metrics")[0] == 401
        assert "access-control-allow-origin" not in {k.lower() for k in get(url + "/health", {"Origin": "http://a"})[1]}
    import argparse

    from serve.cli import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments("serve", p)
    with pytest.raises(ValueError, match="api-key"):
        config_from_args(p.parse_args(["--host", "0.0.0.0"]))
    assert config_from_args(p.parse_args(["--host", "0.0.0.0", "--api-key", "k"])).api_key == "k"
    assert config_from_args(p.parse_args(["--host", "::1"])).api_key is None
    r = subprocess.run([sys.executable, "-m", "ui.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--api-key" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_answers_requests_in_flight(test_model_dir):
    from serve.cli import build_server

    server, state = build_server(ServeConfig(model=str(test_model_dir), port=0, grace_s=20))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    _wait(lambda: server.started and state.scheduler.state == "ready", 60)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    out = {}
    c = threading.Thread(target=lambda: out.setdefault("r", post(url + "/infill", {"input_prefix": "x = ",
                                                                                     "n_predict": 200})))
    c.start()
    _wait(lambda: state.scheduler._running)
    server.handle_exit(signal.SIGTERM, None)  # what uvicorn calls on SIGTERM
    c.join(60)
    t.join(30)
    assert out["r"][0] == 200 and json.loads(out["r"][2])["tokens_predicted"] > 0  # finished, then answered
    assert not t.is_alive()  # and the server stopped


def _health(url: str) -> int:
    try:
        return get(url + "/health")[0]
    except OSError:
        return 0


async def test_tui_with_a_remote_engine(server, tmp_path):
    """``remask tui --server``: the editor's fill runs on the server and proposes what it proposes in process."""
    from assistant.api import Settings
    from assistant.remote import RemoteEngine
    from ui.tui.app import RemaskApp

    url, state = server
    text = "def mean(values):\n    total = <FILL>\n    return total / len(values)\n"
    src = tmp_path / "m.py"
    src.write_text(text)
    settings = Settings(max_new_tokens=16)
    app = RemaskApp(src, engine_factory=lambda: RemoteEngine(url, settings=settings), settings=settings,
                    show_timings=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.app.workers.wait_for_complete()
        app.editor.cursor_location = (1, 12)
        await pilot.pause()
        await pilot.press("ctrl+f")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        p = app.proposal
        want = state.scheduler.engine.fill(text, text.index("<FILL>"), language="python", settings=settings)
        assert want.edits and p is not None and p.candidate.edits == want.edits, app.last_status


def test_lsp_loads_a_remote_engine(server, monkeypatch):
    """``remask lsp --server URL`` (REMASK_SERVER): the language server's engine is the server's."""
    import argparse

    from assistant.api import Settings
    from assistant.remote import RemoteEngine
    from lsp.server import _load_engine, add_arguments

    url, state = server
    p = argparse.ArgumentParser()
    add_arguments("lsp", p)
    assert p.parse_args(["--server", url]).server == url
    monkeypatch.setenv("REMASK_SERVER", url)
    s = Settings(max_new_tokens=16)
    eng = _load_engine(None, "cpu", s)
    assert isinstance(eng, RemoteEngine) and eng.info["instruct"] == state.scheduler.engine.info["instruct"]
    text = "def mean(values):\n    total = <FILL>\n"
    assert eng.fill(text, text.index("<FILL>")).edits == state.scheduler.engine.fill(
        text, text.index("<FILL>"), settings=s).edits


def test_demo_with_a_remote_engine(server):
    """``remask demo --server``: the page's Fill runs on the server and writes what the engine writes in process."""
    from gradio_client import Client

    from assistant.remote import RemoteEngine
    from ui.demo.app import build_app, make_settings

    url, state = server
    text = "def mean(values):\n    total = <FILL>\n    return total / len(values)\n"
    remote = RemoteEngine(url)
    demo = build_app(remote, model_dir=None)
    _, page, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        job = Client(page, verbose=False).submit(text, "python", "", "", "", 0.9, 0, 0, 0.0, 1, 0, 16,
                                                 api_name="/fill")
        job.result(timeout=300)
        status, _live, _diff, new_code, _choices, details = job.outputs()[-1]
    finally:
        demo.close()
    settings = make_settings(remote.settings, 0.9, 0, 0, 0.0, 1, 0, 16)
    want = state.scheduler.engine.fill_all(text, language="python", settings=settings)
    assert want.edits and new_code == want.new_text, status
    assert details["stats"].get("nfe", 0) >= 1
