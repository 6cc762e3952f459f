//! The GPU language model's rows: [`GpuModel`] against the CPU model (`gla_model::GlaModel`,
//! f32, itself checked by finite differences and against fla's fixtures) on the same weights and
//! batch: the loss, the logits of the labelled rows, every parameter's gradient, and one AdamW
//! step against the CPU optimizer applied to the GPU's own gradients; [`GpuDecoder`]'s generation
//! against the CPU's; the GPU model against fla's own fixtures. Tolerances: [`crate::tol`] (the
//! model tolerances and the bf16-floor rule, with their reasons); the floor itself is measured
//! here (`bf16_floor`).

use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use gla_model::model::{backward, cpu_logits, forward};
use gla_model::optim::{clip_grad_norm, AdamW, AdamWConfig};
use gla_model::{shift_labels, Activations, Acts, DeltaNetConfig, GatedDeltaNetConfig, GlaConfig, GlaModel, ModelConfig, Rng};

use gla_cuda::ops::{bf16_to_f32, f32_to_bf16};
use gla_cuda::{Cuda, Error, Result};
use gla_model::gpu::{GpuDecoder, GpuModel, GpuState};

use crate::cases;
use crate::row::Row;
use crate::tol::{self, floor_tol};

/// The model configs checked: (name, config, B, T): GLA's ([`gla_configs`]), the delta-rule
/// family's ([`delta_configs`]) and hybrid stacks with softmax-attention layers
/// ([`hybrid_configs`]).
fn configs() -> Vec<(&'static str, ModelConfig, usize, usize)> {
    let gla = gla_configs().into_iter().map(|(n, c, b, t)| (n, ModelConfig::from(c), b, t));
    gla.chain(delta_configs()).chain(hybrid_configs()).collect()
}

/// Hybrid stacks (fla's `attn` key): GLA with one attention layer of GQA and qkv biases, and
/// Gated DeltaNet with two attention layers of a sliding window shorter than T (the flash
/// kernels' window masking; generation's ring buffer wraps). Head dim 64, the GPU kernels'.
fn hybrid_configs() -> Vec<(&'static str, ModelConfig, usize, usize)> {
    let attn = |v: serde_json::Value| Some(v);
    let gla = GlaConfig {
        attn: attn(serde_json::json!({"layers": [1], "num_heads": 2, "num_kv_heads": 1, "qkv_bias": true})),
        ..GlaConfig::tiny(128, 3, 2, 256)
    };
    let gdn = GatedDeltaNetConfig {
        attn: attn(serde_json::json!({"layers": [1, 3], "num_heads": 2, "num_kv_heads": 2, "window_size": 24, "rope_theta": 500.0})),
        ..GatedDeltaNetConfig::tiny(128, 4, 2, 256)
    };
    vec![("lm-hybrid-gla-gqa-bias", gla.into(), 2, 100), ("lm-hybrid-gdn-window", gdn.into(), 2, 100)]
}

/// DeltaNet and Gated DeltaNet (every layer the delta mixer; the GPU's op runs chunked, T = 100
/// crosses a 64-row chunk; decode through the delta decode kernel): fla's defaults at a small
/// size, and each option the GPU implements besides the op (the conv without SiLU, the feature
/// maps, the sum norm, the output gate's activations, the constant beta, grouped value heads,
/// negative eigenvalues, no short conv, value heads wider than 256).
fn delta_configs() -> Vec<(&'static str, ModelConfig, usize, usize)> {
    // two heads of K = V = 64: short conv with SiLU, L2 norm in the op, beta sigmoid
    let dn = DeltaNetConfig::tiny(128, 2, 2, 256);
    // q, k: conv without SiLU, then elu + 1 and the sum norm; the output gate (swish). With the
    // default init (std 0.02) elu + 1 sits near 1, so the sum-normed q, k are near uniform and
    // their weights' gradients (~2e-7) are bf16 noise: the CPU's bf16 floor of k_conv1d is 0.23,
    // above what any tolerance can judge. At std 0.1 those floors are 2.4e-2.
    let dn_sum =
        DeltaNetConfig { qk_activation: "elu".into(), qk_norm: "sum".into(), use_gate: true, initializer_range: 0.1, ..dn.clone() };
    // q, k: conv without SiLU, then relu; no b_proj, the constant beta 2 (allow_neg_eigval)
    let dn_relu = DeltaNetConfig { qk_activation: "relu".into(), use_beta: false, allow_neg_eigval: true, ..dn.clone() };
    // no short conv: silu on q, k, v as feature maps
    let dn_noconv = DeltaNetConfig { use_short_conv: false, ..dn.clone() };
    // two heads of K = 64, V = 128: the decay, the swish output gate
    let gdn = GatedDeltaNetConfig::tiny(128, 2, 2, 256);
    // four value heads over two key heads (GVA), beta in (0, 2), the sigmoid output gate
    let gdn_gva = GatedDeltaNetConfig {
        num_v_heads: Some(4),
        allow_neg_eigval: true,
        output_gate_activation: "sigmoid".into(),
        tie_word_embeddings: true,
        ..gdn.clone()
    };
    // value heads of 320 (head_dim 64 x expand_v 5): the chunked kernels on value sub-heads, the
    // prefill's states moved between the layouts, decode reading them in the caller's layout
    let gdn_wide = GatedDeltaNetConfig { expand_v: 5.0, ..gdn.clone() };
    vec![
        ("lm-deltanet", dn.into(), 2, 100),
        ("lm-deltanet-sum-elu-gate", dn_sum.into(), 2, 100),
        ("lm-deltanet-relu-const-beta", dn_relu.into(), 2, 100),
        ("lm-deltanet-noconv", dn_noconv.into(), 3, 64),
        ("lm-gdn", gdn.into(), 2, 100),
        ("lm-gdn-gva-neg-sigmoid", gdn_gva.into(), 2, 130),
        ("lm-gdn-wide-v", gdn_wide.into(), 2, 100),
    ]
}

/// The GLA configs checked: (name, config, B, T).
fn gla_configs() -> Vec<(&'static str, GlaConfig, usize, usize)> {
    let base = GlaConfig::tiny(64, 2, 2, 256);
    let conv_gqa = GlaConfig { use_short_conv: true, conv_size: 4, num_kv_heads: Some(1), ..base.clone() };
    // the two configs above have K = 16 (recurrent backward); this one has one head of K = 64,
    // V = 256, split into two heads of 128 on the GPU (chunked backward), a tied head and a
    // clamped gate
    let split = GlaConfig { expand_v: 2.0, tie_word_embeddings: true, clamp_min: Some(-0.05), ..GlaConfig::tiny(128, 2, 1, 256) };
    let k64 = GlaConfig { expand_v: 1.0, ..GlaConfig::tiny(128, 2, 1, 256) };
    let k64_clamp = GlaConfig { clamp_min: Some(-0.05), ..k64.clone() };
    // fla's feature map on q and k (gla_7B uses relu) after a short conv, chunked backward
    let fmap = GlaConfig { feature_map: Some("relu".into()), use_short_conv: true, ..k64.clone() };
    // one key head of 256 (fla's gla_1B head shape): the K-tiled chunk kernels, the recurrent
    // kernels at K = 256 for T <= 64 and decode
    let k256 = GlaConfig { expand_k: 1.0, expand_v: 0.5, ..GlaConfig::tiny(256, 2, 1, 256) };
    vec![
        ("lm-tiny", base, 2, 100),
        ("lm-conv-gqa", conv_gqa, 2, 130),
        ("lm-k64", k64, 2, 100),
        ("lm-k64-clamp", k64_clamp, 2, 100),
        ("lm-vsplit-tied", split, 3, 64),
        ("lm-fmap-relu-conv", fmap, 2, 100),
        ("lm-k256", k256, 2, 100),
    ]
}

/// Relative RMSE of `a` against the reference `b`.
pub(crate) fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let b64: Vec<f64> = b.iter().map(|&x| f64::from(x)).collect();
    cases::rel_rmse(a, &b64)
}

/// A model row (bf16 GPU against its reference).
pub(crate) fn row(case: &str, tensor: &'static str, err: f64, tol: f64, note: String) -> Row {
    Row::new(case, "model", "bf16", tensor, err, tol).with_note(note)
}

/// The `repeat` row of case `name`: the share of gradients of a second, identical step (`again`)
/// that differ bitwise from the first step's (`first`); the reductions use no atomics, so none may.
pub(crate) fn repeat_row(name: &str, first: &[f32], again: &[f32]) -> Row {
    let differ = again.iter().zip(first).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    row(
        name,
        "repeat",
        differ as f64 / first.len().max(1) as f64,
        tol::BITWISE,
        format!("{differ} of {} gradients differ bitwise between two identical steps", first.len()),
    )
}

/// A CPU model's error as this check's error type.
pub(crate) fn cpu_err(e: impl std::fmt::Display) -> Error {
    Error::Op(gla_core::Error::Unsupported { backend: "cpu", what: e.to_string() })
}

/// The `grad-max` and `grad-all` rows of case `name`: the GPU's gradients `got` against
/// `reference`, each parameter (`specs`) judged by its own bf16 floor, the relative RMSE of the
/// CPU model's bf16-rounded gradients `floor` against its f32 ones `cpu` ([`floor_tol`]).
/// `vs` prefixes the notes (the reference's name, or empty).
#[allow(clippy::too_many_arguments)]
pub(crate) fn grad_rows(
    out: &mut Vec<Row>,
    name: &str,
    specs: &[gla_core::params::ParamSpec],
    got: &[f32],
    reference: &[f32],
    floor: &[f32],
    cpu: &[f32],
    vs: &str,
) {
    // worst parameter by error / tolerance
    let mut worst = (f64::NEG_INFINITY, 0.0, 0.0, String::new());
    for spec in specs {
        let e = rel_rmse(&got[spec.range()], &reference[spec.range()]);
        let tol = floor_tol(rel_rmse(&floor[spec.range()], &cpu[spec.range()]), tol::GRAD);
        let ratio = if e.is_finite() { e / tol } else { f64::INFINITY };
        if ratio > worst.0 {
            worst = (ratio, e, tol, spec.name.clone());
        }
    }
    out.push(row(name, "grad-max", worst.1, worst.2, format!("{vs}worst (error / tolerance) {}", worst.3)));
    let floor_all = rel_rmse(floor, cpu);
    out.push(row(
        name,
        "grad-all",
        rel_rmse(got, reference),
        floor_tol(floor_all, tol::GRAD),
        format!("{vs}{} parameters; bf16 floor {floor_all:.2e}", got.len()),
    ));
}

/// The conditioning floor's model: the same CPU model with its GEMM matrices rounded to bf16
/// (every 2-D weight but an untied embedding table, which the GPU reads in f32 for the lookup).
fn gemm_rounded(cpu: &GlaModel) -> Result<GlaModel> {
    let mut rounded = cpu.params.clone();
    for (i, spec) in cpu.layout.specs.iter().enumerate() {
        if spec.shape.len() == 2 && (i != cpu.layout.embeddings || cpu.layout.lm_head.is_none()) {
            rounded[spec.range()].iter_mut().for_each(|x| *x = bf16_to_f32(f32_to_bf16(*x)));
        }
    }
    GlaModel::from_params(cpu.config.clone(), rounded).map_err(cpu_err)
}

/// The CPU model's bf16 floor on a batch: its logits of every row `[B*T, vocab]` and its
/// gradients (`scale` as for the GPU) when it stores data as the GPU does, its GEMM matrices
/// ([`gemm_rounded`]) and every activation ([`gla_model::Cpu::emulating_bf16`]) rounded to bf16,
/// all arithmetic in f32. Its distance from the f32 model is what bf16 storage alone moves the
/// outputs ([`crate::tol`]).
fn bf16_floor(cpu: &GlaModel, ids: &[u32], targets: &[i64], b: usize, t: usize, scale: f32) -> Result<(Vec<f32>, Vec<f32>)> {
    let rounded = gemm_rounded(cpu)?;
    let be = rounded.cpu().emulating_bf16();
    let mut acts = Acts::alloc(&be, be.layout(), b, t, false, 0).map_err(cpu_err)?;
    forward(&be, be.layout(), &mut acts, ids, targets).map_err(cpu_err)?;
    let mut grads = vec![0.0f32; cpu.num_params()];
    backward(&be, be.layout(), &mut acts, &mut grads, scale).map_err(cpu_err)?;
    let logits = cpu_logits(&be, ids, b, t).map_err(cpu_err)?;
    Ok((logits, grads))
}

/// What the GPU is compared with: the CPU f32 model's own loss, logits and gradients, or fla's.
struct Reference<'a> {
    what: &'static str,
    loss: f64,
    /// `[B*T, vocab]`, every row
    logits: &'a [f32],
    grads: &'a [f32],
}

/// The rows of `logits [B*T, vocab]` whose target is not -100, in order (what the GPU keeps).
fn labelled_rows(logits: &[f32], targets: &[i64], vocab: usize) -> Vec<f32> {
    targets
        .iter()
        .enumerate()
        .filter(|(_, &t)| t != gla_model::IGNORE_INDEX)
        .flat_map(|(r, _)| logits[r * vocab..(r + 1) * vocab].iter().copied())
        .collect()
}

/// Loss, per-parameter and overall gradient rows of the GPU model against `reference` on one
/// batch (tolerances from the CPU model's bf16 floor, [`bf16_floor`] and [`crate::tol`]); returns the
/// GPU model (after the backward) for further checks.
#[allow(clippy::too_many_arguments)]
fn compare(
    cuda: &Arc<Cuda>,
    name: &str,
    cpu: &GlaModel,
    ids: &[u32],
    targets: &[i64],
    b: usize,
    t: usize,
    scale: f32,
    reference: Option<Reference<'_>>,
    out: &mut Vec<Row>,
) -> Result<(GpuModel, Vec<f32>)> {
    let mut acts = Activations::new(&cpu.dims, b, t);
    let want = cpu.forward(&mut acts, ids, targets).map_err(cpu_err)?;
    let mut g_cpu = vec![0.0f32; cpu.num_params()];
    cpu.backward(&mut acts, &mut g_cpu, scale).map_err(cpu_err)?;

    let mut gpu = GpuModel::new(cuda.clone(), cpu)?;
    let mut gacts = gpu.activations(b, t)?;
    let got = gpu.forward(&mut gacts, ids, targets)?;
    gpu.zero_grads()?;
    gpu.backward(&mut gacts, scale)?;
    let g_gpu = gpu.grads_to_host()?;
    // the same batch again: every gradient bitwise equal (no atomics in the reductions)
    gpu.forward(&mut gacts, ids, targets)?;
    gpu.zero_grads()?;
    gpu.backward(&mut gacts, scale)?;
    let again = gpu.grads_to_host()?;
    out.push(repeat_row(name, &g_gpu, &again));

    let (floor_logits_all, g_floor) = bf16_floor(cpu, ids, targets, b, t, scale)?;

    let (ref_what, ref_loss, ref_grads, ref_logits) = match &reference {
        Some(r) => (r.what, r.loss, r.grads, labelled_rows(r.logits, targets, cpu.dims.vocab)),
        None => ("cpu", want.loss, &g_cpu[..], labelled_rows(&cpu.logits(ids, b, t).map_err(cpu_err)?, targets, cpu.dims.vocab)),
    };
    let lerr = (got.loss - ref_loss).abs() / ref_loss.abs().max(1e-12);
    out.push(row(name, "loss", lerr, tol::LOSS, format!("{ref_what} {ref_loss:.6} gpu {:.6}", got.loss)));
    let logits = gpu.logits_to_host(&gacts)?;
    let floor_logits = rel_rmse(&labelled_rows(&floor_logits_all, targets, cpu.dims.vocab), &ref_logits);
    out.push(row(
        name,
        "logits",
        rel_rmse(&logits, &ref_logits),
        floor_tol(floor_logits, tol::LOGITS),
        format!("vs {ref_what}; {} labelled rows; bf16 floor {floor_logits:.2e}", got.n_valid),
    ));
    // Per-row argmax agreement with the reference logits. A near-tie may flip under bf16 without
    // any defect, so a row counts against the GPU only when the reference prefers its own token
    // by more than 4x the bf16 floor's typical logit error (floor relative RMSE x logits RMS).
    let vocab = cpu.dims.vocab;
    let argmax =
        |r: &[f32]| r.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0;
    let rms = (ref_logits.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / ref_logits.len().max(1) as f64).sqrt();
    let margin = 4.0 * floor_logits * rms;
    let rows_n = logits.len() / vocab.max(1);
    let (mut differ, mut decided) = (0usize, 0usize);
    for (g, r) in logits.chunks_exact(vocab).zip(ref_logits.chunks_exact(vocab)) {
        let (ag, ar) = (argmax(g), argmax(r));
        if ag != ar {
            differ += 1;
            if f64::from(r[ar] - r[ag]) > margin {
                decided += 1;
            }
        }
    }
    let frac = decided as f64 / rows_n.max(1) as f64;
    out.push(row(
        name,
        "argmax",
        frac,
        tol::ARGMAX,
        format!("{differ} of {rows_n} rows pick another token than {ref_what}, {decided} of them by a margin above {margin:.2e}"),
    ));
    grad_rows(out, name, &cpu.layout.specs, &g_gpu, ref_grads, &g_floor, &g_cpu, &format!("vs {ref_what}; "));
    Ok((gpu, g_gpu))
}

/// Runs the model checks on `cuda`, appending rows to `out`.
///
/// # Errors
/// Set-up failures (allocation, a config the GPU model refuses).
pub fn model_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    for (seed, (name, cfg, b, t)) in configs().into_iter().enumerate() {
        if let Err(e) = train_case(cuda, seed, name, cfg, b, t, out) {
            out.push(error_row(name, &e));
        }
    }
    Ok(())
}

/// A case that could not run: a failing row that carries the error (the other cases still run).
fn error_row(name: &str, e: &Error) -> Row {
    Row::failed(name, "model", "bf16", 0.0, e)
}

/// One random-config case of [`model_check`].
fn train_case(cuda: &Arc<Cuda>, seed: usize, name: &str, cfg: ModelConfig, b: usize, t: usize, out: &mut Vec<Row>) -> Result<()> {
    {
        let cpu = GlaModel::new(cfg, 7 + seed as u64).map_err(cpu_err)?;
        let vocab = cpu.dims.vocab;
        let mut rng = Rng::new(100 + seed as u64);
        let ids: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
        let mut labels: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
        // some ignored positions, as padding would give
        for l in labels.iter_mut().step_by(7) {
            *l = gla_model::IGNORE_INDEX;
        }
        let targets = shift_labels(&labels, t);
        let scale = 0.5f32; // as with two accumulation steps
        let (mut gpu, g_gpu) = compare(cuda, name, &cpu, &ids, &targets, b, t, scale, None, out)?;

        // one AdamW step with clipping, from the GPU's own gradients, against the CPU optimizer
        let cfg = AdamWConfig::default();
        let (lr, max_norm) = (3e-3f32, 0.5f32);
        let norm_gpu = gpu.adamw_step(&cfg, lr, max_norm)?;
        let mut host = cpu.params.clone();
        let mut g = g_gpu.clone();
        let norm_cpu = clip_grad_norm(&mut g, max_norm);
        let mut opt = AdamW::new(cfg, &cpu.layout);
        opt.update(&mut host, &g, lr);
        let after = gpu.to_host()?.params;
        let delta_gpu: Vec<f32> = after.iter().zip(&cpu.params).map(|(a, b)| a - b).collect();
        let delta_cpu: Vec<f32> = host.iter().zip(&cpu.params).map(|(a, b)| a - b).collect();
        out.push(row(
            name,
            "adamw",
            rel_rmse(&delta_gpu, &delta_cpu),
            tol::ADAMW,
            format!("grad norm cpu {norm_cpu:.6} gpu {norm_gpu:.6}"),
        ));
    }
    Ok(())
}

/// Generation on the GPU ([`GpuDecoder`]: chunked prefill from a state, recurrent decode) against
/// the CPU's (`GlaModel::prefill_batch` / `decode_batch`): two prompts of 20 and 70 tokens (the
/// second crosses a chunk; one at a time), 4 decode steps of both together (the first eager, the
/// others through the captured CUDA graph), 70 more tokens for each from their states (one
/// batched prefill), 2 decode steps with the states in swapped order (the graph replayed with
/// another state table), 2 decode steps of one; every logit row compared, with the tolerance
/// raised to twice the CPU model's own bf16-GEMM floor as for training; the number of graph
/// replays is checked too.
///
/// # Errors
/// Set-up failures.
pub fn generation_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    for (seed, (name, cfg, _, _)) in configs().into_iter().enumerate() {
        let name = format!("{name}-gen");
        if let Err(e) = generation_case(cuda, seed, &name, cfg, out) {
            out.push(error_row(&name, &e));
        }
    }
    Ok(())
}

/// The token schedule of one generation case: batched prefill, batched decode, a second
/// (continuing) prefill from the non-zero states, then decode steps of sequence 1 alone.
struct GenPlan {
    prompts: Vec<Vec<u32>>,
    steps: Vec<Vec<u32>>,
    second: Vec<Vec<u32>>,
    /// decode steps of both with the states in reverse order (a captured step replayed with
    /// another state table)
    swapped: Vec<Vec<u32>>,
    solo: Vec<u32>,
}

/// Runs `plan` through any decoder, concatenating every logit row it returns.
fn run_plan<D: gla_model::generate::Decoder>(dec: &D, plan: &GenPlan) -> gla_model::Result<(Vec<f32>, Vec<D::State>)> {
    let mut states = vec![dec.new_state()?, dec.new_state()?];
    let mut all = Vec::new();
    {
        let mut sref: Vec<&mut D::State> = states.iter_mut().collect();
        let refs: Vec<&[u32]> = plan.prompts.iter().map(Vec::as_slice).collect();
        all.extend(dec.prefill_batch(&refs, &mut sref)?.concat());
        for ids in &plan.steps {
            all.extend(dec.decode_batch(ids, &mut sref)?.concat());
        }
        let refs: Vec<&[u32]> = plan.second.iter().map(Vec::as_slice).collect();
        all.extend(dec.prefill_batch(&refs, &mut sref)?.concat());
        sref.reverse();
        for ids in &plan.swapped {
            all.extend(dec.decode_batch(ids, &mut sref)?.concat());
        }
    }
    for &id in &plan.solo {
        all.extend(dec.decode_batch(&[id], &mut [&mut states[1]])?.concat());
    }
    Ok((all, states))
}

/// One config of [`generation_check`].
fn generation_case(cuda: &Arc<Cuda>, seed: usize, name: &str, cfg: ModelConfig, out: &mut Vec<Row>) -> Result<()> {
    let cpu = GlaModel::new(cfg, 7 + seed as u64).map_err(cpu_err)?;
    let vocab = cpu.dims.vocab;
    let mut rng = Rng::new(300 + seed as u64);
    let mut draw = |l: usize| -> Vec<u32> { (0..l).map(|_| rng.below(vocab) as u32).collect() };
    let plan = GenPlan {
        prompts: vec![draw(20), draw(70)],
        steps: (0..4).map(|_| draw(2)).collect(),
        second: vec![draw(70), draw(70)],
        swapped: (0..2).map(|_| draw(2)).collect(),
        solo: draw(2),
    };
    let (want, _) = run_plan(&cpu, &plan).map_err(cpu_err)?;
    let (floor_run, _) = run_plan(&gemm_rounded(&cpu)?, &plan).map_err(cpu_err)?;
    let floor = rel_rmse(&floor_run, &want);
    let dec = GpuDecoder::new(cuda.clone(), &cpu)?;
    let (got, states) = run_plan(&dec, &plan).map_err(|e| unsupported_model(e.to_string()))?;
    let tol = floor_tol(floor, tol::LOGITS);
    out.push(row(
        name,
        "logits",
        rel_rmse(&got, &want),
        tol,
        format!(
            "prefill 20 + 70, 4 batched decode steps, prefill 70 + 70 more (one batch), 2 steps in swapped order, 2 of one sequence; bf16 floor {floor:.2e}"
        ),
    ));
    let seen: Vec<usize> = states.iter().map(GpuState::seen_tokens).collect();
    out.push(row(
        name,
        "seen",
        if seen == [96, 148] { 0.0 } else { 1.0 },
        tol::BITWISE,
        format!("tokens per state {seen:?} (expected [96, 148])"),
    ));
    // the batch-2 step is captured at its second run and replayed 5 times (2 with the states
    // swapped), the batch-1 step once
    if cuda.options().graphs {
        let g = dec.graph_steps();
        out.push(row(
            name,
            "graph",
            if g == 6 { 0.0 } else { 1.0 },
            tol::BITWISE,
            format!("{g} decode steps replayed a CUDA graph (expected 6)"),
        ));
    }
    Ok(())
}

fn unsupported_model(what: String) -> Error {
    Error::Op(gla_core::Error::Unsupported { backend: "cuda", what })
}

/// The GPU model against fla's own fixtures (`tools/fla_fixtures.py`: a tiny fla model, one
/// batch, fla's loss and every parameter's gradient, f32 with IEEE dots): every directory under
/// `root` holding `config.json`, `model.safetensors` and `fixture.safetensors`. Returns how many
/// were checked (0 when `root` holds none; the caller says so) and, with the reason, the fixtures
/// whose model the GPU's kernels do not take (the hybrid fixtures' attention heads of 8: the GPU
/// attention kernels take head dims 64 and 128; such a model is checked on the CPU against fla
/// by gla-model's fla_parity test, and its layers on the GPU by the hybrid rows of `configs`).
///
/// # Errors
/// A fixture that does not load (named), set-up failures.
pub fn fla_fixture_check(cuda: &Arc<Cuda>, root: &Path, out: &mut Vec<Row>) -> Result<(usize, Vec<String>)> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("fixture.safetensors").is_file()).collect())
        .unwrap_or_default();
    dirs.sort();
    let bad = |what: String| Error::Op(gla_core::Error::Unsupported { backend: "fixture", what });
    let mut skipped = Vec::new();
    for dir in &dirs {
        let name = format!("fla-{}", dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()));
        let cpu = gla_model::checkpoint::load_model(dir).map_err(cpu_err)?;
        let attn_dims = cpu.dims.mixers.iter().filter_map(|m| match m {
            gla_model::config::MixerDims::Attn(a) => Some(a.head_dim),
            _ => None,
        });
        if let Some(d) = attn_dims.into_iter().find(|&d| gla_cuda::dispatch::attn::attn_dims(d, d).is_err()) {
            skipped.push(format!("{name}: attention head dim {d} (the GPU kernels take 64 and 128)"));
            continue;
        }
        let path = dir.join("fixture.safetensors");
        let bytes = std::fs::read(&path).map_err(|e| bad(format!("read {}: {e}", path.display())))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let tensor = |n: &str, dtype: Dtype| {
            let t = st.tensor(n).map_err(|_| bad(format!("{}: no tensor {n}", path.display())))?;
            if t.dtype() != dtype {
                return Err(bad(format!("{}: {n} is {:?}, expected {dtype:?}", path.display(), t.dtype())));
            }
            Ok(t)
        };
        let ids_t = tensor("input_ids", Dtype::I64)?;
        let [b, t] = <[usize; 2]>::try_from(ids_t.shape()).map_err(|_| bad(format!("{}: input_ids is not [B, T]", path.display())))?;
        let ids64: Vec<i64> = ids_t.data().chunks_exact(8).map(|x| i64::from_le_bytes(x.try_into().unwrap_or([0; 8]))).collect();
        let f32s = |d: &[u8]| -> Vec<f32> { d.chunks_exact(4).map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]])).collect() };
        let loss = f64::from(f32s(tensor("loss", Dtype::F32)?.data()).first().copied().unwrap_or(f32::NAN));
        let logits = f32s(tensor("logits", Dtype::F32)?.data());
        if logits.len() != b * t * cpu.dims.vocab {
            return Err(bad(format!(
                "{}: logits has {} values, expected B*T*vocab = {}",
                path.display(),
                logits.len(),
                b * t * cpu.dims.vocab
            )));
        }
        let mut grads = vec![0.0f32; cpu.num_params()];
        for spec in &cpu.layout.specs {
            let g = f32s(tensor(&format!("grad.{}", spec.name), Dtype::F32)?.data());
            if g.len() != spec.numel() {
                return Err(bad(format!("{}: grad.{} has {} values, expected {}", path.display(), spec.name, g.len(), spec.numel())));
            }
            grads[spec.range()].copy_from_slice(&g);
        }
        let vocab = cpu.dims.vocab as i64;
        if let Some(x) = ids64.iter().find(|&&x| !(0..vocab).contains(&x)) {
            return Err(bad(format!("{}: input id {x} outside the vocabulary", path.display())));
        }
        let ids: Vec<u32> = ids64.iter().map(|&x| x as u32).collect();
        let targets = shift_labels(&ids64, t);
        compare(cuda, &name, &cpu, &ids, &targets, b, t, 1.0, Some(Reference { what: "fla", loss, logits: &logits, grads: &grads }), out)?;
    }
    Ok((dirs.len() - skipped.len(), skipped))
}
