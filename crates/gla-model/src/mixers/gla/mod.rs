//! The GLA mixer: fla's `GatedLinearAttention` layer (`model.layers.{l}.attn.*`).
//!
//! ```text
//! q, k, v = xn Wq^T, xn Wk^T, xn Wv^T   (+ causal conv + SiLU with use_short_conv)
//! q, k    = f(q), f(k)                  (with a feature map)
//! gk = max(logsigmoid((xn W0^T) W1^T + b1) / 16, clamp_min)  [N, key_dim_kv]
//! o  = GLA(q, k, v, gk) per head, scale = K^-1/2, GQA repeats in the backend   [N, H, V]
//! o  = rmsnorm_head(o) * w_gnorm * swish(xn Wg^T)                            [N, H, V]
//! out = res + o Wo^T
//! ```
//!
//! Its config is its layer's [`GlaDims`] (heads, key/value dims, gate, conv, feature map), kept
//! in its [`GlaIds`]; its op family is [`crate::backend::GlaOps`]; its decode state is the
//! backend's `Io` (per layer the recurrent state `[H, K, V]` f32 and the three conv caches).

use crate::backend::GlaStorage;
use crate::backend::{Act, Backend, ParamId, F32};
use crate::config::{GateAct, GlaDims};
use crate::params::{Init, Table};
use gla_core::{GateKind, Problem, ProblemSpec};

/// fla switches from the chunked to the fused recurrent op for inputs of at most this many
/// tokens (`mode = 'fused_recurrent' if T <= 64`).
pub const RECURRENT_MAX_T: usize = 64;

/// The GLA layer's dims and tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlaIds {
    /// The layer's dims.
    pub dims: GlaDims,
    /// `[key_dim, D]`
    pub q_proj: ParamId,
    /// `[key_dim_kv, D]`
    pub k_proj: ParamId,
    /// `[value_dim_kv, D]`
    pub v_proj: ParamId,
    /// `[key_dim, 1, W]`, `[key_dim_kv, 1, W]`, `[value_dim_kv, 1, W]` (with short conv)
    pub q_conv: Option<ParamId>,
    /// See `q_conv`.
    pub k_conv: Option<ParamId>,
    /// See `q_conv`.
    pub v_conv: Option<ParamId>,
    /// `[value_dim, D]` (when the output gate is on)
    pub g_proj: Option<ParamId>,
    /// `[16, D]`
    pub gk0: ParamId,
    /// `[key_dim_kv, 16]`
    pub gk1: ParamId,
    /// `[key_dim_kv]`
    pub gk1_bias: ParamId,
    /// `[D, value_dim]`
    pub o_proj: ParamId,
    /// `[head_v]`
    pub g_norm: ParamId,
}

impl GlaIds {
    /// Adds the layer's rows under `prefix` (`model.layers.{l}.attn.`) in fla's order.
    pub fn table(t: &mut Table, p: &str, dm: usize, d: &GlaDims) -> Self {
        let q_proj = t.add_gemm(format!("{p}q_proj.weight"), vec![d.key_dim, dm]);
        let k_proj = t.add_gemm(format!("{p}k_proj.weight"), vec![d.key_dim_kv, dm]);
        let v_proj = t.add_gemm(format!("{p}v_proj.weight"), vec![d.value_dim_kv, dm]);
        let mut conv = |name: &str, c: usize| (d.conv > 0).then(|| t.add(format!("{p}{name}.weight"), vec![c, 1, d.conv], Init::Normal));
        let (q_conv, k_conv, v_conv) = (conv("q_conv1d", d.key_dim), conv("k_conv1d", d.key_dim_kv), conv("v_conv1d", d.value_dim_kv));
        let g_proj = d.output_gate.then(|| t.add_gemm(format!("{p}g_proj.weight"), vec![d.value_dim, dm]));
        let gk0 = t.add_gemm(format!("{p}gk_proj.0.weight"), vec![d.gate_rank, dm]);
        let gk1 = t.add_gemm(format!("{p}gk_proj.1.weight"), vec![d.key_dim_kv, d.gate_rank]);
        let gk1_bias = t.add(format!("{p}gk_proj.1.bias"), vec![d.key_dim_kv], Init::Zeros);
        let o_proj = t.add_gemm(format!("{p}o_proj.weight"), vec![dm, d.value_dim]);
        let g_norm = t.add(format!("{p}{}.weight", d.gnorm_name), vec![d.head_v], Init::Ones);
        Self { dims: *d, q_proj, k_proj, v_proj, q_conv, k_conv, v_conv, g_proj, gk0, gk1, gk1_bias, o_proj, g_norm }
    }

    /// The three short convolutions' weights, when the layer has them.
    fn convs(&self) -> Option<[ParamId; 3]> {
        match (self.q_conv, self.k_conv, self.v_conv) {
            (Some(q), Some(k), Some(v)) => Some([q, k, v]),
            _ => None,
        }
    }
}

/// The short convolutions' outputs for q, k, v (the backward recomputes their pre-activations
/// from the inputs).
struct ConvActs<S: GlaStorage> {
    out: [S::Act; 3],
}

/// What the forward keeps for the backward (shapes with N = B*T rows).
pub(crate) struct GlaActs<S: GlaStorage> {
    q_lin: S::Act, // [N, key_dim]
    k_lin: S::Act, // [N, key_dim_kv]
    v_lin: S::Act, // [N, value_dim_kv]
    conv: Option<ConvActs<S>>,
    fm: Option<[S::Act; 2]>, // f(q) [N, key_dim], f(k) [N, key_dim_kv] with a feature map
    g_pre: Option<S::Act>,   // [N, value_dim] output-gate pre-activation
    gk_lr: S::Act,           // [N, 16]
    gk_raw: S::F32,          // [N, key_dim_kv], bias added
    gk: S::Act,              // [N, key_dim_kv] log-gate
    gla: S::GlaSaved,        // the backend's GLA buffers (GQA / value-split repeats)
    o: S::Act,               // [N, H, V] GLA output
    rstd_o: S::F32,          // [N, H]
    on: S::Act,              // [N, value_dim] gated-normed output
}

/// The backward's buffers (shared by every GLA layer).
pub(crate) struct GlaScratch<S: GlaStorage> {
    d_on: S::F32, // [N, value_dim]
    d_o: S::Act,  // [N, H, V]
    dg_pre: Option<S::Act>,
    /// dq, dk, dv, dg at the model's heads (GlaOps::gla_bwd)
    dqkvg: [S::F32; 4],
    dgk_raw: S::F32,   // [N, key_dim_kv]
    dgk_raw16: S::Act, // its GEMM operand
    dgk_lr: S::Act,    // [N, 16]
    /// GEMM operands of dq, dk, dv: the conv backward's outputs, or operand copies
    dqkv16: [S::Act; 3],
}

impl<S: GlaStorage> GlaActs<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, dm: &GlaDims, n: usize) -> Result<Self, B::Error> {
        let (kd, kdkv, vd, vdkv) = (dm.key_dim, dm.key_dim_kv, dm.value_dim, dm.value_dim_kv);
        let three = || -> Result<[S::Act; 3], B::Error> { Ok([be.alloc_act(n * kd)?, be.alloc_act(n * kdkv)?, be.alloc_act(n * vdkv)?]) };
        Ok(Self {
            q_lin: be.alloc_act(n * kd)?,
            k_lin: be.alloc_act(n * kdkv)?,
            v_lin: be.alloc_act(n * vdkv)?,
            conv: if dm.conv > 0 { Some(ConvActs { out: three()? }) } else { None },
            fm: if dm.feature_map.is_some() { Some([be.alloc_act(n * kd)?, be.alloc_act(n * kdkv)?]) } else { None },
            g_pre: if dm.output_gate { Some(be.alloc_act(n * vd)?) } else { None },
            gk_lr: be.alloc_act(n * dm.gate_rank)?,
            gk_raw: be.alloc_f32(n * kdkv)?,
            gk: be.alloc_act(n * kdkv)?,
            gla: be.alloc_gla_saved(dm, n)?,
            o: be.alloc_act(n * vd)?,
            rstd_o: be.alloc_f32(n * dm.heads)?,
            on: be.alloc_act(n * vd)?,
        })
    }
}

/// q, k, v before the feature map: the conv outputs with short convolution, the projections
/// otherwise (free functions over the fields, so that other fields can be borrowed mutably).
fn qkv<'a, S: GlaStorage>(lin: [&'a S::Act; 3], conv: &'a Option<ConvActs<S>>) -> [&'a S::Act; 3] {
    match conv {
        Some(c) => [&c.out[0], &c.out[1], &c.out[2]],
        None => lin,
    }
}

/// q, k, v as the GLA op reads them: [`qkv`] with f(q), f(k) when the model has a feature map.
fn op_inputs<'a, A>(pre: [&'a A; 3], fm: &'a Option<[A; 2]>) -> [&'a A; 3] {
    match fm {
        Some([fq, fk]) => [fq, fk, pre[2]],
        None => pre,
    }
}

impl<S: GlaStorage> GlaScratch<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, dm: &GlaDims, n: usize) -> Result<Self, B::Error> {
        // with short conv the conv backward writes dq, dk, dv's operands; without, casts do
        let d16 = |len: usize| if dm.conv > 0 { be.alloc_act(len) } else { be.alloc_cast(len) };
        Ok(Self {
            d_on: be.alloc_f32(n * dm.value_dim)?,
            d_o: be.alloc_act(n * dm.value_dim)?,
            dg_pre: if dm.output_gate { Some(be.alloc_act(n * dm.value_dim)?) } else { None },
            dqkvg: be.alloc_gla_grads(dm, n)?,
            dgk_raw: be.alloc_f32(n * dm.key_dim_kv)?,
            dgk_raw16: be.alloc_cast(n * dm.key_dim_kv)?,
            dgk_lr: be.alloc_act(n * dm.gate_rank)?,
            dqkv16: [d16(n * dm.key_dim)?, d16(n * dm.key_dim_kv)?, d16(n * dm.value_dim_kv)?],
        })
    }
}

/// `out [N, D] = res + attn(xn)` for `b` sequences of `t` tokens. With `io`, the sequences
/// continue from their inference state of layer `layer` and advance it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<B: Backend>(
    be: &B,
    ids: &GlaIds,
    a: &mut GlaActs<B::Buf>,
    plan: &crate::backend::Plan<B>,
    xn: &Act<B>,
    res: &F32<B>,
    out: &mut F32<B>,
    (b, t): (usize, usize),
    layer: usize,
    mut io: Option<&mut B::Io<'_>>,
) -> Result<(), B::Error> {
    let dm = &ids.dims;
    let (n, d) = (b * t, be.dims().d);
    be.linear_fwd(&mut a.q_lin, xn, ids.q_proj, n, d, dm.key_dim)?;
    be.linear_fwd(&mut a.k_lin, xn, ids.k_proj, n, d, dm.key_dim_kv)?;
    be.linear_fwd(&mut a.v_lin, xn, ids.v_proj, n, d, dm.value_dim_kv)?;
    if let (Some(cv), Some(w)) = (&mut a.conv, ids.convs()) {
        let ins = [(&a.q_lin, dm.key_dim), (&a.k_lin, dm.key_dim_kv), (&a.v_lin, dm.value_dim_kv)];
        for (i, ((src, c), y)) in ins.into_iter().zip(cv.out.iter_mut()).enumerate() {
            be.conv_fwd(y, src, w[i], b, t, c, true, io.as_deref_mut().map(|io| (io, layer, i)))?;
        }
    }
    if let (Some(gw), Some(gp)) = (ids.g_proj, &mut a.g_pre) {
        be.linear_fwd(gp, xn, gw, n, d, dm.value_dim)?;
    }
    be.linear_fwd(&mut a.gk_lr, xn, ids.gk0, n, d, dm.gate_rank)?;
    be.linear_fwd_f32(&mut a.gk_raw, &a.gk_lr, ids.gk1, n, dm.gate_rank, dm.key_dim_kv)?;
    be.gate_fwd(dm, &mut a.gk, &mut a.gk_raw, ids.gk1_bias, n)?;
    let pre = qkv([&a.q_lin, &a.k_lin, &a.v_lin], &a.conv);
    if let (Some(f), Some([fq, fk])) = (dm.feature_map, &mut a.fm) {
        be.feature_map_fwd(fq, pre[0], n * dm.key_dim, f)?;
        be.feature_map_fwd(fk, pre[1], n * dm.key_dim_kv, f)?;
    }
    let [q, k, v] = op_inputs(pre, &a.fm);
    be.gla_fwd(dm, plan, &mut a.gla, &mut a.o, q, k, v, &a.gk, io.map(|io| (io, layer)))?;
    be.gated_norm_fwd(&mut a.on, &mut a.rstd_o, &a.o, a.g_pre.as_ref(), GateAct::Swish, ids.g_norm, n * dm.heads)?;
    be.linear_residual_fwd(out, res, &a.on, ids.o_proj, n, dm.value_dim, d)
}

/// Backward of [`forward`] (no inference state) from `dout` (the GEMM operand of the residual
/// stream's gradient): writes `dxn [N, D]` and accumulates the weights' gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend>(
    be: &B,
    ids: &GlaIds,
    a: &GlaActs<B::Buf>,
    s: &mut GlaScratch<B::Buf>,
    plan: &crate::backend::Plan<B>,
    grads: &mut B::Grads,
    xn: &Act<B>,
    dout: &Act<B>,
    dxn: &mut F32<B>,
    (b, t): (usize, usize),
) -> Result<(), B::Error> {
    let dm = &ids.dims;
    let (n, d) = (b * t, be.dims().d);
    be.linear_bwd_x(&mut s.d_on, dout, ids.o_proj, n, dm.value_dim, d, false)?;
    be.linear_bwd_w(grads, ids.o_proj, dout, &a.on, n, dm.value_dim, d)?;
    let g_pre = a.g_pre.as_ref();
    be.gated_norm_bwd(
        plan,
        &mut s.d_o,
        s.dg_pre.as_mut(),
        grads,
        ids.g_norm,
        &s.d_on,
        &a.o,
        g_pre,
        GateAct::Swish,
        &a.rstd_o,
        n * dm.heads,
    )?;
    let pre = qkv([&a.q_lin, &a.k_lin, &a.v_lin], &a.conv);
    let [q, k, v] = op_inputs(pre, &a.fm);
    let [dq, dk, dv, dgk] = &mut s.dqkvg;
    be.gla_bwd(dm, plan, &a.gla, q, k, v, &a.gk, &s.d_o, [dq, dk, dv, dgk])?;
    // feature map: d(pre) = d(f(pre)) f'(pre), in place
    if let Some(f) = dm.feature_map {
        be.feature_map_bwd(dq, pre[0], n * dm.key_dim, f)?;
        be.feature_map_bwd(dk, pre[1], n * dm.key_dim_kv, f)?;
    }
    // gate: gk_raw = gk_lr W1^T + b1; gk = gate(gk_raw)
    be.gate_bwd(dm, plan, &mut s.dgk_raw, &mut s.dgk_raw16, grads, ids.gk1_bias, &s.dqkvg[3], &a.gk_raw, n)?;
    let dgk_raw = be.operand(&s.dgk_raw16, &s.dgk_raw);
    be.linear_bwd_w(grads, ids.gk1, dgk_raw, &a.gk_lr, n, dm.gate_rank, dm.key_dim_kv)?;
    be.linear_bwd_x_act(&mut s.dgk_lr, dgk_raw, ids.gk1, n, dm.gate_rank, dm.key_dim_kv)?;
    // short conv (or the GEMM operands of dq, dk, dv)
    let chans = [dm.key_dim, dm.key_dim_kv, dm.value_dim_kv];
    let lins = [&a.q_lin, &a.k_lin, &a.v_lin];
    for i in 0..3 {
        match (ids.convs(), &a.conv) {
            (Some(w), Some(_)) => be.conv_bwd(plan, &mut s.dqkv16[i], grads, w[i], &s.dqkvg[i], lins[i], b, t, chans[i], true)?,
            _ => be.cast(&mut s.dqkv16[i], &s.dqkvg[i])?,
        }
    }
    let dq = be.operand(&s.dqkv16[0], &s.dqkvg[0]);
    let dk = be.operand(&s.dqkv16[1], &s.dqkvg[1]);
    let dv = be.operand(&s.dqkv16[2], &s.dqkvg[2]);
    // projections from xn
    be.linear_bwd_x(dxn, dq, ids.q_proj, n, d, dm.key_dim, false)?;
    be.linear_bwd_x(dxn, dk, ids.k_proj, n, d, dm.key_dim_kv, true)?;
    be.linear_bwd_x(dxn, dv, ids.v_proj, n, d, dm.value_dim_kv, true)?;
    be.linear_bwd_x(dxn, &s.dgk_lr, ids.gk0, n, d, dm.gate_rank, true)?;
    be.linear_bwd_w(grads, ids.q_proj, dq, xn, n, d, dm.key_dim)?;
    be.linear_bwd_w(grads, ids.k_proj, dk, xn, n, d, dm.key_dim_kv)?;
    be.linear_bwd_w(grads, ids.v_proj, dv, xn, n, d, dm.value_dim_kv)?;
    be.linear_bwd_w(grads, ids.gk0, &s.dgk_lr, xn, n, d, dm.gate_rank)?;
    if let (Some(g), Some(dg_pre)) = (ids.g_proj, &s.dg_pre) {
        be.linear_bwd_x(dxn, dg_pre, g, n, d, dm.value_dim, true)?;
        be.linear_bwd_w(grads, g, dg_pre, xn, n, d, dm.value_dim)?;
    }
    Ok(())
}

/// The GLA op's problem for `b` rows of `t` tokens (`cu`: packed varlen offsets) of this layer.
pub(crate) fn problem(dims: &GlaDims, b: usize, t: usize, cu: Option<Vec<usize>>) -> crate::Result<Problem> {
    Ok(Problem::new(ProblemSpec {
        b,
        t,
        h: dims.heads,
        k: dims.head_k,
        v: dims.head_v,
        gate: GateKind::PerKey,
        scale: None,
        cu_seqlens: cu,
    })?)
}
