//! Inference: immutable weights ([`GlaModel`]) plus one [`State`] per sequence.
//!
//! A [`State`] holds, per layer, the recurrent state `[H, K, V]` (f32) and, with short
//! convolution, the three conv caches `[C, W]` (the last `W` inputs of the q, k and v convs, the
//! newest last, as fla's `conv_state`). Its size depends only on the config, never on how many
//! tokens it has seen: a 64K-token context costs what a 1-token context costs.
//!
//! - [`GlaModel::prefill`] feeds a prompt (any length, in windows of [`PREFILL_WINDOW`] tokens so
//!   the working memory is bounded too) and returns the logits of its last position. Each window
//!   goes through the chunked op when it is longer than 64 tokens and through the fused recurrent
//!   op otherwise, fla's own mode switch (`mode = 'fused_recurrent' if T <= 64`).
//! - [`GlaModel::decode`] feeds one token through the recurrent path and returns its logits.
//! - [`GlaModel::prefill_batch`] / [`GlaModel::decode_batch`] do the same for several sequences,
//!   each with its own state: the projections and the MLP run on all rows at once; the GLA op
//!   runs every sequence with the algorithm it would get alone, so a batch gives each sequence
//!   what it gets alone.
//!
//! ```
//! use gla_model::{GlaConfig, GlaModel};
//! let m = GlaModel::new(GlaConfig::tiny(32, 2, 2, 64), 0).unwrap();
//! let mut st = m.new_state();
//! let logits = m.prefill(&[1, 2, 3], &mut st).unwrap();
//! assert_eq!(logits.len(), 64);
//! let next = m.decode(7, &mut st).unwrap();
//! assert_eq!((next.len(), st.seen_tokens()), (64, 4));
//! ```

use gla_core::op::{transpose_state, GlaOp};
use gla_core::Inputs;
use gla_cpu::mat::{matmul_with, MatRef, Threads};
use gla_cpu::{Chunked, FusedRecurrent, Schedule};
use rayon::prelude::*;

use crate::config::Dims;
use crate::model::GlaModel;
use crate::ops::*;
use crate::params::View;
use crate::{Error, Result};

/// The longest piece of a prompt one prefill call processes at once. A longer prompt is fed in
/// windows of this many tokens (a multiple of the chunk length 64, so chunk boundaries stay where
/// they would be in one call), carrying the state: working memory stays bounded at any context.
pub const PREFILL_WINDOW: usize = 2048;

/// fla switches from the chunked to the fused recurrent op for inputs of at most this many tokens.
pub const RECURRENT_MAX_T: usize = 64;

/// Layout of a recurrent state at an import/export boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StateLayout {
    /// `[H, K, V]`: this crate's layout and fla's before #905.
    #[default]
    KeyFirst,
    /// `[H, V, K]`: fla's `recurrent_state` since #905 (`state_v_first=True`).
    ValueFirst,
}

/// The cache of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerState {
    /// Recurrent state `[H, K, V]`, f32.
    pub recurrent: Vec<f32>,
    /// Short-conv caches of q, k and v, each `[C, W]` (the last `W` conv inputs, newest at
    /// index `W - 1`); empty without short convolution.
    pub conv: [Vec<f32>; 3],
}

/// The inference state of one sequence: everything a later token needs from the earlier ones.
/// Constant size: see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    layers: Vec<LayerState>,
    seen: usize,
    /// (H, K, V, W, conv channels of q, k, v): what the state was sized for.
    shape: (usize, usize, usize, usize, [usize; 3]),
}

impl State {
    /// A zero state (no token seen) for a model with these dims.
    pub fn new(dims: &Dims) -> Self {
        let kv = dims.heads * dims.head_k * dims.head_v;
        let w = dims.conv;
        let chans = [dims.key_dim, dims.key_dim_kv, dims.value_dim_kv];
        let conv = |c: usize| if w > 0 { vec![0.0; c * w] } else { Vec::new() };
        let layers = (0..dims.layers)
            .map(|_| LayerState { recurrent: vec![0.0; kv], conv: [conv(chans[0]), conv(chans[1]), conv(chans[2])] })
            .collect();
        Self { layers, seen: 0, shape: (dims.heads, dims.head_k, dims.head_v, w, chans) }
    }

    /// Tokens fed so far (fla's `_seen_tokens`).
    pub fn seen_tokens(&self) -> usize {
        self.seen
    }

    /// Back to the zero state, keeping the buffers.
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.recurrent.fill(0.0);
            l.conv.iter_mut().for_each(|c| c.fill(0.0));
        }
        self.seen = 0;
    }

    /// Bytes held by the state's buffers (capacity, not length): constant for a config.
    pub fn bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        self.layers.iter().map(|l| f * (l.recurrent.capacity() + l.conv.iter().map(Vec::capacity).sum::<usize>())).sum::<usize>()
            + std::mem::size_of::<Self>()
            + self.layers.capacity() * std::mem::size_of::<LayerState>()
    }

    /// The per-layer caches.
    pub fn layers(&self) -> &[LayerState] {
        &self.layers
    }

    /// Layer `layer`'s recurrent state in `layout` (`[H, K, V]` or fla's `[H, V, K]`).
    ///
    /// # Errors
    /// [`Error::Shape`] when `layer` is out of range.
    pub fn export_recurrent(&self, layer: usize, layout: StateLayout) -> Result<Vec<f32>> {
        let l = self.layer(layer, "export_recurrent")?;
        let (h, k, v, ..) = self.shape;
        Ok(match layout {
            StateLayout::KeyFirst => l.recurrent.clone(),
            StateLayout::ValueFirst => transpose_state(&l.recurrent, h, k, v),
        })
    }

    /// Replaces layer `layer`'s recurrent state with `data` in `layout` (e.g. fla's
    /// `past_key_values[layer]['recurrent_state'][n]`, `[H, V, K]` since fla #905).
    ///
    /// # Errors
    /// [`Error::Shape`] when `layer` is out of range or `data` has the wrong length;
    /// [`Error::Op`] when it holds a NaN or an infinity.
    pub fn import_recurrent(&mut self, layer: usize, data: &[f32], layout: StateLayout) -> Result<()> {
        let (h, k, v, ..) = self.shape;
        if data.len() != h * k * v {
            let shape = match layout {
                StateLayout::KeyFirst => format!("[H={h}, K={k}, V={v}]"),
                StateLayout::ValueFirst => format!("[H={h}, V={v}, K={k}]"),
            };
            return Err(Error::Shape { op: "import_recurrent", tensor: "recurrent_state", shape, expected: h * k * v, got: data.len() });
        }
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::Op(gla_core::Error::NonFinite {
                op: "import_recurrent",
                tensor: "recurrent_state",
                index: i,
                value: data[i] as f64,
            }));
        }
        let s = match layout {
            StateLayout::KeyFirst => data.to_vec(),
            StateLayout::ValueFirst => transpose_state(data, h, v, k),
        };
        self.layer_mut(layer, "import_recurrent")?.recurrent = s;
        Ok(())
    }

    /// Replaces layer `layer`'s conv caches (q, k, v), each `[C, W]` as fla's `conv_state`.
    ///
    /// # Errors
    /// [`Error::Shape`] when `layer` is out of range or a cache has the wrong length (a model
    /// without short convolution takes three empty slices).
    pub fn import_conv(&mut self, layer: usize, caches: [&[f32]; 3]) -> Result<()> {
        let (.., w, chans) = self.shape;
        for (i, (c, &ch)) in caches.iter().zip(&chans).enumerate() {
            let want = if w > 0 { ch * w } else { 0 };
            if c.len() != want {
                let tensor = ["conv_state.q", "conv_state.k", "conv_state.v"][i];
                return Err(Error::Shape { op: "import_conv", tensor, shape: format!("[C={ch}, W={w}]"), expected: want, got: c.len() });
            }
        }
        let l = self.layer_mut(layer, "import_conv")?;
        for (dst, src) in l.conv.iter_mut().zip(caches) {
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    /// Sets the number of tokens seen (after importing a state fed elsewhere).
    pub fn set_seen_tokens(&mut self, n: usize) {
        self.seen = n;
    }

    fn layer(&self, i: usize, op: &'static str) -> Result<&LayerState> {
        let n = self.layers.len();
        self.layers.get(i).ok_or_else(|| Error::Shape { op, tensor: "layer", shape: format!("a layer index < {n}"), expected: n, got: i })
    }

    fn layer_mut(&mut self, i: usize, op: &'static str) -> Result<&mut LayerState> {
        let n = self.layers.len();
        self.layers.get_mut(i).ok_or_else(|| Error::Shape {
            op,
            tensor: "layer",
            shape: format!("a layer index < {n}"),
            expected: n,
            got: i,
        })
    }

    fn fits(&self, dims: &Dims) -> bool {
        self.layers.len() == dims.layers
            && self.shape == (dims.heads, dims.head_k, dims.head_v, dims.conv, [dims.key_dim, dims.key_dim_kv, dims.value_dim_kv])
    }
}

/// Causal depthwise conv + SiLU over `len` new rows `x [len, C]`, continuing from `cache [C, W]`
/// (the previous `W` inputs, newest last), which is then advanced to the last `W` inputs.
fn conv_cached(y: &mut [f32], x: &[f32], w: &[f32], cache: &mut [f32], c: usize, width: usize) {
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
            *yv = acc / (1.0 + (-acc).exp());
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

/// Rows up to which [`lin`] takes the weight-major product.
const SMALL_ROWS: usize = 128;

/// `y [m, out] = x [m, in] @ w^T` like [`linear_fwd`], faster for few rows (decode): for
/// `m <= 128` it computes `w @ x^T` in blocks of 16 rows (measured on the gemm crate with
/// `in = 1024, out = 2816`: 1.5 ms instead of 6.6 ms at m = 16, the same at m = 1; bit-identical
/// results) and transposes the small result.
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

static CHUNKED: Chunked = Chunked { schedule: Schedule::Auto };

impl GlaModel {
    /// A zero [`State`] sized for this model.
    pub fn new_state(&self) -> State {
        State::new(&self.dims)
    }

    /// Feeds a prompt (one or more tokens) into `state` and returns the logits `[vocab]` of its
    /// last position. A state that has already seen tokens continues from them (multi-turn).
    ///
    /// # Errors
    /// [`Error::Shape`] for an empty prompt or a state of another config; [`Error::Token`] for an
    /// id outside the vocabulary; [`Error::Op`] when an activation is not finite. On error the
    /// state may have been advanced by the windows before the failing one.
    pub fn prefill(&self, ids: &[u32], state: &mut State) -> Result<Vec<f32>> {
        let mut out = self.prefill_batch(&[ids], &mut [state])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Feeds one token and returns its logits `[vocab]` (the recurrent path).
    ///
    /// # Errors
    /// As [`GlaModel::prefill`]; the state is unchanged on error.
    pub fn decode(&self, id: u32, state: &mut State) -> Result<Vec<f32>> {
        let mut out = self.forward_packed(&[id], &[1], &mut [state])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// [`GlaModel::prefill`] for several sequences, each into its own state: returns the logits
    /// of each prompt's last position. Prompts may have different lengths.
    ///
    /// # Errors
    /// As [`GlaModel::prefill`]; [`Error::Shape`] when the counts of prompts and states differ.
    pub fn prefill_batch(&self, prompts: &[&[u32]], states: &mut [&mut State]) -> Result<Vec<Vec<f32>>> {
        if prompts.len() != states.len() {
            return Err(Error::Shape {
                op: "prefill_batch",
                tensor: "states",
                shape: "one per prompt".into(),
                expected: prompts.len(),
                got: states.len(),
            });
        }
        if prompts.iter().any(|p| p.is_empty()) {
            return Err(Error::Shape {
                op: "prefill",
                tensor: "input_ids",
                shape: "[T >= 1] (a prompt needs at least one token)".into(),
                expected: 1,
                got: 0,
            });
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
        let mut start = 0;
        loop {
            // the sequences that still have tokens in this window
            let active: Vec<usize> = (0..prompts.len()).filter(|&i| prompts[i].len() > start).collect();
            if active.is_empty() {
                break;
            }
            let mut ids = Vec::new();
            let mut lens = Vec::with_capacity(active.len());
            for &i in &active {
                let piece = &prompts[i][start..(start + PREFILL_WINDOW).min(prompts[i].len())];
                ids.extend_from_slice(piece);
                lens.push(piece.len());
            }
            let mut sts: Vec<&mut State> = Vec::with_capacity(active.len());
            let mut rest: &mut [&mut State] = states;
            let mut base = 0;
            for &i in &active {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
                let (one, tail) = tail.split_at_mut(1);
                sts.push(&mut *one[0]);
                rest = tail;
                base = i + 1;
            }
            let logits = self.forward_packed(&ids, &lens, &mut sts)?;
            for (&i, l) in active.iter().zip(logits) {
                out[i] = l;
            }
            start += PREFILL_WINDOW;
        }
        Ok(out)
    }

    /// [`GlaModel::decode`] for several sequences: token `ids[i]` into `states[i]`; returns each
    /// sequence's logits.
    ///
    /// # Errors
    /// As [`GlaModel::prefill_batch`].
    pub fn decode_batch(&self, ids: &[u32], states: &mut [&mut State]) -> Result<Vec<Vec<f32>>> {
        if ids.len() != states.len() {
            return Err(Error::Shape {
                op: "decode_batch",
                tensor: "states",
                shape: "one per token".into(),
                expected: ids.len(),
                got: states.len(),
            });
        }
        self.forward_packed(ids, &vec![1; ids.len()], states)
    }

    /// One forward over packed sequences: `ids` holds `lens[i]` tokens of sequence `i` in turn;
    /// `states[i]` is read and advanced. Returns the last-position logits of each sequence.
    fn forward_packed(&self, ids: &[u32], lens: &[usize], states: &mut [&mut State]) -> Result<Vec<Vec<f32>>> {
        let dm = &self.dims;
        let rows: usize = lens.iter().sum();
        if rows != ids.len() || lens.len() != states.len() {
            return Err(Error::Shape {
                op: "forward_packed",
                tensor: "input_ids",
                shape: "sum of the lengths".into(),
                expected: rows,
                got: ids.len(),
            });
        }
        if lens.contains(&0) {
            return Err(Error::Shape { op: "prefill", tensor: "input_ids", shape: "[T >= 1]".into(), expected: 1, got: 0 });
        }
        if let Some(i) = ids.iter().position(|&x| x as usize >= dm.vocab) {
            return Err(Error::Token { what: "input id", value: ids[i] as i64, index: i, vocab: dm.vocab });
        }
        if let Some(st) = states.iter().find(|s| !s.fits(dm)) {
            let (h, k, v, ..) = st.shape;
            return Err(Error::Shape {
                op: "forward_packed",
                tensor: "state",
                shape: format!("L={} layers of [H={}, K={}, V={}] (conv width {})", dm.layers, dm.heads, dm.head_k, dm.head_v, dm.conv),
                expected: dm.layers * dm.heads * dm.head_k * dm.head_v,
                got: st.layers.len() * h * k * v,
            });
        }
        // new conv caches (small copies) and new recurrent states (the op's outputs), moved into
        // the states only at the end, so that an error leaves them unchanged
        let mut convs: Vec<Vec<[Vec<f32>; 3]>> = states.iter().map(|s| s.layers.iter().map(|l| l.conv.clone()).collect()).collect();
        let mut recs: Vec<Vec<Vec<f32>>> = states.iter().map(|_| Vec::with_capacity(dm.layers)).collect();
        let bounds: Vec<usize> = std::iter::once(0)
            .chain(lens.iter().scan(0, |a, &l| {
                *a += l;
                Some(*a)
            }))
            .collect();
        let p = View { layout: &self.layout, data: &self.params };
        let d = dm.d;
        let n = rows;
        let z = |len: usize| vec![0.0f32; len];
        let mut x = z(n * d);
        embedding_fwd(&mut x, ids, p.get(self.layout.embeddings), d);
        let (mut xn, mut rstd, mut rstd_o) = (z(n * d), z(n), z(n * dm.heads));
        let (mut q, mut k, mut v) = (z(n * dm.key_dim), z(n * dm.key_dim_kv), z(n * dm.value_dim_kv));
        let conv = dm.conv > 0;
        let (mut qc, mut kc, mut vc) =
            if conv { (z(n * dm.key_dim), z(n * dm.key_dim_kv), z(n * dm.value_dim_kv)) } else { (vec![], vec![], vec![]) };
        let mut g_pre = if dm.output_gate { z(n * dm.value_dim) } else { vec![] };
        let (mut gk_lr, mut gk_raw, mut gk) = (z(n * dm.gate_rank), z(n * dm.key_dim_kv), z(n * dm.key_dim_kv));
        let groups = dm.groups();
        let (mut k_rep, mut v_rep, mut gk_rep) =
            if groups > 1 { (z(n * dm.key_dim), z(n * dm.value_dim), z(n * dm.key_dim)) } else { (vec![], vec![], vec![]) };
        let mut o = z(n * dm.value_dim);
        let mut on = z(n * dm.value_dim);
        let mut x_mid = z(n * d);
        let (mut a, mut b, mut h) = (z(n * dm.intermediate), z(n * dm.intermediate), z(n * dm.intermediate));
        for (l, il) in self.layout.layers.iter().enumerate() {
            rmsnorm_fwd(&mut xn, &mut rstd, &x, p.get(il.attn_norm), d, dm.eps);
            lin(&mut q, &xn, p.get(il.q_proj), n, d, dm.key_dim);
            lin(&mut k, &xn, p.get(il.k_proj), n, d, dm.key_dim_kv);
            lin(&mut v, &xn, p.get(il.v_proj), n, d, dm.value_dim_kv);
            if let (Some(wq), Some(wk), Some(wv)) = (il.q_conv, il.k_conv, il.v_conv) {
                for (s, c) in convs.iter_mut().enumerate() {
                    let r = bounds[s]..bounds[s + 1];
                    let [cq, ck, cv] = &mut c[l];
                    let (kd, kkv, vkv) = (dm.key_dim, dm.key_dim_kv, dm.value_dim_kv);
                    conv_cached(&mut qc[r.start * kd..r.end * kd], &q[r.start * kd..r.end * kd], p.get(wq), cq, kd, dm.conv);
                    conv_cached(&mut kc[r.start * kkv..r.end * kkv], &k[r.start * kkv..r.end * kkv], p.get(wk), ck, kkv, dm.conv);
                    conv_cached(&mut vc[r.start * vkv..r.end * vkv], &v[r.start * vkv..r.end * vkv], p.get(wv), cv, vkv, dm.conv);
                }
            }
            if let Some(g) = il.g_proj {
                lin(&mut g_pre, &xn, p.get(g), n, d, dm.value_dim);
            }
            lin(&mut gk_lr, &xn, p.get(il.gk0), n, d, dm.gate_rank);
            lin(&mut gk_raw, &gk_lr, p.get(il.gk1), n, dm.gate_rank, dm.key_dim_kv);
            let bias = p.get(il.gk1_bias);
            for row in gk_raw.chunks_exact_mut(dm.key_dim_kv) {
                row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
            }
            gate_fwd(&mut gk, &gk_raw, dm.gate_norm, dm.clamp_min);
            let (qa, ka, va) = if conv { (&qc, &kc, &vc) } else { (&q, &k, &v) };
            let (ka, va, ga) = if groups > 1 {
                repeat_heads(&mut k_rep, ka, dm.kv_heads, groups, dm.head_k);
                repeat_heads(&mut v_rep, va, dm.kv_heads, groups, dm.head_v);
                repeat_heads(&mut gk_rep, &gk, dm.kv_heads, groups, dm.head_k);
                (&k_rep, &v_rep, &gk_rep)
            } else {
                (ka, va, &gk)
            };
            self.gla_packed(&mut o, qa, ka, va, ga, &bounds, states, &mut recs, l)?;
            let gp = dm.output_gate.then_some(&g_pre[..]);
            gated_norm_fwd(&mut on, &mut rstd_o, &o, gp, p.get(il.g_norm), dm.head_v, dm.eps);
            lin(&mut x_mid, &on, p.get(il.o_proj), n, dm.value_dim, d);
            x_mid.iter_mut().zip(&x).for_each(|(m, x)| *m += x);
            rmsnorm_fwd(&mut xn, &mut rstd, &x_mid, p.get(il.mlp_norm), d, dm.eps);
            lin(&mut a, &xn, p.get(il.gate_proj), n, d, dm.intermediate);
            lin(&mut b, &xn, p.get(il.up_proj), n, d, dm.intermediate);
            swiglu_fwd(&mut h, &a, &b);
            lin(&mut x, &h, p.get(il.down_proj), n, dm.intermediate, d);
            x.iter_mut().zip(&x_mid).for_each(|(o, m)| *o += m);
        }
        // the last row of each sequence -> final norm -> lm_head
        let ns = lens.len();
        let mut last = Vec::with_capacity(ns * d);
        for s in 0..ns {
            let r = bounds[s + 1] - 1;
            last.extend_from_slice(&x[r * d..(r + 1) * d]);
        }
        let (mut lastn, mut r2) = (z(ns * d), z(ns));
        rmsnorm_fwd(&mut lastn, &mut r2, &last, p.get(self.layout.norm), d, dm.eps);
        let mut logits = z(ns * dm.vocab);
        lin(&mut logits, &lastn, p.get(self.layout.lm_head.unwrap_or(self.layout.embeddings)), ns, d, dm.vocab);
        for (((st, c), r), &len) in states.iter_mut().zip(convs).zip(recs).zip(lens) {
            for ((layer, c), r) in st.layers.iter_mut().zip(c).zip(r) {
                layer.conv = c;
                layer.recurrent = r;
            }
            st.seen += len;
        }
        Ok(logits.chunks_exact(dm.vocab).map(<[f32]>::to_vec).collect())
    }

    /// The GLA op of layer `l` over packed sequences (`bounds`), one call per sequence with the
    /// algorithm it would get alone (fla's per-call mode switch: fused recurrent for at most 64
    /// tokens, chunked otherwise), reading its state in place (no gather into a batch buffer:
    /// at decode, copying the states dominated). Pushes each new state onto `recs[s]`.
    #[allow(clippy::too_many_arguments)]
    fn gla_packed(
        &self,
        o: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
        bounds: &[usize],
        states: &[&mut State],
        recs: &mut [Vec<Vec<f32>>],
        l: usize,
    ) -> Result<()> {
        let dm = &self.dims;
        let (hk, hv) = (dm.heads * dm.head_k, dm.heads * dm.head_v);
        for s in 0..bounds.len() - 1 {
            let (a, b) = (bounds[s], bounds[s + 1]);
            let op: &dyn GlaOp<f32> = if b - a <= RECURRENT_MAX_T { &FusedRecurrent } else { &CHUNKED };
            let prob = crate::model::problem(dm, 1, b - a, None)?;
            let h0 = &states[s].layers[l].recurrent;
            let x =
                Inputs { q: &q[a * hk..b * hk], k: &k[a * hk..b * hk], v: &v[a * hv..b * hv], g: Some(&g[a * hk..b * hk]), h0: Some(h0) };
            let out = op.forward(&prob, &x, true)?;
            o[a * hv..b * hv].copy_from_slice(&out.o);
            recs[s].push(out.ht.unwrap_or_default());
        }
        Ok(())
    }
}
