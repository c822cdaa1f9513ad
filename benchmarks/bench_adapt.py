"""LoRA adapters: a training step against a full fine-tuning step, and decoding with the adapter merged or not.

    python benchmarks/bench_adapt.py --repeats 10

On the built-in model (CPU, one thread): (1) one block-diffusion training step (forward + backward + AdamW) of
the LoRA adapter that ``remask train adapt`` trains (r 16 on every projection) against the same step updating
every weight (the baseline: what the BD/SFT stages do); (2) decoding 32 tokens (one per step, EOS ignored: the
same work in each row) with the base model (the baseline), the adapter merged at load (the default) and kept
unmerged. Medians of ``--repeats`` runs after one warm-up, all in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from peft import LoraConfig, get_peft_model

    from model.adapter import base_fingerprint, save_adapter, target_modules_for
    from model.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint
    from model.network import remask_config
    from training.objectives import BD3Masks, bd_loss, bd_noise
    from training.trainer import noise_draws

    g = torch.Generator().manual_seed(0)

    def step_fn(net, params):
        mc = remask_config(net)
        opt = torch.optim.AdamW(params, lr=1e-4)
        masks = BD3Masks(mc.block_size, False, torch.device("cpu"))
        x0 = torch.randint(10, mc.vocab_size, (a.batch, a.seq_len), generator=g)
        draws = noise_draws(0, 1, 0, range(a.batch), a.seq_len, mc.block_size)

        def step():
            noise = bd_noise(x0, mc.block_size, mc.mask_token_id, 1.0, True, draws)
            loss, _ = bd_loss(net, x0, noise, masks, mc.mask_token_id)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    full, _ = load_checkpoint(DEFAULT_MODEL_DIR, dtype=torch.float32)
    full.train()
    t_full = _median(step_fn(full, list(full.parameters())), a.repeats)
    n_full = sum(p.numel() for p in full.parameters())

    base, _ = load_checkpoint(DEFAULT_MODEL_DIR, dtype=torch.float32)
    fp = base_fingerprint(base)
    torch.manual_seed(0)
    peft = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=target_modules_for(base),
                                           init_lora_weights=False))
    net = peft.base_model.model
    net.train()
    trainable = [p for p in peft.parameters() if p.requires_grad]
    t_lora = _median(step_fn(net, trainable), a.repeats)
    n_lora = sum(p.numel() for p in trainable)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        peft.eval()
        save_adapter(peft, tmp, {"base": {"path": str(DEFAULT_MODEL_DIR), "fingerprint": fp}}, "# bench\n")
        from model.checkpoint import resolve_model
        from model.decoder import DecodeConfig, generate

        # The same work in every row: 32 tokens, one per step (fixed schedule), EOS ignored.
        dc = DecodeConfig(max_new_tokens=32, threshold=None, steps_per_block=None, stop_at_eos=False)
        fills = {}
        for name, kw in (("base model (baseline)", {}), ("adapter merged at load (default)", {"adapter": tmp}),
                         ("adapter unmerged (--adapter-unmerged)", {"adapter": tmp, "merge_adapter": False})):
            m, tok, _ = resolve_model("default", **kw)
            prompt = tok.encode("def mean(xs):\n    return ")
            with torch.inference_mode():
                fills[name] = _median(lambda m=m, prompt=prompt: generate(m, [prompt], dc), a.repeats)
    tokens = a.batch * a.seq_len
    print(f"| training step (BD, {a.batch} x {a.seq_len} tokens) | trainable parameters | ms per step | tokens/s "
          "| / baseline |\n|---|---:|---:|---:|---:|")
    for name, n, t in (("full fine-tuning (baseline)", n_full, t_full), ("LoRA r=16, every projection", n_lora,
                                                                           t_lora)):
        print(f"| {name} | {n:,} | {1000 * t:.0f} | {tokens / t:,.0f} | {t / t_full:.2f}x |")
    base_t = fills["base model (baseline)"]
    print("\n| decode 32 tokens (one per step) | ms | / baseline |\n|---|---:|---:|")
    for name, t in fills.items():
        print(f"| {name} | {1000 * t:.0f} | {t / base_t:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
