"""``remask serve``: /infill latency and throughput for 1, 4 and 16 concurrent clients.

    python benchmarks/bench_serve.py --requests 32 --n-predict 32
    python benchmarks/bench_serve.py --typing 16x4   # 16 editors, 4 keystrokes each, one id_slot per editor

Requests are llama.vim-shaped (256 lines of prefix, 64 of suffix, the cursor's line typed so far) at cursor
positions spread over ``assistant/engine.py``: every request a new place, so no prompt cache helps. With
``--typing CxK`` there are C editors instead, each writing a line of its own at the line's end (K requests,
two characters apart, with its own ``id_slot`` as llama.vim sends them), so each editor's slot cache holds most
of its next prompt, as in real use. Measured in one run, same requests everywhere:

* in process: the same prompt built and decoded by this process with no HTTP (the baseline for overhead),
  paired request by request with the server under 1 client, so that the machine's load drifts hit both;
* the server (a ``remask serve`` subprocess on loopback) with 4 and 16 clients at once, and a second server
  started with ``--max-batch 1`` (one request at a time) under 16 clients: the throughput baseline. These
  setups take turns for ``--rounds`` rounds (other work on a shared machine comes and goes).

Latencies are per request (send to last byte); aggregate tokens/s is the tokens predicted over the wall time
of a phase (the median over rounds).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_requests(n: int, n_predict: int, before: int = 256, after: int = 64) -> list[dict]:
    lines = (ROOT / "assistant" / "engine.py").read_text().splitlines(keepends=True)
    out = []
    for i in range(n):
        y = 60 + (i * 977) % (len(lines) - 120)
        cur = lines[y]
        x = max(1, len(cur.rstrip("\n")) // 2)
        out.append({"input_prefix": "".join(lines[max(0, y - before): y]), "prompt": cur[:x],
                    "input_suffix": cur[x:] + "".join(lines[y + 1: y + 1 + after]), "n_predict": n_predict,
                    "cache_prompt": True, "samplers": ["top_k", "top_p", "infill"], "t_max_prompt_ms": 500,
                    "stream": False})
    return out


def make_typing(editors: int, keys: int, n_predict: int, before: int = 256, after: int = 64) -> list[dict]:
    """``editors`` streams of ``keys`` requests each: a line being written at its end, two characters a request
    (what follows the cursor stays the same, as when typing), one slot each."""
    lines = (ROOT / "assistant" / "engine.py").read_text().splitlines(keepends=True)
    out = []
    for e in range(editors):
        y = 60 + (e * 977) % (len(lines) - 120)
        while len(lines[y].strip()) < 2 * keys + 4:  # a line long enough to type into
            y += 1
        cur = lines[y]
        x0 = len(cur) - len(cur.lstrip())
        for k in range(keys):
            x = x0 + 2 * (k + 1)
            out.append({"id_slot": e, "input_prefix": "".join(lines[max(0, y - before): y]), "prompt": cur[:x],
                        "input_suffix": "\n" + "".join(lines[y + 1: y + 1 + after]), "n_predict": n_predict,
                        "cache_prompt": True, "samplers": ["top_k", "top_p", "infill"], "t_max_prompt_ms": 500,
                        "stream": False})
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


class InProcess:
    """The requests decoded by this process with no HTTP, as the server's worker decodes a batch of one."""

    def __init__(self, model: str | None) -> None:
        from serve.app import ServeConfig, Server

        srv = Server(ServeConfig(model=model))
        self.sch = srv.scheduler
        self.sch.engine = srv._load()
        self.sch.state = "ready"

    def run(self, r: dict) -> tuple[float, int]:
        from dataclasses import replace

        from model.decoder import generate
        from serve.scheduler import Completion

        eng = self.sch.engine
        t0 = time.perf_counter()
        c = Completion(prefix=r["input_prefix"] + r["prompt"], suffix=r["input_suffix"], max_new=r["n_predict"])
        ids, _ = self.sch.prompt_ids(c)
        dc = eng._decode_config(replace(eng.settings, max_new_tokens=c.max_new, temperature=0.0, seed=0))
        with eng._lock:
            res = generate(eng.model, [ids], dc, tokenizer=eng.tok, callback=lambda ev: None,
                           prompt_cache=eng.prompt_cache)
        eng.tok.decode(res.tokens[0])
        return (time.perf_counter() - t0) * 1000, len(res.tokens[0])


def one(port: int, r: dict) -> tuple[float, int]:
    """One request on a new connection, as llama.vim's curl makes it (connecting is part of the time)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/infill", json.dumps(r), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    d = json.loads(resp.read())
    conn.close()
    assert resp.status == 200, d
    return (time.perf_counter() - t0) * 1000, d["tokens_predicted"]


def start_server(model: str | None, extra: list[str]) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "ui.cli", "serve", "--port", str(port), *extra]
    if model:
        cmd += ["--model", model]
    p = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 180
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > end or p.poll() is not None:
            p.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.2)
    return p, port


def clients(port: int, reqs: list[dict], n_clients: int) -> tuple[list[float], int, float]:
    """Run ``reqs`` split over ``n_clients`` threads, each sending its next request when the last is answered
    (an editor's requests, those of one ``id_slot``, stay in order on one thread)."""
    lat: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    start = threading.Barrier(n_clients)

    def run(mine: list[dict]) -> None:
        start.wait()
        for r in mine:
            ms, n = one(port, r)
            with lock:
                lat.append(ms)
                tokens[0] += n

    if "id_slot" in reqs[0]:
        streams = sorted({r["id_slot"] for r in reqs})
        parts = [[r for s in streams[i::n_clients] for r in reqs if r["id_slot"] == s] for i in range(n_clients)]
    else:
        parts = [reqs[i::n_clients] for i in range(n_clients)]
    threads = [threading.Thread(target=run, args=(part,)) for part in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, tokens[0], time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the built-in model)")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--n-predict", type=int, default=32)
    ap.add_argument("--before", type=int, default=256, help="lines of prefix (llama.vim's n_prefix)")
    ap.add_argument("--after", type=int, default=64, help="lines of suffix (llama.vim's n_suffix)")
    ap.add_argument("--rounds", type=int, default=3, help="turns of the concurrent setups")
    ap.add_argument("--typing", default=None, metavar="CxK",
                    help="C editors typing K keystrokes each, one id_slot per editor (instead of --requests)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, here and in the server (1: a busy 2-core machine thrashes with more)")
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the server subprocesses inherit it
    import torch

    torch.set_num_threads(a.threads)
    if a.typing:
        ed, keys = (int(v) for v in a.typing.lower().split("x"))
        reqs = make_typing(ed, keys, a.n_predict, a.before, a.after)
    else:
        reqs = make_requests(a.requests, a.n_predict, a.before, a.after)
    local = InProcess(a.model)
    servers = [start_server(a.model, []), start_server(a.model, ["--max-batch", "1"])]
    try:
        port = servers[0][1]
        for r in reqs[:4]:  # warm-up: first calls pay one-time costs
            local.run(r)
            one(port, r)
        clients(servers[1][1], reqs[:4], 1)
        # Paired: each request in process, then through the server, so that load changes hit both alike.
        lat_in, lat_srv, diffs, tok = [], [], [], 0
        t_in = t_srv = 0.0
        for r in reqs:
            a_ms, n = local.run(r)
            b_ms, _ = one(port, r)
            lat_in.append(a_ms)
            lat_srv.append(b_ms)
            diffs.append(b_ms - a_ms)
            tok += n
            t_in += a_ms / 1000
            t_srv += b_ms / 1000
        # The server's own cost, where decoding is small enough not to hide it: a one-line prompt, 1 token.
        tiny = {"input_prefix": "def f(x):\n    return", "input_suffix": "\n", "prompt": "", "n_predict": 1}
        probe = []
        for _ in range(30):
            a_ms, _ = local.run(tiny)
            b_ms, _ = one(port, tiny)
            probe.append(b_ms - a_ms)
        # Throughput: the concurrent setups take turns, round after round (the machine's load drifts).
        setups = [("server, 4 clients", 0, 4), ("server, 16 clients", 0, 16),
                  ("server --max-batch 1 (one at a time), 16 clients", 1, 16)]
        got: dict[str, list] = {name: [[], 0, 0.0, []] for name, _, _ in setups}
        for _ in range(a.rounds):
            for name, which, n in setups:
                lat, tk, wall = clients(servers[which][1], reqs, n)
                g = got[name]
                g[0] += lat
                g[1] += tk
                g[2] += wall
                g[3].append(tk / wall)
    finally:
        for p, _ in servers:
            p.terminate()
            p.wait(30)
    rows = [("in process, one after another", lat_in, tok, t_in, [tok / t_in]),
            ("server, 1 client", lat_srv, tok, t_srv, [tok / t_srv])]
    rows += [(name, g[0], g[1], g[2], g[3]) for name, g in got.items()]
    one_at_a_time = statistics.median(rows[-1][4])
    what = f"typing ({a.typing}, one id_slot per editor)" if a.typing else f"{a.requests} places"
    print(f"{len(reqs)} /infill requests ({what}), n_predict {a.n_predict}, llama.vim-shaped ({a.before} lines "
          f"before the cursor, {a.after} after), {a.rounds} rounds of the concurrent setups; server overhead "
          f"(paired, p50 of server - in process per request): {statistics.median(diffs):+.1f} ms; on a 1-token "
          f"request: {statistics.median(probe):+.1f} ms\n")
    print("| setup | p50 ms | p95 ms | tokens | aggregate tokens/s (median of rounds) | vs one at a time |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, lat, tok, _wall, tps in rows:
        t = statistics.median(tps)
        print(f"| {name} | {statistics.median(lat):.1f} | {pct(lat, 0.95):.1f} | {tok} | {t:.1f} | "
              f"{t / one_at_a_time:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
