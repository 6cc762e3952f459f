#!/usr/bin/env python3
"""Side by side on one GPU, in one run: fla's chunk_gla (Triton) and PyTorch SDPA (flash and cuDNN
backends, causal) on the shapes of `gla bench ops --device cuda`, whose JSON this reads; prints one
table with ratios and writes everything as JSON.

Usage (from bench/gla_vs_fla.sh): python3 bench/gla_vs_fla.py --gla-json GLA.json --out OUT.json
Timing: triton.testing.do_bench (CUDA events), median, warmup 25 ms, rep 100 ms, after 3 untimed
fwd+bwd calls per op and shape (fla autotunes in those). Inputs as in fla's benchmarks/ops
registry: q, k, v, do ~ randn bf16, g = logsigmoid(randn).clamp_min(-5); SDPA takes [B, H, T, D].
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench


def bench(fn):
    return float(do_bench(fn, warmup=25, rep=100, quantiles=[0.5]))


def fla_times(B, T, H, K, V):
    from fla.ops.gla import chunk_gla
    dev = "cuda"
    q = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, H, V, device=dev, dtype=torch.bfloat16, requires_grad=True)
    g = F.logsigmoid(torch.randn(B, T, H, K, device=dev, dtype=torch.float32)).clamp_min(-5).to(torch.bfloat16).requires_grad_(True)
    do = torch.randn(B, T, H, V, device=dev, dtype=torch.bfloat16)

    def fwd():
        return chunk_gla(q, k, v, g)[0]

    def fwdbwd():
        o = chunk_gla(q, k, v, g)[0]
        o.backward(do)
        q.grad = k.grad = v.grad = g.grad = None

    for _ in range(3):
        fwdbwd()
    torch.cuda.synchronize()
    with torch.no_grad():
        f = bench(fwd)
    return f, bench(fwdbwd)


def sdpa_times(B, T, H, D, backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    dev = "cuda"
    q = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16)
    with sdpa_kernel(be):
        def fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def fwdbwd():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o.backward(do)
            q.grad = k.grad = v.grad = None

        for _ in range(3):
            fwdbwd()
        torch.cuda.synchronize()
        with torch.no_grad():
            f = bench(fwd)
        return f, bench(fwdbwd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gla-json", help="gla bench ops --json output (its shapes are the ones timed)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--warm-only", action="store_true",
                    help="only call fla once per shape (fills Triton's on-disk compile cache), print nothing else")
    a = ap.parse_args()
    if a.warm_only:
        # the shapes of record, then fla's README shapes (K = 256 and K = 64 autotune
        # separately): run beside `gla check` in one call to fill the autotuning results
        # (fla_env.sh keeps them), so a later side-by-side call times at once
        shapes0 = [[65536 // t, t, 16, 128, 128] for t in (2048, 8192, 32768)] + [
            [8, 2048, 32, 256, 256], [4, 4096, 64, 128, 128], [8, 1024, 8, 64, 64],
            [1, 8192, 96, 128, 128], [2, 16384, 16, 128, 128], [4, 2048, 16, 128, 128]]
        gla = {"results": [{"shape": s, "pass": "fwd", "ms": None, "kernel": None} for s in shapes0]}
    else:
        gla = json.load(open(a.gla_json))
    shapes = []
    ours = {}
    for r in gla["results"]:
        key = tuple(r["shape"])
        if key not in shapes:
            shapes.append(key)
        ours[(key, r["pass"])] = r
    if a.warm_only:
        from fla.ops.gla import chunk_gla
        for (B, T, H, K, V) in shapes:
            t0 = time.time()
            q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for D in (K, K, V))
            g = F.logsigmoid(torch.randn(B, T, H, K, device="cuda")).clamp_min(-5).to(torch.bfloat16).requires_grad_(True)
            chunk_gla(q, k, v, g)[0].backward(torch.randn_like(v))
            torch.cuda.synchronize()
            print(f"warm {B}x{T}x{H}x{K}x{V}: {time.time() - t0:.0f} s", flush=True)
        return
    rows = []
    for (B, T, H, K, V) in shapes:
        row = {"shape": [B, T, H, K, V]}
        for name, fn in [("fla", lambda: fla_times(B, T, H, K, V)),
                         ("sdpa_flash", lambda: sdpa_times(B, T, H, K, "flash")),
                         ("sdpa_cudnn", lambda: sdpa_times(B, T, H, K, "cudnn"))]:
            t0 = time.time()
            try:
                f, fb = fn()
                row[name] = {"fwd_ms": f, "fwdbwd_ms": fb}
            except Exception as e:  # a backend missing on this card/torch: record, go on
                row[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            print(f"  {name} T={T}: {row[name]} ({time.time() - t0:.0f} s)", flush=True)
        for p in ("fwd", "fwd+bwd"):
            r = ours.get(((B, T, H, K, V), p))
            row["gla_" + ("fwd" if p == "fwd" else "fwdbwd") + "_ms"] = r["ms"] if r else None
            row["gla_" + ("fwd" if p == "fwd" else "fwdbwd") + "_kernel"] = r["kernel"] if r else None
        rows.append(row)
        torch.cuda.empty_cache()
        # every finished shape is on disk at once: a call stopped by its time limit keeps them
        json.dump({"partial": True, "gla": gla, "rows": rows}, open(a.out, "w"), indent=1)

    def ms(row, who, p):
        if who == "gla":
            return row.get(f"gla_{p}_ms")
        return row.get(who, {}).get(f"{p}_ms")

    hdr = f"{'shape BxTxHxKxV':<20} {'pass':<8} {'gla ms':>8} {'fla ms':>8} {'flash ms':>9} {'cuDNN ms':>9} {'fla/gla':>8} {'flash/gla':>10} {'cuDNN/gla':>10}"
    lines = [hdr]
    for row in rows:
        shp = "x".join(str(x) for x in row["shape"])
        for p in ("fwd", "fwdbwd"):
            g = ms(row, "gla", p)
            vals = [ms(row, w, p) for w in ("fla", "sdpa_flash", "sdpa_cudnn")]
            f = lambda x: f"{x:8.3f}" if x is not None else f"{'-':>8}"
            r = lambda x: f"{x / g:9.2f}x" if (x is not None and g) else f"{'-':>10}"
            lines.append(f"{shp:<20} {p:<8} {f(g)} {f(vals[0])} {f(vals[1]):>9} {f(vals[2]):>9} {r(vals[0]):>8} {r(vals[1]):>10} {r(vals[2]):>10}")
    table = "\n".join(lines)
    print(table)
    out = {"unix_time": int(time.time()), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "gla": gla, "rows": rows, "table": table,
           "note": "ratio = other ms / gla ms (above 1: gla faster); fla timed with triton do_bench median"}
    try:
        import fla
        out["fla_version"] = fla.__version__
    except Exception:
        pass
    json.dump(out, open(a.out, "w"), indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
