//! The delta-rule mixer: fla's `DeltaNet` and `GatedDeltaNet` layers (`model.layers.{l}.attn.*`),
//! one piece of code with the options of [`DeltaDims`] (fla/layers/delta_net.py,
//! fla/layers/gated_deltanet.py, 0.6.0).
//!
//! ```text
//! q, k, v = xn Wq^T, xn Wk^T, xn Wv^T                [N, H*K], [N, H*K], [N, HV*V]
//! q, k    = conv(q), conv(k)                         short conv, SiLU inside when qk_act = silu
//! q, k    = f(q), f(k)                               qk_act (relu, elu + 1, silu without conv)
//! q, k    = q / sum|q|, k / sum|k|                   DeltaNet's qk_norm = "sum" (per head)
//! v       = silu(conv(v))  or  silu(v)               always SiLU
//! beta    = xn Wb^T                                  [N, HV] logits (sigmoid in the op; none: 1, or 2 with allow_neg_eigval)
//! a       = xn Wa^T                                  [N, HV] (Gated DeltaNet: g = -exp(A_log) softplus(a + dt_bias) in the op)
//! o       = delta_rule(q, k, v, beta, g)             L2 norm of q, k in the op (qk_norm = "l2"), scale K^-1/2, [N, HV, V]
//! o       = rmsnorm_head(o) * w_o_norm (* act(xn Wg^T) with the output gate)
//! out     = res + o Wo^T
//! ```
//!
//! Its config is its layer's [`DeltaDims`], kept in its [`DeltaIds`]; its op family is
//! [`crate::backend::DeltaOps`]; its decode state is the backend's `Io` (per layer the delta
//! state `[HV, K, V]` f32 and the three conv caches). `A_log` and `dt_bias` are 1-D, so AdamW
//! applies no weight decay to them (fla's `_no_weight_decay`), by the optimizers' rule.

use crate::backend::{Act, Backend, DeltaDecay, DeltaStorage, ParamId, Plan, F32};
use crate::config::{DeltaDims, FeatureMap, GateAct, QkNorm};
use crate::params::{Init, Table};
use gla_core::DeltaProblem;

/// The delta-rule layer's dims and tensors, in fla's order of registration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeltaIds {
    /// The layer's dims.
    pub dims: DeltaDims,
    /// `[key_dim, D]`
    pub q_proj: ParamId,
    /// `[key_dim, D]`
    pub k_proj: ParamId,
    /// `[value_dim, D]`
    pub v_proj: ParamId,
    /// `[HV, D]` (Gated DeltaNet)
    pub a_proj: Option<ParamId>,
    /// `[HV, D]` (with `use_beta`)
    pub b_proj: Option<ParamId>,
    /// `[HV]` (Gated DeltaNet)
    pub a_log: Option<ParamId>,
    /// `[HV]` (Gated DeltaNet)
    pub dt_bias: Option<ParamId>,
    /// `[key_dim, 1, W]`, `[key_dim, 1, W]`, `[value_dim, 1, W]` (with short conv)
    pub q_conv: Option<ParamId>,
    /// See `q_conv`.
    pub k_conv: Option<ParamId>,
    /// See `q_conv`.
    pub v_conv: Option<ParamId>,
    /// `[value_dim, D]` (with the output gate)
    pub g_proj: Option<ParamId>,
    /// `[V]`
    pub o_norm: ParamId,
    /// `[D, value_dim]`
    pub o_proj: ParamId,
}

/// fla's `A_log` init: `A ~ U(0, 16)`, `A_log = log(A)`.
pub const A_LOG_INIT: Init = Init::LogUniform { lo: 0.0, hi: 16.0 };
/// fla's `dt_bias` init: `dt = exp(U(ln 0.001, ln 0.1))` clamped to `>= 1e-4`, inverse softplus.
pub const DT_BIAS_INIT: Init = Init::InvSoftplusDt { min: 0.001, max: 0.1, floor: 1e-4 };

impl DeltaIds {
    /// Adds the layer's rows under `prefix` (`model.layers.{l}.attn.`) in fla's order, for model
    /// dim `dm`.
    pub fn table(t: &mut Table, p: &str, dm: usize, d: &DeltaDims) -> Self {
        let q_proj = t.add_gemm(format!("{p}q_proj.weight"), vec![d.key_dim, dm]);
        let k_proj = t.add_gemm(format!("{p}k_proj.weight"), vec![d.key_dim, dm]);
        let v_proj = t.add_gemm(format!("{p}v_proj.weight"), vec![d.value_dim, dm]);
        let a_proj = d.decay.then(|| t.add_gemm(format!("{p}a_proj.weight"), vec![d.v_heads, dm]));
        let b_proj = d.use_beta.then(|| t.add_gemm(format!("{p}b_proj.weight"), vec![d.v_heads, dm]));
        let a_log = d.decay.then(|| t.add(format!("{p}A_log"), vec![d.v_heads], A_LOG_INIT));
        let dt_bias = d.decay.then(|| t.add(format!("{p}dt_bias"), vec![d.v_heads], DT_BIAS_INIT));
        let mut conv = |name: &str, c: usize| (d.conv > 0).then(|| t.add(format!("{p}{name}.weight"), vec![c, 1, d.conv], Init::Normal));
        let (q_conv, k_conv, v_conv) = (conv("q_conv1d", d.key_dim), conv("k_conv1d", d.key_dim), conv("v_conv1d", d.value_dim));
        let g_proj = d.output_gate.map(|_| t.add_gemm(format!("{p}g_proj.weight"), vec![d.value_dim, dm]));
        let o_norm = t.add(format!("{p}o_norm.weight"), vec![d.head_v], Init::Ones);
        let o_proj = t.add_gemm(format!("{p}o_proj.weight"), vec![dm, d.value_dim]);
        Self { dims: *d, q_proj, k_proj, v_proj, a_proj, b_proj, a_log, dt_bias, q_conv, k_conv, v_conv, g_proj, o_norm, o_proj }
    }

    /// The three short convolutions' weights, when the layer has them.
    fn convs(&self) -> Option<[ParamId; 3]> {
        match (self.q_conv, self.k_conv, self.v_conv) {
            (Some(q), Some(k), Some(v)) => Some([q, k, v]),
            _ => None,
        }
    }

    /// The decay's parameters `(A_log, dt_bias)`, with their projection's output `a`.
    fn decay<'a, F>(&self, a: Option<&'a F>) -> Option<DeltaDecay<'a, F>> {
        match (a, self.a_log, self.dt_bias) {
            (Some(a), Some(a_log), Some(dt_bias)) => Some(DeltaDecay { a, a_log, dt_bias }),
            _ => None,
        }
    }
}

/// Channels of q, k, v (their projections and convs).
fn chans(dm: &DeltaDims) -> [usize; 3] {
    [dm.key_dim, dm.key_dim, dm.value_dim]
}

/// Whether conv `i` (q, k, v) applies SiLU itself (fla's `ShortConvolution(activation=...)`:
/// v always, q and k with `qk_activation = "silu"`).
fn conv_silu(dm: &DeltaDims, i: usize) -> bool {
    i == 2 || dm.qk_act == FeatureMap::Silu
}

/// The elementwise activation applied after the conv (or the projection without conv) to q, k
/// (`i < 2`) or v, when there is one besides the conv's own SiLU.
fn act(dm: &DeltaDims, i: usize) -> Option<FeatureMap> {
    let f = if i == 2 { FeatureMap::Silu } else { dm.qk_act };
    let in_conv = dm.conv > 0 && conv_silu(dm, i);
    (!in_conv && f != FeatureMap::Identity).then_some(f)
}

/// The short convolutions' outputs for q, k, v (the backward recomputes their pre-activations
/// from the inputs).
struct ConvActs<S: DeltaStorage> {
    out: [S::Act; 3],
}

/// What the forward keeps for the backward (shapes with N = B*T rows).
pub(crate) struct DeltaActs<S: DeltaStorage> {
    lin: [S::Act; 3], // q, k [N, key_dim], v [N, value_dim]: the projections
    conv: Option<ConvActs<S>>,
    act: [Option<S::Act>; 3],  // f(q), f(k), silu(v) where an activation follows (DeltaDims::act)
    norm: Option<[S::Act; 2]>, // sum-normed q, k (qk_norm = "sum")
    beta: Option<S::F32>,      // [N, HV] logits
    a: Option<S::F32>,         // [N, HV] raw decay input
    g_pre: Option<S::Act>,     // [N, value_dim] output-gate pre-activation
    saved: S::DeltaSaved,      // the backend's delta buffers
    o: S::Act,                 // [N, HV, V] delta-rule output
    rstd_o: S::F32,            // [N, HV]
    on: S::Act,                // [N, value_dim] normed (gated) output
}

/// The backward's buffers (shared by the layers of equal dims).
pub(crate) struct DeltaScratch<S: DeltaStorage> {
    d_on: S::F32, // [N, value_dim]
    d_o: S::Act,  // [N, HV, V]
    dg_pre: Option<S::Act>,
    /// dq, dk, dv, dbeta, da (DeltaOps::delta_bwd)
    d5: [S::F32; 5],
    /// GEMM operands of dq, dk, dv: the conv backward's outputs, or operand copies
    dqkv16: [S::Act; 3],
    /// GEMM operands of dbeta, da
    dba16: [S::Act; 2],
}

impl<S: DeltaStorage> DeltaActs<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, dm: &DeltaDims, n: usize) -> Result<Self, B::Error> {
        let ch = chans(dm);
        let three =
            || -> Result<[S::Act; 3], B::Error> { Ok([be.alloc_act(n * ch[0])?, be.alloc_act(n * ch[1])?, be.alloc_act(n * ch[2])?]) };
        let fm = |i: usize| act(dm, i).map(|_| be.alloc_act(n * ch[i])).transpose();
        Ok(Self {
            lin: three()?,
            conv: if dm.conv > 0 { Some(ConvActs { out: three()? }) } else { None },
            act: [fm(0)?, fm(1)?, fm(2)?],
            norm: if dm.qk_norm == QkNorm::Sum { Some([be.alloc_act(n * dm.key_dim)?, be.alloc_act(n * dm.key_dim)?]) } else { None },
            beta: if dm.use_beta { Some(be.alloc_f32(n * dm.v_heads)?) } else { None },
            a: if dm.decay { Some(be.alloc_f32(n * dm.v_heads)?) } else { None },
            g_pre: if dm.output_gate.is_some() { Some(be.alloc_act(n * dm.value_dim)?) } else { None },
            saved: be.alloc_delta_saved(dm, n)?,
            o: be.alloc_act(n * dm.value_dim)?,
            rstd_o: be.alloc_f32(n * dm.v_heads)?,
            on: be.alloc_act(n * dm.value_dim)?,
        })
    }
}

impl<S: DeltaStorage> DeltaScratch<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, dm: &DeltaDims, n: usize) -> Result<Self, B::Error> {
        let ch = chans(dm);
        // with short conv the conv backward writes dq, dk, dv's operands; without, casts do
        let d16 = |len: usize| if dm.conv > 0 { be.alloc_act(len) } else { be.alloc_cast(len) };
        let hv = |on: bool| be.alloc_cast(if on { n * dm.v_heads } else { 0 });
        Ok(Self {
            d_on: be.alloc_f32(n * dm.value_dim)?,
            d_o: be.alloc_act(n * dm.value_dim)?,
            dg_pre: if dm.output_gate.is_some() { Some(be.alloc_act(n * dm.value_dim)?) } else { None },
            d5: be.alloc_delta_grads(dm, n)?,
            dqkv16: [d16(n * ch[0])?, d16(n * ch[1])?, d16(n * ch[2])?],
            dba16: [hv(dm.use_beta)?, hv(dm.decay)?],
        })
    }
}

/// The input of the activation of q, k or v: the conv's output with short conv, the projection
/// otherwise (free functions over the fields, so that other fields can be borrowed mutably).
fn pre_act<'a, A>(lin: &'a [A; 3], conv: Option<&'a [A; 3]>, i: usize) -> &'a A {
    conv.map_or(&lin[i], |c| &c[i])
}

/// q, k or v after its activation.
fn post_act<'a, A>(lin: &'a [A; 3], conv: Option<&'a [A; 3]>, act: &'a [Option<A>; 3], i: usize) -> &'a A {
    act[i].as_ref().unwrap_or_else(|| pre_act(lin, conv, i))
}

/// q, k, v as the op reads them.
fn op_inputs<'a, A>(lin: &'a [A; 3], conv: Option<&'a [A; 3]>, act: &'a [Option<A>; 3], norm: &'a Option<[A; 2]>) -> [&'a A; 3] {
    let p = |i| post_act(lin, conv, act, i);
    match norm {
        Some([q, k]) => [q, k, p(2)],
        None => [p(0), p(1), p(2)],
    }
}

/// `out [N, D] = res + attn(xn)` for `b` sequences of `t` tokens. With `io`, the sequences
/// continue from their inference state of layer `layer` and advance it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<B: Backend>(
    be: &B,
    ids: &DeltaIds,
    a: &mut DeltaActs<B::Buf>,
    plan: &Plan<B>,
    xn: &Act<B>,
    res: &F32<B>,
    out: &mut F32<B>,
    (b, t): (usize, usize),
    layer: usize,
    mut io: Option<&mut B::Io<'_>>,
) -> Result<(), B::Error> {
    let dm = &ids.dims;
    let (n, d) = (b * t, be.dims().d);
    let ch = chans(dm);
    for (i, w) in [ids.q_proj, ids.k_proj, ids.v_proj].into_iter().enumerate() {
        be.linear_fwd(&mut a.lin[i], xn, w, n, d, ch[i])?;
    }
    if let (Some(cv), Some(w)) = (&mut a.conv, ids.convs()) {
        for (i, y) in cv.out.iter_mut().enumerate() {
            be.conv_fwd(y, &a.lin[i], w[i], b, t, ch[i], conv_silu(dm, i), io.as_deref_mut().map(|io| (io, layer, i)))?;
        }
    }
    let conv_out = a.conv.as_ref().map(|c| &c.out);
    for (i, y) in a.act.iter_mut().enumerate() {
        if let (Some(y), Some(f)) = (y, act(dm, i)) {
            be.feature_map_fwd(y, pre_act(&a.lin, conv_out, i), n * ch[i], f)?;
        }
    }
    if let Some(norm) = &mut a.norm {
        for (i, y) in norm.iter_mut().enumerate() {
            be.sum_norm_fwd(y, post_act(&a.lin, conv_out, &a.act, i), n * dm.heads, dm.head_k)?;
        }
    }
    if let (Some(w), Some(beta)) = (ids.b_proj, &mut a.beta) {
        be.linear_fwd_f32(beta, xn, w, n, d, dm.v_heads)?;
    }
    if let (Some(w), Some(x)) = (ids.a_proj, &mut a.a) {
        be.linear_fwd_f32(x, xn, w, n, d, dm.v_heads)?;
    }
    if let (Some(w), Some(gp)) = (ids.g_proj, &mut a.g_pre) {
        be.linear_fwd(gp, xn, w, n, d, dm.value_dim)?;
    }
    let [q, k, v] = op_inputs(&a.lin, conv_out, &a.act, &a.norm);
    be.delta_fwd(dm, plan, &mut a.saved, &mut a.o, q, k, v, a.beta.as_ref(), ids.decay(a.a.as_ref()), io.map(|io| (io, layer)))?;
    let (g, ga) = (a.g_pre.as_ref(), dm.output_gate.unwrap_or(GateAct::Swish));
    be.gated_norm_fwd(&mut a.on, &mut a.rstd_o, &a.o, g, ga, ids.o_norm, n * dm.v_heads)?;
    be.linear_residual_fwd(out, res, &a.on, ids.o_proj, n, dm.value_dim, d)
}

/// Backward of [`forward`] (no inference state) from `dout` (the GEMM operand of the residual
/// stream's gradient): writes `dxn [N, D]` and accumulates the weights' gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend>(
    be: &B,
    ids: &DeltaIds,
    a: &DeltaActs<B::Buf>,
    s: &mut DeltaScratch<B::Buf>,
    plan: &Plan<B>,
    grads: &mut B::Grads,
    xn: &Act<B>,
    dout: &Act<B>,
    dxn: &mut F32<B>,
    (b, t): (usize, usize),
) -> Result<(), B::Error> {
    let dm = &ids.dims;
    let (n, d) = (b * t, be.dims().d);
    let ch = chans(dm);
    // output projection and norm
    be.linear_bwd_x(&mut s.d_on, dout, ids.o_proj, n, dm.value_dim, d, false)?;
    be.linear_bwd_w(grads, ids.o_proj, dout, &a.on, n, dm.value_dim, d)?;
    let (g, ga) = (a.g_pre.as_ref(), dm.output_gate.unwrap_or(GateAct::Swish));
    be.gated_norm_bwd(plan, &mut s.d_o, s.dg_pre.as_mut(), grads, ids.o_norm, &s.d_on, &a.o, g, ga, &a.rstd_o, n * dm.v_heads)?;
    // the delta rule (L2 norm, beta sigmoid and decay inside)
    let conv_out = a.conv.as_ref().map(|c| &c.out);
    let [q, k, v] = op_inputs(&a.lin, conv_out, &a.act, &a.norm);
    let [dq, dk, dv, dbeta, da] = &mut s.d5;
    be.delta_bwd(dm, plan, &a.saved, grads, q, k, v, a.beta.as_ref(), ids.decay(a.a.as_ref()), &s.d_o, [dq, dk, dv, dbeta, da])?;
    // sum norm, then the activations, in place
    if a.norm.is_some() {
        for i in 0..2 {
            be.sum_norm_bwd(&mut s.d5[i], post_act(&a.lin, conv_out, &a.act, i), n * dm.heads, dm.head_k)?;
        }
    }
    for (i, (d, c)) in s.d5.iter_mut().zip(ch).enumerate().take(3) {
        if let Some(f) = act(dm, i) {
            be.feature_map_bwd(d, pre_act(&a.lin, conv_out, i), n * c, f)?;
        }
    }
    // short conv (or the GEMM operands of dq, dk, dv)
    for i in 0..3 {
        match (ids.convs(), &a.conv) {
            (Some(w), Some(_)) => be.conv_bwd(plan, &mut s.dqkv16[i], grads, w[i], &s.d5[i], &a.lin[i], b, t, ch[i], conv_silu(dm, i))?,
            _ => be.cast(&mut s.dqkv16[i], &s.d5[i])?,
        }
    }
    // projections from xn
    for (i, w) in [ids.q_proj, ids.k_proj, ids.v_proj].into_iter().enumerate() {
        let dy = be.operand(&s.dqkv16[i], &s.d5[i]);
        be.linear_bwd_x(dxn, dy, w, n, d, ch[i], i > 0)?;
        be.linear_bwd_w(grads, w, dy, xn, n, d, ch[i])?;
    }
    for (j, w) in [ids.b_proj, ids.a_proj].into_iter().enumerate() {
        if let Some(w) = w {
            be.cast(&mut s.dba16[j], &s.d5[3 + j])?;
            let dy = be.operand(&s.dba16[j], &s.d5[3 + j]);
            be.linear_bwd_x(dxn, dy, w, n, d, dm.v_heads, true)?;
            be.linear_bwd_w(grads, w, dy, xn, n, d, dm.v_heads)?;
        }
    }
    if let (Some(w), Some(dg_pre)) = (ids.g_proj, &s.dg_pre) {
        be.linear_bwd_x(dxn, dg_pre, w, n, d, dm.value_dim, true)?;
        be.linear_bwd_w(grads, w, dg_pre, xn, n, d, dm.value_dim)?;
    }
    Ok(())
}

/// The delta-rule op's problem for `b` rows of `t` tokens (`cu`: packed varlen offsets) of this
/// layer ([`DeltaDims::op_spec`], which every backend shares).
pub(crate) fn problem(dm: &DeltaDims, b: usize, t: usize, cu: Option<Vec<usize>>) -> crate::Result<DeltaProblem> {
    Ok(DeltaProblem::new(dm.op_spec(b, t, cu))?)
}

/// The beta of a layer without `b_proj` ([`DeltaDims::const_beta`]).
pub fn const_beta(dm: &DeltaDims) -> f32 {
    dm.const_beta()
}
