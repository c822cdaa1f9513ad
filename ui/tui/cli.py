"""``remask tui [FILE]``: open the terminal editor (the model loads in the background)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    from model.cli import add_model_arguments

    parser.add_argument("file", nargs="?", default=None, help="file to edit (created on save if missing)")
    add_model_arguments(parser)
    parser.add_argument("--threshold", type=float, default=0.9, help="confidence threshold tau, 0 < tau <= 1")
    parser.add_argument("--steps", type=int, default=None, help="fixed steps per block (disables --threshold)")
    parser.add_argument("--block-size", type=int, default=None, help="block size B (default: the model's)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--server", metavar="URL", default=None,
                        help="use a `remask serve` process instead of loading the model here (or REMASK_SERVER)")


def run(command: str, args: argparse.Namespace) -> int:
    from assistant.api import Settings

    from .files import FileError, read_text_file

    if args.threshold is not None and not 0 < args.threshold <= 1:
        print("error: --threshold must be in (0, 1]", file=sys.stderr)
        return 2
    path = Path(args.file).expanduser() if args.file else None
    if path is not None and path.exists():
        try:
            read_text_file(path)  # refuse binary / huge files before taking over the terminal
        except FileError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    settings = Settings(threshold=None if args.steps else args.threshold, steps=args.steps,
                        block_size=args.block_size, temperature=args.temperature,
                        max_new_tokens=args.max_new_tokens)
    from assistant.remote import server_from_env

    from .app import RemaskApp

    url = server_from_env(args.server)
    factory = None
    if url is not None:  # the model lives in a `remask serve` process; it "loads" by asking for its info

        def factory():
            from assistant.remote import RemoteEngine

            return RemoteEngine(url, settings=settings)

    app = RemaskApp(path, model=args.model, device=args.device, dtype=args.dtype, settings=settings,
                    adapter=args.adapter, merge_adapter=not args.adapter_unmerged, engine_factory=factory)
    app.run()
    return 0
