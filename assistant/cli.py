"""``remask fill`` and ``remask edit``: the engine on files, printing a diff or writing it back.

Line ranges: ``--line N`` and ``--range A:B`` are 1-based and inclusive (``--range 3:3`` is line 3), as in
editors and ``sed``; a range covers whole lines, line breaks included. Nothing is written unless
``--apply`` is given; then the file is replaced atomically (temporary file + ``os.replace``) after a copy
of the old content is kept as ``FILE.orig``. ``-`` reads standard input (and ``--apply`` prints the new text).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from model.fileio import atomic_write, check_writable

from .api import Cancelled, EditResult, EngineError, Settings
from .positions import line_range_to_offsets, offset_to_position

EXIT_OK, EXIT_ERROR, EXIT_NOTHING = 0, 2, 1

_RED, _GREEN, _CYAN, _BOLD, _RESET = "\x1b[31m", "\x1b[32m", "\x1b[36m", "\x1b[1m", "\x1b[0m"


class CliError(Exception):
    """A user-facing error: printed as ``error: ...``, exit status 2, nothing written."""


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    from model.cli import add_decode_arguments, add_dual_cache_argument, add_model_arguments

    p.add_argument("file", help="source file, or - for standard input")
    if command == "fill":
        where = p.add_mutually_exclusive_group()
        where.add_argument("--line", type=int, metavar="N",
                           help="fill the hole on line N (1-based); a blank line gets new lines, "
                                "a non-blank line without a hole is continued at its end")
        where.add_argument("--range", metavar="A:B", dest="range_",
                           help="fill the holes in lines A..B (1-based, inclusive), or rewrite those lines "
                                "when they hold none")
        where.add_argument("--all-holes", action="store_true",
                           help="fill every hole in the file in one batched decode (default: the first hole)")
        p.add_argument("--rounds", type=int, default=1,
                       help="with several holes: decode them again N-1 times, each seeing the others' answers")
    else:
        p.add_argument("--range", metavar="A:B", dest="range_", required=True,
                       help="lines A..B to edit (1-based, inclusive)")
        p.add_argument("--op", choices=["regenerate", "repair", "instruct"], default="regenerate")
        p.add_argument("--instruction", help="what to change (--op instruct; needs an instruct checkpoint)")
        p.add_argument("--candidates", type=int, default=None,
                       help="regenerate: candidates decoded as one batch (default 3); the best is applied")
        p.add_argument("--repair-threshold", type=float, default=None,
                       help="repair: flag tokens below this probability (default 0.05)")
        p.add_argument("--repair-fraction", type=float, default=None,
                       help="repair: flag this fraction of the least likely tokens instead")
        p.add_argument("--repair-ratio", type=float, default=None,
                       help="repair: with the threshold, also require the model's best token this many times "
                            "likelier (e.g. 10 spares spots where the model is merely unsure)")
    p.add_argument("--language", default=None,
                   help="language (python, javascript, typescript, tsx, rust, go, java, c, cpp); "
                        "default: from the file name, plain text otherwise")
    p.add_argument("--apply", action="store_true", help="write the result (atomically; FILE.orig keeps the old text)")
    p.add_argument("--json", action="store_true", help="print one JSON object (edits, diff, stats) for tools")
    color = p.add_mutually_exclusive_group()
    color.add_argument("--color", dest="color", action="store_const", const=True, default=None,
                       help="colour the diff even when not writing to a terminal")
    color.add_argument("--no-color", dest="color", action="store_const", const=False)
    p.add_argument("--server", metavar="URL", default=None,
                   help="run on a `remask serve` process instead of loading the model here (or set REMASK_SERVER; "
                        "REMASK_API_KEY for its key)")
    add_model_arguments(p)
    add_decode_arguments(p)
    add_dual_cache_argument(p)


# ---------------------------------------------------------------------------------------------- files


def read_source(name: str) -> tuple[str, bool, os.stat_result | None]:
    """(text, had a UTF-8 BOM, stat) of a file or of stdin ("-"); clear errors for binary or missing files."""
    if name == "-":
        data = sys.stdin.buffer.read()
        st = None
    else:
        path = Path(name)
        if not path.exists():
            raise CliError(f"{name}: no such file")
        if not path.is_file():
            raise CliError(f"{name}: not a regular file")
        try:
            data = path.read_bytes()
            st = path.stat()
        except OSError as e:
            raise CliError(f"{name}: cannot read ({e.strerror})") from e
    if b"\x00" in data:
        raise CliError(f"{name}: binary content (NUL bytes); only text files are edited")
    bom = data.startswith(b"\xef\xbb\xbf")
    try:
        text = data[3 if bom else 0:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise CliError(f"{name}: not UTF-8 text (byte {e.start}: {e.reason})") from e
    return text, bom, st


def write_atomic(path: Path, text: str, bom: bool = False, backup: bool = True,
                 expect: os.stat_result | None = None) -> Path | None:
    """Replace ``path`` with ``text`` atomically; keep the old content as ``path.orig``. Returns the backup.

    ``expect``: the stat taken when the file was read; a file changed since is not overwritten.
    """
    path = Path(os.path.realpath(path))  # through a symlink to its target: the link stays a link
    if expect is not None:
        try:
            now = path.stat()
        except OSError as e:
            raise CliError(f"{path}: disappeared while generating; nothing written") from e
        if (now.st_mtime_ns, now.st_size) != (expect.st_mtime_ns, expect.st_size):
            raise CliError(f"{path}: changed on disk while generating; nothing written")
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    backup_path = None
    try:
        check_writable(path)  # before the backup: a refused write leaves no .orig behind
        if backup and path.exists():
            backup_path = path.with_name(path.name + ".orig")
            atomic_write(backup_path, path.read_bytes(), mode)
        atomic_write(path, data, mode)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else f"{path}: "
        raise CliError(f"{where}{e.strerror or e}; {path} was not changed") from None
    return backup_path


# ---------------------------------------------------------------------------------------------- output


def colorize(diff: str) -> str:
    out = []
    for line in diff.splitlines(keepends=True):
        if line.startswith(("+++", "---")):
            out.append(_BOLD + line.rstrip("\n") + _RESET + "\n")
        elif line.startswith("@@"):
            out.append(_CYAN + line.rstrip("\n") + _RESET + "\n")
        elif line.startswith("+"):
            out.append(_GREEN + line.rstrip("\n") + _RESET + "\n")
        elif line.startswith("-"):
            out.append(_RED + line.rstrip("\n") + _RESET + "\n")
        else:
            out.append(line)
    return "".join(out)


def _relabel(diff: str, name: str) -> str:
    """Put the file's name in the diff headers (the engine does not know it)."""
    lines = diff.splitlines(keepends=True)
    if len(lines) >= 2 and lines[0].startswith("--- a/") and lines[1].startswith("+++ b/"):
        lines[0] = f"--- a/{name.lstrip('/')}\n"
        lines[1] = f"+++ b/{name.lstrip('/')}\n"
    return "".join(lines)


def _finite(v):
    """``v`` with every non-finite float as None: -Infinity and NaN are not JSON (strict parsers reject them)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def result_json(res: EditResult, text: str, name: str) -> dict:
    """A JSON-ready record of a result, positions given as offsets and as (line, UTF-16 character).

    Strict JSON: a score with no tokens behind it (an empty answer) is null, never -Infinity."""

    def pos(off: int) -> dict:
        line, ch = offset_to_position(text, off, "utf-16")
        return {"offset": off, "line": line, "character": ch}

    return _finite({
        "file": name,
        "op": res.op,
        "changed": bool(res.edits),
        "message": res.message,
        "edits": [{"start": pos(e.start), "end": pos(e.end), "new_text": e.new_text} for e in res.edits],
        "diff": _relabel(res.diff, name),
        "new_text": res.new_text,
        "spans": [{"start": pos(s.start), "end": pos(s.end), "kind": s.kind, "label": s.label} for s in res.spans],
        "candidates": [{"score": c.score, "parses": c.parses, "indentation_ok": c.indentation_ok,
                        "empty": c.empty, "diff": _relabel(c.diff, name)} for c in res.candidates],
        "flagged": [{"start": pos(f.start), "end": pos(f.end), "text": f.text, "prob": f.prob, "best": f.best}
                    for f in res.flagged],
        "stats": res.stats,
    })


# ---------------------------------------------------------------------------------------------- run


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings(block_size=args.block_size, threshold=None if args.steps else args.threshold, steps=args.steps,
                 temperature=args.temperature, confidence=args.confidence, max_new_tokens=args.max_new_tokens,
                 seed=args.seed)
    if getattr(args, "candidates", None) is not None:
        s.candidates = args.candidates
    if getattr(args, "dual_cache", None) is not None:
        s.dual_cache = args.dual_cache
    if getattr(args, "repair_threshold", None) is not None:
        s.repair_threshold = args.repair_threshold
    if getattr(args, "repair_fraction", None) is not None:
        s.repair_fraction = args.repair_fraction
    if getattr(args, "repair_ratio", None) is not None:
        s.repair_ratio = args.repair_ratio
    return s


def _parse_range(spec: str) -> tuple[int, int]:
    try:
        a, _, b = spec.partition(":")
        first = int(a)
        last = int(b) if b else first
    except ValueError as e:
        raise CliError(f"--range {spec!r}: expected A:B, two 1-based line numbers (e.g. 3:7)") from e
    return first, last


def _load_engine(args: argparse.Namespace):
    from .remote import server_from_env

    url = server_from_env(getattr(args, "server", None))
    if url is not None:  # the model lives in a `remask serve` process: same operations, same results
        from .remote import RemoteEngine

        try:
            return RemoteEngine(url, settings=_settings(args))
        except EngineError as e:
            raise CliError(str(e)) from e
    import torch

    from .engine import Engine

    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        engine = Engine.load(args.model, device=args.device, settings=_settings(args), dtype=dtype,
                             adapter=args.adapter, merge_adapter=not args.adapter_unmerged)
    except EngineError as e:
        hint = "" if args.model or "device" in str(e) else \
            " (--model random:small gives an untrained model that exercises the mechanics)"
        raise CliError(f"cannot load the model: {e}{hint}") from e
    if "RANDOM" in engine.info.get("description", "").upper():
        print(f"notice: using an untrained model ({engine.info['description']}); expect noise", file=sys.stderr)
    return engine


def _check_arguments(command: str, args: argparse.Namespace, text: str) -> None:
    """Every check that needs only the arguments and the file, done before the model loads (seconds)."""
    if command == "fill" and args.line is not None:
        if args.line < 1:
            raise CliError(f"--line {args.line}: lines are numbered from 1")
        try:
            line_range_to_offsets(text, args.line, args.line)
        except EngineError as e:
            raise CliError(f"--line {args.line}: {e}") from e
    if args.range_ is not None:
        try:
            s, e = line_range_to_offsets(text, *_parse_range(args.range_))
        except EngineError as err:
            raise CliError(f"--range {args.range_}: {err}") from err
        if command == "edit" and s == e:
            raise CliError(f"lines {args.range_} are empty: nothing to {args.op}")
    if command == "fill" and args.rounds < 1:
        raise CliError("--rounds must be at least 1")
    if command == "edit":
        if args.op == "instruct" and not (args.instruction or "").strip():
            raise CliError("--op instruct needs --instruction TEXT")
        if args.candidates is not None and args.candidates < 1:
            raise CliError("--candidates must be at least 1")
        if args.repair_fraction is not None and not 0 < args.repair_fraction <= 1:
            raise CliError("--repair-fraction must be in (0, 1]")
    if args.max_new_tokens < 1:
        raise CliError("--max-new-tokens must be at least 1")
    if args.dual_cache is not None and args.dual_cache < 1:
        raise CliError("--dual-cache must be at least 1")
    if args.apply and args.file != "-":
        path = Path(os.path.realpath(args.file))
        try:
            check_writable(path)
        except OSError as e:
            raise CliError(f"{args.file}: {e.strerror}; --apply would not be able to write it") from None
        if not os.access(path.parent, os.W_OK):
            raise CliError(f"{args.file}: its folder is not writable; --apply would not be able to write it")


def _operate(command: str, args: argparse.Namespace, engine, text: str, language: str | None) -> EditResult:
    if command == "fill":
        if args.line is not None:
            s, e = line_range_to_offsets(text, args.line, args.line)
            holes = [h for h in engine.holes(text, language)
                     if (h.start < e and h.end > s) or (h.start == h.end and s <= h.start <= e)]
            if holes:
                return engine.fill(text, holes[0].start, language=language)
            blank = not text[s:e].strip()
            return engine.fill(text, s if blank else e, language=language)
        if args.range_ is not None:
            s, e = line_range_to_offsets(text, *_parse_range(args.range_))
            nxt = min(len(text), e + (2 if text.startswith("\r\n", e) else 1))  # the last line's break too
            holes = [h for h in engine.holes(text, language) if h.start >= s and h.end <= nxt]
            if holes:
                return engine.fill_all(text, language=language, within=(s, nxt), rounds=args.rounds)
            return engine.fill(text, s, e, language=language)
        if args.all_holes:
            return engine.fill_all(text, language=language, rounds=args.rounds)
        holes = engine.holes(text, language)
        if not holes:
            raise CliError("no holes found: mark one with <FILL>, leave a pass / ... / TODO body, or give --line N")
        return engine.fill(text, holes[0].start, language=language)
    s, e = line_range_to_offsets(text, *_parse_range(args.range_))
    if s == e:
        raise CliError(f"lines {args.range_} are empty: nothing to {args.op}")
    if args.op == "regenerate":
        return engine.regenerate(text, s, e, language=language)
    if args.op == "repair":
        return engine.repair(text, s, e, language=language)
    if not args.instruction:
        raise CliError("--op instruct needs --instruction TEXT")
    return engine.instruct(text, s, e, args.instruction, language=language)


def run(command: str, args: argparse.Namespace) -> int:
    try:
        return _run(command, args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Cancelled:
        print("cancelled; nothing written", file=sys.stderr)
        return 130


def _run(command: str, args: argparse.Namespace) -> int:
    name = args.file
    text, bom, st = read_source(name)
    if not text.strip():
        raise CliError(f"{name}: the file is empty; nothing to {'fill' if command == 'fill' else 'edit'}")
    from .spans import language_for, normalize_language

    language = args.language or (language_for(name) if name != "-" else None)
    if args.language and normalize_language(args.language) is None:
        print(f"notice: no grammar for {args.language!r}; treating the file as plain text", file=sys.stderr)
    _check_arguments(command, args, text)
    engine = _load_engine(args)
    try:
        res = _operate(command, args, engine, text, language)
    except EngineError as e:
        raise CliError(str(e)) from e
    shown = "<stdin>" if name == "-" else name
    if res.stats.get("syntax") == "errors" and not args.json:
        print(f"notice: {shown} does not parse cleanly; spans come from tree-sitter's error recovery", file=sys.stderr)
    if args.json:
        utf = (getattr(sys.stdout, "encoding", "") or "").lower().replace("-", "").startswith("utf")
        print(json.dumps(result_json(res, text, shown), ensure_ascii=not utf, indent=2, allow_nan=False))
    if args.apply:
        if name == "-":
            if not args.json:  # with --json the new text is the object's "new_text"
                sys.stdout.flush()
                sys.stdout.buffer.write((b"\xef\xbb\xbf" if bom else b"") + res.new_text.encode("utf-8"))
                sys.stdout.buffer.flush()
        elif res.edits:
            backup = write_atomic(Path(name), res.new_text, bom=bom, expect=st)
            print(f"wrote {name} (backup: {backup})", file=sys.stderr)
    if not args.json and not (args.apply and name == "-"):
        if not res.edits:
            msg = res.message if (res.message or "").startswith("no suggestion") else \
                "no change" + (f" ({res.message})" if res.message else "")
            print(msg + (f"; {name} left as it was" if args.apply else ""), file=sys.stderr)
        else:
            diff = _relabel(res.diff, shown)
            use_color = args.color if args.color is not None else sys.stdout.isatty()
            sys.stdout.write(colorize(diff) if use_color else diff)
    if res.message and not args.json:
        if res.edits:  # the suggestion does not parse, or some holes got no suggestion
            print(f"warning: {res.message}", file=sys.stderr)
        elif args.apply and name == "-":  # (otherwise said above)
            print(res.message, file=sys.stderr)
    if res.flagged and not args.json:
        for f in res.flagged:
            line, ch = offset_to_position(text, f.start, "utf-32")
            print(f"flagged {shown}:{line + 1}:{ch + 1} {f.text!r} p={f.prob:.3g} (model prefers {f.best!r})",
                  file=sys.stderr)
    return EXIT_OK
