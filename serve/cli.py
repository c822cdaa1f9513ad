"""``remask serve``: argument parsing and the uvicorn server (loopback unless an API key guards it)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import threading


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    from model.cli import add_decode_arguments, add_model_arguments

    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs --api-key)")
    p.add_argument("--port", type=int, default=8012, help="TCP port (default 8012, llama.vim's default)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                        "(or set REMASK_API_KEY)")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="allow browser requests from ORIGIN (repeatable; '*' for any); off by default")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 503 (default 64)")
    p.add_argument("--max-batch", type=int, default=16, help="completion rows decoded together (default 16)")
    p.add_argument("--max-batch-tokens", type=int, default=32768,
                   help="prompt + new tokens of the rows decoding together (default 32768; their KV cache)")
    p.add_argument("--max-body", type=int, default=4 << 20, help="largest request body in bytes (default 4 MiB)")
    p.add_argument("--max-predict", type=int, default=1024,
                   help="largest n_predict / max_tokens a request may ask for (default 1024)")
    p.add_argument("--model-name", default="remask", help="the model name the API reports (default remask)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds SIGTERM waits for requests in flight before cancelling them (default 10)")
    add_model_arguments(p)
    add_decode_arguments(p)


def _loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def config_from_args(args: argparse.Namespace):
    """A ``ServeConfig`` from parsed arguments, or a ``ValueError`` saying what is wrong."""
    import os

    from assistant.api import Settings

    from .app import ServeConfig

    key = args.api_key or os.environ.get("REMASK_API_KEY") or None
    if not _loopback(args.host) and not key:
        raise ValueError(f"--host {args.host} is reachable from other machines: give --api-key KEY (or set "
                         f"REMASK_API_KEY) so that only clients with the key can use the model")
    for name in ("max_queue", "max_batch", "max_batch_tokens", "max_body", "max_predict", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.port < 65536:
        raise ValueError("--port must be from 1 to 65535")
    s = Settings(block_size=args.block_size, threshold=None if args.steps else args.threshold, steps=args.steps,
                 temperature=args.temperature, confidence=args.confidence, max_new_tokens=args.max_new_tokens,
                 seed=args.seed)
    return ServeConfig(model=args.model, device=args.device, dtype=args.dtype, adapter=args.adapter,
                       merge_adapter=not args.adapter_unmerged, host=args.host, port=args.port,
                       api_key=key, cors=list(args.cors), max_queue=args.max_queue, max_batch=args.max_batch,
                       max_batch_tokens=args.max_batch_tokens,
                       max_body=args.max_body, max_predict=args.max_predict,
                       default_predict=min(args.max_new_tokens, args.max_predict), model_name=args.model_name,
                       grace_s=args.grace, settings=s)


def build_server(cfg):
    """A uvicorn server over the app whose SIGINT/SIGTERM handling drains the queue: requests in flight get
    ``cfg.grace_s`` seconds to finish, then are cancelled (each still answered, 503)."""
    import uvicorn

    from .app import create_app

    app = create_app(cfg)
    srv = app.state.server

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            srv.scheduler.drain()  # nothing new; what is queued or running still finishes
            if not self.should_exit:
                t = threading.Timer(max(cfg.grace_s - 0.5, 0.0), srv.scheduler.stop)
                t.daemon = True
                t.start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=max(int(cfg.grace_s), 1), lifespan="on")
    return _Server(config), srv


def serve(cfg) -> int:
    """Run until SIGINT/SIGTERM (see ``build_server``); a model that cannot load ends it with status 2."""
    server, srv = build_server(cfg)

    def watch() -> None:  # a model that cannot load is an error at start, not a server that answers 503 forever
        srv.scheduler.wait_ready()
        if srv.scheduler.state == "failed":
            print(f"error: cannot load the model: {srv.scheduler.detail}", file=sys.stderr, flush=True)
            server.should_exit = True

    threading.Thread(target=watch, daemon=True).start()
    print(f"remask serve: http://{cfg.host}:{cfg.port} (loading the model; GET /health says when it is ready)",
          file=sys.stderr, flush=True)
    server.run()
    return 0 if srv.scheduler.state != "failed" else 2


def run(command: str, args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return serve(cfg)
