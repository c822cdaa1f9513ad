"""Run Stable-DiffCoder's published ``generate_block`` on a folder, for the parity tests.

Runs in a subprocess whose ``sys.path`` starts with the transformers version the reference targets (5.3.0)
and the published ``modeling_stable_diffcoder.py`` from ../shared/reference/stable-diffcoder/ (loaded from
there, never copied). Reads {"reference": DIR, "folder": DIR, "cases": [...]} as JSON on stdin and prints
one JSON list: the generated token ids of each case (the canvas after the prompt, cut at the first EOS).
"""

from __future__ import annotations

import json
import sys

import torch


def main() -> None:
    job = json.load(sys.stdin)
    sys.path.insert(0, job["reference"])
    import transformers
    from modeling_stable_diffcoder import StableDiffcoderForCausalLM

    torch.manual_seed(0)
    model = StableDiffcoderForCausalLM.from_pretrained(job["folder"], dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    out = []
    for c in job["cases"]:
        ids = torch.tensor([c["prompt"]], dtype=torch.long)
        x, _nfe = model.generate_block(ids, steps=c["steps"], gen_length=c["gen_length"],
                                       block_length=c["block_length"], temperature=0.0, mask_id=c["mask_id"],
                                       threshold=c["threshold"], eos_id=c["eos_id"])
        gen = x[0, ids.shape[1]:].tolist()
        if c["eos_id"] in gen:
            gen = gen[: gen.index(c["eos_id"])]
        out.append(gen)
    print(json.dumps({"transformers": transformers.__version__, "tokens": out}))


if __name__ == "__main__":
    main()
