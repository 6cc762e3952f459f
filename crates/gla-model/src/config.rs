//! fla's model configs as JSON, and the dims the model derives from them: [`GlaConfig`]
//! (`model_type = "gla"`), [`DeltaNetConfig`] (`"delta_net"`), [`GatedDeltaNetConfig`]
//! (`"gated_deltanet"`), and [`ModelConfig`], the one that `config.json`'s `model_type` picks.
//!
//! Every key of fla's config is accepted with fla's default. Keys fla itself ignores (`use_gk`,
//! `use_gv`, `max_position_embeddings`, `use_cache`, the `fuse_*` kernel switches, which do not
//! change the math) are kept and written back unchanged. Features this crate does not build yet
//! (a `feature_map` outside [`FeatureMap::NAMES`], `use_l2warp`, Attention-Residuals,
//! `elementwise_affine = false`, `attn_mode = "fused_chunk"`, an `attn` spec's `qk_norm`) are
//! refused by [`GlaConfig::dims`] with [`Error::Unsupported`], never silently ignored. Unknown
//! keys (Hugging Face adds `architectures`, `transformers_version`, ...) are kept in
//! [`GlaConfig::extra`].
//!
//! Hybrid stacks: every family takes fla's `attn` key (fla/models/configuration_utils.py,
//! `parse_attention_config`): null, one spec or a list of specs, each
//! `{layers, num_heads, num_kv_heads = num_heads, qkv_bias = false, window_size = null,
//! rope_theta = 10000.0}`; the listed layers get fla's softmax `Attention` ([`AttnDims`] in
//! [`Dims::mixers`]), the others the family's own mixer. It is validated with fla's rules
//! ([`attn_specs`]) and written back as fla writes it (defaults filled, unknown keys kept).
//!
//! ```
//! use gla_model::GlaConfig;
//! let c = GlaConfig::from_json(r#"{"hidden_size": 1024, "num_hidden_layers": 24, "tie_word_embeddings": true}"#).unwrap();
//! let d = c.dims().unwrap();
//! let g = d.gla().unwrap();
//! assert_eq!((g.key_dim, g.value_dim, d.intermediate), (512, 1024, 2816));
//! ```
//!
//! The delta-rule configs follow the same rules (every key with fla's default, unknown keys
//! kept, features not built refused by name); see [`DeltaNetConfig`] and
//! [`GatedDeltaNetConfig`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use gla_core::dims::{AttnDims, DeltaDims, Dims, FeatureMap, GateAct, GlaDims, MixerDims, QkNorm};

use crate::{Error, Result};

/// [`crate::checkpoint::WEIGHTS_DTYPE`] as PyTorch names it: the `"dtype"` that [`GlaConfig::to_json`] writes into
/// `config.json`, which transformers 5 loads the weights in.
pub const WEIGHTS_TORCH_DTYPE: &str = "float32";

/// fla's `GLAConfig`. Field docs give fla's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GlaConfig {
    /// Always `"gla"`.
    pub model_type: String,
    /// Model dim D. Default 2048.
    pub hidden_size: usize,
    /// key_dim = int(D * expand_k). Default 0.5.
    pub expand_k: f64,
    /// value_dim = int(D * expand_v). Default 1.0.
    pub expand_v: f64,
    /// MLP width ratio used when `intermediate_size` is null. Default 4; null also means 4
    /// (fla's `GatedMLP`: `if hidden_ratio is None: hidden_ratio = 4`).
    pub hidden_ratio: Option<f64>,
    /// MLP width I. Default null: `256 * ceil(int(D * hidden_ratio * 2/3) / 256)`.
    pub intermediate_size: Option<usize>,
    /// Layers L. Default 24.
    pub num_hidden_layers: usize,
    /// Query heads H. Default 4.
    pub num_heads: usize,
    /// Key/value heads (GQA by repetition). Default null (= num_heads).
    pub num_kv_heads: Option<usize>,
    /// Feature map on q and k (a transformers `ACT2FN` name, e.g. "relu"; [`FeatureMap::NAMES`]
    /// lists those built, others are refused). Default null.
    pub feature_map: Option<String>,
    /// "chunk" or "fused_recurrent" (the same function). Default "chunk".
    pub attn_mode: String,
    /// Causal depthwise conv (+SiLU) on q, k, v. Default false.
    pub use_short_conv: bool,
    /// Width of the short conv. Default 4.
    pub conv_size: usize,
    /// Swish output gate g_proj. Default true.
    pub use_output_gate: bool,
    /// Lower clamp of the log-gate: `g = max(logsigmoid(x) / 16, clamp_min)`. Default null.
    /// Must be <= 0 (0 means no decay at all); a positive value is refused, see [`GlaConfig::dims`].
    pub clamp_min: Option<f64>,
    /// Activation of the MLP and the output gate: "swish" (or "silu"). Default "swish".
    pub hidden_act: String,
    /// Informational (GLA has no positional embedding). Default 2048.
    pub max_position_embeddings: usize,
    /// Norm weights. Default true; false is refused for now.
    pub elementwise_affine: bool,
    /// RMSNorm epsilon. Default 1e-6.
    pub norm_eps: f64,
    /// Legacy, not used by fla's layer. Default true.
    pub use_gk: bool,
    /// Legacy, not used by fla's layer. Default false.
    pub use_gv: bool,
    /// Hybrid softmax-attention layers (fla's `attn`: null, a spec or a list of specs, see
    /// [`attn_specs`]). Default null.
    pub attn: Option<serde_json::Value>,
    /// Hugging Face generation flag. Default true.
    pub use_cache: bool,
    /// Padding token: its embedding row gets no gradient from its use as an input (PyTorch's
    /// `padding_idx`). It is initialised like every other row (random, not zero), as fla does.
    /// Default null.
    pub pad_token_id: Option<i64>,
    /// Default 1.
    pub bos_token_id: Option<serde_json::Value>,
    /// Default 2.
    pub eos_token_id: Option<serde_json::Value>,
    /// lm_head shares the embedding matrix. Default false.
    pub tie_word_embeddings: bool,
    /// Std of the normal init. Default 0.02.
    pub initializer_range: f64,
    /// Kernel switch (same math). Default true.
    pub fuse_norm: bool,
    /// Kernel switch (same math). Default true.
    pub fuse_swiglu: bool,
    /// Kernel switch (same math). Default true.
    pub fuse_cross_entropy: bool,
    /// Kernel switch (same math); exclusive with `fuse_cross_entropy`. Default false.
    pub fuse_linear_cross_entropy: bool,
    /// L2-warp loss term. Default false; true is refused for now.
    pub use_l2warp: bool,
    /// Vocabulary size. Default 32000.
    pub vocab_size: usize,
    /// Attention-Residuals block size. Default null; non-null is refused for now.
    pub attnres_block_size: Option<usize>,
    /// Keys this crate does not know, kept and written back as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for GlaConfig {
    fn default() -> Self {
        Self {
            model_type: "gla".into(),
            hidden_size: 2048,
            expand_k: 0.5,
            expand_v: 1.0,
            hidden_ratio: Some(4.0),
            intermediate_size: None,
            num_hidden_layers: 24,
            num_heads: 4,
            num_kv_heads: None,
            feature_map: None,
            attn_mode: "chunk".into(),
            use_short_conv: false,
            conv_size: 4,
            use_output_gate: true,
            clamp_min: None,
            hidden_act: "swish".into(),
            max_position_embeddings: 2048,
            elementwise_affine: true,
            norm_eps: 1e-6,
            use_gk: true,
            use_gv: false,
            attn: None,
            use_cache: true,
            pad_token_id: None,
            bos_token_id: Some(1.into()),
            eos_token_id: Some(2.into()),
            tie_word_embeddings: false,
            initializer_range: 0.02,
            fuse_norm: true,
            fuse_swiglu: true,
            fuse_cross_entropy: true,
            fuse_linear_cross_entropy: false,
            use_l2warp: false,
            vocab_size: 32000,
            attnres_block_size: None,
            extra: BTreeMap::new(),
        }
    }
}

/// A config number as a person reads it: `0.5`, or `1e300` rather than its 301 digits.
fn num(x: f64) -> String {
    if x.abs() >= 1e6 {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

fn bad(key: &'static str, reason: impl Into<String>) -> Error {
    Error::BadConfig { key, reason: reason.into() }
}

/// Refuses a dimension above [`crate::limits::MAX_DIM`], naming the key it comes from.
fn too_big(key: &'static str, v: usize) -> Result<()> {
    let max = crate::limits::MAX_DIM;
    if v > max {
        return Err(bad(key, format!("gives a dimension of {v}, above the limit of {max}")));
    }
    Ok(())
}

fn unsupported(feature: &'static str, detail: impl Into<String>) -> Error {
    Error::Unsupported { feature, detail: detail.into() }
}

impl GlaConfig {
    /// Parses `config.json` text.
    ///
    /// # Errors
    /// [`Error::Json`] when it does not parse or a key has the wrong type.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|source| Error::Json { what: "config.json".into(), source })
    }

    /// The config as `config.json` text to be written beside weights of this crate (fla's keys
    /// plus `architectures`, as Hugging Face writes), with `"dtype"` set to
    /// [`WEIGHTS_TORCH_DTYPE`] (every weight file this crate writes is f32) whatever the config
    /// was loaded with, and no `"torch_dtype"`.
    pub fn to_json(&self) -> String {
        let mut c = self.clone();
        hf_keys(&mut c.extra, "GLAForCausalLM");
        c.attn = normalized_attn(&c.attn, c.num_hidden_layers);
        serde_json::to_string_pretty(&c).unwrap_or_default()
    }

    /// A small config for tests and demos: fla's defaults except the listed dims.
    pub fn tiny(d: usize, layers: usize, heads: usize, vocab: usize) -> Self {
        Self { hidden_size: d, num_hidden_layers: layers, num_heads: heads, vocab_size: vocab, ..Self::default() }
    }

    /// The model-level keys, for the checks every family shares.
    fn lm(&self) -> Lm<'_> {
        Lm {
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            vocab_size: self.vocab_size,
            hidden_ratio: self.hidden_ratio,
            intermediate_size: self.intermediate_size,
            hidden_act: &self.hidden_act,
            norm_eps: self.norm_eps,
            initializer_range: self.initializer_range,
            pad_token_id: self.pad_token_id,
            tie_word_embeddings: self.tie_word_embeddings,
            attn: &self.attn,
            use_l2warp: self.use_l2warp,
            attnres_block_size: self.attnres_block_size,
            fuse_cross_entropy: self.fuse_cross_entropy,
            fuse_linear_cross_entropy: self.fuse_linear_cross_entropy,
        }
    }

    /// Validates the config and derives the dims, with fla's rules.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a feature not built yet; [`Error::BadConfig`] for values fla
    /// itself would reject (dims not divisible by heads, exclusive flags, ...).
    pub fn dims(&self) -> Result<Dims> {
        if self.model_type != "gla" {
            return Err(bad("model_type", format!("expected \"gla\", found {:?}", self.model_type)));
        }
        let lm = self.lm();
        lm.check_features()?;
        let feature_map = match &self.feature_map {
            None => None,
            Some(f) => Some(FeatureMap::from_name(f).ok_or_else(|| {
                let names: Vec<&str> = FeatureMap::NAMES.iter().map(|(n, _)| *n).collect();
                unsupported("feature_map", format!("found {f:?}; built: null or one of {}", names.join(", ")))
            })?),
        };
        if !self.elementwise_affine {
            return Err(unsupported("elementwise_affine", "found false; only true"));
        }
        check_attn_mode(&self.attn_mode)?;
        lm.check_sizes()?;
        let d = self.hidden_size;
        let heads = self.num_heads;
        if heads == 0 {
            return Err(bad("num_heads", "must be > 0"));
        }
        for (key, v) in [
            ("num_heads", heads),
            ("num_kv_heads", self.num_kv_heads.unwrap_or(0)),
            ("conv_size", if self.use_short_conv { self.conv_size } else { 0 }),
        ] {
            too_big(key, v)?;
        }
        let kv_heads = self.num_kv_heads.unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad("num_kv_heads", format!("{kv_heads} must divide num_heads = {heads}")));
        }
        for (key, e) in [("expand_k", self.expand_k), ("expand_v", self.expand_v)] {
            if !(e.is_finite() && e > 0.0) {
                return Err(bad(key, format!("must be a positive number, found {e}")));
            }
        }
        // python int() truncates toward zero
        let key_dim = (d as f64 * self.expand_k) as usize;
        let value_dim = (d as f64 * self.expand_v) as usize;
        too_big("expand_k", key_dim).map_err(|_| {
            bad("expand_k", format!("key_dim = int({d} * {}) is above the limit of {}", num(self.expand_k), crate::limits::MAX_DIM))
        })?;
        too_big("expand_v", value_dim).map_err(|_| {
            bad("expand_v", format!("value_dim = int({d} * {}) is above the limit of {}", num(self.expand_v), crate::limits::MAX_DIM))
        })?;
        let groups = heads / kv_heads;
        if key_dim == 0 || !key_dim.is_multiple_of(heads) {
            return Err(bad(
                "expand_k",
                format!("key_dim = int({d} * {}) = {key_dim} must be a positive multiple of num_heads = {heads}", self.expand_k),
            ));
        }
        if value_dim == 0 || !value_dim.is_multiple_of(heads) {
            return Err(bad(
                "expand_v",
                format!("value_dim = int({d} * {}) = {value_dim} must be a positive multiple of num_heads = {heads}", self.expand_v),
            ));
        }
        if self.use_short_conv && self.conv_size == 0 {
            return Err(bad("conv_size", "must be > 0"));
        }
        if let Some(c) = self.clamp_min {
            // fla takes any value (`torch.clamp_min(gk, clamp_min)`, no check). 0 is legal: every
            // log-gate becomes 0, no decay. A positive value would make every log-gate equal to
            // it (logsigmoid / 16 is <= 0), a state that grows each step: fla computes that, but
            // the GLA op here refuses positive log-gates (`gla_core::Error::BadGate`), so such a
            // config is refused now, by name, rather than at the first forward.
            if c.is_nan() || c > 0.0 {
                return Err(bad(
                    "clamp_min",
                    format!(
                        "must be <= 0 or null, found {c}: the log-gate is max(logsigmoid(x) / 16, clamp_min), so a positive clamp_min \
                         gives positive log-gates (a growing state), which the GLA op refuses (log-gates must be <= 0)"
                    ),
                ));
            }
        }
        let gnorm_name = if self.hidden_act == "swish" && self.fuse_norm && self.use_output_gate { "g_norm_swish_gate" } else { "g_norm" };
        let gla = GlaDims {
            heads,
            kv_heads,
            key_dim,
            value_dim,
            head_k: key_dim / heads,
            head_v: value_dim / heads,
            key_dim_kv: key_dim / groups,
            value_dim_kv: value_dim / groups,
            gate_rank: 16,
            gate_norm: 16.0,
            conv: if self.use_short_conv { self.conv_size } else { 0 },
            output_gate: self.use_output_gate,
            gnorm_name,
            clamp_min: self.clamp_min.map(|c| c as f32),
            feature_map,
        };
        lm.dims(MixerDims::Gla(gla))
    }
}

/// The keys every family's config shares (fla's `FLAForCausalLM` around the layers).
struct Lm<'a> {
    hidden_size: usize,
    num_hidden_layers: usize,
    vocab_size: usize,
    hidden_ratio: Option<f64>,
    intermediate_size: Option<usize>,
    hidden_act: &'a str,
    norm_eps: f64,
    initializer_range: f64,
    pad_token_id: Option<i64>,
    tie_word_embeddings: bool,
    attn: &'a Option<serde_json::Value>,
    use_l2warp: bool,
    attnres_block_size: Option<usize>,
    fuse_cross_entropy: bool,
    fuse_linear_cross_entropy: bool,
}

fn check_attn_mode(mode: &str) -> Result<()> {
    match mode {
        "chunk" | "fused_recurrent" => Ok(()),
        "fused_chunk" => Err(unsupported("attn_mode", "\"fused_chunk\" is deprecated in fla too; use \"chunk\"")),
        m => Err(bad("attn_mode", format!("{m:?} is not one of \"chunk\", \"fused_recurrent\""))),
    }
}

impl Lm<'_> {
    /// The model-level features this crate does not build (refused by name).
    fn check_features(&self) -> Result<()> {
        if self.use_l2warp {
            return Err(unsupported("use_l2warp", "found true; only false"));
        }
        if let Some(b) = self.attnres_block_size {
            return Err(unsupported("attnres_block_size (Attention-Residuals)", format!("found {b}; only null")));
        }
        let act = self.hidden_act;
        if act != "swish" && act != "silu" {
            return Err(unsupported("hidden_act", format!("found {act:?}; only \"swish\" / \"silu\" (SwiGLU)")));
        }
        if self.fuse_cross_entropy && self.fuse_linear_cross_entropy {
            return Err(bad("fuse_linear_cross_entropy", "cannot be true together with fuse_cross_entropy (fla raises too)"));
        }
        Ok(())
    }

    /// The model's sizes: positive, within [`crate::limits::MAX_DIM`].
    fn check_sizes(&self) -> Result<()> {
        let (d, layers, vocab) = (self.hidden_size, self.num_hidden_layers, self.vocab_size);
        for (key, v) in [("hidden_size", d), ("num_hidden_layers", layers), ("vocab_size", vocab)] {
            if v == 0 {
                return Err(bad(key, "must be > 0"));
            }
        }
        for (key, v) in [
            ("hidden_size", d),
            ("num_hidden_layers", layers),
            ("vocab_size", vocab),
            ("intermediate_size", self.intermediate_size.unwrap_or(0)),
        ] {
            too_big(key, v)?;
        }
        Ok(())
    }

    /// The dims of a model whose every layer has the token mixer `mixer`, but the layers of
    /// the `attn` key, which get fla's softmax attention.
    fn dims(&self, mixer: MixerDims) -> Result<Dims> {
        let specs = attn_specs(self.attn, self.num_hidden_layers, self.hidden_size)?;
        let mut dims = self.uniform_dims(mixer)?;
        for (layers, a) in specs {
            for l in layers {
                dims.mixers[l] = MixerDims::Attn(a);
            }
        }
        if crate::limits::param_count(&dims).is_none() {
            return Err(bad("attn", "the parameter count of the hybrid stack overflows 64 bits"));
        }
        Ok(dims)
    }

    /// The dims of a model whose every layer has the token mixer `mixer`.
    fn uniform_dims(&self, mixer: MixerDims) -> Result<Dims> {
        let d = self.hidden_size;
        let intermediate = match (self.intermediate_size, self.hidden_ratio) {
            (Some(i), _) if i > 0 => i,
            (Some(_), _) => return Err(bad("intermediate_size", "must be > 0")),
            (None, r) => {
                // fla's GatedMLP (fla/modules/mlp.py): `if hidden_ratio is None: hidden_ratio = 4`,
                // then `int(hidden_size * hidden_ratio * 2 / 3)` rounded up to a multiple of 256
                let r = r.unwrap_or(4.0);
                if !(r.is_finite() && r > 0.0) {
                    return Err(bad(
                        "hidden_ratio",
                        format!("needs a positive number (or null = 4) when intermediate_size is null, found {r}"),
                    ));
                }
                let i = (d as f64 * r * 2.0 / 3.0) as usize;
                too_big("hidden_ratio", i).map_err(|_| {
                    bad(
                        "hidden_ratio",
                        format!(
                            "the MLP width int(hidden_size {d} * hidden_ratio {} * 2/3) is above the limit of {}",
                            num(r),
                            crate::limits::MAX_DIM
                        ),
                    )
                })?;
                256 * i.div_ceil(256)
            }
        };
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(bad("norm_eps", format!("must be positive, found {}", self.norm_eps)));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return Err(bad("initializer_range", format!("must be >= 0, found {}", self.initializer_range)));
        }
        let pad = match self.pad_token_id {
            None => None,
            Some(p) if p >= 0 && (p as u64) < self.vocab_size as u64 => Some(p as usize),
            Some(p) => return Err(bad("pad_token_id", format!("{p} is outside [0, vocab_size = {})", self.vocab_size))),
        };
        // the parameter count is checked before a table of that many layers is built
        let dims = Dims {
            d,
            layers: self.num_hidden_layers,
            intermediate,
            vocab: self.vocab_size,
            eps: self.norm_eps as f32,
            tied: self.tie_word_embeddings,
            pad,
            init_std: self.initializer_range as f32,
            mixers: Vec::new(),
        };
        if crate::limits::uniform_param_count(&dims, &mixer).is_none() {
            return Err(bad(
                "num_hidden_layers",
                format!("{} layers of hidden_size {d}: the parameter count overflows 64 bits", dims.layers),
            ));
        }
        // the per-layer list of mixers is allocated here, before the model's own checks
        crate::limits::check_budget(
            format!("the per-layer mixer list of a model of hidden_size {d} x num_hidden_layers {}", dims.layers),
            (dims.layers as u64).checked_mul(std::mem::size_of::<MixerDims>() as u64),
        )?;
        Ok(Dims { mixers: vec![mixer; dims.layers], ..dims })
    }
}

/// The keys every family's `to_json` sets in `extra` before writing: `architectures` when
/// absent, `"dtype"` = [`WEIGHTS_TORCH_DTYPE`], no `"torch_dtype"`.
fn hf_keys(extra: &mut BTreeMap<String, serde_json::Value>, architecture: &str) {
    extra.entry("architectures".into()).or_insert_with(|| serde_json::json!([architecture]));
    // The dtype keys must describe the weights written now, not the checkpoint this config
    // was read from: transformers 5 (`from_pretrained`'s default `dtype="auto"`, which fla
    // 0.6.0 requires: transformers >= 5.6.2) loads the weights in `config.dtype`, so a
    // `"dtype": "bfloat16"` kept from a bf16 fla checkpoint would load our f32 weights as
    // bf16. Hugging Face's own `save_pretrained` also overwrites it with the model's dtype.
    extra.insert("dtype".into(), WEIGHTS_TORCH_DTYPE.into());
    // `torch_dtype` is dropped, not rewritten: transformers 5 reads it only when `dtype` is
    // absent and never writes it (fla 0.6.0's own config.json holds `dtype` alone, see
    // tests/fixtures/fla). transformers 4 reads only `torch_dtype`; finding none, its
    // `torch_dtype="auto"` takes the dtype of the first floating-point weight (f32 here) and
    // its default loads f32 anyway. So leaving it out is right for both, while a stale copy
    // (`"torch_dtype": "bfloat16"` from an older checkpoint) would mislead transformers 4.
    extra.remove("torch_dtype");
}

/// `x` as an integer when it is one within fla's `math.isclose` tolerance `rel`.
fn integral(x: f64, rel: f64) -> Option<usize> {
    let r = x.round();
    (x.is_finite() && r >= 0.0 && (x - r).abs() <= rel * x.abs().max(r.abs())).then_some(r as usize)
}

/// fla's `DeltaNetConfig` (`model_type = "delta_net"`, fla/models/delta_net). Field docs give
/// fla's default. The layer (fla/layers/delta_net.py) reads each key as documented; keys fla
/// ignores (`use_output_norm`, which the 0.6.0 layer takes and drops: `o_norm` is always there;
/// `max_position_embeddings`, `use_cache`, the `fuse_*` kernel switches) are kept and written
/// back unchanged, unknown keys in [`DeltaNetConfig::extra`].
///
/// ```
/// use gla_model::config::DeltaNetConfig;
/// let c = DeltaNetConfig::from_json(r#"{"hidden_size": 64, "num_heads": 4, "num_hidden_layers": 2}"#).unwrap();
/// let d = c.dims().unwrap();
/// let m = d.delta().unwrap();
/// assert_eq!((m.heads, m.head_k, m.head_v, m.conv), (4, 16, 16, 4));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeltaNetConfig {
    /// Always `"delta_net"`.
    pub model_type: String,
    /// "chunk" or "fused_recurrent" (the same function). Default "chunk".
    pub attn_mode: String,
    /// Model dim D. Default 2048.
    pub hidden_size: usize,
    /// key_dim = D * expand_k, which must be an integer. Default 1.0.
    pub expand_k: f64,
    /// value_dim = D * expand_v, which must be an integer. Default 1.0.
    pub expand_v: f64,
    /// The output gate `g_proj` with fla's `FusedRMSNormGated` (swish); otherwise `o_norm` is a
    /// plain RMSNorm. Default false.
    pub use_gate: bool,
    /// Causal depthwise conv on q, k, v (SiLU on v always, on q and k with
    /// `qk_activation = "silu"`). Default true.
    pub use_short_conv: bool,
    /// beta = 2 sigmoid(x W_b), or 2 without `use_beta` (negative eigenvalues). Default false.
    pub allow_neg_eigval: bool,
    /// Width of the short conv. Default 4.
    pub conv_size: usize,
    /// beta = sigmoid(x W_b) (`b_proj`); otherwise beta = 1. Default true.
    pub use_beta: bool,
    /// Ignored by fla 0.6.0's layer (its `o_norm` is always applied). Default true.
    pub use_output_norm: bool,
    /// Heads H (the value heads too). Default 16.
    pub num_heads: usize,
    /// "l2" (inside the op) or "sum" (`x / sum |x|`). Default "l2".
    pub qk_norm: String,
    /// "silu", "relu", "elu" (elu + 1) or "identity". Default "silu".
    pub qk_activation: String,
    /// Informational. Default 2048.
    pub max_position_embeddings: usize,
    /// MLP width ratio used when `intermediate_size` is null. Default 4 (null also means 4).
    pub hidden_ratio: Option<f64>,
    /// MLP width I. Default null: `256 * ceil(int(D * hidden_ratio * 2/3) / 256)`.
    pub intermediate_size: Option<usize>,
    /// Activation of the MLP: "swish" (or "silu"). Default "swish".
    pub hidden_act: String,
    /// Layers L. Default 24.
    pub num_hidden_layers: usize,
    /// RMSNorm epsilon (the output norm's too). Default 1e-6.
    pub norm_eps: f64,
    /// Hybrid softmax-attention layers (fla's `attn`: null, a spec or a list of specs, see
    /// [`attn_specs`]). Default null.
    pub attn: Option<serde_json::Value>,
    /// Hugging Face generation flag. Default true.
    pub use_cache: bool,
    /// Padding token (no gradient through its embedding row). Default null.
    pub pad_token_id: Option<i64>,
    /// Default 1.
    pub bos_token_id: Option<serde_json::Value>,
    /// Default 2.
    pub eos_token_id: Option<serde_json::Value>,
    /// lm_head shares the embedding matrix. Default false.
    pub tie_word_embeddings: bool,
    /// Std of the normal init. Default 0.02.
    pub initializer_range: f64,
    /// Kernel switch (same math). Default true.
    pub fuse_norm: bool,
    /// Kernel switch (same math). Default true.
    pub fuse_swiglu: bool,
    /// Kernel switch (same math). Default true.
    pub fuse_cross_entropy: bool,
    /// Kernel switch (same math); exclusive with `fuse_cross_entropy`. Default false.
    pub fuse_linear_cross_entropy: bool,
    /// L2-warp loss term. Default false; true is refused for now.
    pub use_l2warp: bool,
    /// Vocabulary size. Default 32000.
    pub vocab_size: usize,
    /// Attention-Residuals block size. Default null; non-null is refused for now.
    pub attnres_block_size: Option<usize>,
    /// Keys this crate does not know, kept and written back as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for DeltaNetConfig {
    fn default() -> Self {
        Self {
            model_type: "delta_net".into(),
            attn_mode: "chunk".into(),
            hidden_size: 2048,
            expand_k: 1.0,
            expand_v: 1.0,
            use_gate: false,
            use_short_conv: true,
            allow_neg_eigval: false,
            conv_size: 4,
            use_beta: true,
            use_output_norm: true,
            num_heads: 16,
            qk_norm: "l2".into(),
            qk_activation: "silu".into(),
            max_position_embeddings: 2048,
            hidden_ratio: Some(4.0),
            intermediate_size: None,
            hidden_act: "swish".into(),
            num_hidden_layers: 24,
            norm_eps: 1e-6,
            attn: None,
            use_cache: true,
            pad_token_id: None,
            bos_token_id: Some(1.into()),
            eos_token_id: Some(2.into()),
            tie_word_embeddings: false,
            initializer_range: 0.02,
            fuse_norm: true,
            fuse_swiglu: true,
            fuse_cross_entropy: true,
            fuse_linear_cross_entropy: false,
            use_l2warp: false,
            vocab_size: 32000,
            attnres_block_size: None,
            extra: BTreeMap::new(),
        }
    }
}

impl DeltaNetConfig {
    /// Parses `config.json` text.
    ///
    /// # Errors
    /// [`Error::Json`] when it does not parse or a key has the wrong type.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|source| Error::Json { what: "config.json".into(), source })
    }

    /// The config as `config.json` text (as [`GlaConfig::to_json`], architecture
    /// `DeltaNetForCausalLM`).
    pub fn to_json(&self) -> String {
        let mut c = self.clone();
        hf_keys(&mut c.extra, "DeltaNetForCausalLM");
        c.attn = normalized_attn(&c.attn, c.num_hidden_layers);
        serde_json::to_string_pretty(&c).unwrap_or_default()
    }

    /// A small config for tests and demos: fla's defaults except the listed dims.
    pub fn tiny(d: usize, layers: usize, heads: usize, vocab: usize) -> Self {
        Self { hidden_size: d, num_hidden_layers: layers, num_heads: heads, vocab_size: vocab, ..Self::default() }
    }

    fn lm(&self) -> Lm<'_> {
        Lm {
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            vocab_size: self.vocab_size,
            hidden_ratio: self.hidden_ratio,
            intermediate_size: self.intermediate_size,
            hidden_act: &self.hidden_act,
            norm_eps: self.norm_eps,
            initializer_range: self.initializer_range,
            pad_token_id: self.pad_token_id,
            tie_word_embeddings: self.tie_word_embeddings,
            attn: &self.attn,
            use_l2warp: self.use_l2warp,
            attnres_block_size: self.attnres_block_size,
            fuse_cross_entropy: self.fuse_cross_entropy,
            fuse_linear_cross_entropy: self.fuse_linear_cross_entropy,
        }
    }

    /// Validates the config and derives the dims, with the rules of fla's layer.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a feature not built yet (hybrid `attn` layers, `use_l2warp`,
    /// Attention-Residuals); [`Error::BadConfig`] for values fla itself would reject.
    pub fn dims(&self) -> Result<Dims> {
        if self.model_type != "delta_net" {
            return Err(bad("model_type", format!("expected \"delta_net\", found {:?}", self.model_type)));
        }
        let lm = self.lm();
        lm.check_features()?;
        check_attn_mode(&self.attn_mode)?;
        lm.check_sizes()?;
        let d = self.hidden_size;
        let heads = self.num_heads;
        if heads == 0 {
            return Err(bad("num_heads", "must be > 0"));
        }
        too_big("num_heads", heads)?;
        too_big("conv_size", if self.use_short_conv { self.conv_size } else { 0 })?;
        let qk_act = match self.qk_activation.as_str() {
            "silu" => FeatureMap::Silu,
            "relu" => FeatureMap::Relu,
            "elu" => FeatureMap::EluP1,
            "identity" => FeatureMap::Identity,
            a => return Err(bad("qk_activation", format!("{a:?} is not one of \"silu\", \"relu\", \"elu\", \"identity\" (fla asserts)"))),
        };
        let qk_norm = match self.qk_norm.as_str() {
            "l2" => QkNorm::L2,
            "sum" => QkNorm::Sum,
            n => return Err(bad("qk_norm", format!("{n:?} is not one of \"l2\", \"sum\" (fla asserts)"))),
        };
        // fla: `key_dim = round(hidden_size * expand_k)`, asserting that it is an integer
        let dim = |key: &'static str, e: f64| -> Result<usize> {
            if !(e.is_finite() && e > 0.0) {
                return Err(bad(key, format!("must be a positive number, found {e}")));
            }
            let x = d as f64 * e;
            let v = integral(x, 1e-9).filter(|&v| v > 0).ok_or_else(|| {
                bad(key, format!("hidden_size {d} * {key} {} = {} must be a positive integer (fla asserts)", num(e), num(x)))
            })?;
            too_big(key, v)?;
            if !v.is_multiple_of(heads) {
                return Err(bad(key, format!("hidden_size {d} * {key} {} = {v} must be a multiple of num_heads = {heads}", num(e))));
            }
            Ok(v)
        };
        let key_dim = dim("expand_k", self.expand_k)?;
        let value_dim = dim("expand_v", self.expand_v)?;
        if self.use_short_conv && self.conv_size == 0 {
            return Err(bad("conv_size", "must be > 0"));
        }
        let m = DeltaDims {
            heads,
            v_heads: heads,
            head_k: key_dim / heads,
            head_v: value_dim / heads,
            key_dim,
            value_dim,
            conv: if self.use_short_conv { self.conv_size } else { 0 },
            qk_act,
            qk_norm,
            use_beta: self.use_beta,
            allow_neg_eigval: self.allow_neg_eigval,
            decay: false,
            output_gate: self.use_gate.then_some(GateAct::Swish),
        };
        lm.dims(MixerDims::Delta(m))
    }
}

/// fla's `GatedDeltaNetConfig` (`model_type = "gated_deltanet"`,
/// fla/models/gated_deltanet). Field docs give fla's default; kept and unknown keys as for
/// [`DeltaNetConfig`].
///
/// ```
/// use gla_model::config::GatedDeltaNetConfig;
/// let c = GatedDeltaNetConfig::from_json(r#"{"hidden_size": 64, "head_dim": 16, "num_heads": 2, "num_v_heads": 4}"#).unwrap();
/// let m = *c.dims().unwrap().delta().unwrap();
/// assert_eq!((m.heads, m.v_heads, m.head_k, m.head_v, m.key_dim, m.value_dim), (2, 4, 16, 32, 32, 128));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatedDeltaNetConfig {
    /// Always `"gated_deltanet"`.
    pub model_type: String,
    /// "chunk" or "fused_recurrent" (the same function). Default "chunk".
    pub attn_mode: String,
    /// Model dim D. Default 2048.
    pub hidden_size: usize,
    /// Per-head value dim V = int(head_dim * expand_v), which must be an integer. Default 2.0.
    pub expand_v: f64,
    /// The output gate `g_proj` with fla's `FusedRMSNormGated`; otherwise `o_norm` is a plain
    /// RMSNorm. Default true.
    pub use_gate: bool,
    /// Causal depthwise conv + SiLU on q, k, v (else SiLU alone). Default true.
    pub use_short_conv: bool,
    /// beta = 2 sigmoid(x W_b) (negative eigenvalues). Default false.
    pub allow_neg_eigval: bool,
    /// Width of the short conv. Default 4.
    pub conv_size: usize,
    /// Per-head key dim K. Default 256.
    pub head_dim: usize,
    /// Query/key heads H. Default 6.
    pub num_heads: usize,
    /// Value heads HV, a multiple of H (grouped value heads). Default null (= num_heads).
    pub num_v_heads: Option<usize>,
    /// Informational. Default 2048.
    pub max_position_embeddings: usize,
    /// MLP width ratio used when `intermediate_size` is null. Default 4 (null also means 4).
    pub hidden_ratio: Option<f64>,
    /// MLP width I. Default null: `256 * ceil(int(D * hidden_ratio * 2/3) / 256)`.
    pub intermediate_size: Option<usize>,
    /// Activation of the MLP: "swish" (or "silu"). Default "swish".
    pub hidden_act: String,
    /// Layers L. Default 21.
    pub num_hidden_layers: usize,
    /// RMSNorm epsilon (the output norm's too). Default 1e-6.
    pub norm_eps: f64,
    /// Hybrid softmax-attention layers (fla's `attn`: null, a spec or a list of specs, see
    /// [`attn_specs`]). Default null.
    pub attn: Option<serde_json::Value>,
    /// Hugging Face generation flag. Default true.
    pub use_cache: bool,
    /// Padding token (no gradient through its embedding row). Default null.
    pub pad_token_id: Option<i64>,
    /// Default 1.
    pub bos_token_id: Option<serde_json::Value>,
    /// Default 2.
    pub eos_token_id: Option<serde_json::Value>,
    /// lm_head shares the embedding matrix. Default false.
    pub tie_word_embeddings: bool,
    /// Std of the normal init. Default 0.02.
    pub initializer_range: f64,
    /// Kernel switch (same math). Default true.
    pub fuse_norm: bool,
    /// Kernel switch (same math). Default true.
    pub fuse_swiglu: bool,
    /// Kernel switch (same math). Default true.
    pub fuse_cross_entropy: bool,
    /// Kernel switch (same math); exclusive with `fuse_cross_entropy`. Default false.
    pub fuse_linear_cross_entropy: bool,
    /// L2-warp loss term. Default false; true is refused for now.
    pub use_l2warp: bool,
    /// Vocabulary size. Default 32000.
    pub vocab_size: usize,
    /// Attention-Residuals block size. Default null; non-null is refused for now.
    pub attnres_block_size: Option<usize>,
    /// The output gate's activation: "swish" / "silu" or "sigmoid". Default "swish".
    pub output_gate_activation: String,
    /// Keys this crate does not know, kept and written back as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for GatedDeltaNetConfig {
    fn default() -> Self {
        Self {
            model_type: "gated_deltanet".into(),
            attn_mode: "chunk".into(),
            hidden_size: 2048,
            expand_v: 2.0,
            use_gate: true,
            use_short_conv: true,
            allow_neg_eigval: false,
            conv_size: 4,
            head_dim: 256,
            num_heads: 6,
            num_v_heads: None,
            max_position_embeddings: 2048,
            hidden_ratio: Some(4.0),
            intermediate_size: None,
            hidden_act: "swish".into(),
            num_hidden_layers: 21,
            norm_eps: 1e-6,
            attn: None,
            use_cache: true,
            pad_token_id: None,
            bos_token_id: Some(1.into()),
            eos_token_id: Some(2.into()),
            tie_word_embeddings: false,
            initializer_range: 0.02,
            fuse_norm: true,
            fuse_swiglu: true,
            fuse_cross_entropy: true,
            fuse_linear_cross_entropy: false,
            use_l2warp: false,
            vocab_size: 32000,
            attnres_block_size: None,
            output_gate_activation: "swish".into(),
            extra: BTreeMap::new(),
        }
    }
}

impl GatedDeltaNetConfig {
    /// Parses `config.json` text.
    ///
    /// # Errors
    /// [`Error::Json`] when it does not parse or a key has the wrong type.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|source| Error::Json { what: "config.json".into(), source })
    }

    /// The config as `config.json` text (as [`GlaConfig::to_json`], architecture
    /// `GatedDeltaNetForCausalLM`).
    pub fn to_json(&self) -> String {
        let mut c = self.clone();
        hf_keys(&mut c.extra, "GatedDeltaNetForCausalLM");
        c.attn = normalized_attn(&c.attn, c.num_hidden_layers);
        serde_json::to_string_pretty(&c).unwrap_or_default()
    }

    /// A small config for tests and demos: fla's defaults except the listed dims (`head_dim`
    /// = D / heads, so that `num_heads * head_dim = D`).
    pub fn tiny(d: usize, layers: usize, heads: usize, vocab: usize) -> Self {
        Self {
            hidden_size: d,
            num_hidden_layers: layers,
            num_heads: heads,
            head_dim: d / heads.max(1),
            vocab_size: vocab,
            ..Self::default()
        }
    }

    fn lm(&self) -> Lm<'_> {
        Lm {
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            vocab_size: self.vocab_size,
            hidden_ratio: self.hidden_ratio,
            intermediate_size: self.intermediate_size,
            hidden_act: &self.hidden_act,
            norm_eps: self.norm_eps,
            initializer_range: self.initializer_range,
            pad_token_id: self.pad_token_id,
            tie_word_embeddings: self.tie_word_embeddings,
            attn: &self.attn,
            use_l2warp: self.use_l2warp,
            attnres_block_size: self.attnres_block_size,
            fuse_cross_entropy: self.fuse_cross_entropy,
            fuse_linear_cross_entropy: self.fuse_linear_cross_entropy,
        }
    }

    /// Validates the config and derives the dims, with the rules of fla's layer.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a feature not built yet (hybrid `attn` layers, `use_l2warp`,
    /// Attention-Residuals); [`Error::BadConfig`] for values fla itself would reject.
    pub fn dims(&self) -> Result<Dims> {
        if self.model_type != "gated_deltanet" {
            return Err(bad("model_type", format!("expected \"gated_deltanet\", found {:?}", self.model_type)));
        }
        let lm = self.lm();
        lm.check_features()?;
        check_attn_mode(&self.attn_mode)?;
        lm.check_sizes()?;
        let (heads, head_k) = (self.num_heads, self.head_dim);
        for (key, v) in [("num_heads", heads), ("head_dim", head_k)] {
            if v == 0 {
                return Err(bad(key, "must be > 0"));
            }
        }
        let v_heads = self.num_v_heads.unwrap_or(heads);
        for (key, v) in [
            ("num_heads", heads),
            ("head_dim", head_k),
            ("num_v_heads", v_heads),
            ("conv_size", if self.use_short_conv { self.conv_size } else { 0 }),
        ] {
            too_big(key, v)?;
        }
        if v_heads == 0 || !v_heads.is_multiple_of(heads) {
            // fla raises when num_v_heads > num_heads is not a multiple; fewer value heads than
            // query heads has no meaning in the op (each value head reads one query/key head)
            return Err(bad("num_v_heads", format!("{v_heads} must be a positive multiple of num_heads = {heads}")));
        }
        let e = self.expand_v;
        if !(e.is_finite() && e > 0.0) {
            return Err(bad("expand_v", format!("must be a positive number, found {e}")));
        }
        // fla: `head_v_dim = int(head_dim * expand_v)`, raising unless it is close to an integer
        let x = head_k as f64 * e;
        let head_v = x as usize; // python int() truncates toward zero
        if head_v == 0 || (head_v as f64 - x).abs() > 1e-5 * x.abs() {
            return Err(bad(
                "expand_v",
                format!("head_dim {head_k} * expand_v {} = {} must be a positive integer (fla raises)", num(e), num(x)),
            ));
        }
        too_big("expand_v", head_v)?;
        let key_dim = heads.checked_mul(head_k).filter(|&v| v <= crate::limits::MAX_DIM);
        let value_dim = v_heads.checked_mul(head_v).filter(|&v| v <= crate::limits::MAX_DIM);
        let (Some(key_dim), Some(value_dim)) = (key_dim, value_dim) else {
            return Err(bad(
                "head_dim",
                format!(
                    "num_heads {heads} x head_dim {head_k} or num_v_heads {v_heads} x head_v {head_v} is above the limit of {}",
                    crate::limits::MAX_DIM
                ),
            ));
        };
        let act = match self.output_gate_activation.as_str() {
            "swish" | "silu" => GateAct::Swish,
            "sigmoid" => GateAct::Sigmoid,
            a => return Err(bad("output_gate_activation", format!("{a:?} is not one of \"swish\", \"silu\", \"sigmoid\" (fla raises)"))),
        };
        if self.use_short_conv && self.conv_size == 0 {
            return Err(bad("conv_size", "must be > 0"));
        }
        let m = DeltaDims {
            heads,
            v_heads,
            head_k,
            head_v,
            key_dim,
            value_dim,
            conv: if self.use_short_conv { self.conv_size } else { 0 },
            qk_act: FeatureMap::Silu,
            qk_norm: QkNorm::L2,
            use_beta: true,
            allow_neg_eigval: self.allow_neg_eigval,
            decay: true,
            output_gate: self.use_gate.then_some(act),
        };
        lm.dims(MixerDims::Delta(m))
    }
}

/// A language model config of any family built here, as `config.json`'s `model_type` picks
/// it: what a model directory, `gla train --config` and `gla generate --config` read.
///
/// ```
/// use gla_model::config::ModelConfig;
/// let c = ModelConfig::from_json(r#"{"model_type": "gated_deltanet", "hidden_size": 64, "head_dim": 16, "num_heads": 4}"#).unwrap();
/// assert_eq!(c.model_type(), "gated_deltanet");
/// assert!(matches!(ModelConfig::from_json(r#"{"model_type": "mamba2"}"#), Err(gla_model::Error::Unsupported { .. })));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// `"gla"`: fla's `GLAForCausalLM`.
    Gla(GlaConfig),
    /// `"delta_net"`: fla's `DeltaNetForCausalLM`.
    DeltaNet(DeltaNetConfig),
    /// `"gated_deltanet"`: fla's `GatedDeltaNetForCausalLM`.
    GatedDeltaNet(GatedDeltaNetConfig),
}

impl From<GlaConfig> for ModelConfig {
    fn from(c: GlaConfig) -> Self {
        Self::Gla(c)
    }
}
impl From<DeltaNetConfig> for ModelConfig {
    fn from(c: DeltaNetConfig) -> Self {
        Self::DeltaNet(c)
    }
}
impl From<GatedDeltaNetConfig> for ModelConfig {
    fn from(c: GatedDeltaNetConfig) -> Self {
        Self::GatedDeltaNet(c)
    }
}

impl ModelConfig {
    /// The `model_type`s built, in the order `gla train --arch` lists them.
    pub const MODEL_TYPES: &'static [&'static str] = &["gla", "delta_net", "gated_deltanet"];

    /// Parses `config.json` text, choosing the family by its `model_type` (absent: `"gla"`, as
    /// [`GlaConfig::from_json`] reads it).
    ///
    /// # Errors
    /// [`Error::Json`] when it does not parse or a key has the wrong type;
    /// [`Error::Unsupported`] for a `model_type` not built here, naming those that are.
    pub fn from_json(text: &str) -> Result<Self> {
        let json = |source| Error::Json { what: "config.json".into(), source };
        let v: serde_json::Value = serde_json::from_str(text).map_err(json)?;
        let kind = match v.get("model_type") {
            None | Some(serde_json::Value::Null) => "gla".to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            // a wrong type is the family's own parse error
            Some(_) => "gla".to_string(),
        };
        match kind.as_str() {
            "gla" => Ok(Self::Gla(serde_json::from_value(v).map_err(json)?)),
            "delta_net" => Ok(Self::DeltaNet(serde_json::from_value(v).map_err(json)?)),
            "gated_deltanet" => Ok(Self::GatedDeltaNet(serde_json::from_value(v).map_err(json)?)),
            other => Err(unsupported(
                "model_type",
                format!(
                    "found {other:?}; this build runs {} models (fla's other families are not built yet): use a checkpoint \
                     of one of those, or train one with `gla train --arch <model_type>`",
                    Self::MODEL_TYPES.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    /// The config as `config.json` text (fla's keys, `architectures`, `"dtype": "float32"`).
    pub fn to_json(&self) -> String {
        match self {
            Self::Gla(c) => c.to_json(),
            Self::DeltaNet(c) => c.to_json(),
            Self::GatedDeltaNet(c) => c.to_json(),
        }
    }

    /// Validates the config and derives the dims.
    ///
    /// # Errors
    /// The family's (e.g. [`GlaConfig::dims`]).
    pub fn dims(&self) -> Result<Dims> {
        match self {
            Self::Gla(c) => c.dims(),
            Self::DeltaNet(c) => c.dims(),
            Self::GatedDeltaNet(c) => c.dims(),
        }
    }

    /// fla's `model_type`.
    pub fn model_type(&self) -> &str {
        match self {
            Self::Gla(c) => &c.model_type,
            Self::DeltaNet(c) => &c.model_type,
            Self::GatedDeltaNet(c) => &c.model_type,
        }
    }

    /// The GLA config, when this is one.
    pub fn gla(&self) -> Option<&GlaConfig> {
        match self {
            Self::Gla(c) => Some(c),
            _ => None,
        }
    }

    /// `eos_token_id` (a number, a list of numbers, or null).
    pub fn eos_token_id(&self) -> Option<&serde_json::Value> {
        match self {
            Self::Gla(c) => c.eos_token_id.as_ref(),
            Self::DeltaNet(c) => c.eos_token_id.as_ref(),
            Self::GatedDeltaNet(c) => c.eos_token_id.as_ref(),
        }
    }

    /// `max_position_embeddings` (informational: these models have no positional embedding).
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            Self::Gla(c) => c.max_position_embeddings,
            Self::DeltaNet(c) => c.max_position_embeddings,
            Self::GatedDeltaNet(c) => c.max_position_embeddings,
        }
    }

    /// The keys this crate does not know (kept and written back).
    pub fn extra(&self) -> &BTreeMap<String, serde_json::Value> {
        match self {
            Self::Gla(c) => &c.extra,
            Self::DeltaNet(c) => &c.extra,
            Self::GatedDeltaNet(c) => &c.extra,
        }
    }

    /// [`ModelConfig::extra`], mutable.
    pub fn extra_mut(&mut self) -> &mut BTreeMap<String, serde_json::Value> {
        match self {
            Self::Gla(c) => &mut c.extra,
            Self::DeltaNet(c) => &mut c.extra,
            Self::GatedDeltaNet(c) => &mut c.extra,
        }
    }
}

/// The value of fla's `attn` key as fla writes it back (`parse_attention_config`: each spec with
/// its defaults filled, unknown keys kept; one spec stays a dict, a list stays a list); `attn`
/// unchanged when it is not a valid spec (its `dims` reports why).
fn normalized_attn(attn: &Option<serde_json::Value>, layers: usize) -> Option<serde_json::Value> {
    use serde_json::Value;
    let fill = |v: &Value| -> Option<Value> {
        let mut m = v.as_object()?.clone();
        if m.get("num_kv_heads").is_none_or(Value::is_null) {
            m.insert("num_kv_heads".into(), m.get("num_heads")?.clone());
        }
        m.entry("qkv_bias").or_insert(Value::Bool(false));
        m.entry("window_size").or_insert(Value::Null);
        m.entry("rope_theta").or_insert(serde_json::json!(10000.0));
        Some(Value::Object(m))
    };
    let a = attn.as_ref()?;
    // only specs that parse are rewritten (hidden size 0: its checks are skipped here)
    if attn_specs(attn, layers, 0).is_err() {
        return attn.clone();
    }
    match a {
        Value::Null => None,
        Value::Object(_) => Some(fill(a).unwrap_or_else(|| a.clone())),
        Value::Array(xs) => Some(Value::Array(xs.iter().map(|x| fill(x).unwrap_or_else(|| x.clone())).collect())),
        _ => attn.clone(),
    }
}

/// fla's `attn` key (fla/models/configuration_utils.py `parse_attention_config`, 0.6.0) checked
/// with fla's rules for a model of `layers` layers and hidden size `hidden`: null (no attention
/// layer), one spec (a dict) or a list of specs, each with `layers` (required: layer indices in
/// `[0, layers)`, none listed twice, in one spec or across specs), `num_heads` (required, > 0),
/// `num_kv_heads` (null or absent: `num_heads`; > 0), `qkv_bias` (a boolean, default false),
/// `window_size` (null or > 0, default null), `rope_theta` (positive and finite, default 10000).
/// fla's layer needs `hidden % num_heads == 0` (`head_dim = hidden // num_heads`, which the
/// reshape of q needs whole), an even head dim (its RoPE asserts) and `num_heads % num_kv_heads
/// == 0` (its assert). Other keys are kept and ignored, as fla does, but `qk_norm = true`:
/// fla 0.6.0's `get_attention` never passes it to the layer (its models never have
/// `q_norm`/`k_norm`), so it is refused rather than silently meaning nothing. Returns, per spec,
/// its layers and the layer dims.
///
/// # Errors
/// [`Error::BadConfig`] (key `attn`) for what fla rejects; [`Error::Unsupported`] for `qk_norm`.
pub fn attn_specs(attn: &Option<serde_json::Value>, layers: usize, hidden: usize) -> Result<Vec<(Vec<usize>, AttnDims)>> {
    use serde_json::Value;
    let specs: Vec<&Value> = match attn {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(_)) => vec![attn.as_ref().unwrap_or(&Value::Null)],
        Some(Value::Array(xs)) => xs.iter().collect(),
        Some(other) => {
            return Err(bad("attn", format!("must be null, a dictionary or a list of dictionaries (fla raises), found {other}")))
        }
    };
    let mut out = Vec::with_capacity(specs.len());
    let mut assigned: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let ctx = if matches!(attn, Some(Value::Array(_))) { format!("spec {i}") } else { "spec".to_string() };
        let m = spec.as_object().ok_or_else(|| bad("attn", format!("{ctx} must be a dictionary, found {spec}")))?;
        let positive = |key: &str, v: Option<&Value>| -> Result<usize> {
            match v.and_then(Value::as_u64) {
                Some(x) if x > 0 && !v.is_some_and(Value::is_boolean) => {
                    let x = usize::try_from(x).unwrap_or(usize::MAX);
                    too_big("attn", x)?;
                    Ok(x)
                }
                _ => Err(bad("attn", format!("{ctx} field {key:?} must be a positive integer, found {}", v.unwrap_or(&Value::Null)))),
            }
        };
        let list = m.get("layers").ok_or_else(|| bad("attn", format!("{ctx} field \"layers\" is required")))?;
        let list =
            list.as_array().ok_or_else(|| bad("attn", format!("{ctx} field \"layers\" must be a list of layer indices, found {list}")))?;
        let mut ls = Vec::with_capacity(list.len());
        for x in list {
            let l = x.as_u64().filter(|&l| (l as u128) < layers as u128).ok_or_else(|| {
                bad("attn", format!("{ctx} field \"layers\" holds {x}, not a layer index in [0, {layers}) (num_hidden_layers)"))
            })? as usize;
            if let Some(prev) = assigned.insert(l, i) {
                let why = if prev == i { "twice".to_string() } else { format!("already assigned by spec {prev}") };
                return Err(bad("attn", format!("{ctx} lists layer {l} {why} (fla raises)")));
            }
            ls.push(l);
        }
        if !m.contains_key("num_heads") {
            return Err(bad("attn", format!("{ctx} field \"num_heads\" is required")));
        }
        let heads = positive("num_heads", m.get("num_heads"))?;
        let kv_heads = match m.get("num_kv_heads") {
            None | Some(Value::Null) => heads,
            v => positive("num_kv_heads", v)?,
        };
        let qkv_bias = match m.get("qkv_bias") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(bad("attn", format!("{ctx} field \"qkv_bias\" must be a boolean, found {v}"))),
        };
        let window = match m.get("window_size") {
            None | Some(Value::Null) => None,
            v => Some(positive("window_size", v)?),
        };
        let rope_theta = match m.get("rope_theta") {
            None => 10000.0,
            Some(Value::Number(x)) => x
                .as_f64()
                .filter(|t| t.is_finite() && *t > 0.0)
                .ok_or_else(|| bad("attn", format!("{ctx} field \"rope_theta\" must be positive and finite, found {x}")))?,
            Some(v) => return Err(bad("attn", format!("{ctx} field \"rope_theta\" must be positive and finite, found {v}"))),
        };
        match m.get("qk_norm") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(v) => {
                return Err(unsupported(
                    "attn qk_norm",
                    format!(
                        "{ctx} sets qk_norm = {v}: fla 0.6.0's get_attention never passes qk_norm to its Attention layer \
                         (its hybrid models have no q_norm/k_norm), so it is not built here"
                    ),
                ))
            }
        }
        if !heads.is_multiple_of(kv_heads) {
            return Err(bad("attn", format!("{ctx}: num_heads {heads} must be a multiple of num_kv_heads {kv_heads} (fla asserts)")));
        }
        if hidden > 0 {
            if !hidden.is_multiple_of(heads) {
                return Err(bad(
                    "attn",
                    format!("{ctx}: hidden_size {hidden} must be a multiple of num_heads {heads} (head_dim = hidden_size / num_heads)"),
                ));
            }
            if !(hidden / heads).is_multiple_of(2) {
                return Err(bad(
                    "attn",
                    format!("{ctx}: head_dim = hidden_size {hidden} / num_heads {heads} must be even (RoPE rotates pairs; fla asserts)"),
                ));
            }
        }
        let head_dim = if hidden > 0 { hidden / heads } else { 2 };
        out.push((ls, AttnDims { heads, kv_heads, head_dim, qkv_bias, window, rope_theta }));
    }
    Ok(out)
}

/// One line describing a model's token mixers for logs, e.g. `GLA H=4 (K=64, V=128, short conv
/// on)` or `Gated DeltaNet H=2 HV=4 (K=64, V=128, short conv on)` (every layer's, when they
/// differ).
pub fn describe_mixers(dims: &Dims) -> String {
    let one = |m: &MixerDims| match m {
        MixerDims::Gla(g) => {
            let conv = if g.conv > 0 { "on" } else { "off" };
            format!("GLA H={} (K={}, V={}, short conv {conv})", g.heads, g.head_k, g.head_v)
        }
        MixerDims::Delta(g) => {
            let name = if g.decay { "Gated DeltaNet" } else { "DeltaNet" };
            let hv = if g.v_heads != g.heads { format!(" HV={}", g.v_heads) } else { String::new() };
            let conv = if g.conv > 0 { "on" } else { "off" };
            format!("{name} H={}{hv} (K={}, V={}, short conv {conv})", g.heads, g.head_k, g.head_v)
        }
        MixerDims::Attn(a) => {
            let kv = if a.kv_heads != a.heads { format!(" H_KV={}", a.kv_heads) } else { String::new() };
            let w = a.window.map_or(String::new(), |w| format!(", window {w}"));
            format!("attention H={}{kv} (Dh={}{w}, RoPE theta {})", a.heads, a.head_dim, num(a.rope_theta))
        }
    };
    match dims.mixers.first() {
        Some(first) if dims.mixers.iter().all(|m| m == first) => one(first),
        _ => dims.mixers.iter().map(one).collect::<Vec<_>>().join(", "),
    }
}
