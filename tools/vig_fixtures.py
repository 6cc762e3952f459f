#!/usr/bin/env python3
"""Parity fixtures produced by hustvl's own ViG code, for crates/gla-model/tests/vig.rs.

Usage:

    python3 tools/vig_fixtures.py --vig PATH_TO_HUSTVL_VIG_CHECKOUT --out $OUT/vig_fixtures

PATH_TO_HUSTVL_VIG_CHECKOUT is a checkout (or `git archive`) of hustvl/ViG (read:
classification/models/vig.py, used unchanged); hustvl's code is not part of this repository.

It builds tiny plain-ViG models with hustvl's `ViG` class (patch embed v2, GLABlock, the BiGLA
layer `GatedLinearAttention`, SwiGLU `GLAMLP`, final RMSNorm, average pool, linear head), float32
on the CPU, runs one forward and backward in training mode, and writes per variant

    <out>/<variant>/config.json        the ViG constructor's keyword arguments (hustvl's names)
                                       plus `intermediate_size` (GLAConfig's key, see below)
    <out>/<variant>/model.pth          torch.save({'model': model.state_dict()}), the layout of
                                       hustvl's published checkpoints (fp32)
    <out>/<variant>/fixture.safetensors
        input        f32 [B, 3, H, W]   the images (NCHW, as hustvl's forward takes them)
        labels       i64 [B]
        logits       f32 [B, classes]   training-mode forward (two scans, flip + cat, as vig.py)
        loss         f32 [1]            F.cross_entropy(logits, labels), mean
        logits_eval  f32 [B, classes]   eval-mode forward (vig.py's other branch, whose kernel
                                        halves the sum of the two scans and vig.py halves again)
        grad.<name>  f32                d loss / d parameter for every named_parameters() entry

Variants (depth 2, 10 classes, batch 2):

    t_p8_32   ViG-T flags (use_out_act, SiLU after the depthwise conv), embed_dim 32, 2 heads,
              patch 8 (stem conv k5 s4 p1, then k3 s2 p1), built and run at 32x32 (4x4 tokens)
    t_p8_48   the same kind of model (other seed) built at 32x32, run at 48x48: 6x6 tokens, the
              4x4 position embedding resized bicubically (resize_pos_embed, align_corners=False)
    t_p8_80   the same kind built at 32x32, run at 80x80: 10x10 = 100 tokens, more than 64, so the
              Rust side's GLA op takes its chunked path (fla's mode switch) instead of the recurrent
    s_p16_64  ViG-S/B flags (no out act, no act in the conv), embed_dim 32, 1 head, patch 16
              (hustvl's stem: conv k9 s8 p1, then k3 s2 p1), built and run at 64x64 (4x4 tokens)
    s_p16_80  the same kind built at 64x64, run at 80x80 (5x5 tokens, resized position embedding)
    tiny_pth  a very small model (embed_dim 8, 1 head, depth 1, patch 16 at 32x32) whose .pth is
              a few KB: the checked-in test file of the .pth reader

Substitutions (hustvl's model code is used unchanged; only what it imports is provided here):
  * the scan: vig.py's training branch calls the vendored fla `fused_chunk_gla` (Triton 2.2
    kernels). It is replaced by a naive PyTorch recurrence of the same function, per head:
    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = (q_t * K^-1/2) S_t, so autograd gives the
    gradients. The eval branch's `bid_fused_recurrent_gla` is replaced by the same recurrence run
    forward and on the reversed sequence (backward gate at reversed positions), summed and halved
    as that kernel does.
  * fla.modules.RMSNorm: x * rsqrt(mean(x^2) + eps) * w (with `residual` and `prenorm=True`:
    x + residual is normed and also returned, vendored fla's rms_norm_fn); swiglu_linear:
    (silu(gate) * y) @ W^T (+ b).
  * fla.models.GLAConfig: the vendored config's defaults (rms_norm_eps 1e-6, initializer_range
    0.02, hidden_act swish, clamp_min None, ...) and every keyword kept as an attribute.
  * timm: trunc_normal_ (torch.nn.init.trunc_normal_), to_2tuple, DropPath (identity; every
    variant has drop_path_rate 0, so timm's DropPath is never built), and the unused imports
    (VisionTransformer, _cfg, Attention as a plain nn.Module, register_model) as stubs.
  * transformers.activations.ACT2FN and einops.rearrange: the real ones when importable, else
    ACT2FN {'swish', 'silu'} -> nn.SiLU() and a rearrange for the patterns vig.py uses.
  * causal_conv1d, fla.modules.rotary, FusedRMSNormSwishGate, chunk_gla, fused_recurrent_gla,
    FusedChunkGLAFunction, pad: imported by vig.py but unused by these variants: stubs that raise.

Deviations from hustvl's defaults, and why:
  * intermediate_size (GLAConfig's key; hustvl leaves it None, so GLAMLP rounds 8D/3 up to a
    multiple of 256): 64 here (16 for tiny_pth), so the MLP does not hold most of the weights and
    the fixtures stay small. The Rust config takes the same key.
  * after hustvl's init, every norm weight (RMSNorm, LayerNorm2d, g_norm, l_norm) is set to
    1 + 0.2 N(0, 1) and every bias to 0.2 N(0, 1): hustvl initialises them to 1 and 0, which would
    leave the forward blind to them.

Nothing here needs a GPU or the internet; it takes a few seconds.
"""

import argparse
import importlib.util
import json
import math
import os
import struct
import sys
import types


def die(msg):
    print(f"vig_fixtures: error: {msg}", file=sys.stderr)
    sys.exit(1)


# ----------------------------------------------------------------------------------------------
# the modules vig.py imports


def naive_gla(torch, q, k, v, g, reverse=False):
    """o [B,H,T,V] of the GLA recurrence over q, k [B,H,T,K], v [B,H,T,V], log-gate g [B,H,T,K]."""
    b, h, t, kd = q.shape
    vd = v.shape[-1]
    scale = kd ** -0.5
    s = q.new_zeros(b, h, kd, vd)
    out = [None] * t
    order = range(t - 1, -1, -1) if reverse else range(t)
    for i in order:
        s = s * g[:, :, i].exp().unsqueeze(-1) + k[:, :, i].unsqueeze(-1) * v[:, :, i].unsqueeze(-2)
        out[i] = torch.einsum("bhk,bhkv->bhv", q[:, :, i] * scale, s)
    return torch.stack(out, dim=2)


def install_shims(torch):
    nn = torch.nn
    F = torch.nn.functional

    def module(name, **attrs):
        m = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(m, k, v)
        sys.modules[name] = m
        return m

    def unused(what):
        def f(*a, **k):
            raise RuntimeError(f"vig_fixtures: {what} is not provided (not used by these variants)")

        return f

    # timm
    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    def trunc_normal_(t, mean=0.0, std=1.0, a=-2.0, b=2.0):
        return nn.init.trunc_normal_(t, mean=mean, std=std, a=a, b=b)

    class DropPath(nn.Module):
        def __init__(self, p=0.0):
            super().__init__()
            if p > 0:
                raise RuntimeError("vig_fixtures: drop_path_rate must be 0")

        def forward(self, x):
            return x

    class Attention(nn.Module):
        def __init__(self, *a, **k):
            raise RuntimeError("vig_fixtures: timm Attention is not provided")

    module("timm")
    module("timm.models")
    module("timm.models.vision_transformer", VisionTransformer=object, _cfg=unused("_cfg"), Attention=Attention)
    module("timm.models.registry", register_model=lambda f: f)
    module("timm.models.layers", trunc_normal_=trunc_normal_, DropPath=DropPath, to_2tuple=to_2tuple)

    # fla (the vendored fork's API as vig.py calls it)
    class GLAConfig:
        def __init__(self, **kw):
            defaults = dict(
                vocab_size=32000, hidden_size=2048, expand_k=0.5, expand_v=1, hidden_ratio=4,
                intermediate_size=None, num_hidden_layers=24, num_heads=4, attn_mode="chunk",
                use_short_conv=False, conv_size=4, share_conv_kernel=True, clamp_min=None,
                hidden_act="swish", max_position_embeddings=2048, rms_norm_eps=1e-6, use_gk=True,
                use_gv=False, use_cache=True, initializer_range=0.02, fuse_norm=True,
                fuse_cross_entropy=True,
            )
            defaults.update(kw)
            if GLAConfig.intermediate_size_override is not None:
                defaults["intermediate_size"] = GLAConfig.intermediate_size_override
            for k, v in defaults.items():
                setattr(self, k, v)

    GLAConfig.intermediate_size_override = None

    class RMSNorm(nn.Module):
        def __init__(self, hidden_size, eps=1e-5):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(hidden_size))
            self.register_parameter("bias", None)

        def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
            if residual is not None:
                x = x + residual
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
            return (y, x) if prenorm else y

    def swiglu(x, y):
        return F.silu(x) * y

    def swiglu_linear(x, y, w, b=None):
        return F.linear(F.silu(x) * y, w, b)

    def fused_chunk_gla(q, k, v, g, scale=-1, initial_state=None, output_final_state=False):
        if scale != -1 or initial_state is not None:
            raise RuntimeError("vig_fixtures: fused_chunk_gla called with options vig.py does not use")
        return naive_gla(torch, q, k, v, g), None

    def bid_fused_recurrent_gla(q, k, v, gk, initial_state=None):
        # gk = cat([fw, bw]) along the batch: the backward gate is read at reversed positions by
        # the kernel, i.e. the backward scan runs from T-1 down with its own gate at each token
        b = q.shape[0]
        o_f = naive_gla(torch, q, k, v, gk[:b])
        o_b = naive_gla(torch, q, k, v, gk[b:], reverse=True)
        return (o_f + o_b) / 2, None

    module("fla")
    module("fla.models", GLAConfig=GLAConfig)
    module("fla.modules", FusedRMSNormSwishGate=unused("FusedRMSNormSwishGate"), RMSNorm=RMSNorm)
    module("fla.modules.activations", swiglu=swiglu, swiglu_linear=swiglu_linear)
    module("fla.modules.rotary", RotaryEmbedding=unused("RotaryEmbedding"))
    module("fla.ops")
    module("fla.ops.gla", chunk_gla=unused("chunk_gla"), fused_chunk_gla=fused_chunk_gla,
           fused_recurrent_gla=unused("fused_recurrent_gla"))
    module("fla.ops.gla.chunk_fuse", FusedChunkGLAFunction=None, pad=unused("pad"))
    module("fla.ops.gla.recurrent_fuse", bid_fused_recurrent_gla=bid_fused_recurrent_gla)
    module("causal_conv1d")
    module("causal_conv1d.causal_conv1d_interface", CausalConv1dFn=None)

    try:
        import transformers.activations  # noqa: F401
    except Exception:
        module("transformers")
        module("transformers.activations", ACT2FN={"swish": nn.SiLU(), "silu": nn.SiLU()})
    try:
        import einops  # noqa: F401
    except Exception:
        module("einops", rearrange=make_rearrange(torch))
    return GLAConfig


def make_rearrange(torch):
    """einops.rearrange for patterns of names and one level of parenthesised groups."""

    def parse(side):
        groups, cur, depth = [], None, 0
        for tok in side.replace("(", " ( ").replace(")", " ) ").split():
            if tok == "(":
                cur = []
            elif tok == ")":
                groups.append(cur)
                cur = None
            elif cur is not None:
                cur.append(tok)
            else:
                groups.append([tok])
        return groups

    def rearrange(x, pattern, **sizes):
        lhs, rhs = [parse(s) for s in pattern.split("->")]
        if len(lhs) != x.dim():
            raise RuntimeError(f"rearrange: {pattern} on shape {tuple(x.shape)}")
        dims = dict(sizes)
        for grp, n in zip(lhs, x.shape):
            known = math.prod(dims[a] for a in grp if a in dims)
            unknown = [a for a in grp if a not in dims]
            if len(unknown) > 1:
                raise RuntimeError(f"rearrange: cannot infer {unknown}")
            if unknown:
                dims[unknown[0]] = n // known
        flat = [a for grp in lhs for a in grp]
        x = x.reshape([dims[a] for a in flat])
        order = [a for grp in rhs for a in grp]
        x = x.permute([flat.index(a) for a in order])
        return x.reshape([math.prod(dims[a] for a in grp) for grp in rhs])

    return rearrange


# ----------------------------------------------------------------------------------------------
# output


def tensor_bytes(t):
    """Little-endian bytes of a contiguous f32 or i64 CPU tensor (numpy when present)."""
    try:
        return t.numpy().tobytes()
    except Exception:
        fmt = "f" if t.is_floating_point() else "q"
        vals = t.reshape(-1).tolist()
        return struct.pack(f"<{len(vals)}{fmt}", *vals)


def write_safetensors(torch, path, tensors):
    """The safetensors format: u64 header length, JSON header, raw little-endian data."""
    header, blobs, off = {}, [], 0
    names = {torch.float32: "F32", torch.int64: "I64"}
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        data = tensor_bytes(t)
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


VARIANTS = {
    "t_p8_32": dict(seed=1, build=32, run=32, patch=8, embed_dim=32, heads=2, depth=2, inter=64,
                    use_out_act=True, use_act_in_conv=True),
    "t_p8_48": dict(seed=2, build=32, run=48, patch=8, embed_dim=32, heads=2, depth=2, inter=64,
                    use_out_act=True, use_act_in_conv=True),
    "t_p8_80": dict(seed=6, build=32, run=80, patch=8, embed_dim=32, heads=2, depth=2, inter=64,
                    use_out_act=True, use_act_in_conv=True),
    "s_p16_64": dict(seed=3, build=64, run=64, patch=16, embed_dim=32, heads=1, depth=2, inter=64,
                     use_out_act=False, use_act_in_conv=False),
    "s_p16_80": dict(seed=4, build=64, run=80, patch=16, embed_dim=32, heads=1, depth=2, inter=64,
                     use_out_act=False, use_act_in_conv=False),
    "tiny_pth": dict(seed=5, build=32, run=32, patch=16, embed_dim=8, heads=1, depth=1, inter=16,
                     use_out_act=True, use_act_in_conv=True),
}


def run_variant(torch, vig_mod, glaconfig, name, spec, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(spec["seed"])
    kwargs = dict(
        img_size=spec["build"], patch_size=spec["patch"], stride=spec["patch"], depth=spec["depth"],
        num_heads=spec["heads"], embed_dim=spec["embed_dim"], channels=3, num_classes=10,
        if_cls_token=False, use_middle_cls_token=False, classification_mode="avgpool",
        if_abs_pos_embed=True, if_rc_pe=False, drop_rate=0.0, attn_model="fused_chunk",
        hidden_act="swish", use_out_act=spec["use_out_act"], use_out_gate=False,
        use_lower_bound=False, use_msg=False, use_swiglu=True,
        use_act_in_conv=spec["use_act_in_conv"], rope_mode="none", expand_k=0.5, expand_v=1.0,
        use_dirpe=False, scan_mode="default", patch_embed_version="v2", use_bias_in_patch=True,
        use_act_in_patch=False, use_bias_in_dwconv=False, init_values=None, drop_path_rate=0.0,
    )
    glaconfig.intermediate_size_override = spec["inter"]
    model = vig_mod.ViG(**kwargs).float()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif p.dim() == 1:  # norm weights
                p.copy_(1 + 0.2 * torch.randn_like(p))
    b, hw = 2, spec["run"]
    x = torch.randn(b, 3, hw, hw)
    labels = torch.randint(0, 10, (b,))

    model.eval()
    with torch.no_grad():
        logits_eval = model(x.clone())
    model.train()
    logits = model(x.clone())
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()

    sd = model.state_dict()
    torch.save({"model": sd}, os.path.join(out_dir, "model.pth"))
    out = {"input": x, "labels": labels, "logits": logits, "loss": loss.reshape(1), "logits_eval": logits_eval}
    for pname, p in model.named_parameters():
        if p.grad is None:
            die(f"{name}: no gradient for {pname}")
        out[f"grad.{pname}"] = p.grad
    write_safetensors(torch, os.path.join(out_dir, "fixture.safetensors"), out)
    cfg = {k: v for k, v in kwargs.items()}
    cfg["intermediate_size"] = spec["inter"]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    nparams = sum(p.numel() for p in model.parameters())
    rel = ((logits - logits_eval).norm() / logits.norm()).item()
    print(f"{name}: params {nparams}, tokens {tuple(model.patch_embed(x)[1])}, loss {loss.item():.6f}, "
          f"train-vs-eval logits rel {rel:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vig", required=True, help="checkout of hustvl/ViG (its classification/models/vig.py is used)")
    ap.add_argument("--out", required=True, help="output folder (one subfolder per variant)")
    ap.add_argument("--only", nargs="*", help="variants to make (default: all)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    glaconfig = install_shims(torch)
    path = os.path.join(args.vig, "classification", "models", "vig.py")
    if not os.path.isfile(path):
        die(f"{path} not found: --vig must be a checkout of hustvl/ViG")
    spec = importlib.util.spec_from_file_location("hustvl_vig", path)
    vig_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vig_mod)

    names = args.only or list(VARIANTS)
    for name in names:
        if name not in VARIANTS:
            die(f"unknown variant {name}")
        run_variant(torch, vig_mod, glaconfig, name, VARIANTS[name], os.path.join(args.out, name))
    print(f"torch {torch.__version__}; wrote {len(names)} variants under {args.out}")


if __name__ == "__main__":
    main()
