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
//! [`GlaModel::forward`] keeps what the backward needs in [`Activations`];
//! [`GlaModel::backward`] walks the same calls in reverse and accumulates into a gradient arena
//! laid out like the parameters. Only rows with a target reach the lm_head (the loss does not
//! need the others), which makes recall tasks with few labelled rows cheap.

use gla_core::op::GlaOp;
use gla_core::{Backward, GateKind, Inputs, Problem, ProblemSpec};
use gla_cpu::{Chunked, FusedRecurrent};

use crate::config::{Dims, GlaConfig};
use crate::ops::*;
use crate::params::{Layout, View};
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

/// Saved tensors of one block (shapes with N = B*T rows).
#[derive(Debug, Default)]
struct LayerActs {
    rstd1: Vec<f32>, // [N]
    xn1: Vec<f32>,   // [N, D]
    q_lin: Vec<f32>, // [N, key_dim]
    k_lin: Vec<f32>, // [N, key_dim_kv]
    v_lin: Vec<f32>, // [N, value_dim_kv]
    // with short conv: pre-activation and output of the conv; empty otherwise
    q_pre: Vec<f32>,
    k_pre: Vec<f32>,
    v_pre: Vec<f32>,
    q_c: Vec<f32>,
    k_c: Vec<f32>,
    v_c: Vec<f32>,
    g_pre: Vec<f32>,  // [N, value_dim] output-gate pre-activation (empty without gate)
    gk_lr: Vec<f32>,  // [N, 16]
    gk_raw: Vec<f32>, // [N, key_dim_kv]
    gk: Vec<f32>,     // [N, key_dim_kv] log-gate
    // GQA: k, v, gk repeated to all heads; empty when groups == 1
    k_rep: Vec<f32>,
    v_rep: Vec<f32>,
    gk_rep: Vec<f32>,
    o: Vec<f32>,      // [N, H, V] GLA output
    rstd_o: Vec<f32>, // [N, H]
    on: Vec<f32>,     // [N, value_dim] gated-normed output
    x_mid: Vec<f32>,  // [N, D] residual after attention
    rstd2: Vec<f32>,  // [N]
    xn2: Vec<f32>,    // [N, D]
    a: Vec<f32>,      // [N, I] gate_proj output
    b: Vec<f32>,      // [N, I] up_proj output
    h: Vec<f32>,      // [N, I] silu(a) * b
}

impl LayerActs {
    fn q(&self) -> &[f32] {
        if self.q_c.is_empty() {
            &self.q_lin
        } else {
            &self.q_c
        }
    }
    fn k(&self) -> &[f32] {
        if !self.k_rep.is_empty() {
            &self.k_rep
        } else if self.k_c.is_empty() {
            &self.k_lin
        } else {
            &self.k_c
        }
    }
    fn v(&self) -> &[f32] {
        if !self.v_rep.is_empty() {
            &self.v_rep
        } else if self.v_c.is_empty() {
            &self.v_lin
        } else {
            &self.v_c
        }
    }
    fn gk(&self) -> &[f32] {
        if self.gk_rep.is_empty() {
            &self.gk
        } else {
            &self.gk_rep
        }
    }
}

/// Every tensor the backward needs, sized once for a batch shape `[B, T]` and reused.
#[derive(Debug)]
pub struct Activations {
    b: usize,
    t: usize,
    ids: Vec<u32>,
    xs: Vec<Vec<f32>>, // L+1 residual streams [N, D]: input of block l, and the final output
    layers: Vec<LayerActs>,
    rstdf: Vec<f32>,   // [N]
    xf: Vec<f32>,      // [N, D] final norm output
    rows: Vec<usize>,  // labelled rows
    targets: Vec<u32>, // [M] their targets
    xf_sel: Vec<f32>,  // [M, D]
    logits: Vec<f32>,  // [M, vocab]; after forward: d(mean loss)/d logits
    scratch: Scratch,
}

/// Backward buffers (allocated once).
#[derive(Debug, Default)]
struct Scratch {
    dres: Vec<f32>, // [N, D]
    dxn: Vec<f32>,  // [N, D]
    dh: Vec<f32>,   // [N, I]
    da: Vec<f32>,   // [N, I]
    db: Vec<f32>,   // [N, I]
    d_on: Vec<f32>, // [N, value_dim]
    d_o: Vec<f32>,  // [N, H, V]
    dg_pre: Vec<f32>,
    dk: Vec<f32>,  // [N, key_dim_kv]
    dv: Vec<f32>,  // [N, value_dim_kv]
    dgk: Vec<f32>, // [N, key_dim_kv]
    dgk_raw: Vec<f32>,
    dgk_lr: Vec<f32>, // [N, 16]
    dq_lin: Vec<f32>,
    dk_lin: Vec<f32>,
    dv_lin: Vec<f32>,
}

impl Activations {
    /// Buffers for batches of `b` sequences of `t` tokens.
    pub fn new(dims: &Dims, b: usize, t: usize) -> Self {
        let n = b * t;
        let z = |len: usize| vec![0.0f32; len];
        let groups = dims.groups();
        let conv = dims.conv > 0;
        let layers = (0..dims.layers)
            .map(|_| LayerActs {
                rstd1: z(n),
                xn1: z(n * dims.d),
                q_lin: z(n * dims.key_dim),
                k_lin: z(n * dims.key_dim_kv),
                v_lin: z(n * dims.value_dim_kv),
                q_pre: if conv { z(n * dims.key_dim) } else { vec![] },
                k_pre: if conv { z(n * dims.key_dim_kv) } else { vec![] },
                v_pre: if conv { z(n * dims.value_dim_kv) } else { vec![] },
                q_c: if conv { z(n * dims.key_dim) } else { vec![] },
                k_c: if conv { z(n * dims.key_dim_kv) } else { vec![] },
                v_c: if conv { z(n * dims.value_dim_kv) } else { vec![] },
                g_pre: if dims.output_gate { z(n * dims.value_dim) } else { vec![] },
                gk_lr: z(n * dims.gate_rank),
                gk_raw: z(n * dims.key_dim_kv),
                gk: z(n * dims.key_dim_kv),
                k_rep: if groups > 1 { z(n * dims.key_dim) } else { vec![] },
                v_rep: if groups > 1 { z(n * dims.value_dim) } else { vec![] },
                gk_rep: if groups > 1 { z(n * dims.key_dim) } else { vec![] },
                o: z(n * dims.value_dim),
                rstd_o: z(n * dims.heads),
                on: z(n * dims.value_dim),
                x_mid: z(n * dims.d),
                rstd2: z(n),
                xn2: z(n * dims.d),
                a: z(n * dims.intermediate),
                b: z(n * dims.intermediate),
                h: z(n * dims.intermediate),
            })
            .collect();
        let scratch = Scratch {
            dres: z(n * dims.d),
            dxn: z(n * dims.d),
            dh: z(n * dims.intermediate),
            da: z(n * dims.intermediate),
            db: z(n * dims.intermediate),
            d_on: z(n * dims.value_dim),
            d_o: z(n * dims.value_dim),
            dg_pre: if dims.output_gate { z(n * dims.value_dim) } else { vec![] },
            dk: z(n * dims.key_dim_kv),
            dv: z(n * dims.value_dim_kv),
            dgk: z(n * dims.key_dim_kv),
            dgk_raw: z(n * dims.key_dim_kv),
            dgk_lr: z(n * dims.gate_rank),
            dq_lin: if conv { z(n * dims.key_dim) } else { vec![] },
            dk_lin: if conv { z(n * dims.key_dim_kv) } else { vec![] },
            dv_lin: if conv { z(n * dims.value_dim_kv) } else { vec![] },
        };
        Self {
            b,
            t,
            ids: vec![0; n],
            xs: (0..=dims.layers).map(|_| z(n * dims.d)).collect(),
            layers,
            rstdf: z(n),
            xf: z(n * dims.d),
            rows: Vec::with_capacity(n),
            targets: Vec::with_capacity(n),
            xf_sel: Vec::with_capacity(n * dims.d),
            logits: Vec::new(),
            scratch,
        }
    }

    /// The batch shape `(B, T)` these buffers hold.
    pub fn shape(&self) -> (usize, usize) {
        (self.b, self.t)
    }

    /// After a forward: `d(mean loss)/d logits` of the labelled rows, `[M, vocab]`.
    pub fn dlogits(&self) -> &[f32] {
        &self.logits
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

/// The GLA op fla's layer would use: fused recurrent for T <= 64, chunked otherwise.
fn op_for(t: usize) -> &'static dyn GlaOp<f32> {
    static CHUNKED: Chunked = Chunked { schedule: gla_cpu::Schedule::Auto };
    if t <= 64 {
        &FusedRecurrent
    } else {
        &CHUNKED
    }
}

fn grad<'a>(grads: &'a mut [f32], layout: &Layout, id: usize) -> &'a mut [f32] {
    &mut grads[layout.specs[id].range()]
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

    fn view(&self) -> View<'_> {
        View { layout: &self.layout, data: &self.params }
    }

    /// Checks ids and aligned targets of a `[B, T]` batch.
    fn check_batch(&self, acts: &Activations, ids: &[u32], targets: &[i64]) -> Result<()> {
        let n = acts.b * acts.t;
        let shape = format!("[B={}, T={}]", acts.b, acts.t);
        if ids.len() != n {
            return Err(Error::Shape { op: "forward", tensor: "input_ids", shape, expected: n, got: ids.len() });
        }
        if targets.len() != n {
            return Err(Error::Shape { op: "forward", tensor: "targets", shape, expected: n, got: targets.len() });
        }
        let vocab = self.dims.vocab;
        if let Some(i) = ids.iter().position(|&x| x as usize >= vocab) {
            return Err(Error::Token { what: "input id", value: ids[i] as i64, index: i, vocab });
        }
        if let Some(i) = targets.iter().position(|&x| x != IGNORE_INDEX && !(0..vocab as i64).contains(&x)) {
            return Err(Error::Token { what: "label", value: targets[i], index: i, vocab });
        }
        Ok(())
    }

    /// Forward of a `[B, T]` batch (shape fixed by `acts`): `ids` are token ids, `targets` the
    /// next token of each row, already aligned (`-100` = no loss; see [`shift_labels`] for fla's
    /// convention). Returns the mean loss and the accuracy counts, and leaves in `acts` what the
    /// backward needs, including `d(mean loss)/d logits`.
    ///
    /// # Errors
    /// [`Error::Shape`] / [`Error::Token`] for bad inputs; [`Error::Op`] from the GLA op (a
    /// non-finite activation, e.g. after divergence).
    pub fn forward(&self, acts: &mut Activations, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        self.check_batch(acts, ids, targets)?;
        let dm = &self.dims;
        let p = self.view();
        let (b, t) = (acts.b, acts.t);
        let n = b * t;
        let d = dm.d;
        acts.ids.copy_from_slice(ids);
        embedding_fwd(&mut acts.xs[0], ids, p.get(self.layout.embeddings), d);
        let prob = problem(dm, b, t, None)?;
        let op = op_for(t);
        for (l, ids_l) in self.layout.layers.iter().enumerate() {
            let (lo, hi) = acts.xs.split_at_mut(l + 1);
            let (x, x_out) = (&lo[l], &mut hi[0]);
            let a = &mut acts.layers[l];
            rmsnorm_fwd(&mut a.xn1, &mut a.rstd1, x, p.get(ids_l.attn_norm), d, dm.eps);
            linear_fwd(&mut a.q_lin, &a.xn1, p.get(ids_l.q_proj), n, d, dm.key_dim);
            linear_fwd(&mut a.k_lin, &a.xn1, p.get(ids_l.k_proj), n, d, dm.key_dim_kv);
            linear_fwd(&mut a.v_lin, &a.xn1, p.get(ids_l.v_proj), n, d, dm.value_dim_kv);
            if let (Some(qc), Some(kc), Some(vc)) = (ids_l.q_conv, ids_l.k_conv, ids_l.v_conv) {
                conv_fwd(&mut a.q_c, &mut a.q_pre, &a.q_lin, p.get(qc), t, dm.key_dim, dm.conv);
                conv_fwd(&mut a.k_c, &mut a.k_pre, &a.k_lin, p.get(kc), t, dm.key_dim_kv, dm.conv);
                conv_fwd(&mut a.v_c, &mut a.v_pre, &a.v_lin, p.get(vc), t, dm.value_dim_kv, dm.conv);
            }
            if let Some(g) = ids_l.g_proj {
                linear_fwd(&mut a.g_pre, &a.xn1, p.get(g), n, d, dm.value_dim);
            }
            linear_fwd(&mut a.gk_lr, &a.xn1, p.get(ids_l.gk0), n, d, dm.gate_rank);
            linear_fwd(&mut a.gk_raw, &a.gk_lr, p.get(ids_l.gk1), n, dm.gate_rank, dm.key_dim_kv);
            let bias = p.get(ids_l.gk1_bias);
            for row in a.gk_raw.chunks_exact_mut(dm.key_dim_kv) {
                row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
            }
            gate_fwd(&mut a.gk, &a.gk_raw, dm.gate_norm, dm.clamp_min);
            if dm.groups() > 1 {
                let k_src = if a.k_c.is_empty() { &a.k_lin } else { &a.k_c };
                repeat_heads(&mut a.k_rep, k_src, dm.kv_heads, dm.groups(), dm.head_k);
                let v_src = if a.v_c.is_empty() { &a.v_lin } else { &a.v_c };
                repeat_heads(&mut a.v_rep, v_src, dm.kv_heads, dm.groups(), dm.head_v);
                repeat_heads(&mut a.gk_rep, &a.gk, dm.kv_heads, dm.groups(), dm.head_k);
            }
            let fwd = op.forward(&prob, &Inputs { q: a.q(), k: a.k(), v: a.v(), g: Some(a.gk()), h0: None }, false)?;
            a.o = fwd.o;
            let g_pre = (!a.g_pre.is_empty()).then_some(&a.g_pre[..]);
            gated_norm_fwd(&mut a.on, &mut a.rstd_o, &a.o, g_pre, p.get(ids_l.g_norm), dm.head_v, dm.eps);
            linear_fwd(&mut a.x_mid, &a.on, p.get(ids_l.o_proj), n, dm.value_dim, d);
            a.x_mid.iter_mut().zip(x.iter()).for_each(|(m, x)| *m += x);
            rmsnorm_fwd(&mut a.xn2, &mut a.rstd2, &a.x_mid, p.get(ids_l.mlp_norm), d, dm.eps);
            linear_fwd(&mut a.a, &a.xn2, p.get(ids_l.gate_proj), n, d, dm.intermediate);
            linear_fwd(&mut a.b, &a.xn2, p.get(ids_l.up_proj), n, d, dm.intermediate);
            swiglu_fwd(&mut a.h, &a.a, &a.b);
            linear_fwd(x_out, &a.h, p.get(ids_l.down_proj), n, dm.intermediate, d);
            x_out.iter_mut().zip(a.x_mid.iter()).for_each(|(o, m)| *o += m);
        }
        rmsnorm_fwd(&mut acts.xf, &mut acts.rstdf, &acts.xs[dm.layers], p.get(self.layout.norm), d, dm.eps);
        acts.rows.clear();
        acts.targets.clear();
        for (r, &tg) in targets.iter().enumerate() {
            if tg != IGNORE_INDEX {
                acts.rows.push(r);
                acts.targets.push(tg as u32);
            }
        }
        let m = acts.rows.len();
        acts.xf_sel.clear();
        for &r in &acts.rows {
            acts.xf_sel.extend_from_slice(&acts.xf[r * d..(r + 1) * d]);
        }
        acts.logits.resize(m * dm.vocab, 0.0);
        linear_fwd(&mut acts.logits, &acts.xf_sel, p.get(self.lm_head_id()), m, d, dm.vocab);
        if m == 0 {
            return Ok(LossOut { loss: 0.0, n_valid: 0, correct: 0 });
        }
        let (sum, correct) = cross_entropy_fwd_bwd(&mut acts.logits, &acts.targets, dm.vocab, 1.0 / m as f32);
        Ok(LossOut { loss: sum / m as f64, n_valid: m, correct })
    }

    fn lm_head_id(&self) -> usize {
        self.layout.lm_head.unwrap_or(self.layout.embeddings)
    }

    /// Backward of the last [`GlaModel::forward`] on `acts`: accumulates `scale * d(mean loss)`
    /// into `grads` (an arena laid out like the parameters; zero it between optimizer steps).
    /// `scale` is `1 / accumulation steps` when gradients of several micro-batches are summed.
    ///
    /// # Errors
    /// [`Error::Shape`] when `grads` has the wrong length; [`Error::Op`] from the GLA op.
    pub fn backward(&self, acts: &mut Activations, grads: &mut [f32], scale: f32) -> Result<()> {
        let lay = &self.layout;
        if grads.len() != lay.numel {
            return Err(Error::Shape {
                op: "backward",
                tensor: "grads",
                shape: "the parameter table".into(),
                expected: lay.numel,
                got: grads.len(),
            });
        }
        let dm = &self.dims;
        let p = self.view();
        let (b, t) = (acts.b, acts.t);
        let n = b * t;
        let d = dm.d;
        let m = acts.rows.len();
        let prob = problem(dm, b, t, None)?;
        let op = op_for(t);
        let Activations { ids, xs, layers, rstdf, rows, xf_sel, logits, scratch: s, .. } = acts;
        // lm_head: dxf_sel = scale * dlogits @ W; dW += scale * dlogits^T xf_sel
        let mut dsel = vec![0.0f32; m * d];
        linear_bwd_x(&mut dsel, logits, p.get(self.lm_head_id()), m, d, dm.vocab, false);
        if scale != 1.0 {
            logits.iter_mut().for_each(|x| *x *= scale);
            dsel.iter_mut().for_each(|x| *x *= scale);
        }
        linear_bwd_w(grad(grads, lay, self.lm_head_id()), logits, xf_sel, m, d, dm.vocab);
        s.dxn.fill(0.0);
        for (i, &r) in rows.iter().enumerate() {
            s.dxn[r * d..(r + 1) * d].copy_from_slice(&dsel[i * d..(i + 1) * d]);
        }
        rmsnorm_bwd(&mut s.dres, grad(grads, lay, lay.norm), &s.dxn, &xs[dm.layers], rstdf, p.get(lay.norm), d, false);
        for (l, il) in lay.layers.iter().enumerate().rev() {
            let a = &layers[l];
            let x = &xs[l];
            // mlp: out = x_mid + down(h)
            linear_bwd_x(&mut s.dh, &s.dres, p.get(il.down_proj), n, dm.intermediate, d, false);
            linear_bwd_w(grad(grads, lay, il.down_proj), &s.dres, &a.h, n, dm.intermediate, d);
            swiglu_bwd(&mut s.da, &mut s.db, &s.dh, &a.a, &a.b);
            linear_bwd_x(&mut s.dxn, &s.da, p.get(il.gate_proj), n, d, dm.intermediate, false);
            linear_bwd_x(&mut s.dxn, &s.db, p.get(il.up_proj), n, d, dm.intermediate, true);
            linear_bwd_w(grad(grads, lay, il.gate_proj), &s.da, &a.xn2, n, d, dm.intermediate);
            linear_bwd_w(grad(grads, lay, il.up_proj), &s.db, &a.xn2, n, d, dm.intermediate);
            rmsnorm_bwd(&mut s.dres, grad(grads, lay, il.mlp_norm), &s.dxn, &a.x_mid, &a.rstd2, p.get(il.mlp_norm), d, true);
            // attention: x_mid = x + o_proj(on)
            linear_bwd_x(&mut s.d_on, &s.dres, p.get(il.o_proj), n, dm.value_dim, d, false);
            linear_bwd_w(grad(grads, lay, il.o_proj), &s.dres, &a.on, n, dm.value_dim, d);
            let g_pre = (!a.g_pre.is_empty()).then_some(&a.g_pre[..]);
            let dg_pre = (!s.dg_pre.is_empty()).then_some(&mut s.dg_pre[..]);
            gated_norm_bwd(&mut s.d_o, dg_pre, grad(grads, lay, il.g_norm), &s.d_on, &a.o, g_pre, &a.rstd_o, p.get(il.g_norm), dm.head_v);
            let x_in = Inputs { q: a.q(), k: a.k(), v: a.v(), g: Some(a.gk()), h0: None };
            let gr = op.backward(&prob, &x_in, &Backward { d_o: &s.d_o, dht: None })?;
            let dgk_full = gr.dg.unwrap_or_default();
            let (dk, dv, dgk): (&[f32], &[f32], &[f32]) = if dm.groups() > 1 {
                repeat_heads_bwd(&mut s.dk, &gr.dk, dm.kv_heads, dm.groups(), dm.head_k);
                repeat_heads_bwd(&mut s.dv, &gr.dv, dm.kv_heads, dm.groups(), dm.head_v);
                repeat_heads_bwd(&mut s.dgk, &dgk_full, dm.kv_heads, dm.groups(), dm.head_k);
                (&s.dk, &s.dv, &s.dgk)
            } else {
                (&gr.dk, &gr.dv, &dgk_full)
            };
            // gate: gk_raw = gk_lr W1^T + b1; gk = gate(gk_raw)
            gate_bwd(&mut s.dgk_raw, dgk, &a.gk_raw, dm.gate_norm, dm.clamp_min);
            let db1 = grad(grads, lay, il.gk1_bias);
            for row in s.dgk_raw.chunks_exact(dm.key_dim_kv) {
                db1.iter_mut().zip(row).for_each(|(b, r)| *b += r);
            }
            linear_bwd_w(grad(grads, lay, il.gk1), &s.dgk_raw, &a.gk_lr, n, dm.gate_rank, dm.key_dim_kv);
            linear_bwd_x(&mut s.dgk_lr, &s.dgk_raw, p.get(il.gk1), n, dm.gate_rank, dm.key_dim_kv, false);
            // short conv
            let (dq_lin, dk_lin, dv_lin): (&[f32], &[f32], &[f32]) =
                if let (Some(qc), Some(kc), Some(vc)) = (il.q_conv, il.k_conv, il.v_conv) {
                    conv_bwd(&mut s.dq_lin, grad(grads, lay, qc), &gr.dq, &a.q_pre, &a.q_lin, p.get(qc), t, dm.key_dim, dm.conv);
                    conv_bwd(&mut s.dk_lin, grad(grads, lay, kc), dk, &a.k_pre, &a.k_lin, p.get(kc), t, dm.key_dim_kv, dm.conv);
                    conv_bwd(&mut s.dv_lin, grad(grads, lay, vc), dv, &a.v_pre, &a.v_lin, p.get(vc), t, dm.value_dim_kv, dm.conv);
                    (&s.dq_lin, &s.dk_lin, &s.dv_lin)
                } else {
                    (&gr.dq, dk, dv)
                };
            // projections from xn1
            linear_bwd_x(&mut s.dxn, dq_lin, p.get(il.q_proj), n, d, dm.key_dim, false);
            linear_bwd_x(&mut s.dxn, dk_lin, p.get(il.k_proj), n, d, dm.key_dim_kv, true);
            linear_bwd_x(&mut s.dxn, dv_lin, p.get(il.v_proj), n, d, dm.value_dim_kv, true);
            linear_bwd_x(&mut s.dxn, &s.dgk_lr, p.get(il.gk0), n, d, dm.gate_rank, true);
            linear_bwd_w(grad(grads, lay, il.q_proj), dq_lin, &a.xn1, n, d, dm.key_dim);
            linear_bwd_w(grad(grads, lay, il.k_proj), dk_lin, &a.xn1, n, d, dm.key_dim_kv);
            linear_bwd_w(grad(grads, lay, il.v_proj), dv_lin, &a.xn1, n, d, dm.value_dim_kv);
            linear_bwd_w(grad(grads, lay, il.gk0), &s.dgk_lr, &a.xn1, n, d, dm.gate_rank);
            if let Some(g) = il.g_proj {
                linear_bwd_x(&mut s.dxn, &s.dg_pre, p.get(g), n, d, dm.value_dim, true);
                linear_bwd_w(grad(grads, lay, g), &s.dg_pre, &a.xn1, n, d, dm.value_dim);
            }
            rmsnorm_bwd(&mut s.dres, grad(grads, lay, il.attn_norm), &s.dxn, x, &a.rstd1, p.get(il.attn_norm), d, true);
        }
        embedding_bwd(grad(grads, lay, lay.embeddings), &s.dres, ids, d, dm.pad);
        Ok(())
    }

    /// Logits of every position of a `[B, T]` batch, `[B*T, vocab]` (inference and tests).
    ///
    /// # Errors
    /// As [`GlaModel::forward`].
    pub fn logits(&self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        let mut acts = Activations::new(&self.dims, b, t);
        // every row "labelled" with token 0 so the lm_head runs on all rows
        let targets = vec![0i64; b * t];
        self.check_batch(&acts, ids, &targets)?;
        self.forward(&mut acts, ids, &targets)?;
        let d = self.dims.d;
        let mut out = vec![0.0; b * t * self.dims.vocab];
        linear_fwd(&mut out, &acts.xf, self.view().get(self.lm_head_id()), b * t, d, self.dims.vocab);
        Ok(out)
    }
}
