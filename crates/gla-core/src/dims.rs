//! The derived dims of a language model of the family (what a backend sizes its buffers and
//! launches from): the model's own ([`Dims`]) and, per layer, its token mixer's ([`MixerDims`]:
//! [`GlaDims`], [`DeltaDims`], [`AttnDims`]); and fla's elementwise feature maps. Contracts shared by the
//! model crate and every device crate.

/// Everything the language model needs, derived from a validated config (fla's layer
/// arithmetic): the model's own dims, and each layer's token mixer with its own dims
/// ([`MixerDims`]: GLA, the delta rule, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    /// Model dim D.
    pub d: usize,
    /// Layers L.
    pub layers: usize,
    /// MLP width I.
    pub intermediate: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon (every norm of the model, the mixers' output norms included, as fla
    /// passes `norm_eps` to the layers).
    pub eps: f32,
    /// lm_head tied to the embedding.
    pub tied: bool,
    /// Padding token (its row gets no gradient from the embedding lookup).
    pub pad: Option<usize>,
    /// Init std.
    pub init_std: f32,
    /// Layer `l`'s token mixer, `L` entries.
    pub mixers: Vec<MixerDims>,
}

/// One layer's token mixer and its dims: what its mixer code (gla-model's `mixers::*`) and its
/// op family's backend methods read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MixerDims {
    /// fla's `GatedLinearAttention` ([`GlaDims`]).
    Gla(GlaDims),
    /// fla's `DeltaNet` or `GatedDeltaNet` ([`DeltaDims`]).
    Delta(DeltaDims),
    /// fla's softmax `Attention` (fla/layers/attn.py), a hybrid stack's layer named in the
    /// config's `attn` key ([`AttnDims`]).
    Attn(AttnDims),
}

/// The softmax-attention layer's dims (fla's `Attention`, built by fla's `get_attention` from
/// one spec of the config's `attn` key): `q_proj [H*Dh, D]`, `k_proj`/`v_proj [H_KV*Dh, D]`
/// (with biases when `qkv_bias`), `o_proj [D, H*Dh]`, RoPE over the whole head (GPT-NeoX
/// halves, fla's `RotaryEmbedding(dim=head_dim, interleaved=False)`), causal softmax attention
/// with GQA and an optional sliding window (the op: [`crate::attn`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnDims {
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads H_KV (GQA: H is a multiple of it).
    pub kv_heads: usize,
    /// Per-head dim Dh = hidden_size / H (fla's `head_dim`), even (RoPE rotates pairs).
    pub head_dim: usize,
    /// Biases on q_proj, k_proj, v_proj (fla's `qkv_bias`).
    pub qkv_bias: bool,
    /// Sliding window w: query i attends keys `i - w < s <= i` (fla's `window_size`, passed to
    /// flash_attn as `(w - 1, 0)`); `None`: full causal attention.
    pub window: Option<usize>,
    /// RoPE base (fla's `rope_theta`).
    pub rope_theta: f64,
}

impl AttnDims {
    /// Width of q (and of o): H * Dh.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of k and of v: H_KV * Dh (fla's `kv_dim`).
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The attention op's spec of this layer for `b` rows of `t` tokens (`cu_seqlens`: packed
    /// varlen offsets): causal, its heads, head dims, window, scale `Dh^-1/2`. Every backend
    /// builds its problems from it, so that they agree.
    pub fn op_spec(&self, b: usize, t: usize, cu_seqlens: Option<Vec<usize>>) -> crate::AttnSpec {
        crate::AttnSpec {
            b,
            t,
            h: self.heads,
            h_kv: self.kv_heads,
            d: self.head_dim,
            dv: self.head_dim,
            causal: true,
            window: self.window,
            scale: None,
            cu_seqlens,
        }
    }

    /// RoPE's inverse frequencies `1 / theta^(2i / Dh)`, `i < Dh / 2`, in f32 as fla's
    /// `RotaryEmbedding._compute_inv_freq` makes them (`arange(0, Dh, 2) / Dh` and the power
    /// in f32).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let (theta, d) = (self.rope_theta as f32, self.head_dim as f32);
        (0..self.head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / d)).collect()
    }
}

/// The GLA layer's dims (fla's `GatedLinearAttention`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlaDims {
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
}

impl GlaDims {
    /// Query heads per key/value head.
    pub fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// How DeltaNet normalises q and k before the delta rule (fla's `qk_norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QkNorm {
    /// `l2`: inside the op (`gla_core::DeltaSpec::l2_qk`). Gated DeltaNet always.
    L2,
    /// `sum`: `x / max(sum |x|, 1e-6)` per head (fla's `sum_norm`), before the op.
    Sum,
}

/// The output gate of fla's `FusedRMSNormGated`: `rmsnorm(o) * w * act(g)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateAct {
    /// `swish` / `silu`: `g sigmoid(g)` (GLA's, and fla's default).
    Swish,
    /// `sigmoid` (Gated DeltaNet's `output_gate_activation = "sigmoid"`).
    Sigmoid,
}

/// The delta-rule layer's dims: fla's `DeltaNet` (no decay) and `GatedDeltaNet` (the
/// `A_log`/`dt_bias` decay), one mixer with options (gla-model's `mixers::delta`; the op is
/// [`crate::delta`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeltaDims {
    /// Query/key heads H.
    pub heads: usize,
    /// Value heads HV, a multiple of H (Gated DeltaNet's `num_v_heads`; H for DeltaNet).
    pub v_heads: usize,
    /// Per-head key dim K.
    pub head_k: usize,
    /// Per-head value dim V.
    pub head_v: usize,
    /// key_dim = H * K: width of q_proj and k_proj.
    pub key_dim: usize,
    /// value_dim = HV * V: width of v_proj (and g_proj).
    pub value_dim: usize,
    /// Short conv width, or 0 without short conv.
    pub conv: usize,
    /// The activation of q and k (DeltaNet's `qk_activation`: silu, relu, elu (fla's `elu_p1`)
    /// or identity; Gated DeltaNet: silu). With short conv, silu is the conv's own activation.
    pub qk_act: FeatureMap,
    /// The norm of q and k.
    pub qk_norm: QkNorm,
    /// `beta = sigmoid(x W_b)` (fla's `use_beta`); otherwise beta = 1.
    pub use_beta: bool,
    /// Twice the beta: `2 sigmoid(x W_b)`, or 2 without `use_beta`: negative eigenvalues (fla's
    /// `allow_neg_eigval`).
    pub allow_neg_eigval: bool,
    /// Gated DeltaNet's decay `g = -exp(A_log) softplus(x W_a + dt_bias)`, per value head.
    pub decay: bool,
    /// The output gate `g_proj` and its activation (fla's `use_gate`); without it, `o_norm` is a
    /// plain RMSNorm.
    pub output_gate: Option<GateAct>,
}

impl DeltaDims {
    /// Value heads per query/key head, HV / H.
    pub fn group(&self) -> usize {
        self.v_heads / self.heads
    }

    /// The delta-rule op's spec of this layer for `b` rows of `t` tokens (`cu_seqlens`: packed
    /// varlen offsets): its heads and dims, the L2 norm of q and k inside with `qk_norm = "l2"`,
    /// the beta sigmoid inside with `use_beta` (otherwise the constant [`DeltaDims::const_beta`]
    /// is given directly), the decay computed inside for Gated DeltaNet. Every backend builds
    /// its problems from it, so that they agree.
    pub fn op_spec(&self, b: usize, t: usize, cu_seqlens: Option<Vec<usize>>) -> crate::DeltaSpec {
        crate::DeltaSpec {
            b,
            t,
            h: self.heads,
            hv: self.v_heads,
            k: self.head_k,
            v: self.head_v,
            gate: if self.decay { crate::DeltaGate::Computed } else { crate::DeltaGate::None },
            scale: None,
            cu_seqlens,
            l2_qk: self.qk_norm == QkNorm::L2,
            beta_sigmoid: self.use_beta,
            // without b_proj the doubled beta is the constant itself
            allow_neg_eigval: self.use_beta && self.allow_neg_eigval,
        }
    }

    /// The beta of a layer without `b_proj` (fla's `torch.ones_like`, doubled with
    /// `allow_neg_eigval`).
    pub fn const_beta(&self) -> f32 {
        if self.allow_neg_eigval {
            2.0
        } else {
            1.0
        }
    }
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
    /// fla's `elu_p1`: `elu(x) + 1` (DeltaNet's `qk_activation = "elu"`; not an `ACT2FN` name,
    /// so not in [`FeatureMap::NAMES`]).
    EluP1,
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
    /// The GLA dims shared by every layer, when every layer's mixer is GLA with the same dims
    /// (every pure GLA model; what the GPU backend runs).
    pub fn gla(&self) -> Option<&GlaDims> {
        let first = match self.mixers.first()? {
            MixerDims::Gla(g) => g,
            _ => return None,
        };
        self.mixers.iter().all(|m| *m == MixerDims::Gla(*first)).then_some(first)
    }

    /// The delta-rule dims shared by every layer, when every layer's mixer is DeltaNet or Gated
    /// DeltaNet with the same dims.
    pub fn delta(&self) -> Option<&DeltaDims> {
        let first = match self.mixers.first()? {
            MixerDims::Delta(g) => g,
            _ => return None,
        };
        self.mixers.iter().all(|m| *m == MixerDims::Delta(*first)).then_some(first)
    }
}
