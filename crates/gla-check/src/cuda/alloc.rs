//! `gla check --device cuda`, allocation part: a training step of the GPU language model
//! (forward, backward, AdamW with clipping) allocates no device memory after its first step.
//!
//! Every buffer of a step is made once: the activations and the backward's scratch per batch
//! shape (`gla_model::Acts`), the GLA op's workspaces and repeat gradients, or the delta op's
//! workspace and bf16 inputs, in the batch plan (`backend::GpuPlan`), the AdamW moments at the
//! first step. Two measures, both read after
//! two warm-up steps and again after three more:
//! - the allocations this crate made ([`Cuda::alloc_stats`]: every device allocation goes
//!   through its helpers), which must not grow;
//! - the high-water mark of the device's default memory pool ([`peak_pool_bytes`], reset by
//!   [`reset_peak_pool`] after the warm-up), which must not rise above the memory in use after
//!   the warm-up ([`pool_used_bytes`]): it also sees stream-ordered allocations made outside
//!   this crate's helpers, and a buffer freed and made again within a step.
//!
//! The configs cover both GLA backwards (recurrent for K = 16, chunked narrow and wide), short
//! convolutions, GQA and value splits (the op's heads repeat the model's: the repeat gradients),
//! and the delta rule's chunked path (Gated DeltaNet with grouped value heads; DeltaNet with the
//! sum norm and a constant beta).

use std::sync::Arc;

use gla_model::optim::AdamWConfig;
use gla_model::{shift_labels, DeltaNetConfig, GatedDeltaNetConfig, GlaConfig, GlaModel, ModelConfig, Rng};

use gla_cuda::weights::{peak_pool_bytes, pool_used_bytes, reset_peak_pool};
use gla_cuda::{Cuda, Result};
use gla_model::gpu::{GpuActivations, GpuModel};

use crate::row::Row;
use crate::tol;

/// Steps run before the measures are first read (the first step allocates the AdamW moments).
pub const WARMUP_STEPS: usize = 2;
/// Steps run between the two reads.
pub const MEASURED_STEPS: usize = 3;

/// The configs checked: (name, config, B, T).
fn configs() -> Vec<(&'static str, ModelConfig, usize, usize)> {
    // K = 16: the recurrent backward; short convs; one kv head for two query heads (GQA)
    let conv_gqa = GlaConfig { use_short_conv: true, conv_size: 4, num_kv_heads: Some(1), ..GlaConfig::tiny(64, 2, 2, 256) };
    // K = 64, V = 128: the narrow chunked backward, with short convs and GQA
    let chunk_conv_gqa =
        GlaConfig { expand_v: 1.0, use_short_conv: true, conv_size: 4, num_kv_heads: Some(1), ..GlaConfig::tiny(256, 2, 2, 256) };
    // V = 256 run as two op heads of 128 (q, k, g repeated, their gradients summed back); tied
    let split = GlaConfig { expand_v: 2.0, tie_word_embeddings: true, ..GlaConfig::tiny(128, 2, 1, 256) };
    // K = 256: the K-tiled (wide) chunked forward and backward
    let k256 = GlaConfig { expand_k: 1.0, expand_v: 0.5, ..GlaConfig::tiny(256, 2, 1, 256) };
    // the delta rule: Gated DeltaNet with four value heads over two key heads; DeltaNet with the
    // sum norm, elu + 1 after a conv without SiLU, no b_proj
    let gdn = GatedDeltaNetConfig { num_v_heads: Some(4), ..GatedDeltaNetConfig::tiny(128, 2, 2, 256) };
    let dn = DeltaNetConfig { qk_norm: "sum".into(), qk_activation: "elu".into(), use_beta: false, ..DeltaNetConfig::tiny(128, 2, 2, 256) };
    vec![
        ("alloc-conv-gqa", conv_gqa.into(), 2, 130),
        ("alloc-chunk-conv-gqa", chunk_conv_gqa.into(), 2, 130),
        ("alloc-vsplit-tied", split.into(), 3, 64),
        ("alloc-k256", k256.into(), 2, 100),
        ("alloc-gdn-gva", gdn.into(), 2, 130),
        ("alloc-deltanet-sum", dn.into(), 2, 100),
    ]
}

fn row(case: &str, tensor: &'static str, growth: f64, note: String) -> Row {
    Row::new(case, "train-step", "bf16", tensor, growth, tol::BITWISE).with_note(note)
}

fn cpu_err(e: gla_model::Error) -> gla_cuda::Error {
    gla_cuda::Error::Op(gla_core::Error::Unsupported { backend: "cpu", what: e.to_string() })
}

/// Runs the allocation checks on `cuda`, appending two rows per config to `out`:
/// `alloc-count` (allocations made by the measured steps) and `pool-peak` (bytes the pool's
/// high-water mark rose by during them); each passes only at 0. A config that cannot run adds
/// a failing `error` row; the others still run.
///
/// # Errors
/// None of its own (failures are rows); the signature matches the other checks'.
pub fn alloc_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    for (seed, (name, cfg, b, t)) in configs().into_iter().enumerate() {
        if let Err(e) = case(cuda, seed, name, cfg, b, t, out) {
            out.push(Row::failed(name, "train-step", "bf16", tol::BITWISE, e));
        }
    }
    Ok(())
}

/// One training step as the engine (`gla_model::DeviceEngine`) runs it on a GPU: zero the gradients, forward, backward, AdamW with
/// clipping (which reads the gradient norm).
fn step(gpu: &mut GpuModel, acts: &mut GpuActivations, ids: &[u32], targets: &[i64]) -> Result<()> {
    gpu.zero_grads()?;
    gpu.forward(acts, ids, targets)?;
    gpu.backward(acts, 1.0)?;
    gpu.adamw_step(&AdamWConfig::default(), 1e-3, 1.0)?;
    Ok(())
}

fn case(cuda: &Arc<Cuda>, seed: usize, name: &str, cfg: ModelConfig, b: usize, t: usize, out: &mut Vec<Row>) -> Result<()> {
    let cpu = GlaModel::new(cfg, 11 + seed as u64).map_err(cpu_err)?;
    let vocab = cpu.dims.vocab;
    let mut rng = Rng::new(200 + seed as u64);
    // a new batch every step, as training draws them (the embedding schedule is rebuilt)
    let mut batch = || {
        let ids: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
        let mut labels: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
        for l in labels.iter_mut().step_by(7) {
            *l = gla_model::IGNORE_INDEX;
        }
        let targets = shift_labels(&labels, t);
        (ids, targets)
    };
    let mut gpu = GpuModel::new(cuda.clone(), &cpu)?;
    let mut acts = gpu.activations(b, t)?;
    for _ in 0..WARMUP_STEPS {
        let (ids, targets) = batch();
        step(&mut gpu, &mut acts, &ids, &targets)?;
    }
    cuda.sync()?;
    let before = cuda.alloc_stats();
    reset_peak_pool(cuda);
    // the reset leaves the mark at the memory in use; read both in case a driver zeroes it
    let in_use = pool_used_bytes(cuda).max(peak_pool_bytes(cuda));
    for _ in 0..MEASURED_STEPS {
        let (ids, targets) = batch();
        step(&mut gpu, &mut acts, &ids, &targets)?;
    }
    cuda.sync()?;
    let after = cuda.alloc_stats();
    let peak = peak_pool_bytes(cuda);

    let (count, bytes) = (after.count - before.count, after.bytes - before.bytes);
    out.push(row(
        name,
        "alloc-count",
        count as f64,
        format!(
            "{count} allocations ({bytes} B) in {MEASURED_STEPS} steps after {WARMUP_STEPS} warm-up steps; {} ({} B) before them",
            before.count, before.bytes
        ),
    ));
    if in_use == 0 {
        // the model's own buffers are in the pool: a zero reading means the driver reports none
        out.push(row(name, "pool-peak", f64::INFINITY, "the driver reports no memory-pool high-water mark; cannot measure".into()));
    } else {
        let rise = peak.saturating_sub(in_use);
        out.push(row(
            name,
            "pool-peak",
            rise as f64,
            format!("pool high-water mark {peak} B after {MEASURED_STEPS} steps, {in_use} B in use after the warm-up"),
        ));
    }
    Ok(())
}
