"""Run SDAR's published ``block_diffusion_generate`` (generate.py + modeling_sdar.py) on a folder, for the parity
tests.

Runs in a subprocess whose ``sys.path`` starts with transformers 4.52.4 (the version the reference targets). The
published files are loaded from ../shared/reference/sdar/ as a package (never copied). What they import but a
CPU machine lacks gets a stand-in with the same maths, installed here before the import:
- ``flash_attn.flash_attn_func`` (decode steps: a block attending to the cache and itself, no mask): plain
  softmax attention with grouped KV heads, ``causal=False``, the given scale;
- ``flash_attn.ops.triton.layer_norm.rms_norm_fn``: the RMSNorm formula the modeling file keeps in a comment;
- ``triton``: imported by the training-loss module only; inert decorators while that module is imported (its
  kernels are never called at inference), removed again so that torch still sees no triton.
Greedy decoding: the published sampler divides by the temperature (no greedy path), so with ``greedy`` the
runner replaces it by argmax with p = softmax(logits)[argmax], the rule a temperature of 0 intends.

Reads {"reference": DIR, "folder": DIR, "cases": [...], "greedy": bool} as JSON on stdin and prints one JSON
object: per case the canvas after the prompt (cut at the first stop id and at the first mask), whether the
prompt came back unchanged, and whether a step overwrote a position that was no longer a mask (seen by a forward
pre-hook that only records the inputs).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import sys
import time
import types

import torch
import torch.nn.functional as F


class _Inert:
    """Anything and everything: triton decorators, ``tl.constexpr`` annotations."""

    def __call__(self, *a, **k):
        if len(a) == 1 and callable(a[0]) and not k:
            return a[0]
        return self

    def __getattr__(self, name):
        return self


def _install_stand_ins() -> None:
    def flash_attn_func(q, k, v, causal=False, softmax_scale=None, **_):
        # q [b, lq, h, d], k/v [b, lk, hkv, d] -> [b, lq, h, d]
        assert not causal
        rep = q.shape[2] // k.shape[2]
        q_, k_, v_ = (t.transpose(1, 2) for t in (q, k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)))
        w = torch.softmax((q_ @ k_.transpose(-1, -2)) * softmax_scale, dim=-1)
        return (w @ v_).transpose(1, 2)

    def rms_norm_fn(x, weight, bias=None, eps=1e-6, **_):
        dt = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(dt)

    def unavailable(*a, **k):
        raise RuntimeError("not used by generate.py")

    fa = types.ModuleType("flash_attn")
    fa.flash_attn_func, fa.flash_attn_varlen_func = flash_attn_func, unavailable
    bp = types.ModuleType("flash_attn.bert_padding")
    bp.index_first_axis = bp.pad_input = bp.unpad_input = unavailable
    ops = types.ModuleType("flash_attn.ops")
    tri = types.ModuleType("flash_attn.ops.triton")
    ln = types.ModuleType("flash_attn.ops.triton.layer_norm")
    ln.rms_norm_fn = rms_norm_fn
    for mod in (fa, bp, ops, tri, ln):
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    for name, mod in (("flash_attn", fa), ("flash_attn.bert_padding", bp), ("flash_attn.ops", ops),
                      ("flash_attn.ops.triton", tri), ("flash_attn.ops.triton.layer_norm", ln)):
        sys.modules[name] = mod


def _inert_attr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Inert()


def _install_triton() -> None:
    trit = types.ModuleType("triton")
    trit.__getattr__ = _inert_attr  # type: ignore[attr-defined]
    tl = types.ModuleType("triton.language")
    tl.__getattr__ = _inert_attr  # type: ignore[attr-defined]
    trit.language = tl  # type: ignore[attr-defined]
    for mod in (trit, tl):
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    sys.modules["triton"], sys.modules["triton.language"] = trit, tl


def _load(reference: str):
    """The published files as a package ``sdar_ref`` (modeling_sdar uses relative imports) and generate.py."""
    spec = importlib.util.spec_from_file_location("sdar_ref", f"{reference}/configuration_sdar.py",
                                                  submodule_search_locations=[reference])
    pkg = types.ModuleType("sdar_ref")
    pkg.__path__ = [reference]  # type: ignore[attr-defined]
    pkg.__spec__ = spec
    sys.modules["sdar_ref"] = pkg
    # The training-loss module imports triton at the top; give it the inert stand-in for its import only (torch
    # itself must keep seeing no triton on a CPU machine).
    import torch._dynamo  # noqa: F401 - loaded first, while torch still sees no triton
    import torch._inductor.utils  # noqa: F401
    import torch.distributed.tensor  # noqa: F401

    _install_triton()
    try:
        importlib.import_module("sdar_ref.fused_linear_diffusion_cross_entropy")
    finally:
        sys.modules.pop("triton", None)
        sys.modules.pop("triton.language", None)
    modeling = importlib.import_module("sdar_ref.modeling_sdar")
    gen_spec = importlib.util.spec_from_file_location("sdar_generate", f"{reference}/generate.py")
    generate = importlib.util.module_from_spec(gen_spec)
    gen_spec.loader.exec_module(generate)
    return modeling, generate


def greedy(logits, temperature=1.0, top_k=0, top_p=1.0):
    """What temperature 0 intends: argmax, with the probability of that token under softmax(logits)."""
    probs = F.softmax(logits.float(), dim=-1)
    p, tok = probs.max(dim=-1)
    return tok, p


def main() -> None:
    job = json.load(sys.stdin)
    import transformers  # first: its availability checks must see this machine as it is

    if job.get("probe") == "no-flash-attn":  # the published module on a machine without flash-attn
        try:
            _load(job["reference"])
        except ImportError as e:
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
            return
        print(json.dumps({"error": None}))
        return
    _install_stand_ins()
    modeling, generate = _load(job["reference"])
    if job.get("probe") == "temperature-0":  # the published sampler at temperature 0
        torch.manual_seed(0)
        try:
            tok, p = generate.sample_with_temperature_topk_topp(torch.randn(2, 4, 16), temperature=0.0)
            print(json.dumps({"error": None, "nan": bool(torch.isnan(p).any())}))
        except Exception as e:  # noqa: BLE001 - the point is which error the published code raises
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return
    if job.get("greedy", True):
        generate.sample_with_temperature_topk_topp = greedy
    torch.manual_seed(0)
    model = modeling.SDARForCausalLM.from_pretrained(job["folder"], torch_dtype=torch.float32).eval()
    out, intact, overwrote = [], [], []
    calls: list[tuple[int, list[int]]] = []  # (first position, input ids) of every forward: observation only

    def record(mod, args, kw):
        ids = args[0] if args else kw.get("input_ids")
        calls.append((int(kw["position_ids"][0, 0]), ids[0].tolist()))

    model.register_forward_pre_hook(record, with_kwargs=True)
    seconds = []
    for c in job["cases"]:
        ids = torch.tensor([c["prompt"]], dtype=torch.long)
        calls.clear()
        t0 = time.perf_counter()
        x = generate.block_diffusion_generate(
            model, {"input_ids": ids}, c["mask_id"], gen_length=c["gen_length"], block_length=c["block_length"],
            denoising_steps=c["steps"], temperature=0.0 if job.get("greedy", True) else 1.0,
            remasking_strategy=c["strategy"], confidence_threshold=c.get("threshold") or 0.85,
            stopping_criteria_idx=[c["eos_id"]])
        seconds.append(time.perf_counter() - t0)
        row = x[0].tolist()
        intact.append(row[: len(c["prompt"])] == c["prompt"])
        # Did a step write over a position that was no longer a mask (its top-k reaching past the masks)?
        over = False
        for (p0, a), (p1, b) in zip(calls, calls[1:], strict=False):
            if p0 == p1 and len(a) == len(b):
                over |= any(u != c["mask_id"] and u != v for u, v in zip(a, b, strict=True))
        overwrote.append(over)
        gen = row[len(c["prompt"]):]
        for stop in (c["eos_id"], c["mask_id"]):
            if stop in gen:
                gen = gen[: gen.index(stop)]
        out.append(gen)
    print(json.dumps({"transformers": transformers.__version__, "tokens": out, "prompt_intact": intact,
                      "overwrote": overwrote, "seconds": seconds}))


if __name__ == "__main__":
    main()
