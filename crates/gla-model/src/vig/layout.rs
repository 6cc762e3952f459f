//! The ViG's parameter table: hustvl's `state_dict` names, shapes and order (the arena order,
//! and the checkpoint names of hustvl's published `.pth` files), with hustvl's init.

use super::config::VigDims;
use crate::layout::init_table;
use crate::params::{Init, ParamId, ParamSpec, Table};

/// One block's tensors (`blocks.{i}.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockIds {
    /// `attn_norm.weight [D]`
    pub attn_norm: ParamId,
    /// `attn.in_proj.0.weight [D, 1, 3, 3]`: the 3x3 depthwise conv.
    pub dwconv: ParamId,
    /// `attn.qkv_proj.weight [2 key_dim + value_dim, D]`
    pub qkv: ParamId,
    /// `attn.gk_proj.0.weight [16, D]`
    pub gk0: ParamId,
    /// `attn.gk_proj.1.weight [2 key_dim, 16]`: forward half, then backward half.
    pub gk1: ParamId,
    /// `attn.gk_proj.1.bias [2 key_dim]`
    pub gk1_bias: ParamId,
    /// `attn.o_proj.weight [D, value_dim]`
    pub o_proj: ParamId,
    /// `attn.g_norm.weight [V]`: the scan output's per-head RMSNorm.
    pub g_norm: ParamId,
    /// `attn.l_norm.weight [V]`: the conv branch's per-head RMSNorm.
    pub l_norm: ParamId,
    /// `attn.g_proj.weight [value_dim, D]`: the 2D locality gate.
    pub g_proj: ParamId,
    /// `attn.g_proj.bias [value_dim]`
    pub g_proj_bias: ParamId,
    /// `mlp_norm.weight [D]`
    pub mlp_norm: ParamId,
    /// `mlp.gate_proj.weight [2I, D]`: gate rows, then up rows.
    pub gate_proj: ParamId,
    /// `mlp.down_proj.weight [D, I]`
    pub down_proj: ParamId,
}

/// The table and the index of every tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct VigLayout {
    /// All tensors in arena order (hustvl's `state_dict` order).
    pub specs: Vec<ParamSpec>,
    /// `pos_embed [1, grid, D]` (absent without `if_abs_pos_embed`).
    pub pos_embed: Option<ParamId>,
    /// `patch_embed.proj.0.{weight [D/2, C, k, k], bias}`: the stem's first conv.
    pub conv1: (ParamId, Option<ParamId>),
    /// `patch_embed.proj.1.{weight, bias} [D/2]`: LayerNorm2d.
    pub ln1: (ParamId, ParamId),
    /// `patch_embed.proj.3.{weight [D, D/2, 3, 3], bias}`: the stem's second conv.
    pub conv2: (ParamId, Option<ParamId>),
    /// `patch_embed.proj.4.{weight, bias} [D]`: LayerNorm2d.
    pub ln2: (ParamId, ParamId),
    /// `head.weight [classes, D]`, `head.bias [classes]`.
    pub head: (ParamId, ParamId),
    /// Per block.
    pub blocks: Vec<BlockIds>,
    /// `norm.weight [D]`
    pub norm: ParamId,
    /// Arena length.
    pub numel: usize,
}

/// `xavier_uniform_(gain)` of a weight `[out, in, *receptive]` as `U(-bound, bound)`.
fn xavier(shape: &[usize], gain: f64) -> Init {
    let rf: usize = shape[2..].iter().product();
    let (fan_in, fan_out) = (shape[1] * rf, shape[0] * rf);
    Init::Uniform { bound: (gain * (6.0 / (fan_in + fan_out) as f64).sqrt()) as f32 }
}

/// PyTorch's default `Conv2d` init of a weight `[out, in, k, k]` and its bias: `U(+-1/sqrt(fan_in))`.
fn conv_default(shape: &[usize]) -> Init {
    let fan_in: usize = shape[1..].iter().product();
    Init::Uniform { bound: (1.0 / (fan_in as f64).sqrt()) as f32 }
}

/// hustvl's gain of the BiGLA layer's `xavier_uniform_` (`reset_parameters`).
const GAIN: f64 = 0.176_776_695_296_636_9; // 2^-2.5

impl VigLayout {
    /// The table for these dims, in hustvl's `state_dict` order: `pos_embed`, the patch
    /// embedding, the head, the blocks, the final norm.
    pub fn new(d: &VigDims) -> Self {
        let mut t = Table::default();
        let (dm, half) = (d.d, d.d / 2);
        let pos_embed = d.pos_embed.then(|| t.add("pos_embed".into(), vec![1, d.grid.0 * d.grid.1, dm], Init::Normal));
        let conv = |t: &mut Table, name: &str, shape: Vec<usize>| {
            let init = conv_default(&shape);
            let out = shape[0];
            let w = t.add_gemm_init(format!("patch_embed.proj.{name}.weight"), shape, init);
            let b = d.bias_in_patch.then(|| t.add(format!("patch_embed.proj.{name}.bias"), vec![out], init));
            (w, b)
        };
        let conv1 = conv(&mut t, "0", vec![half, d.channels, d.stem.0, d.stem.0]);
        let ln1 = (
            t.add("patch_embed.proj.1.weight".into(), vec![half], Init::Ones),
            t.add("patch_embed.proj.1.bias".into(), vec![half], Init::Zeros),
        );
        let conv2 = conv(&mut t, "3", vec![dm, half, 3, 3]);
        let ln2 = (
            t.add("patch_embed.proj.4.weight".into(), vec![dm], Init::Ones),
            t.add("patch_embed.proj.4.bias".into(), vec![dm], Init::Zeros),
        );
        let head = (t.add_gemm("head.weight".into(), vec![d.classes, dm]), t.add("head.bias".into(), vec![d.classes], Init::Zeros));
        let blocks = (0..d.depth)
            .map(|i| {
                let p = format!("blocks.{i}.");
                let x = |t: &mut Table, name: &str, shape: Vec<usize>| {
                    let init = xavier(&shape, GAIN);
                    t.add_gemm_init(format!("{p}attn.{name}"), shape, init)
                };
                let attn_norm = t.add(format!("{p}attn_norm.weight"), vec![dm], Init::Ones);
                let dw_shape = vec![dm, 1, 3, 3];
                let dw_init = xavier(&dw_shape, GAIN);
                let dwconv = t.add(format!("{p}attn.in_proj.0.weight"), dw_shape, dw_init);
                let qkv = x(&mut t, "qkv_proj.weight", vec![2 * d.key_dim + d.value_dim, dm]);
                let gk0 = x(&mut t, "gk_proj.0.weight", vec![d.gate_rank, dm]);
                let gk1 = x(&mut t, "gk_proj.1.weight", vec![2 * d.key_dim, d.gate_rank]);
                let gk1_bias = t.add(format!("{p}attn.gk_proj.1.bias"), vec![2 * d.key_dim], Init::Zeros);
                let o_proj = x(&mut t, "o_proj.weight", vec![dm, d.value_dim]);
                let g_norm = t.add(format!("{p}attn.g_norm.weight"), vec![d.head_v], Init::Ones);
                let l_norm = t.add(format!("{p}attn.l_norm.weight"), vec![d.head_v], Init::Ones);
                let g_proj = x(&mut t, "g_proj.weight", vec![d.value_dim, dm]);
                let g_proj_bias = t.add(format!("{p}attn.g_proj.bias"), vec![d.value_dim], Init::Zeros);
                let mlp_norm = t.add(format!("{p}mlp_norm.weight"), vec![dm], Init::Ones);
                let gate_proj = t.add_gemm(format!("{p}mlp.gate_proj.weight"), vec![2 * d.inter, dm]);
                let down_proj = t.add_gemm(format!("{p}mlp.down_proj.weight"), vec![dm, d.inter]);
                BlockIds {
                    attn_norm,
                    dwconv,
                    qkv,
                    gk0,
                    gk1,
                    gk1_bias,
                    o_proj,
                    g_norm,
                    l_norm,
                    g_proj,
                    g_proj_bias,
                    mlp_norm,
                    gate_proj,
                    down_proj,
                }
            })
            .collect();
        let norm = t.add("norm.weight".into(), vec![dm], Init::Ones);
        let (specs, numel) = t.finish();
        Self { specs, pos_embed, conv1, ln1, conv2, ln2, head, blocks, norm, numel }
    }

    /// The table index of a tensor by hustvl's name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// hustvl's init: linear weights `N(0, 0.02)` and zero biases (`_init_weights`), the BiGLA
    /// layer's weights `xavier_uniform_(gain 2^-2.5)` (`reset_parameters`), PyTorch's default
    /// init of the stem's convs, `pos_embed` `N(0, 0.02)` (timm's `trunc_normal_` cuts at +-2,
    /// 100 standard deviations out), unit norms; seeded.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        init_table(&self.specs, self.numel, 0.02, seed)
    }
}
