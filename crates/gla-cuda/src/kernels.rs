//! The kernel sources, embedded at build time. Each is compiled as `common.cuh` followed by the
//! `.cu` file, in one NVRTC program (no `#include`, no toolkit headers).

/// One kernel source file and its entry points.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name under `crates/gla-cuda/kernels/`.
    pub name: &'static str,
    /// The file's text (without the common prelude).
    pub text: &'static str,
    /// Its `extern "C"` entry points.
    pub entries: &'static [&'static str],
}

/// Helpers prepended to every kernel source.
pub const COMMON: &str = include_str!("../kernels/common.cuh");

impl KernelSource {
    /// The full program text NVRTC compiles: the common prelude, then the file.
    pub fn code(&self) -> String {
        format!("{COMMON}\n#line 1 \"{}\"\n{}", self.name, self.text)
    }
}

/// Fused recurrent forward and backward (`gla_recurrent.cu`).
pub const RECURRENT: KernelSource = KernelSource {
    name: "gla_recurrent.cu",
    text: include_str!("../kernels/gla_recurrent.cu"),
    entries: &[
        "gla_recurrent_fwd_f32",
        "gla_recurrent_fwd_bf16",
        "gla_recurrent_decode_f32",
        "gla_recurrent_decode_bf16",
        "gla_recurrent_bwd_f32",
        "gla_recurrent_bwd_bf16",
        "gla_recurrent_bwd_finalize_f32",
        "gla_recurrent_bwd_finalize_bf16",
    ],
};

/// Chunked forward (`gla_chunk.cu`).
pub const CHUNK: KernelSource =
    KernelSource { name: "gla_chunk.cu", text: include_str!("../kernels/gla_chunk.cu"), entries: &["gla_chunk_fwd_f32"] };

/// Chunked forward v2 and the chunked backward for bf16: gate prep, state and state-gradient
/// passes, output pass, two gradient launches; K up to 256 and V above 128 through the split
/// launches (`gla_chunk_a/ow`, `bwd1k/bwd1v`, `bwd2k`) (`gla_chunk_v2.cu`).
pub const CHUNK_V2: KernelSource = KernelSource {
    name: "gla_chunk_v2.cu",
    text: include_str!("../kernels/gla_chunk_v2.cu"),
    entries: &[
        "gla_chunk_prep_bf16",
        "gla_chunk_prep8_bf16",
        "gla_chunk_h64_bf16",
        "gla_chunk_h32_bf16",
        "gla_chunk_dh64_bf16",
        "gla_chunk_dh32_bf16",
        "gla_chunk_o_bf16",
        "gla_chunk_a_bf16",
        "gla_chunk_ow_bf16",
        "gla_chunk_bwd1_bf16",
        "gla_chunk_bwd1k_bf16",
        "gla_chunk_bwd1v_bf16",
        "gla_chunk_bwd2k_bf16",
        "gla_chunk_bwd2k64_bf16",
    ],
};

/// The language model's row-wise and element-wise kernels around the GEMMs (`model_ops.cu`).
pub const MODEL_OPS: KernelSource = KernelSource {
    name: "model_ops.cu",
    text: include_str!("../kernels/model_ops.cu"),
    entries: &[
        "cast_f32_bf16",
        "embedding_fwd",
        "embedding_bwd",
        "gather_rows_bf16",
        "scatter_rows_f32",
        "repeat_heads_bf16",
        "repeat_heads_bwd_f32",
        "rmsnorm_bwd_dw",
        "gated_norm_bwd_dw",
        "colsum_f32",
        "col_finalize",
        "rmsnorm_fwd",
        "rmsnorm_bwd_dx",
        "gated_norm_fwd",
        "gated_norm_bwd_dx",
        "swiglu_fwd",
        "swiglu_bwd",
        "feature_map_fwd",
        "feature_map_bwd",
        "gate_fwd",
        "gate_bwd",
        "conv_fwd",
        "conv_cache_update",
        "conv_decode",
        "conv_bwd_dx",
        "conv_bwd_dw",
        "cross_entropy",
        "sumsq",
        "sum_f64",
        "adamw",
    ],
};

/// Every kernel source of the crate (the CI compile check walks this list).
pub const ALL: &[KernelSource] = &[RECURRENT, CHUNK, CHUNK_V2, MODEL_OPS];
