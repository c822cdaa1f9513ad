"""``remask corpus build|tokenize``, ``remask tokenizer train``, ``remask train ar|bd|sft|pipeline|experiment|adapt``.

Every option of ``TrainConfig`` is a ``--field value`` flag; ``--config FILE.toml`` (or
``.yaml``) and ``--preset NAME`` set many at once (order: defaults < preset < file < flags). ``--steps`` and ``--lr``
are shorthands for the stage's own ``--ar-steps`` / ``--bd-lr`` ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import PIPELINE_PRESETS, add_config_arguments, build_config


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices={"corpus": ["build", "tokenize", "info"], "tokenizer": ["train"],
                                           "train": ["ar", "bd", "sft", "pipeline", "experiment", "adapt"]}[command],
                        help="what to do")
    parser.add_argument("--config", default=None, metavar="FILE", help="TOML or YAML file of config fields")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help=f"pipeline preset ({', '.join(PIPELINE_PRESETS)}); also sets the model shape")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (corpus, tokenizer, stage or pipeline folder)")
    if command == "corpus":
        parser.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer folder (tokenize)")
        parser.add_argument("--corpus", default=None, metavar="DIR", help="corpus folder (tokenize, info)")
    if command == "tokenizer":
        parser.add_argument("--corpus", required=True, metavar="DIR",
                            help="corpus folder built by `remask corpus build`")
    if command == "train":
        parser.add_argument("--corpus", default=None, metavar="DIR", help="corpus folder (stage commands)")
        parser.add_argument("--tokenizer", default=None, metavar="DIR",
                            help="tokenizer folder (default: the init checkpoint's)")
        parser.add_argument("--steps", type=int, default=None, metavar="N",
                            help="steps of this stage (= --STAGE-steps)")
        parser.add_argument("--lr", type=float, default=None, metavar="LR", help="peak learning rate of this stage")
        parser.add_argument("--time-budget-min", dest="budget", type=float, default=None, metavar="MIN",
                            help="minutes: the whole pipeline's budget, or this stage's limit")
        g = parser.add_argument_group("experiment (AR continued vs BD CPT from --init-from, --steps each)")
        g.add_argument("--no-warmup-arm", action="store_true", help="also train arm (c): BD without warmup")
        g.add_argument("--limit", type=int, default=200, metavar="N",
                       help="HumanEval-Infilling tasks per split (0 = all; default 200)")
        g.add_argument("--splits", default="single-line,multi-line", metavar="SPLIT,...",
                       help="HumanEval-Infilling splits (default single-line,multi-line)")
        g.add_argument("--thresholds", default="0.7,0.8,0.9,0.95", metavar="TAU,...",
                       help="thresholds tau for the BD arms (default 0.7,0.8,0.9,0.95)")
        g.add_argument("--exact-files", nargs="*", default=[], metavar="PATH",
                       help="held-out files or folders for exact match (default: none)")
        g.add_argument("--eval-batch-size", type=int, default=16, metavar="N",
                       help="tasks decoded together (default 16)")
        g.add_argument("--data", default=None, nargs="+", metavar="PATH",
                       help="experiment: HumanEval-Infilling data (github.com/openai/human-eval-infilling, nothing "
                            "is downloaded): a .jsonl.gz file, or a folder holding the upstream "
                            "HumanEval-*Infilling.jsonl.gz files; adapt: folders, git repositories or files of "
                            "your code")
        from .adapt import add_adapt_arguments

        add_adapt_arguments(parser)
    add_config_arguments(parser, skip=("preset", "time_budget_min") if command == "train" else ("preset",))


def run(command: str, args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError

    from .corpus import CorpusError
    from .evals.common import EvalError
    from .trainer import TrainingError

    try:
        return _run(command, args)
    except (CorpusError, TrainingError, EvalError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder that cannot be written, a path that is a file, ...
        print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 2


def _run(command: str, args: argparse.Namespace) -> int:
    from .pipeline import corpus_step, run_pipeline, tokenizer_step

    action = args.action
    if action == "adapt":
        from .adapt import run_command

        return run_command(args)
    cfg = build_config(args, args.preset)
    if command == "corpus":
        from .corpus import read_manifest, tokenize_corpus

        if action == "build":
            out = Path(args.out or Path(cfg.out_dir) / "corpus")
            if (out / "manifest.json").is_file():
                print(f"error: {out} already holds a corpus; choose another --out or delete it", file=sys.stderr)
                return 2
            corpus_step(cfg, out)
            print(out)
            return 0
        corpus = Path(args.corpus or args.out or Path(cfg.out_dir) / "corpus")
        if action == "tokenize":
            if not args.tokenizer:
                print("error: --tokenizer DIR is required", file=sys.stderr)
                return 2
            tokenize_corpus(corpus, args.tokenizer)
            return 0
        m = read_manifest(corpus)
        import json

        print(json.dumps({k: m[k] for k in ("sources", "splits", "languages", "dropped")}, indent=2))
        return 0
    if command == "tokenizer":
        out = Path(args.out or Path(cfg.out_dir) / "tokenizer")
        tokenizer_step(cfg, Path(args.corpus), out)
        print(out)
        return 0
    # train
    if action == "pipeline":
        given = [f"--{k}" for k in ("corpus", "tokenizer", "steps", "lr") if getattr(args, k, None) is not None]
        if given:
            print(f"error: {', '.join(given)} apply to one stage; the pipeline builds its corpus and tokenizer "
                  "under --out and takes --ar-steps, --bd-lr, ... per stage", file=sys.stderr)
            return 2
        if args.out:
            cfg.out_dir = args.out
        if args.budget is not None:
            cfg.time_budget_min = args.budget
        run_pipeline(cfg)
        return 0
    if action == "experiment":
        return _experiment(cfg, args)
    from .trainer import Trainer

    stage = action
    if args.steps is not None:
        setattr(cfg, f"{stage}_steps", args.steps)
    if args.lr is not None:
        setattr(cfg, f"{stage}_lr", args.lr)
    if args.budget is not None:
        setattr(cfg, f"{stage}_time_min", args.budget)
    prev = {"bd": "ar", "sft": "bd"}.get(stage)
    out = Path(args.out or Path(cfg.out_dir) / stage)
    same_run = out.resolve().parent == Path(cfg.out_dir).resolve()
    if prev and not cfg.init_from and same_run and (Path(cfg.out_dir) / prev / "checkpoint" / "config.json").is_file():
        cfg.init_from = str(Path(cfg.out_dir) / prev / "checkpoint")  # the previous stage of the same run
    corpus = Path(args.corpus or Path(cfg.out_dir) / "corpus")
    tok_dir = Path(args.tokenizer) if args.tokenizer else None
    if tok_dir is not None:
        from .corpus import tokenize_corpus

        tokenize_corpus(corpus, tok_dir)
    elif cfg.init_from:
        from .corpus import tokenize_corpus

        tokenize_corpus(corpus, cfg.init_from)
    ckpt = Trainer(cfg, stage, out, corpus, tokenizer_dir=tok_dir).run()
    if os.environ.get("RANK", "0") == "0":
        print(ckpt)
    return 0


def _experiment(cfg, args: argparse.Namespace) -> int:
    from .corpus import tokenize_corpus
    from .evals.cli import _floats
    from .evals.humaneval import SPLITS
    from .experiment import run_experiment

    if not cfg.init_from or args.steps is None:
        print("error: the experiment needs --init-from AR_CHECKPOINT and --steps N", file=sys.stderr)
        return 2
    if args.data and len(args.data) > 1:
        print("error: the experiment takes one --data PATH (the HumanEval-Infilling data)", file=sys.stderr)
        return 2
    splits = [x.strip() for x in args.splits.split(",") if x.strip()]
    bad = [x for x in splits if x not in SPLITS]
    if bad or not splits:
        print(f"error: unknown split(s) {bad}; choose from {', '.join(SPLITS)}", file=sys.stderr)
        return 2
    try:
        thresholds = _floats(args.thresholds)
    except argparse.ArgumentTypeError as e:
        print(f"error: --thresholds: {e}", file=sys.stderr)
        return 2
    if cfg.time_budget_min or any(cfg.stage_value(s, "time_min") for s in ("ar", "bd")):
        print("notice: the experiment's arms run --steps steps each (the same tokens per arm); the config's time "
              "limits are not used", file=sys.stderr)
    corpus = Path(args.corpus or Path(cfg.out_dir) / "corpus")
    tokenize_corpus(corpus, cfg.init_from)
    out = Path(args.out or Path(cfg.out_dir) / "experiment")
    md = run_experiment(cfg, corpus, Path(cfg.init_from), out, args.steps, no_warmup_arm=args.no_warmup_arm,
                        splits=splits, thresholds=thresholds, limit=args.limit or None, seed=0,
                        exact_files=args.exact_files, device=cfg.device, batch_size=args.eval_batch_size,
                        data=args.data[0] if args.data else None)
    print(md.read_text(encoding="utf-8"))
    return 0
