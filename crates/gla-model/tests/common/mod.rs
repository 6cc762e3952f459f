//! Helpers of the model-family tests (delta.rs, hybrid.rs): a fresh scratch folder, the CPU
//! loss, relative error, random tokens, and the tiny MQAR run every family must learn.

use std::path::PathBuf;

use gla_model::config::ModelConfig;
use gla_model::{Activations, GlaModel, Mqar, Rng, TrainConfig, Trainer};

/// A fresh, empty scratch folder of this test process.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The mean loss of `m` on `b` sequences of `t` tokens.
pub fn loss(m: &GlaModel, b: usize, t: usize, ids: &[u32], tg: &[i64]) -> f64 {
    let mut acts = Activations::new(&m.dims, b, t);
    m.forward(&mut acts, ids, tg).unwrap().loss
}

/// Relative RMSE of `a` against `b`.
pub fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// `n` random tokens below `vocab`.
pub fn tokens(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(vocab) as u32).collect()
}

/// 150 steps on a tiny MQAR: the training loss and the held-out loss must each fall by 30%.
pub fn learns_mqar(model: ModelConfig) {
    let task = Mqar { vocab: 32, seq_len: 16, num_kv_pairs: 2, ..Mqar::default() };
    let tc =
        TrainConfig { steps: 150, batch_size: 16, grad_accum: 1, warmup: 2, lr: 1e-2, eval_examples: 64, task, ..TrainConfig::default() };
    let name = model.model_type().to_string();
    let mut tr = Trainer::new(model, tc).unwrap();
    let first = tr.evaluate().unwrap();
    let mut losses = Vec::new();
    for _ in 0..150 {
        losses.push(tr.step().unwrap().loss);
    }
    let last = tr.evaluate().unwrap();
    eprintln!("{name}: {first:?} -> {last:?}");
    let head: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let tail: f64 = losses[140..].iter().sum::<f64>() / 10.0;
    assert!(tail < head * 0.7, "{name}: training loss {head} -> {tail}");
    assert!(last.loss < first.loss * 0.7, "{name}: {first:?} -> {last:?}");
}
