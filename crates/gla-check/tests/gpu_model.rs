//! The GPU language model's rows on a GPU (feature `cuda`; `gla check --device cuda --model-only`
//! runs the same rows and fla's fixtures): every model and generation row of
//! `gla_check::cuda::model` must pass, for GLA and the delta-rule family (DeltaNet, Gated
//! DeltaNet: loss, logits, every gradient, AdamW, prefill and decode through the captured CUDA
//! graph against the CPU model; a training step allocating nothing after its first). Skipped
//! with a notice on a machine without a usable GPU.
#![cfg(feature = "cuda")]

use gla_check::cuda::model::{generation_check, model_check};
use gla_check::row::failed;
use gla_check::{format_table, Row};
use gla_cuda::{Cuda, Error};

/// The device, or `None` (with a notice) when this machine has no usable GPU.
fn device() -> Option<std::sync::Arc<Cuda>> {
    match Cuda::new() {
        Ok(c) => Some(c),
        Err(e @ (Error::NoDevice(_) | Error::NoNvrtc(_))) => {
            eprintln!("NOTICE: no usable GPU, the GPU model rows SKIPPED: {e}");
            None
        }
        Err(e) => panic!("CUDA set-up failed: {e}"),
    }
}

fn assert_all_pass(rows: &[Row]) {
    assert!(!rows.is_empty(), "no row was checked");
    assert_eq!(failed(rows), 0, "failing rows:\n{}", format_table(rows));
}

#[test]
fn the_gpu_model_matches_the_cpu_model() {
    let Some(cuda) = device() else { return };
    let mut rows = Vec::new();
    model_check(&cuda, &mut rows).expect("the model checks run");
    // every config, GLA and delta-rule, made its rows
    for name in ["lm-tiny", "lm-deltanet", "lm-deltanet-sum-elu-gate", "lm-deltanet-relu-const-beta", "lm-gdn", "lm-gdn-gva-neg-sigmoid"] {
        assert!(rows.iter().any(|r| r.case == name && r.tensor == "grad-all"), "{name}: no gradient row\n{}", format_table(&rows));
    }
    assert_all_pass(&rows);
}

#[test]
fn the_gpu_decoder_matches_the_cpu_decoder() {
    let Some(cuda) = device() else { return };
    let mut rows = Vec::new();
    generation_check(&cuda, &mut rows).expect("the generation checks run");
    assert_all_pass(&rows);
}

#[test]
fn a_gpu_training_step_allocates_nothing_after_its_first() {
    let Some(cuda) = device() else { return };
    let mut rows = Vec::new();
    gla_check::cuda::alloc::alloc_check(&cuda, &mut rows).expect("the allocation checks run");
    assert!(rows.iter().any(|r| r.case == "alloc-gdn-gva"), "no delta-rule row\n{}", format_table(&rows));
    assert_all_pass(&rows);
}
