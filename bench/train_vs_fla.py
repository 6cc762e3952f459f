"""Training throughput of fla's GLAForCausalLM on the setup of `gla bench train` (random tokens,
fla's gla_340M config by default, batch 8 x 2048, AdamW lr 3e-4 betas (0.9, 0.95) wd 0.1,
clip 1.0, bf16 autocast over f32 master weights: fla's benchmarks/benchmark_training_throughput.py
without accelerate). Prints one table row and writes JSON.

Run on the GPU machine (bench/train_vs_fla.sh does all of it, side by side with `gla bench train`):
  PYTHONPATH=/tmp/site python3 bench/train_vs_fla.py --out train_fla.json
"""

import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--config", default=None, help="GLAConfig keys as JSON (default: gla_340M)")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--autotune", choices=["full", "first"], default="full",
                    help="first: every Triton autotuner keeps only its first config (fla's kernels "
                         "compile in ~1 min instead of >10; fla then runs untuned, so its number is "
                         "a lower bound)")
    a = ap.parse_args()
    if a.autotune == "first":
        from triton.runtime.autotuner import Autotuner

        orig = Autotuner.prune_configs
        Autotuner.prune_configs = lambda self, kwargs: orig(self, kwargs)[:1]

    from fla.models import GLAConfig, GLAForCausalLM

    cfg = dict(hidden_size=1024, num_hidden_layers=24, num_heads=4, tie_word_embeddings=True, vocab_size=32000)
    if a.config:
        cfg.update(json.loads(a.config))
    torch.manual_seed(0)
    model = GLAForCausalLM(GLAConfig(**cfg)).cuda()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    g = torch.Generator(device="cuda").manual_seed(1)
    vocab = model.config.vocab_size

    def step():
        ids = torch.randint(0, vocab, (a.batch, a.seq_len), device="cuda", generator=g)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t = time.time()
    first = step().item()
    for _ in range(a.warmup - 1):
        step()
    torch.cuda.synchronize()
    print(f"fla warm-up (compile + autotune) {time.time() - t:.1f} s", flush=True)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    for _ in range(a.steps):
        last = step()
    last = last.item()
    torch.cuda.synchronize()
    secs = time.time() - t0
    tps = a.batch * a.seq_len * a.steps / secs
    # the same FLOP count as `gla bench train`: 6 x matmul parameters + the GLA op's chunk FLOPs
    d = model.config.hidden_size
    emb = model.model.embeddings.weight.numel()
    mat = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2) - (emb if not cfg["tie_word_embeddings"] else 0)
    h = model.config.num_heads
    k = int(d * model.config.expand_k) // h
    v = int(d * model.config.expand_v) // h
    T = a.seq_len
    fwd = bwd = 0.0
    for c in range((T + 63) // 64):
        m = min(64, T - c * 64)
        fwd += 4 * m * k * v + m * m * (k + v)
        bwd += 10 * m * k * v + m * m * (3 * k + 2 * v)
    fpt = 6 * mat + model.config.num_hidden_layers * h * (fwd + bwd) / T
    r = dict(
        device=torch.cuda.get_device_name(),
        who="fla",
        autotune=a.autotune,
        params=params,
        batch=a.batch,
        seq_len=a.seq_len,
        steps=a.steps,
        ms_per_step=secs * 1e3 / a.steps,
        tokens_per_s=tps,
        flops_per_token=fpt,
        mfu=tps * fpt / (a.peak_tflops * 1e12),
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
        first_loss=first,
        last_loss=last,
    )
    print(f"{'fla ' + r['device']:<28} {params / 1e6:>9.1f}M {a.batch:>6} {T:>6} {r['ms_per_step']:>10.1f} {tps:>12.0f} {100 * r['mfu']:>6.1f}% {r['peak_mem_gib']:>9.2f} {first:>4.2f}->{last:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
