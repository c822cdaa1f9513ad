"""``remask generate`` and ``remask info``: the model and decoder without the editing engine."""

from __future__ import annotations

import argparse
import json
import sys


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Options every model-using command shares."""
    p.add_argument("--model", default=None,
                   help="model folder; 'default' (built-in, the default) or random:PRESET for an untrained one")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: as stored on CPU float32)")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a LoRA adapter folder (remask train adapt) applied to --model; refused if made for another")
    p.add_argument("--adapter-unmerged", action="store_true",
                   help="keep the adapter's LoRA layers apart instead of merging them into the weights at load")


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--block-size", type=int, default=None, help="block size B (default: the model's)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="confidence threshold tau; 0 < tau <= 1 (use --steps for a fixed schedule)")
    p.add_argument("--steps", type=int, default=None, help="fixed steps per block (disables --threshold)")
    p.add_argument("--confidence", default="low_confidence",
                   choices=["low_confidence", "margin", "entropy", "random"])
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)


def add_dual_cache_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dual-cache", type=int, default=None, metavar="N",
                   help="Dream/DreamOn only: approximate dual cache, a full forward every N steps (faster, may change "
                        "the answer; default: exact)")


def decode_config_from_args(args: argparse.Namespace, **kw):
    from .decoder import DecodeConfig

    return DecodeConfig(max_new_tokens=args.max_new_tokens, block_size=args.block_size,
                        threshold=None if args.steps else args.threshold, steps_per_block=args.steps,
                        confidence=args.confidence, temperature=args.temperature, seed=args.seed, **kw)


def load_from_args(args: argparse.Namespace):
    """(model, tokenizer, description), printing a notice for a random model."""
    import torch

    from .checkpoint import resolve_model

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tok, desc = resolve_model(args.model, device=args.device, dtype=dtype, adapter=args.adapter,
                                     merge_adapter=not args.adapter_unmerged)
    if "RANDOM" in desc:
        print(f"notice: using a {desc}", file=sys.stderr)
    return model, tok, desc


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    if command == "generate":
        p.add_argument("prompt", help="prompt text, or - to read stdin")
        p.add_argument("--mode", choices=["diffusion", "ar"], default="diffusion")
        p.add_argument("--json", action="store_true", help="print a JSON record with the statistics")
        add_decode_arguments(p)


def run(command: str, args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError

    try:
        model, tok, desc = load_from_args(args)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .network import remask_config

    cfg = remask_config(model)
    if command == "info":
        info = {"model": desc, "parameters": sum(p.numel() for p in model.parameters()),
                "kind": cfg.kind, "block_size": cfg.block_size, "layers": cfg.num_hidden_layers,
                "hidden": cfg.hidden_size, "vocab": cfg.vocab_size, "context": cfg.max_position_embeddings,
                "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
        from .families import capabilities, family_of, family_reason

        fam = family_of(model)
        info.update({"family": fam.name, "family_title": fam.title, "body": fam.body, "attention": fam.attention,
                     "logit_shift": fam.logit_shift, "decode": fam.decode, "infill": fam.infill,
                     "mask_id": cfg.mask_token_id, "capabilities": sorted(capabilities(model)),
                     "why": family_reason(model)})
        if fam.attention == "full":
            info["block_size"] = None  # the whole canvas is one block
        print(json.dumps(info, indent=2))
        return 0
    from .families.run import family_generate

    if tok is None:
        print("error: this model has no tokenizer; generate needs one", file=sys.stderr)
        return 2
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(text)
    dc = decode_config_from_args(args, mode=args.mode)
    try:
        res = family_generate(model, [ids], dc, tokenizer=tok)  # the family's own loop and commit rule
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = res.texts[0] if res.texts else ""
    if args.json:
        print(json.dumps({"text": out, "tokens": len(res.tokens[0]), "token_ids": res.tokens[0], "nfe": res.nfe,
                          "tokens_per_forward": round(res.tokens_per_forward, 3),
                          "seconds": round(res.elapsed_s, 4), "finish": res.finish[0]}))
    else:
        sys.stdout.write(text + out + "\n")
    return 0
