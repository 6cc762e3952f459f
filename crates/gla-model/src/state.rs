//! The CPU's per-sequence inference state ([`State`]): per layer the recurrent state and the
//! short-conv caches, constant in size whatever the context length.

use gla_core::op::transpose_state;

use crate::config::Dims;
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
    pub(crate) layers: Vec<LayerState>,
    pub(crate) seen: usize,
    /// (H, K, V, W, conv channels of q, k, v): what the state was sized for.
    pub(crate) shape: (usize, usize, usize, usize, [usize; 3]),
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

    pub(crate) fn fits(&self, dims: &Dims) -> bool {
        self.layers.len() == dims.layers
            && self.shape == (dims.heads, dims.head_k, dims.head_v, dims.conv, [dims.key_dim, dims.key_dim_kv, dims.value_dim_kv])
    }
}
