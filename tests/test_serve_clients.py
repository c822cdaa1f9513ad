"""The requests six editor plugins really send, rebuilt field by field from their sources, against ``remask serve``.

Each test posts the body one client builds (the comment names the file it was read from) and checks that the answer
has every field the client reads, in the framing it parses (JSON, SSE ``data:`` lines, NDJSON), and that the
completion equals what the server's plain non-streamed ``/infill`` gives for the same prefix, suffix and context.
Sources read (README "Clients" names the same versions):

- llama.vscode   ggml-org/llama.vscode v0.0.63 (3938fb3)
- Continue       continuedev/continue d0a3c0b (v1.3.40-vscode + 8, 2026-06-18)
- Tabby          TabbyML/tabby 21b2904 (nightly, 2026-06-30)
- Twinny         twinnydotdev/twinny v3.23.31 (193d14c)
- Zed            zed-industries/zed crates/edit_prediction (fim.rs 09512d2, ollama.rs fd988f9, open_ai_compatible.rs
                 0fd68c5), crates/cloud_llm_client (RawCompletionRequest/Response)
- minuet-ai.nvim milanglacier/minuet-ai.nvim v0.10.0 + 8 (479487c)

Values a user sets (token budgets) are small here to keep the CPU decode short; every other field is the
client's default. Three of these found gaps that the server now closes: llama.vscode reads
``generation_settings.n_ctx``, Continue asks for 4096 tokens by default (a budget above ``--max-predict`` is a
ceiling, as in llama.cpp and Ollama), and Twinny's llama.cpp provider sends its budget as ``max_tokens``.
"""

from __future__ import annotations

import json
import socket
import urllib.parse

import pytest

from tests import test_serve
from tests.test_serve import infill, post, sse

server = test_serve.server  # the dialect tests' server fixture (the default model), one per module

PREFIX = "def add(a, b):\n    return"
SUFFIX = "\n"
N = 24  # the token budget a user configured (each client's own setting, named per test)


def _events(body: bytes) -> list[dict]:
    """SSE ``data:`` payloads as JSON, up to (not including) ``[DONE]``."""
    out = []
    for d in sse(body):
        if d == "[DONE]":
            break
        out.append(json.loads(d))
    return out


def _ndjson(body: bytes) -> list[dict]:
    return [json.loads(ln) for ln in body.decode().splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------- llama.vscode


def _llama_vscode_body(n_predict: int = N) -> dict:
    # src/llama-server.ts createRequestPayload(noPredict=false) with defaultRequestParams and package.json defaults
    # (n_cmpl = max_parallel_completions 3, t_max_prompt_ms 500, t_max_predict_ms 500, ai_model's default).
    # input_extra chunks are src/extra-context.ts's ring buffer entries {text, time, filename}.
    return {
        "id_slot": 0, "input_prefix": "def add(a, b):\n", "input_suffix": SUFFIX,
        "input_extra": [{"text": "def sub(a, b):\n    return a - b\n", "time": 1767225600000,
                         "filename": "/work/demo/ops.py"}],
        "prompt": "    return", "n_predict": n_predict, "n_cmpl": 3,
        "top_k": 40, "top_p": 0.99, "stream": False, "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True,
        "n_indent": 4, "t_max_prompt_ms": 500, "t_max_predict_ms": 60000,  # 500 in the plugin: a CPU needs longer
        "model": "google/gemini-2.5-flash",
    }


def test_llama_vscode_infill(server):
    url, _ = server
    body = _llama_vscode_body()
    # the warm-up it sends after every accepted suggestion (updateExtraContext -> createRequestPayload(true, ...))
    warm = {"id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": body["input_extra"], "prompt": "",
            "n_predict": 0, "samplers": [], "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 1}
    assert post(url + "/infill", warm)[0] == 200
    # POST `${endpoint}/infill`, axios, no stream; Authorization: Bearer <llama-vscode.api_key> when one is set
    st, h, b = post(url + "/infill", body)
    assert st == 200 and h["content-type"].startswith("application/json")
    d = json.loads(b)
    # src/completion.ts getComplFromContent: "content" in the object (an array of them for n_cmpl is also read)
    assert isinstance(d["content"], str)
    want = infill(url, "def add(a, b):\n", SUFFIX, N, prompt="    return", input_extra=body["input_extra"], n_indent=4)
    assert d["content"] == want
    # src/statusbar.ts showInfo (show_info defaults to true): tokens_cached and timings, formatted with toFixed
    assert isinstance(d["tokens_cached"], int)
    for k in ("prompt_n", "predicted_n"):
        assert isinstance(d["timings"][k], int)
    for k in ("prompt_ms", "prompt_per_second", "predicted_ms", "predicted_per_second"):
        assert isinstance(d["timings"][k], (int, float))


def test_llama_vscode_reads_generation_settings(server):
    url, _ = server
    d = json.loads(post(url + "/infill", _llama_vscode_body(4))[2])
    assert isinstance(d["generation_settings"]["n_ctx"], int)


def test_llama_vscode_openai_mode(server):
    url, _ = server
    # llama-vscode.use_openai_endpoint: the openai SDK (baseURL = llama-vscode.endpoint, ".../v1") posts
    # {baseURL}/completions from src/llama-server.ts handleOpenAICompletion; no extra-context chunks here (with
    # some, the plugin prepends "Context:\n\n" + the chunk objects joined); openai_prompt_template's default;
    # Authorization: Bearer <api_key or "empty">
    template = "<|fim_prefix|>{inputPrefix}{prompt}<|fim_suffix|>{inputSuffix}<|fim_middle|>"
    prompt = (template.replace("{inputPrefix}", "def add(a, b):\n").replace("{prompt}", "    return")
              .replace("{inputSuffix}", SUFFIX))
    body = {"model": "remask", "prompt": prompt, "max_tokens": N, "temperature": 0.1, "top_p": 0.99,
            "stream": False}
    st, _, b = post(url + "/v1/completions", body, {"Authorization": "Bearer empty"})
    assert st == 200
    d = json.loads(b)
    # read: choices[0].text, choices[0].finish_reason, model, created, usage.{prompt,completion,total}_tokens
    assert d["choices"][0]["text"] == infill(url, PREFIX, SUFFIX, N, temperature=0.1)
    assert d["choices"][0]["finish_reason"] in ("stop", "length") and isinstance(d["model"], str)
    assert isinstance(d["created"], int) and all(isinstance(d["usage"][k], int) for k in
                                                 ("prompt_tokens", "completion_tokens", "total_tokens"))


# ---------------------------------------------------------------------------------------------- Continue

# core/autocomplete/templating: the model name "remask" matches no family in getTemplateForModel, so the default
# stableCodeFimTemplate; formatSnippets (no compilePrefixSuffix) puts the comment-marked snippets and the current
# file's path before the prefix; an empty suffix becomes "\n"; getStopTokens adds commonStops.
CONTINUE_STOPS = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "<|endoftext|>", "</fim_middle>",
                  "</code>", "/src/", "#- coding: utf-8", "```"]
CONTINUE_SNIPPETS = "# Path: demo/ops.py\n# def sub(a, b):\n#     return a - b\n# demo/app.py"
CONTINUE_PREFIX = CONTINUE_SNIPPETS + "\n" + PREFIX
CONTINUE_PROMPT = f"<fim_prefix>{CONTINUE_PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"
# core/autocomplete/CompletionProvider.ts sets temperature 0.01 when the config names none; maxTokens is
# defaultCompletionOptions.maxTokens (core/config/yaml/models.ts), else 4096 (core/llm/constants.ts)
CONTINUE_TEMPERATURE = 0.01


def _continue_want(url: str) -> str:
    return infill(url, CONTINUE_PREFIX, SUFFIX, N, temperature=CONTINUE_TEMPERATURE)


def _continue_bodies(max_tokens: int) -> dict[str, tuple[str, dict]]:
    return {
        # core/llm/llms/LlamaCpp.ts _streamComplete: POST new URL("completion", apiBase); undefined options drop out
        "llama.cpp": ("/completion", {"model": "remask", "prompt": CONTINUE_PROMPT, "stream": True,
                                      "n_predict": max_tokens, "stop": CONTINUE_STOPS,
                                      "temperature": CONTINUE_TEMPERATURE}),
        # core/llm/llms/Ollama.ts: POST api/show finds nothing here, so fimSupported stays false and autocomplete
        # goes through _streamComplete with raw: true (_getGenerateOptions; num_ctx is its 8192 default)
        "ollama": ("/api/generate", {"model": "remask", "prompt": CONTINUE_PROMPT, "raw": True,
                                     "options": {"temperature": CONTINUE_TEMPERATURE, "num_predict": max_tokens,
                                                 "stop": CONTINUE_STOPS, "num_ctx": 8192},
                                     "keep_alive": 1800}),
        # core/llm/llms/Mistral.ts -> OpenAI adapter (packages/openai-adapters/src/apis/OpenAI.ts fimStream):
        # POST new URL("fim/completions", apiBase) with the compiled prefix and suffix
        "mistral": ("/v1/fim/completions", {"model": "remask", "prompt": CONTINUE_PREFIX, "suffix": SUFFIX,
                                            "max_tokens": max_tokens, "temperature": CONTINUE_TEMPERATURE,
                                            "stop": CONTINUE_STOPS, "stream": True}),
    }


# Authorization: `Bearer ${apiKey}` (LlamaCpp.ts sends "Bearer undefined" without a key; Ollama.ts only with one;
# the adapter adds x-api-key too)
CONTINUE_HEADERS = {"llama.cpp": {"Authorization": "Bearer undefined"}, "ollama": {},
                    "mistral": {"Accept": "application/json", "x-api-key": "k", "Authorization": "Bearer k"}}


def test_continue_llama_cpp(server):
    url, _ = server
    path, body = _continue_bodies(N)["llama.cpp"]
    st, h, b = post(url + path, body, CONTINUE_HEADERS["llama.cpp"])
    assert st == 200 and h["content-type"].startswith("text/event-stream")
    # packages/fetch/src/stream.ts streamSse: every "data:" line is JSON; LlamaCpp.ts yields value.content
    text = "".join(e["content"] for e in _events(b) if e.get("content"))
    assert text == _continue_want(url)
    assert json.loads(post(url + path, dict(body, stream=False))[2])["content"] == text


def test_continue_ollama(server):
    url, _ = server
    path, body = _continue_bodies(N)["ollama"]
    st, h, b = post(url + path, body)
    assert st == 200
    # Ollama.ts _streamComplete: newline-split JSON, "error" in a line throws, else j.response
    lines = _ndjson(b)
    assert all("error" not in x and isinstance(x["response"], str) for x in lines)
    assert "".join(x["response"] for x in lines) == _continue_want(url)


def test_continue_mistral(server):
    url, _ = server
    path, body = _continue_bodies(N)["mistral"]
    st, h, b = post(url + path, body, CONTINUE_HEADERS["mistral"])
    assert st == 200 and h["content-type"].startswith("text/event-stream")
    # fimStream yields chunks with choices; core/llm/index.ts streamFim reads choices[0].delta.content
    events = [e for e in _events(b) if e.get("choices")]
    text = "".join(e["choices"][0]["delta"]["content"] or "" for e in events)
    assert text == _continue_want(url)


def _status_only(url: str, path: str, body: dict, headers: dict) -> int:
    """POST and read the status line only, then hang up (as Continue does once it has what it shows)."""
    u = urllib.parse.urlsplit(url)
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((u.hostname, u.port), timeout=60) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n{head}"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        line = s.makefile("rb").readline()
    return int(line.split()[1])


@pytest.mark.parametrize("provider", ["llama.cpp", "ollama", "mistral"])
def test_continue_default_max_tokens(server, provider):
    url, _ = server
    path, body = _continue_bodies(4096)[provider]
    assert _status_only(url, path, body, CONTINUE_HEADERS[provider]) == 200


# ---------------------------------------------------------------------------------------------- Tabby

# crates/tabby/src/services/completion/completion_prompt.rs: snippets become "<comment> Path: ..." lines before
# the prefix; prompt_template is filled with strfmt; crates/tabby-inference/src/code.rs: temperature 0.1, seed =
# the time in ms; crates/tabby-common/src/config.rs: max_decoding_tokens 64; presence_penalty 0.0
TABBY_PREFIX = "# Path: demo/ops.py\n# def sub(a, b):\n#     return a - b\n" + PREFIX
TABBY_SEED = 1767225600123


def test_tabby_llama_cpp(server):
    url, _ = server
    # crates/http-api-bindings/src/completion/llama.rs: POST {api_endpoint}/completion, bearer auth with api_key
    template = "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"  # README's prompt_template
    prompt = template.replace("{prefix}", TABBY_PREFIX).replace("{suffix}", SUFFIX)
    body = {"seed": TABBY_SEED, "prompt": prompt, "n_predict": 64, "temperature": 0.1, "stream": True,
            "penalty_last_n": 0, "presence_penalty": 0.0}
    st, h, b = post(url + "/completion", body)
    # reqwest_eventsource needs text/event-stream; each message deserialises as {content: String, stop: bool}
    assert st == 200 and h["content-type"].startswith("text/event-stream")
    text = ""
    for e in _events(b):
        assert isinstance(e["content"], str) and isinstance(e["stop"], bool)
        text += e["content"]
        if e["stop"]:
            break
    else:
        pytest.fail("no event with stop: true")
    assert text == infill(url, TABBY_PREFIX, SUFFIX, 64, temperature=0.1, seed=TABBY_SEED)


def test_tabby_openai_completion(server):
    url, _ = server
    # crates/http-api-bindings/src/completion/openai.rs (kind openai/completion: FIM_TEMPLATE "{prefix}<|FIM|>{suffix}"
    # split into prompt + suffix): POST {api_endpoint}/completions, api_endpoint ".../v1", model = model_name
    body = {"model": "remask", "prompt": TABBY_PREFIX, "suffix": SUFFIX, "max_tokens": 64, "temperature": 0.1,
            "stream": True, "presence_penalty": 0.0}
    st, h, b = post(url + "/v1/completions", body)
    assert st == 200 and h["content-type"].startswith("text/event-stream")
    text = ""
    for e in _events(b):  # {choices: [{text: String, finish_reason: Option<String>}]}, stops at a finish_reason
        c = e["choices"][0]
        text += c["text"]
        if c.get("finish_reason") is not None:
            break
    else:
        pytest.fail("no event with a finish_reason")
    assert text == infill(url, TABBY_PREFIX, SUFFIX, 64, temperature=0.1)


# ---------------------------------------------------------------------------------------------- Twinny

# src/extension/providers/completion.ts buildFimRequest + src/extension/provider-options.ts
# createStreamRequestBodyFim; twinny.temperature 0.2, twinny.keepAlive "5m", twinny.numPredictFim (512) set to N.
# fimTemplate "automatic" with model "remask" falls back to the codellama template (src/extension/fim-templates.ts),
# with getPromptHeader's language and file lines (Python's syntaxComments are ''' ... ''').
TWINNY_HEADING = "\n''' Language: Python (python) '''\n''' File uri: file:///work/demo/app.py (python) '''\n"
TWINNY_PROMPT = f"<PRE> \n{TWINNY_HEADING}{PREFIX} <SUF> {SUFFIX} <MID>"
# Authorization is the empty string when the provider has no apiKey
TWINNY_HEADERS = {"Authorization": ""}


def _twinny_lines(b: bytes) -> list[dict]:
    # src/extension/llm.ts: newline-split; utils.ts safeParseJsonResponse drops a "data:" prefix, skips non-JSON
    out = []
    for ln in b.decode().split("\n"):
        try:
            out.append(json.loads(ln.split("data:")[1] if ln.startswith("data:") else ln))
        except (json.JSONDecodeError, IndexError):
            pass
    return out


def test_twinny_ollama(server):
    url, _ = server
    body = {"model": "remask", "prompt": TWINNY_PROMPT, "stream": True, "keep_alive": "5m",
            "options": {"temperature": 0.2, "num_predict": N}}
    st, _, b = post(url + "/api/generate", body, TWINNY_HEADERS)
    assert st == 200
    text = "".join(x["response"] for x in _twinny_lines(b))  # getFimDataFromProvider: data.response
    assert text == infill(url, "\n" + TWINNY_HEADING + PREFIX, SUFFIX, N, temperature=0.2)


def test_twinny_repository_level(server):
    url, _ = server
    # provider.repositoryLevel: getFimPromptTemplateQwenMulti (no FIM markers, only file separators), trimmed
    prompt = ("<|repo_name|>demo\n<|file_sep|>/work/demo/ops.py\ndef sub(a, b):\n    return a - b\n"
              f"<|file_sep|>/work/demo/app.py\n{PREFIX}").strip()
    body = {"model": "remask", "prompt": prompt, "stream": True, "keep_alive": "5m",
            "options": {"temperature": 0.2, "num_predict": N}}
    st, _, b = post(url + "/api/generate", body, TWINNY_HEADERS)
    assert st == 200
    text = "".join(x["response"] for x in _twinny_lines(b))
    extra = [{"filename": "/work/demo/ops.py", "text": "def sub(a, b):\n    return a - b\n"}]
    assert text == infill(url, PREFIX, "", N, temperature=0.2, input_extra=extra)


def _twinny_llamacpp(url: str, max_tokens: int) -> tuple[str, list[dict]]:
    body = {"prompt": TWINNY_PROMPT, "stream": True, "temperature": 0.2, "max_tokens": max_tokens}
    st, h, b = post(url + "/completion", body, TWINNY_HEADERS)
    assert st == 200
    events = _twinny_lines(b)
    return "".join(e.get("content", "") for e in events), events  # getFimDataFromProvider: data.content


def test_twinny_llamacpp_framing(server):
    url, _ = server
    text, events = _twinny_llamacpp(url, N)
    assert events and all(isinstance(e["content"], str) for e in events) and events[-1]["stop"] is True


def test_twinny_llamacpp_budget(server):
    url, _ = server
    text, events = _twinny_llamacpp(url, 2)
    assert events[-1]["tokens_predicted"] <= 2
    assert text == infill(url, "\n" + TWINNY_HEADING + PREFIX, SUFFIX, 2, temperature=0.2)


# ---------------------------------------------------------------------------------------------- Zed

# crates/edit_prediction/src/fim.rs format_fim_prompt / fim_stop_tokens, by settings prompt_format
ZED_FORMATS = {
    "code_llama": (f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>", ["<PRE>", "<SUF>", "<MID>"]),
    "star_coder": (f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>",
                   ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>"]),
    "deepseek_coder": (f"<｜fim▁begin｜>{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>",
                       ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"]),
    "qwen": (f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
             ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]),
    "codestral": (f"[SUFFIX]{SUFFIX}[PREFIX]{PREFIX}", ["[PREFIX]", "[SUFFIX]"]),
    "glm": (f"<|code_prefix|>{PREFIX}<|code_suffix|>{SUFFIX}<|code_middle|>",
            ["<|endoftext|>", "<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>"]),
}


@pytest.mark.parametrize("prompt_format", sorted(ZED_FORMATS))
def test_zed_open_ai_compatible_api(server, prompt_format):
    url, _ = server
    prompt, stops = ZED_FORMATS[prompt_format]
    # open_ai_compatible.rs send_custom_server_request: RawCompletionRequest {model, prompt, max_tokens, stop}
    # (temperature and environment are None, skipped), POST to api_url as written, not streamed
    body = {"model": "remask", "prompt": prompt, "max_tokens": N, "stop": stops}
    st, _, b = post(url + "/v1/completions", body, {"Authorization": "Bearer k"})
    assert st == 200
    d = json.loads(b)
    # cloud_llm_client RawCompletionResponse: every field required
    assert isinstance(d["id"], str) and isinstance(d["object"], str) and isinstance(d["model"], str)
    assert isinstance(d["created"], int) and d["created"] >= 0
    assert all(isinstance(d["usage"][k], int) and d["usage"][k] >= 0
               for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    c = d["choices"][0]
    assert c["finish_reason"] is None or isinstance(c["finish_reason"], str)
    assert c["text"] == infill(url, PREFIX, SUFFIX, N)


def test_zed_ollama(server):
    url, _ = server
    # ollama.rs: POST {api_url}/api/generate, raw, not streamed, num_predict = max_output_tokens,
    # temperature 0.2, get_fim_stop_tokens (14); an unknown model name gets the StarCoder format
    stops = ["<|endoftext|>", "<|file_separator|>", "<|fim_pad|>", "<|fim_prefix|>", "<|fim_middle|>",
             "<|fim_suffix|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<PRE>", "<SUF>", "<MID>",
             "[PREFIX]", "[SUFFIX]"]
    body = {"model": "remask", "prompt": ZED_FORMATS["star_coder"][0], "raw": True, "stream": False,
            "options": {"num_predict": N, "temperature": 0.2, "stop": stops}}
    st, _, b = post(url + "/api/generate", body)
    assert st == 200
    d = json.loads(b)  # OllamaGenerateResponse {created_at: String, response: String}
    assert isinstance(d["created_at"], str)
    assert d["response"] == infill(url, PREFIX, SUFFIX, N, temperature=0.2)


# ---------------------------------------------------------------------------------------------- minuet-ai.nvim


def test_minuet_openai_fim_compatible(server):
    url, _ = server
    # lua/minuet/backends/openai_base.lua complete_openai_fim_base: {model, stream} + optional, then the
    # default_fim_template (lua/minuet/config.lua): prompt = language and indentation comments + text before the
    # cursor, suffix = text after; curl -L with Accept and Authorization: Bearer $<api_key variable>
    prompt = "# language: python\n# indentation: use 4 spaces for a tab\n" + PREFIX
    body = {"model": "remask", "stream": True, "max_tokens": N, "prompt": prompt, "suffix": SUFFIX}
    headers = {"Accept": "application/json", "Authorization": "Bearer xterm-256color"}
    st, _, b = post(url + "/v1/completions", body, headers)
    assert st == 200
    # lua/minuet/utils.lua stream_decode: split on "\n", strip "^data:", JSON-decode, json.choices[1].text
    parts = []
    for ln in b.decode().split("\n"):
        ln = ln.removeprefix("data:")
        try:
            parts.append(json.loads(ln)["choices"][0]["text"])
        except (json.JSONDecodeError, KeyError):
            pass
    text = "".join(p for p in parts if p)
    assert text == infill(url, prompt, SUFFIX, N)
    nostream = json.loads(post(url + "/v1/completions", dict(body, stream=False), headers)[2])
    assert nostream["choices"][0]["text"] == text  # no_stream_decode: the same field of one object
