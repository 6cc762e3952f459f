//! The GLA language model (fla's `GLAForCausalLM`), with an explicit forward and backward.
//!
//! ```text
//! x = embeddings[ids]                                           [N, D]   N = B*T
//! for each block:
//!     h  = attn_norm(x)                                         RMSNorm
//!     q, k, v = h Wq^T, h Wk^T, h Wv^T   (+ causal conv + SiLU with use_short_conv)
//!     gk = max(logsigmoid((h W0^T) W1^T + b1) / 16, clamp_min)  [N, key_dim_kv]
//!     k, v, gk repeated over the head groups (GQA)
//!     o  = GLA(q, k, v, gk)  per head, scale = K^-1/2            [N, H, V]
//!     o  = rmsnorm_head(o) * w_gnorm * swish(h Wg^T)            [N, H, V]
//!     x  = x + o Wo^T
//!     x  = x + down(silu(gate(mlp_norm(x))) * up(mlp_norm(x)))
//! logits = norm(x) W_lm^T     (W_lm = embeddings when tied)
//! loss   = mean cross-entropy over the rows whose target is not -100
//! ```
//!
//! [`forward`] keeps what the backward needs in [`Acts`]; [`backward`] walks the same calls in
//! reverse and accumulates into a gradient arena laid out like the parameters. Both are written
//! once over the [`Backend`] trait: [`GlaModel::forward`] / [`GlaModel::backward`] run them on the
//! CPU ([`crate::cpu::Cpu`], f32), gla-cuda on a GPU. [`body`] (embedding, blocks, final norm) is
//! also the inference forward of both (prefill and decode, with the sequences' states in the
//! backend's `Io`). Only rows with a target reach the lm_head (the loss does not need the
//! others), which makes recall tasks with few labelled rows cheap.

use gla_core::{GateKind, Problem, ProblemSpec};

use crate::backend::{Backend, Storage};
use crate::config::{Dims, GlaConfig};
use crate::cpu::{Cpu, CpuBuf};
use crate::params::Layout;
use crate::{Error, Result};

/// The label value that is skipped by the loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// A GLA language model: config, derived dims, the parameter table and the f32 weights.
#[derive(Debug, Clone)]
pub struct GlaModel {
    /// The fla config it was built from (written back to `config.json`).
    pub config: GlaConfig,
    /// Derived dims.
    pub dims: Dims,
    /// The parameter table.
    pub layout: Layout,
    /// The weights, one arena in table order.
    pub params: Vec<f32>,
}

/// What one forward returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossOut {
    /// Mean cross-entropy over the labelled rows (0 when there are none).
    pub loss: f64,
    /// Labelled rows.
    pub n_valid: usize,
    /// Labelled rows whose argmax prediction equals the target.
    pub correct: usize,
}

/// The short convolutions' tensors of one block: pre-activations and outputs of q, k, v.
struct ConvActs<S: Storage> {
    pre: [S::Act; 3],
    out: [S::Act; 3],
}

/// Saved tensors of one block (shapes with N = B*T rows).
struct LayerActs<S: Storage> {
    rstd1: S::F32, // [N]
    xn1: S::Act,   // [N, D]
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
    x_mid: S::F32,           // [N, D] residual after attention
    rstd2: S::F32,           // [N]
    xn2: S::Act,             // [N, D]
    a: S::Act,               // [N, I] gate_proj output
    b: S::Act,               // [N, I] up_proj output
    h: S::Act,               // [N, I] silu(a) * b
}

/// q, k, v before the feature map: the conv outputs with short convolution, the projections
/// otherwise.
fn qkv<'a, S: Storage>(lin: [&'a S::Act; 3], conv: &'a Option<ConvActs<S>>) -> [&'a S::Act; 3] {
    match conv {
        Some(c) => [&c.out[0], &c.out[1], &c.out[2]],
        None => lin,
    }
}

/// q, k, v as the GLA op reads them: [`qkv`] with f(q), f(k) when the model has a feature map.
fn gla_in<'a, A>(pre: [&'a A; 3], fm: &'a Option<[A; 2]>) -> [&'a A; 3] {
    match fm {
        Some([fq, fk]) => [fq, fk, pre[2]],
        None => pre,
    }
}

/// Backward buffers (allocated once, reused by every layer).
struct Scratch<S: Storage> {
    dres: S::F32,   // [N, D]
    dres16: S::Act, // its GEMM operand (Backend::alloc_cast)
    dxn: S::F32,    // [N, D]
    dh: S::F32,     // [N, I]
    da: S::Act,     // [N, I]
    db: S::Act,     // [N, I]
    d_on: S::F32,   // [N, value_dim]
    d_o: S::Act,    // [N, H, V]
    dg_pre: Option<S::Act>,
    /// dq, dk, dv, dg at the model's heads (Backend::gla_bwd)
    dqkvg: [S::F32; 4],
    dgk_raw: S::F32,   // [N, key_dim_kv]
    dgk_raw16: S::Act, // its GEMM operand
    dgk_lr: S::Act,    // [N, 16]
    /// GEMM operands of dq, dk, dv: the conv backward's outputs, or operand copies
    dqkv16: [S::Act; 3],
}

/// Every tensor a forward leaves for the backward (or, made for inference, one block's set
/// reused by every block), sized once for a batch shape `[B, T]` and reused.
pub struct Acts<S: Storage> {
    /// the model dims the buffers were sized for (checked against the backend's at every use)
    dims: Dims,
    b: usize,
    t: usize,
    /// one block's tensors reused by every block, two residual streams used in turn, no
    /// backward buffers
    inference: bool,
    plan: S::Plan,
    ids: S::Ids,
    /// residual streams [N, D]: L+1 (the input of block l, and the final output), or 2
    xs: Vec<S::F32>,
    layers: Vec<LayerActs<S>>,
    rstdf: S::F32, // [N]
    xf: S::Act,    // [N, D] final norm output
    rows: S::Rows, // labelled rows and their targets
    m: usize,      // labelled rows of the last forward
    head: usize,   // rows the lm_head buffers below hold
    xf_sel: S::Act,
    logits: S::F32,  // [M, vocab]
    dlogits: S::Act, // [M, vocab] d(mean loss)/d logits (empty: it is written over logits)
    dsel: S::F32,    // [M, D]
    s: Option<Scratch<S>>,
}

/// The CPU's activations ([`GlaModel::forward`] / [`GlaModel::backward`]).
pub type Activations = Acts<CpuBuf>;

impl<S: Storage> std::fmt::Debug for Acts<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Acts {{ b: {}, t: {}, inference: {} }}", self.b, self.t, self.inference)
    }
}

impl<S: Storage> Acts<S> {
    /// Buffers for `[b, t]` batches on backend `be`: every block's saved tensors and the
    /// backward's buffers, or (`inference`) one block's tensors reused by every block and no
    /// backward (about 1/L of the memory). `head`: rows the lm_head buffers hold at first
    /// (they grow to the labelled rows of a forward).
    ///
    /// # Errors
    /// The backend's allocation errors.
    pub fn alloc<B: Backend<Buf = S>>(be: &B, b: usize, t: usize, inference: bool, head: usize) -> Result<Self, B::Error> {
        let dm = be.dims();
        let n =
            b.checked_mul(t).ok_or_else(|| Error::BadArg { key: "batch", reason: format!("[{b}, {t}] overflows the address space") })?;
        let (kd, kdkv, vd, vdkv) = (dm.key_dim, dm.key_dim_kv, dm.value_dim, dm.value_dim_kv);
        let conv = dm.conv > 0;
        let mut layers = Vec::new();
        for _ in 0..if inference { 1 } else { dm.layers } {
            layers.push(LayerActs {
                rstd1: be.alloc_f32(n)?,
                xn1: be.alloc_act(n * dm.d)?,
                q_lin: be.alloc_act(n * kd)?,
                k_lin: be.alloc_act(n * kdkv)?,
                v_lin: be.alloc_act(n * vdkv)?,
                conv: if conv {
                    Some(ConvActs {
                        pre: [be.alloc_act(n * kd)?, be.alloc_act(n * kdkv)?, be.alloc_act(n * vdkv)?],
                        out: [be.alloc_act(n * kd)?, be.alloc_act(n * kdkv)?, be.alloc_act(n * vdkv)?],
                    })
                } else {
                    None
                },
                fm: if dm.feature_map.is_some() { Some([be.alloc_act(n * kd)?, be.alloc_act(n * kdkv)?]) } else { None },
                g_pre: if dm.output_gate { Some(be.alloc_act(n * vd)?) } else { None },
                gk_lr: be.alloc_act(n * dm.gate_rank)?,
                gk_raw: be.alloc_f32(n * kdkv)?,
                gk: be.alloc_act(n * kdkv)?,
                gla: be.alloc_gla_saved(n)?,
                o: be.alloc_act(n * vd)?,
                rstd_o: be.alloc_f32(n * dm.heads)?,
                on: be.alloc_act(n * vd)?,
                x_mid: be.alloc_f32(n * dm.d)?,
                rstd2: be.alloc_f32(n)?,
                xn2: be.alloc_act(n * dm.d)?,
                a: be.alloc_act(n * dm.intermediate)?,
                b: be.alloc_act(n * dm.intermediate)?,
                h: be.alloc_act(n * dm.intermediate)?,
            });
        }
        let s = if inference {
            None
        } else {
            // with short conv the conv backward writes dq, dk, dv's operands; without, casts do
            let d16 = |len: usize| if conv { be.alloc_act(len) } else { be.alloc_cast(len) };
            Some(Scratch {
                dres: be.alloc_f32(n * dm.d)?,
                dres16: be.alloc_cast(n * dm.d)?,
                dxn: be.alloc_f32(n * dm.d)?,
                dh: be.alloc_f32(n * dm.intermediate)?,
                da: be.alloc_act(n * dm.intermediate)?,
                db: be.alloc_act(n * dm.intermediate)?,
                d_on: be.alloc_f32(n * vd)?,
                d_o: be.alloc_act(n * vd)?,
                dg_pre: if dm.output_gate { Some(be.alloc_act(n * vd)?) } else { None },
                dqkvg: be.alloc_gla_grads(n)?,
                dgk_raw: be.alloc_f32(n * kdkv)?,
                dgk_raw16: be.alloc_cast(n * kdkv)?,
                dgk_lr: be.alloc_act(n * dm.gate_rank)?,
                dqkv16: [d16(n * kd)?, d16(n * kdkv)?, d16(n * vdkv)?],
            })
        };
        Ok(Self {
            dims: dm.clone(),
            b,
            t,
            inference,
            plan: be.plan(b, t, !inference)?,
            ids: be.alloc_ids(n)?,
            xs: (0..if inference { 2 } else { dm.layers + 1 }).map(|_| be.alloc_f32(n * dm.d)).collect::<Result<_, _>>()?,
            layers,
            rstdf: be.alloc_f32(n)?,
            xf: be.alloc_act(n * dm.d)?,
            rows: be.alloc_rows(n)?,
            m: 0,
            head,
            xf_sel: be.alloc_act(head * dm.d)?,
            logits: be.alloc_f32(head * dm.vocab)?,
            dlogits: be.alloc_cast(head * dm.vocab)?,
            dsel: be.alloc_f32(if inference { 0 } else { head * dm.d })?,
            s,
        })
    }

    /// The batch shape `(B, T)` these buffers hold.
    pub fn shape(&self) -> (usize, usize) {
        (self.b, self.t)
    }

    /// Whether these are inference activations (no backward).
    pub fn is_inference(&self) -> bool {
        self.inference
    }

    /// Rows that reached the lm_head in the last forward (`M`).
    pub fn labelled(&self) -> usize {
        self.m
    }

    /// The batch's token ids as the backend holds them.
    pub fn ids_mut(&mut self) -> &mut S::Ids {
        &mut self.ids
    }

    /// The lm_head's output of the last forward: `[M, vocab]` logits of the labelled rows (a
    /// backend that writes the loss gradient over them holds that after a training forward).
    pub fn logits(&self) -> &S::F32 {
        &self.logits
    }

    /// Index of block `l`'s entry in `layers`.
    fn li(&self, l: usize) -> usize {
        if self.inference {
            0
        } else {
            l
        }
    }

    /// Index in `xs` of the residual stream entering block `l` (`l = L`: leaving the last).
    fn xi(&self, l: usize) -> usize {
        if self.inference {
            l % 2
        } else {
            l
        }
    }

    /// Grows the lm_head buffers to `m` rows (a no-op once they are large enough).
    fn fit_head<B: Backend<Buf = S>>(&mut self, be: &B, m: usize) -> Result<(), B::Error> {
        if m <= self.head {
            return Ok(());
        }
        let dm = be.dims();
        // free the old ones first
        self.xf_sel = be.alloc_act(0)?;
        self.logits = be.alloc_f32(0)?;
        self.dlogits = be.alloc_cast(0)?;
        self.xf_sel = be.alloc_act(m * dm.d)?;
        self.logits = be.alloc_f32(m * dm.vocab)?;
        self.dlogits = be.alloc_cast(m * dm.vocab)?;
        self.dsel = be.alloc_f32(if self.inference { 0 } else { m * dm.d })?;
        self.head = m;
        Ok(())
    }
}

impl Activations {
    /// CPU buffers for batches of `b` sequences of `t` tokens.
    pub fn new(dims: &Dims, b: usize, t: usize) -> Self {
        let layout = Layout::new(dims);
        let cpu = Cpu::new(dims, &layout, &[]);
        match Acts::alloc(&cpu, b, t, false, 0) {
            Ok(a) => a,
            // the CPU allocates with vec!, which aborts rather than fail
            Err(e) => unreachable!("CPU allocation returned an error: {e}"),
        }
    }

    /// After a forward: `d(mean loss)/d logits` of the labelled rows, `[M, vocab]`.
    pub fn dlogits(&self) -> &[f32] {
        let len = self.m * self.logits.len().checked_div(self.head).unwrap_or(0);
        &self.logits[..len]
    }
}

/// fla's label shift: `targets[b, t] = labels[b, t + 1]`, and the last position of each row is
/// ignored (`labels = cat(labels[:, 1:], ignore_index)` inside `GLAForCausalLM.forward`).
pub fn shift_labels(labels: &[i64], t: usize) -> Vec<i64> {
    let mut out = vec![IGNORE_INDEX; labels.len()];
    if t == 0 {
        return out;
    }
    for (o, l) in out.chunks_exact_mut(t).zip(labels.chunks_exact(t)) {
        o[..t - 1].copy_from_slice(&l[1..]);
    }
    out
}

/// The GLA op's problem for `b` rows of `t` tokens (`cu`: packed varlen offsets) of this model.
pub(crate) fn problem(dims: &Dims, b: usize, t: usize, cu: Option<Vec<usize>>) -> Result<Problem> {
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

/// Checks ids and aligned targets of a `[B, T]` batch.
/// Activations sized for another model's dims would index out of their buffers.
fn check_acts<S: Storage>(dims: &Dims, acts: &Acts<S>) -> Result<()> {
    if acts.dims != *dims {
        return Err(Error::Shape {
            op: "forward/backward",
            tensor: "activations",
            shape: "made for this model's dims".into(),
            expected: dims.d,
            got: acts.dims.d,
        });
    }
    Ok(())
}

fn check_batch(dims: &Dims, b: usize, t: usize, ids: &[u32], targets: &[i64]) -> Result<()> {
    let n = b * t;
    let shape = format!("[B={b}, T={t}]");
    if ids.len() != n {
        return Err(Error::Shape { op: "forward", tensor: "input_ids", shape, expected: n, got: ids.len() });
    }
    if targets.len() != n {
        return Err(Error::Shape { op: "forward", tensor: "targets", shape, expected: n, got: targets.len() });
    }
    check_ids(dims, ids)?;
    let vocab = dims.vocab;
    if let Some(i) = targets.iter().position(|&x| x != IGNORE_INDEX && !(0..vocab as i64).contains(&x)) {
        return Err(Error::Token { what: "label", value: targets[i], index: i, vocab });
    }
    Ok(())
}

/// Refuses token ids outside the vocabulary (they would index past the embedding).
///
/// # Errors
/// [`Error::Token`] naming the first bad id.
pub fn check_ids(dims: &Dims, ids: &[u32]) -> Result<()> {
    let vocab = dims.vocab;
    match ids.iter().position(|&x| x as usize >= vocab) {
        Some(i) => Err(Error::Token { what: "input id", value: ids[i] as i64, index: i, vocab }),
        None => Ok(()),
    }
}

/// The lm_head's table index (the embedding when tied).
fn lm_head_id(layout: &Layout) -> usize {
    layout.lm_head.unwrap_or(layout.embeddings)
}

/// `xs[i]` to read and `xs[o]` to write (`i != o`).
fn pair<T>(xs: &mut [T], i: usize, o: usize) -> (&T, &mut T) {
    if i < o {
        let (lo, hi) = xs.split_at_mut(o);
        (&lo[i], &mut hi[0])
    } else {
        let (lo, hi) = xs.split_at_mut(i);
        (&hi[0], &mut lo[o])
    }
}

/// Forward of a `[B, T]` batch (shape fixed by `acts`) on backend `be`: `ids` are token ids,
/// `targets` the next token of each row, already aligned (`-100` = no loss; see
/// [`shift_labels`]). Returns the mean loss and the accuracy counts, and leaves in `acts` what
/// [`backward`] needs, including `d(mean loss)/d logits`.
///
/// # Errors
/// [`Error::Shape`] / [`Error::Token`] for bad inputs; the backend's errors (e.g. a non-finite
/// activation in the GLA op).
pub fn forward<B: Backend>(be: &B, acts: &mut Acts<B::Buf>, ids: &[u32], targets: &[i64]) -> Result<LossOut, B::Error> {
    check_acts(be.dims(), acts)?;
    check_batch(be.dims(), acts.b, acts.t, ids, targets)?;
    be.upload_ids(&mut acts.ids, ids, !acts.inference)?;
    body(be, acts, None)?;
    loss(be, acts, targets)
}

/// Embedding, every block and the final norm (into the activations' `xf`) from the ids already
/// in `acts` ([`Acts::ids_mut`] / [`forward`]). With `io` the sequences start from their
/// inference states and advance them (prefill, decode); it issues nothing but the backend's ops,
/// so a GPU can capture it in a graph.
///
/// # Errors
/// The backend's.
pub fn body<B: Backend>(be: &B, acts: &mut Acts<B::Buf>, mut io: Option<&mut B::Io<'_>>) -> Result<(), B::Error> {
    check_acts(be.dims(), acts)?;
    let dm = be.dims();
    let lay = be.layout();
    let (b, t) = (acts.b, acts.t);
    let n = b * t;
    let d = dm.d;
    be.embedding_fwd(&mut acts.xs[0], &acts.ids, n)?;
    for (l, il) in lay.layers.iter().enumerate() {
        let (li, xi, xo) = (acts.li(l), acts.xi(l), acts.xi(l + 1));
        let (x, x_out) = pair(&mut acts.xs, xi, xo);
        let a = &mut acts.layers[li];
        be.rmsnorm_fwd(&mut a.xn1, &mut a.rstd1, x, il.attn_norm, n)?;
        be.linear_fwd(&mut a.q_lin, &a.xn1, il.q_proj, n, d, dm.key_dim)?;
        be.linear_fwd(&mut a.k_lin, &a.xn1, il.k_proj, n, d, dm.key_dim_kv)?;
        be.linear_fwd(&mut a.v_lin, &a.xn1, il.v_proj, n, d, dm.value_dim_kv)?;
        if let (Some(cv), Some(qc), Some(kc), Some(vc)) = (&mut a.conv, il.q_conv, il.k_conv, il.v_conv) {
            let ins = [(&a.q_lin, qc, dm.key_dim), (&a.k_lin, kc, dm.key_dim_kv), (&a.v_lin, vc, dm.value_dim_kv)];
            for (i, ((src, w, c), (y, pre))) in ins.into_iter().zip(cv.out.iter_mut().zip(cv.pre.iter_mut())).enumerate() {
                be.conv_fwd(y, pre, src, w, b, t, c, io.as_deref_mut().map(|io| (io, l, i)))?;
            }
        }
        if let (Some(gw), Some(gp)) = (il.g_proj, &mut a.g_pre) {
            be.linear_fwd(gp, &a.xn1, gw, n, d, dm.value_dim)?;
        }
        be.linear_fwd(&mut a.gk_lr, &a.xn1, il.gk0, n, d, dm.gate_rank)?;
        be.linear_fwd_f32(&mut a.gk_raw, &a.gk_lr, il.gk1, n, dm.gate_rank, dm.key_dim_kv)?;
        be.gate_fwd(&mut a.gk, &mut a.gk_raw, il.gk1_bias, n)?;
        let pre = qkv([&a.q_lin, &a.k_lin, &a.v_lin], &a.conv);
        if let (Some(f), Some([fq, fk])) = (dm.feature_map, &mut a.fm) {
            be.feature_map_fwd(fq, pre[0], n * dm.key_dim, f)?;
            be.feature_map_fwd(fk, pre[1], n * dm.key_dim_kv, f)?;
        }
        let [q, k, v] = gla_in(pre, &a.fm);
        be.gla_fwd(&acts.plan, &mut a.gla, &mut a.o, q, k, v, &a.gk, io.as_deref_mut().map(|io| (io, l)))?;
        be.gated_norm_fwd(&mut a.on, &mut a.rstd_o, &a.o, a.g_pre.as_ref(), il.g_norm, n * dm.heads)?;
        // x_mid = x + o_proj(on)
        be.linear_residual_fwd(&mut a.x_mid, x, &a.on, il.o_proj, n, dm.value_dim, d)?;
        be.rmsnorm_fwd(&mut a.xn2, &mut a.rstd2, &a.x_mid, il.mlp_norm, n)?;
        be.linear_fwd(&mut a.a, &a.xn2, il.gate_proj, n, d, dm.intermediate)?;
        be.linear_fwd(&mut a.b, &a.xn2, il.up_proj, n, d, dm.intermediate)?;
        be.swiglu_fwd(&mut a.h, &a.a, &a.b, n * dm.intermediate)?;
        // x_out = x_mid + down(h)
        be.linear_residual_fwd(x_out, &a.x_mid, &a.h, il.down_proj, n, dm.intermediate, d)?;
    }
    let xl = acts.xi(dm.layers);
    be.rmsnorm_fwd(&mut acts.xf, &mut acts.rstdf, &acts.xs[xl], lay.norm, n)
}

/// The lm_head and the loss on the labelled rows of the last [`body`].
fn loss<B: Backend>(be: &B, acts: &mut Acts<B::Buf>, targets: &[i64]) -> Result<LossOut, B::Error> {
    let dm = be.dims();
    let m = be.select_rows(&mut acts.rows, targets)?;
    acts.m = m;
    acts.fit_head(be, m)?;
    be.gather_rows(&mut acts.xf_sel, &acts.xf, &acts.rows, m)?;
    be.linear_fwd_f32(&mut acts.logits, &acts.xf_sel, lm_head_id(be.layout()), m, dm.d, dm.vocab)?;
    if m == 0 {
        return Ok(LossOut { loss: 0.0, n_valid: 0, correct: 0 });
    }
    let (sum, correct) = be.cross_entropy(&mut acts.logits, &mut acts.dlogits, &acts.rows, m, 1.0 / m as f32)?;
    Ok(LossOut { loss: sum / m as f64, n_valid: m, correct })
}

/// The inference head after [`body`]: the logits of the rows whose `targets` entry is not -100,
/// in row order, or of every row (`None`), into [`Acts::logits`]. No loss.
///
/// # Errors
/// The backend's.
pub fn head_logits<B: Backend>(be: &B, acts: &mut Acts<B::Buf>, targets: Option<&[i64]>) -> Result<(), B::Error> {
    check_acts(be.dims(), acts)?;
    let dm = be.dims();
    let lm = lm_head_id(be.layout());
    match targets {
        None => {
            // every row in order (decode): the lm_head reads the final norm's output directly
            let n = acts.b * acts.t;
            acts.m = n;
            acts.fit_head(be, n)?;
            be.linear_fwd_f32(&mut acts.logits, &acts.xf, lm, n, dm.d, dm.vocab)
        }
        Some(targets) => {
            let m = be.select_rows(&mut acts.rows, targets)?;
            acts.m = m;
            acts.fit_head(be, m)?;
            be.gather_rows(&mut acts.xf_sel, &acts.xf, &acts.rows, m)?;
            be.linear_fwd_f32(&mut acts.logits, &acts.xf_sel, lm, m, dm.d, dm.vocab)
        }
    }
}

/// Backward of the last [`forward`] on `acts`: accumulates `scale * d(mean loss)` into `grads`
/// (laid out like the parameters; zero it between optimizer steps). `scale` is `1 / accumulation
/// steps` when gradients of several micro-batches are summed. Calls [`Backend::grads_ready`] as
/// each range of gradients is final.
///
/// # Errors
/// [`Error::Shape`] on inference activations; the backend's errors.
pub fn backward<B: Backend>(be: &B, acts: &mut Acts<B::Buf>, grads: &mut B::Grads, scale: f32) -> Result<(), B::Error> {
    check_acts(be.dims(), acts)?;
    let numel = be.layout().numel;
    if be.grads_len(grads) != numel {
        return Err(Error::Shape {
            op: "backward",
            tensor: "grads",
            shape: "the parameter table".into(),
            expected: numel,
            got: be.grads_len(grads),
        }
        .into());
    }
    let dm = be.dims();
    let lay = be.layout();
    let (b, t) = (acts.b, acts.t);
    let n = b * t;
    let d = dm.d;
    let Acts { plan, ids, xs, layers, rstdf, rows, m, xf_sel, logits, dlogits, dsel, s, .. } = acts;
    let (m, plan) = (*m, &*plan);
    let Some(s) = s.as_mut() else {
        return Err(Error::Shape { op: "backward", tensor: "activations", shape: "made for training".into(), expected: 1, got: 0 }.into());
    };
    // lm_head: dsel = dlogits @ W, dW += scale * dlogits^T xf_sel; dxn = scale * dsel on its rows
    if m > 0 {
        be.lm_head_bwd(grads, lm_head_id(lay), dsel, logits, dlogits, xf_sel, m, scale)?;
    }
    be.scatter_rows(&mut s.dxn, dsel, rows, m, n, scale)?;
    be.rmsnorm_bwd(plan, &mut s.dres, grads, &s.dxn, &xs[dm.layers], rstdf, lay.norm, n, false)?;
    be.grads_ready(grads, 0)?;
    for (l, il) in lay.layers.iter().enumerate().rev() {
        let a = &layers[l];
        let x = &xs[l];
        // mlp: out = x_mid + down(h)
        be.cast(&mut s.dres16, &s.dres)?;
        let dres = be.operand(&s.dres16, &s.dres);
        be.linear_bwd_x(&mut s.dh, dres, il.down_proj, n, dm.intermediate, d, false)?;
        be.linear_bwd_w(grads, il.down_proj, dres, &a.h, n, dm.intermediate, d)?;
        be.swiglu_bwd(&mut s.da, &mut s.db, &s.dh, &a.a, &a.b, n * dm.intermediate)?;
        be.linear_bwd_x(&mut s.dxn, &s.da, il.gate_proj, n, d, dm.intermediate, false)?;
        be.linear_bwd_x(&mut s.dxn, &s.db, il.up_proj, n, d, dm.intermediate, true)?;
        be.linear_bwd_w(grads, il.gate_proj, &s.da, &a.xn2, n, d, dm.intermediate)?;
        be.linear_bwd_w(grads, il.up_proj, &s.db, &a.xn2, n, d, dm.intermediate)?;
        be.rmsnorm_bwd(plan, &mut s.dres, grads, &s.dxn, &a.x_mid, &a.rstd2, il.mlp_norm, n, true)?;
        // attention: x_mid = x + o_proj(on)
        be.cast(&mut s.dres16, &s.dres)?;
        let dres = be.operand(&s.dres16, &s.dres);
        be.linear_bwd_x(&mut s.d_on, dres, il.o_proj, n, dm.value_dim, d, false)?;
        be.linear_bwd_w(grads, il.o_proj, dres, &a.on, n, dm.value_dim, d)?;
        be.gated_norm_bwd(plan, &mut s.d_o, s.dg_pre.as_mut(), grads, il.g_norm, &s.d_on, &a.o, a.g_pre.as_ref(), &a.rstd_o, n * dm.heads)?;
        let pre = qkv([&a.q_lin, &a.k_lin, &a.v_lin], &a.conv);
        let [q, k, v] = gla_in(pre, &a.fm);
        let [dq, dk, dv, dgk] = &mut s.dqkvg;
        be.gla_bwd(plan, &a.gla, q, k, v, &a.gk, &s.d_o, [dq, dk, dv, dgk])?;
        // feature map: d(pre) = d(f(pre)) f'(pre), in place
        if let Some(f) = dm.feature_map {
            be.feature_map_bwd(dq, pre[0], n * dm.key_dim, f)?;
            be.feature_map_bwd(dk, pre[1], n * dm.key_dim_kv, f)?;
        }
        // gate: gk_raw = gk_lr W1^T + b1; gk = gate(gk_raw)
        be.gate_bwd(plan, &mut s.dgk_raw, &mut s.dgk_raw16, grads, il.gk1_bias, &s.dqkvg[3], &a.gk_raw, n)?;
        let dgk_raw = be.operand(&s.dgk_raw16, &s.dgk_raw);
        be.linear_bwd_w(grads, il.gk1, dgk_raw, &a.gk_lr, n, dm.gate_rank, dm.key_dim_kv)?;
        be.linear_bwd_x_act(&mut s.dgk_lr, dgk_raw, il.gk1, n, dm.gate_rank, dm.key_dim_kv)?;
        // short conv (or the GEMM operands of dq, dk, dv)
        let chans = [dm.key_dim, dm.key_dim_kv, dm.value_dim_kv];
        let lins = [&a.q_lin, &a.k_lin, &a.v_lin];
        for (i, w) in [il.q_conv, il.k_conv, il.v_conv].into_iter().enumerate() {
            match (w, &a.conv) {
                (Some(w), Some(cv)) => be.conv_bwd(plan, &mut s.dqkv16[i], grads, w, &s.dqkvg[i], &cv.pre[i], lins[i], b, t, chans[i])?,
                _ => be.cast(&mut s.dqkv16[i], &s.dqkvg[i])?,
            }
        }
        let dq = be.operand(&s.dqkv16[0], &s.dqkvg[0]);
        let dk = be.operand(&s.dqkv16[1], &s.dqkvg[1]);
        let dv = be.operand(&s.dqkv16[2], &s.dqkvg[2]);
        // projections from xn1
        be.linear_bwd_x(&mut s.dxn, dq, il.q_proj, n, d, dm.key_dim, false)?;
        be.linear_bwd_x(&mut s.dxn, dk, il.k_proj, n, d, dm.key_dim_kv, true)?;
        be.linear_bwd_x(&mut s.dxn, dv, il.v_proj, n, d, dm.value_dim_kv, true)?;
        be.linear_bwd_x(&mut s.dxn, &s.dgk_lr, il.gk0, n, d, dm.gate_rank, true)?;
        be.linear_bwd_w(grads, il.q_proj, dq, &a.xn1, n, d, dm.key_dim)?;
        be.linear_bwd_w(grads, il.k_proj, dk, &a.xn1, n, d, dm.key_dim_kv)?;
        be.linear_bwd_w(grads, il.v_proj, dv, &a.xn1, n, d, dm.value_dim_kv)?;
        be.linear_bwd_w(grads, il.gk0, &s.dgk_lr, &a.xn1, n, d, dm.gate_rank)?;
        if let (Some(g), Some(dg_pre)) = (il.g_proj, &s.dg_pre) {
            be.linear_bwd_x(&mut s.dxn, dg_pre, g, n, d, dm.value_dim, true)?;
            be.linear_bwd_w(grads, g, dg_pre, &a.xn1, n, d, dm.value_dim)?;
        }
        be.rmsnorm_bwd(plan, &mut s.dres, grads, &s.dxn, x, &a.rstd1, il.attn_norm, n, true)?;
        be.grads_ready(grads, dm.layers - l)?;
    }
    be.embedding_bwd(plan, grads, &s.dres, ids, n)?;
    be.grads_ready(grads, dm.layers + 1)
}

impl GlaModel {
    /// A freshly initialised model (fla's init, seeded).
    ///
    /// # Errors
    /// Those of [`GlaConfig::dims`].
    pub fn new(config: GlaConfig, seed: u64) -> Result<Self> {
        let dims = config.dims()?;
        let layout = Layout::new(&dims);
        let params = layout.init(&dims, seed);
        Ok(Self { config, dims, layout, params })
    }

    /// A model from existing weights in table order.
    ///
    /// # Errors
    /// Those of [`GlaConfig::dims`]; [`Error::Shape`] when `params` has the wrong length.
    pub fn from_params(config: GlaConfig, params: Vec<f32>) -> Result<Self> {
        let dims = config.dims()?;
        let layout = Layout::new(&dims);
        if params.len() != layout.numel {
            return Err(Error::Shape {
                op: "from_params",
                tensor: "params",
                shape: "the parameter table".into(),
                expected: layout.numel,
                got: params.len(),
            });
        }
        Ok(Self { config, dims, layout, params })
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layout.numel
    }

    /// The CPU backend over these weights.
    pub fn cpu(&self) -> Cpu<'_> {
        Cpu::new(&self.dims, &self.layout, &self.params)
    }

    /// [`forward`] on the CPU.
    ///
    /// # Errors
    /// [`Error::Shape`] / [`Error::Token`] for bad inputs; [`Error::Op`] from the GLA op (a
    /// non-finite activation, e.g. after divergence).
    pub fn forward(&self, acts: &mut Activations, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        forward(&self.cpu(), acts, ids, targets)
    }

    /// [`backward`] on the CPU into `grads` (an arena laid out like the parameters).
    ///
    /// # Errors
    /// [`Error::Shape`] when `grads` has the wrong length; [`Error::Op`] from the GLA op.
    pub fn backward(&self, acts: &mut Activations, grads: &mut [f32], scale: f32) -> Result<()> {
        backward(&self.cpu(), acts, grads, scale)
    }

    /// Logits of every position of a `[B, T]` batch, `[B*T, vocab]` (inference and tests).
    ///
    /// # Errors
    /// As [`GlaModel::forward`].
    pub fn logits(&self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        cpu_logits(&self.cpu(), ids, b, t)
    }
}

/// Logits of every position of a `[B, T]` batch, `[B*T, vocab]`, through the CPU backend `be`
/// (for instance [`Cpu::emulating_bf16`]; [`GlaModel::logits`] is this with the model's own).
///
/// # Errors
/// As [`GlaModel::forward`].
pub fn cpu_logits(be: &Cpu<'_>, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
    let mut acts = Acts::alloc(be, b, t, false, 0)?;
    // every row "labelled" with token 0 so the lm_head runs on all rows
    let targets = vec![0i64; b * t];
    forward(be, &mut acts, ids, &targets)?;
    head_logits(be, &mut acts, None)?;
    Ok(std::mem::take(&mut acts.logits))
}
