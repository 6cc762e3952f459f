//! Interop rules checked against fla 0.6.0 (and transformers 5, which it requires) by reading
//! their source, one test each:
//!
//! 1. the saved `config.json` says `"dtype": "float32"` over our f32 weights, also for a model
//!    loaded from a bf16 checkpoint, and writes no `torch_dtype` (fla's own config has none);
//! 2. `hidden_ratio: null` with no `intermediate_size` is ratio 4 (fla's `GatedMLP`);
//! 3. the padding row of the embedding is random at init (fla's `_init_weights`), and only its
//!    gradient from the embedding lookup is masked;
//! 4. `clamp_min = 0` is legal (no decay); a positive `clamp_min` is refused by name, because the
//!    GLA op refuses the positive log-gates it would make.
//!
//! The f32 checkpoint used is fla's own (`tests/fixtures/fla/noconv`, `save_pretrained` output of
//! fla 0.6.0 with transformers 5.17.0, see tools/fla_fixtures.py); the bf16 one is made from it
//! here, as `model.to(torch.bfloat16).save_pretrained(dir)` writes it.

use std::path::{Path, PathBuf};

use gla_model::checkpoint::{load_model, save_model, CONFIG_FILE, WEIGHTS_DTYPE, WEIGHTS_FILE, WEIGHTS_TORCH_DTYPE};
use gla_model::shards::{load_model_dir, save_sharded};
use gla_model::{shift_labels, Activations, Error, GlaConfig, GlaModel};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-interop-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fla_fixture(variant: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fla").join(variant);
    assert!(d.join(WEIGHTS_FILE).is_file(), "fla fixture {} is missing (tools/fla_fixtures.py makes it)", d.display());
    d
}

fn read_json(path: &Path) -> serde_json::Map<String, Value> {
    match serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap() {
        Value::Object(m) => m,
        other => panic!("{}: not a JSON object: {other}", path.display()),
    }
}

/// f32 -> bf16 bits with round-to-nearest-even, as PyTorch's `.to(torch.bfloat16)` (finite input).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Writes fla's f32 fixture `variant` into `dir` as a bf16 checkpoint: every tensor BF16, and the
/// config's dtype keys replaced by `dtype_keys`. Returns the widened bf16 values by tensor name.
fn write_bf16_checkpoint(dir: &Path, variant: &str, dtype_keys: &[(&str, &str)]) -> Vec<(String, Vec<f32>)> {
    let src = fla_fixture(variant);
    let mut cfg = read_json(&src.join(CONFIG_FILE));
    cfg.remove("dtype");
    cfg.remove("torch_dtype");
    for (k, v) in dtype_keys {
        cfg.insert((*k).into(), (*v).into());
    }
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let bytes = std::fs::read(src.join(WEIGHTS_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
    names.sort();
    let mut widened = Vec::new();
    let mut data = Vec::new();
    for n in &names {
        let t = st.tensor(n).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{n}: fla's fixture is f32");
        let bits: Vec<u16> = t.data().chunks_exact(4).map(|b| bf16_bits(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
        widened.push((n.clone(), bits.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect()));
        data.push((n.clone(), t.shape().to_vec(), bits.iter().flat_map(|h| h.to_le_bytes()).collect::<Vec<u8>>()));
    }
    let views: Vec<(String, TensorView<'_>)> =
        data.iter().map(|(n, shape, b)| (n.clone(), TensorView::new(Dtype::BF16, shape.clone(), b).unwrap())).collect();
    let meta = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    std::fs::write(dir.join(WEIGHTS_FILE), safetensors::serialize(views, meta).unwrap()).unwrap();
    widened
}

/// Every tensor of a saved weight file is [`WEIGHTS_DTYPE`] (f32).
fn assert_all_f32(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (n, t) in st.tensors() {
        assert_eq!(t.dtype(), WEIGHTS_DTYPE, "{}: {n}", path.display());
    }
}

// ---- 1. dtype keys ------------------------------------------------------------------------------

#[test]
fn saved_config_dtype_describes_the_f32_weights_written() {
    assert_eq!((WEIGHTS_DTYPE, WEIGHTS_TORCH_DTYPE), (Dtype::F32, "float32"));
    // how each writer marks a bf16 checkpoint: transformers 5 (fla 0.6.0) writes `dtype` only,
    // transformers < 4.56 `torch_dtype` only, 4.56 .. 4.57 may carry both
    let cases: [&[(&str, &str)]; 3] =
        [&[("dtype", "bfloat16")], &[("torch_dtype", "bfloat16")], &[("dtype", "bfloat16"), ("torch_dtype", "bfloat16")]];
    for (i, keys) in cases.into_iter().enumerate() {
        let src = tmpdir(&format!("bf16-src-{i}"));
        let widened = write_bf16_checkpoint(&src, "noconv", keys);
        let m = load_model(&src).unwrap();
        for (name, vals) in &widened {
            let s = &m.layout.specs[m.layout.find(name).unwrap()];
            assert_eq!(&m.params[s.range()], vals.as_slice(), "{keys:?}: {name} widened exactly");
        }
        for (out, single) in [(tmpdir(&format!("bf16-out-{i}")), true), (tmpdir(&format!("bf16-shards-{i}")), false)] {
            if single {
                save_model(&out, &m).unwrap();
                assert_all_f32(&out.join(WEIGHTS_FILE));
            } else {
                // sharded writer: same config text (GlaConfig::to_json), f32 shards
                save_sharded(&out, &m, 64 * 1024).unwrap();
                let shards: Vec<PathBuf> = std::fs::read_dir(&out)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("model-"))
                    .collect();
                assert!(shards.len() > 1, "expected several shards");
                shards.iter().for_each(|p| assert_all_f32(p));
            }
            let cfg = read_json(&out.join(CONFIG_FILE));
            assert_eq!(cfg.get("dtype"), Some(&Value::from("float32")), "{keys:?}: saved dtype must describe the f32 weights");
            assert!(!cfg.contains_key("torch_dtype"), "{keys:?}: stale torch_dtype kept: {:?}", cfg.get("torch_dtype"));
            // and what was saved is what was loaded, bit for bit
            let back = load_model_dir(&out).unwrap();
            assert!(back.params.iter().zip(&m.params).all(|(a, b)| a.to_bits() == b.to_bits()), "{keys:?}: weights changed");
            let _ = std::fs::remove_dir_all(&out);
        }
        // the in-memory config still records what was read; only the written text is rewritten
        assert_eq!(m.config.extra().get(keys[0].0), Some(&Value::from("bfloat16")));
        let _ = std::fs::remove_dir_all(&src);
    }
}

#[test]
fn saved_config_has_exactly_flas_keys() {
    // fla 0.6.0 + transformers 5.17.0's own config.json: `dtype`, no `torch_dtype`
    let src = fla_fixture("noconv");
    let fla = read_json(&src.join(CONFIG_FILE));
    assert!(fla.contains_key("dtype") && !fla.contains_key("torch_dtype"), "fixture: {:?}", fla.keys());
    let out = tmpdir("fla-keys");
    save_model(&out, &load_model(&src).unwrap()).unwrap();
    let ours = read_json(&out.join(CONFIG_FILE));
    assert_eq!(ours.keys().collect::<Vec<_>>(), fla.keys().collect::<Vec<_>>());
    assert_eq!(ours["dtype"], "float32");
    // a config made here (no dtype key at all) gets one too
    let m = GlaModel::new(GlaConfig::tiny(16, 1, 2, 9), 1).unwrap();
    let cfg: Value = serde_json::from_str(&m.config.to_json()).unwrap();
    assert_eq!((cfg["dtype"].as_str(), cfg.get("torch_dtype")), (Some("float32"), None));
    let _ = std::fs::remove_dir_all(&out);
}

// ---- 2. hidden_ratio: null ------------------------------------------------------------------------

#[test]
fn null_hidden_ratio_is_ratio_4_as_in_flas_gated_mlp() {
    // fla/modules/mlp.py GatedMLP: `if hidden_ratio is None: hidden_ratio = 4`, then
    // I = 256 * ceil(int(D * 4 * 2 / 3) / 256)
    for (d, want) in [(64usize, 256usize), (1024, 2816), (2048, 5632)] {
        let c = GlaConfig::from_json(&format!(r#"{{"hidden_size": {d}, "hidden_ratio": null, "intermediate_size": null}}"#)).unwrap();
        assert_eq!(c.hidden_ratio, None);
        let dims = c.dims().unwrap_or_else(|e| panic!("D={d}: hidden_ratio null refused: {e}"));
        assert_eq!(dims.intermediate, want, "D={d}");
        let explicit = GlaConfig { hidden_ratio: Some(4.0), ..c.clone() };
        assert_eq!(explicit.dims().unwrap().intermediate, want);
        // written back as null, as fla's config keeps it
        let back = GlaConfig::from_json(&c.to_json()).unwrap();
        assert_eq!((back.hidden_ratio, back.dims().unwrap().intermediate), (None, want));
    }
    // the model builds with it: mlp weights [256, 64]
    let c = GlaConfig { hidden_ratio: None, ..GlaConfig::tiny(64, 1, 2, 10) };
    let m = GlaModel::new(c, 3).unwrap();
    assert_eq!(m.layout.specs[m.layout.find("model.layers.0.mlp.gate_proj.weight").unwrap()].shape, [256, 64]);
    // an explicit intermediate_size still wins; a non-positive ratio is still refused
    let c = GlaConfig::from_json(r#"{"hidden_size": 64, "hidden_ratio": null, "intermediate_size": 100}"#).unwrap();
    assert_eq!(c.dims().unwrap().intermediate, 100);
    for r in ["0", "-2"] {
        let c = GlaConfig::from_json(&format!(r#"{{"hidden_size": 64, "hidden_ratio": {r}}}"#)).unwrap();
        assert!(matches!(c.dims(), Err(Error::BadConfig { key: "hidden_ratio", .. })), "hidden_ratio {r}");
    }
}

// ---- 3. padding row ------------------------------------------------------------------------------

#[test]
fn padding_row_is_initialised_like_every_row_as_in_fla() {
    // fla's _init_weights re-draws the whole embedding with normal_ after nn.Embedding zeroed the
    // padding row: pad_token_id changes no initial value
    let base = GlaConfig::tiny(64, 2, 2, 50);
    let with_pad = GlaModel::new(GlaConfig { pad_token_id: Some(3), ..base.clone() }, 7).unwrap();
    let without = GlaModel::new(base, 7).unwrap();
    assert_eq!(with_pad.params, without.params);
    let e = &with_pad.params[with_pad.layout.specs[with_pad.layout.embeddings].range()];
    let row = &e[3 * 64..4 * 64];
    assert!(row.iter().all(|&x| x != 0.0), "padding row must be random, found zeros");
    let std = (row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / 64.0).sqrt();
    assert!((0.01..0.03).contains(&std), "padding row std {std}, init std 0.02");
}

/// Embedding-matrix gradient of one batch holding the padding token as input and as label.
fn embedding_grad(tied: bool) -> (Vec<f32>, usize) {
    let (d, vocab, pad) = (16, 11, 3usize);
    let c = GlaConfig { pad_token_id: Some(pad as i64), tie_word_embeddings: tied, ..GlaConfig::tiny(d, 1, 2, vocab) };
    let m = GlaModel::new(c, 5).unwrap();
    let ids = [1u32, 3, 3, 4, 5, 3, 6, 2];
    let labels: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let tg = shift_labels(&labels, ids.len());
    let mut acts = Activations::new(&m.dims, 1, ids.len());
    m.forward(&mut acts, &ids, &tg).unwrap();
    let mut g = vec![0.0f32; m.num_params()];
    m.backward(&mut acts, &mut g, 1.0).unwrap();
    (g[m.layout.specs[m.layout.embeddings].range()].to_vec(), d)
}

#[test]
fn padding_row_gradient_is_masked_only_for_the_lookup() {
    let pad = 3;
    // untied: the padding row's only use is the lookup, whose gradient PyTorch's padding_idx drops
    let (g, d) = embedding_grad(false);
    assert!(g[pad * d..(pad + 1) * d].iter().all(|&x| x == 0.0), "padding row got a lookup gradient");
    assert!(g[4 * d..5 * d].iter().any(|&x| x != 0.0), "a used row must get a gradient");
    // tied: the same matrix is lm_head, whose gradient reaches every row, the padding row too
    // (padding_idx masks the lookup only)
    let (g, d) = embedding_grad(true);
    assert!(g[pad * d..(pad + 1) * d].iter().any(|&x| x != 0.0), "tied: the lm_head gradient of the padding row is missing");
}

// ---- 4. clamp_min ---------------------------------------------------------------------------------

#[test]
fn clamp_min_accepts_zero_and_refuses_positive_values_by_name() {
    for (json, want) in [("0.0", 0.0f32), ("0", 0.0), ("-0.0", 0.0), ("-5.0", -5.0), ("-1e-9", -1e-9)] {
        let c = GlaConfig::from_json(&format!(r#"{{"clamp_min": {json}}}"#)).unwrap();
        let dims = c.dims().unwrap_or_else(|e| panic!("clamp_min {json} refused: {e}"));
        assert_eq!(dims.gla().unwrap().clamp_min, Some(want), "{json}");
    }
    for c in [0.5, 1e-9, f64::INFINITY, f64::NAN] {
        let cfg = GlaConfig { clamp_min: Some(c), ..GlaConfig::tiny(16, 1, 2, 9) };
        match cfg.dims() {
            Err(e @ Error::BadConfig { key: "clamp_min", .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("<= 0") && msg.contains("GLA op"), "clamp_min {c}: message should say why: {msg}");
            }
            other => panic!("clamp_min {c}: expected BadConfig(clamp_min), got {other:?}"),
        }
        assert!(matches!(GlaModel::new(cfg, 1), Err(Error::BadConfig { key: "clamp_min", .. })));
    }
}

#[test]
fn clamp_min_zero_means_no_decay_through_the_whole_model() {
    // T = 6 runs the fused recurrent op, T = 70 the chunked one
    for t in [6usize, 70] {
        let base = GlaConfig { intermediate_size: Some(24), ..GlaConfig::tiny(16, 2, 2, 11) };
        let clamped = GlaModel::new(GlaConfig { clamp_min: Some(0.0), ..base.clone() }, 9).unwrap();
        // reference without a clamp: gate bias +200 makes logsigmoid(x) / 16 round to 0 in f32
        // (exp(-200) underflows), i.e. the same all-zero log-gates by another route
        let mut open = GlaModel::new(base, 9).unwrap();
        for l in 0..open.dims.layers {
            let r = open.layout.specs[open.layout.layers[l].gla().unwrap().gk1_bias].range();
            open.params[r].iter_mut().for_each(|b| *b = 200.0);
        }
        let ids: Vec<u32> = (0..t).map(|i| ((i * 7 + 3) % 11) as u32).collect();
        let labels: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let tg = shift_labels(&labels, t);
        let a = clamped.logits(&ids, 1, t).unwrap();
        let b = open.logits(&ids, 1, t).unwrap();
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(err <= 1e-5, "T={t}: clamp_min 0 differs from all-zero log-gates by {err}");
        // forward + backward run (the op accepts g = 0); the gate projection gets no gradient,
        // since PyTorch's clamp passes it only where logsigmoid(x) / 16 >= 0, nowhere here
        let mut acts = Activations::new(&clamped.dims, 1, t);
        let out = clamped.forward(&mut acts, &ids, &tg).unwrap();
        assert!(out.loss.is_finite());
        let mut g = vec![0.0f32; clamped.num_params()];
        clamped.backward(&mut acts, &mut g, 1.0).unwrap();
        assert!(g.iter().all(|x| x.is_finite()));
        for l in clamped.layout.layers.iter().map(|l| l.gla().unwrap()) {
            for id in [l.gk0, l.gk1, l.gk1_bias] {
                let s = &clamped.layout.specs[id];
                assert!(g[s.range()].iter().all(|&x| x == 0.0), "T={t}: {} got a gradient through a clamped gate", s.name);
            }
            let s = &clamped.layout.specs[l.q_proj];
            assert!(g[s.range()].iter().any(|&x| x != 0.0), "T={t}: {} has no gradient", s.name);
        }
    }
}
