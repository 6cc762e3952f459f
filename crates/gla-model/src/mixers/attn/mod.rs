//! The softmax-attention mixer: fla's `Attention` layer (fla/layers/attn.py, 0.6.0), the layers a
//! hybrid stack names in its config's `attn` key (`model.layers.{l}.attn.*`).
//!
//! ```text
//! q = xn Wq^T (+ bq)          [N, H*Dh]
//! k = xn Wk^T (+ bk)          [N, H_KV*Dh]
//! v = xn Wv^T (+ bv)          [N, H_KV*Dh]
//! q, k = rope(q), rope(k)     per head, GPT-NeoX halves, theta = rope_theta, positions from 0 per sequence
//! o = softmax(q k^T / sqrt(Dh) + causal/window mask) v    per head, GQA: head j reads kv head j / (H / H_KV)
//! out = res + o Wo^T
//! ```
//!
//! Its config is its layer's [`AttnDims`], kept in its [`AttnIds`]; its op family is
//! [`crate::backend::AttnOps`]; its decode state is the backend's `Io` (per layer the KV cache,
//! `[S, H_KV, Dh]` for k and for v, S the tokens seen, or the window as a ring buffer). fla's
//! `q_norm`/`k_norm` (`qk_norm`) are not built: fla 0.6.0's `get_attention` never passes
//! `qk_norm` to the layer, so no fla hybrid checkpoint has them (the config refuses the key).
//! The biases are 1-D, so AdamW applies no weight decay to them (fla's `_no_weight_decay`).

use crate::backend::{Act, AttnStorage, Backend, ParamId, Plan, F32};
use crate::config::AttnDims;
use crate::params::{Init, Table};

/// The attention layer's dims and tensors, in fla's order of registration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnIds {
    /// The layer's dims.
    pub dims: AttnDims,
    /// `[H*Dh, D]`
    pub q_proj: ParamId,
    /// `[H*Dh]` (with `qkv_bias`)
    pub q_bias: Option<ParamId>,
    /// `[H_KV*Dh, D]`
    pub k_proj: ParamId,
    /// `[H_KV*Dh]` (with `qkv_bias`)
    pub k_bias: Option<ParamId>,
    /// `[H_KV*Dh, D]`
    pub v_proj: ParamId,
    /// `[H_KV*Dh]` (with `qkv_bias`)
    pub v_bias: Option<ParamId>,
    /// `[D, H*Dh]` (no bias)
    pub o_proj: ParamId,
}

impl AttnIds {
    /// Adds the layer's rows under `prefix` (`model.layers.{l}.attn.`) in fla's order, for
    /// model dim `dm`: each `nn.Linear`'s weight then its bias (fla's init: normal weights,
    /// zero biases).
    pub fn table(t: &mut Table, p: &str, dm: usize, d: &AttnDims) -> Self {
        let mut lin = |name: &str, out: usize, bias: bool| {
            let w = t.add_gemm(format!("{p}{name}.weight"), vec![out, dm]);
            (w, bias.then(|| t.add(format!("{p}{name}.bias"), vec![out], Init::Zeros)))
        };
        let (q_proj, q_bias) = lin("q_proj", d.q_dim(), d.qkv_bias);
        let (k_proj, k_bias) = lin("k_proj", d.kv_dim(), d.qkv_bias);
        let (v_proj, v_bias) = lin("v_proj", d.kv_dim(), d.qkv_bias);
        let o_proj = t.add_gemm(format!("{p}o_proj.weight"), vec![dm, d.q_dim()]);
        Self { dims: *d, q_proj, q_bias, k_proj, k_bias, v_proj, v_bias, o_proj }
    }

    /// q, k, v's projections and biases.
    fn proj(&self) -> [(ParamId, Option<ParamId>); 3] {
        [(self.q_proj, self.q_bias), (self.k_proj, self.k_bias), (self.v_proj, self.v_bias)]
    }
}

/// Widths of q, k, v.
fn chans(md: &AttnDims) -> [usize; 3] {
    [md.q_dim(), md.kv_dim(), md.kv_dim()]
}

/// What the forward keeps for the backward (N = B*T rows).
pub(crate) struct AttnActs<S: AttnStorage> {
    lin: [S::Act; 3], // q, k, v after their projections (and biases)
    rot: [S::Act; 2], // q, k after RoPE: the op's inputs
    saved: S::AttnSaved,
    o: S::Act, // [N, H*Dh]
}

/// The backward's buffers (shared by the layers of equal dims).
pub(crate) struct AttnScratch<S: AttnStorage> {
    d_o: S::Act,     // [N, H*Dh]
    d3: [S::F32; 3], // dq, dk, dv
    d16: [S::Act; 3],
}

impl<S: AttnStorage> AttnActs<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, md: &AttnDims, n: usize) -> Result<Self, B::Error> {
        let ch = chans(md);
        Ok(Self {
            lin: [be.alloc_act(n * ch[0])?, be.alloc_act(n * ch[1])?, be.alloc_act(n * ch[2])?],
            rot: [be.alloc_act(n * ch[0])?, be.alloc_act(n * ch[1])?],
            saved: be.alloc_attn_saved(md, n)?,
            o: be.alloc_act(n * ch[0])?,
        })
    }
}

impl<S: AttnStorage> AttnScratch<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, md: &AttnDims, n: usize) -> Result<Self, B::Error> {
        let ch = chans(md);
        Ok(Self {
            d_o: be.alloc_act(n * ch[0])?,
            d3: be.alloc_attn_grads(md, n)?,
            d16: [be.alloc_cast(n * ch[0])?, be.alloc_cast(n * ch[1])?, be.alloc_cast(n * ch[2])?],
        })
    }
}

/// `out [N, D] = res + attn(xn)` for `b` sequences of `t` tokens. With `io`, the sequences
/// continue from their KV caches of layer `layer` (RoPE at their positions) and extend them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<B: Backend>(
    be: &B,
    ids: &AttnIds,
    a: &mut AttnActs<B::Buf>,
    plan: &Plan<B>,
    xn: &Act<B>,
    res: &F32<B>,
    out: &mut F32<B>,
    (b, t): (usize, usize),
    layer: usize,
    io: Option<&mut B::Io<'_>>,
) -> Result<(), B::Error> {
    let md = &ids.dims;
    let (n, d) = (b * t, be.dims().d);
    let ch = chans(md);
    for (i, (w, bias)) in ids.proj().into_iter().enumerate() {
        be.linear_fwd(&mut a.lin[i], xn, w, n, d, ch[i])?;
        if let Some(bias) = bias {
            be.bias_fwd(&mut a.lin[i], bias, n)?;
        }
    }
    for (i, heads) in [md.heads, md.kv_heads].into_iter().enumerate() {
        be.rope_fwd(md, plan, &mut a.rot[i], &a.lin[i], heads, io.as_deref())?;
    }
    be.attn_fwd(md, plan, &mut a.saved, &mut a.o, &a.rot[0], &a.rot[1], &a.lin[2], io.map(|io| (io, layer)))?;
    be.linear_residual_fwd(out, res, &a.o, ids.o_proj, n, md.q_dim(), d)
}

/// Backward of [`forward`] (no inference state) from `dout` (the GEMM operand of the residual
/// stream's gradient): writes `dxn [N, D]` and accumulates the weights' gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend>(
    be: &B,
    ids: &AttnIds,
    a: &AttnActs<B::Buf>,
    s: &mut AttnScratch<B::Buf>,
    plan: &Plan<B>,
    grads: &mut B::Grads,
    xn: &Act<B>,
    dout: &Act<B>,
    dxn: &mut F32<B>,
    (b, t): (usize, usize),
) -> Result<(), B::Error> {
    let md = &ids.dims;
    let (n, d) = (b * t, be.dims().d);
    let ch = chans(md);
    be.linear_bwd_x_act(&mut s.d_o, dout, ids.o_proj, n, md.q_dim(), d)?;
    be.linear_bwd_w(grads, ids.o_proj, dout, &a.o, n, md.q_dim(), d)?;
    let [dq, dk, dv] = &mut s.d3;
    be.attn_bwd(md, plan, &a.saved, &a.rot[0], &a.rot[1], &a.lin[2], &a.o, &s.d_o, [dq, dk, dv])?;
    for (i, heads) in [md.heads, md.kv_heads].into_iter().enumerate() {
        be.rope_bwd(md, plan, &mut s.d3[i], heads)?;
    }
    for (i, (w, bias)) in ids.proj().into_iter().enumerate() {
        if let Some(bias) = bias {
            be.bias_bwd(plan, grads, bias, &s.d3[i], n)?;
        }
        be.cast(&mut s.d16[i], &s.d3[i])?;
        let dy = be.operand(&s.d16[i], &s.d3[i]);
        be.linear_bwd_x(dxn, dy, w, n, d, ch[i], i > 0)?;
        be.linear_bwd_w(grads, w, dy, xn, n, d, ch[i])?;
    }
    Ok(())
}
