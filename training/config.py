"""One configuration object for every training stage.

``TrainConfig`` is a flat dataclass: defaults here, then a named preset, then a TOML or YAML file, then
``--key value`` on the command line (last wins). It is saved as ``train_config.json`` into every
checkpoint so that a folder says how it was made. No magic: a field is a field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

STAGES = ("ar", "bd", "sft")


@dataclass
class TrainConfig:
    # Where things go. Stage folders: OUT/corpus, OUT/tokenizer, OUT/ar, OUT/bd, OUT/sft.
    out_dir: str = "runs/remask"
    preset: str = "tiny"  # model shape (model.config.PRESETS)
    seed: int = 1234

    # Corpus (remask corpus build).
    sources: list[str] = field(default_factory=list)  # folders; empty = stdlib + site-packages
    extensions: list[str] = field(default_factory=lambda: [
        ".py", ".pyi", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".rs", ".go", ".java", ".c", ".h", ".cc",
        ".cpp", ".hpp", ".rb", ".sh", ".lua"])
    holdout: list[str] = field(default_factory=list)  # top-level package names kept out of training
    min_file_bytes: int = 64
    max_file_bytes: int = 400_000
    max_corpus_mb: float = 64.0  # stop gathering after this much text (files drawn in seeded order)
    skip_tests: bool = True  # skip test folders (test/, tests/, testing/)
    val_fraction: float = 0.01
    min_val_files: int = 2

    # Tokenizer (remask tokenizer train).
    vocab_size: int = 0  # 0 = the model preset's vocabulary
    tokenizer_max_mb: float = 16.0

    # Data and batches.
    seq_len: int = 256
    batch_size: int = 8  # sequences per optimizer step, over all processes together
    grad_accum: int = 1
    num_workers: int = 0
    fim_rate: float = 0.5  # fraction of rows made of FIM samples
    fim_line_frac: float = 0.6  # middle = 1-4 whole lines
    fim_inline_frac: float = 0.2  # middle = a span inside one line
    fim_node_frac: float = 0.2  # middle = a tree-sitter node (statement, block, expression)
    fim_prefix_tokens: int = 400  # cap on the prefix, in tokens
    fim_suffix_tokens: int = 600  # cap on the suffix, in tokens
    fim_max_middle_lines: int = 4

    # Steps and time per stage (0 steps = skip the stage in the pipeline). Time limits in minutes, 0 = none.
    ar_steps: int = 200
    bd_steps: int = 200
    sft_steps: int = 50
    ar_time_min: float = 0.0
    bd_time_min: float = 0.0
    sft_time_min: float = 0.0
    time_budget_min: float = 0.0  # pipeline: split over the stages that have no own time limit
    ar_lr: float = 2e-3
    bd_lr: float = 1e-3
    sft_lr: float = 3e-4

    # Optimiser and schedule.
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine | wsd | constant
    wsd_decay_frac: float = 0.2  # WSD: fraction of steps spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0

    # Block diffusion.
    bd_warmup_steps: int = 50  # S_warmup: mask-ratio cap rises from bd_u_init to 1, loss unweighted
    bd_u_init: float = 1e-3
    bd_clip: bool = True  # u_blk = min(1, max(u, 1/B)), one forced mask in an empty block

    # Supervised fine-tuning.
    sft_data: list[str] = field(default_factory=list)  # JSONL files of {"prompt", "response"}
    sft_synthetic_rate: float = 1.0  # share of synthetic edit tasks when JSONL data is also given
    sft_max_eos: int = 4

    # Loop.
    init_from: str = ""  # checkpoint folder to start from ("" = previous stage, or random for ar)
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 100
    log_every: int = 10
    progress: bool = True

    # Hardware.
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16 (autocast anywhere)
    compile: bool = False  # torch.compile each decoder layer (inductor: Triton on CUDA, C++ on CPU)
    fused_adamw: bool = True  # one fused AdamW kernel (CUDA and CPU); False = the foreach implementation
    attn: str = "auto"  # auto (flex on CUDA for BD, sdpa otherwise) | sdpa | flex_attention
    parallel: str = "ddp"  # ddp | fsdp (used when WORLD_SIZE > 1)

    def stage_value(self, stage: str, name: str) -> Any:
        return getattr(self, f"{stage}_{name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def validate(self) -> None:
        if self.seq_len < 8:
            raise ValueError("seq_len must be at least 8")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be at least 1")
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ValueError("schedule must be cosine, wsd or constant")
        if not 0.0 <= self.fim_rate <= 1.0:
            raise ValueError("fim_rate must be in [0, 1]")
        if self.fim_line_frac + self.fim_inline_frac + self.fim_node_frac <= 0:
            raise ValueError("at least one of fim_line_frac, fim_inline_frac, fim_node_frac must be > 0")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError("parallel must be ddp or fsdp")
        if not 0 < self.bd_u_init <= 1:
            raise ValueError("bd_u_init must be in (0, 1]")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError("dtype must be auto, float32 or bfloat16")
        if self.attn not in ("auto", "sdpa", "flex_attention", "eager"):
            raise ValueError("attn must be auto, sdpa, flex_attention or eager")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("min_lr_ratio must be in [0, 1]")
        for name in ("warmup_steps", "bd_warmup_steps", "grad_clip", "weight_decay", "num_workers", "vocab_size",
                     "ar_time_min", "bd_time_min", "sft_time_min", "time_budget_min", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


# Named starting points for `remask train pipeline --preset NAME`. The model shape comes from the
# model preset of the same name; these set data size, steps and batch so the stage times are sensible.
PIPELINE_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop CPU: the tests and a smoke run.
    "test": dict(preset="test", max_corpus_mb=2.0, tokenizer_max_mb=1.0, seq_len=128, batch_size=4,
                 ar_steps=30, bd_steps=30, sft_steps=10, warmup_steps=5, bd_warmup_steps=10,
                 eval_every=10, eval_batches=2, save_every=10, log_every=5),
    # The CPU stopgap default model: ~5M parameters; minutes to hours depending on the step counts.
    "tiny": dict(preset="tiny", max_corpus_mb=24.0, tokenizer_max_mb=8.0, seq_len=256, batch_size=8,
                 ar_steps=2000, bd_steps=2000, sft_steps=300, warmup_steps=50, bd_warmup_steps=200,
                 eval_every=200, eval_batches=4, save_every=200, log_every=10),
    # The default model on one GPU (~32M parameters): the whole pipeline within one 9-minute command, so the
    # stages are time-limited (8 minutes in all, split 45/45/10 after corpus and tokenizer); steps are caps.
    "small": dict(preset="small", max_corpus_mb=250.0, tokenizer_max_mb=60.0, seq_len=1024, batch_size=64,
                  time_budget_min=8.0,
                  ar_steps=3000, bd_steps=3000, sft_steps=400, ar_lr=2e-3, bd_lr=1e-3, sft_lr=3e-4,
                  warmup_steps=200, bd_warmup_steps=300, eval_every=500, eval_batches=8, save_every=1000,
                  log_every=20, num_workers=10, compile=True),
    "medium": dict(preset="medium", max_corpus_mb=1000.0, tokenizer_max_mb=100.0, seq_len=2048,
                   batch_size=64, ar_steps=10000, bd_steps=10000, sft_steps=1000, ar_lr=6e-4, bd_lr=3e-4,
                   sft_lr=1e-4, warmup_steps=500, bd_warmup_steps=1000, eval_every=1000, save_every=1000,
                   log_every=20, num_workers=8, compile=True),
}


def _field_type(f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(TrainConfig)
    return hints[f.name]


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a TOML or command-line value to the field's type, with a clear error."""
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if origin is list:
            if isinstance(value, list):
                return [str(v) for v in value]
            return [v for v in (s.strip() for s in str(value).split(",")) if v]
        if origin in (typing.Union, types.UnionType):
            return value
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)  # int(64.7) would be 64, silently
        return tp(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config field {name!r}: cannot use {value!r} as {getattr(tp, '__name__', tp)}") from e


def apply_overrides(cfg: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    changes = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            close = [n for n in fields if name in n or n in name][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"{source}: unknown config field {key!r}{hint}")
        changes[name] = _coerce(name, _field_type(fields[name]), value)
    return dataclasses.replace(cfg, **changes)


def load_config(path: str | Path) -> dict[str, Any]:
    """A TOML (or ``.yaml``/``.yml``) file's keys; sections ([ar], [corpus], ...) are flattened, documentation only."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # PyYAML: Gradio already pulls it in
        except ImportError as e:
            raise ValueError(f"config file {path} is YAML but PyYAML is not installed (pip install pyyaml), "
                             "or write it as TOML") from e
        parse, errors, kind = yaml.safe_load, yaml.YAMLError, "YAML"
    else:
        parse, errors, kind = tomllib.loads, tomllib.TOMLDecodeError, "TOML"
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ValueError(f"config file {path} does not exist") from e
    except errors as e:
        raise ValueError(f"config file {path} is not valid {kind}: {e}") from e
    return _flatten(data if data is not None else {}, path)


def _flatten(data: Any, path: str | Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field names to values")
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    return flat


# Help text and metavar of every config field's flag: ``remask train --help`` is the reference a user reads.
FIELD_HELP: dict[str, tuple[str, str]] = {
    "out_dir": ("DIR", "run folder: OUT/corpus, OUT/tokenizer, OUT/ar, OUT/bd, OUT/sft go under it"),
    "preset": ("NAME", "model shape (model.config.PRESETS: test, tiny, small, medium, ...)"),
    "seed": ("N", "seed of data order, masking and initialisation (a rerun repeats the same run)"),
    "sources": ("DIR,...", "comma-separated source folders for the corpus; empty: this Python's stdlib and "
                "site-packages"),
    "extensions": ("EXT,...", "comma-separated file suffixes gathered into the corpus"),
    "holdout": ("PKG,...", "comma-separated top-level package names kept out of training (held-out split)"),
    "min_file_bytes": ("N", "corpus: skip files smaller than this"),
    "max_file_bytes": ("N", "corpus: skip files larger than this"),
    "max_corpus_mb": ("MB", "corpus: stop gathering after this much text (files drawn in seeded order)"),
    "skip_tests": ("", "corpus: skip test folders (test/, tests/, testing/)"),
    "val_fraction": ("F", "corpus: share of files in the validation split, 0-1"),
    "min_val_files": ("N", "corpus: at least this many validation files"),
    "vocab_size": ("N", "tokenizer vocabulary size; 0: the model preset's"),
    "tokenizer_max_mb": ("MB", "tokenizer: train on at most this much text"),
    "seq_len": ("N", "tokens per training row"),
    "batch_size": ("N", "rows per optimizer step, over all processes together"),
    "grad_accum": ("N", "micro-batches accumulated per optimizer step"),
    "num_workers": ("N", "data-loader worker processes (0: load in the training process)"),
    "fim_rate": ("F", "share of rows made of fill-in-the-middle samples, 0-1"),
    "fim_line_frac": ("F", "FIM middles of 1 to fim-max-middle-lines whole lines (relative weight)"),
    "fim_inline_frac": ("F", "FIM middles inside one line (relative weight)"),
    "fim_node_frac": ("F", "FIM middles that are a tree-sitter node: statement, block, expression (weight)"),
    "fim_prefix_tokens": ("N", "FIM: cap on the prefix, in tokens"),
    "fim_suffix_tokens": ("N", "FIM: cap on the suffix, in tokens"),
    "fim_max_middle_lines": ("N", "FIM: most whole lines in a line middle"),
    "ar_steps": ("N", "optimizer steps of the AR stage (0 skips it in the pipeline)"),
    "bd_steps": ("N", "optimizer steps of the block-diffusion stage (0 skips it in the pipeline)"),
    "sft_steps": ("N", "optimizer steps of the SFT stage (0 skips it in the pipeline)"),
    "ar_time_min": ("MIN", "time limit of the AR stage in minutes (0: none)"),
    "bd_time_min": ("MIN", "time limit of the BD stage in minutes (0: none)"),
    "sft_time_min": ("MIN", "time limit of the SFT stage in minutes (0: none)"),
    "time_budget_min": ("MIN", "pipeline: minutes split 45/45/10 over the stages without their own limit "
                        "(0: none)"),
    "ar_lr": ("LR", "peak learning rate of the AR stage"),
    "bd_lr": ("LR", "peak learning rate of the BD stage"),
    "sft_lr": ("LR", "peak learning rate of the SFT stage"),
    "min_lr_ratio": ("F", "the schedule decays to this fraction of the peak learning rate, 0-1"),
    "warmup_steps": ("N", "linear learning-rate warmup steps"),
    "schedule": ("NAME", "learning-rate schedule: cosine, wsd (warmup-stable-decay) or constant"),
    "wsd_decay_frac": ("F", "wsd: share of the steps spent decaying at the end"),
    "weight_decay": ("F", "AdamW weight decay"),
    "beta1": ("F", "AdamW beta1"),
    "beta2": ("F", "AdamW beta2"),
    "grad_clip": ("NORM", "clip the gradient norm to this (0: no clipping)"),
    "bd_warmup_steps": ("N", "BD: steps over which the mask-ratio cap rises from bd-u-init to 1 (loss "
                        "unweighted meanwhile)"),
    "bd_u_init": ("F", "BD: mask-ratio cap at the start of the warmup, in (0, 1]"),
    "bd_clip": ("", "BD: clip each block's mask ratio to at least 1/B, with one forced mask in an empty block"),
    "sft_data": ("FILE,...", "comma-separated JSONL files of {\"prompt\", \"response\"} for SFT (besides the "
                 "synthetic edit tasks)"),
    "sft_synthetic_rate": ("F", "SFT: share of synthetic edit tasks when JSONL data is also given, 0-1"),
    "sft_max_eos": ("N", "SFT: up to this many EOS tokens after a response, noised with it"),
    "init_from": ("DIR", "checkpoint folder to start from (empty: the previous stage of the run, or random "
                  "weights for ar)"),
    "eval_every": ("N", "validation every N steps (0: never)"),
    "eval_batches": ("N", "batches per validation"),
    "save_every": ("N", "checkpoint every N steps (0: only at the end)"),
    "log_every": ("N", "log metrics every N steps"),
    "progress": ("", "show a progress bar"),
    "device": ("DEV", "auto, cpu, cuda or cuda:N"),
    "dtype": ("NAME", "auto (bf16 autocast on CUDA, fp32 on CPU), float32, or bfloat16 (autocast anywhere)"),
    "compile": ("", "torch.compile each decoder layer (inductor: Triton on CUDA, C++ on CPU)"),
    "fused_adamw": ("", "one fused AdamW kernel (off: the foreach implementation)"),
    "attn": ("NAME", "attention: auto (flex on CUDA for BD, sdpa otherwise), sdpa, flex_attention or eager"),
    "parallel": ("NAME", "with several processes (torchrun): ddp or fsdp"),
}

# Fields with a closed set of values: argparse checks them (and --help lists them) before any work starts.
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "schedule": ("cosine", "wsd", "constant"),
    "dtype": ("auto", "float32", "bfloat16"),
    "attn": ("auto", "sdpa", "flex_attention", "eager"),
    "parallel": ("ddp", "fsdp"),
}


def _type_metavar(tp: Any) -> str:
    return {int: "N", float: "X", str: "TEXT"}.get(tp, "VALUE,..." if typing.get_origin(tp) is list else "VALUE")


def _show_default(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(value) if value else "empty"
    if isinstance(value, str):
        return value or "empty"
    return repr(value)


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--field value`` option per config field (``--out-dir`` and ``--out_dir`` both work).

    A true/false field is ``--field`` / ``--no-field`` (``--field false`` is still read, as config files
    and older command lines write it)."""
    g = parser.add_argument_group("config fields (override preset and --config)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        # a field without an entry still gets a flag (a test asks for the entry)
        metavar, text = FIELD_HELP.get(f.name) or (_type_metavar(hints[f.name]), f"config field {f.name}")
        dash = f.name.replace("_", "-")
        if hints[f.name] is bool:
            how = f"on; --no-{dash} turns it off" if default else f"off; --{dash} turns it on, --no-{dash} off"
            kw: dict[str, Any] = dict(nargs="?", const="true", metavar="true|false", help=f"{text} (default {how})")
            g.add_argument(f"--no-{dash}", dest=f"cfg_{f.name}", action="store_const", const="false",
                           help=argparse.SUPPRESS)
        else:
            choices = FIELD_CHOICES.get(f.name)
            kw = dict(choices=choices, metavar="{" + ",".join(choices) + "}" if choices else metavar,
                      help=f"{text} (default {_show_default(default)})")
        g.add_argument(f"--{dash}", dest=f"cfg_{f.name}", default=None, **kw)
        if "_" in f.name:  # the spelling of config files works too, without doubling every help line
            g.add_argument(f"--{f.name}", dest=f"cfg_{f.name}", default=None, **{**kw, "help": argparse.SUPPRESS})


def build_config(args: argparse.Namespace, preset_name: str | None = None) -> TrainConfig:
    """Defaults < pipeline preset < --config TOML/YAML < --key value."""
    cfg = TrainConfig()
    if preset_name:
        from model.config import PRESETS

        if preset_name in PIPELINE_PRESETS:
            cfg = apply_overrides(cfg, PIPELINE_PRESETS[preset_name], f"preset {preset_name}")
        elif preset_name in PRESETS:  # a model shape without pipeline settings
            cfg = dataclasses.replace(cfg, preset=preset_name)
        else:
            raise ValueError(f"unknown preset {preset_name!r}; known: {', '.join(PIPELINE_PRESETS)} "
                             f"(pipeline) and {', '.join(PRESETS)} (model shapes)")
    if getattr(args, "config", None):
        cfg = apply_overrides(cfg, load_config(args.config), str(args.config))
    cli = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    cfg = apply_overrides(cfg, cli, "command line")
    cfg.validate()
    return cfg


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return apply_overrides(TrainConfig(), {k: v for k, v in d.items() if k in known}, "saved config")
