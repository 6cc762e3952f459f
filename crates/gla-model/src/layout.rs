//! The language model's parameter table: the embedding, per layer its two norms, its mixer's
//! rows and the MLP's, the final norm and the lm_head, in fla's order (the arena order, and the
//! checkpoint names).

use crate::config::Dims;
use crate::mixers::attn::AttnIds;
use crate::mixers::delta::DeltaIds;
use crate::mixers::gla::GlaIds;
use crate::mixers::MixerIds;
use crate::modules::mlp::MlpIds;
use crate::params::{Init, ParamId, ParamSpec, Table};
use crate::rng::Rng;

/// The rows of one layer: its token mixer and the MLP, each behind its RMSNorm (fla's block).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerIds {
    /// `[D]`, before the mixer.
    pub attn_norm: ParamId,
    /// The token mixer's tensors (`model.layers.{l}.attn.*`).
    pub mixer: MixerIds,
    /// `[D]`, before the MLP.
    pub mlp_norm: ParamId,
    /// The MLP's tensors (`model.layers.{l}.mlp.*`).
    pub mlp: MlpIds,
}

impl LayerIds {
    /// The GLA mixer's tensors, when this layer's mixer is GLA.
    pub fn gla(&self) -> Option<&GlaIds> {
        match &self.mixer {
            MixerIds::Gla(g) => Some(g),
            _ => None,
        }
    }

    /// The delta-rule mixer's tensors, when this layer's mixer is DeltaNet or Gated DeltaNet.
    pub fn delta(&self) -> Option<&DeltaIds> {
        match &self.mixer {
            MixerIds::Delta(g) => Some(g),
            _ => None,
        }
    }

    /// The softmax-attention mixer's tensors, when this layer is one of a hybrid's `attn` layers.
    pub fn attn(&self) -> Option<&AttnIds> {
        match &self.mixer {
            MixerIds::Attn(g) => Some(g),
            _ => None,
        }
    }
}

/// The table and the index of every tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// All tensors in arena order.
    pub specs: Vec<ParamSpec>,
    /// `[vocab, D]`
    pub embeddings: ParamId,
    /// Per block.
    pub layers: Vec<LayerIds>,
    /// `[D]`
    pub norm: ParamId,
    /// `[vocab, D]`, absent when tied.
    pub lm_head: Option<ParamId>,
    /// Arena length.
    pub numel: usize,
}

impl Layout {
    /// Builds the table for these dims: the embedding, per layer its norms, mixer and MLP in
    /// fla's order, the final norm, the lm_head.
    pub fn new(d: &Dims) -> Self {
        let mut t = Table::default();
        let embeddings = t.add("model.embeddings.weight".into(), vec![d.vocab, d.d], Init::Normal);
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let p = format!("model.layers.{i}.");
            let attn_norm = t.add(format!("{p}attn_norm.weight"), vec![d.d], Init::Ones);
            let mixer = MixerIds::table(&mut t, &format!("{p}attn."), d.d, &d.mixers[i]);
            let mlp_norm = t.add(format!("{p}mlp_norm.weight"), vec![d.d], Init::Ones);
            let mlp = MlpIds::table(&mut t, &format!("{p}mlp."), d);
            layers.push(LayerIds { attn_norm, mixer, mlp_norm, mlp });
        }
        let norm = t.add("model.norm.weight".into(), vec![d.d], Init::Ones);
        let lm_head = (!d.tied).then(|| t.add_gemm("lm_head.weight".into(), vec![d.vocab, d.d]));
        let (specs, numel) = t.finish();
        Self { specs, embeddings, layers, norm, lm_head, numel }
    }

    /// The table index of a tensor by checkpoint name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// Fills an arena with fla's init: normal(0, std) weights (the padding row of the embedding
    /// included), zero biases, unit norms, and Gated DeltaNet's `A_log` and `dt_bias` as its
    /// layer draws them.
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
        init_table(&self.specs, self.numel, dims.init_std, seed)
    }
}

/// An arena of `numel` elements filled by each row's [`Init`] rule (`Init::Normal` with `std`),
/// drawing from one generator seeded with `seed` in table order.
pub fn init_table(specs: &[ParamSpec], numel: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut w = vec![0.0f32; numel];
    let mut rng = Rng::new(seed);
    for s in specs {
        let dst = &mut w[s.range()];
        match s.init {
            Init::Normal => dst.iter_mut().for_each(|x| *x = (rng.normal() * std as f64) as f32),
            Init::Zeros => dst.fill(0.0),
            Init::Ones => dst.fill(1.0),
            Init::Uniform { bound } => dst.iter_mut().for_each(|x| *x = ((2.0 * rng.uniform() - 1.0) * bound as f64) as f32),
            Init::LogUniform { lo, hi } => dst.iter_mut().for_each(|x| {
                // torch's uniform_ draws [lo, hi); a draw of exactly 0 would give -inf
                let u = lo as f64 + (hi - lo) as f64 * rng.uniform();
                *x = u.max(f64::MIN_POSITIVE).ln() as f32;
            }),
            Init::InvSoftplusDt { min, max, floor } => dst.iter_mut().for_each(|x| {
                let (lmin, lmax) = ((min as f64).ln(), (max as f64).ln());
                let dt = (rng.uniform() * (lmax - lmin) + lmin).exp().max(floor as f64);
                // inverse of softplus: dt + log(-expm1(-dt))
                *x = (dt + (-(-dt).exp_m1()).ln()) as f32;
            }),
        }
    }
    w
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
