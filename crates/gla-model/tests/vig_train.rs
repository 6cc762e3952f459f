//! ViG training on the CPU (gla-model's `vig::train`): the moving average of the weights (its
//! update rule, its warm-up, what a checkpoint saves and that `resume` restores it exactly),
//! sharded steps (the batch split into parts run side by side: the same step as the whole batch
//! up to rounding, and bit for bit the same whatever the thread count), the evaluation's
//! independence of the thread count, and the typed errors of bad settings.

use gla_model::vig::data::{Augment, ImageSet};
use gla_model::vig::pth::load_safetensors;
use gla_model::vig::train::{ema_decay, ema_update, evaluate, shard_sizes, VigTrainConfig, VigTrainer, TRAIN_WEIGHTS_FILE};
use gla_model::vig::{VigConfig, VigModel};
use gla_model::Error;

/// A small ViG-T-shaped config: 16x16 gray images, 4 classes (the synthetic set), 4x4 tokens.
fn tiny(drop_path_rate: f64) -> VigConfig {
    VigConfig {
        img_size: 16,
        patch_size: 4,
        stride: 4,
        depth: 2,
        num_heads: 2,
        embed_dim: 16,
        channels: 1,
        num_classes: 4,
        intermediate_size: Some(24),
        drop_path_rate,
        ..VigConfig::vig_t()
    }
}

fn cfg(steps: u64, shards: usize, ema: f64) -> VigTrainConfig {
    VigTrainConfig {
        steps,
        batch_size: 12,
        warmup: 2,
        augment: Augment { pad: 2, flip: true },
        seed: 3,
        shards,
        ema,
        ..VigTrainConfig::default()
    }
}

/// `f` run with rayon's global-pool queries answering `threads` (what [`VigTrainer`] and
/// [`evaluate`] size their lanes by).
fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn ema_decay_warms_up_then_holds() {
    // (1 + t) / (10 + t): 0.1 at the first step, 0.5 at t = 8, the configured decay later
    assert_eq!(ema_decay(0.999, 0), 0.1);
    assert_eq!(ema_decay(0.999, 8), 0.5);
    assert_eq!(ema_decay(0.9, 1000), 0.9);
    assert_eq!(ema_decay(0.999, 8990), 0.999);
    assert!(ema_decay(0.999, 8980) < 0.999);
}

#[test]
fn ema_update_is_the_convex_combination() {
    let mut e = vec![1.0f32, -2.0, 0.5, 3.0];
    let w = [3.0f32, 2.0, 0.5, -1.0];
    ema_update(&mut e, &w, 0.75);
    // 0.75 e + 0.25 w
    assert_eq!(e, vec![1.5, -1.0, 0.5, 2.0]);
    // decay 0 copies the weights
    ema_update(&mut e, &w, 0.0);
    assert_eq!(e, w.to_vec());
}

/// The trainer's average follows the update rule step by step from the initial weights.
#[test]
fn trainer_ema_follows_the_rule() {
    let train = ImageSet::synthetic(48, 16, 1);
    let c = cfg(5, 1, 0.99);
    let mut tr = VigTrainer::new(VigModel::new(tiny(0.0), 1).unwrap(), c).unwrap();
    let mut expect = tr.model.params.clone();
    assert_eq!(tr.eval_model().params, expect);
    for t in 0..5 {
        tr.step(&train).unwrap();
        ema_update(&mut expect, &tr.model.params, ema_decay(0.99, t));
        assert_eq!(tr.eval_model().params, expect, "step {t}");
    }
    assert!(tr.eval_model().params != tr.model.params);
    // without an EMA the evaluated model is the trained one
    let mut plain = VigTrainer::new(VigModel::new(tiny(0.0), 1).unwrap(), cfg(5, 1, 0.0)).unwrap();
    plain.step(&train).unwrap();
    assert_eq!(plain.eval_model().params, plain.model.params);
}

/// A run interrupted and resumed takes bit for bit the steps of the uninterrupted one, with the
/// average and the shards; the checkpoint's model.safetensors is the average, the stepped
/// weights are in train_weights.safetensors.
#[test]
fn resume_with_ema_and_shards_is_exact() {
    let train = ImageSet::synthetic(40, 16, 1);
    let c = cfg(6, 2, 0.9);
    let mut full = VigTrainer::new(VigModel::new(tiny(0.3), 1).unwrap(), c).unwrap();
    for _ in 0..6 {
        full.step(&train).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("gla-vig-ema-resume-{}", std::process::id()));
    let mut half = VigTrainer::new(VigModel::new(tiny(0.3), 1).unwrap(), c).unwrap();
    for _ in 0..3 {
        half.step(&train).unwrap();
    }
    let ckpt = half.save(&dir, 1).unwrap();
    let published = load_safetensors(&ckpt.join("model.safetensors"), tiny(0.3)).unwrap();
    let stepped = load_safetensors(&ckpt.join(TRAIN_WEIGHTS_FILE), tiny(0.3)).unwrap();
    assert_eq!(published.params, half.eval_model().params);
    assert_eq!(stepped.params, half.model.params);
    drop(half);
    let mut resumed = VigTrainer::resume(&dir, |_| {}).unwrap();
    assert_eq!(resumed.cfg, c);
    for _ in 0..3 {
        resumed.step(&train).unwrap();
    }
    assert!(resumed.model.params == full.model.params, "the resumed weights differ");
    assert!(resumed.eval_model().params == full.eval_model().params, "the resumed average differs");
    assert_eq!(resumed.losses, full.losses);
    // the average cannot be switched on or off mid-run
    let err = VigTrainer::resume(&dir, |c| c.ema = 0.0).unwrap_err();
    assert!(matches!(err, Error::Resume { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A step over 3 shards is the whole batch's step up to rounding (the same loss, the same
/// weights after it), and bit for bit the same on 1, 2 or 3 threads.
#[test]
fn sharded_steps_match_the_whole_batch() {
    let train = ImageSet::synthetic(48, 16, 1);
    let run = |shards: usize, threads: usize| {
        with_threads(threads, || {
            let mut tr = VigTrainer::new(VigModel::new(tiny(0.3), 1).unwrap(), cfg(3, shards, 0.0)).unwrap();
            let steps: Vec<_> = (0..3).map(|_| tr.step(&train).unwrap()).collect();
            (steps, tr.model.params)
        })
    };
    let (whole, w_whole) = run(1, 2);
    let (one, w_one) = run(3, 1);
    let (two, w_two) = run(3, 2);
    let (three, w_three) = run(3, 3);
    assert_eq!(one, two);
    assert_eq!(one, three);
    assert!(w_one == w_two && w_one == w_three, "the thread count changed the weights");
    let s = &one[0];
    assert!((s.loss - whole[0].loss).abs() < 1e-6 * whole[0].loss.abs(), "loss {} vs {}", s.loss, whole[0].loss);
    assert!((s.grad_norm - whole[0].grad_norm).abs() < 1e-5 * whole[0].grad_norm, "{} vs {}", s.grad_norm, whole[0].grad_norm);
    assert_eq!(s.acc, whole[0].acc);
    // three AdamW steps of lr ~1e-3 from the same gradients up to rounding
    let d = max_abs_diff(&w_one, &w_whole);
    assert!(d < 1e-4, "weights differ by {d}");
    assert_eq!(shard_sizes(12, 3), vec![4, 4, 4]);
    assert_eq!(shard_sizes(10, 4), vec![3, 3, 2, 2]);
    assert_eq!(shard_sizes(5, 1), vec![5]);
}

/// The evaluation spreads its batches over the threads and sums them in batch order: the same
/// numbers on any thread count, a last batch shorter than the others included.
#[test]
fn evaluation_does_not_depend_on_the_threads() {
    let test = ImageSet::synthetic(70, 16, 2);
    let m = VigModel::new(tiny(0.0), 5).unwrap();
    let one = with_threads(1, || evaluate(&m, &test, 70, 16).unwrap());
    let two = with_threads(2, || evaluate(&m, &test, 70, 16).unwrap());
    let three = with_threads(3, || evaluate(&m, &test, 70, 16).unwrap());
    assert_eq!(one, two);
    assert_eq!(one, three);
    // the batch size only regroups the same per-image numbers
    let whole = evaluate(&m, &test, 70, 70).unwrap();
    assert_eq!(one.0, whole.0);
    assert!((one.1 - whole.1).abs() < 1e-6 * whole.1.abs());
}

#[test]
fn bad_settings_are_typed_errors() {
    let m = || VigModel::new(tiny(0.0), 1).unwrap();
    for (c, key) in [
        (VigTrainConfig { shards: 0, ..cfg(1, 1, 0.0) }, "shards"),
        (VigTrainConfig { shards: 13, ..cfg(1, 1, 0.0) }, "shards"),
        (cfg(1, 1, 1.0), "ema"),
        (cfg(1, 1, -0.5), "ema"),
    ] {
        match VigTrainer::new(m(), c) {
            Err(Error::BadArg { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: {other:?}"),
        }
    }
}

/// The training states (losses, evaluations) are JSON: every f64 must read back bit for bit, or
/// a resumed run's history differs from the uninterrupted one's. serde_json's default parser
/// lands some shortest representations one ulp off (1.3865366971471613 among them, a loss this
/// test file's resume run produces without AVX-512); `float_roundtrip` parses them exactly.
#[test]
fn training_state_floats_read_back_exactly() {
    let mut xs = vec![1.3865366971471613f64, 0.1, 1.0 / 3.0, f64::MIN_POSITIVE, 5e-324, 1.7976931348623157e308];
    let mut s = 0x9e3779b97f4a7c15u64;
    for _ in 0..20000 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        // finite values over the whole exponent range, and losses near 1
        let x = f64::from_bits(s & !(0x7ffu64 << 52) | ((s >> 52) % 2046 + 1) << 52);
        xs.push(x);
        xs.push(1.0 + (s >> 11) as f64 / (1u64 << 53) as f64);
    }
    let back: Vec<f64> = serde_json::from_str(&serde_json::to_string(&xs).unwrap()).unwrap();
    for (a, b) in xs.iter().zip(&back) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a:e} read back as {b:e}");
    }
}
