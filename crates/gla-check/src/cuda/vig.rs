//! The GPU ViG's rows (case names `vig-*`): [`GpuVigModel`] against the CPU model
//! (`gla_model::vig::VigModel`, f32, itself checked by finite differences and against hustvl's
//! fixtures) on the same weights and images: the loss, the logits, every parameter's gradient,
//! a repeat run (bitwise), one AdamW step against the CPU optimizer applied to the GPU's own
//! gradients, and the inference path's logits (inference-only weights, forward-only buffers)
//! against the training forward's (bitwise). Tolerances
//! as the language model's ([`super::model`], [`crate::tol`]): the gradients' and logits' raised
//! to the CPU model's own bf16 floor (its GEMM matrices and every activation rounded to bf16,
//! the arithmetic in f32), measured here.

use std::sync::Arc;

use gla_cuda::ops::{bf16_to_f32, f32_to_bf16};
use gla_cuda::{Cuda, Result};
use gla_model::optim::{clip_grad_norm, AdamW, AdamWConfig};
use gla_model::vig::gpu::GpuVigModel;
use gla_model::vig::{self, Shape, VigActs, VigConfig, VigModel};
use gla_model::Rng;

use super::model::{cpu_err, grad_rows, rel_rmse, repeat_row, row};
use crate::row::Row;
use crate::tol::{self, floor_tol};

/// The configs checked: (name, config, B, image height, width). Images of 80 x 80 at patch 8
/// give 10 x 10 = 100 tokens (the scans cross a 64-row chunk); the first has ViG-T's head shapes
/// (K 32, V 64: the fused forward and backward), the second ViG-S/B's (K 64: fused both
/// ways, here V 128) and runs at another size than its position embedding's grid (the bicubic
/// resize, forward and backward).
fn configs() -> Vec<(&'static str, VigConfig, usize, usize, usize)> {
    let t = VigConfig {
        img_size: 80,
        patch_size: 8,
        stride: 8,
        depth: 2,
        num_heads: 2,
        embed_dim: 128,
        num_classes: 10,
        intermediate_size: Some(192),
        ..VigConfig::vig_t()
    };
    // ViG-S/B's flags (no output swish, no SiLU after the depthwise conv), one head of K = 64;
    // an 8 x 8 grid (64 x 64 images) run at 80 x 72 (10 x 9 tokens)
    let s = VigConfig { img_size: 64, num_heads: 1, use_out_act: false, use_act_in_conv: false, drop_path_rate: 0.0, ..t.clone() };
    vec![("vig-t-tiny", t, 3, 80, 80), ("vig-s-resize", s, 2, 80, 72)]
}

/// The CPU model's bf16 floor: logits and gradients of `m` with its GEMM matrices and every
/// activation rounded to bf16 (all arithmetic in f32).
fn bf16_floor(m: &VigModel, images: &[f32], labels: &[u32], (b, h, w): (usize, usize, usize)) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut rounded = m.clone();
    for spec in &m.layout.specs {
        if spec.gemm {
            rounded.params[spec.range()].iter_mut().for_each(|x| *x = bf16_to_f32(f32_to_bf16(*x)));
        }
    }
    let be = rounded.cpu().emulating_bf16();
    let shape = Shape::new(&m.dims, b, h, w).map_err(cpu_err)?;
    let mut acts = VigActs::alloc(&be, &m.dims, shape, true).map_err(cpu_err)?;
    vig::forward(&be, &m.layout, &mut acts, images, Some(labels), 0.1).map_err(cpu_err)?;
    let mut grads = vec![0.0f32; m.num_params()];
    vig::backward(&be, &m.layout, &mut acts, &mut grads).map_err(cpu_err)?;
    Ok((acts.logits().clone(), grads))
}

/// Runs the ViG rows on `cuda`, appending them to `out` (a case that cannot run becomes a
/// failing row carrying the error).
///
/// # Errors
/// None beyond the rows' own (kept for the callers' uniformity).
pub fn vig_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    for (seed, (name, cfg, b, h, w)) in configs().into_iter().enumerate() {
        if let Err(e) = vig_case(cuda, seed as u64, name, cfg, (b, h, w), out) {
            out.push(Row::failed(name, "model", "bf16", 0.0, e));
        }
    }
    Ok(())
}

fn vig_case(cuda: &Arc<Cuda>, seed: u64, name: &str, cfg: VigConfig, (b, h, w): (usize, usize, usize), out: &mut Vec<Row>) -> Result<()> {
    let cpu = VigModel::new(cfg, 11 + seed).map_err(cpu_err)?;
    let d = cpu.dims;
    let mut rng = Rng::new(500 + seed);
    let images: Vec<f32> = (0..b * d.channels * h * w).map(|_| 2.0 * rng.uniform() as f32 - 1.0).collect();
    let labels: Vec<u32> = (0..b).map(|_| rng.below(d.classes) as u32).collect();
    let smoothing = 0.1;

    let mut acts = cpu.acts(b, h, w, true).map_err(cpu_err)?;
    let want = cpu.forward(&mut acts, &images, Some(&labels), smoothing).map_err(cpu_err)?.ok_or_else(|| cpu_err("no loss"))?;
    let want_logits = acts.logits().clone();
    let mut g_cpu = vec![0.0f32; cpu.num_params()];
    cpu.backward(&mut acts, &mut g_cpu).map_err(cpu_err)?;

    let mut gpu = GpuVigModel::new(cuda.clone(), &cpu)?;
    let mut gacts = gpu.acts(b, h, w, true)?;
    let got = gpu.forward(&mut gacts, &images, Some(&labels), smoothing)?.ok_or_else(|| cpu_err("no loss"))?;
    let logits = gpu.logits_to_host(&gacts)?;
    gpu.zero_grads()?;
    gpu.backward(&mut gacts)?;
    let g_gpu = gpu.grads_to_host()?;
    // the inference path (`gla vision classify --device cuda`, `gla bench vig --modes infer`):
    // inference-only weights (bf16 copy rounded on the host, f32 only for what the kernels read
    // in f32) and forward-only activations (one block's buffers and one residual stream reused
    // by every block, the scan's forward workspace only) run the training forward's launches in
    // the same order on the same values: the logits must be bitwise equal
    let infer_model = GpuVigModel::new_inference(cuda.clone(), &cpu)?;
    let mut iacts = infer_model.acts(b, h, w, false)?;
    let infer_loss = infer_model.forward(&mut iacts, &images, Some(&labels), smoothing)?.ok_or_else(|| cpu_err("no loss"))?;
    let infer = infer_model.logits_to_host(&iacts)?;
    out.push(row(
        name,
        "infer-logits",
        rel_rmse(&infer, &logits),
        tol::BITWISE,
        format!(
            "inference path (one block's buffers, {} of {} residual streams) vs the training forward; loss {:.6} vs {:.6}",
            2.min(d.depth + 1),
            d.depth + 1,
            infer_loss.loss,
            got.loss
        ),
    ));
    // the same batch again: every gradient bitwise equal (no atomics in the reductions)
    gpu.forward(&mut gacts, &images, Some(&labels), smoothing)?;
    gpu.zero_grads()?;
    gpu.backward(&mut gacts)?;
    let again = gpu.grads_to_host()?;
    out.push(repeat_row(name, &g_gpu, &again));

    let (floor_logits, g_floor) = bf16_floor(&cpu, &images, &labels, (b, h, w))?;
    let lerr = (got.loss - want.loss).abs() / want.loss.abs().max(1e-12);
    out.push(row(name, "loss", lerr, tol::LOSS, format!("cpu {:.6} gpu {:.6}", want.loss, got.loss)));
    let fl = rel_rmse(&floor_logits, &want_logits);
    out.push(row(
        name,
        "logits",
        rel_rmse(&logits, &want_logits),
        floor_tol(fl, tol::LOGITS),
        format!("{b} images {h}x{w}, {} classes; bf16 floor {fl:.2e}; correct cpu {} gpu {}", d.classes, want.correct, got.correct),
    ));
    grad_rows(out, name, &cpu.layout.specs, &g_gpu, &g_cpu, &g_floor, &g_cpu, "");

    // one AdamW step with clipping from the GPU's own gradients against the CPU optimizer (the
    // ViG recipe's: decay on tensors of 2+ dims)
    let acfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
    let (lr, max_norm) = (2e-3f32, 0.5f32);
    let norm_gpu = gpu.adamw_step(&acfg, lr, max_norm)?;
    let mut host = cpu.params.clone();
    let mut g = g_gpu.clone();
    let norm_cpu = clip_grad_norm(&mut g, max_norm);
    let mut opt = AdamW::for_table(acfg, &cpu.layout.specs, cpu.layout.numel);
    opt.update(&mut host, &g, lr);
    let after = gpu.to_host()?.params;
    let delta_gpu: Vec<f32> = after.iter().zip(&cpu.params).map(|(a, b)| a - b).collect();
    let delta_cpu: Vec<f32> = host.iter().zip(&cpu.params).map(|(a, b)| a - b).collect();
    out.push(row(name, "adamw", rel_rmse(&delta_gpu, &delta_cpu), tol::ADAMW, format!("grad norm cpu {norm_cpu:.6} gpu {norm_gpu:.6}")));
    Ok(())
}
