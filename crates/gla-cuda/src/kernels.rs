//! The kernel sources, embedded at build time, by algorithm (docs/kernels.md has the tree and each
//! pass's contract). Each [`KernelSource`] is one NVRTC program: its headers (`common/*.cuh`,
//! then a family header), then the `.cu` file, each behind a `#line` directive so NVRTC names
//! the right file and line in its errors. Nothing is `#include`d and no toolkit header is used.
//!
//! Entry points are unique across the crate, so a kernel is found by its name alone
//! ([`source_of`], `Cuda::launch`).

/// A header prepended to the kernel files that need it.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Path under `crates/gla-cuda/kernels/`.
    pub name: &'static str,
    /// The header's text.
    pub text: &'static str,
}

/// One kernel source file: one NVRTC program, its headers and its entry points.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// Path under `crates/gla-cuda/kernels/`, e.g. `gla/chunk_fwd.cu`.
    pub name: &'static str,
    /// The headers compiled before the file, in order.
    pub headers: &'static [Header],
    /// The file's text.
    pub text: &'static str,
    /// Its `extern "C"` entry points.
    pub entries: &'static [&'static str],
}

impl KernelSource {
    /// The full program text NVRTC compiles: each header, then the file, each opened by a
    /// `#line 1 "<path>"` directive.
    pub fn code(&self) -> String {
        let mut s = String::new();
        for h in self.headers.iter().map(|h| (h.name, h.text)).chain(std::iter::once((self.name, self.text))) {
            s += &format!("#line 1 \"{}\"\n{}\n", h.0, h.1);
        }
        s
    }
}

macro_rules! header {
    ($path:literal) => {
        Header { name: $path, text: include_str!(concat!("../kernels/", $path)) }
    };
}

/// Storage types (bf16 bits, 64-bit index), conversions, warp sum, gate load: every program.
pub const BASE: Header = header!("common/base.cuh");
/// ldmatrix, mma.sync, cp.async and the 64-row tile loader: the chunk kernels.
pub const MMA: Header = header!("common/mma.cuh");
/// The chunk of a block (the one prologue), base-2 exp, row strides, state / A tile loads.
pub const CHUNK: Header = header!("common/chunk.cuh");
/// The nn kernels' contract, activations and column reduction.
pub const NN: Header = header!("nn/common.cuh");
/// The delta rule's shared parts: the storage-generic tile loader, warp products (mma.sync or
/// FMA), split operands.
pub const DELTA: Header = header!("delta/common.cuh");
/// The delta rule's chunk kernels' prologue, row factors and intra-chunk attention.
pub const DELTA_CHUNK: Header = header!("delta/chunk.cuh");

const CHUNK_HEADERS: &[Header] = &[BASE, MMA, CHUNK];
/// The GLA chunk kernels whose building blocks the bidirectional scan runs (`o_pass_a`,
/// `chunk_h`), compiled as headers of its program (their own entry points come along unused).
const BIDIR_HEADERS: &[Header] = &[BASE, MMA, CHUNK, header!("gla/chunk_fwd.cu"), header!("gla/chunk_h.cu")];
/// [`BIDIR_HEADERS`] and the GLA backward's building blocks (`chunk_bwd1`, `chunk_bwd2`).
const BIDIR_BWD_HEADERS: &[Header] =
    &[BASE, MMA, CHUNK, header!("gla/chunk_fwd.cu"), header!("gla/chunk_h.cu"), header!("gla/chunk_bwd.cu")];
const NN_HEADERS: &[Header] = &[BASE, NN];
const DELTA_HEADERS: &[Header] = &[BASE, MMA, CHUNK, DELTA];
const DELTA_CHUNK_HEADERS: &[Header] = &[BASE, MMA, CHUNK, WGMMA, DELTA, DELTA_CHUNK];
/// Softmax attention's shared parts: the mask, the tile loads and stores, the row reductions.
pub const ATTN: Header = header!("attn/common.cuh");
const ATTN_HEADERS: &[Header] = &[BASE, MMA, CHUNK, ATTN];
/// Hopper warpgroup products (wgmma, sm_90a): descriptors, swizzle, fences.
pub const WGMMA: Header = header!("common/wgmma.cuh");

macro_rules! source {
    ($path:literal, $headers:expr, [$($entry:literal),* $(,)?]) => {
        KernelSource { name: $path, headers: $headers, text: include_str!(concat!("../kernels/", $path)), entries: &[$($entry),*] }
    };
}

/// Fused recurrent forward, decode and backward, f32 or bf16 storage.
pub const GLA_RECURRENT: KernelSource = source!(
    "gla/recurrent.cu",
    &[BASE],
    [
        "gla_recurrent_fwd_f32",
        "gla_recurrent_fwd_bf16",
        "gla_recurrent_decode_f32",
        "gla_recurrent_decode_bf16",
        "gla_recurrent_bwd_f32",
        "gla_recurrent_bwd_bf16",
        "gla_recurrent_bwd_finalize_f32",
        "gla_recurrent_bwd_finalize_bf16",
    ]
);

/// Chunked forward for f32 storage (one pass, state in shared memory, K <= 128).
pub const GLA_CHUNK_FWD_F32: KernelSource = source!("gla/chunk_fwd_f32.cu", &[BASE], ["gla_chunk_fwd_f32"]);

/// The bf16 chunked path's chunk-parallel forward launches: gate prep, output pass, and for
/// K > 128 the A pass and the per-V-tile output pass.
pub const GLA_CHUNK_FWD: KernelSource = source!(
    "gla/chunk_fwd.cu",
    CHUNK_HEADERS,
    ["gla_chunk_prep_bf16", "gla_chunk_prep8_bf16", "gla_chunk_o_bf16", "gla_chunk_a_bf16", "gla_chunk_ow_bf16"]
);

/// The bf16 chunked path's sequential state passes: forward states, backward state gradients.
pub const GLA_CHUNK_H: KernelSource =
    source!("gla/chunk_h.cu", CHUNK_HEADERS, ["gla_chunk_h64_bf16", "gla_chunk_h32_bf16", "gla_chunk_dh64_bf16", "gla_chunk_dh32_bf16"]);

/// The bf16 chunked backward's gradient launches.
pub const GLA_CHUNK_BWD: KernelSource = source!(
    "gla/chunk_bwd.cu",
    CHUNK_HEADERS,
    ["gla_chunk_bwd1_bf16", "gla_chunk_bwd1k_bf16", "gla_chunk_bwd1v_bf16", "gla_chunk_bwd2k_bf16", "gla_chunk_bwd2k64_bf16"]
);

/// The softmax-attention layer's element-wise kernels: bias, RoPE, widening, KV cache rows in.
pub const NN_ATTN_LAYER: KernelSource =
    source!("nn/attn_layer.cu", NN_HEADERS, ["bias_add_bf16", "rope_bf16", "rope_bwd_f32", "widen_bf16_f32", "kv_scatter_bf16"]);

/// Casts, row gather / scatter, GQA head repeat.
pub const NN_ROWS: KernelSource = source!(
    "nn/rows.cu",
    NN_HEADERS,
    ["cast_f32_bf16", "gather_rows_bf16", "scatter_rows_f32", "repeat_heads_bf16", "repeat_heads_bwd_f32"]
);
/// Token embedding forward and backward.
pub const NN_EMBEDDING: KernelSource = source!("nn/embedding.cu", NN_HEADERS, ["embedding_fwd", "embedding_bwd"]);
/// Column reductions' last step and the bias gradient.
pub const NN_REDUCE: KernelSource = source!("nn/reduce.cu", NN_HEADERS, ["col_finalize", "colsum_f32"]);
/// RMSNorm and the gated per-head norm.
pub const NN_NORM: KernelSource = source!(
    "nn/norm.cu",
    NN_HEADERS,
    [
        "rmsnorm_fwd",
        "rmsnorm_bwd_dx",
        "rmsnorm_bwd_dw",
        "gated_norm_fwd",
        "gated_norm_bwd_dx",
        "gated_norm_bwd_dw",
        "gated_norm_fwd_v1",
        "gated_norm_fwd_v2",
        "gated_norm_fwd_v4",
        "gated_norm_fwd_v8",
        "gated_norm_bwd_v1",
        "gated_norm_bwd_v2",
        "gated_norm_bwd_v4",
        "gated_norm_bwd_v8",
        "rmsnorm_bwd_v1",
        "rmsnorm_bwd_v2",
        "rmsnorm_bwd_v4",
        "rmsnorm_bwd_v8"
    ]
);
/// SwiGLU, feature maps, the log-sigmoid gate, DeltaNet's sum norm.
pub const NN_ELEMENTWISE: KernelSource = source!(
    "nn/elementwise.cu",
    NN_HEADERS,
    ["swiglu_fwd", "swiglu_bwd", "feature_map_fwd", "feature_map_bwd", "gate_fwd", "gate_bwd", "sum_norm_fwd", "sum_norm_bwd"]
);
/// The causal short convolution.
pub const NN_CONV: KernelSource = source!(
    "nn/conv.cu",
    NN_HEADERS,
    [
        "conv_fwd",
        "conv_cache_update",
        "conv_decode",
        "conv_bwd_dx",
        "conv_bwd_dw",
        "conv_fwd_w1",
        "conv_fwd_w2",
        "conv_fwd_w3",
        "conv_fwd_w4",
        "conv_fwd_w5",
        "conv_fwd_w6",
        "conv_fwd_w7",
        "conv_fwd_w8",
        "conv_bwd_w1",
        "conv_bwd_w2",
        "conv_bwd_w3",
        "conv_bwd_w4",
        "conv_bwd_w5",
        "conv_bwd_w6",
        "conv_bwd_w7",
        "conv_bwd_w8"
    ]
);
/// Cross-entropy over labelled rows.
pub const NN_XENT: KernelSource = source!("nn/xent.cu", NN_HEADERS, ["cross_entropy"]);
/// The vision ops of ViG (gla-core's `VisionOps`): patch im2col / col2im, bias, LayerNorm, the
/// 3x3 depthwise conv, the position embedding's bicubic resize, average pool, column copies, the
/// locality gate and the label-smoothed cross-entropy.
pub const NN_VISION: KernelSource = source!(
    "nn/vision.cu",
    NN_HEADERS,
    [
        "im2col_bf16",
        "col2im_f32",
        "bias_fwd_f32",
        "colsum_bf16",
        "layernorm_fwd",
        "layernorm_bwd_dx",
        "layernorm_bwd_dw",
        "dwconv3_fwd",
        "dwconv3_bwd_dx",
        "dwconv3_bwd_dw",
        "pos_embed_fwd",
        "pos_embed_bwd",
        "avgpool_fwd",
        "avgpool_bwd",
        "cols_bf16",
        "cols_f32",
        "cols_bf16_f32",
        "locality_gate_fwd",
        "locality_fused_fwd",
        "swiglu_split_fwd",
        "locality_gate_bwd",
        "smoothed_xent"
    ]
);
/// Gradient norm and AdamW.
pub const NN_ADAMW: KernelSource = source!("nn/adamw.cu", NN_HEADERS, ["sumsq", "sum_f64", "adamw"]);

/// The delta rule's elementwise maps (L2 rstd, beta sigmoid, computed gate) and their backward;
/// the states' layout of value sub-heads.
pub const DELTA_PREP: KernelSource = source!(
    "delta/prep.cu",
    DELTA_HEADERS,
    [
        "delta_l2_rstd_f32",
        "delta_l2_rstd_bf16",
        "delta_gate_fwd_f32",
        "delta_gate_fwd_bf16",
        "delta_qk_bwd_f32",
        "delta_qk_bwd_bf16",
        "delta_gate_bwd_f32",
        "delta_gate_bwd_bf16",
        "delta_gate_param_bwd_f32",
        "delta_gate_param_bwd_bf16",
        "delta_state_split",
    ]
);
/// The delta rule's fused recurrent forward, decode step and backward, f32 or bf16 storage.
pub const DELTA_RECURRENT: KernelSource = source!(
    "delta/recurrent.cu",
    DELTA_HEADERS,
    ["delta_rec_fwd_f32", "delta_rec_fwd_bf16", "delta_rec_decode_f32", "delta_rec_decode_bf16", "delta_rec_bwd_f32", "delta_rec_bwd_bf16"]
);
/// The delta rule's chunked forward: UT/WY prep and output pass, per padded K (64 .. 256).
pub const DELTA_CHUNK_FWD: KernelSource = source!(
    "delta/chunk_fwd.cu",
    DELTA_CHUNK_HEADERS,
    [
        "delta_wy_k64_f32",
        "delta_wy_k128_f32",
        "delta_wy_k64_bf16",
        "delta_wy_k128_bf16",
        "delta_wy_k192_bf16",
        "delta_wy_k256_bf16",
        "delta_wyt_k64_bf16",
        "delta_wyt_k128_bf16",
        "delta_wyt_k192_bf16",
        "delta_wyt_k256_bf16",
        "delta_o_k64_f32",
        "delta_o_k128_f32",
        "delta_o_k64_bf16",
        "delta_o_k128_bf16",
        "delta_o_k192_bf16",
        "delta_o_k256_bf16",
        "delta_pm_k64_bf16",
        "delta_pm_k128_bf16",
        "delta_pm_k192_bf16",
        "delta_pm_k256_bf16",
    ]
);
/// The delta rule's sequential passes: the state pass and the state-gradient pass.
pub const DELTA_CHUNK_H: KernelSource = source!(
    "delta/chunk_h.cu",
    DELTA_CHUNK_HEADERS,
    [
        "delta_h_k64_f32",
        "delta_h_k128_f32",
        "delta_h_k64_bf16",
        "delta_h_k128_bf16",
        "delta_h_k192_bf16",
        "delta_h_k256_bf16",
        "delta_h_bwd_k64_f32",
        "delta_h_bwd_k128_f32",
        "delta_h_bwd_k64_bf16",
        "delta_h_bwd_k128_bf16",
        "delta_h_bwd_k192_bf16",
        "delta_h_bwd_k256_bf16",
        "delta_h_v32_k64_bf16",
        "delta_h_v32_k128_bf16",
        "delta_h_v32_k192_bf16",
        "delta_h_v32_k256_bf16",
        "delta_h_b2_k64_bf16",
        "delta_h_b2_k128_bf16",
        "delta_h_v32b2_k64_bf16",
        "delta_h_v32b2_k128_bf16",
        "delta_hr_b2_k64_bf16",
        "delta_hr_b2_k128_bf16",
        "delta_hr_v32_k64_bf16",
        "delta_hr_v32_k128_bf16",
        "delta_hro_b2_k64_bf16",
        "delta_hro_b2_k128_bf16",
        "delta_hro_v32_k64_bf16",
        "delta_hro_v32_k128_bf16",
        "delta_hr_s2_k64_bf16",
        "delta_hr_s2_k128_bf16",
        "delta_hr_s2_k192_bf16",
        "delta_hr_s2_k256_bf16",
        "delta_hro_s2_k192_bf16",
        "delta_hro_s2_k256_bf16",
        "delta_hrop_b2_k64_bf16",
        "delta_hrop_b2_k128_bf16",
        "delta_hrop_s2_k192_bf16",
        "delta_hrop_s2_k256_bf16",
        "delta_h_bwd_v32_k64_bf16",
        "delta_h_bwd_v32_k128_bf16",
        "delta_h_bwd_v32_k192_bf16",
        "delta_h_bwd_v32_k256_bf16",
        "delta_h_bwd_dv2_k64_bf16",
        "delta_h_bwd_dv2_k128_bf16",
        "delta_h_bwd_rdv2_k64_bf16",
        "delta_h_bwd_rdv2_k128_bf16",
        "delta_h_bwd_rdv2_v32_k64_bf16",
        "delta_h_bwd_rdv2_v32_k128_bf16",
        "delta_h_bwd_rv32_k64_bf16",
        "delta_h_bwd_rv32_k128_bf16",
        "delta_h_bwd_rs1_k192_bf16",
        "delta_h_bwd_rs1_k256_bf16",
        "delta_h_bwd_rdv1_k192_bf16",
        "delta_h_bwd_rdv1_k256_bf16",
        "delta_h_bwd_rdvp1_k192_bf16",
        "delta_h_bwd_rdvp1_k256_bf16",
        "delta_h_bwd_wg_rdv2_k128_bf16",
    ]
);
/// The delta rule's chunked backward, chunk-parallel launches: dvl, dq/dk, the WY backward.
pub const DELTA_CHUNK_BWD: KernelSource = source!(
    "delta/chunk_bwd.cu",
    DELTA_CHUNK_HEADERS,
    [
        "delta_dvl_k64_f32",
        "delta_dvl_k128_f32",
        "delta_dvl_k64_bf16",
        "delta_dvl_k128_bf16",
        "delta_dvl_k192_bf16",
        "delta_dvl_k256_bf16",
        "delta_dqk_k64_f32",
        "delta_dqk_k128_f32",
        "delta_dqk_s2_k64_bf16",
        "delta_dqk_s2_k128_bf16",
        "delta_dqk_k192_bf16",
        "delta_dqk_k256_bf16",
        "delta_dqk_s2_k192_bf16",
        "delta_dqk_s2_k256_bf16",
        "delta_dqk_wg_k64_bf16",
        "delta_dqk_wg_k128_bf16",
        "delta_dqk_wg_k256_bf16",
        "delta_dqk_wg_d1_k128_bf16",
        "delta_dqk_wg_b2_k128_bf16",
        "delta_dqk_wg_d1_k256_bf16",
        "delta_wy_bwd_k64_f32",
        "delta_wy_bwd_k128_f32",
        "delta_wy_bwd_k64_bf16",
        "delta_wy_bwd_k128_bf16",
        "delta_wy_bwd_k192_bf16",
        "delta_wy_bwd_k256_bf16",
        "delta_wy_bwd_vb2_k256_bf16",
        "delta_wy_bwd_m1_k128_bf16",
        "delta_wy_bwd_vb2_m1_k256_bf16",
        "delta_wy_bwd_wg_m1_k128_bf16",
    ]
);

/// Softmax attention's forward (flash-attention-2 style), per (D, DV) tile width.
pub const ATTN_FWD: KernelSource =
    source!("attn/fwd.cu", ATTN_HEADERS, ["attn_fwd_d64_dv32", "attn_fwd_d64_dv64", "attn_fwd_m2_d128_dv128", "attn_fwd_m2w8_d128_dv128"]);
/// Softmax attention's backward: the row dot of dO and O, then dK / dV per key tile with dQ parts
/// added into per-split sums, and the sum of the splits.
pub const ATTN_BWD: KernelSource = source!(
    "attn/bwd.cu",
    ATTN_HEADERS,
    ["attn_bwd_pre", "attn_bwd_kvq_d64_dv32", "attn_bwd_kvq_d64_dv64", "attn_bwd_kvq_d128_dv128", "attn_bwd_dq_sum"]
);
/// Softmax attention's decode step over a KV cache: append, split-K attention, combine.
pub const ATTN_DECODE: KernelSource = source!(
    "attn/decode.cu",
    ATTN_HEADERS,
    [
        "attn_append",
        "attn_decode_d64_dv32",
        "attn_decode_d64_dv64",
        "attn_decode_d128_dv128",
        "attn_decode_g1_d64_dv32",
        "attn_decode_g1_d64_dv64",
        "attn_decode_g1_d128_dv128",
        "attn_decode_combine",
    ]
);
/// The bidirectional scan's (ViG) fused chunked forward: gate prep and state passes of both
/// directions, the output pass combining them.
pub const BIDIR_CHUNK_FWD: KernelSource = source!(
    "bidir/chunk_fwd.cu",
    BIDIR_HEADERS,
    ["bidir_chunk_prep_bf16", "bidir_chunk_h64_bf16", "bidir_chunk_h32_bf16", "bidir_chunk_o_bf16"]
);
/// The bidirectional scan's chunked backward: the four state walks in one launch, A of both
/// directions, the GLA gradient launches per direction (the backward one on reversed rows).
pub const BIDIR_CHUNK_BWD: KernelSource = source!(
    "bidir/chunk_bwd.cu",
    BIDIR_BWD_HEADERS,
    [
        "bidir_chunk_walks64_bf16",
        "bidir_chunk_walks32_bf16",
        "bidir_chunk_a_bf16",
        "bidir_chunk_bwd1_bf16",
        "bidir_chunk_bwd1n_bf16",
        "bidir_chunk_bwd2_bf16"
    ]
);
/// Rows reversed within each sequence (copy, or add).
pub const BIDIR_FLIP: KernelSource =
    source!("bidir/flip.cu", CHUNK_HEADERS, ["bidir_flip_f32", "bidir_flip_bf16", "bidir_flip_add_f32", "bidir_flip_add_bf16"]);

/// Lab: the check of `common/wgmma.cuh` (C = A B^T on wgmma; `gla check --device cuda --filter lab`).
pub const LAB_WGMMA: KernelSource =
    source!("lab/wgmma_gemm.cu", &[BASE, MMA, CHUNK, ATTN, WGMMA], ["lab_wgmma_gemm_bf16", "lab_wgmma_gemm64_bf16"]);

/// Softmax attention's forward on Hopper's warpgroup products (sm_90a, D = DV = 128).
pub const ATTN_FWD_WG: KernelSource = source!("attn/fwd_wg.cu", &[BASE, MMA, CHUNK, ATTN, WGMMA], ["attn_fwd_wg_d128_dv128"]);

/// Softmax attention's backward (dK / dV, and dq) on Hopper's warpgroup products (sm_90a, D = DV = 128).
pub const ATTN_BWD_WG: KernelSource =
    source!("attn/bwd_wg.cu", &[BASE, MMA, CHUNK, ATTN, WGMMA], ["attn_bwd_kv_wg_d128_dv128", "attn_bwd_dq_wg_d128_dv128"]);

/// Every kernel source of the crate (the CI compile check walks this list).
pub const ALL: &[KernelSource] = &[
    GLA_RECURRENT,
    GLA_CHUNK_FWD_F32,
    GLA_CHUNK_FWD,
    GLA_CHUNK_H,
    GLA_CHUNK_BWD,
    NN_ROWS,
    NN_ATTN_LAYER,
    NN_EMBEDDING,
    NN_REDUCE,
    NN_NORM,
    NN_ELEMENTWISE,
    NN_CONV,
    NN_XENT,
    NN_VISION,
    NN_ADAMW,
    DELTA_PREP,
    DELTA_RECURRENT,
    DELTA_CHUNK_FWD,
    DELTA_CHUNK_H,
    DELTA_CHUNK_BWD,
    ATTN_FWD,
    ATTN_BWD,
    ATTN_DECODE,
    BIDIR_CHUNK_FWD,
    BIDIR_CHUNK_BWD,
    BIDIR_FLIP,
    ATTN_FWD_WG,
    ATTN_BWD_WG,
    LAB_WGMMA,
];

/// The source that defines entry point `entry`, if any.
pub fn source_of(entry: &str) -> Option<&'static KernelSource> {
    ALL.iter().find(|s| s.entries.contains(&entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_are_unique_and_found() {
        let mut seen = std::collections::HashSet::new();
        for src in ALL {
            for e in src.entries {
                assert!(seen.insert(*e), "{e} is listed twice");
                assert_eq!(source_of(e).map(|s| s.name), Some(src.name));
            }
        }
        assert!(source_of("gla_chunk_fwd_mma_bf16").is_none());
    }

    #[test]
    fn every_entry_point_is_in_its_file() {
        // entries generated by a macro appear as the macro argument or as its name suffix
        for src in ALL {
            for e in src.entries {
                let suffix = e.rsplit_once('_').map_or(*e, |(_, s)| s);
                assert!(src.text.contains(e) || src.text.contains(&format!("ENTRY({suffix},")), "{e} not in {}", src.name);
            }
        }
    }

    #[test]
    fn programs_name_each_file_on_a_line_directive() {
        let code = GLA_CHUNK_BWD.code();
        for f in ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh", "gla/chunk_bwd.cu"] {
            assert!(code.contains(&format!("#line 1 \"{f}\"\n")), "{f}");
        }
    }
}
