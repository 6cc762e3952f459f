//! hustvl's plain ViG config: the keyword arguments of `ViG.__init__`
//! (hustvl/ViG classification/models/vig.py, filled from classification/config.py and the
//! configs/vig/vig-{t,s,b}.yaml files by models/__init__.py), with GLAConfig's
//! `rms_norm_eps` and `intermediate_size`, and the dims derived from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// hustvl's `ViG` keyword arguments. Defaults: ViG-T's yaml over config.py's defaults
/// ([`VigConfig::vig_t`]); [`VigConfig::vig_s`] and [`VigConfig::vig_b`] are the other sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VigConfig {
    /// Always `"vig"` (hustvl's `MODEL.TYPE`).
    pub model_type: String,
    /// Training image side (the position embedding's grid is `img_size / patch_size`). 224.
    pub img_size: usize,
    /// Patch side: the stem is conv(k = patch/2 + 1, stride patch/2, pad 1) then conv(k 3,
    /// stride 2, pad 1), so a token covers `patch_size` pixels. 16.
    pub patch_size: usize,
    /// hustvl's grid stride, used only to size the position embedding
    /// (`((img - patch) / stride + 1)^2` rows), which must equal the grid `(img / patch)^2`. 16.
    pub stride: usize,
    /// Blocks. 12.
    pub depth: usize,
    /// Heads. 3 (ViG-T).
    pub num_heads: usize,
    /// Model dim D. 192 (ViG-T).
    pub embed_dim: usize,
    /// Image channels. 3.
    pub channels: usize,
    /// Classes. 1000.
    pub num_classes: usize,
    /// A class token: false (true is refused).
    pub if_cls_token: bool,
    /// Middle class token: false (true is refused).
    pub use_middle_cls_token: bool,
    /// "avgpool" (others refused).
    pub classification_mode: String,
    /// The absolute position embedding `pos_embed [1, grid, D]`. true.
    pub if_abs_pos_embed: bool,
    /// Row/column position embeddings: false (true refused).
    pub if_rc_pe: bool,
    /// Dropout after the position embedding: 0 (others refused).
    pub drop_rate: f64,
    /// The scan kernel: "fused_chunk" ("chunk", "fused_recurrent" are the same function).
    pub attn_model: String,
    /// Activation of the MLP and the output activation: "swish" (or "silu").
    pub hidden_act: String,
    /// swish on the gated output before o_proj (ViG-T: true; S, B: false).
    pub use_out_act: bool,
    /// Stored by hustvl and unused by its layer (the locality gate is the only gate). false.
    pub use_out_gate: bool,
    /// false (true refused).
    pub use_lower_bound: bool,
    /// false (true refused).
    pub use_msg: bool,
    /// The SwiGLU MLP (`GLAMLP`): true (false refused).
    pub use_swiglu: bool,
    /// SiLU after the 3x3 depthwise conv (ViG-T: true; S, B: false).
    pub use_act_in_conv: bool,
    /// "none" (rotary modes refused).
    pub rope_mode: String,
    /// Stochastic depth: in training only, block `l` of `L` drops each residual branch per image
    /// with probability `rate * l / (L - 1)` (hustvl's rule; ViG-T 0, S 0.2, B 0.5).
    pub drop_path_rate: f64,
    /// key_dim = int(D * expand_k). 0.5.
    pub expand_k: f64,
    /// value_dim = int(D * expand_v): 1.0 (hustvl's l_norm needs value_dim = D).
    pub expand_v: f64,
    /// false (true refused).
    pub use_dirpe: bool,
    /// "default" (others refused).
    pub scan_mode: String,
    /// "v2" (the v1 single-conv embedding is refused).
    pub patch_embed_version: String,
    /// Biases in the stem's convolutions. true.
    pub use_bias_in_patch: bool,
    /// SiLU after the stem's second LayerNorm. false.
    pub use_act_in_patch: bool,
    /// Layer scale: null (a value is refused).
    pub init_values: Option<f64>,
    /// A bias in the depthwise conv: false (true refused).
    pub use_bias_in_dwconv: bool,
    /// GLAConfig's RMSNorm epsilon (every RMSNorm of the model). 1e-6.
    pub rms_norm_eps: f64,
    /// GLAConfig's MLP width I; null: `256 * ceil(int(8 D / 3) / 256)` (GLAMLP).
    pub intermediate_size: Option<usize>,
    /// Keys this crate does not read, kept.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for VigConfig {
    fn default() -> Self {
        Self::vig_t()
    }
}

/// The derived dims of a ViG.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VigDims {
    /// Model dim D.
    pub d: usize,
    /// Blocks L.
    pub depth: usize,
    /// Heads H.
    pub heads: usize,
    /// key_dim (all heads), the width of q, k and of each direction's gate.
    pub key_dim: usize,
    /// value_dim (all heads) = D.
    pub value_dim: usize,
    /// Per-head key dim K.
    pub head_k: usize,
    /// Per-head value dim V.
    pub head_v: usize,
    /// MLP width I.
    pub inter: usize,
    /// Rank of the gate projection (hustvl's layer default 16).
    pub gate_rank: usize,
    /// `log alpha = logsigmoid(x) / gate_norm` (hustvl's layer default 16).
    pub gate_norm: f32,
    /// Channels, classes.
    pub channels: usize,
    /// Classes.
    pub classes: usize,
    /// The position embedding's grid (img_size / patch_size on both axes).
    pub grid: (usize, usize),
    /// The stem's first conv: kernel, stride (padding 1).
    pub stem: (usize, usize),
    /// SiLU after the depthwise conv.
    pub act_in_conv: bool,
    /// swish before o_proj.
    pub out_act: bool,
    /// Biases in the stem convs.
    pub bias_in_patch: bool,
    /// SiLU after the stem's second norm.
    pub act_in_patch: bool,
    /// A position embedding.
    pub pos_embed: bool,
    /// RMSNorm eps.
    pub rms_eps: f32,
}

/// LayerNorm2d's eps (`nn.LayerNorm`'s default, which hustvl's stem keeps).
pub const LAYERNORM_EPS: f32 = 1e-5;

fn unsupported(feature: &'static str, detail: String) -> Error {
    Error::Unsupported { feature, detail }
}

fn bad(key: &'static str, reason: String) -> Error {
    Error::BadConfig { key, reason }
}

impl VigConfig {
    /// ViG-T (configs/vig/vig-t.yaml): D 192, 3 heads, out act, SiLU in the conv. 5.8 M
    /// parameters.
    pub fn vig_t() -> Self {
        Self {
            model_type: "vig".into(),
            img_size: 224,
            patch_size: 16,
            stride: 16,
            depth: 12,
            num_heads: 3,
            embed_dim: 192,
            channels: 3,
            num_classes: 1000,
            if_cls_token: false,
            use_middle_cls_token: false,
            classification_mode: "avgpool".into(),
            if_abs_pos_embed: true,
            if_rc_pe: false,
            drop_rate: 0.0,
            attn_model: "fused_chunk".into(),
            hidden_act: "swish".into(),
            use_out_act: true,
            use_out_gate: false,
            use_lower_bound: false,
            use_msg: false,
            use_swiglu: true,
            use_act_in_conv: true,
            rope_mode: "none".into(),
            drop_path_rate: 0.0,
            expand_k: 0.5,
            expand_v: 1.0,
            use_dirpe: false,
            scan_mode: "default".into(),
            patch_embed_version: "v2".into(),
            use_bias_in_patch: true,
            use_act_in_patch: false,
            init_values: None,
            use_bias_in_dwconv: false,
            rms_norm_eps: 1e-6,
            intermediate_size: None,
            extra: BTreeMap::new(),
        }
    }

    /// ViG-S (vig-s.yaml): D 384, 6 heads, no out act, no act in the conv, drop path 0.2.
    /// 22.6 M parameters.
    pub fn vig_s() -> Self {
        Self { embed_dim: 384, num_heads: 6, use_out_act: false, use_act_in_conv: false, drop_path_rate: 0.2, ..Self::vig_t() }
    }

    /// ViG-B (vig-b.yaml): D 768, 12 heads, no out act, no act in the conv, drop path 0.5.
    /// 89.0 M parameters.
    pub fn vig_b() -> Self {
        Self { embed_dim: 768, num_heads: 12, use_out_act: false, use_act_in_conv: false, drop_path_rate: 0.5, ..Self::vig_t() }
    }

    /// The preset of a name: "vig-t", "vig-s", "vig-b" (or with `_`).
    pub fn preset(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().replace('_', "-").as_str() {
            "vig-t" | "vig-tiny" => Some(Self::vig_t()),
            "vig-s" | "vig-small" => Some(Self::vig_s()),
            "vig-b" | "vig-base" => Some(Self::vig_b()),
            _ => None,
        }
    }

    /// Parses a config.json (hustvl's keyword names).
    ///
    /// # Errors
    /// [`Error::Json`] for invalid JSON; those of [`VigConfig::dims`].
    pub fn from_json(text: &str) -> Result<Self> {
        let c: Self = serde_json::from_str(text).map_err(|source| Error::Json { what: "vig config".into(), source })?;
        c.dims()?;
        Ok(c)
    }

    /// The JSON form (every key).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The MLP width I: `intermediate_size`, or GLAMLP's `256 * ceil(int(8 D / 3) / 256)`.
    pub fn intermediate(&self) -> usize {
        self.intermediate_size.unwrap_or_else(|| {
            let i = self.embed_dim * 8 / 3;
            i.div_ceil(256) * 256
        })
    }

    /// The derived dims.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for hustvl flags this crate does not build (class tokens, rotary
    /// modes, v1 patch embedding, ...); [`Error::BadConfig`] for inconsistent sizes.
    pub fn dims(&self) -> Result<VigDims> {
        if self.model_type != "vig" {
            return Err(bad("model_type", format!("{:?}, expected \"vig\"", self.model_type)));
        }
        let flags: [(&'static str, bool); 10] = [
            ("if_cls_token", self.if_cls_token),
            ("use_middle_cls_token", self.use_middle_cls_token),
            ("if_rc_pe", self.if_rc_pe),
            ("use_lower_bound", self.use_lower_bound),
            ("use_msg", self.use_msg),
            ("use_dirpe", self.use_dirpe),
            ("use_bias_in_dwconv", self.use_bias_in_dwconv),
            ("use_swiglu = false", !self.use_swiglu),
            ("init_values", self.init_values.is_some()),
            ("drop_rate", self.drop_rate != 0.0),
        ];
        if let Some((name, _)) = flags.iter().find(|f| f.1) {
            return Err(unsupported("vig option", format!("`{name}` is not built (hustvl's plain ViG-T/S/B leave it off)")));
        }
        let strs: [(&'static str, &str, &[&str]); 6] = [
            ("classification_mode", &self.classification_mode, &["avgpool"]),
            ("rope_mode", &self.rope_mode, &["none"]),
            ("scan_mode", &self.scan_mode, &["default"]),
            ("patch_embed_version", &self.patch_embed_version, &["v2"]),
            ("hidden_act", &self.hidden_act, &["swish", "silu"]),
            ("attn_model", &self.attn_model, &["fused_chunk", "chunk", "fused_recurrent"]),
        ];
        if let Some((name, v, ok)) = strs.iter().find(|(_, v, ok)| !ok.contains(v)) {
            return Err(unsupported("vig option", format!("`{name}` = {v:?}; built: {ok:?}")));
        }
        if self.expand_v != 1.0 {
            return Err(unsupported(
                "vig option",
                format!("expand_v = {} (hustvl's l_norm needs value_dim = embed_dim: 1.0)", self.expand_v),
            ));
        }
        let (d, h) = (self.embed_dim, self.num_heads);
        if d < 2 || h == 0 || self.depth == 0 || self.num_classes == 0 || self.channels == 0 {
            return Err(bad(
                "embed_dim",
                format!(
                    "embed_dim {d}, num_heads {h}, depth {}, num_classes {}, channels {} must be positive (embed_dim >= 2)",
                    self.depth, self.num_classes, self.channels
                ),
            ));
        }
        let key_dim = (d as f64 * self.expand_k) as usize;
        if key_dim == 0 || !key_dim.is_multiple_of(h) || !d.is_multiple_of(h) {
            return Err(bad("num_heads", format!("key_dim {key_dim} and value_dim {d} must be positive multiples of num_heads {h}")));
        }
        let p = self.patch_size;
        if p < 2 || !p.is_multiple_of(2) || self.img_size < p {
            return Err(bad("patch_size", format!("{p} must be even, >= 2 and at most img_size {}", self.img_size)));
        }
        let grid = self.img_size / p;
        let rows = (self.img_size - p).checked_div(self.stride).map(|r| r + 1);
        if rows != Some(grid) {
            return Err(bad("stride", format!("hustvl sizes pos_embed by ((img_size - patch_size) / stride + 1) = {rows:?} per side and resizes it from img_size / patch_size = {grid}: they must agree (stride = patch_size)")));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(bad("rms_norm_eps", format!("{} must be positive", self.rms_norm_eps)));
        }
        let inter = self.intermediate();
        if inter == 0 {
            return Err(bad("intermediate_size", "must be positive".into()));
        }
        Ok(VigDims {
            d,
            depth: self.depth,
            heads: h,
            key_dim,
            value_dim: d,
            head_k: key_dim / h,
            head_v: d / h,
            inter,
            gate_rank: 16,
            gate_norm: 16.0,
            channels: self.channels,
            classes: self.num_classes,
            grid: (grid, grid),
            stem: (p / 2 + 1, p / 2),
            act_in_conv: self.use_act_in_conv,
            out_act: self.use_out_act,
            bias_in_patch: self.use_bias_in_patch,
            act_in_patch: self.use_act_in_patch,
            pos_embed: self.if_abs_pos_embed,
            rms_eps: self.rms_norm_eps as f32,
        })
    }
}
