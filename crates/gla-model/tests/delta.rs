//! The delta-rule language models (fla's `DeltaNetForCausalLM` and `GatedDeltaNetForCausalLM`)
//! on the CPU: configs (fla's keys and defaults, model_type dispatch, typed refusals), the
//! parameter table against fla's names and shapes (listed by hand from fla 0.6.0's code), init,
//! whole-model gradients by finite differences, training, prefill-then-decode against the full
//! forward, and checkpoints both ways.

use gla_model::checkpoint::{load_model, save_model, WEIGHTS_FILE};
use gla_model::config::{DeltaNetConfig, GateAct, GatedDeltaNetConfig, ModelConfig, QkNorm};
use gla_model::optim::{AdamW, AdamWConfig};
use gla_model::{shift_labels, Activations, Error, FeatureMap, GlaModel, Layout, Mqar, Rng, TrainConfig, Trainer, IGNORE_INDEX};

mod common;
use common::{learns_mqar, loss, rel, tmpdir, tokens};

// ---- configs --------------------------------------------------------------------------------------

#[test]
fn delta_net_config_defaults_are_flas() {
    let c = DeltaNetConfig::from_json("{}").unwrap();
    assert_eq!(c, DeltaNetConfig::default());
    let d = c.dims().unwrap();
    let m = *d.delta().unwrap();
    // DeltaNetConfig: hidden 2048, 16 heads, expand_k = expand_v = 1, 24 layers
    assert_eq!((d.d, d.layers, d.vocab, d.intermediate), (2048, 24, 32000, 5632));
    assert_eq!((m.heads, m.v_heads, m.head_k, m.head_v, m.key_dim, m.value_dim), (16, 16, 128, 128, 2048, 2048));
    assert_eq!((m.conv, m.qk_act, m.qk_norm), (4, FeatureMap::Silu, QkNorm::L2));
    assert!(m.use_beta && !m.allow_neg_eigval && !m.decay && m.output_gate.is_none());
    assert_eq!(d.eps, 1e-6);
}

#[test]
fn gated_deltanet_config_defaults_are_flas() {
    let c = GatedDeltaNetConfig::from_json("{}").unwrap();
    assert_eq!(c, GatedDeltaNetConfig::default());
    let d = c.dims().unwrap();
    let m = *d.delta().unwrap();
    // GatedDeltaNetConfig: hidden 2048, 6 heads of 256, expand_v 2, 21 layers
    assert_eq!((d.d, d.layers, d.intermediate), (2048, 21, 5632));
    assert_eq!((m.heads, m.v_heads, m.head_k, m.head_v, m.key_dim, m.value_dim), (6, 6, 256, 512, 1536, 3072));
    assert!(m.use_beta && m.decay && m.qk_norm == QkNorm::L2 && m.qk_act == FeatureMap::Silu);
    assert_eq!(m.output_gate, Some(GateAct::Swish));
    let s = GatedDeltaNetConfig::from_json(r#"{"output_gate_activation": "sigmoid", "num_v_heads": 12}"#).unwrap();
    let m = *s.dims().unwrap().delta().unwrap();
    assert_eq!((m.output_gate, m.v_heads, m.value_dim), (Some(GateAct::Sigmoid), 12, 6144));
}

#[test]
fn model_type_picks_the_family_and_configs_round_trip() {
    let text = r#"{"model_type": "delta_net", "hidden_size": 64, "num_heads": 2, "qk_activation": "elu", "qk_norm": "sum",
                   "use_gate": true, "transformers_version": "5.6.2", "torch_dtype": "bfloat16"}"#;
    let c = ModelConfig::from_json(text).unwrap();
    let ModelConfig::DeltaNet(dn) = &c else { panic!("{c:?}") };
    assert_eq!((dn.qk_activation.as_str(), dn.qk_norm.as_str(), dn.use_gate), ("elu", "sum", true));
    assert_eq!(c.extra()["transformers_version"], "5.6.2");
    let back = ModelConfig::from_json(&c.to_json()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    assert_eq!(
        (v["architectures"][0].as_str(), v["dtype"].as_str(), v.get("torch_dtype")),
        (Some("DeltaNetForCausalLM"), Some("float32"), None)
    );
    assert_eq!(back.dims().unwrap(), c.dims().unwrap());
    let m = *c.dims().unwrap().delta().unwrap();
    assert_eq!((m.qk_act, m.qk_norm, m.output_gate), (FeatureMap::EluP1, QkNorm::Sum, Some(GateAct::Swish)));

    let g = ModelConfig::from_json(r#"{"model_type": "gated_deltanet", "hidden_size": 64, "head_dim": 16, "num_heads": 4}"#).unwrap();
    assert_eq!(g.model_type(), "gated_deltanet");
    let v: serde_json::Value = serde_json::from_str(&g.to_json()).unwrap();
    assert_eq!(v["architectures"][0], "GatedDeltaNetForCausalLM");
    assert_eq!(v["output_gate_activation"], "swish");
    assert_eq!(ModelConfig::from_json(&g.to_json()).unwrap().dims().unwrap(), g.dims().unwrap());
    // no model_type: GLA, as fla's GLAConfig would read it
    assert_eq!(ModelConfig::from_json("{}").unwrap().model_type(), "gla");
}

#[test]
fn delta_features_not_built_or_invalid_are_typed_errors() {
    for (json, feature) in [
        (r#"{"model_type": "mamba2"}"#, "model_type"),
        (r#"{"model_type": "delta_net", "attn": {"layers": [1], "num_heads": 4, "qk_norm": true}}"#, "attn qk_norm"),
        (r#"{"model_type": "gated_deltanet", "use_l2warp": true}"#, "use_l2warp"),
        (r#"{"model_type": "delta_net", "attnres_block_size": 2}"#, "attnres"),
        (r#"{"model_type": "delta_net", "attn_mode": "fused_chunk"}"#, "attn_mode"),
        (r#"{"model_type": "gated_deltanet", "hidden_act": "gelu"}"#, "hidden_act"),
    ] {
        match ModelConfig::from_json(json).and_then(|c| c.dims()) {
            Err(Error::Unsupported { feature: f, detail }) => {
                assert!(f.starts_with(feature), "{json}: {f}");
                if feature == "model_type" {
                    assert!(detail.contains("gated_deltanet") && detail.contains("mamba2"), "{detail}");
                }
            }
            other => panic!("{json}: expected Unsupported, got {other:?}"),
        }
    }
    for (json, key) in [
        (r#"{"model_type": "delta_net", "qk_activation": "gelu"}"#, "qk_activation"),
        (r#"{"model_type": "delta_net", "qk_norm": "l1"}"#, "qk_norm"),
        (r#"{"model_type": "delta_net", "hidden_size": 64, "expand_k": 0.3}"#, "expand_k"),
        (r#"{"model_type": "delta_net", "hidden_size": 64, "num_heads": 3}"#, "expand_k"),
        (r#"{"model_type": "delta_net", "num_heads": 0}"#, "num_heads"),
        (r#"{"model_type": "gated_deltanet", "num_heads": 4, "num_v_heads": 6}"#, "num_v_heads"),
        (r#"{"model_type": "gated_deltanet", "num_heads": 4, "num_v_heads": 2}"#, "num_v_heads"),
        (r#"{"model_type": "gated_deltanet", "head_dim": 10, "expand_v": 0.55}"#, "expand_v"),
        (r#"{"model_type": "gated_deltanet", "output_gate_activation": "relu"}"#, "output_gate_activation"),
        (r#"{"model_type": "gated_deltanet", "head_dim": 0}"#, "head_dim"),
        (r#"{"model_type": "gated_deltanet", "fuse_linear_cross_entropy": true}"#, "fuse_linear_cross_entropy"),
        (r#"{"model_type": "gated_deltanet", "attn": {"layers": [0]}}"#, "attn"),
    ] {
        match ModelConfig::from_json(json).and_then(|c| c.dims()) {
            Err(Error::BadConfig { key: k, .. }) => assert_eq!(k, key, "{json}"),
            other => panic!("{json}: expected BadConfig({key}), got {other:?}"),
        }
    }
    assert!(matches!(ModelConfig::from_json(r#"{"model_type": "delta_net", "num_heads": "many"}"#), Err(Error::Json { .. })));
    // a family's own parser refuses another model_type
    assert!(matches!(DeltaNetConfig { model_type: "gla".into(), ..Default::default() }.dims(), Err(Error::BadConfig { .. })));
}

// ---- parameter table ------------------------------------------------------------------------------

fn names_and_shapes(lay: &Layout) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<_> = lay.specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect();
    v.sort();
    v
}

fn sorted(v: Vec<(String, Vec<usize>)>) -> Vec<(String, Vec<usize>)> {
    let mut v = v;
    v.sort();
    v
}

/// The names and shapes of fla 0.6.0's `DeltaNetForCausalLM` state dict, written out from
/// fla/layers/delta_net.py and fla/models/delta_net/modeling_delta_net.py for hidden_size 32,
/// num_heads 4, expand_k = expand_v = 1, 2 layers, vocab 50, hidden_ratio 4 (I = 256),
/// use_short_conv with conv_size 4, use_beta, and use_gate as given.
fn fla_delta_net_names(use_gate: bool) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![
        ("model.embeddings.weight".to_string(), vec![50, 32]),
        ("model.norm.weight".to_string(), vec![32]),
        ("lm_head.weight".to_string(), vec![50, 32]),
    ];
    for l in 0..2 {
        let p = format!("model.layers.{l}.");
        for (n, s) in [
            ("attn_norm.weight", vec![32]),
            ("attn.q_proj.weight", vec![32, 32]),
            ("attn.k_proj.weight", vec![32, 32]),
            ("attn.v_proj.weight", vec![32, 32]),
            ("attn.b_proj.weight", vec![4, 32]),
            ("attn.q_conv1d.weight", vec![32, 1, 4]),
            ("attn.k_conv1d.weight", vec![32, 1, 4]),
            ("attn.v_conv1d.weight", vec![32, 1, 4]),
            // RMSNorm(head_v_dim) or FusedRMSNormGated(head_v_dim): one weight either way
            ("attn.o_norm.weight", vec![8]),
            ("attn.o_proj.weight", vec![32, 32]),
            ("mlp_norm.weight", vec![32]),
            ("mlp.gate_proj.weight", vec![256, 32]),
            ("mlp.up_proj.weight", vec![256, 32]),
            ("mlp.down_proj.weight", vec![32, 256]),
        ] {
            v.push((format!("{p}{n}"), s));
        }
        if use_gate {
            v.push((format!("{p}attn.g_proj.weight"), vec![32, 32]));
        }
    }
    sorted(v)
}

/// fla 0.6.0's `GatedDeltaNetForCausalLM` for hidden_size 32, head_dim 8, num_heads 2,
/// num_v_heads 4, expand_v 2 (head_v_dim 16, key_dim 16, value_dim 64), 1 layer, vocab 50,
/// intermediate_size 40, tied embeddings, use_gate, use_short_conv (fla/layers/gated_deltanet.py).
fn fla_gated_deltanet_names() -> Vec<(String, Vec<usize>)> {
    let mut v = vec![("model.embeddings.weight".to_string(), vec![50, 32]), ("model.norm.weight".to_string(), vec![32])];
    for (n, s) in [
        ("attn_norm.weight", vec![32]),
        ("attn.q_proj.weight", vec![16, 32]),
        ("attn.k_proj.weight", vec![16, 32]),
        ("attn.v_proj.weight", vec![64, 32]),
        ("attn.a_proj.weight", vec![4, 32]),
        ("attn.b_proj.weight", vec![4, 32]),
        ("attn.A_log", vec![4]),
        ("attn.dt_bias", vec![4]),
        ("attn.q_conv1d.weight", vec![16, 1, 4]),
        ("attn.k_conv1d.weight", vec![16, 1, 4]),
        ("attn.v_conv1d.weight", vec![64, 1, 4]),
        ("attn.g_proj.weight", vec![64, 32]),
        ("attn.o_norm.weight", vec![16]),
        ("attn.o_proj.weight", vec![32, 64]),
        ("mlp_norm.weight", vec![32]),
        ("mlp.gate_proj.weight", vec![40, 32]),
        ("mlp.up_proj.weight", vec![40, 32]),
        ("mlp.down_proj.weight", vec![32, 40]),
    ] {
        v.push((format!("model.layers.0.{n}"), s));
    }
    sorted(v)
}

fn small_gdn() -> GatedDeltaNetConfig {
    GatedDeltaNetConfig {
        hidden_size: 32,
        head_dim: 8,
        num_heads: 2,
        num_v_heads: Some(4),
        num_hidden_layers: 1,
        vocab_size: 50,
        intermediate_size: Some(40),
        tie_word_embeddings: true,
        ..Default::default()
    }
}

#[test]
fn parameter_tables_use_flas_names_and_shapes() {
    for gate in [false, true] {
        let c = DeltaNetConfig { use_gate: gate, ..DeltaNetConfig::tiny(32, 2, 4, 50) };
        let lay = Layout::new(&c.dims().unwrap());
        assert_eq!(names_and_shapes(&lay), fla_delta_net_names(gate), "use_gate {gate}");
    }
    let lay = Layout::new(&small_gdn().dims().unwrap());
    assert_eq!(names_and_shapes(&lay), fla_gated_deltanet_names());
    // fla's registration order within the layer (the arena order)
    let order: Vec<&str> = lay.specs.iter().map(|s| s.name.as_str()).filter_map(|n| n.strip_prefix("model.layers.0.attn.")).collect();
    assert_eq!(
        order,
        [
            "q_proj.weight",
            "k_proj.weight",
            "v_proj.weight",
            "a_proj.weight",
            "b_proj.weight",
            "A_log",
            "dt_bias",
            "q_conv1d.weight",
            "k_conv1d.weight",
            "v_conv1d.weight",
            "g_proj.weight",
            "o_norm.weight",
            "o_proj.weight"
        ]
    );
    // without short conv, beta or gate: only what fla registers
    let c = DeltaNetConfig { use_short_conv: false, use_beta: false, ..DeltaNetConfig::tiny(32, 1, 4, 50) };
    let lay = Layout::new(&c.dims().unwrap());
    for n in ["b_proj.weight", "q_conv1d.weight", "g_proj.weight"] {
        assert!(lay.find(&format!("model.layers.0.attn.{n}")).is_none(), "{n}");
    }
    for c in
        [ModelConfig::from(c), small_gdn().into(), GatedDeltaNetConfig { use_gate: false, use_short_conv: false, ..small_gdn() }.into()]
    {
        let d = c.dims().unwrap();
        assert_eq!(gla_model::limits::param_count(&d), Some(Layout::new(&d).numel as u64), "{c:?}");
    }
}

#[test]
fn init_is_flas_and_a_log_dt_bias_get_no_weight_decay() {
    let m = GlaModel::new(GatedDeltaNetConfig { num_v_heads: Some(64), num_heads: 2, ..small_gdn() }, 7).unwrap();
    let get = |n: &str| &m.params[m.layout.specs[m.layout.find(n).unwrap()].range()];
    // A = exp(A_log) ~ U(0, 16)
    let a: Vec<f64> = get("model.layers.0.attn.A_log").iter().map(|&x| (x as f64).exp()).collect();
    assert!(a.iter().all(|&x| x > 0.0 && x < 16.0), "{a:?}");
    let mean = a.iter().sum::<f64>() / a.len() as f64;
    assert!((mean - 8.0).abs() < 2.5, "mean of A {mean}");
    // softplus(dt_bias) = dt in [1e-3, 0.1], log-uniform
    let dt: Vec<f64> = get("model.layers.0.attn.dt_bias").iter().map(|&x| (x as f64).exp().ln_1p()).collect();
    assert!(dt.iter().all(|&x| (0.001 * 0.999..=0.1 * 1.001).contains(&x)), "{dt:?}");
    assert!(dt.iter().any(|&x| x < 0.01) && dt.iter().any(|&x| x > 0.01), "{dt:?}");
    assert!(get("model.layers.0.attn.o_norm.weight").iter().all(|&x| x == 1.0));
    let w = get("model.layers.0.attn.v_proj.weight");
    let std = (w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.004, "std {std}");
    // AdamW with zero gradients: only the decay moves a weight, and only a matrix
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.5, ..AdamWConfig::default() }, &m.layout);
    let mut p = m.params.clone();
    let zeros = vec![0.0; p.len()];
    opt.update(&mut p, &zeros, 0.1);
    for n in ["model.layers.0.attn.A_log", "model.layers.0.attn.dt_bias", "model.layers.0.attn.o_norm.weight"] {
        let r = m.layout.specs[m.layout.find(n).unwrap()].range();
        assert_eq!(&p[r.clone()], &m.params[r], "{n} must not decay (fla's _no_weight_decay)");
    }
    let r = m.layout.specs[m.layout.find("model.layers.0.attn.v_proj.weight").unwrap()].range();
    assert!(p[r.clone()].iter().zip(&m.params[r]).all(|(a, b)| (a - b * 0.95).abs() < 1e-7));
}

// ---- gradients ------------------------------------------------------------------------------------

/// Smoother test conditions: a larger init (gradients well above f32 noise) and a larger norm
/// eps (the per-head output norm of a head output near zero has a genuine kink within a
/// finite-difference step; see tests/model.rs).
fn smooth(c: ModelConfig) -> ModelConfig {
    match c {
        ModelConfig::DeltaNet(c) => DeltaNetConfig { initializer_range: 0.3, norm_eps: 0.1, ..c }.into(),
        ModelConfig::GatedDeltaNet(c) => GatedDeltaNetConfig { initializer_range: 0.3, norm_eps: 0.1, ..c }.into(),
        c => c,
    }
}

/// Backward vs central differences of the mean loss on up to 12 entries of every tensor (all of
/// a small one: A_log and dt_bias entirely).
fn grad_check(c: impl Into<ModelConfig>, b: usize, t: usize) {
    let mut m = GlaModel::new(smooth(c.into()), 3).unwrap();
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
        let picks: Vec<usize> =
            if s.numel() <= 12 { s.range().collect() } else { (0..12).map(|_| s.offset + r.below(s.numel())).collect() };
        for i in picks {
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
        // per tensor: a wrong or missing term gives an O(1) relative error
        assert!(tn <= 1e-2 * td.max(1e-8) + 1e-10, "{}: |fd - bwd|^2 = {tn:.3e} vs |fd|^2 = {td:.3e}", s.name);
        assert!(td > 0.0 || s.name.ends_with("lm_head.weight"), "{}: no gradient at all", s.name);
        num += tn;
        den += td;
    }
    assert!((num / den).sqrt() < 1e-2, "whole model: relative RMSE {:.3e}", (num / den).sqrt());
}

#[test]
fn delta_net_gradients_default_layer() {
    // fla's defaults: short conv with SiLU, L2 norm in the op, beta = sigmoid, plain RMSNorm
    grad_check(DeltaNetConfig { intermediate_size: Some(24), ..DeltaNetConfig::tiny(16, 2, 2, 11) }, 2, 5);
}

#[test]
fn delta_net_gradients_every_option() {
    // elu + 1 after a conv without activation, the sum norm, the gated output norm, 2 sigmoid(b)
    let c = DeltaNetConfig {
        qk_activation: "elu".into(),
        qk_norm: "sum".into(),
        use_gate: true,
        allow_neg_eigval: true,
        tie_word_embeddings: true,
        intermediate_size: Some(24),
        ..DeltaNetConfig::tiny(16, 1, 2, 11)
    };
    grad_check(c, 1, 6);
    // no conv: SiLU on q, k, v directly; identity with the L2 norm; beta = 1, then 2
    for allow_neg_eigval in [false, true] {
        let c = DeltaNetConfig {
            use_short_conv: false,
            use_beta: false,
            allow_neg_eigval,
            qk_activation: "identity".into(),
            intermediate_size: Some(24),
            ..DeltaNetConfig::tiny(16, 1, 2, 11)
        };
        grad_check(c, 2, 4);
    }
    let c = DeltaNetConfig { use_short_conv: false, intermediate_size: Some(24), ..DeltaNetConfig::tiny(16, 1, 2, 11) };
    grad_check(c, 1, 5);
}

#[test]
fn gated_deltanet_gradients_grouped_value_heads() {
    // the decay computed in the op, value heads twice the query heads, the swish-gated norm
    let c =
        GatedDeltaNetConfig { num_v_heads: Some(4), expand_v: 1.5, intermediate_size: Some(24), ..GatedDeltaNetConfig::tiny(16, 2, 2, 11) };
    grad_check(c, 2, 5);
}

#[test]
fn gated_deltanet_gradients_sigmoid_gate_no_conv_long() {
    let c = GatedDeltaNetConfig {
        output_gate_activation: "sigmoid".into(),
        use_short_conv: false,
        allow_neg_eigval: true,
        intermediate_size: Some(24),
        ..GatedDeltaNetConfig::tiny(16, 1, 2, 11)
    };
    grad_check(c, 1, 70);
    let c = GatedDeltaNetConfig { use_gate: false, intermediate_size: Some(24), ..GatedDeltaNetConfig::tiny(16, 1, 2, 11) };
    grad_check(c, 1, 6);
}

// ---- training -------------------------------------------------------------------------------------

#[test]
fn a_tiny_delta_net_learns_mqar() {
    learns_mqar(DeltaNetConfig { intermediate_size: Some(32), ..DeltaNetConfig::tiny(32, 2, 2, 32) }.into());
}

#[test]
fn a_tiny_gated_deltanet_learns_mqar() {
    learns_mqar(GatedDeltaNetConfig { intermediate_size: Some(32), expand_v: 1.0, ..GatedDeltaNetConfig::tiny(32, 2, 2, 32) }.into());
}

#[test]
fn delta_training_resumes_exactly() {
    let dir = tmpdir("resume");
    let task = Mqar { vocab: 32, seq_len: 16, num_kv_pairs: 2, ..Mqar::default() };
    let tc = TrainConfig { steps: 6, batch_size: 4, grad_accum: 2, warmup: 2, eval_examples: 8, task, ..TrainConfig::default() };
    let mc: ModelConfig = GatedDeltaNetConfig { intermediate_size: Some(32), ..GatedDeltaNetConfig::tiny(16, 2, 2, 32) }.into();
    let mut full = Trainer::new(mc.clone(), tc.clone()).unwrap();
    let want: Vec<f64> = (0..6).map(|_| full.step().unwrap().loss).collect();
    let mut first = Trainer::new(mc, tc).unwrap();
    for _ in 0..3 {
        first.step().unwrap();
    }
    first.save(&dir, 2).unwrap();
    let mut second = Trainer::resume(&dir, None).unwrap();
    assert_eq!(second.model.config.model_type(), "gated_deltanet");
    for _ in 3..6 {
        second.step().unwrap();
    }
    assert_eq!(second.losses, want, "bit-exact losses after resume");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- inference ------------------------------------------------------------------------------------

/// Prefill `pieces`, then decode the rest one by one; the worst relative error of every logits
/// vector against the full forward.
fn check_prefill_decode(m: &GlaModel, total: usize, pieces: &[usize]) -> f64 {
    let vocab = m.dims.vocab;
    let ids = tokens(total, 9, vocab);
    let full = m.logits(&ids, 1, total).unwrap();
    let at = |t: usize| &full[t * vocab..(t + 1) * vocab];
    let mut st = m.new_state();
    let bytes = st.bytes();
    let mut worst = 0.0f64;
    let mut pos = 0;
    for &p in pieces {
        let l = m.prefill(&ids[pos..pos + p], &mut st).unwrap();
        pos += p;
        worst = worst.max(rel(&l, at(pos - 1)));
    }
    while pos < total {
        let l = m.decode(ids[pos], &mut st).unwrap();
        worst = worst.max(rel(&l, at(pos)));
        pos += 1;
    }
    assert_eq!(st.seen_tokens(), total);
    assert_eq!(st.bytes(), bytes, "constant memory");
    worst
}

#[test]
fn delta_prefill_then_decode_equals_full_forward() {
    let models: Vec<ModelConfig> = vec![
        DeltaNetConfig { initializer_range: 0.1, ..DeltaNetConfig::tiny(32, 2, 4, 64) }.into(),
        DeltaNetConfig {
            initializer_range: 0.1,
            qk_activation: "relu".into(),
            qk_norm: "sum".into(),
            use_gate: true,
            tie_word_embeddings: true,
            ..DeltaNetConfig::tiny(32, 2, 4, 64)
        }
        .into(),
        DeltaNetConfig { initializer_range: 0.1, use_short_conv: false, use_beta: false, ..DeltaNetConfig::tiny(32, 1, 2, 64) }.into(),
        DeltaNetConfig { initializer_range: 0.1, use_beta: false, allow_neg_eigval: true, ..DeltaNetConfig::tiny(32, 1, 2, 64) }.into(),
        GatedDeltaNetConfig { initializer_range: 0.1, num_v_heads: Some(4), ..GatedDeltaNetConfig::tiny(32, 2, 2, 64) }.into(),
        GatedDeltaNetConfig {
            initializer_range: 0.1,
            use_short_conv: false,
            output_gate_activation: "sigmoid".into(),
            allow_neg_eigval: true,
            ..GatedDeltaNetConfig::tiny(32, 1, 4, 64)
        }
        .into(),
    ];
    for c in models {
        let m = GlaModel::new(c.clone(), 5).unwrap();
        for pieces in [&[70][..], &[20], &[1], &[30, 41, 3]] {
            let total = pieces.iter().sum::<usize>() + 8;
            let e = check_prefill_decode(&m, total, pieces);
            assert!(e <= 1e-4, "{c:?} pieces={pieces:?}: rel err {e:e}");
        }
    }
}

#[test]
fn delta_batch_decode_equals_each_alone_and_states_export() {
    let c = GatedDeltaNetConfig { initializer_range: 0.1, num_v_heads: Some(4), ..GatedDeltaNetConfig::tiny(32, 2, 2, 64) };
    let m = GlaModel::new(c, 2).unwrap();
    let prompts: Vec<Vec<u32>> = [5usize, 17, 1].iter().enumerate().map(|(i, &n)| tokens(n, 100 + i as u64, 64)).collect();
    let mut alone = Vec::new();
    for p in &prompts {
        let mut st = m.new_state();
        let l = m.prefill(p, &mut st).unwrap();
        let l2 = m.decode(7, &mut st).unwrap();
        alone.push((l, l2));
    }
    let mut states: Vec<_> = prompts.iter().map(|_| m.new_state()).collect();
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut sts: Vec<_> = states.iter_mut().collect();
    let ls = m.prefill_batch(&refs, &mut sts).unwrap();
    let ls2 = m.decode_batch(&[7, 7, 7], &mut sts).unwrap();
    for (i, (a, b)) in alone.iter().enumerate() {
        assert!(rel(&ls[i], a) <= 1e-5 && rel(&ls2[i], b) <= 1e-5, "sequence {i}");
    }
    // the state of a layer is [HV, K, V] = [4, 16, 32] (expand_v 2), and fla's [HV, V, K] round trips
    let st = &states[1];
    let kf = st.export_recurrent(0, gla_model::infer::StateLayout::KeyFirst).unwrap();
    assert_eq!(kf.len(), 4 * 16 * 32);
    let mut other = m.new_state();
    for l in 0..2 {
        let vf = st.export_recurrent(l, gla_model::infer::StateLayout::ValueFirst).unwrap();
        other.import_recurrent(l, &vf, gla_model::infer::StateLayout::ValueFirst).unwrap();
        let cv = &st.layers()[l].conv;
        other.import_conv(l, [&cv[0], &cv[1], &cv[2]]).unwrap();
    }
    other.set_seen_tokens(st.seen_tokens());
    assert_eq!(&other, st);
    // a GLA state does not fit a delta model
    let gla = GlaModel::new(gla_model::GlaConfig::tiny(32, 2, 2, 64), 0).unwrap();
    assert!(matches!(m.decode(1, &mut gla.new_state()), Err(Error::Shape { tensor: "state", .. })));
}

// ---- checkpoints ----------------------------------------------------------------------------------

#[test]
fn delta_checkpoints_round_trip_in_flas_layout() {
    let dir = tmpdir("ckpt");
    for (i, c) in [ModelConfig::from(DeltaNetConfig { use_gate: true, ..DeltaNetConfig::tiny(32, 2, 4, 50) }), small_gdn().into()]
        .into_iter()
        .enumerate()
    {
        let d = dir.join(i.to_string());
        let m = GlaModel::new(c.clone(), 4).unwrap();
        save_model(&d, &m).unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["model_type"], c.model_type());
        let bytes = std::fs::read(d.join(WEIGHTS_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut got: Vec<(String, Vec<usize>)> = st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
        got.sort();
        let want = if i == 0 { fla_delta_net_names(true) } else { fla_gated_deltanet_names() };
        assert_eq!(got, want);
        let back = load_model(&d).unwrap();
        assert_eq!(back.params, m.params);
        assert_eq!(back.config.model_type(), c.model_type());
        let ids = [1u32, 2, 3, 4];
        assert_eq!(back.logits(&ids, 1, 4).unwrap(), m.logits(&ids, 1, 4).unwrap());
    }
    // a config of another family over these weights names the missing tensor
    let d = dir.join("1");
    let dn = DeltaNetConfig { tie_word_embeddings: true, intermediate_size: Some(40), ..DeltaNetConfig::tiny(32, 1, 2, 50) };
    gla_model::checkpoint::write_atomic(&d.join("config.json"), dn.to_json().as_bytes()).unwrap();
    let e = load_model(&d).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.attn.q_proj.weight") && e.contains("[32, 32]"), "{e}");
    // an fla model_type not built here: a typed error that lists what is
    gla_model::checkpoint::write_atomic(&d.join("config.json"), br#"{"model_type": "rwkv7"}"#).unwrap();
    let e = load_model(&d).unwrap_err();
    assert!(matches!(e, Error::Unsupported { feature: "model_type", .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn delta_losses_follow_flas_label_shift() {
    // the loss head is the family's: the same shift and mean over labelled rows
    let m = GlaModel::new(DeltaNetConfig::tiny(16, 1, 2, 11), 1).unwrap();
    let ids = [1u32, 2, 3, 4, 5];
    let tg = shift_labels(&[1, 2, 3, 4, 5], 5);
    let mut acts = Activations::new(&m.dims, 1, 5);
    let out = m.forward(&mut acts, &ids, &tg).unwrap();
    assert_eq!(out.n_valid, 4);
    let logits = m.logits(&ids, 1, 5).unwrap();
    let mut want = 0.0f64;
    for t in 0..4 {
        let row = &logits[t * 11..(t + 1) * 11];
        let mx = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = mx + row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln();
        want += lse - row[tg[t] as usize] as f64;
    }
    assert!((out.loss - want / 4.0).abs() < 1e-5, "{} vs {}", out.loss, want / 4.0);
}
