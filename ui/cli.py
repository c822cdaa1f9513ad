"""``remask``: one command line for everything, training included.

Subcommands live in their own packages; this module imports only the one that runs, so ``remask fill``
does not pay for Gradio and ``remask lsp`` does not pay for Textual. Each module named below provides
``add_arguments(command, parser)`` and ``run(command, args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fill": ("assistant.cli", "fill holes in a file (prints a diff; --apply writes it)"),
    "edit": ("assistant.cli", "regenerate, repair or rewrite a range of a file"),
    "generate": ("model.cli", "continue a prompt with the model (diffusion or AR decoding)"),
    "info": ("model.cli", "describe a model folder or preset"),
    "corpus": ("training.cli", "build a training corpus from source folders"),
    "tokenizer": ("training.cli", "train a byte-level BPE tokenizer"),
    "train": ("training.cli", "train: ar | bd | sft | pipeline | experiment | adapt"),
    "eval": ("training.evals.cli", "evaluate: infilling, exact match, CanItEdit, speed"),
    "lsp": ("lsp.server", "start the language server (stdio, or --tcp HOST:PORT)"),
    "tui": ("ui.tui.cli", "open the terminal editor"),
    "demo": ("ui.demo.cli", "launch the Gradio web demo"),
    "serve": ("serve.cli", "serve the model over HTTP to editor plugins (llama.cpp, OpenAI, Ollama APIs)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remask", description="Edit code in place with a block-diffusion LM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if only == name:
            importlib.import_module(module).add_arguments(name, p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        parser = build_parser()
        if command is None and not argv:
            parser.print_help()
            return 0
        parser.parse_args(argv)  # prints help or the "invalid choice" error and exits
        return 2
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.run(command, args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
