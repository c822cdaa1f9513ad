"""Run the Dream family's published decoders on a folder, for the parity tests.

Runs in a subprocess whose ``sys.path`` starts with transformers 4.46.2 (the version Dream targets). The
published files are loaded from ../shared/reference/dream/ as a package (never copied): ``DreamModel`` with its
``diffusion_generate`` (Dream-v0, Dream-Coder, DiffuCoder), and DreamOn's official eval generator
(``MDMGenerator.batch_generate_with_expand_as_token``). The generator wants a tokenizer object only for three ids
and an args object; the runner gives it a plain holder of those ids and values.

Reads {"reference": DIR, "folder": DIR, "mode": "dream" | "dreamon", "cases": [...]} as JSON on stdin and
prints one JSON object. dream: per case the generated part of every row (``rows`` are left-padded with the pad
id and passed with their attention mask when their lengths differ). dreamon: per case the canvas window and the
middle's length.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
import types

import torch


def _package(reference: str) -> None:
    pkg = types.ModuleType("dream_ref")
    pkg.__path__ = [reference]  # type: ignore[attr-defined]
    pkg.__spec__ = importlib.util.spec_from_file_location("dream_ref", f"{reference}/configuration_dream.py",
                                                          submodule_search_locations=[reference])
    sys.modules["dream_ref"] = pkg


def main() -> None:
    job = json.load(sys.stdin)
    import transformers

    _package(job["reference"])
    modeling = importlib.import_module("dream_ref.modeling_dream")
    torch.manual_seed(0)
    model = modeling.DreamModel.from_pretrained(job["folder"], torch_dtype=torch.float32).eval()
    cfg = model.config
    out, seconds = [], []
    if job["mode"] == "dream":
        for c in job["cases"]:
            rows = c["rows"]
            L = max(len(r) for r in rows)
            ids = torch.tensor([[cfg.pad_token_id] * (L - len(r)) + r for r in rows])
            am = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
            t0 = time.perf_counter()
            x = model.diffusion_generate(ids, attention_mask=am, max_new_tokens=c["max_new_tokens"],
                                         steps=c["steps"], alg=c["alg"], temperature=0.0,
                                         **({"top_k": c["top_k"]} if "top_k" in c else {}),
                                         output_history=False, return_dict_in_generate=False)
            seconds.append(time.perf_counter() - t0)
            out.append(x[:, L:].tolist())
    else:
        spec = importlib.util.spec_from_file_location("dreamon_eval", f"{job['reference']}/dreamon_eval_generator.py")
        gen_mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gen_mod)
        for c in job["cases"]:
            ids = types.SimpleNamespace(mask_id=cfg.mask_token_id, expand_id=c["expand_id"], eos_id=cfg.eos_token_id)
            args = types.SimpleNamespace(
                temperature=0.0, top_p=None, top_k=c.get("top_k"), show_progress=False, dtype="fp32", device="cpu",
                max_tokens=c.get("max_tokens", 2048), min_gen_len=c["min_gen_len"], max_prompt_len=4096,
                max_gen_len=c["max_gen_len"], pad_to_max_len=False, pad_eos_to_right=True, batch_size=1,
                eps=1e-3, steps=c["steps"], alg=c["alg"], alg_temp=None, delete_eos_token=True)
            g = gen_mod.MDMGenerator(args, model, ids)
            prompt = c["prefix"] + [cfg.mask_token_id] * c["min_gen_len"] + c["suffix"] + [cfg.eos_token_id]
            t0 = time.perf_counter()
            x, n_gen = g.batch_generate_with_expand_as_token(torch.tensor([prompt]))
            seconds.append(time.perf_counter() - t0)
            window = len(prompt) - c["min_gen_len"] + n_gen
            out.append({"window": x[0, :window].tolist(), "middle_len": int(n_gen),
                        "middle": x[0, len(c["prefix"]): len(c["prefix"]) + n_gen].tolist()})
    print(json.dumps({"transformers": transformers.__version__, "out": out, "seconds": seconds}))


if __name__ == "__main__":
    main()
