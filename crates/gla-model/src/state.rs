//! The CPU's per-sequence inference state ([`State`]): per layer the recurrent state (GLA's
//! `[H, K, V]`, the delta rule's `[HV, K, V]`) and the short-conv caches, constant in size
//! whatever the context length; and for a hybrid's softmax-attention layers the KV cache
//! (gla-cpu's `AttnCache`: k and v `[S, H_KV, Dh]`, S growing by one slot a token for full
//! attention, at most the window w for a sliding window, token p in slot `p % w`), which grows
//! with the context unless the layer has a window.

use gla_core::op::transpose_state;
use gla_cpu::AttnCache;

use crate::config::{Dims, MixerDims};
use crate::{Error, Result};

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
    /// Recurrent state `[H, K, V]` (GLA: one per query head) or `[HV, K, V]` (the delta rule:
    /// one per value head), f32.
    pub recurrent: Vec<f32>,
    /// Short-conv caches of q, k and v, each `[C, W]` (the last `W` conv inputs, newest at
    /// index `W - 1`); empty without short convolution.
    pub conv: [Vec<f32>; 3],
    /// A softmax-attention layer's KV cache (`None` for the other mixers).
    pub kv: Option<AttnCache<f32>>,
}

/// The inference state of one sequence: everything a later token needs from the earlier ones.
/// Constant size: see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub(crate) layers: Vec<LayerState>,
    pub(crate) seen: usize,
    /// Per layer: what its state was sized for.
    pub(crate) shapes: Vec<LayerShape>,
}

/// What a layer's state is sized for: (heads of the state, K, V, conv width W, conv channels
/// of q, k, v; for an attention layer its KV cache's kv heads, head dim and window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerShape {
    pub(crate) heads: usize,
    pub(crate) k: usize,
    pub(crate) v: usize,
    pub(crate) w: usize,
    pub(crate) chans: [usize; 3],
    pub(crate) kv: Option<(usize, usize, Option<usize>)>,
}

impl LayerShape {
    /// The state of a layer with mixer `m`.
    pub(crate) fn of(m: &MixerDims) -> Self {
        match m {
            MixerDims::Gla(g) => {
                Self { heads: g.heads, k: g.head_k, v: g.head_v, w: g.conv, chans: [g.key_dim, g.key_dim_kv, g.value_dim_kv], kv: None }
            }
            MixerDims::Delta(g) => {
                Self { heads: g.v_heads, k: g.head_k, v: g.head_v, w: g.conv, chans: [g.key_dim, g.key_dim, g.value_dim], kv: None }
            }
            // no recurrent state, no conv: the KV cache
            MixerDims::Attn(a) => Self { heads: 0, k: 0, v: 0, w: 0, chans: [0; 3], kv: Some((a.kv_heads, a.head_dim, a.window)) },
        }
    }

    /// Elements of the recurrent state.
    pub(crate) fn numel(&self) -> usize {
        self.heads * self.k * self.v
    }

    /// `[H=.., K=.., V=..]` (`[.., V, K]` value-first).
    fn describe(&self, layout: StateLayout) -> String {
        let (h, k, v) = (self.heads, self.k, self.v);
        match layout {
            StateLayout::KeyFirst => format!("[H={h}, K={k}, V={v}]"),
            StateLayout::ValueFirst => format!("[H={h}, V={v}, K={k}]"),
        }
    }
}

impl State {
    /// A zero state (no token seen) for a model with these dims.
    pub fn new(dims: &Dims) -> Self {
        let shapes: Vec<LayerShape> = dims.mixers.iter().map(LayerShape::of).collect();
        let layers = shapes
            .iter()
            .zip(&dims.mixers)
            .map(|(s, m)| {
                let conv = |c: usize| if s.w > 0 { vec![0.0; c * s.w] } else { Vec::new() };
                LayerState {
                    recurrent: vec![0.0; s.numel()],
                    conv: [conv(s.chans[0]), conv(s.chans[1]), conv(s.chans[2])],
                    kv: kv_cache(m),
                }
            })
            .collect();
        Self { layers, seen: 0, shapes }
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
            if let Some(kv) = &mut l.kv {
                kv.clear();
            }
        }
        self.seen = 0;
    }

    /// Bytes held by the state's buffers (capacity, not length): constant for a config whose
    /// layers are all recurrent; a softmax-attention layer's KV cache adds `2 * H_KV * Dh * 4`
    /// bytes per token seen, up to its window ([`State::kv_bytes`]).
    pub fn bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        self.layers.iter().map(|l| f * (l.recurrent.capacity() + l.conv.iter().map(Vec::capacity).sum::<usize>())).sum::<usize>()
            + self.kv_bytes()
            + std::mem::size_of::<Self>()
            + self.layers.capacity() * std::mem::size_of::<LayerState>()
    }

    /// Bytes held by the KV caches of the softmax-attention layers (part of [`State::bytes`]).
    pub fn kv_bytes(&self) -> usize {
        self.layers.iter().filter_map(|l| l.kv.as_ref()).map(AttnCache::bytes).sum()
    }

    /// The per-layer caches.
    pub fn layers(&self) -> &[LayerState] {
        &self.layers
    }

    /// Layer `layer`'s recurrent state in `layout` (`[H, K, V]` or fla's `[H, V, K]`; `H` the
    /// value heads of a delta-rule layer).
    ///
    /// # Errors
    /// [`Error::Shape`] when `layer` is out of range.
    pub fn export_recurrent(&self, layer: usize, layout: StateLayout) -> Result<Vec<f32>> {
        let l = self.layer(layer, "export_recurrent")?;
        let LayerShape { heads: h, k, v, .. } = self.shapes[layer];
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
        self.layer(layer, "import_recurrent")?;
        let sh = self.shapes[layer];
        let LayerShape { heads: h, k, v, .. } = sh;
        if data.len() != h * k * v {
            let shape = sh.describe(layout);
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
        self.layer(layer, "import_conv")?;
        let LayerShape { w, chans, .. } = self.shapes[layer];
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

    pub(crate) fn fits(&self, dims: &Dims) -> bool {
        if self.layers.iter().zip(&self.shapes).any(|(l, s)| l.kv.is_some() != s.kv.is_some()) {
            return false;
        }
        self.layers.len() == dims.layers && self.shapes.iter().zip(&dims.mixers).all(|(s, m)| *s == LayerShape::of(m))
    }

    /// The recurrent-state elements of every layer (for error messages).
    pub(crate) fn numel(&self) -> usize {
        self.shapes.iter().map(LayerShape::numel).sum()
    }
}

/// An empty KV cache for one sequence of an attention layer (`None` for the other mixers).
fn kv_cache(m: &MixerDims) -> Option<AttnCache<f32>> {
    match m {
        // dims validated by the config: the problem of one empty sequence is valid
        MixerDims::Attn(a) => gla_core::AttnProblem::new(a.op_spec(1, 0, None)).ok().and_then(|p| AttnCache::new(&p).ok()),
        _ => None,
    }
}
