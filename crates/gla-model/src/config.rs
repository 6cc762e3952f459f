//! fla's `GLAConfig` (`model_type = "gla"`) as JSON, and the dims the model derives from it.
//!
//! Every key of fla's config is accepted with fla's default. Keys fla itself ignores (`use_gk`,
//! `use_gv`, `max_position_embeddings`, `use_cache`, the `fuse_*` kernel switches, which do not
//! change the math) are kept and written back unchanged. Features this crate does not build yet
//! (hybrid softmax-attention layers `attn`, a `feature_map` outside [`FeatureMap::NAMES`], `use_l2warp`, Attention-Residuals,
//! `elementwise_affine = false`, `attn_mode = "fused_chunk"`) are refused by [`GlaConfig::dims`]
//! with [`Error::Unsupported`], never silently ignored. Unknown keys (Hugging Face adds
//! `architectures`, `transformers_version`, ...) are kept in [`GlaConfig::extra`].
//!
//! ```
//! use gla_model::GlaConfig;
//! let c = GlaConfig::from_json(r#"{"hidden_size": 1024, "num_hidden_layers": 24, "tie_word_embeddings": true}"#).unwrap();
//! let d = c.dims().unwrap();
//! assert_eq!((d.key_dim, d.value_dim, d.intermediate), (512, 1024, 2816));
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use gla_core::dims::{Dims, FeatureMap};

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
    /// Hybrid softmax-attention layers. Default null; non-null is refused for now.
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
        c.extra.entry("architectures".into()).or_insert_with(|| serde_json::json!(["GLAForCausalLM"]));
        // The dtype keys must describe the weights written now, not the checkpoint this config
        // was read from: transformers 5 (`from_pretrained`'s default `dtype="auto"`, which fla
        // 0.6.0 requires: transformers >= 5.6.2) loads the weights in `config.dtype`, so a
        // `"dtype": "bfloat16"` kept from a bf16 fla checkpoint would load our f32 weights as
        // bf16. Hugging Face's own `save_pretrained` also overwrites it with the model's dtype.
        c.extra.insert("dtype".into(), WEIGHTS_TORCH_DTYPE.into());
        // `torch_dtype` is dropped, not rewritten: transformers 5 reads it only when `dtype` is
        // absent and never writes it (fla 0.6.0's own config.json holds `dtype` alone, see
        // tests/fixtures/fla). transformers 4 reads only `torch_dtype`; finding none, its
        // `torch_dtype="auto"` takes the dtype of the first floating-point weight (f32 here) and
        // its default loads f32 anyway. So leaving it out is right for both, while a stale copy
        // (`"torch_dtype": "bfloat16"` from an older checkpoint) would mislead transformers 4.
        c.extra.remove("torch_dtype");
        serde_json::to_string_pretty(&c).unwrap_or_default()
    }

    /// A small config for tests and demos: fla's defaults except the listed dims.
    pub fn tiny(d: usize, layers: usize, heads: usize, vocab: usize) -> Self {
        Self { hidden_size: d, num_hidden_layers: layers, num_heads: heads, vocab_size: vocab, ..Self::default() }
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
        if let Some(a) = &self.attn {
            if !a.is_null() {
                return Err(unsupported("attn (hybrid softmax-attention layers)", format!("found {a}; only pure GLA models are built")));
            }
        }
        let feature_map = match &self.feature_map {
            None => None,
            Some(f) => Some(FeatureMap::from_name(f).ok_or_else(|| {
                let names: Vec<&str> = FeatureMap::NAMES.iter().map(|(n, _)| *n).collect();
                unsupported("feature_map", format!("found {f:?}; built: null or one of {}", names.join(", ")))
            })?),
        };
        if self.use_l2warp {
            return Err(unsupported("use_l2warp", "found true; only false"));
        }
        if let Some(b) = self.attnres_block_size {
            return Err(unsupported("attnres_block_size (Attention-Residuals)", format!("found {b}; only null")));
        }
        if !self.elementwise_affine {
            return Err(unsupported("elementwise_affine", "found false; only true"));
        }
        match self.attn_mode.as_str() {
            "chunk" | "fused_recurrent" => {}
            "fused_chunk" => return Err(unsupported("attn_mode", "\"fused_chunk\" is deprecated in fla too; use \"chunk\"")),
            m => return Err(bad("attn_mode", format!("{m:?} is not one of \"chunk\", \"fused_recurrent\""))),
        }
        let act = self.hidden_act.as_str();
        if act != "swish" && act != "silu" {
            return Err(unsupported("hidden_act", format!("found {act:?}; only \"swish\" / \"silu\" (SwiGLU)")));
        }
        if self.fuse_cross_entropy && self.fuse_linear_cross_entropy {
            return Err(bad("fuse_linear_cross_entropy", "cannot be true together with fuse_cross_entropy (fla raises too)"));
        }
        let d = self.hidden_size;
        let heads = self.num_heads;
        for (key, v) in
            [("hidden_size", d), ("num_heads", heads), ("num_hidden_layers", self.num_hidden_layers), ("vocab_size", self.vocab_size)]
        {
            if v == 0 {
                return Err(bad(key, "must be > 0"));
            }
        }
        for (key, v) in [
            ("hidden_size", d),
            ("num_heads", heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("vocab_size", self.vocab_size),
            ("num_kv_heads", self.num_kv_heads.unwrap_or(0)),
            ("intermediate_size", self.intermediate_size.unwrap_or(0)),
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
        if self.use_short_conv && self.conv_size == 0 {
            return Err(bad("conv_size", "must be > 0"));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(bad("norm_eps", format!("must be positive, found {}", self.norm_eps)));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return Err(bad("initializer_range", format!("must be >= 0, found {}", self.initializer_range)));
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
        let pad = match self.pad_token_id {
            None => None,
            Some(p) if p >= 0 && (p as u64) < self.vocab_size as u64 => Some(p as usize),
            Some(p) => return Err(bad("pad_token_id", format!("{p} is outside [0, vocab_size = {})", self.vocab_size))),
        };
        let gnorm_name = if act == "swish" && self.fuse_norm && self.use_output_gate { "g_norm_swish_gate" } else { "g_norm" };
        let dims = Dims {
            d,
            layers: self.num_hidden_layers,
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
            intermediate,
            vocab: self.vocab_size,
            eps: self.norm_eps as f32,
            conv: if self.use_short_conv { self.conv_size } else { 0 },
            output_gate: self.use_output_gate,
            gnorm_name,
            clamp_min: self.clamp_min.map(|c| c as f32),
            feature_map,
            tied: self.tie_word_embeddings,
            pad,
            init_std: self.initializer_range as f32,
        };
        if crate::limits::param_count(&dims).is_none() {
            return Err(bad(
                "num_hidden_layers",
                format!("{} layers of hidden_size {d}: the parameter count overflows 64 bits", dims.layers),
            ));
        }
        Ok(dims)
    }
}
