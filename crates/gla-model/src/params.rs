//! Parameters: ONE table of (checkpoint name, shape, init) from which come the arena size, the
//! named views, the init and the safetensors names (fla's names, fla.md 2.4), so they can't drift.
//!
//! Weights are stored as PyTorch does: a linear layer's weight is `[out, in]` row-major and
//! computes `y = x W^T`.

use crate::config::Dims;
use crate::rng::Rng;

/// How a tensor is initialised (fla's `_init_weights`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// `N(0, initializer_range)`: linear, conv and embedding weights.
    Normal,
    /// Zeros: biases.
    Zeros,
    /// Ones: norm weights.
    Ones,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// fla's checkpoint name, e.g. `model.layers.0.attn.q_proj.weight`.
    pub name: String,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// Init rule.
    pub init: Init,
    /// Offset in the arena.
    pub offset: usize,
}

impl ParamSpec {
    /// Element count.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The arena range.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// Index into the table of every tensor of one GLA block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct LayerIds {
    pub attn_norm: usize,
    /// `[key_dim, D]`
    pub q_proj: usize,
    /// `[key_dim_kv, D]`
    pub k_proj: usize,
    /// `[value_dim_kv, D]`
    pub v_proj: usize,
    /// `[value_dim, D]` (when the output gate is on)
    pub g_proj: Option<usize>,
    /// `[16, D]`
    pub gk0: usize,
    /// `[key_dim_kv, 16]`
    pub gk1: usize,
    /// `[key_dim_kv]`
    pub gk1_bias: usize,
    /// `[D, value_dim]`
    pub o_proj: usize,
    /// `[head_v]`
    pub g_norm: usize,
    /// `[key_dim, 1, W]`, `[key_dim_kv, 1, W]`, `[value_dim_kv, 1, W]` (with short conv)
    pub q_conv: Option<usize>,
    #[allow(missing_docs)]
    pub k_conv: Option<usize>,
    #[allow(missing_docs)]
    pub v_conv: Option<usize>,
    pub mlp_norm: usize,
    /// `[I, D]`
    pub gate_proj: usize,
    /// `[I, D]`
    pub up_proj: usize,
    /// `[D, I]`
    pub down_proj: usize,
}

/// The table and the index of every tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// All tensors in arena order.
    pub specs: Vec<ParamSpec>,
    /// `[vocab, D]`
    pub embeddings: usize,
    /// Per block.
    pub layers: Vec<LayerIds>,
    /// `[D]`
    pub norm: usize,
    /// `[vocab, D]`, absent when tied.
    pub lm_head: Option<usize>,
    /// Arena length.
    pub numel: usize,
}

impl Layout {
    /// Builds the table for these dims.
    pub fn new(d: &Dims) -> Self {
        let mut specs = Vec::new();
        let mut offset = 0;
        let mut add = |name: String, shape: Vec<usize>, init: Init| {
            let s = ParamSpec { name, shape, init, offset };
            offset += s.numel();
            specs.push(s);
            specs.len() - 1
        };
        let embeddings = add("model.embeddings.weight".into(), vec![d.vocab, d.d], Init::Normal);
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let p = format!("model.layers.{i}.");
            let attn_norm = add(format!("{p}attn_norm.weight"), vec![d.d], Init::Ones);
            let q_proj = add(format!("{p}attn.q_proj.weight"), vec![d.key_dim, d.d], Init::Normal);
            let k_proj = add(format!("{p}attn.k_proj.weight"), vec![d.key_dim_kv, d.d], Init::Normal);
            let v_proj = add(format!("{p}attn.v_proj.weight"), vec![d.value_dim_kv, d.d], Init::Normal);
            let (q_conv, k_conv, v_conv) = if d.conv > 0 {
                (
                    Some(add(format!("{p}attn.q_conv1d.weight"), vec![d.key_dim, 1, d.conv], Init::Normal)),
                    Some(add(format!("{p}attn.k_conv1d.weight"), vec![d.key_dim_kv, 1, d.conv], Init::Normal)),
                    Some(add(format!("{p}attn.v_conv1d.weight"), vec![d.value_dim_kv, 1, d.conv], Init::Normal)),
                )
            } else {
                (None, None, None)
            };
            let g_proj = d.output_gate.then(|| add(format!("{p}attn.g_proj.weight"), vec![d.value_dim, d.d], Init::Normal));
            let gk0 = add(format!("{p}attn.gk_proj.0.weight"), vec![d.gate_rank, d.d], Init::Normal);
            let gk1 = add(format!("{p}attn.gk_proj.1.weight"), vec![d.key_dim_kv, d.gate_rank], Init::Normal);
            let gk1_bias = add(format!("{p}attn.gk_proj.1.bias"), vec![d.key_dim_kv], Init::Zeros);
            let o_proj = add(format!("{p}attn.o_proj.weight"), vec![d.d, d.value_dim], Init::Normal);
            let g_norm = add(format!("{p}attn.{}.weight", d.gnorm_name), vec![d.head_v], Init::Ones);
            let mlp_norm = add(format!("{p}mlp_norm.weight"), vec![d.d], Init::Ones);
            let gate_proj = add(format!("{p}mlp.gate_proj.weight"), vec![d.intermediate, d.d], Init::Normal);
            let up_proj = add(format!("{p}mlp.up_proj.weight"), vec![d.intermediate, d.d], Init::Normal);
            let down_proj = add(format!("{p}mlp.down_proj.weight"), vec![d.d, d.intermediate], Init::Normal);
            layers.push(LayerIds {
                attn_norm,
                q_proj,
                k_proj,
                v_proj,
                g_proj,
                gk0,
                gk1,
                gk1_bias,
                o_proj,
                g_norm,
                q_conv,
                k_conv,
                v_conv,
                mlp_norm,
                gate_proj,
                up_proj,
                down_proj,
            });
        }
        let norm = add("model.norm.weight".into(), vec![d.d], Init::Ones);
        let lm_head = (!d.tied).then(|| add("lm_head.weight".into(), vec![d.vocab, d.d], Init::Normal));
        let numel = specs.last().map_or(0, |s| s.offset + s.numel());
        Self { specs, embeddings, layers, norm, lm_head, numel }
    }

    /// The table index of a tensor by checkpoint name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// Fills an arena with fla's init: normal(0, std) weights (the padding row of the embedding
    /// included), zero biases, unit norms.
    ///
    /// The padding row is NOT zeroed, as in fla 0.6.0: `nn.Embedding(padding_idx=...)` zeroes it
    /// at construction, but `post_init` then runs fla's own `FLAPreTrainedModel._init_weights`
    /// (fla/models/modeling_utils.py), whose Embedding branch is only
    /// `nn.init.normal_(module.weight, ...)` over the whole matrix (transformers 5's init guard
    /// skips only tensors already loaded from a checkpoint). That override replaces Hugging Face's
    /// default `_init_weights`, the one that zeroes `weight[padding_idx]`. So a fresh fla model has
    /// a random padding row: `pad_token_id` changes no initial value here and only stops the row's
    /// gradient from the embedding lookup (`ops::embedding_bwd`).
    pub fn init(&self, dims: &Dims, seed: u64) -> Vec<f32> {
        let mut w = vec![0.0f32; self.numel];
        let mut rng = Rng::new(seed);
        for s in &self.specs {
            let dst = &mut w[s.range()];
            match s.init {
                Init::Normal => dst.iter_mut().for_each(|x| *x = (rng.normal() * dims.init_std as f64) as f32),
                Init::Zeros => dst.fill(0.0),
                Init::Ones => dst.fill(1.0),
            }
        }
        w
    }
}

/// Read-only views of an arena (parameters or gradients) through the table.
#[derive(Clone, Copy)]
pub struct View<'a> {
    /// The table.
    pub layout: &'a Layout,
    /// The arena.
    pub data: &'a [f32],
}

impl<'a> View<'a> {
    /// Tensor `id` of the table.
    #[inline]
    pub fn get(&self, id: usize) -> &'a [f32] {
        &self.data[self.layout.specs[id].range()]
    }
}
