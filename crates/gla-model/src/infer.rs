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

use gla_core::op::transpose_state;
use gla_core::Inputs;
use rayon::prelude::*;

use crate::config::Dims;
use crate::cpu::op_for;
use crate::model::{body, head_logits, Acts, GlaModel};
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
pub(crate) fn conv_cached(y: &mut [f32], x: &[f32], w: &[f32], cache: &mut [f32], c: usize, width: usize) {
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

/// The CPU's inference state of one forward over packed sequences (the backend's `Io`): where
/// each sequence's rows are (`bounds`), its state (read), and its new conv caches and recurrent
/// states, staged here and moved into the states only once the whole forward succeeded (so an
/// error leaves them unchanged).
pub struct CpuIo<'a> {
    /// Row offsets of the sequences: sequence `s` holds rows `bounds[s]..bounds[s + 1]`.
    pub(crate) bounds: Vec<usize>,
    states: &'a [&'a mut State],
    /// Per sequence, per layer: the q, k, v conv caches (copies, advanced in place).
    pub(crate) convs: Vec<Vec<[Vec<f32>; 3]>>,
    /// Per sequence: the new recurrent state of each layer done so far.
    recs: Vec<Vec<Vec<f32>>>,
}

impl CpuIo<'_> {
    /// The GLA op of layer `l` over the packed sequences, one call per sequence with the
    /// algorithm it would get alone (fla's per-call mode switch: fused recurrent for at most 64
    /// tokens, chunked otherwise), reading its state in place (no gather into a batch buffer: at
    /// decode, copying the states dominated). `q, k, v, g` are at every head (GQA repeated).
    pub(crate) fn gla(&mut self, dm: &Dims, o: &mut [f32], [q, k, v, g]: [&[f32]; 4], l: usize) -> Result<()> {
        let (hk, hv) = (dm.heads * dm.head_k, dm.heads * dm.head_v);
        for s in 0..self.bounds.len() - 1 {
            let (a, b) = (self.bounds[s], self.bounds[s + 1]);
            let prob = crate::model::problem(dm, 1, b - a, None)?;
            let h0 = &self.states[s].layers[l].recurrent;
            let x =
                Inputs { q: &q[a * hk..b * hk], k: &k[a * hk..b * hk], v: &v[a * hv..b * hv], g: Some(&g[a * hk..b * hk]), h0: Some(h0) };
            let out = op_for(b - a).forward(&prob, &x, true)?;
            o[a * hv..b * hv].copy_from_slice(&out.o);
            self.recs[s].push(out.ht.unwrap_or_default());
        }
        Ok(())
    }
}

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
        crate::model::check_ids(dm, ids)?;
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
        let bounds: Vec<usize> = std::iter::once(0)
            .chain(lens.iter().scan(0, |a, &l| {
                *a += l;
                Some(*a)
            }))
            .collect();
        let mut io = CpuIo {
            // new conv caches (small copies) and new recurrent states (the op's outputs), moved
            // into the states only at the end, so that an error leaves them unchanged
            convs: states.iter().map(|s| s.layers.iter().map(|l| l.conv.clone()).collect()).collect(),
            recs: states.iter().map(|_| Vec::with_capacity(dm.layers)).collect(),
            bounds,
            states: &*states,
        };
        let cpu = self.cpu().for_inference();
        let ns = lens.len();
        let mut acts = Acts::alloc(&cpu, 1, rows, true, ns)?;
        acts.ids_mut().copy_from_slice(ids);
        body(&cpu, &mut acts, Some(&mut io))?;
        // the last row of each sequence reaches the lm_head (all of them at decode)
        if ns == rows {
            head_logits(&cpu, &mut acts, None)?;
        } else {
            let mut last = vec![crate::IGNORE_INDEX; rows];
            io.bounds[1..].iter().for_each(|&e| last[e - 1] = 0);
            head_logits(&cpu, &mut acts, Some(&last))?;
        }
        let CpuIo { convs, recs, .. } = io;
        for (((st, c), r), &len) in states.iter_mut().zip(convs).zip(recs).zip(lens) {
            for ((layer, c), r) in st.layers.iter_mut().zip(c).zip(r) {
                layer.conv = c;
                layer.recurrent = r;
            }
            st.seen += len;
        }
        Ok(acts.logits()[..ns * dm.vocab].chunks_exact(dm.vocab).map(<[f32]>::to_vec).collect())
    }
}
