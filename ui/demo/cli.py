"""``remask demo``: launch the Gradio web demo on this machine (127.0.0.1 unless --host says otherwise)."""

from __future__ import annotations

import argparse
import os
import sys
import time


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the demo to your network)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: the first free one from 7860)")
    from model.cli import add_model_arguments

    add_model_arguments(parser)  # --model, --device, --dtype: the same as every other model command
    parser.add_argument("--max-queue", type=int, default=32, help="visitors that may wait for the model at once")
    parser.add_argument("--server", metavar="URL", default=None,
                        help="use a `remask serve` process instead of loading the model here (or REMASK_SERVER)")


def run(command: str, args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from assistant.api import EngineError
    from assistant.remote import server_from_env
    from model.checkpoint import DEFAULT_MODEL_DIR, CheckpointError

    url = server_from_env(getattr(args, "server", None))
    try:
        if url is not None:  # the model lives in a `remask serve` process
            from assistant.remote import RemoteEngine

            engine = RemoteEngine(url)
        else:
            from assistant.engine import Engine

            dtype = getattr(torch, args.dtype) if getattr(args, "dtype", None) else None
            engine = Engine.load(args.model, device=args.device, dtype=dtype, adapter=args.adapter,
                                 merge_adapter=not args.adapter_unmerged)
    except (CheckpointError, EngineError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "RANDOM" in str(engine.info.get("description", "")):
        print(f"notice: using a {engine.info['description']}", file=sys.stderr)
    model_dir = DEFAULT_MODEL_DIR if args.model in (None, "default") else args.model
    if str(model_dir).startswith("random:") or url is not None:
        model_dir = None

    from .app import build_app, launch_app

    demo = build_app(engine, model_dir=model_dir)
    demo.queue(max_size=max(1, args.max_queue), default_concurrency_limit=1)
    try:
        _, url, _ = launch_app(demo, host=args.host, port=args.port, prevent_thread_lock=True, quiet=True)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    print(f"remask demo running at {url} (Ctrl+C to stop)", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
