//! AdamW, clipping, schedule, MQAR data, checkpoints and exact resume.

use std::path::PathBuf;

use gla_model::checkpoint::{load_model, save_model, write_atomic, LATEST_FILE, WEIGHTS_FILE};
use gla_model::optim::{clip_grad_norm, cosine_lr, AdamW, AdamWConfig};
use gla_model::{Error, GlaConfig, GlaModel, Layout, Mqar, TrainConfig, Trainer, IGNORE_INDEX};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-model-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn adamw_matches_the_formula_and_decays_matrices_only() {
    let c = GlaConfig::tiny(16, 1, 2, 9);
    let lay = Layout::new(&c.dims().unwrap());
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(cfg, &lay);
    let mut p: Vec<f32> = (0..lay.numel).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let p0 = p.clone();
    let g: Vec<f32> = (0..lay.numel).map(|i| ((i % 5) as f32 - 2.0) * 0.01).collect();
    let lr = 0.01f32;
    opt.update(&mut p, &g, lr);
    opt.update(&mut p, &g, lr);
    for s in &lay.specs {
        let i = s.offset;
        let wd = if s.shape.len() >= 2 { 0.1f64 } else { 0.0 };
        let (mut x, mut m, mut v) = (p0[i] as f64, 0.0f64, 0.0f64);
        for t in 1..=2 {
            x -= lr as f64 * wd * x;
            m = 0.9 * m + 0.1 * g[i] as f64;
            v = 0.95 * v + 0.05 * (g[i] as f64).powi(2);
            x -= lr as f64 * (m / (1.0 - 0.9f64.powi(t))) / ((v / (1.0 - 0.95f64.powi(t))).sqrt() + 1e-8);
        }
        assert!((p[i] as f64 - x).abs() < 1e-6, "{}: {} vs {x}", s.name, p[i]);
    }
    assert_eq!(opt.step, 2);
}

#[test]
fn clipping_and_schedule() {
    let mut g = vec![3.0f32, 4.0];
    assert_eq!(clip_grad_norm(&mut g, 10.0), 5.0);
    assert_eq!(g, [3.0, 4.0]);
    assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
    assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
    assert_eq!(cosine_lr(0, 1.0, 0.1, 10, 110), 0.1);
    assert_eq!(cosine_lr(9, 1.0, 0.1, 10, 110), 1.0);
    assert_eq!(cosine_lr(10, 1.0, 0.1, 10, 110), 1.0);
    assert!((cosine_lr(60, 1.0, 0.1, 10, 110) - 0.55).abs() < 1e-6);
    assert_eq!(cosine_lr(110, 1.0, 0.1, 10, 110), 0.1);
    assert_eq!(cosine_lr(5000, 1.0, 0.1, 10, 110), 0.1);
}

#[test]
fn mqar_examples_follow_zoology() {
    let task = Mqar::default();
    task.validate().unwrap();
    let t = task.seq_len;
    let (mut ids, mut tg) = (vec![0u32; t], vec![0i64; t]);
    let mut short_gaps = 0;
    for idx in 0..200 {
        task.example(7, idx, &mut ids, &mut tg);
        let kv = task.num_kv_pairs;
        let mut keys = std::collections::HashMap::new();
        for i in 0..kv {
            let (k, v) = (ids[2 * i] as usize, ids[2 * i + 1] as usize);
            assert!((1..task.vocab / 2).contains(&k) && (task.vocab / 2..task.vocab).contains(&v));
            assert!(keys.insert(k, v).is_none(), "keys are distinct");
        }
        let labelled: Vec<usize> = (0..t).filter(|&i| tg[i] != IGNORE_INDEX).collect();
        assert_eq!(labelled.len(), kv);
        for &pos in &labelled {
            assert!(pos >= 2 * kv && (pos - 2 * kv) % 2 == 0);
            // the query is a key, its target the value paired with it in the context
            assert_eq!(keys[&(ids[pos] as usize)] as i64, tg[pos]);
            if pos - 2 * kv < 20 {
                short_gaps += 1;
            }
        }
        for i in 2 * kv..t {
            if tg[i] == IGNORE_INDEX {
                assert_eq!(ids[i], 0, "filler is 0");
            }
        }
    }
    // power law a = 0.01: the 10 shortest of 56 gaps take most of the mass
    assert!(short_gaps > 200 * 8 / 2, "{short_gaps}");
    let (mut a, mut b) = (vec![0u32; t], vec![0i64; t]);
    task.example(7, 3, &mut a, &mut b);
    task.example(7, 3, &mut ids, &mut tg);
    assert_eq!((&a, &b), (&ids, &tg));
    task.example(7, 4, &mut ids, &mut tg);
    assert_ne!(a, ids);
    for bad in [Mqar { seq_len: 127, ..task }, Mqar { vocab: 100, ..task }, Mqar { num_kv_pairs: 33, ..task }] {
        assert!(matches!(bad.validate(), Err(Error::BadArg { .. })));
    }
}

#[test]
fn model_checkpoint_round_trips_in_flas_layout() {
    let dir = tmpdir("ckpt");
    let c = GlaConfig { use_short_conv: true, tie_word_embeddings: true, ..GlaConfig::tiny(16, 2, 2, 20) };
    let m = GlaModel::new(c, 4).unwrap();
    save_model(&dir, &m).unwrap();
    let back = load_model(&dir).unwrap();
    assert_eq!(back.params, m.params);
    assert_eq!(back.config.extra()["architectures"][0], "GLAForCausalLM");
    let gla = |m: &GlaModel| m.config.gla().unwrap().clone();
    assert_eq!(GlaConfig { extra: Default::default(), ..gla(&back) }, gla(&m));
    let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<&str> = st.names();
    names.sort();
    let mut want: Vec<&str> = m.layout.specs.iter().map(|s| s.name.as_str()).collect();
    want.sort();
    assert_eq!(names, want);
    assert!(!names.contains(&"lm_head.weight"));
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "gla");
    assert_eq!(cfg["architectures"][0], "GLAForCausalLM");
    // a wider config over the same weights: the error names the tensor and both shapes
    let wide = GlaConfig { hidden_size: 32, ..gla(&m) };
    write_atomic(&dir.join("config.json"), wide.to_json().as_bytes()).unwrap();
    let e = load_model(&dir).unwrap_err().to_string();
    assert!(e.contains("model.embeddings.weight") && e.contains("[20, 32]") && e.contains("[20, 16]"), "{e}");
    // more layers: the first missing tensor is named
    let deep = GlaConfig { num_hidden_layers: 3, ..gla(&m) };
    write_atomic(&dir.join("config.json"), deep.to_json().as_bytes()).unwrap();
    let e = load_model(&dir).unwrap_err().to_string();
    assert!(e.contains("model.layers.2.attn_norm.weight") && e.contains("missing"), "{e}");
    // fewer layers: the extra tensors are refused
    let shallow = GlaConfig { num_hidden_layers: 1, ..gla(&m) };
    write_atomic(&dir.join("config.json"), shallow.to_json().as_bytes()).unwrap();
    assert!(load_model(&dir).unwrap_err().to_string().contains("unexpected tensor"));
    std::fs::write(dir.join(WEIGHTS_FILE), b"not a safetensors file").unwrap();
    assert!(matches!(load_model(&dir), Err(Error::Safetensors { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tiny_run(steps: u64) -> (GlaConfig, TrainConfig) {
    let model = GlaConfig { use_short_conv: true, intermediate_size: Some(32), ..GlaConfig::tiny(16, 2, 2, 32) };
    let task = Mqar { vocab: 32, seq_len: 16, num_kv_pairs: 2, ..Mqar::default() };
    let train = TrainConfig { steps, batch_size: 4, grad_accum: 2, warmup: 2, eval_examples: 8, task, ..TrainConfig::default() };
    (model, train)
}

#[test]
fn resume_repeats_the_uninterrupted_losses_exactly() {
    let dir = tmpdir("resume");
    let (mc, tc) = tiny_run(8);
    let mut full = Trainer::new(mc.clone(), tc.clone()).unwrap();
    let want: Vec<f64> = (0..8).map(|_| full.step().unwrap().loss).collect();

    let mut first = Trainer::new(mc, tc).unwrap();
    for _ in 0..3 {
        first.step().unwrap();
    }
    first.evaluate().unwrap();
    let ck = first.save(&dir, 2).unwrap();
    assert!(ck.ends_with("checkpoint-3"));
    drop(first);
    // a half-written checkpoint from a killed run must not matter
    std::fs::create_dir_all(dir.join(".tmp-checkpoint-5-999")).unwrap();
    std::fs::write(dir.join(".tmp-checkpoint-5-999").join(WEIGHTS_FILE), b"partial").unwrap();
    let mut second = Trainer::resume(&dir, None).unwrap();
    assert_eq!(second.step_count(), 3);
    assert_eq!(second.evals.len(), 1);
    for _ in 3..8 {
        second.step().unwrap();
    }
    assert_eq!(second.losses, want, "bit-exact losses after resume");
    assert_eq!(second.model.params, full.model.params);
    // keep = 2: the newest two checkpoints remain
    second.save(&dir, 2).unwrap();
    let again = Trainer::resume(&dir, Some(20)).unwrap();
    assert_eq!((again.step_count(), again.cfg.steps), (8, 20));
    assert_eq!(std::fs::read_to_string(dir.join(LATEST_FILE)).unwrap(), "checkpoint-8");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_without_checkpoint_is_a_typed_error() {
    let dir = tmpdir("empty");
    assert!(matches!(Trainer::resume(&dir, None), Err(Error::Io { .. })));
    std::fs::write(dir.join(LATEST_FILE), "checkpoint-9").unwrap();
    assert!(matches!(Trainer::resume(&dir, None), Err(Error::Resume { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tiny_model_learns_mqar() {
    // 2 pairs in 16 tokens: the loss on the queries falls well below chance within 150 steps
    let (mc, mut tc) = tiny_run(0);
    tc.steps = 150;
    tc.grad_accum = 1;
    tc.batch_size = 16;
    tc.lr = 1e-2;
    tc.eval_examples = 64;
    let mut tr = Trainer::new(GlaConfig { hidden_size: 32, ..mc }, tc).unwrap();
    let first = tr.evaluate().unwrap();
    for _ in 0..150 {
        tr.step().unwrap();
    }
    let last = tr.evaluate().unwrap();
    assert!(last.loss < first.loss * 0.6 && last.acc > 0.3, "{first:?} -> {last:?}");
}
