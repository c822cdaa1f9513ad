"""``remask serve``: /infill latency and throughput for 1, 4 and 16 concurrent clients.

    python benchmarks/bench_serve.py --requests 32 --n-predict 32

Requests are llama.vim-shaped (256 lines of prefix, 64 of suffix, the cursor's line typed so far) at cursor
positions spread over ``assistant/engine.py``. Measured in one run, same requests everywhere:

* in process: the same prompt built and decoded by this process with no HTTP (the baseline for overhead);
* the server (a ``remask serve`` subprocess on loopback) with 1 client (sequential), 4 and 16 clients at once;
* the server started with ``--max-batch 1`` (one request at a time) under 16 clients: the throughput baseline.

Latencies are per request (send to last byte); aggregate tokens/s is the tokens predicted over the wall time
of the whole phase.
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


def make_requests(n: int, n_predict: int) -> list[dict]:
    lines = (ROOT / "assistant" / "engine.py").read_text().splitlines(keepends=True)
    out = []
    for i in range(n):
        y = 60 + (i * 977) % (len(lines) - 120)
        cur = lines[y]
        x = max(1, len(cur.rstrip("\n")) // 2)
        out.append({"input_prefix": "".join(lines[max(0, y - 256): y]), "prompt": cur[:x],
                    "input_suffix": cur[x:] + "".join(lines[y + 1: y + 65]), "n_predict": n_predict,
                    "cache_prompt": True, "samplers": ["top_k", "top_p", "infill"], "t_max_prompt_ms": 500,
                    "stream": False})
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def in_process(model: str | None, reqs: list[dict]) -> tuple[list[float], int, float]:
    """Latencies (ms) and tokens of the requests decoded here one after another, as the server's worker does."""
    from serve.app import ServeConfig, Server
    from serve.scheduler import Completion

    srv = Server(ServeConfig(model=model))
    sch = srv.scheduler
    sch.engine = srv._load()
    sch.state = "ready"
    from model.decoder import generate

    eng = sch.engine
    lat, tokens = [], 0
    t_all = time.perf_counter()
    for r in reqs:
        t0 = time.perf_counter()
        c = Completion(prefix=r["input_prefix"] + r["prompt"], suffix=r["input_suffix"], max_new=r["n_predict"])
        ids, _ = sch.prompt_ids(c)
        from dataclasses import replace

        dc = eng._decode_config(replace(eng.settings, max_new_tokens=c.max_new, temperature=0.0, seed=0))
        with eng._lock:
            res = generate(eng.model, [ids], dc, tokenizer=eng.tok, callback=lambda ev: None,
                           prompt_cache=eng.prompt_cache)
        eng.tok.decode(res.tokens[0])
        tokens += len(res.tokens[0])
        lat.append((time.perf_counter() - t0) * 1000)
    return lat, tokens, time.perf_counter() - t_all


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
    """Run ``reqs`` split over ``n_clients`` threads (each on its own keep-alive connection)."""
    lat: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    start = threading.Barrier(n_clients)

    def run(mine: list[dict]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start.wait()
        for r in mine:
            body = json.dumps(r)
            t0 = time.perf_counter()
            conn.request("POST", "/infill", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            d = json.loads(resp.read())
            ms = (time.perf_counter() - t0) * 1000
            assert resp.status == 200, d
            with lock:
                lat.append(ms)
                tokens[0] += d["tokens_predicted"]
        conn.close()

    threads = [threading.Thread(target=run, args=(reqs[i::n_clients],)) for i in range(n_clients)]
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
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, here and in the server (1: a busy 2-core machine thrashes with more)")
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the server subprocesses inherit it
    import torch

    torch.set_num_threads(a.threads)
    reqs = make_requests(a.requests, a.n_predict)
    rows = []
    lat, tok, wall = in_process(a.model, reqs[:4])  # warm-up (first calls pay one-time costs)
    lat, tok, wall = in_process(a.model, reqs)
    rows.append(("in process, one after another", lat, tok, wall))
    base_p50 = statistics.median(lat)
    p, port = start_server(a.model, [])
    try:
        clients(port, reqs[:4], 1)  # warm-up
        for n in (1, 4, 16):
            lat, tok, wall = clients(port, reqs, n)
            rows.append((f"server, {n} client{'s' if n > 1 else ''}", lat, tok, wall))
    finally:
        p.terminate()
        p.wait(30)
    p, port = start_server(a.model, ["--max-batch", "1"])
    try:
        clients(port, reqs[:4], 1)
        lat, tok, wall = clients(port, reqs, 16)
        rows.append(("server --max-batch 1 (one at a time), 16 clients", lat, tok, wall))
    finally:
        p.terminate()
        p.wait(30)
    one_at_a_time = rows[-1][2] / rows[-1][3]
    print(f"{a.requests} /infill requests, n_predict {a.n_predict}, llama.vim-shaped (256 lines before, 64 after)\n")
    print("| setup | p50 ms | p95 ms | p50 - in-process p50 | tokens | wall s | aggregate tokens/s | "
          "vs one at a time |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, lat, tok, wall in rows:
        print(f"| {name} | {statistics.median(lat):.1f} | {pct(lat, 0.95):.1f} | "
              f"{statistics.median(lat) - base_p50:+.1f} | {tok} | {wall:.2f} | {tok / wall:.1f} | "
              f"{tok / wall / one_at_a_time:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
