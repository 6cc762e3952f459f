//! Hybrid stacks (fla's `attn` config key) on the CPU: fla's softmax `Attention` layer at the
//! listed layers of a GLA, DeltaNet or Gated DeltaNet model. Configs (fla's defaults and checks,
//! the key written back as fla writes it), the parameter table against fla's names and shapes,
//! whole-model gradients by finite differences (every tensor of the attention layers), padded
//! batches against each sequence alone, prefill-then-decode against the full forward (full and
//! windowed attention, the window shorter than the prompt), the KV cache's memory, training,
//! and checkpoints.

use gla_model::checkpoint::{load_model, save_model};
use gla_model::config::{AttnDims, DeltaNetConfig, GatedDeltaNetConfig, GlaConfig, MixerDims, ModelConfig};
use gla_model::{Activations, Error, GlaModel, Layout, Rng, IGNORE_INDEX};
use serde_json::json;

mod common;
use common::{learns_mqar, loss, rel, tmpdir, tokens};

fn attn_layers(d: &gla_model::config::Dims) -> Vec<(usize, AttnDims)> {
    d.mixers.iter().enumerate().filter_map(|(l, m)| if let MixerDims::Attn(a) = m { Some((l, *a)) } else { None }).collect()
}

// ---- configs --------------------------------------------------------------------------------------

#[test]
fn attn_key_takes_flas_forms_and_defaults() {
    // one spec: fla's defaults (num_kv_heads = num_heads, no bias, no window, theta 10000)
    let c = GlaConfig::from_json(r#"{"hidden_size": 64, "num_hidden_layers": 4, "attn": {"layers": [1, 3], "num_heads": 4}}"#).unwrap();
    let d = c.dims().unwrap();
    let a = AttnDims { heads: 4, kv_heads: 4, head_dim: 16, qkv_bias: false, window: None, rope_theta: 10000.0 };
    assert_eq!(attn_layers(&d), vec![(1, a), (3, a)]);
    assert!(matches!(d.mixers[0], MixerDims::Gla(_)) && matches!(d.mixers[2], MixerDims::Gla(_)));
    // written back as fla's parse_attention_config leaves it: defaults filled, a dict stays a dict
    let v: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    assert_eq!(
        v["attn"],
        json!({"layers": [1, 3], "num_heads": 4, "num_kv_heads": 4, "qkv_bias": false, "window_size": null, "rope_theta": 10000.0})
    );
    let back = GlaConfig::from_json(&c.to_json()).unwrap();
    assert_eq!(back.dims().unwrap(), d);
    assert_eq!(GlaConfig::from_json(&back.to_json()).unwrap(), back, "the written form is a fixed point");

    // a list of specs, every family, unknown keys kept
    let text = r#"{"model_type": "gated_deltanet", "hidden_size": 32, "head_dim": 16, "num_heads": 2, "num_hidden_layers": 4,
                   "attn": [{"layers": [1], "num_heads": 4, "num_kv_heads": 2, "window_size": 8, "rope_theta": 500, "note": "x"},
                            {"layers": [3], "num_heads": 2, "qkv_bias": true}]}"#;
    let c = ModelConfig::from_json(text).unwrap();
    let d = c.dims().unwrap();
    assert_eq!(
        attn_layers(&d),
        vec![
            (1, AttnDims { heads: 4, kv_heads: 2, head_dim: 8, qkv_bias: false, window: Some(8), rope_theta: 500.0 }),
            (3, AttnDims { heads: 2, kv_heads: 2, head_dim: 16, qkv_bias: true, window: None, rope_theta: 10000.0 }),
        ]
    );
    let v: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    assert_eq!(v["attn"][0]["note"], "x");
    assert_eq!(v["attn"][0]["rope_theta"], 500);
    assert_eq!(v["attn"][1]["num_kv_heads"], 2);
    assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap().dims().unwrap(), d);
    let dn = DeltaNetConfig { attn: Some(json!({"layers": [0], "num_heads": 2})), ..DeltaNetConfig::tiny(32, 2, 2, 50) };
    assert!(matches!(dn.dims().unwrap().mixers[0], MixerDims::Attn(_)));
    // null is a pure model
    let c = GlaConfig::from_json(r#"{"attn": null}"#).unwrap();
    assert!(c.dims().unwrap().gla().is_some());
}

#[test]
fn attn_key_is_checked_with_flas_rules() {
    let bad = |attn: serde_json::Value| {
        let c = GlaConfig { attn: Some(attn), ..GlaConfig::tiny(64, 4, 2, 50) };
        c.dims().unwrap_err()
    };
    for (attn, what) in [
        (json!({"num_heads": 4}), "\"layers\" is required"),
        (json!({"layers": [1]}), "\"num_heads\" is required"),
        (json!({"layers": [4], "num_heads": 4}), "not a layer index in [0, 4)"),
        (json!({"layers": [1, 1], "num_heads": 4}), "twice"),
        (json!([{"layers": [1], "num_heads": 4}, {"layers": [1], "num_heads": 2}]), "already assigned by spec 0"),
        (json!({"layers": [1], "num_heads": 0}), "positive integer"),
        (json!({"layers": [1], "num_heads": 4, "num_kv_heads": 3}), "multiple of num_kv_heads"),
        (json!({"layers": [1], "num_heads": 3}), "multiple of num_heads"),
        (json!({"layers": [1], "num_heads": 64}), "must be even"),
        (json!({"layers": [1], "num_heads": 4, "window_size": 0}), "window_size"),
        (json!({"layers": [1], "num_heads": 4, "qkv_bias": 1}), "boolean"),
        (json!({"layers": [1], "num_heads": 4, "rope_theta": -1.0}), "rope_theta"),
        (json!("all"), "dictionary"),
    ] {
        let e = bad(attn.clone());
        assert!(matches!(e, Error::BadConfig { key: "attn", .. }), "{attn}: {e}");
        assert!(e.to_string().contains(what), "{attn}: {e}");
    }
    // fla's layer has q_norm/k_norm, but its config never turns them on: refused by name
    let e = bad(json!({"layers": [1], "num_heads": 4, "qk_norm": true}));
    assert!(matches!(e, Error::Unsupported { .. }) && e.to_string().contains("qk_norm"), "{e}");
}

// ---- parameter table ------------------------------------------------------------------------------

/// fla 0.6.0's `GLAForCausalLM` with `attn = {layers: [1], num_heads: 4, num_kv_heads: 2,
/// qkv_bias: true}` for hidden_size 32, 2 layers, 2 GLA heads, vocab 50, intermediate_size 40,
/// tied embeddings (fla/layers/attn.py: q_proj [D, D], k_proj/v_proj [H_KV*Dh, D] with biases,
/// o_proj [D, D] without; RoPE's inv_freq is a non-persistent buffer, not a parameter).
fn fla_hybrid_gla_names() -> Vec<(String, Vec<usize>)> {
    let mut v = vec![("model.embeddings.weight".to_string(), vec![50, 32]), ("model.norm.weight".to_string(), vec![32])];
    let mut layer = |l: usize, mixer: &[(&str, Vec<usize>)]| {
        for (n, s) in mixer.iter().cloned().chain([
            ("attn_norm.weight", vec![32]),
            ("mlp_norm.weight", vec![32]),
            ("mlp.gate_proj.weight", vec![40, 32]),
            ("mlp.up_proj.weight", vec![40, 32]),
            ("mlp.down_proj.weight", vec![32, 40]),
        ]) {
            v.push((format!("model.layers.{l}.{n}"), s));
        }
    };
    layer(
        0,
        &[
            ("attn.q_proj.weight", vec![16, 32]),
            ("attn.k_proj.weight", vec![16, 32]),
            ("attn.v_proj.weight", vec![32, 32]),
            ("attn.g_proj.weight", vec![32, 32]),
            ("attn.gk_proj.0.weight", vec![16, 32]),
            ("attn.gk_proj.1.weight", vec![16, 16]),
            ("attn.gk_proj.1.bias", vec![16]),
            ("attn.o_proj.weight", vec![32, 32]),
            ("attn.g_norm_swish_gate.weight", vec![16]),
        ],
    );
    layer(
        1,
        &[
            ("attn.q_proj.weight", vec![32, 32]),
            ("attn.q_proj.bias", vec![32]),
            ("attn.k_proj.weight", vec![16, 32]),
            ("attn.k_proj.bias", vec![16]),
            ("attn.v_proj.weight", vec![16, 32]),
            ("attn.v_proj.bias", vec![16]),
            ("attn.o_proj.weight", vec![32, 32]),
        ],
    );
    v.sort();
    v
}

#[test]
fn attention_layers_use_flas_names_shapes_order_and_init() {
    let c = GlaConfig {
        attn: Some(json!({"layers": [1], "num_heads": 4, "num_kv_heads": 2, "qkv_bias": true})),
        intermediate_size: Some(40),
        tie_word_embeddings: true,
        ..GlaConfig::tiny(32, 2, 2, 50)
    };
    let dims = c.dims().unwrap();
    let lay = Layout::new(&dims);
    let mut ours: Vec<_> = lay.specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect();
    ours.sort();
    assert_eq!(ours, fla_hybrid_gla_names());
    // fla's registration order: each nn.Linear's weight then its bias, o_proj last
    let names: Vec<&str> = lay.specs.iter().map(|s| s.name.as_str()).filter(|n| n.starts_with("model.layers.1.attn.")).collect();
    let want = ["q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias", "o_proj.weight"];
    assert_eq!(names, want.iter().map(|n| format!("model.layers.1.attn.{n}")).collect::<Vec<_>>());
    assert!(lay.layers[1].attn().is_some() && lay.layers[0].gla().is_some());
    // the parameter count of limits.rs is the table's
    assert_eq!(gla_model::limits::param_count(&dims), Some(lay.numel as u64));
    // fla's init: normal weights, zero biases
    let m = GlaModel::new(c, 1).unwrap();
    let t = |n: &str| &m.params[lay.specs[lay.find(n).unwrap()].range()];
    assert!(t("model.layers.1.attn.k_proj.bias").iter().all(|&x| x == 0.0));
    let w = t("model.layers.1.attn.q_proj.weight");
    let std = (w.iter().map(|x| (x * x) as f64).sum::<f64>() / w.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.004, "q_proj std {std}");
}

// ---- gradients ------------------------------------------------------------------------------------

/// Backward vs central differences of the mean loss on up to 12 entries of every tensor (all
/// of the small ones: the biases). A large init keeps the gradients above f32 noise and the
/// attention far from uniform; a large norm eps keeps the gated norms smooth (tests/delta.rs).
fn grad_check(c: ModelConfig, b: usize, t: usize) {
    let mut m = GlaModel::new(c, 3).unwrap();
    let vocab = m.dims.vocab;
    let mut r = Rng::new(11);
    // random biases: fla's zero init would leave their gradients' use of the bias untested
    for s in m.layout.specs.clone().iter().filter(|s| s.name.ends_with("_proj.bias")) {
        m.params[s.range()].iter_mut().for_each(|x| *x = (r.normal() * 0.3) as f32);
    }
    let ids: Vec<u32> = (0..b * t).map(|_| r.below(vocab) as u32).collect();
    let tg: Vec<i64> = (0..b * t).map(|i| if i % 3 == 1 { IGNORE_INDEX } else { r.below(vocab) as i64 }).collect();
    let mut acts = Activations::new(&m.dims, b, t);
    m.forward(&mut acts, &ids, &tg).unwrap();
    let mut g = vec![0.0f32; m.num_params()];
    m.backward(&mut acts, &mut g, 1.0).unwrap();
    // smaller than tests/delta.rs's 1e-2: the sharper softmax of the large init makes the
    // central difference's O(h^2) term dominate at 1e-2 (the error falls ~4x from 1e-2 to 5e-3
    // and grows ~4x at 2e-2: truncation, not the backward)
    let h = 5e-3f32;
    let (mut num, mut den) = (0.0f64, 0.0f64);
    let mut attn_tensors = 0;
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
        assert!(tn <= 1e-2 * td.max(1e-8) + 1e-10, "{}: |fd - bwd|^2 = {tn:.3e} vs |fd|^2 = {td:.3e}", s.name);
        assert!(td > 0.0 || s.name.ends_with("lm_head.weight"), "{}: no gradient at all", s.name);
        let layer: Option<usize> = s.name.strip_prefix("model.layers.").and_then(|x| x.split('.').next()?.parse().ok());
        if layer.is_some_and(|l| matches!(m.dims.mixers[l], MixerDims::Attn(_))) && s.name.contains(".attn.") {
            attn_tensors += 1;
        }
        num += tn;
        den += td;
    }
    assert!(attn_tensors >= 4, "the attention layers' tensors were checked ({attn_tensors})");
    assert!((num / den).sqrt() < 1e-2, "whole model: relative RMSE {:.3e}", (num / den).sqrt());
}

#[test]
fn hybrid_gla_gradients_bias_gqa_window() {
    // attention at layer 1 (GQA 4/2, biases, a window of 3 < T), GLA with short conv at 0 and 2
    let c = GlaConfig {
        attn: Some(json!({"layers": [1], "num_heads": 4, "num_kv_heads": 2, "qkv_bias": true, "window_size": 3})),
        use_short_conv: true,
        initializer_range: 0.3,
        norm_eps: 0.1,
        intermediate_size: Some(24),
        ..GlaConfig::tiny(16, 3, 2, 11)
    };
    grad_check(c.into(), 2, 6);
    // full attention first, no bias, theta 100 (faster rotations), tied
    let c = GlaConfig {
        attn: Some(json!({"layers": [0], "num_heads": 2, "rope_theta": 100.0})),
        initializer_range: 0.3,
        norm_eps: 0.1,
        tie_word_embeddings: true,
        intermediate_size: Some(24),
        ..GlaConfig::tiny(16, 2, 2, 11)
    };
    grad_check(c.into(), 1, 7);
}

#[test]
fn hybrid_gated_deltanet_gradients() {
    let c = GatedDeltaNetConfig {
        attn: Some(json!([{"layers": [0], "num_heads": 2, "num_kv_heads": 1, "window_size": 4}, {"layers": [2], "num_heads": 4}])),
        initializer_range: 0.3,
        norm_eps: 0.1,
        intermediate_size: Some(24),
        ..GatedDeltaNetConfig::tiny(16, 3, 2, 11)
    };
    grad_check(c.into(), 2, 6);
}

// ---- batches and decode ---------------------------------------------------------------------------

/// A hybrid GLA (attention at layer 1 of 3) and a hybrid Gated DeltaNet (attention at 0 and 2 of
/// 3), with `window` on the attention layers; a larger init so that attention is far from
/// uniform.
fn hybrids(window: Option<usize>) -> Vec<ModelConfig> {
    let spec = |layers: serde_json::Value, heads: usize, kv: usize| json!({"layers": layers, "num_heads": heads, "num_kv_heads": kv, "window_size": window, "qkv_bias": true});
    vec![
        GlaConfig { attn: Some(spec(json!([1]), 4, 2)), use_short_conv: true, initializer_range: 0.1, ..GlaConfig::tiny(32, 3, 2, 64) }
            .into(),
        GatedDeltaNetConfig { attn: Some(spec(json!([0, 2]), 4, 4)), initializer_range: 0.1, ..GatedDeltaNetConfig::tiny(32, 3, 2, 64) }
            .into(),
    ]
}

#[test]
fn batch_rows_equal_each_row_alone() {
    // a [B, T] training forward treats each row as its own sequence (RoPE positions from 0)
    for c in hybrids(Some(5)).into_iter().chain(hybrids(None)) {
        let m = GlaModel::new(c, 5).unwrap();
        let (b, t) = (3, 11);
        let ids = tokens(b * t, 4, m.dims.vocab);
        let all = m.logits(&ids, b, t).unwrap();
        let w = t * m.dims.vocab;
        for r in 0..b {
            let one = m.logits(&ids[r * t..(r + 1) * t], 1, t).unwrap();
            assert!(rel(&all[r * w..(r + 1) * w], &one) < 1e-6, "row {r}");
        }
        // prompts of different lengths in one prefill (packed varlen) == each alone
        let prompts: Vec<Vec<u32>> = [7usize, 13, 1, 9].iter().enumerate().map(|(i, &n)| tokens(n, 20 + i as u64, m.dims.vocab)).collect();
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let mut states: Vec<_> = prompts.iter().map(|_| m.new_state()).collect();
        let mut st_refs: Vec<&mut _> = states.iter_mut().collect();
        let batch = m.prefill_batch(&refs, &mut st_refs).unwrap();
        let next: Vec<u32> = (0..prompts.len() as u32).collect();
        let dec = m.decode_batch(&next, &mut st_refs).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let mut st = m.new_state();
            let alone = m.prefill(p, &mut st).unwrap();
            assert!(rel(&batch[i], &alone) < 1e-5, "prompt {i}");
            let d = m.decode(next[i], &mut st).unwrap();
            assert!(rel(&dec[i], &d) < 1e-5, "decode {i}");
            assert_eq!((st.seen_tokens(), st.kv_bytes()), (states[i].seen_tokens(), states[i].kv_bytes()), "state {i}");
        }
    }
}

/// Prefill `pieces`, then decode the rest one by one; the worst relative error of every logits
/// vector against the full forward, and the KV caches' bytes after each token.
fn check_prefill_decode(m: &GlaModel, total: usize, pieces: &[usize]) -> (f64, Vec<usize>) {
    let vocab = m.dims.vocab;
    let ids = tokens(total, 9, vocab);
    let full = m.logits(&ids, 1, total).unwrap();
    let at = |t: usize| &full[t * vocab..(t + 1) * vocab];
    let mut st = m.new_state();
    let (mut worst, mut kv) = (0.0f64, Vec::new());
    let mut pos = 0;
    for &p in pieces {
        let l = m.prefill(&ids[pos..pos + p], &mut st).unwrap();
        pos += p;
        worst = worst.max(rel(&l, at(pos - 1)));
    }
    while pos < total {
        let l = m.decode(ids[pos], &mut st).unwrap();
        worst = worst.max(rel(&l, at(pos)));
        kv.push(st.kv_bytes());
        pos += 1;
    }
    assert_eq!(st.seen_tokens(), total);
    (worst, kv)
}

#[test]
fn prefill_then_decode_equals_full_forward() {
    for window in [None, Some(6)] {
        for c in hybrids(window) {
            let m = GlaModel::new(c.clone(), 5).unwrap();
            // one prompt longer than the window; several pieces (multi-turn: a prefill into a
            // cache that holds tokens already); a one-token prompt; a prompt over 64 tokens
            for pieces in [&[20][..], &[9, 4, 1], &[1], &[70]] {
                let total = pieces.iter().sum::<usize>() + 12;
                let (e, kv) = check_prefill_decode(&m, total, pieces);
                assert!(e <= 1e-4, "{} window {window:?} pieces {pieces:?}: rel err {e:e}", c.model_type());
                let layers = m.dims.mixers.iter().filter(|x| matches!(x, MixerDims::Attn(_))).count();
                let per_token: usize = attn_layers(&m.dims).iter().map(|(_, a)| 2 * a.kv_dim() * 4).sum();
                assert!(layers > 0 && per_token > 0);
                match window {
                    // a ring buffer of the window: w slots from the first token on
                    Some(w) => assert!(kv.iter().all(|&b| b == per_token * w), "window {w}: KV bytes {kv:?}"),
                    // grows with the context: at least one slot per token seen
                    None => assert!(kv.iter().enumerate().all(|(i, &b)| b >= per_token * (total - 12 + i + 1)), "{kv:?}"),
                }
            }
        }
    }
}

// ---- training and checkpoints ---------------------------------------------------------------------

#[test]
fn a_hybrid_gla_learns_mqar() {
    let attn = Some(json!({"layers": [1], "num_heads": 2}));
    learns_mqar(GlaConfig { attn, intermediate_size: Some(32), ..GlaConfig::tiny(32, 2, 2, 32) }.into());
}

#[test]
fn a_hybrid_gated_deltanet_learns_mqar() {
    let attn = Some(json!({"layers": [1], "num_heads": 2, "window_size": 8}));
    learns_mqar(GatedDeltaNetConfig { attn, intermediate_size: Some(32), expand_v: 1.0, ..GatedDeltaNetConfig::tiny(32, 2, 2, 32) }.into());
}

#[test]
fn hybrid_checkpoints_round_trip() {
    let dir = tmpdir("ckpt");
    for c in hybrids(Some(4)) {
        let m = GlaModel::new(c.clone(), 8).unwrap();
        save_model(&dir, &m).unwrap();
        let back = load_model(&dir).unwrap();
        assert_eq!(back.dims, m.dims);
        assert_eq!(back.params, m.params);
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(v["attn"]["window_size"], 4, "{v}");
        assert_eq!(v["attn"]["rope_theta"], 10000.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
