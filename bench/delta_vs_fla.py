#!/usr/bin/env python3
"""Side by side on one GPU, in one run: fla's chunk_delta_rule and chunk_gated_delta_rule (Triton,
fla 0.6.0) on the shapes of `gla bench delta --device cuda`, whose JSON this reads; prints one
table with ratios and writes everything as JSON.

Usage (from bench/delta_vs_fla.sh): python3 bench/delta_vs_fla.py --gla-json GLA.json --out OUT.json
       [--gla-one-json ONE.json]   (the same shapes under GLA_DELTA_PRECISION=bf16: a second gla
       column at fla's storage precision)
       python3 bench/delta_vs_fla.py --fla-only --out OUT.json   (fla alone on the shapes below)
       python3 bench/delta_vs_fla.py --profile B,T,H,K,V --ops delta --out OUT.json   (fla's kernels
       one by one: torch.profiler over 5 forward+backward calls, each kernel's mean CUDA time per
       call, to set beside `gla bench delta --stages`)
Timing: triton.testing.do_bench (CUDA events), median, warmup 25 ms, rep 100 ms, after 3 untimed
calls per op and shape (fla autotunes in those). Inputs as fla's delta-rule docs and tests draw
them: q, v, do ~ randn bf16, k = L2-normalised randn, beta = sigmoid(rand), g = logsigmoid(randn)
for the gated rule; the op's plain options (no L2 norm, sigmoid or gate inside the op).
fla refuses the gated chunked backward on Hopper with Triton < 3.7.1 (fla #640): that refusal is
recorded as the row's error, not skipped silently. Stopped by SIGTERM (bench/delta_vs_fla.sh's
FLA_TIMEOUT), it prints the table and writes the JSON of the shapes finished so far.
"""
import argparse
import json
import signal
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

# the shapes of record (B*T = 65536, H = 16, K = V = 128) and fla's README shapes
SHAPES = [[65536 // t, t, 16, 128, 128] for t in (2048, 8192, 32768)] + [
    [8, 2048, 32, 256, 256], [4, 4096, 64, 128, 128], [8, 1024, 8, 64, 64],
    [1, 8192, 96, 128, 128], [2, 16384, 16, 128, 128], [4, 2048, 16, 128, 128]]


def bench(fn):
    return float(do_bench(fn, warmup=25, rep=100, quantiles=[0.5]))


def fla_inputs(op, B, T, H, K, V):
    """the op's inputs as fla's docs and tests draw them (module docstring), and its two passes:
    call (forward) and fwdbwd (forward, then backward of do)"""
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    dev, bf = "cuda", torch.bfloat16
    q = torch.randn(B, T, H, K, device=dev, dtype=bf, requires_grad=True)
    k = F.normalize(torch.randn(B, T, H, K, device=dev, dtype=torch.float32), p=2, dim=-1).to(bf).requires_grad_(True)
    v = torch.randn(B, T, H, V, device=dev, dtype=bf, requires_grad=True)
    beta = torch.rand(B, T, H, device=dev, dtype=torch.float32).sigmoid().to(bf).requires_grad_(True)
    g = F.logsigmoid(torch.randn(B, T, H, device=dev, dtype=torch.float32)).requires_grad_(True)
    do = torch.randn(B, T, H, V, device=dev, dtype=bf)
    if op == "delta":
        call = lambda: chunk_delta_rule(q, k, v, beta)[0]
    else:
        call = lambda: chunk_gated_delta_rule(q, k, v, g, beta)[0]

    def fwdbwd():
        call().backward(do)
        q.grad = k.grad = v.grad = beta.grad = g.grad = None

    return call, fwdbwd


def fla_times(op, B, T, H, K, V):
    call, fwdbwd = fla_inputs(op, B, T, H, K, V)
    with torch.no_grad():
        for _ in range(3):
            call()
        torch.cuda.synchronize()
        f = bench(call)
    try:
        for _ in range(3):
            fwdbwd()
        torch.cuda.synchronize()
        fb, err = bench(fwdbwd), None
    except Exception as e:  # fla #640: the gated backward refuses on Hopper with this Triton
        fb, err = None, f"{type(e).__name__}: {e}"[:300]
    return f, fb, err


def fla_profile(op, shape, out):
    """fla's kernels of one forward+backward, by mean CUDA time per call (torch.profiler over 5
    calls after 3 untimed ones), largest first; written to out as JSON and printed"""
    from torch.profiler import ProfilerActivity, profile
    B, T, H, K, V = shape
    _, fwdbwd = fla_inputs(op, B, T, H, K, V)
    for _ in range(3):
        fwdbwd()
    torch.cuda.synchronize()
    n = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fwdbwd()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = e.cuda_time_total
        if t > 0:
            rows.append({"kernel": e.key, "calls_per_iter": e.count / n, "ms_per_iter": t / n / 1000.0})
    rows.sort(key=lambda r: -r["ms_per_iter"])
    total = sum(r["ms_per_iter"] for r in rows)
    print(f"fla {op} {'x'.join(map(str, shape))}: {total:.3f} ms of kernels per forward+backward")
    for r in rows[:25]:
        print(f"  {r['kernel'][:60]:<60} {r['calls_per_iter']:5.1f} {r['ms_per_iter']:8.3f} ms {100 * r['ms_per_iter'] / total:5.1f}%")
    json.dump({"device": torch.cuda.get_device_name(), "op": op, "shape": shape, "total_ms": total, "kernels": rows},
              open(out, "w"), indent=1)


def gla_results(path):
    """`gla bench delta --json` output at `path`: the JSON and its results by ((op, shape), pass)."""
    gla = json.load(open(path))
    return gla, {((r["op"], tuple(r["shape"])), r["pass"]): r for r in gla["results"]}


def table_of(rows):
    """The side-by-side table of `rows` (main's); the one-plane columns where rows carry them."""
    one = any(f"gla_one_{p}_ms" in row for row in rows for p in ("fwd", "fwdbwd"))
    hdr = f"{'op':<6} {'shape BxTxHxKxV':<20} {'pass':<8} {'gla ms':>8} {'fla ms':>8} {'fla/gla':>8}"
    if one:
        hdr += f" {'gla 1-plane':>12} {'fla/1-plane':>12}"
    lines = [hdr]
    f = lambda v, w=8: f"{v:{w}.3f}" if v is not None else f"{'-':>{w}}"
    r = lambda x, g, w=8: f"{x / g:{w - 1}.2f}x" if (x is not None and g) else f"{'-':>{w}}"
    for row in rows:
        shp = "x".join(str(x) for x in row["shape"])
        for p in ("fwd", "fwdbwd"):
            g = row.get(f"gla_{p}_ms")
            x = row.get("fla", {}).get(f"{p}_ms")
            line = f"{row['op']:<6} {shp:<20} {p:<8} {f(g)} {f(x)} {r(x, g)}"
            if one:
                o = row.get(f"gla_one_{p}_ms")
                line += f" {f(o, 12)} {r(x, o, 12)}"
            lines.append(line)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gla-json", help="gla bench delta --json output (its shapes and ops are the ones timed)")
    ap.add_argument("--gla-one-json", help="the same under GLA_DELTA_PRECISION=bf16 (one bf16 plane): a second gla column")
    ap.add_argument("--fla-only", action="store_true", help="fla alone on the shapes of record and README shapes")
    ap.add_argument("--ops", default="delta,gdn")
    ap.add_argument("--profile", help="B,T,H,K,V: fla's kernels one by one at this shape (first op of --ops)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.profile:
        fla_profile(a.ops.split(",")[0], [int(x) for x in a.profile.split(",")], a.out)
        return
    ours, one = {}, {}
    todo = []
    if a.gla_json:
        gla, ours = gla_results(a.gla_json)
        for (key, _) in ours:
            if key not in todo:
                todo.append(key)
    else:
        gla = None
        todo = [(op, tuple(s)) for op in a.ops.split(",") for s in SHAPES]
    gla_one = None
    if a.gla_one_json:
        gla_one, one = gla_results(a.gla_one_json)

    # a SIGTERM (the caller's timeout) ends the loop below; the table and JSON then hold the rows so far
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    rows = []
    stopped = False
    try:
        for (op, (B, T, H, K, V)) in todo:
            t0 = time.time()
            row = {"op": op, "shape": [B, T, H, K, V]}
            try:
                f, fb, err = fla_times(op, B, T, H, K, V)
                row["fla"] = {"fwd_ms": f, "fwdbwd_ms": fb, "fwdbwd_error": err}
            except Exception as e:
                row["fla"] = {"error": f"{type(e).__name__}: {e}"[:300]}
            for p, tag in (("fwd", "fwd"), ("fwd+bwd", "fwdbwd")):
                r = ours.get(((op, (B, T, H, K, V)), p))
                row[f"gla_{tag}_ms"] = r["ms"] if r else None
                if gla_one is not None:
                    r = one.get(((op, (B, T, H, K, V)), p))
                    row[f"gla_one_{tag}_ms"] = r["ms"] if r else None
            rows.append(row)
            print(f"  {op} {B}x{T}x{H}x{K}x{V}: {row['fla']} ({time.time() - t0:.0f} s)", flush=True)
            torch.cuda.empty_cache()
            json.dump({"partial": True, "gla": gla, "gla_one": gla_one, "rows": rows}, open(a.out, "w"), indent=1)
    except KeyboardInterrupt:
        stopped = True
        print(f"stopped after {len(rows)} of {len(todo)} shapes", flush=True)

    table = table_of(rows)
    print(table)
    out = {"unix_time": int(time.time()), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "gla": gla, "gla_one": gla_one, "rows": rows, "table": table, "partial": stopped,
           "note": "ratio = fla ms / gla ms (above 1: gla faster); triton do_bench median"
                   + ("; gla_one: GLA_DELTA_PRECISION=bf16" if gla_one is not None else "")}
    try:
        import fla
        out["fla_version"] = fla.__version__
    except Exception:
        pass
    json.dump(out, open(a.out, "w"), indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
