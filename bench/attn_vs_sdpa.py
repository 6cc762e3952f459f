#!/usr/bin/env python3
"""Side by side on one GPU, in one run: PyTorch SDPA (torch.nn.functional.scaled_dot_product_attention)
with the flash and the cuDNN backends (torch.nn.attention.sdpa_kernel) on the shapes of
`gla bench attn --device cuda`, whose JSON this reads; prints one table (ours, flash, cuDNN, in ms
and TFLOP/s or GB/s, and ours / backend ratios) and writes everything as JSON.

Usage (from bench/attn_vs_sdpa.sh): python3 bench/attn_vs_sdpa.py --gla-json GLA.json --out OUT.json
Layout: q, k, v, do ~ randn bf16 in our [B, T, H, D] layout, handed to SDPA as transposed views
[B, H, T, D] (no copy, as flash-attention's own layout); causal as in the JSON (is_causal);
H_KV < H through enable_gqa. Decode rows: one query token per sequence against a [N, ctx, H_KV, D]
cache, no mask (the token sees the whole cache). FLOPs and bytes are counted as in gla's JSON:
causal forward 4 B H T^2 D / 2, forward+backward 3.5x the forward; decode bytes = the cache read.
gla times its forward on each tile it has (flash-4x32, flash-8x32, ...): the table
compares the fastest (its kernel is named).
Timing: CUDA events, median of 20 runs after 5 warm-up runs. A backend that refuses a shape is
recorded as the row's error, not skipped silently.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def timed(fn, reps=20, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        z.record()
        z.synchronize()
        ts.append(a.elapsed_time(z))
    ts.sort()
    return ts[len(ts) // 2]


def sdpa_train(backend, B, T, H, HKV, D, DV, causal):
    dev, bf = "cuda", torch.bfloat16
    q = torch.randn(B, T, H, D, device=dev, dtype=bf, requires_grad=True)
    k = torch.randn(B, T, HKV, D, device=dev, dtype=bf, requires_grad=True)
    v = torch.randn(B, T, HKV, DV, device=dev, dtype=bf, requires_grad=True)
    do = torch.randn(B, H, T, DV, device=dev, dtype=bf).transpose(1, 2).contiguous().transpose(1, 2)
    gqa = {"enable_gqa": True} if HKV != H else {}

    def fwd():
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, **gqa)

    def fwdbwd():
        fwd().backward(do)
        q.grad = k.grad = v.grad = None

    with sdpa_kernel([BACKENDS[backend]]):
        with torch.no_grad():
            f = timed(fwd)
        fb = timed(fwdbwd)
    return f, fb


def sdpa_decode(backend, N, ctx, H, HKV, D, DV):
    dev, bf = "cuda", torch.bfloat16
    q = torch.randn(N, 1, H, D, device=dev, dtype=bf)
    k = torch.randn(N, ctx, HKV, D, device=dev, dtype=bf)
    v = torch.randn(N, ctx, HKV, DV, device=dev, dtype=bf)
    gqa = {"enable_gqa": True} if HKV != H else {}

    def step():
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **gqa)

    with sdpa_kernel([BACKENDS[backend]]), torch.no_grad():
        return timed(step)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gla-json", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    g = json.load(open(a.gla_json))
    causal = g.get("causal", True)
    h_kv = g.get("h_kv")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}")
    rows = []
    train = {}
    for r in g["results"]:
        s = r["shape"]
        if r["pass"] in ("fwd", "fwd+bwd"):
            # gla times the forward on each warp split of its tile: compare the fastest
            best = train.setdefault(tuple(s), {})
            if r["pass"] not in best or r["ms"] < best[r["pass"]]["ms"]:
                best[r["pass"]] = r
    for s, ours in train.items():
        B, T, H, D, DV = s
        HKV = h_kv or H
        for be in BACKENDS:
            t0 = time.time()
            try:
                f, fb = sdpa_train(be, B, T, H, HKV, D, DV, causal)
                err = None
            except Exception as e:  # a backend refusing a shape is a result
                f = fb = None
                err = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            torch.cuda.empty_cache()
            for p, ms in (("fwd", f), ("fwd+bwd", fb)):
                o = ours.get(p)
                if o is None:
                    continue
                fl = o["tflops"] * o["ms"] * 1e9
                rows.append({"shape": list(s), "pass": p, "backend": be, "ours_ms": o["ms"], "ours_kernel": o["kernel"], "ms": ms,
                             "tflops": fl / ms / 1e9 if ms else None, "ours_tflops": o["tflops"], "error": err})
            print(f"  {be} {s} done in {time.time() - t0:.1f}s" + (f" ({err})" if err else ""))
    for r in g["results"]:
        if r["pass"] != "decode":
            continue
        N, ctx, H, D, DV = r["shape"]
        HKV = h_kv or H
        by = 2 * N * ctx * HKV * (D + DV)
        for be in BACKENDS:
            try:
                ms, err = sdpa_decode(be, N, ctx, H, HKV, D, DV), None
            except Exception as e:
                ms, err = None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            torch.cuda.empty_cache()
            rows.append({"shape": r["shape"], "pass": "decode", "backend": be, "ours_ms": r["ms"], "ours_kernel": r["kernel"], "ms": ms,
                         "gbs": by / ms / 1e6 if ms else None, "ours_gbs": r["gbs"], "error": err})
    # one table: per shape and pass, ours then each backend
    print()
    print(f"{'shape BxTxHxDxDV':<22} {'pass':<8} {'ours kernel':<12} {'ours ms':>9} {'flash ms':>9} {'cudnn ms':>9} {'ours/flash':>10} {'ours/cudnn':>10} "
          f"{'ours':>8} {'flash':>8} {'cudnn':>8}  (TFLOP/s, or GB/s for decode)")
    keys = []
    for r in rows:
        k = (tuple(r["shape"]), r["pass"])
        if k not in keys:
            keys.append(k)
    for s, p in keys:
        by = {r["backend"]: r for r in rows if tuple(r["shape"]) == s and r["pass"] == p}
        any_r = next(iter(by.values()))
        ours = any_r["ours_ms"]
        rate = "gbs" if p == "decode" else "tflops"
        cell = lambda be, f: (f"{by[be][f]:.3f}" if by.get(be) and by[be].get(f) is not None else "err")
        ratio = lambda be: (f"{ours / by[be]['ms']:.2f}" if by.get(be) and by[be]["ms"] else "-")
        r_ours = any_r["ours_" + rate]
        r_be = lambda be: (f"{by[be][rate]:.0f}" if by.get(be) and by[be].get(rate) else "err")
        print(f"{'x'.join(map(str, s)):<22} {p:<8} {any_r['ours_kernel']:<12} {ours:>9.3f} {cell('flash', 'ms'):>9} {cell('cudnn', 'ms'):>9} {ratio('flash'):>10} "
              f"{ratio('cudnn'):>10} {r_ours:>8.0f} {r_be('flash'):>8} {r_be('cudnn'):>8}")
    for r in rows:
        if r["error"]:
            print(f"error: {r['backend']} {r['shape']} {r['pass']}: {r['error']}")
    json.dump({"gla": g, "torch": torch.__version__, "device": torch.cuda.get_device_name(), "rows": rows}, open(a.out, "w"), indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
