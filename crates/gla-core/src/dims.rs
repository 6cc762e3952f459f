//! The derived dims of a language model of the family (what a backend sizes its buffers and
//! launches from) and fla's elementwise feature maps: contracts shared by the model crate and
//! every device crate.

/// Everything the model needs, derived from a validated config (fla's layer arithmetic).
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    /// Model dim D.
    pub d: usize,
    /// Layers L.
    pub layers: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads; `heads / kv_heads` is the group size.
    pub kv_heads: usize,
    /// key_dim = int(D * expand_k) (all query heads).
    pub key_dim: usize,
    /// value_dim = int(D * expand_v) (all heads).
    pub value_dim: usize,
    /// Per-head key dim K.
    pub head_k: usize,
    /// Per-head value dim V.
    pub head_v: usize,
    /// key_dim / groups: width of k_proj and of the gate.
    pub key_dim_kv: usize,
    /// value_dim / groups: width of v_proj.
    pub value_dim_kv: usize,
    /// Rank of the gate projection (fla's layer default, not a config key).
    pub gate_rank: usize,
    /// The log-gate is `logsigmoid(x) / gate_norm` (fla's layer default 16).
    pub gate_norm: f32,
    /// MLP width I.
    pub intermediate: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Short conv width, or 0 without short conv.
    pub conv: usize,
    /// Output gate on.
    pub output_gate: bool,
    /// Name of the per-head norm: `g_norm_swish_gate` (fused, swish gate) or `g_norm`.
    pub gnorm_name: &'static str,
    /// Lower clamp of the log-gate (<= 0).
    pub clamp_min: Option<f32>,
    /// fla's `feature_map` on q and k (after the short convolution), or none.
    pub feature_map: Option<FeatureMap>,
    /// lm_head tied to the embedding.
    pub tied: bool,
    /// Padding token (its row gets no gradient from the embedding lookup).
    pub pad: Option<usize>,
    /// Init std.
    pub init_std: f32,
}

/// fla's `feature_map` of the GLA layer: a transformers `ACT2FN` activation applied elementwise
/// to q and k after the short convolution (fla applies it per head after the reshape; being
/// elementwise, before or after the GQA repeat of k is the same). The GLA op then sees f(q), f(k).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureMap {
    /// `relu`: max(x, 0) (gradient 0 at 0, as PyTorch).
    Relu,
    /// `relu2`: relu(x)^2.
    Relu2,
    /// `relu6`: min(max(x, 0), 6).
    Relu6,
    /// `leaky_relu`: x for x > 0, 0.01 x otherwise.
    LeakyRelu,
    /// `sigmoid`: 1 / (1 + exp(-x)).
    Sigmoid,
    /// `silu` / `swish`: x sigmoid(x).
    Silu,
    /// `tanh`.
    Tanh,
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    GeluTanh,
    /// `quick_gelu`: x sigmoid(1.702 x).
    QuickGelu,
    /// `linear`: the identity.
    Identity,
}

impl FeatureMap {
    /// The `ACT2FN` names this build takes, and their maps.
    pub const NAMES: &'static [(&'static str, FeatureMap)] = &[
        ("relu", FeatureMap::Relu),
        ("relu2", FeatureMap::Relu2),
        ("relu6", FeatureMap::Relu6),
        ("leaky_relu", FeatureMap::LeakyRelu),
        ("sigmoid", FeatureMap::Sigmoid),
        ("silu", FeatureMap::Silu),
        ("swish", FeatureMap::Silu),
        ("tanh", FeatureMap::Tanh),
        ("gelu_new", FeatureMap::GeluTanh),
        ("gelu_pytorch_tanh", FeatureMap::GeluTanh),
        ("gelu_fast", FeatureMap::GeluTanh),
        ("quick_gelu", FeatureMap::QuickGelu),
        ("linear", FeatureMap::Identity),
    ];

    /// The map of an `ACT2FN` name, if built.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
    }

    /// The code the GPU kernels take (`feature_map_fwd/bwd` in gla-cuda's kernels/nn/elementwise.cu): the variant's
    /// position in the enum.
    pub fn code(self) -> i32 {
        self as i32
    }
}

impl Dims {
    /// Query heads per key/value head.
    pub fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }
}
