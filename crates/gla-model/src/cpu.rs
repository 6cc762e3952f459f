//! The CPU [`crate::backend::Backend`]: f32 everywhere, each op one function of [`crate::ops`] (the reference
//! the GPU kernels are checked against), the GLA op from gla-cpu (fused recurrent for T <= 64,
//! chunked otherwise, fla's mode switch), the delta-rule op from gla-cpu's `delta` module
//! (the path picked by `delta_op_for`), softmax attention from gla-cpu's `attn` module (the
//! tiled path for whole sequences, the KV-cache step for decode).
//!
//! `Act` is f32 too, so the GEMM-operand copies of f32 gradients are not made: their buffers
//! are empty ([`Primitives::alloc_cast`]) and [`Primitives::operand`] lends the f32 source. The one
//! exception is [`Cpu::emulating_bf16`], which rounds every `Act` to bf16 as the GPU stores it.

use gla_core::bidir::{BidirInputs, BidirOp, BidirProblem, BidirSpec};
use gla_core::op::GlaOp;
use gla_core::{AttnForward, AttnInputs, AttnOp, AttnProblem, Backward, DeltaInputs, DeltaOp, Inputs};
use gla_cpu::bidir::{BidirChunked, BidirFused};
use gla_cpu::delta::{delta_step, DeltaChunked, DeltaRecurrent};
use gla_cpu::mat::{matmul_with, MatRef, Threads};
use gla_cpu::{AttnCache, AttnTiled, Chunked, FusedRecurrent, Schedule};
use rayon::prelude::*;

use crate::backend::{
    AttnOps, AttnStorage, Cols, Conv2d, ConvIdx, DeltaDecay, DeltaOps, DeltaStorage, GlaOps, GlaStorage, ParamId, Primitives, Storage,
    VisionOps,
};
use crate::config::{AttnDims, DeltaDims, Dims, FeatureMap, GateAct, GlaDims};
use crate::layout::Layout;
use crate::mixers::delta::const_beta;
use crate::mixers::gla::problem;
use crate::mixers::gla::RECURRENT_MAX_T;
use crate::ops::*;
use crate::params::ParamSpec;
use crate::state::State;
use crate::{Error, Result};

/// The CPU's buffer types.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBuf;

/// The labelled rows of a batch and their targets.
#[derive(Debug, Default)]
pub struct CpuRows {
    rows: Vec<usize>,
    targets: Vec<u32>,
}

/// The batch shape (the GLA op's problem is made per call, as it is cheap).
#[derive(Debug, Clone, Copy)]
pub struct CpuPlan {
    b: usize,
    t: usize,
}

/// k, v, g repeated to every head (GQA); empty when the groups are 1.
#[derive(Debug, Default)]
pub struct CpuGla {
    k_rep: Vec<f32>,
    v_rep: Vec<f32>,
    gk_rep: Vec<f32>,
}

impl Storage for CpuBuf {
    type F32 = Vec<f32>;
    type Act = Vec<f32>;
    type Ids = Vec<u32>;
    type Rows = CpuRows;
    type Plan = CpuPlan;
}

impl GlaStorage for CpuBuf {
    type GlaSaved = CpuGla;
}

/// What the CPU's delta op keeps per layer: the constant beta of a layer without `b_proj`.
#[derive(Debug, Default)]
pub struct CpuDelta {
    beta: Vec<f32>,
}

impl DeltaStorage for CpuBuf {
    type DeltaSaved = CpuDelta;
}

/// What the CPU's attention op keeps per layer: its forward's output and log-sum-exp (the
/// tiled backward's inputs).
#[derive(Debug, Default)]
pub struct CpuAttn {
    fwd: Option<AttnForward<f32>>,
}

impl AttnStorage for CpuBuf {
    type AttnSaved = CpuAttn;
}

/// The CPU backend over a model's f32 weights.
#[derive(Debug, Clone, Copy)]
pub struct Cpu<'a> {
    dims: &'a Dims,
    /// The parameter table the arena follows (the LM's `Layout::specs`, or another model's).
    specs: &'a [ParamSpec],
    /// The language model's table, when the backend runs one.
    layout: Option<&'a Layout>,
    params: &'a [f32],
    /// Inference: GEMMs of few rows take the weight-major product ([`lin`]).
    small_rows: bool,
    /// Every activation written is rounded to bf16 ([`Cpu::emulating_bf16`]).
    bf16_acts: bool,
}

impl<'a> Cpu<'a> {
    /// The backend over `params` (an arena laid out by `layout`).
    pub fn new(dims: &'a Dims, layout: &'a Layout, params: &'a [f32]) -> Self {
        Self { dims, specs: &layout.specs, layout: Some(layout), params, small_rows: false, bf16_acts: false }
    }

    /// The backend over `params` laid out by another model's table `specs` (the vision model's,
    /// `crate::vig`); `dims` holds what the shared primitives read (D, the norms' eps, the MLP
    /// width, the classes as `vocab`).
    pub fn over_table(dims: &'a Dims, specs: &'a [ParamSpec], params: &'a [f32]) -> Self {
        Self { dims, specs, layout: None, params, small_rows: false, bf16_acts: false }
    }

    /// The backend for inference forwards: GEMMs of at most 128 rows (decode) go through a
    /// faster weight-major product (`lin`). Training keeps [`linear_fwd`] everywhere.
    pub fn for_inference(self) -> Self {
        Self { small_rows: true, ..self }
    }

    /// The backend that stores activations as the GPU does: every `Act` it writes (GEMM
    /// operands, saved activations, and the operand copies of f32 gradients,
    /// [`Primitives::alloc_cast`]) is rounded to bf16; the arithmetic stays f32. `gla check`
    /// measures the GPU model's rounding floor with it (with the weights rounded too). Its
    /// buffers must come from [`crate::Acts::alloc`] with this backend: the f32 backend's
    /// operand copies are empty, so the gradients it would multiply would stay unrounded.
    pub fn emulating_bf16(self) -> Self {
        Self { bf16_acts: true, ..self }
    }

    /// An `Act` just written: rounded to bf16 when emulating the GPU's storage.
    fn act(&self, y: &mut [f32]) {
        if self.bf16_acts {
            gla_core::bf16::round_all(y);
        }
    }

    /// `y = x @ w^T` in f32 (the [`crate::Backend`] linear ops round or not around it).
    fn lin_f32(&self, y: &mut [f32], x: &[f32], w: ParamId, n: usize, d_in: usize, d_out: usize) {
        let (y, x) = (&mut y[..n * d_out], &x[..n * d_in]);
        if self.small_rows {
            lin(y, x, self.p(w), n, d_in, d_out);
        } else {
            linear_fwd(y, x, self.p(w), n, d_in, d_out);
        }
    }

    fn p(&self, id: ParamId) -> &'a [f32] {
        &self.params[self.specs[id].range()]
    }

    /// The last dim of weight `id`: a conv's width `W` (`[C, 1, W]`), a norm's `V` (`[V]`).
    fn width(&self, id: ParamId) -> usize {
        self.specs[id].shape.last().copied().unwrap_or(0)
    }
}

fn grad<'g>(g: &'g mut [f32], specs: &[ParamSpec], id: ParamId) -> &'g mut [f32] {
    &mut g[specs[id].range()]
}

/// The GLA op fla's layer would use: fused recurrent for T <= 64, chunked otherwise.
pub(crate) fn op_for(t: usize) -> &'static dyn GlaOp<f32> {
    static CHUNKED: Chunked = Chunked { schedule: Schedule::Auto };
    if t <= RECURRENT_MAX_T {
        &FusedRecurrent
    } else {
        &CHUNKED
    }
}

/// The delta-rule op the CPU runs on `t` tokens per sequence: the one place that picks the path,
/// fla's mode switch (its DeltaNet layer: fused recurrent for `T <= 64`, chunked otherwise; the
/// two compute the same function). Decoding one token goes through gla-cpu's `delta_step`
/// ([`CpuIo::delta`]).
pub(crate) fn delta_op_for(t: usize) -> &'static dyn DeltaOp<f32> {
    if t <= RECURRENT_MAX_T {
        &DeltaRecurrent
    } else {
        &DeltaChunked
    }
}

/// Rows up to which [`lin`] takes the weight-major product.
const SMALL_ROWS: usize = 128;

/// `y [m, out] = x [m, in] @ w^T` like [`linear_fwd`], faster for few rows (decode): for
/// `m <= 128` it computes `w @ x^T` in blocks of 16 rows (the gemm crate is several times faster
/// in that orientation for few rows; the results are bit-identical) and transposes the small
/// result.
fn lin(y: &mut [f32], x: &[f32], w: &[f32], m: usize, d_in: usize, d_out: usize) {
    if m > SMALL_ROWS {
        return linear_fwd(y, x, w, m, d_in, d_out);
    }
    let mut tmp = vec![0.0f32; d_out * 16.min(m)];
    for r0 in (0..m).step_by(16) {
        let mb = (m - r0).min(16);
        let t = &mut tmp[..d_out * mb];
        matmul_with(
            t,
            mb,
            MatRef::new(w, d_out, d_in, d_in),
            MatRef::new(&x[r0 * d_in..(r0 + mb) * d_in], mb, d_in, d_in).t(),
            false,
            Threads::All,
        );
        for (j, col) in t.chunks_exact(mb).enumerate() {
            for (r, &v) in col.iter().enumerate() {
                y[(r0 + r) * d_out + j] = v;
            }
        }
    }
}

impl<'m> Cpu<'m> {
    /// The language model's parameter table the weights follow (what the model's forward and
    /// backward take); for a backend over another model's table ([`Cpu::over_table`]), the
    /// empty table (no layer, no tensor).
    pub fn layout(&self) -> &'m Layout {
        self.layout.unwrap_or(&EMPTY_LAYOUT)
    }
}

/// The table of no language model ([`Cpu::layout`] of a backend over another model's table).
static EMPTY_LAYOUT: Layout = Layout { specs: Vec::new(), embeddings: 0, layers: Vec::new(), norm: 0, lm_head: None, numel: 0 };

impl<'m> Primitives for Cpu<'m> {
    type Error = Error;
    type Buf = CpuBuf;
    type Io<'a> = CpuIo<'a>;
    type Grads = [f32];

    fn dims(&self) -> &Dims {
        self.dims
    }
    fn grads_len(&self, grads: &[f32]) -> usize {
        grads.len()
    }

    fn alloc_f32(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn alloc_act(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn alloc_cast(&self, len: usize) -> Result<Vec<f32>> {
        Ok(if self.bf16_acts { vec![0.0; len] } else { Vec::new() })
    }
    fn alloc_ids(&self, n: usize) -> Result<Vec<u32>> {
        Ok(vec![0; n])
    }
    fn alloc_rows(&self, n: usize) -> Result<CpuRows> {
        Ok(CpuRows { rows: Vec::with_capacity(n), targets: Vec::with_capacity(n) })
    }
    fn plan(&self, b: usize, t: usize, _backward: bool) -> Result<CpuPlan> {
        Ok(CpuPlan { b, t })
    }

    fn upload_ids(&self, dst: &mut Vec<u32>, ids: &[u32], _backward: bool) -> Result<()> {
        dst.copy_from_slice(ids);
        Ok(())
    }
    fn select_rows(&self, rows: &mut CpuRows, targets: &[i64]) -> Result<usize> {
        rows.rows.clear();
        rows.targets.clear();
        for (r, &tg) in targets.iter().enumerate() {
            if tg != crate::IGNORE_INDEX {
                rows.rows.push(r);
                rows.targets.push(tg as u32);
            }
        }
        Ok(rows.rows.len())
    }

    fn cast(&self, copy: &mut Vec<f32>, src: &Vec<f32>) -> Result<()> {
        if !copy.is_empty() {
            copy.copy_from_slice(src);
            self.act(copy);
        }
        Ok(())
    }
    fn operand<'a>(&self, copy: &'a Vec<f32>, src: &'a Vec<f32>) -> &'a Vec<f32> {
        if copy.is_empty() {
            src
        } else {
            copy
        }
    }

    fn embedding_fwd(&self, x: &mut Vec<f32>, ids: &Vec<u32>, w: ParamId, _n: usize) -> Result<()> {
        embedding_fwd(x, ids, self.p(w), self.dims.d);
        Ok(())
    }
    fn embedding_bwd(&self, _plan: &CpuPlan, g: &mut [f32], dx: &Vec<f32>, ids: &Vec<u32>, w: ParamId, _n: usize) -> Result<()> {
        embedding_bwd(grad(g, self.specs, w), dx, ids, self.dims.d, self.dims.pad);
        Ok(())
    }

    fn rmsnorm_fwd(&self, y: &mut Vec<f32>, rstd: &mut Vec<f32>, x: &Vec<f32>, w: ParamId, _n: usize) -> Result<()> {
        rmsnorm_fwd(y, rstd, x, self.p(w), self.dims.d, self.dims.eps);
        self.act(y);
        Ok(())
    }
    fn rmsnorm_bwd(
        &self,
        _plan: &CpuPlan,
        dx: &mut Vec<f32>,
        g: &mut [f32],
        dy: &Vec<f32>,
        x: &Vec<f32>,
        rstd: &Vec<f32>,
        w: ParamId,
        _n: usize,
        acc: bool,
    ) -> Result<()> {
        rmsnorm_bwd(dx, grad(g, self.specs, w), dy, x, rstd, self.p(w), self.dims.d, acc);
        Ok(())
    }

    fn linear_fwd(&self, y: &mut Vec<f32>, x: &Vec<f32>, w: ParamId, n: usize, d_in: usize, d_out: usize) -> Result<()> {
        self.lin_f32(y, x, w, n, d_in, d_out);
        self.act(&mut y[..n * d_out]);
        Ok(())
    }
    fn linear_fwd_f32(&self, y: &mut Vec<f32>, x: &Vec<f32>, w: ParamId, n: usize, d_in: usize, d_out: usize) -> Result<()> {
        self.lin_f32(y, x, w, n, d_in, d_out);
        Ok(())
    }
    fn linear_residual_fwd(
        &self,
        y: &mut Vec<f32>,
        res: &Vec<f32>,
        x: &Vec<f32>,
        w: ParamId,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<()> {
        self.lin_f32(y, x, w, n, d_in, d_out);
        let m = n * d_out;
        y[..m].iter_mut().zip(&res[..m]).for_each(|(y, r)| *y += r);
        Ok(())
    }
    fn linear_bwd_x(&self, dx: &mut Vec<f32>, dy: &Vec<f32>, w: ParamId, n: usize, d_in: usize, d_out: usize, acc: bool) -> Result<()> {
        linear_bwd_x(dx, dy, self.p(w), n, d_in, d_out, acc);
        Ok(())
    }
    fn linear_bwd_x_act(&self, dx: &mut Vec<f32>, dy: &Vec<f32>, w: ParamId, n: usize, d_in: usize, d_out: usize) -> Result<()> {
        Primitives::linear_bwd_x(self, dx, dy, w, n, d_in, d_out, false)?;
        self.act(&mut dx[..n * d_in]);
        Ok(())
    }
    fn linear_bwd_w(&self, g: &mut [f32], w: ParamId, dy: &Vec<f32>, x: &Vec<f32>, n: usize, d_in: usize, d_out: usize) -> Result<()> {
        linear_bwd_w(grad(g, self.specs, w), dy, x, n, d_in, d_out);
        Ok(())
    }

    fn conv_fwd(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        w: ParamId,
        _b: usize,
        t: usize,
        c: usize,
        silu: bool,
        io: Option<(&mut CpuIo<'_>, usize, ConvIdx)>,
    ) -> Result<()> {
        let width = self.width(w);
        match io {
            None => conv_fwd(y, x, self.p(w), t, c, width, silu),
            // each sequence continues from its cache
            Some((io, l, which)) => {
                for (s, caches) in io.convs.iter_mut().enumerate() {
                    let r = io.bounds[s] * c..io.bounds[s + 1] * c;
                    conv_cached(&mut y[r.clone()], &x[r], self.p(w), &mut caches[l][which], c, width, silu);
                }
            }
        }
        self.act(y);
        Ok(())
    }
    fn conv_bwd(
        &self,
        _plan: &CpuPlan,
        dx: &mut Vec<f32>,
        g: &mut [f32],
        w: ParamId,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        _b: usize,
        t: usize,
        c: usize,
        silu: bool,
    ) -> Result<()> {
        conv_bwd(dx, grad(g, self.specs, w), dy, x, self.p(w), t, c, self.width(w), silu);
        self.act(dx);
        Ok(())
    }

    fn gated_norm_fwd(
        &self,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        o: &Vec<f32>,
        g: Option<&Vec<f32>>,
        act: GateAct,
        w: ParamId,
        _rows: usize,
    ) -> Result<()> {
        gated_norm_fwd(y, rstd, o, g.map(Vec::as_slice), act, self.p(w), self.width(w), self.dims.eps);
        self.act(y);
        Ok(())
    }
    fn gated_norm_bwd(
        &self,
        _plan: &CpuPlan,
        d_o: &mut Vec<f32>,
        dg: Option<&mut Vec<f32>>,
        grads: &mut [f32],
        w: ParamId,
        dy: &Vec<f32>,
        o: &Vec<f32>,
        g: Option<&Vec<f32>>,
        act: GateAct,
        rstd: &Vec<f32>,
        _rows: usize,
    ) -> Result<()> {
        let v = self.width(w);
        let dw = grad(grads, self.specs, w);
        let mut dg = dg;
        gated_norm_bwd(d_o, dg.as_deref_mut().map(Vec::as_mut_slice), dw, dy, o, g.map(Vec::as_slice), act, rstd, self.p(w), v);
        self.act(d_o);
        if let Some(dg) = dg {
            self.act(dg);
        }
        Ok(())
    }

    fn swiglu_fwd(&self, h: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, _len: usize) -> Result<()> {
        swiglu_fwd(h, a, b);
        self.act(h);
        Ok(())
    }
    fn swiglu_bwd(&self, da: &mut Vec<f32>, db: &mut Vec<f32>, dh: &Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, _len: usize) -> Result<()> {
        swiglu_bwd(da, db, dh, a, b);
        self.act(da);
        self.act(db);
        Ok(())
    }

    fn feature_map_fwd(&self, y: &mut Vec<f32>, x: &Vec<f32>, len: usize, f: FeatureMap) -> Result<()> {
        feature_map_fwd(&mut y[..len], &x[..len], f);
        self.act(&mut y[..len]);
        Ok(())
    }
    fn feature_map_bwd(&self, d: &mut Vec<f32>, x: &Vec<f32>, len: usize, f: FeatureMap) -> Result<()> {
        feature_map_bwd(&mut d[..len], &x[..len], f);
        Ok(())
    }

    fn gather_rows(&self, out: &mut Vec<f32>, x: &Vec<f32>, rows: &CpuRows, m: usize) -> Result<()> {
        let d = self.dims.d;
        for (o, &r) in out[..m * d].chunks_exact_mut(d).zip(&rows.rows) {
            o.copy_from_slice(&x[r * d..(r + 1) * d]);
        }
        Ok(())
    }
    fn cross_entropy(&self, logits: &mut Vec<f32>, dlogits: &mut Vec<f32>, rows: &CpuRows, m: usize, dscale: f32) -> Result<(f64, usize)> {
        let vocab = self.dims.vocab;
        // the gradient is written over the logits (dlogits is empty: alloc_cast)
        let out = cross_entropy_fwd_bwd(&mut logits[..m * vocab], &rows.targets, vocab, dscale);
        Primitives::cast(self, dlogits, logits)?;
        Ok(out)
    }
    fn lm_head_bwd(
        &self,
        g: &mut [f32],
        w: ParamId,
        dsel: &mut Vec<f32>,
        logits: &mut Vec<f32>,
        dlogits: &mut Vec<f32>,
        x_sel: &Vec<f32>,
        m: usize,
        scale: f32,
    ) -> Result<()> {
        let (d, vocab) = (self.dims.d, self.dims.vocab);
        let dl = if dlogits.is_empty() { logits } else { dlogits };
        let dl = &mut dl[..m * vocab];
        linear_bwd_x(&mut dsel[..m * d], dl, self.p(w), m, d, vocab, false);
        if scale != 1.0 {
            dl.iter_mut().for_each(|x| *x *= scale);
        }
        linear_bwd_w(grad(g, self.specs, w), dl, &x_sel[..m * d], m, d, vocab);
        Ok(())
    }
    fn scatter_rows(&self, dx: &mut Vec<f32>, src: &Vec<f32>, rows: &CpuRows, m: usize, _n: usize, scale: f32) -> Result<()> {
        let d = self.dims.d;
        dx.fill(0.0);
        for (i, &r) in rows.rows[..m].iter().enumerate() {
            let (dst, s) = (&mut dx[r * d..(r + 1) * d], &src[i * d..(i + 1) * d]);
            if scale != 1.0 {
                dst.iter_mut().zip(s).for_each(|(a, &b)| *a = b * scale);
            } else {
                dst.copy_from_slice(s);
            }
        }
        Ok(())
    }
}

impl<'m> GlaOps for Cpu<'m> {
    fn alloc_gla_grads(&self, dm: &GlaDims, n: usize) -> Result<[Vec<f32>; 4]> {
        // dq and, without GQA, dk, dv, dg are the op's own outputs, moved in (gla_bwd)
        let z = |len: usize| if dm.groups() > 1 { vec![0.0; len] } else { Vec::new() };
        Ok([Vec::new(), z(n * dm.key_dim_kv), z(n * dm.value_dim_kv), z(n * dm.key_dim_kv)])
    }

    fn alloc_gla_saved(&self, dm: &GlaDims, n: usize) -> Result<CpuGla> {
        if dm.groups() == 1 {
            return Ok(CpuGla::default());
        }
        Ok(CpuGla { k_rep: vec![0.0; n * dm.key_dim], v_rep: vec![0.0; n * dm.value_dim], gk_rep: vec![0.0; n * dm.key_dim] })
    }

    fn gate_fwd(&self, dm: &GlaDims, gk: &mut Vec<f32>, raw: &mut Vec<f32>, bias: ParamId, _n: usize) -> Result<()> {
        let bias = self.p(bias);
        for row in raw.chunks_exact_mut(dm.key_dim_kv) {
            row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
        }
        gate_fwd(gk, raw, dm.gate_norm, dm.clamp_min);
        self.act(gk);
        Ok(())
    }

    fn gate_bwd(
        &self,
        dm: &GlaDims,
        _plan: &CpuPlan,
        dx: &mut Vec<f32>,
        dx_act: &mut Vec<f32>,
        g: &mut [f32],
        bias: ParamId,
        dg: &Vec<f32>,
        raw: &Vec<f32>,
        _n: usize,
    ) -> Result<()> {
        gate_bwd(dx, dg, raw, dm.gate_norm, dm.clamp_min);
        Primitives::cast(self, dx_act, dx)?;
        let db = grad(g, self.specs, bias);
        for row in dx.chunks_exact(dm.key_dim_kv) {
            db.iter_mut().zip(row).for_each(|(b, r)| *b += r);
        }
        Ok(())
    }

    fn gla_fwd(
        &self,
        dm: &GlaDims,
        plan: &CpuPlan,
        saved: &mut CpuGla,
        o: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        g: &Vec<f32>,
        io: Option<(&mut CpuIo<'_>, usize)>,
    ) -> Result<()> {
        let (k, v, g) = if dm.groups() > 1 {
            repeat_heads(&mut saved.k_rep, k, dm.kv_heads, dm.groups(), dm.head_k);
            repeat_heads(&mut saved.v_rep, v, dm.kv_heads, dm.groups(), dm.head_v);
            repeat_heads(&mut saved.gk_rep, g, dm.kv_heads, dm.groups(), dm.head_k);
            (&saved.k_rep, &saved.v_rep, &saved.gk_rep)
        } else {
            (k, v, g)
        };
        match io {
            None => {
                let prob = problem(dm, plan.b, plan.t, None)?;
                let fwd = op_for(plan.t).forward(&prob, &Inputs { q, k, v, g: Some(g), h0: None }, false)?;
                *o = fwd.o;
            }
            Some((io, l)) => io.gla(dm, o, [q, k, v, g], l)?,
        }
        self.act(o);
        Ok(())
    }

    fn gla_bwd(
        &self,
        dm: &GlaDims,
        plan: &CpuPlan,
        saved: &CpuGla,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        g: &Vec<f32>,
        d_o: &Vec<f32>,
        grads: [&mut Vec<f32>; 4],
    ) -> Result<()> {
        let groups = dm.groups();
        let (k, v, g) = if groups > 1 { (&saved.k_rep, &saved.v_rep, &saved.gk_rep) } else { (k, v, g) };
        let prob = problem(dm, plan.b, plan.t, None)?;
        let x_in = Inputs { q, k, v, g: Some(g), h0: None };
        let gr = op_for(plan.t).backward(&prob, &x_in, &Backward { d_o, dht: None })?;
        let dg_full = gr.dg.unwrap_or_default();
        let [dq, dk, dv, dg] = grads;
        // the op's outputs are moved in where no sum over the groups is needed
        *dq = gr.dq;
        if groups > 1 {
            repeat_heads_bwd(dk, &gr.dk, dm.kv_heads, groups, dm.head_k);
            repeat_heads_bwd(dv, &gr.dv, dm.kv_heads, groups, dm.head_v);
            repeat_heads_bwd(dg, &dg_full, dm.kv_heads, groups, dm.head_k);
        } else {
            *dk = gr.dk;
            *dv = gr.dv;
            *dg = dg_full;
        }
        Ok(())
    }
}

impl Cpu<'_> {
    /// The delta op's inputs over the layer's tensors: `constant` (`[N, HV]`) as beta without
    /// `b_proj`, the decay's parameters from the weights.
    fn delta_inputs<'x>(
        &'x self,
        [q, k, v]: [&'x [f32]; 3],
        beta: Option<&'x Vec<f32>>,
        constant: &'x [f32],
        decay: Option<DeltaDecay<'x, Vec<f32>>>,
    ) -> DeltaInputs<'x, f32> {
        let beta = beta.map_or(constant, Vec::as_slice);
        DeltaInputs {
            q,
            k,
            v,
            beta,
            g: decay.map(|d| d.a.as_slice()),
            a_log: decay.map(|d| self.p(d.a_log)),
            dt_bias: decay.map(|d| self.p(d.dt_bias)),
            h0: None,
        }
    }
}

impl<'m> DeltaOps for Cpu<'m> {
    fn alloc_delta_grads(&self, _md: &DeltaDims, _n: usize) -> Result<[Vec<f32>; 5]> {
        // the op's own outputs are moved in (delta_bwd)
        Ok(Default::default())
    }

    fn alloc_delta_saved(&self, _md: &DeltaDims, _n: usize) -> Result<CpuDelta> {
        Ok(CpuDelta::default())
    }

    fn delta_fwd(
        &self,
        md: &DeltaDims,
        plan: &CpuPlan,
        saved: &mut CpuDelta,
        o: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        beta: Option<&Vec<f32>>,
        decay: Option<DeltaDecay<'_, Vec<f32>>>,
        io: Option<(&mut CpuIo<'_>, usize)>,
    ) -> Result<()> {
        let hv = plan.b * plan.t * md.v_heads;
        if beta.is_none() && saved.beta.len() != hv {
            saved.beta = vec![const_beta(md); hv];
        }
        let x = self.delta_inputs([q, k, v], beta, &saved.beta, decay);
        match io {
            None => {
                let prob = crate::mixers::delta::problem(md, plan.b, plan.t, None)?;
                *o = delta_op_for(plan.t).forward(&prob, &x, false)?.o;
            }
            Some((io, l)) => io.delta(md, o, &x, l)?,
        }
        self.act(o);
        Ok(())
    }

    fn delta_bwd(
        &self,
        md: &DeltaDims,
        plan: &CpuPlan,
        saved: &CpuDelta,
        grads: &mut [f32],
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        beta: Option<&Vec<f32>>,
        decay: Option<DeltaDecay<'_, Vec<f32>>>,
        d_o: &Vec<f32>,
        out: [&mut Vec<f32>; 5],
    ) -> Result<()> {
        let hv = plan.b * plan.t * md.v_heads;
        // the forward left the constant beta there; a backward without one makes its own
        let fresh = if beta.is_none() && saved.beta.len() != hv { vec![const_beta(md); hv] } else { Vec::new() };
        let constant = if fresh.is_empty() { &saved.beta } else { &fresh };
        let x = self.delta_inputs([q, k, v], beta, constant, decay);
        let prob = crate::mixers::delta::problem(md, plan.b, plan.t, None)?;
        let gr = delta_op_for(plan.t).backward(&prob, &x, &Backward { d_o, dht: None })?;
        let [dq, dk, dv, dbeta, da] = out;
        *dq = gr.dq;
        *dk = gr.dk;
        *dv = gr.dv;
        if beta.is_some() {
            *dbeta = gr.dbeta;
        }
        if let (Some(d), Some(dg), Some(dal), Some(ddt)) = (decay, gr.dg, gr.da_log, gr.ddt_bias) {
            *da = dg;
            grad(grads, self.specs, d.a_log).iter_mut().zip(&dal).for_each(|(g, x)| *g += x);
            grad(grads, self.specs, d.dt_bias).iter_mut().zip(&ddt).for_each(|(g, x)| *g += x);
        }
        Ok(())
    }

    fn sum_norm_fwd(&self, y: &mut Vec<f32>, x: &Vec<f32>, rows: usize, width: usize) -> Result<()> {
        sum_norm_fwd(&mut y[..rows * width], &x[..rows * width], width);
        self.act(&mut y[..rows * width]);
        Ok(())
    }

    fn sum_norm_bwd(&self, d: &mut Vec<f32>, x: &Vec<f32>, rows: usize, width: usize) -> Result<()> {
        sum_norm_bwd(&mut d[..rows * width], &x[..rows * width], width);
        Ok(())
    }
}

/// The attention op the CPU runs on whole sequences (training, and a prefill into empty
/// caches): the tiled flash-style path. Decoding goes through gla-cpu's `AttnCache::step`
/// ([`CpuIo::attn`]).
static ATTN: AttnTiled = AttnTiled;

impl<'m> AttnOps for Cpu<'m> {
    fn alloc_attn_grads(&self, _md: &AttnDims, _n: usize) -> Result<[Vec<f32>; 3]> {
        // the op's own outputs are moved in (attn_bwd)
        Ok(Default::default())
    }

    fn alloc_attn_saved(&self, _md: &AttnDims, _n: usize) -> Result<CpuAttn> {
        Ok(CpuAttn::default())
    }

    fn bias_fwd(&self, y: &mut Vec<f32>, bias: ParamId, n: usize) -> Result<()> {
        let b = self.p(bias);
        let y = &mut y[..n * b.len()];
        bias_fwd(y, b);
        self.act(y);
        Ok(())
    }

    fn bias_bwd(&self, _plan: &CpuPlan, g: &mut [f32], bias: ParamId, dy: &Vec<f32>, n: usize) -> Result<()> {
        let db = grad(g, self.specs, bias);
        let c = db.len();
        bias_bwd(db, &dy[..n * c]);
        Ok(())
    }

    fn rope_fwd(&self, md: &AttnDims, plan: &CpuPlan, y: &mut Vec<f32>, x: &Vec<f32>, heads: usize, io: Option<&CpuIo<'_>>) -> Result<()> {
        let n = plan.b * plan.t;
        let y = &mut y[..n * heads * md.head_dim];
        y.copy_from_slice(&x[..y.len()]);
        let pos = match io {
            None => (0..n).map(|r| r % plan.t).collect(),
            Some(io) => io.positions(),
        };
        rope(y, &pos, heads, &md.rope_inv_freq(), false);
        self.act(y);
        Ok(())
    }

    fn rope_bwd(&self, md: &AttnDims, plan: &CpuPlan, d: &mut Vec<f32>, heads: usize) -> Result<()> {
        let n = plan.b * plan.t;
        let pos: Vec<usize> = (0..n).map(|r| r % plan.t).collect();
        rope(&mut d[..n * heads * md.head_dim], &pos, heads, &md.rope_inv_freq(), true);
        Ok(())
    }

    fn attn_fwd(
        &self,
        md: &AttnDims,
        plan: &CpuPlan,
        saved: &mut CpuAttn,
        o: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        io: Option<(&mut CpuIo<'_>, usize)>,
    ) -> Result<()> {
        match io {
            None => {
                let prob = AttnProblem::new(md.op_spec(plan.b, plan.t, None))?;
                let fwd = ATTN.forward(&prob, &AttnInputs { q, k, v })?;
                o.copy_from_slice(&fwd.o);
                saved.fwd = Some(fwd);
            }
            Some((io, l)) => io.attn(md, o, [q, k, v], l)?,
        }
        self.act(o);
        Ok(())
    }

    fn attn_bwd(
        &self,
        md: &AttnDims,
        plan: &CpuPlan,
        saved: &CpuAttn,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        _o: &Vec<f32>,
        d_o: &Vec<f32>,
        grads: [&mut Vec<f32>; 3],
    ) -> Result<()> {
        let prob = AttnProblem::new(md.op_spec(plan.b, plan.t, None))?;
        let Some(fwd) = &saved.fwd else {
            // a backward needs the forward's lse: activations that never ran a training forward
            return Err(Error::Op(gla_core::Error::BadArg {
                key: "attn_bwd",
                reason: "no saved forward (run the training forward on these activations first)".into(),
            }));
        };
        let gr = ATTN.backward(&prob, &AttnInputs { q, k, v }, fwd, d_o)?;
        let [dq, dk, dv] = grads;
        *dq = gr.dq;
        *dk = gr.dk;
        *dv = gr.dv;
        Ok(())
    }
}

/// Causal depthwise conv (+ SiLU with `silu`) over `len` new rows `x [len, C]`, continuing from
/// `cache [C, W]` (the previous `W` inputs, newest last), which is then advanced to the last `W`
/// inputs.
pub(crate) fn conv_cached(y: &mut [f32], x: &[f32], w: &[f32], cache: &mut [f32], c: usize, width: usize, silu: bool) {
    let len = x.len() / c;
    // input at relative time s (negative: from the cache)
    let at = |cache: &[f32], s: isize, ch: usize| -> f32 {
        if s >= 0 {
            x[s as usize * c + ch]
        } else {
            cache[ch * width + (width as isize + s) as usize]
        }
    };
    y.par_chunks_mut(c).enumerate().for_each(|(t, yr)| {
        for (ch, yv) in yr.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for j in 0..width {
                acc += w[ch * width + j] * at(cache, t as isize - (width as isize - 1) + j as isize, ch);
            }
            *yv = if silu { acc / (1.0 + (-acc).exp()) } else { acc };
        }
    });
    let mut next = vec![0.0f32; c * width];
    for ch in 0..c {
        for i in 0..width {
            next[ch * width + i] = at(cache, len as isize - width as isize + i as isize, ch);
        }
    }
    cache.copy_from_slice(&next);
}

/// The CPU's inference state of one forward over packed sequences (the backend's `Io`): where
/// each sequence's rows are (`bounds`), its state (read), and its new conv caches and recurrent
/// states, staged here and moved into the states only once the whole forward succeeded (so an
/// error leaves them unchanged).
pub struct CpuIo<'a> {
    /// Row offsets of the sequences: sequence `s` holds rows `bounds[s]..bounds[s + 1]`.
    pub(crate) bounds: Vec<usize>,
    pub(crate) states: &'a [&'a mut State],
    /// Per sequence, per layer: the q, k, v conv caches (copies, advanced in place).
    pub(crate) convs: Vec<Vec<[Vec<f32>; 3]>>,
    /// Per sequence: the new recurrent state of each layer done so far (empty for an
    /// attention layer).
    pub(crate) recs: Vec<Vec<Vec<f32>>>,
    /// Per sequence: the new KV caches of the attention layers done so far, with their layer.
    pub(crate) kvs: Vec<Vec<(usize, AttnCache<f32>)>>,
}

impl CpuIo<'_> {
    /// Each row's position in its sequence: the tokens the sequence had seen before this forward
    /// plus the row's index within the sequence's rows.
    pub(crate) fn positions(&self) -> Vec<usize> {
        let mut pos = Vec::with_capacity(self.bounds.last().copied().unwrap_or(0));
        for (s, w) in self.bounds.windows(2).enumerate() {
            pos.extend((0..w[1] - w[0]).map(|i| self.states[s].seen + i));
        }
        pos
    }

    /// The attention op of layer `l` over the packed sequences (`q [rows, H*Dh]`, `k, v
    /// [rows, H_KV*Dh]`, after RoPE), each attending its KV cache and its own rows. Sequences
    /// whose caches are empty (a first prefill) run the tiled path, all together as one varlen
    /// problem; the others advance token by token through `AttnCache::step`. The new caches are
    /// staged (the states change only once the whole forward succeeded, CpuIo's contract).
    pub(crate) fn attn(&mut self, md: &AttnDims, o: &mut [f32], [q, k, v]: [&[f32]; 3], l: usize) -> Result<()> {
        let (wq, wk) = (md.q_dim(), md.kv_dim());
        let ns = self.bounds.len() - 1;
        let mut caches = Vec::with_capacity(ns);
        for st in self.states {
            let cache = st.layers[l]
                .kv
                .clone()
                .ok_or_else(|| Error::Op(gla_core::Error::BadArg { key: "state", reason: format!("layer {l} holds no KV cache") }))?;
            caches.push(cache);
        }
        let fresh = |c: &AttnCache<f32>| c.seen(0) == Some(0);
        let rows = self.bounds[ns];
        if caches.iter().all(fresh) {
            let prob = AttnProblem::new(md.op_spec(1, rows, Some(self.bounds.clone())))?;
            let fwd = ATTN.forward(&prob, &AttnInputs { q: &q[..rows * wq], k: &k[..rows * wk], v: &v[..rows * wk] })?;
            o[..rows * wq].copy_from_slice(&fwd.o);
        } else {
            for (s, cache) in caches.iter().enumerate() {
                let (a, b) = (self.bounds[s], self.bounds[s + 1]);
                if fresh(cache) {
                    let prob = AttnProblem::new(md.op_spec(1, b - a, None))?;
                    let x = AttnInputs { q: &q[a * wq..b * wq], k: &k[a * wk..b * wk], v: &v[a * wk..b * wk] };
                    o[a * wq..b * wq].copy_from_slice(&ATTN.forward(&prob, &x)?.o);
                } else {
                    let mut c = cache.clone();
                    for r in a..b {
                        let rq = r * wq..(r + 1) * wq;
                        let rk = r * wk..(r + 1) * wk;
                        let out = c.step(&[0], &q[rq.clone()], &k[rk.clone()], &v[rk])?;
                        o[rq].copy_from_slice(&out.o);
                    }
                    self.recs[s].push(Vec::new());
                    self.kvs[s].push((l, c));
                    continue;
                }
            }
        }
        for (s, mut cache) in caches.into_iter().enumerate() {
            if !fresh(&cache) {
                continue; // staged above with its steps
            }
            let (a, b) = (self.bounds[s], self.bounds[s + 1]);
            cache.append(0, &k[a * wk..b * wk], &v[a * wk..b * wk])?;
            self.recs[s].push(Vec::new());
            self.kvs[s].push((l, cache));
        }
        Ok(())
    }

    /// The GLA op of layer `l` over the packed sequences, one call per sequence with the
    /// algorithm it would get alone (fla's per-call mode switch: fused recurrent for at most 64
    /// tokens, chunked otherwise), reading its state in place (no gather into a batch buffer: at
    /// decode, copying the states dominated). `q, k, v, g` are at every head (GQA repeated).
    pub(crate) fn gla(&mut self, dm: &GlaDims, o: &mut [f32], [q, k, v, g]: [&[f32]; 4], l: usize) -> Result<()> {
        let (hk, hv) = (dm.heads * dm.head_k, dm.heads * dm.head_v);
        for s in 0..self.bounds.len() - 1 {
            let (a, b) = (self.bounds[s], self.bounds[s + 1]);
            let prob = crate::mixers::gla::problem(dm, 1, b - a, None)?;
            let h0 = &self.states[s].layers[l].recurrent;
            let x =
                Inputs { q: &q[a * hk..b * hk], k: &k[a * hk..b * hk], v: &v[a * hv..b * hv], g: Some(&g[a * hk..b * hk]), h0: Some(h0) };
            let out = op_for(b - a).forward(&prob, &x, true)?;
            o[a * hv..b * hv].copy_from_slice(&out.o);
            self.recs[s].push(out.ht.unwrap_or_default());
        }
        Ok(())
    }

    /// The delta-rule op of layer `l` over the packed sequences, one call per sequence from its
    /// state `[HV, K, V]`, as [`CpuIo::gla`]: one token (decode) advances a copy of the state by
    /// `delta_step`, more take the path [`delta_op_for`] picks for their length. `x` holds the
    /// whole batch's inputs (no state).
    pub(crate) fn delta(&mut self, md: &DeltaDims, o: &mut [f32], x: &DeltaInputs<'_, f32>, l: usize) -> Result<()> {
        let (hk, hv, nh) = (md.key_dim, md.value_dim, md.v_heads);
        for s in 0..self.bounds.len() - 1 {
            let (a, b) = (self.bounds[s], self.bounds[s + 1]);
            let prob = crate::mixers::delta::problem(md, 1, b - a, None)?;
            let h0 = &self.states[s].layers[l].recurrent;
            let xs = DeltaInputs {
                q: &x.q[a * hk..b * hk],
                k: &x.k[a * hk..b * hk],
                v: &x.v[a * hv..b * hv],
                beta: &x.beta[a * nh..b * nh],
                g: x.g.map(|g| &g[a * nh..b * nh]),
                a_log: x.a_log,
                dt_bias: x.dt_bias,
                h0: None,
            };
            if b - a == 1 {
                // the new state is staged here, moved into the sequence's state once the whole
                // forward succeeded (CpuIo's contract)
                let mut st = h0.clone();
                o[a * hv..b * hv].copy_from_slice(&delta_step(&prob, &mut st, &xs)?);
                self.recs[s].push(st);
                continue;
            }
            let out = delta_op_for(b - a).forward(&prob, &DeltaInputs { h0: Some(h0), ..xs }, true)?;
            o[a * hv..b * hv].copy_from_slice(&out.o);
            self.recs[s].push(out.ht.unwrap_or_default());
        }
        Ok(())
    }
}

/// The bidirectional scan the CPU runs: both directions fused per one-chunk sequence (ViG on
/// small images), the GLA chunked path on each direction for longer ones.
static BIDIR: BidirFused = BidirFused { long: BidirChunked { gla: Chunked { schedule: Schedule::Auto } } };

/// The bidirectional problem of `b` sequences of `t` tokens at the heads of `md` (the per-head
/// scale `K^-1/2`, as the GLA op's).
pub(crate) fn bidir_problem(md: &GlaDims, b: usize, t: usize) -> Result<BidirProblem> {
    let spec = BidirSpec { scale: Some((md.head_k as f64).powf(-0.5)), ..BidirSpec::new(b, t, md.heads, md.head_k, md.head_v) };
    Ok(BidirProblem::new(spec)?)
}

/// The op's inputs of `p` over the layer's buffers (their first elements).
fn bidir_inputs<'a>(p: &BidirProblem, [q, k, v]: [&'a [f32]; 3], [gf, gb]: [&'a [f32]; 2]) -> Result<BidirInputs<'a, f32>> {
    let (qk, vl) = (p.qk_len(), p.v_len());
    Ok(BidirInputs { q: head("q", q, qk)?, k: head("k", k, qk)?, v: head("v", v, vl)?, gf: head("gf", gf, qk)?, gb: head("gb", gb, qk)? })
}

/// The first `n` elements of `x`, or a typed error when it is shorter.
fn head<'a>(tensor: &'static str, x: &'a [f32], n: usize) -> Result<&'a [f32]> {
    x.get(..n).ok_or_else(|| Error::Shape { op: "bidir", tensor, shape: format!("{n} elements"), expected: n, got: x.len() })
}

/// The output size of `g`, or a typed error when the image is smaller than the kernel.
fn conv_out(g: &Conv2d) -> Result<(usize, usize)> {
    g.out_hw().ok_or_else(|| Error::BadConfig {
        key: "image size",
        reason: format!("a {}x{} input is smaller than the {}x{} kernel (padding {}, stride {})", g.h, g.w, g.k, g.k, g.pad, g.stride),
    })
}

impl<'m> VisionOps for Cpu<'m> {
    fn upload_image(&self, dst: &mut Vec<f32>, nchw: &[f32], b: usize, c: usize, h: usize, w: usize) -> Result<()> {
        if nchw.len() != b * c * h * w || dst.len() < nchw.len() {
            return Err(Error::Shape {
                op: "upload_image",
                tensor: "images",
                shape: format!("[{b}, {c}, {h}, {w}]"),
                expected: b * c * h * w,
                got: nchw.len(),
            });
        }
        nchw_to_nhwc(dst, nchw, b, c, h, w);
        self.act(dst);
        Ok(())
    }
    fn im2col(&self, cols: &mut Vec<f32>, x: &Vec<f32>, g: &Conv2d) -> Result<()> {
        let hw = conv_out(g)?;
        im2col(cols, x, g, hw);
        self.act(cols);
        Ok(())
    }
    fn col2im(&self, dx: &mut Vec<f32>, dcols: &Vec<f32>, g: &Conv2d) -> Result<()> {
        let hw = conv_out(g)?;
        col2im(dx, dcols, g, hw);
        Ok(())
    }
    fn bias_fwd_f32(&self, y: &mut Vec<f32>, bias: ParamId, n: usize, c: usize) -> Result<()> {
        bias_fwd(&mut y[..n * c], self.p(bias));
        Ok(())
    }
    fn bias_bwd_act(&self, g: &mut [f32], bias: ParamId, dy: &Vec<f32>, n: usize, c: usize) -> Result<()> {
        bias_bwd(grad(g, self.specs, bias), &dy[..n * c]);
        Ok(())
    }
    fn layernorm_fwd(
        &self,
        y: &mut Vec<f32>,
        stats: &mut Vec<f32>,
        x: &Vec<f32>,
        w: ParamId,
        b: ParamId,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        let c = self.width(w);
        layernorm_fwd(y, stats, &x[..n * c], self.p(w), self.p(b), c, eps);
        self.act(y);
        Ok(())
    }
    fn layernorm_bwd(
        &self,
        dx: &mut Vec<f32>,
        g: &mut [f32],
        dy: &Vec<f32>,
        x: &Vec<f32>,
        stats: &Vec<f32>,
        w: ParamId,
        b: ParamId,
        n: usize,
    ) -> Result<()> {
        let c = self.width(w);
        let mut db = vec![0.0f32; c];
        layernorm_bwd(dx, grad(g, self.specs, w), &mut db, dy, &x[..n * c], stats, self.p(w), c);
        grad(g, self.specs, b).iter_mut().zip(&db).for_each(|(o, &v)| *o += v);
        Ok(())
    }
    fn dwconv_fwd(&self, y: &mut Vec<f32>, x: &Vec<f32>, weight: ParamId, b: usize, h: usize, w: usize, c: usize) -> Result<()> {
        dwconv3_fwd(y, x, self.p(weight), (b, h, w, c));
        self.act(y);
        Ok(())
    }
    fn dwconv_bwd(
        &self,
        dx: &mut Vec<f32>,
        g: &mut [f32],
        dy: &Vec<f32>,
        x: &Vec<f32>,
        weight: ParamId,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
    ) -> Result<()> {
        dwconv3_bwd(dx, grad(g, self.specs, weight), dy, x, self.p(weight), (b, h, w, c));
        Ok(())
    }
    fn pos_embed_fwd(&self, x: &mut Vec<f32>, pe: ParamId, src: (usize, usize), dst: (usize, usize), b: usize) -> Result<()> {
        let d = self.width(pe);
        pos_embed_fwd(&mut x[..b * dst.0 * dst.1 * d], self.p(pe), src, dst, d);
        Ok(())
    }
    fn pos_embed_bwd(&self, g: &mut [f32], dx: &Vec<f32>, pe: ParamId, src: (usize, usize), dst: (usize, usize), b: usize) -> Result<()> {
        let d = self.width(pe);
        pos_embed_bwd(grad(g, self.specs, pe), &dx[..b * dst.0 * dst.1 * d], src, dst, d);
        Ok(())
    }
    fn avgpool_fwd(&self, y: &mut Vec<f32>, x: &Vec<f32>, b: usize, l: usize, d: usize) -> Result<()> {
        avgpool_fwd(y, x, b, l, d);
        self.act(y);
        Ok(())
    }
    fn avgpool_bwd(&self, dx: &mut Vec<f32>, dy: &Vec<f32>, b: usize, l: usize, d: usize) -> Result<()> {
        avgpool_bwd(dx, dy, b, l, d);
        Ok(())
    }
    fn cols(&self, dst: &mut Vec<f32>, src: &Vec<f32>, c: &Cols) -> Result<()> {
        copy_cols(dst, src, c);
        self.act(&mut dst[..c.b * c.t * c.dst.0]);
        Ok(())
    }
    fn cols_f32(&self, dst: &mut Vec<f32>, src: &Vec<f32>, c: &Cols) -> Result<()> {
        copy_cols(dst, src, c);
        Ok(())
    }
    fn cols_to_f32(&self, dst: &mut Vec<f32>, src: &Vec<f32>, c: &Cols) -> Result<()> {
        copy_cols(dst, src, c);
        Ok(())
    }
    fn locality_gate_fwd(&self, y: &mut Vec<f32>, gn: &Vec<f32>, ln: &Vec<f32>, gpre: &Vec<f32>, out_act: bool, len: usize) -> Result<()> {
        locality_gate_fwd(&mut y[..len], &gn[..len], &ln[..len], &gpre[..len], out_act);
        self.act(&mut y[..len]);
        Ok(())
    }
    fn locality_gate_bwd(
        &self,
        d_gn: &mut Vec<f32>,
        d_ln: &mut Vec<f32>,
        d_gpre: &mut Vec<f32>,
        dy: &Vec<f32>,
        gn: &Vec<f32>,
        ln: &Vec<f32>,
        gpre: &Vec<f32>,
        out_act: bool,
        len: usize,
    ) -> Result<()> {
        locality_gate_bwd(
            &mut d_gn[..len],
            &mut d_ln[..len],
            &mut d_gpre[..len],
            &dy[..len],
            &gn[..len],
            &ln[..len],
            &gpre[..len],
            out_act,
        );
        Ok(())
    }
    fn bidir_fwd(
        &self,
        md: &GlaDims,
        _plan: &CpuPlan,
        o: &mut Vec<f32>,
        [q, k, v]: [&Vec<f32>; 3],
        [gf, gb]: [&Vec<f32>; 2],
        b: usize,
        t: usize,
    ) -> Result<()> {
        let p = bidir_problem(md, b, t)?;
        let vl = p.v_len();
        let out = BIDIR.forward(&p, &bidir_inputs(&p, [q, k, v], [gf, gb])?)?;
        head("o", o, vl)?;
        o[..vl].copy_from_slice(&out);
        self.act(&mut o[..vl]);
        Ok(())
    }
    fn bidir_bwd(
        &self,
        md: &GlaDims,
        _plan: &CpuPlan,
        [q, k, v]: [&Vec<f32>; 3],
        [gf, gb]: [&Vec<f32>; 2],
        d_o: &Vec<f32>,
        out: [&mut Vec<f32>; 5],
        b: usize,
        t: usize,
    ) -> Result<()> {
        let p = bidir_problem(md, b, t)?;
        let x = bidir_inputs(&p, [q, k, v], [gf, gb])?;
        let g = BIDIR.backward(&p, &x, head("do", d_o, p.v_len())?)?;
        let [dq, dk, dv, dgf, dgb] = out;
        for (dst, src, name) in [(dq, g.dq, "dq"), (dk, g.dk, "dk"), (dv, g.dv, "dv"), (dgf, g.dgf, "dgf"), (dgb, g.dgb, "dgb")] {
            head(name, dst, src.len())?;
            dst[..src.len()].copy_from_slice(&src);
        }
        Ok(())
    }
    fn scale_rows(&self, dst: &mut Vec<f32>, res: Option<&Vec<f32>>, src: &Vec<f32>, scales: &[f32], l: usize, c: usize) -> Result<()> {
        let len = scales.len() * l * c;
        if dst.len() < len || src.len() < len || res.is_some_and(|r| r.len() < len) {
            return Err(Error::Shape {
                op: "scale_rows",
                tensor: "rows",
                shape: format!("[{}, {l}, {c}]", scales.len()),
                expected: len,
                got: src.len().min(dst.len()),
            });
        }
        scale_rows(dst, res.map(Vec::as_slice), src, scales, l, c);
        Ok(())
    }
    fn smoothed_cross_entropy(
        &self,
        dlogits: &mut Vec<f32>,
        logits: &Vec<f32>,
        labels: &[u32],
        classes: usize,
        eps: f32,
        dscale: f32,
    ) -> Result<(f64, usize)> {
        if let Some(&bad) = labels.iter().find(|&&y| y as usize >= classes) {
            return Err(Error::BadConfig { key: "labels", reason: format!("label {bad} is outside [0, {classes})") });
        }
        Ok(smoothed_cross_entropy(dlogits, logits, labels, classes, eps, dscale))
    }
}
