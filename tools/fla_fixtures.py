#!/usr/bin/env python3
"""Parity fixtures produced by fla itself, for crates/gla-model/tests/fla_parity.rs.

Builds tiny random fla `GLAForCausalLM`, `DeltaNetForCausalLM` and `GatedDeltaNetForCausalLM`
models in float32 on the GPU, runs one forward + backward and a greedy cached decode with fla's
own code, and writes per variant

    <out>/<variant>/config.json          fla's config, as `save_pretrained` writes it
    <out>/<variant>/model.safetensors    fla's weights, as `save_pretrained` writes them (f32)
    <out>/<variant>/fixture.safetensors  input_ids   i64 [2, 100]   (labels = input_ids; fla shifts)
                                         logits      f32 [2, 100, 256]
                                         loss        f32 [1]        mean CE over the 2*99 shifted labels
                                         grad.<name> f32            d loss / d parameter, for every
                                                                    entry of model.named_parameters()
                                                                    (a tied lm_head is one parameter:
                                                                    no grad.lm_head.weight then)
                                         greedy_prompt  i64 [20]    first 20 ids of row 0
                                         greedy_tokens  i64 [24]    fla's greedy continuation
                                         greedy_logits  f32 [24, 256] the logits each token was the
                                                                    argmax of (prefill's last
                                                                    position, then each decode step)

GLA variants (2 layers, hidden_size 64, num_heads 2, vocab 256, float32, otherwise fla's defaults
except the deviations below):

    noconv     use_short_conv=False, tie_word_embeddings=False (fla's default)
    conv_tied  use_short_conv=True (conv_size 4), tie_word_embeddings=True
    fmap_relu  use_short_conv=True (conv_size 4), feature_map='relu' on q and k (fla's gla_7B map)

Delta-rule variants (2 layers, hidden_size 32, num_heads 2, vocab 128, intermediate_size 16, so
that the four weigh well under 1 MB; ids [2, 100] of vocab 128, logits [2, 100, 128]):

    delta_net           DeltaNet, fla's defaults: short conv, qk_activation silu, qk_norm l2,
                        use_beta, no output gate
    delta_net_gate      DeltaNet, qk_activation relu, qk_norm sum, use_gate (gated RMSNorm),
                        allow_neg_eigval, no short conv
    gated_deltanet      Gated DeltaNet, head_dim 16, expand_v 2, short conv, use_gate
    gated_deltanet_gva  Gated DeltaNet, num_v_heads 4 over 2 heads (grouped value heads),
                        allow_neg_eigval, output_gate_activation sigmoid, tied embeddings

Hybrid variants (fla's `attn` config key: fla's softmax `Attention` layer, fla/layers/attn.py, at
the listed layers, the family's own mixer elsewhere; hidden_size 32, vocab 128, intermediate_size 16
as the delta-rule variants):

    hybrid_gla  GLA, 3 layers, short conv, attn = {layers: [1], num_heads: 4, qkv_bias: True}
                (head_dim 8, fla's rope_theta 10000, full causal attention)
    hybrid_gdn  Gated DeltaNet, 4 layers, head_dim 16, attn = {layers: [1, 3], num_heads: 4,
                num_kv_heads: 2 (GQA), window_size: 16 (< the 100-token rows and < the 20-token
                prompt, so both the training forward and the decode's ring buffer are windowed),
                rope_theta: 1000.0}

  The attention kernel: fla's layer calls flash_attn's `flash_attn_func` /
  `flash_attn_varlen_func`, which take only fp16/bf16 (and need the flash-attn package). The
  script replaces both names in fla.layers.attn's namespace (a monkey-patch, before the model is
  built: Attention.__init__ checks `flash_attn_func`) by float32 PyTorch functions of the same
  math (`flash_attn_f32`, `flash_attn_varlen_f32` below): explicit softmax of `q k^T / sqrt(D)`
  with flash_attn's causal mask aligned bottom-right (query i of Tq sees key j of Tk when
  j <= i + Tk - Tq) and its window (left, 0) (j >= i + Tk - Tq - left), GQA by repeating each kv
  head over its H / H_KV consecutive query heads. Everything else (projections, biases, fla's
  Triton RoPE kernel, its KV cache with the window truncation, the rest of the model) is fla's.
  Deviations for the attention layers: after fla's init, q_proj/k_proj weights are drawn from
  N(0, 1/hidden_size) so that the scores are O(1) (fla's 0.02 init leaves the softmax nearly
  uniform, blind to a wrong RoPE or mask), and the qkv biases (zero-initialised by fla) from
  0.1 N(0, 1).

Which fla code makes which number (fla 0.6.0 on the H200):
  * DeltaNet: fla refuses float32 in its chunked kernels (ChunkDeltaRuleFunction asserts), so the
    config sets attn_mode='fused_recurrent': fla's layer then runs fused_recurrent_delta_rule for
    every length, which has a backward (the same function). Logits, loss, gradients and greedy
    tokens all come from fla's kernels.
  * Gated DeltaNet: logits, loss and the greedy continuation come from fla's fused_recurrent
    kernel (attn_mode='fused_recurrent': fla's layer runs it for every length without grad). Not
    from its chunked kernels: fla 0.6.0 hard-codes TF32 dots in the chunked forward's triangular
    solve (SOLVE_TRIL_DOT_PRECISION = 'tf32' on TF32 hardware, fla/ops/gated_delta_rule/
    chunk_fwd.py), whatever TRITON_F32_DEFAULT says: its logits sit 3e-5 to 7e-4 (relative) from
    the exact function on these models; the script prints that distance as a diagnostic. fla
    refuses the gated chunked backward on this Hopper machine (Triton < 3.7.1, fla #640), and its
    fused_recurrent kernel has no backward, so the gradients come from fla's layer with the kernel
    call replaced by fla's own naive reference (fla/ops/gated_delta_rule/naive.py,
    naive_recurrent_gated_delta_rule, under torch autograd), fed exactly what the kernel receives
    (the in-kernel L2 norm, beta sigmoid and gate written out in torch). The script prints how far
    that substitute's logits are from fla's kernel's.

Deviations from fla's defaults, and why:
  * fuse_cross_entropy=False (fuse_linear_cross_entropy stays False): the loss is then
    torch.nn.CrossEntropyLoss(reduction='mean'), the plain mean CE over non-ignored labels.
    The default FusedCrossEntropyLoss(inplace_backward=True) overwrites the logits with their
    gradient during backward. fuse_norm and fuse_swiglu keep their default (True): fla's Triton
    kernels, same math, and fuse_norm=True is what gives the `g_norm_swish_gate` parameter name.
  * intermediate_size=32 (fla's default for hidden 64 is 256): the MLP would otherwise hold ~3/4 of
    the parameters and the two fixtures would weigh ~3.1 MB; with 32 they weigh ~1.6 MB (< 2 MB,
    DESIGN.md section 3). 32 != hidden_size, so a transposed MLP weight still shows as a shape error.
  * initializer_range: the first of 0.02 (fla's default), 0.05, 0.1, 0.2 whose greedy continuation
    has at least 8 distinct tokens (config.json records it). A tied model at 0.02 predicts its own
    input token and greedy decoding repeats one token, which would hide a misordered conv cache.
  * after fla's init, every norm weight is set to 1 + 0.2 * N(0, 1) and every gk_proj.1.bias to
    N(0, 1) (fla initialises them to exactly 1 and 0, which would make the forward blind to them).
    Gated DeltaNet's A_log and dt_bias keep fla's random init.

What it needs, on the GPU machine:
  * torch with CUDA, triton, einops (fla-core 0.6.0's own requirements);
  * transformers >= 5.6.2, < 6 (flash-linear-attention 0.6.0's requirement): fla's MODEL code
    imports it unconditionally (fla/models/gla/__init__.py registers with transformers' Auto
    classes; modeling_gla.py, models/modeling_utils.py, cache_utils.py, generation_utils.py all
    `from transformers ...`), so no fla GLA model exists without it. It brings huggingface-hub,
    tokenizers, safetensors, regex, pyyaml, typer, tqdm, numpy, packaging.
    This workplace's GPU image ships transformers 5.17.0 with all of those (device KINDS.md), so
    nothing needs carrying there. Where transformers is missing, carry the wheels (the binary ones
    for CPython 3.12 / x86-64 Linux), from the repo root on a machine with PyPI:

        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d .whl \
            transformers==5.17.0 huggingface-hub==1.33.0 tokenizers==0.23.2 safetensors==0.8.0 \
            hf-xet regex pyyaml typer tqdm packaging einops \
            httpx httpcore h11 anyio idna certifi filelock fsspec click shellingham rich \
            markdown-it-py mdurl pygments typing-extensions annotated-doc

    (drop the ones `python3 -m pip show NAME` finds there; keep one version of each) and install
    them with the fla wheels: `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`.

Run (after `pip install --no-index --no-deps --target /tmp/site .whl/*.whl` of fla 0.6.0):

    PYTHONPATH=/tmp/site python tools/fla_fixtures.py $OUT/fla_fixtures

or only some variants (e.g. the hybrids):

    PYTHONPATH=/tmp/site python tools/fla_fixtures.py $OUT/fla_fixtures --only hybrid_gla,hybrid_gdn

then copy <out>/<variant>/ to crates/gla-model/tests/fixtures/fla/<variant>/.

Speed: Triton autotuning is cut to the first config of each kernel (limit_autotuning; set
FLA_FIXTURES_FULL_AUTOTUNE=1 for the full search, which took over 10 minutes on the GPU machine);
the whole script then takes about 70 s there, mostly Triton compiling.

f32 exactness: Triton's tl.dot computes f32 inputs in TF32 unless TRITON_F32_DEFAULT=ieee, set
below before torch/triton/fla are imported; PyTorch's TF32 switches are turned off too. The script
prints how far fla's chunked and fused-recurrent kernels agree on the same model (about 1e-6
relative with IEEE f32; TF32 would show ~1e-3).
"""

import os

# Must precede any import of triton (fla imports it): tl.dot's default f32 precision.
os.environ["TRITON_F32_DEFAULT"] = "ieee"

import argparse  # noqa: E402
import copy  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


SEQ_B, SEQ_T = 2, 100          # T > 64: fla's layer runs the chunked kernels
PROMPT_LEN, NEW_TOKENS = 20, 24
BASE_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_heads=2,
    vocab_size=256,
    intermediate_size=32,
    fuse_cross_entropy=False,
    fuse_linear_cross_entropy=False,
)
# fla's default initializer_range is 0.02. With tied embeddings a model that small predicts its input
# token (the residual stream is mostly the token's own embedding), so greedy decoding repeats one
# token, which would hide a misordered conv cache. The first range that gives MIN_DISTINCT distinct
# greedy tokens is used (config.json records it).
INIT_RANGES = (0.02, 0.05, 0.1, 0.2)
MIN_DISTINCT = 8
DELTA_BASE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_heads=2,
    vocab_size=128,
    intermediate_size=16,
    fuse_cross_entropy=False,
    fuse_linear_cross_entropy=False,
)
# family: (base config, fla model module, config class, model class)
FAMILIES = {
    "gla": (BASE_CONFIG, "fla.models.gla", "GLAConfig", "GLAForCausalLM"),
    "delta_net": (DELTA_BASE, "fla.models.delta_net", "DeltaNetConfig", "DeltaNetForCausalLM"),
    "gated_deltanet": (DELTA_BASE, "fla.models.gated_deltanet", "GatedDeltaNetConfig", "GatedDeltaNetForCausalLM"),
}
VARIANTS = {
    "noconv": dict(family="gla", seed=1234, use_short_conv=False, tie_word_embeddings=False),
    "conv_tied": dict(family="gla", seed=5678, use_short_conv=True, conv_size=4, tie_word_embeddings=True),
    "fmap_relu": dict(family="gla", seed=9012, use_short_conv=True, conv_size=4, tie_word_embeddings=False, feature_map="relu"),
    "delta_net": dict(family="delta_net", seed=2101, attn_mode="fused_recurrent"),
    "delta_net_gate": dict(family="delta_net", seed=2202, attn_mode="fused_recurrent", qk_activation="relu",
                           qk_norm="sum", use_gate=True, allow_neg_eigval=True, use_short_conv=False),
    "gated_deltanet": dict(family="gated_deltanet", seed=3101, attn_mode="fused_recurrent", head_dim=16, expand_v=2.0),
    "gated_deltanet_gva": dict(family="gated_deltanet", seed=3202, attn_mode="fused_recurrent", head_dim=16,
                               expand_v=1.0, num_v_heads=4,
                               allow_neg_eigval=True, output_gate_activation="sigmoid", tie_word_embeddings=True),
    "hybrid_gla": dict(family="gla", base=DELTA_BASE, seed=4101, num_hidden_layers=3, use_short_conv=True, conv_size=4,
                       attn=dict(layers=[1], num_heads=4, qkv_bias=True)),
    "hybrid_gdn": dict(family="gated_deltanet", seed=4202, attn_mode="fused_recurrent", num_hidden_layers=4, head_dim=16,
                       expand_v=1.0, attn=dict(layers=[1, 3], num_heads=4, num_kv_heads=2, window_size=16,
                                               rope_theta=1000.0)),
}
# keys of a variant that are the script's, not the config's
SCRIPT_KEYS = ("seed", "family", "base")


def die(msg):
    print(f"fla_fixtures: error: {msg}", file=sys.stderr)
    sys.exit(1)


def import_stack():
    try:
        import torch
    except ImportError as e:
        die(f"PyTorch is not importable ({e}); run this on the GPU machine's python3")
    if not torch.cuda.is_available():
        die("no CUDA device: fla's Triton kernels need the GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        import transformers
    except ImportError as e:
        die(
            f"transformers is not importable ({e}). fla 0.6.0's model code (GLAForCausalLM, its "
            "cache and generation mixin) imports transformers unconditionally, so it is required, "
            "not only for generate(). Carry the wheels listed in this script's docstring "
            "(python3 tools/fla_fixtures.py --help) and install them into the same --target."
        )
    try:
        import einops  # noqa: F401
    except ImportError as e:
        die(f"einops is not importable ({e}); fla-core requires it (carry einops-*.whl)")
    try:
        import fla
    except ImportError as e:
        die(f"fla is not importable ({e}); did you set PYTHONPATH=/tmp/site after "
            "`pip install --no-index --no-deps --target /tmp/site .whl/*.whl`?")
    import triton
    return torch, transformers, triton, fla


def family_classes(family):
    """fla's config and model classes of a family."""
    import importlib

    _, module, config_cls, model_cls = FAMILIES[family]
    try:
        m = importlib.import_module(module)
    except ImportError as e:
        die(f"fla's {family} model is not importable ({e})")
    return getattr(m, config_cls), getattr(m, model_cls)


def naive_delta_rule(torch, q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                     use_gate_in_kernel=False, A_log=None, dt_bias=None, state_v_first=False, cu_seqlens=None,
                     **_):
    """What fla's chunk_gated_delta_rule computes, written with fla's naive reference
    (naive_recurrent_gated_delta_rule) and torch ops under autograd: the in-kernel L2 norm
    (fla's l2norm, eps 1e-6), beta sigmoid (x2 with allow_neg_eigval), gate
    (-exp(A_log) softplus(a + dt_bias)), grouped value heads (q, k head = value head // (HV/H))."""
    import torch.nn.functional as F
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    if cu_seqlens is not None:
        die("the naive substitute takes no cu_seqlens (the fixtures pass none)")
    dtype = v.dtype
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    if use_qk_l2norm_in_kernel:
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    if use_beta_sigmoid_in_kernel:
        beta = beta.sigmoid() * (2.0 if allow_neg_eigval else 1.0)
    if g is None:
        g = torch.zeros_like(beta)
    elif use_gate_in_kernel:
        a = g.float() + (dt_bias.float() if dt_bias is not None else 0.0)
        g = -A_log.float().exp() * F.softplus(a)
    group = v.shape[2] // q.shape[2]
    if group > 1:
        q, k = q.repeat_interleave(group, dim=2), k.repeat_interleave(group, dim=2)
    h0 = initial_state
    if h0 is not None and state_v_first:
        h0 = h0.transpose(-1, -2)
    o, ht = naive_recurrent_gated_delta_rule(q, k, v, beta, g.float(), scale=scale, initial_state=h0,
                                             output_final_state=output_final_state)
    if ht is not None and state_v_first:
        ht = ht.transpose(-1, -2).contiguous()
    return o.to(dtype), ht


def limit_autotuning():
    """Every Triton autotuner (fla's CachedAutotuner included) keeps only the first config that
    survives its own pruning, instead of compiling and timing all of them: fla's GLA kernels list
    up to 36 configs each and compiling them all takes more than 10 minutes on the GPU machine.
    Tile sizes change only the f32 summation order, not the math. FLA_FIXTURES_FULL_AUTOTUNE=1
    keeps Triton's full autotuning."""
    if os.environ.get("FLA_FIXTURES_FULL_AUTOTUNE") == "1":
        return "full"
    from triton.runtime.autotuner import Autotuner

    orig = Autotuner.prune_configs

    def first_config(self, kwargs):
        return orig(self, kwargs)[:1]

    Autotuner.prune_configs = first_config
    return "first config only"


def rel(a, b):
    """Relative RMSE ||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def perturb(torch, model, gen):
    """Norm weights to 1 + 0.2 N(0,1), gk_proj.1 biases to N(0,1) (see the docstring)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_swish_gate.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("gk_proj.1.bias"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif is_softmax_attn(model, name) and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            elif is_softmax_attn(model, name) and name.endswith("_proj.bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def is_softmax_attn(model, name):
    """Whether parameter `name` (`...attn.q_proj.weight`) belongs to one of fla's softmax
    `Attention` layers."""
    from fla.layers.attn import Attention

    parts = name.split(".")
    return len(parts) > 2 and isinstance(model.get_submodule(".".join(parts[:-2])), Attention)


def flash_attn_f32(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), **kw):
    """flash_attn_func's math in float32 PyTorch (see the docstring): q [B, Tq, H, D],
    k, v [B, Tk, H_KV, D]; causal and the window aligned bottom-right as flash_attn does."""
    import torch

    if dropout_p:
        die("flash_attn_f32: dropout is not reproduced")
    if kw.get("softcap", 0.0) or kw.get("alibi_slopes") is not None:
        die(f"flash_attn_f32: unsupported options {kw}")
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    tq, tk, h, hk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    if h % hk:
        die(f"flash_attn_f32: {h} query heads over {hk} kv heads")
    if h != hk:
        k, v = k.repeat_interleave(h // hk, dim=2), v.repeat_interleave(h // hk, dim=2)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    i = torch.arange(tq, device=q.device)[:, None] + (tk - tq)
    j = torch.arange(tk, device=q.device)[None, :]
    left, right = window_size
    allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device)
    if causal:
        allowed &= j <= i
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0 and not causal:
        allowed &= j <= i + right
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v).to(dtype)


def flash_attn_varlen_f32(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
                          softmax_scale=None, causal=False, window_size=(-1, -1), **kw):
    """flash_attn_varlen_func over packed rows: flash_attn_f32 per sequence."""
    import torch

    outs = []
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for n in range(len(cq) - 1):
        qs, ks, vs = q[cq[n]:cq[n + 1]], k[ck[n]:ck[n + 1]], v[ck[n]:ck[n + 1]]
        outs.append(flash_attn_f32(qs[None], ks[None], vs[None], dropout_p, softmax_scale, causal, window_size, **kw)[0])
    return torch.cat(outs, dim=0)


def patch_flash_attn():
    """Replaces flash_attn's two functions in fla's attention layer by the float32 ones."""
    import fla.layers.attn as attn_layer

    attn_layer.flash_attn_func = flash_attn_f32
    attn_layer.flash_attn_varlen_func = flash_attn_varlen_f32


def save_model(model, out_dir):
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
    model.save_pretrained(out_dir, **kwargs)
    path = os.path.join(out_dir, "model.safetensors")
    if not os.path.isfile(path):
        die(f"save_pretrained wrote no {path}: {sorted(os.listdir(out_dir))}")


def greedy_manual(torch, model, prompt):
    """fla's cached decode, step by step: prefill the prompt with use_cache=True, then feed each
    argmax token with past_key_values (fla's Cache; T=1 -> fused_recurrent_gla + conv step)."""
    toks, step_logits = [], []
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        pkv, logits = out.past_key_values, out.logits[:, -1].float()
        for i in range(NEW_TOKENS):
            step_logits.append(logits[0].clone())
            nxt = logits.argmax(-1)
            toks.append(int(nxt.item()))
            if i + 1 == NEW_TOKENS:
                break
            out = model(input_ids=nxt[:, None], past_key_values=pkv, use_cache=True)
            pkv, logits = out.past_key_values, out.logits[:, -1].float()
    return toks, torch.stack(step_logits)


def greedy_hf(torch, model, prompt):
    """transformers' generate(do_sample=False) over fla's cache, for comparison."""
    gc = copy.deepcopy(model.generation_config)
    gc.do_sample = False
    gc.num_beams = 1
    gc.max_new_tokens = NEW_TOKENS
    gc.min_new_tokens = None
    gc.eos_token_id = None  # do not stop at fla's eos (2): the manual loop never stops
    gc.pad_token_id = 0
    gc.temperature, gc.top_k, gc.top_p = None, None, None
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gc)
    return [int(x) for x in out[0, prompt.shape[1]:].tolist()]


def build(torch, Config, Model, spec, init_range):
    opts = {k: v for k, v in spec.items() if k not in SCRIPT_KEYS}
    base = dict(spec.get("base", FAMILIES[spec["family"]][0]))
    base.update(opts)
    config = Config(**base, initializer_range=init_range)
    torch.manual_seed(spec["seed"])
    model = Model(config).to(dtype=torch.float32)
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    perturb(torch, model, gen)
    model = model.cuda()
    tied = model.lm_head.weight.data_ptr() == model.model.embeddings.weight.data_ptr()
    if tied != bool(config.tie_word_embeddings):
        die(f"tie_word_embeddings={config.tie_word_embeddings} but lm_head and embeddings "
            f"{'share' if tied else 'do not share'} storage")
    for name, p in model.named_parameters():
        if p.dtype != torch.float32 or not torch.isfinite(p).all():
            die(f"parameter {name} is {p.dtype} or not finite")
    return config, model, gen


def run_variant(torch, safetensors_torch, name, spec, out_dir):
    import torch.nn.functional as F

    family = spec["family"]
    Config, Model = family_classes(family)
    os.makedirs(out_dir, exist_ok=True)
    for init_range in INIT_RANGES:
        config, model, gen = build(torch, Config, Model, spec, init_range)
        vocab = config.vocab_size
        input_ids = torch.randint(0, vocab, (SEQ_B, SEQ_T), generator=gen).cuda()
        log(f"{name}: initializer_range {init_range}: greedy decode")
        # greedy continuation through fla's cache
        model.eval()
        prompt = input_ids[:1, :PROMPT_LEN].clone()
        toks, step_logits = greedy_manual(torch, model, prompt)
        if len(set(toks)) >= MIN_DISTINCT:
            break
        log(f"{name}: only {len(set(toks))} distinct greedy tokens {toks}; a larger initializer_range")
    else:
        die(f"{name}: no initializer_range in {INIT_RANGES} gives {MIN_DISTINCT} distinct greedy tokens")

    log(f"{name}: forward + backward")
    # forward + backward, fla's loss (labels shifted inside *ForCausalLM.forward)
    source = "fla's kernels"
    if family == "gated_deltanet":
        # logits and loss from fla's fused_recurrent kernel; gradients from the naive substitute
        # below (the layer forces its chunked path under grad: the one the substitute replaces)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
        logits, loss = out.logits.detach().float().clone(), out.loss.detach()
        import fla.layers.gated_deltanet as gdn_layer

        kernel = gdn_layer.chunk_gated_delta_rule
        gdn_layer.chunk_gated_delta_rule = lambda **kw: naive_delta_rule(torch, **kw)
        try:
            model.train()
            model.zero_grad(set_to_none=True)
            out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
            out.loss.backward()
        finally:
            gdn_layer.chunk_gated_delta_rule = kernel
        naive_logits = out.logits.detach().float()
        diag_name, diag = "naive_vs_fused_recurrent_logits_rel", rel(naive_logits, logits)
        source = ("logits, loss, greedy: fla's fused_recurrent kernel; gradients: fla's layer with "
                  "chunk_gated_delta_rule replaced by naive_recurrent_gated_delta_rule under autograd")
        chunk_cfg = copy.deepcopy(config)
        chunk_cfg.attn_mode = "chunk"
        chunk = Model(chunk_cfg).to(dtype=torch.float32).cuda().eval()
        chunk.load_state_dict(model.state_dict())
        with torch.no_grad():
            chunk_logits = chunk(input_ids=input_ids, use_cache=False).logits.float()
        source += f"; fla's chunked forward (TF32 solve) is {rel(chunk_logits, logits):.2e} from these logits"
        del chunk
        if abs(out.loss.item() - loss.item()) > 1e-5 * abs(loss.item()):
            die(f"{name}: the naive substitute's loss {out.loss.item()} differs from fla's {loss.item()}")
    else:
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
        logits = out.logits.detach().float().clone()
        loss = out.loss
        loss.backward()
    if spec.get("attn") is not None:
        source += ("; softmax attention layers: fla's Attention with flash_attn_func / flash_attn_varlen_func "
                   "replaced by flash_attn_f32 / flash_attn_varlen_f32 (float32 PyTorch, same math)")
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).double(), input_ids[:, 1:].reshape(-1))
    if abs(ref.item() - loss.item()) > 1e-5 * abs(ref.item()):
        die(f"fla's loss {loss.item()} is not the plain mean CE of its logits ({ref.item()})")
    grads = {}
    for pname, p in model.named_parameters():
        if p.grad is None:
            die(f"parameter {pname} got no gradient")
        grads[f"grad.{pname}"] = p.grad.detach().float().cpu().contiguous()

    if family == "gla":
        log(f"{name}: fused_recurrent diagnostic")
        # diagnostic: fla's fused recurrent kernels on the same weights and ids (TF32 check)
        rec_cfg = copy.deepcopy(config)
        rec_cfg.attn_mode = "fused_recurrent"
        rec = Model(rec_cfg).to(dtype=torch.float32).cuda()
        rec.load_state_dict(model.state_dict())
        with torch.no_grad():
            rec_logits = rec(input_ids=input_ids, use_cache=False).logits.float()
        diag_name, diag = "chunk_vs_fused_recurrent_logits_rel", rel(rec_logits, logits)
        del rec
    elif family == "delta_net":
        # diagnostic: fla's fused recurrent kernel against the naive substitute on the same model
        import fla.layers.delta_net as dn_layer

        kernel = dn_layer.fused_recurrent_delta_rule
        dn_layer.fused_recurrent_delta_rule = lambda **kw: naive_delta_rule(torch, **kw)
        try:
            with torch.no_grad():
                naive_logits = model(input_ids=input_ids, use_cache=False).logits.float()
        finally:
            dn_layer.fused_recurrent_delta_rule = kernel
        diag_name, diag = "fused_recurrent_vs_naive_logits_rel", rel(naive_logits, logits)

    log(f"{name}: generate()")
    model.eval()
    top2 = step_logits.topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1]).min().item()
    try:
        hf = greedy_hf(torch, model, prompt)
        hf_note = "generate() agrees" if hf == toks else f"generate() DIFFERS: {hf}"
    except Exception as e:  # report, do not fail: the manual loop is fla's decode path too
        hf_note = f"generate() failed: {type(e).__name__}: {e}"

    log(f"{name}: save_pretrained + reload")
    save_model(model, out_dir)
    # the saved directory must reproduce the logits
    re = Model.from_pretrained(out_dir, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        re_logits = re(input_ids=input_ids, use_cache=False).logits.float()
    reload_err = rel(re_logits, logits)
    if reload_err > 1e-6:
        die(f"{name}: the saved checkpoint gives other logits (rel {reload_err:.2e})")
    with safetensors_torch.safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    params = {n for n, _ in model.named_parameters()}
    extra, missing = saved - params - {"lm_head.weight"}, params - saved
    if extra or missing:
        die(f"{name}: model.safetensors keys differ from named_parameters: extra {sorted(extra)}, "
            f"missing {sorted(missing)}")

    tensors = {
        "input_ids": input_ids.cpu().to(torch.int64).contiguous(),
        "logits": logits.cpu().contiguous(),
        "loss": loss.detach().float().reshape(1).cpu(),
        "greedy_prompt": prompt[0].cpu().to(torch.int64).contiguous(),
        "greedy_tokens": torch.tensor(toks, dtype=torch.int64),
        "greedy_logits": step_logits.cpu().contiguous(),
        **grads,
    }
    import fla
    import transformers
    import triton
    meta = {
        "variant": name,
        "seed": str(spec["seed"]),
        "initializer_range": str(config.initializer_range),
        "fla": fla.__version__,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0),
        "TRITON_F32_DEFAULT": os.environ.get("TRITON_F32_DEFAULT", ""),
        "family": family,
        "source": source,
        "labels": "input_ids (the model shifts them: target[t] = ids[t+1], last ignored)",
        diag_name: f"{diag:.3e}",
        "greedy_min_top2_margin": f"{margin:.4e}",
        "hf_generate": hf_note,
    }
    fix_path = os.path.join(out_dir, "fixture.safetensors")
    safetensors_torch.save_file(tensors, fix_path, metadata=meta)

    sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in sorted(os.listdir(out_dir))}
    with open(os.path.join(out_dir, "config.json")) as f:
        cfg = json.load(f)
    print(f"[{name}] loss {loss.item():.6f}  max|logit| {logits.abs().max().item():.4f}  "
          f"params {sum(p.numel() for p in model.parameters())}  grads {len(grads)}")
    print(f"[{name}] {diag_name} {diag:.2e}; reload rel {reload_err:.1e}; {source}")
    print(f"[{name}] initializer_range {config.initializer_range}; greedy {toks} "
          f"(min top-2 margin {margin:.3e}); {hf_note}")
    print(f"[{name}] config: use_short_conv={cfg.get('use_short_conv')} "
          f"tie_word_embeddings={cfg.get('tie_word_embeddings')} "
          f"intermediate_size={cfg.get('intermediate_size')} "
          f"fuse_cross_entropy={cfg.get('fuse_cross_entropy')} dtype={cfg.get('dtype', cfg.get('torch_dtype'))}")
    print(f"[{name}] files: " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in sizes.items()))
    return sum(sizes.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory; one subdirectory per variant is written")
    ap.add_argument("--variants", "--only", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    args = ap.parse_args()
    names = [v for v in args.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS:
            die(f"unknown variant {v!r}; known: {list(VARIANTS)}")

    log("importing torch, transformers, fla")
    torch, transformers, triton, fla = import_stack()
    import safetensors.torch as safetensors_torch
    tuning = limit_autotuning()
    patch_flash_attn()

    knob = getattr(getattr(getattr(triton, "knobs", None), "language", None), "fp32_default", "n/a")
    print(f"fla {fla.__version__}, torch {torch.__version__}, triton {triton.__version__} "
          f"(fp32 default: {knob}), transformers {transformers.__version__}, "
          f"device {torch.cuda.get_device_name(0)}, TRITON_F32_DEFAULT={os.environ['TRITON_F32_DEFAULT']}, "
          f"autotuning: {tuning}")
    total = 0
    for v in names:
        total += run_variant(torch, safetensors_torch, v, VARIANTS[v], os.path.join(args.out, v))
    log(f"total {total / 1024:.1f} KiB in {args.out}")


if __name__ == "__main__":
    main()
