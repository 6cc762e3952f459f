//! Config rules, the parameter table against fla's checkpoint names, and whole-model gradient
//! checks by finite differences on tiny configs.

use gla_model::ops::FeatureMapMath;
use gla_model::{shift_labels, Activations, Error, GlaConfig, GlaModel, Layout, Rng, IGNORE_INDEX};

#[test]
fn config_defaults_are_flas() {
    let c = GlaConfig::from_json("{}").unwrap();
    assert_eq!(c, GlaConfig::default());
    let d = c.dims().unwrap();
    let g = d.gla().unwrap();
    assert_eq!((d.d, d.layers, g.heads, g.key_dim, g.value_dim, g.head_k, g.head_v), (2048, 24, 4, 1024, 2048, 256, 512));
    assert_eq!(d.intermediate, 5632);
    assert_eq!(d.eps, 1e-6);
    assert_eq!(g.gnorm_name, "g_norm_swish_gate");
    // 340M: D=1024 -> I = 2816
    let c = GlaConfig::from_json(r#"{"hidden_size": 1024, "tie_word_embeddings": true}"#).unwrap();
    assert_eq!(c.dims().unwrap().intermediate, 2816);
    // explicit intermediate size wins
    let c = GlaConfig::from_json(r#"{"hidden_size": 64, "intermediate_size": 100}"#).unwrap();
    assert_eq!(c.dims().unwrap().intermediate, 100);
}

#[test]
fn config_round_trips_and_keeps_unknown_keys() {
    let text = r#"{"model_type": "gla", "hidden_size": 64, "num_heads": 2, "num_kv_heads": 1, "transformers_version": "4.53.0", "clamp_min": -5.0}"#;
    let c = GlaConfig::from_json(text).unwrap();
    assert_eq!(c.extra["transformers_version"], "4.53.0");
    let back = GlaConfig::from_json(&c.to_json()).unwrap();
    assert_eq!(back.hidden_size, 64);
    assert_eq!(back.clamp_min, Some(-5.0));
    assert_eq!(back.extra["architectures"][0], "GLAForCausalLM");
    let d = *back.dims().unwrap().gla().unwrap();
    assert_eq!((d.kv_heads, d.key_dim_kv, d.value_dim_kv), (1, 16, 32));
}

#[test]
fn unsupported_features_are_refused_by_name() {
    for (json, feature) in [
        (r#"{"attn": {"layers": [1], "num_heads": 4, "qk_norm": true}}"#, "attn qk_norm"),
        (r#"{"feature_map": "hedgehog"}"#, "feature_map"),
        (r#"{"use_l2warp": true}"#, "use_l2warp"),
        (r#"{"attnres_block_size": 4}"#, "attnres"),
        (r#"{"elementwise_affine": false}"#, "elementwise_affine"),
        (r#"{"attn_mode": "fused_chunk"}"#, "attn_mode"),
        (r#"{"hidden_act": "gelu"}"#, "hidden_act"),
    ] {
        match GlaConfig::from_json(json).unwrap().dims() {
            Err(Error::Unsupported { feature: f, .. }) => assert!(f.starts_with(feature), "{json}: {f}"),
            other => panic!("{json}: expected Unsupported, got {other:?}"),
        }
    }
    for json in [
        r#"{"fuse_linear_cross_entropy": true}"#,
        r#"{"num_heads": 3}"#,
        r#"{"num_kv_heads": 3}"#,
        r#"{"model_type": "llama"}"#,
        r#"{"clamp_min": 1.0}"#,
        r#"{"clamp_min": 1e-6}"#,
        r#"{"attn": {"layers": [24], "num_heads": 4}}"#,
    ] {
        assert!(matches!(GlaConfig::from_json(json).unwrap().dims(), Err(Error::BadConfig { .. })), "{json}");
    }
    assert!(matches!(GlaConfig::from_json(r#"{"hidden_size": "big"}"#), Err(Error::Json { .. })));
}

#[test]
fn parameter_table_uses_flas_names_and_shapes() {
    // fla.md 2.4: the default 1.3B config
    let dims = GlaConfig::default().dims().unwrap();
    let lay = Layout::new(&dims);
    let shape = |n: &str| lay.specs[lay.find(n).unwrap_or_else(|| panic!("{n} missing"))].shape.clone();
    assert_eq!(shape("model.embeddings.weight"), [32000, 2048]);
    assert_eq!(shape("model.layers.0.attn_norm.weight"), [2048]);
    assert_eq!(shape("model.layers.0.attn.q_proj.weight"), [1024, 2048]);
    assert_eq!(shape("model.layers.0.attn.k_proj.weight"), [1024, 2048]);
    assert_eq!(shape("model.layers.0.attn.v_proj.weight"), [2048, 2048]);
    assert_eq!(shape("model.layers.0.attn.g_proj.weight"), [2048, 2048]);
    assert_eq!(shape("model.layers.0.attn.gk_proj.0.weight"), [16, 2048]);
    assert_eq!(shape("model.layers.0.attn.gk_proj.1.weight"), [1024, 16]);
    assert_eq!(shape("model.layers.0.attn.gk_proj.1.bias"), [1024]);
    assert_eq!(shape("model.layers.0.attn.o_proj.weight"), [2048, 2048]);
    assert_eq!(shape("model.layers.0.attn.g_norm_swish_gate.weight"), [512]);
    assert_eq!(shape("model.layers.23.mlp_norm.weight"), [2048]);
    assert_eq!(shape("model.layers.23.mlp.gate_proj.weight"), [5632, 2048]);
    assert_eq!(shape("model.layers.23.mlp.up_proj.weight"), [5632, 2048]);
    assert_eq!(shape("model.layers.23.mlp.down_proj.weight"), [2048, 5632]);
    assert_eq!(shape("model.norm.weight"), [2048]);
    assert_eq!(shape("lm_head.weight"), [32000, 2048]);
    assert_eq!(lay.specs.len(), 1 + 24 * 14 + 2);
    // tied: no lm_head; short conv: three conv weights; no output gate: g_norm, no g_proj
    let c = GlaConfig { tie_word_embeddings: true, use_short_conv: true, use_output_gate: false, ..GlaConfig::tiny(64, 1, 2, 10) };
    let lay = Layout::new(&c.dims().unwrap());
    assert!(lay.find("lm_head.weight").is_none());
    assert!(lay.find("model.layers.0.attn.g_proj.weight").is_none());
    assert_eq!(lay.specs[lay.find("model.layers.0.attn.g_norm.weight").unwrap()].shape, [32]);
    assert_eq!(lay.specs[lay.find("model.layers.0.attn.k_conv1d.weight").unwrap()].shape, [32, 1, 4]);
}

#[test]
fn init_is_flas() {
    let c = GlaConfig { pad_token_id: Some(3), ..GlaConfig::tiny(64, 2, 2, 50) };
    let m = GlaModel::new(c, 7).unwrap();
    for s in &m.layout.specs {
        let w = &m.params[s.range()];
        if s.name.ends_with("norm.weight") || s.name.contains("g_norm") {
            assert!(w.iter().all(|&x| x == 1.0), "{}", s.name);
        } else if s.name.ends_with("bias") {
            assert!(w.iter().all(|&x| x == 0.0), "{}", s.name);
        } else if w.len() > 1000 {
            let std = (w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
            assert!((std - 0.02).abs() < 0.002, "{}: std {std}", s.name);
        }
    }
    let e = &m.params[m.layout.specs[m.layout.embeddings].range()];
    // fla's _init_weights re-draws the whole embedding, the padding row included (fla_interop.rs)
    assert!(e[3 * 64..4 * 64].iter().all(|&x| x != 0.0), "padding row is random, as in fla");
}

#[test]
fn fla_label_shift() {
    let l = [5, 6, 7, 8, 1, 2, 3, 4];
    assert_eq!(shift_labels(&l, 4), [6, 7, 8, IGNORE_INDEX, 2, 3, 4, IGNORE_INDEX]);
}

#[test]
fn bad_batches_are_typed_errors() {
    let m = GlaModel::new(GlaConfig::tiny(16, 1, 2, 10), 1).unwrap();
    let mut acts = Activations::new(&m.dims, 1, 4);
    assert!(matches!(m.forward(&mut acts, &[1, 2, 3], &[0; 3]), Err(Error::Shape { .. })));
    assert!(matches!(m.forward(&mut acts, &[1, 2, 3, 10], &[0; 4]), Err(Error::Token { index: 3, .. })));
    assert!(matches!(m.forward(&mut acts, &[1, 2, 3, 4], &[0, -1, 0, 0]), Err(Error::Token { what: "label", .. })));
    let mut g = vec![0.0; 3];
    m.forward(&mut acts, &[1, 2, 3, 4], &[0, 1, IGNORE_INDEX, 2]).unwrap();
    assert!(matches!(m.backward(&mut acts, &mut g, 1.0), Err(Error::Shape { .. })));
    // the generic functions check the gradient arena too (GlaModel::backward only forwards)
    assert!(matches!(gla_model::model::backward(&m.cpu(), &m.layout, &mut acts, &mut g, 1.0), Err(Error::Shape { tensor: "grads", .. })));
    // activations made for another model are refused, not indexed out of bounds
    let other = GlaModel::new(GlaConfig::tiny(32, 1, 2, 10), 1).unwrap();
    let mut wrong = Activations::new(&other.dims, 1, 4);
    assert!(matches!(m.forward(&mut wrong, &[1, 2, 3, 4], &[0; 4]), Err(Error::Shape { tensor: "activations", .. })));
}

fn loss(m: &GlaModel, b: usize, t: usize, ids: &[u32], tg: &[i64]) -> f64 {
    let mut acts = Activations::new(&m.dims, b, t);
    m.forward(&mut acts, ids, tg).unwrap().loss
}

/// Backward vs central differences of the mean loss on a sample of parameters of every tensor.
fn grad_check(c: GlaConfig, b: usize, t: usize) {
    // a larger norm eps keeps the per-head norm of the attention output smooth: with fla's 1e-6 a
    // head output near zero (q.k crossing 0 at the first token) flips sign within a step of the
    // finite differences, a genuine kink of the function, not a bug of the backward
    let mut m = GlaModel::new(GlaConfig { initializer_range: 0.3, norm_eps: 0.1, ..c }, 3).unwrap();
    let vocab = m.dims.vocab;
    let mut r = Rng::new(11);
    let ids: Vec<u32> = (0..b * t).map(|_| r.below(vocab) as u32).collect();
    let tg: Vec<i64> = (0..b * t).map(|i| if i % 3 == 1 { IGNORE_INDEX } else { r.below(vocab) as i64 }).collect();
    let mut acts = Activations::new(&m.dims, b, t);
    m.forward(&mut acts, &ids, &tg).unwrap();
    let mut g = vec![0.0f32; m.num_params()];
    m.backward(&mut acts, &mut g, 1.0).unwrap();
    let h = 1e-2f32;
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for s in m.layout.specs.clone() {
        let (mut tn, mut td) = (0.0f64, 0.0f64);
        for _ in 0..4 {
            let mut i = s.offset + r.below(s.numel());
            // PyTorch's padding_idx: the pad row's input use gets no gradient (by definition, not
            // the derivative), so finite differences do not apply there
            while s.name == "model.embeddings.weight" && m.dims.pad == Some((i - s.offset) / m.dims.d) {
                i = s.offset + r.below(s.numel());
            }
            let x0 = m.params[i];
            m.params[i] = x0 + h;
            let lp = loss(&m, b, t, &ids, &tg);
            m.params[i] = x0 - h;
            let lm = loss(&m, b, t, &ids, &tg);
            m.params[i] = x0;
            let fd = (lp - lm) / (2.0 * h as f64);
            tn += (fd - g[i] as f64).powi(2);
            td += fd * fd;
        }
        // per tensor: a wrong formula gives O(1) relative error
        assert!(tn <= 1e-2 * td.max(1e-8) + 1e-10, "{}: |fd - bwd|^2 = {tn:.3e} vs |fd|^2 = {td:.3e}", s.name);
        num += tn;
        den += td;
    }
    assert!((num / den).sqrt() < 1e-2, "whole model: relative RMSE {:.3e}", (num / den).sqrt());
}

#[test]
fn model_gradients_recurrent_path_untied() {
    // T <= 64 runs the fused recurrent op
    grad_check(GlaConfig { intermediate_size: Some(24), ..GlaConfig::tiny(16, 2, 2, 11) }, 2, 5);
}

#[test]
fn model_gradients_chunked_path_tied_conv_gqa_clamp() {
    // T > 64 runs the chunked op
    let c = GlaConfig {
        tie_word_embeddings: true,
        use_short_conv: true,
        num_kv_heads: Some(1),
        clamp_min: Some(-0.04),
        intermediate_size: Some(24),
        pad_token_id: Some(0),
        ..GlaConfig::tiny(16, 2, 2, 11)
    };
    grad_check(c, 1, 70);
}

#[test]
fn model_gradients_chunked_path_clamp_at_zero() {
    // clamp_min = 0 (legal in fla): every log-gate is 0, no decay; the chunked op's backward with
    // g = 0 everywhere, and no gradient into the clamped gate projection
    let c = GlaConfig { clamp_min: Some(0.0), intermediate_size: Some(24), ..GlaConfig::tiny(16, 1, 2, 11) };
    grad_check(c, 1, 70);
}

#[test]
fn feature_maps_match_their_names_and_derivatives() {
    use gla_model::FeatureMap;
    let c = GlaConfig::from_json(r#"{"feature_map": "relu"}"#).unwrap();
    assert_eq!(c.dims().unwrap().gla().unwrap().feature_map, Some(FeatureMap::Relu));
    assert_eq!(GlaConfig::tiny(16, 1, 2, 9).dims().unwrap().gla().unwrap().feature_map, None);
    // values of PyTorch's activations at a few points
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * (1.0 + b.abs());
    for (name, x, y) in [
        ("relu", -1.5, 0.0),
        ("relu2", 1.5, 2.25),
        ("relu6", 7.0, 6.0),
        ("leaky_relu", -2.0, -0.02),
        ("sigmoid", 0.0, 0.5),
        ("swish", 1.0, 0.731_058_6),
        ("tanh", 0.5, 0.462_117_16),
        ("gelu_new", 1.0, 0.841_192),
        ("quick_gelu", 1.0, 0.845_795_8),
        ("linear", -3.0, -3.0),
    ] {
        let f = FeatureMap::from_name(name).unwrap();
        assert!(close(f.apply(x), y), "{name}({x}) = {} (PyTorch: {y})", f.apply(x));
    }
    // the GPU kernels (gla-cuda kernels/nn/elementwise.cu fmap_/dfmap_) switch on these codes
    let codes: Vec<i32> = ["relu", "relu2", "relu6", "leaky_relu", "sigmoid", "silu", "tanh", "gelu_new", "quick_gelu", "linear"]
        .iter()
        .map(|n| FeatureMap::from_name(n).unwrap().code())
        .collect();
    assert_eq!(codes, (0..10).collect::<Vec<i32>>());
    // fla's elu_p1 (DeltaNet's qk_activation "elu"): elu(x) + 1, not an ACT2FN name
    assert!(FeatureMap::from_name("elu_p1").is_none());
    assert!(close(FeatureMap::EluP1.apply(-1.0), 0.367_879_44) && close(FeatureMap::EluP1.apply(2.0), 3.0));
    // f' against central differences, away from the kinks
    for &(name, f) in FeatureMap::NAMES.iter().chain([&("elu_p1", FeatureMap::EluP1)]) {
        for x in [-2.3f32, -0.7, 0.4, 1.9, 5.2] {
            let h = 1e-3f64;
            let fd = (f64::from(f.apply((f64::from(x) + h) as f32)) - f64::from(f.apply((f64::from(x) - h) as f32))) / (2.0 * h);
            assert!((fd - f64::from(f.grad(x))).abs() <= 2e-3 * (1.0 + fd.abs()), "{name}'({x}) = {} vs {fd}", f.grad(x));
        }
    }
}

#[test]
fn model_gradients_with_feature_maps() {
    // fla's gla_7B uses relu on q and k; silu is smooth everywhere; both after a short conv
    for (fm, t) in [("relu", 5), ("silu", 70)] {
        let c = GlaConfig {
            feature_map: Some(fm.into()),
            use_short_conv: true,
            num_kv_heads: Some(1),
            intermediate_size: Some(24),
            ..GlaConfig::tiny(16, 1, 2, 11)
        };
        grad_check(c, 1, t);
    }
}

#[test]
fn model_gradients_without_output_gate() {
    let c = GlaConfig { use_output_gate: false, intermediate_size: Some(24), ..GlaConfig::tiny(16, 1, 2, 9) };
    grad_check(c, 2, 4);
}

#[test]
fn accumulation_scale_is_linear() {
    let m = GlaModel::new(GlaConfig::tiny(16, 1, 2, 9), 5).unwrap();
    let ids = [1u32, 2, 3, 4, 5, 6];
    let tg = [2i64, 3, 4, 5, 6, IGNORE_INDEX];
    let mut acts = Activations::new(&m.dims, 1, 6);
    let mut g1 = vec![0.0f32; m.num_params()];
    m.forward(&mut acts, &ids, &tg).unwrap();
    m.backward(&mut acts, &mut g1, 1.0).unwrap();
    let mut g2 = vec![0.0f32; m.num_params()];
    for _ in 0..2 {
        m.forward(&mut acts, &ids, &tg).unwrap();
        m.backward(&mut acts, &mut g2, 0.5).unwrap();
    }
    for (a, b) in g1.iter().zip(&g2) {
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-3));
    }
}

#[test]
fn logits_agree_with_the_loss() {
    let m = GlaModel::new(GlaConfig::tiny(16, 1, 2, 9), 5).unwrap();
    let ids = [1u32, 2, 3, 4];
    let logits = m.logits(&ids, 1, 4).unwrap();
    let tg = [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX];
    let mut acts = Activations::new(&m.dims, 1, 4);
    let out = m.forward(&mut acts, &ids, &tg).unwrap();
    let row = &logits[9..18];
    let lse = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
    assert!((out.loss - (lse - row[7] as f64)).abs() < 1e-5);
}

#[test]
fn model_gradients_at_a_training_like_shape() {
    // several rayon tasks per op (N = 390 rows > 64 per task), three chunks per sequence
    let c = GlaConfig { use_short_conv: true, intermediate_size: Some(32), num_heads: 1, expand_k: 1.0, ..GlaConfig::tiny(32, 2, 1, 40) };
    grad_check(c, 3, 130);
}

/// The bf16-storage emulation `gla check` takes its GPU tolerances from: every activation the
/// backend writes is a bf16 value (a linear op's `Act` output is, its f32 output is not), and the
/// whole model's outputs move by a bf16-sized amount, neither zero nor large.
#[test]
fn bf16_emulation_rounds_every_activation_and_only_those() {
    use gla_model::backend::Primitives;
    use gla_model::model::{backward, cpu_logits, forward};
    use gla_model::Acts;
    let c = GlaConfig { use_short_conv: true, feature_map: Some("silu".into()), ..GlaConfig::tiny(32, 2, 2, 64) };
    let m = GlaModel::new(c, 3).unwrap();
    let (b, t) = (2, 70);
    let mut rng = Rng::new(5);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.below(64) as u32).collect();
    let labels: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
    let targets = shift_labels(&labels, t);
    let bf16_exact = |xs: &[f32]| xs.iter().all(|&x| gla_core::bf16::round(x) == x);

    let emu = m.cpu().emulating_bf16();
    let (n, d, kd) = (b * t, m.dims.d, m.dims.gla().unwrap().key_dim);
    let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5).collect();
    let q = m.layout.layers[0].gla().unwrap().q_proj;
    let (mut y_act, mut y_f32) = (vec![0.0f32; n * kd], vec![0.0f32; n * kd]);
    emu.linear_fwd(&mut y_act, &x, q, n, d, kd).unwrap();
    emu.linear_fwd_f32(&mut y_f32, &x, q, n, d, kd).unwrap();
    assert!(bf16_exact(&y_act), "an Act output must be bf16");
    assert!(!bf16_exact(&y_f32), "an f32 output must stay f32");
    assert!(y_act.iter().zip(&y_f32).all(|(a, f)| (a - f).abs() <= f.abs() / 256.0));
    // the operand copy of an f32 gradient is made and rounded (the f32 backend makes none)
    let mut copy = emu.alloc_cast(n * kd).unwrap();
    emu.cast(&mut copy, &y_f32).unwrap();
    assert!(bf16_exact(&copy) && copy.len() == n * kd);
    assert!(m.cpu().alloc_cast(n * kd).unwrap().is_empty());

    let mut acts = Activations::new(&m.dims, b, t);
    let want = m.forward(&mut acts, &ids, &targets).unwrap();
    let mut g = vec![0.0f32; m.num_params()];
    m.backward(&mut acts, &mut g, 1.0).unwrap();
    let mut acts = Acts::alloc(&emu, emu.layout(), b, t, false, 0).unwrap();
    let got = forward(&emu, emu.layout(), &mut acts, &ids, &targets).unwrap();
    let mut ge = vec![0.0f32; m.num_params()];
    backward(&emu, emu.layout(), &mut acts, &mut ge, 1.0).unwrap();
    let rel = |a: &[f32], b: &[f32]| {
        let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let den: f64 = b.iter().map(|&y| f64::from(y).powi(2)).sum();
        (num / den).sqrt()
    };
    let (dl, dg) = ((got.loss - want.loss).abs() / want.loss, rel(&ge, &g));
    assert!(dl > 0.0 && dl < 1e-3, "loss moved by {dl:.3e}");
    assert!(dg > 1e-4 && dg < 5e-2, "gradients moved by {dg:.3e}");
    let dlog = rel(&cpu_logits(&emu, &ids, b, t).unwrap(), &m.logits(&ids, b, t).unwrap());
    assert!(dlog > 1e-4 && dlog < 1e-2, "logits moved by {dlog:.3e}");
}
