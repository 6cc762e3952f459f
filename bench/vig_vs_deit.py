#!/usr/bin/env python3
"""ViG-T/S/B in hustvl's PyTorch code (fla's GLA chunk kernel) and DeiT-T/S/B (timm, SDPA):
images/s and peak GPU memory of inference and training at several resolutions, bf16.

Usage (on the GPU machine):

    python3 bench/vig_vs_deit.py --vig PATH_TO_HUSTVL_VIG --json $OUT/vig_torch.json \
        [--models t,s,b] [--sizes 224,512,1024] [--which vig,deit,deit-math]
    python3 bench/vig_vs_deit.py --table $OUT/vig_gla.json $OUT/vig_torch.json [more.json ...]

The companion of `gla bench vig` (our ViG), run by bench/vig_vs_deit.sh in the same call.

What runs:
  * ViG: hustvl's `classification/models/vig.py`, unchanged, with the configs of its
    `configs/vig/vig-{t,s,b}.yaml` (patch embed v2, avgpool, absolute position embedding resized
    for other resolutions). Its training branch stacks [x; flip(x)] along the batch and calls
    `fla.ops.gla.chunk_gla` once on the stacked batch (B, H, T, K layout); here that call goes to
    fla 0.6.0's `chunk_gla` (B, T, H, K layout, so the tensors are transposed on the way in and
    out) with fla 0.6.0's fused RMSNorm and swiglu_linear. The eval branch needs the vendored
    Triton 2.2 kernel `bid_fused_recurrent_gla`, so inference runs the same chunked path under
    `torch.no_grad()` (dropout and drop-path are 0, so the function is the same). The module
    shims (timm's helpers, the vendored fla API names) come from tools/vig_fixtures.py.
  * DeiT: timm's `deit_{tiny,small,base}_patch16_224` built at the resolution (img_size=...),
    attention through `F.scaled_dot_product_attention` (timm's fused_attn).
  * DeiT-math (`--which deit-math`): the same models with timm's fused_attn turned off, so the
    attention is written out (q k^T, softmax, times v) and its T x T matrix is materialised, as in
    the DeiT the ViG paper measured against; it shows the paper's comparison, where `deit` shows
    the one a user of PyTorch's flash kernels gets today.
  * bf16 autocast for both (weights f32, as hustvl and timm train); training is forward, cross
    entropy, backward and an AdamW step (fused=True) per iteration.
  * Timing: CUDA events over --iters iterations after --warmup; peak memory is
    torch.cuda.max_memory_allocated over the timed iterations (weights, optimizer state and
    activations), reset before each configuration.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

VIG = {
    "t": dict(embed_dim=192, num_heads=3, use_out_act=True, use_act_in_conv=True),
    "s": dict(embed_dim=384, num_heads=6, use_out_act=False, use_act_in_conv=False),
    "b": dict(embed_dim=768, num_heads=12, use_out_act=False, use_act_in_conv=False),
}
DEIT = {"t": "deit_tiny_patch16_224", "s": "deit_small_patch16_224", "b": "deit_base_patch16_224"}
# images per iteration: inference, training (per resolution; `gla bench vig`'s defaults)
BATCH = {224: (128, 128), 512: (32, 32), 1024: (8, 8)}


def load_vig(torch, vig_root):
    """hustvl's vig module with fla 0.6.0's kernels behind the vendored names."""
    import fla.modules as real_modules
    import fla.modules.activations as real_act
    from fla.ops.gla import chunk_gla as real_chunk_gla

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))
    import vig_fixtures

    # vig_fixtures' shims replace timm and the vendored fla API; timm itself is imported first
    # for DeiT, so keep it and shim only vig.py's view of it.
    saved = {k: v for k, v in sys.modules.items() if k == "timm" or k.startswith("timm.")}
    glaconfig = vig_fixtures.install_shims(torch)

    def chunk_gla_bhtk(q, k, v, g, scale=-1, initial_state=None, output_final_state=False):
        t = lambda x: x.transpose(1, 2)
        o, s = real_chunk_gla(t(q), t(k), t(v), t(g), scale=None if scale == -1 else scale,
                              initial_state=initial_state, output_final_state=output_final_state)
        return t(o), s

    sys.modules["fla.ops.gla"].chunk_gla = chunk_gla_bhtk
    sys.modules["fla.ops.gla"].fused_chunk_gla = chunk_gla_bhtk
    sys.modules["fla.modules"].RMSNorm = real_modules.RMSNorm
    sys.modules["fla.modules.activations"].swiglu_linear = real_act.swiglu_linear
    sys.modules["fla.modules.activations"].swiglu = real_act.swiglu

    path = os.path.join(vig_root, "classification", "models", "vig.py")
    spec = importlib.util.spec_from_file_location("hustvl_vig", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for k in [k for k in sys.modules if k == "timm" or k.startswith("timm.")]:
        del sys.modules[k]
    sys.modules.update(saved)
    glaconfig.intermediate_size_override = None
    return mod


def build_vig(mod, size, hw):
    kw = dict(
        img_size=hw, patch_size=16, stride=16, depth=12, channels=3, num_classes=1000,
        if_cls_token=False, use_middle_cls_token=False, classification_mode="avgpool",
        if_abs_pos_embed=True, if_rc_pe=False, drop_rate=0.0, attn_model="chunk",
        hidden_act="swish", use_out_gate=False, use_lower_bound=False, use_msg=False,
        use_swiglu=True, rope_mode="none", expand_k=0.5, expand_v=1.0, use_dirpe=False,
        scan_mode="default", patch_embed_version="v2", use_bias_in_patch=True,
        use_act_in_patch=False, use_bias_in_dwconv=False, init_values=None, drop_path_rate=0.0,
    )
    kw.update(VIG[size])
    return mod.ViG(**kw)


def bench_one(torch, model, hw, batch, train, warmup, iters):
    dev = torch.device("cuda")
    model = model.to(dev)
    model.train()
    x = torch.randn(batch, 3, hw, hw, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) if train else None

    def step():
        if train:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(x)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        step()
    b.record()
    torch.cuda.synchronize()
    ms = a.elapsed_time(b) / iters
    peak = torch.cuda.max_memory_allocated() / 2**20
    del opt, model
    torch.cuda.empty_cache()
    return ms, peak


def table(gla_json, *torch_jsons):
    """One row per (model, resolution, mode): images/s and peak MiB of ours, ViG-PyTorch, DeiT
    (the PyTorch rows from one or more reports, e.g. DeiT and ViG run as separate processes)."""

    def rows(path):
        try:
            with open(path) as f:
                return json.load(f).get("rows", [])
        except (OSError, ValueError) as e:
            print(f"({path}: {e})")
            return []

    got = {}
    with open(gla_json) if os.path.exists(gla_json) else open(os.devnull) as f:
        ours = json.loads(f.read() or "{}").get("results", [])
    for r in ours:  # gla bench vig's report: model "vig-t", image, mode, batch, images_per_s, peak_gib
        row = dict(model=r["model"].split("-")[-1], res=r["image"], mode=r["mode"], batch=r["batch"])
        if r.get("error"):
            row["error"] = r["error"]
        else:
            row.update(img_s=r["images_per_s"], peak_mib=r["peak_gib"] * 1024)
        got[("gla", row["model"], int(row["res"]), row["mode"])] = row
    for torch_json in torch_jsons:
        for r in rows(torch_json):
            got[(r["impl"], r["model"], int(r["res"]), r["mode"])] = r
    keys = sorted({k[1:] for k in got}, key=lambda k: ("tsb".index(k[0]), k[2], k[1]))
    cell = lambda r: ("      -        -" if r is None else
                      f"{'error':>7} {'':>8}" if "error" in r else f"{r['img_s']:7.0f} {r['peak_mib']:8.0f}")
    print(f"{'ViG/DeiT':<9}{'res':>5} {'mode':<6}{'batch':>6} | {'ours img/s':>7} {'MiB':>8} | "
          f"{'ViG-pt':>7} {'MiB':>8} | {'DeiT':>7} {'MiB':>8} | {'x ViG':>6} {'x DeiT':>6} {'mem/DeiT':>8} | "
          f"{'DeiT-m':>7} {'MiB':>8} | {'x DeiT-m':>8} {'mem/D-m':>8}")
    for m, res, mode in keys:
        g, v, d, dm = (got.get((i, m, res, mode)) for i in ("gla", "vig", "deit", "deit-math"))
        ok = lambda r: r is not None and "error" not in r
        x = lambda a, b: f"{a['img_s'] / b['img_s']:6.2f}" if ok(a) and ok(b) else f"{'-':>6}"
        mem = f"{g['peak_mib'] / d['peak_mib']:8.2f}" if ok(g) and ok(d) else f"{'-':>8}"
        batch = next((r["batch"] for r in (g, v, d, dm) if r is not None), "?")
        mem_m = f"{g['peak_mib'] / dm['peak_mib']:8.2f}" if ok(g) and ok(dm) else f"{'-':>8}"
        print(f"{m.upper():<9}{res:>5} {mode:<6}{batch:>6} | {cell(g)} | {cell(v)} | {cell(d)} | "
              f"{x(g, v)} {x(g, d)} {mem} | {cell(dm)} | {x(g, dm):>8} {mem_m}")
    for k, r in sorted(got.items()):
        if "error" in r:
            print(f"{k}: {r['error']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", nargs="+", metavar="JSON",
                    help="GLA_JSON TORCH_JSON [TORCH_JSON ...]: print the side-by-side table and exit")
    ap.add_argument("--vig", help="checkout of hustvl/ViG")
    ap.add_argument("--json")
    ap.add_argument("--models", default="t,s,b")
    ap.add_argument("--sizes", default="224,512,1024")
    ap.add_argument("--which", default="vig,deit,deit-math",
                    help="implementations: vig, deit, deit-math (comma-separated)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    if args.table:
        if len(args.table) < 2:
            ap.error("--table takes gla bench vig's JSON and one or more of this script's")
        table(*args.table)
        return
    if not args.json or ("vig" in args.which and not args.vig):
        ap.error("--json (and --vig for the ViG side) are required")

    import torch
    import timm

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    which = args.which.split(",")
    vig_mod = load_vig(torch, args.vig) if "vig" in which else None
    meta = dict(torch=torch.__version__, timm=timm.__version__, gpu=torch.cuda.get_device_name())
    try:
        import fla
        meta["fla"] = getattr(fla, "__version__", "?")
    except Exception:  # noqa: BLE001 - the version is a label only
        pass
    rows = []
    for size in args.models.split(","):
        for hw in map(int, args.sizes.split(",")):
            for train in (False, True):
                batch = BATCH.get(hw, (8, 8))[1 if train else 0]
                for impl in which:
                    torch.manual_seed(0)
                    t0 = time.time()
                    try:
                        if impl == "vig":
                            model = build_vig(vig_mod, size, hw)
                        else:
                            model = timm.create_model(DEIT[size], pretrained=False, img_size=hw)
                            if impl == "deit-math":
                                for m in model.modules():
                                    if hasattr(m, "fused_attn"):
                                        m.fused_attn = False
                        ms, peak = bench_one(torch, model, hw, batch, train, args.warmup, args.iters)
                        row = dict(impl=impl, model=size, res=hw, mode="train" if train else "infer",
                                   batch=batch, ms=ms, img_s=batch * 1e3 / ms, peak_mib=peak,
                                   params=sum(p.numel() for p in model.parameters()))
                    except Exception as e:  # noqa: BLE001 - the table says what failed
                        row = dict(impl=impl, model=size, res=hw, mode="train" if train else "infer",
                                   batch=batch, error=f"{type(e).__name__}: {e}"[:300])
                        torch.cuda.empty_cache()
                    row["wall_s"] = time.time() - t0
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    # rewritten after every row, so that a run stopped by its time limit keeps
                    # what it measured
                    tmp = args.json + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump(dict(meta=meta, rows=rows), f, indent=1)
                    os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
