#!/usr/bin/env python3
"""ViG's bidirectional GLA scan the way ViG runs it on fla (hustvl/ViG classification/models/
vig.py, training branch): q, k, v stacked with their time-reversed copies along the batch, the
gates as cat([gf, flip(gb)]), ONE fla chunk_gla call on the 2B batch, then o = (o_f + flip(o_b)) / 2
(the flips, cats and the combine are timed: they are ViG's cost), on the shapes of
`gla bench bidir --json`, whose JSON this reads; prints one table with our fused forward, our
composed path and fla, and writes everything as JSON.

Usage (from bench/bidir_vs_fla.sh): python3 bench/bidir_vs_fla.py --gla-json GLA.json --out OUT.json
Timing: triton.testing.do_bench (CUDA events), median, warmup 25 ms, rep 100 ms, after 3 untimed
calls per shape (fla autotunes in those). Inputs bf16: q, k, v, do ~ randn, gates
logsigmoid(randn) / 16 (ViG's gate_logit_normalizer), scale K^-1/2.
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
    dev, bf = "cuda", torch.bfloat16
    q = torch.randn(B, T, H, K, device=dev, dtype=bf, requires_grad=True)
    k = torch.randn(B, T, H, K, device=dev, dtype=bf, requires_grad=True)
    v = torch.randn(B, T, H, V, device=dev, dtype=bf, requires_grad=True)
    gf = (F.logsigmoid(torch.randn(B, T, H, K, device=dev)) / 16).to(bf).requires_grad_(True)
    gb = (F.logsigmoid(torch.randn(B, T, H, K, device=dev)) / 16).to(bf).requires_grad_(True)
    do = torch.randn(B, T, H, V, device=dev, dtype=bf)

    def call():
        cat = lambda x: torch.cat([x, x.flip(1)], dim=0)
        o = chunk_gla(cat(q), cat(k), cat(v), torch.cat([gf, gb.flip(1)], dim=0), scale=K ** -0.5)[0]
        o_f, o_b = o.chunk(2)
        return (o_f + o_b.flip(1)) / 2

    def fwdbwd():
        call().backward(do)
        q.grad = k.grad = v.grad = gf.grad = gb.grad = None

    with torch.no_grad():
        for _ in range(3):
            call()
        torch.cuda.synchronize()
        f = bench(call)
    for _ in range(3):
        fwdbwd()
    torch.cuda.synchronize()
    return f, bench(fwdbwd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gla-json", required=True, help="gla bench bidir --json output (its shapes are the ones timed)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    gla = json.load(open(a.gla_json))
    ours, todo = {}, []
    for r in gla["results"]:
        s = tuple(r["shape"])
        if s not in todo:
            todo.append(s)
        ours[(s, r["pass"], r["kernel"])] = r["ms"]
    rows = []
    for (B, T, H, K, V) in todo:
        t0 = time.time()
        row = {"shape": [B, T, H, K, V]}
        try:
            f, fb = fla_times(B, T, H, K, V)
            row["fla"] = {"fwd_ms": f, "fwdbwd_ms": fb}
        except Exception as e:
            row["fla"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        for p, tag in (("fwd", "fwd"), ("fwd+bwd", "fwdbwd")):
            for kern in ("bidir-fused", "gla-x2"):
                row[f"{kern}_{tag}_ms"] = ours.get(((B, T, H, K, V), p, kern))
        rows.append(row)
        print(f"  {B}x{T}x{H}x{K}x{V}: {row['fla']} ({time.time() - t0:.0f} s)", flush=True)
        torch.cuda.empty_cache()
        json.dump({"partial": True, "gla": gla, "rows": rows}, open(a.out, "w"), indent=1)
    f = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"
    lines = [f"{'shape BxTxHxKxV':<20} {'pass':<7} {'fused ms':>9} {'gla-x2':>9} {'fla ms':>9} {'fla/fused':>9} {'x2/fused':>9}"]
    for row in rows:
        shp = "x".join(str(x) for x in row["shape"])
        for p in ("fwd", "fwdbwd"):
            g, c, x = row.get(f"bidir-fused_{p}_ms"), row.get(f"gla-x2_{p}_ms"), row.get("fla", {}).get(f"{p}_ms")
            r1 = f"{x / g:8.2f}x" if (x and g) else f"{'-':>9}"
            r2 = f"{c / g:8.2f}x" if (c and g) else f"{'-':>9}"
            lines.append(f"{shp:<20} {p:<7} {f(g)} {f(c)} {f(x)} {r1} {r2}")
    table = "\n".join(lines)
    print(table)
    out = {"unix_time": int(time.time()), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "gla": gla, "rows": rows, "table": table,
           "note": "fla = chunk_gla on the stacked [x; flip x] batch with ViG's flips and combine; ratios over our fused path (above 1: ours faster)"}
    try:
        import fla
        out["fla_version"] = fla.__version__
    except Exception:
        pass
    json.dump(out, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
