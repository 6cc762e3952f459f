//! Loader and trainer safety (issue 17, items 2, 5 and 6): sizes from a config or a flag are
//! computed with checked arithmetic and compared with the weights and the memory budget before
//! anything is allocated; non-finite weights, FIFOs and devices are typed errors.

use std::path::{Path, PathBuf};

use gla_model::checkpoint::{load_model, save_model, CONFIG_FILE, WEIGHTS_FILE};
use gla_model::limits::{param_count, MAX_DIM};
use gla_model::shards::{load_model_dir, save_sharded};
use gla_model::{Error, GlaConfig, GlaModel, Layout, TrainConfig, Trainer};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-limits-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny() -> GlaModel {
    GlaModel::new(GlaConfig { use_short_conv: true, ..GlaConfig::tiny(16, 2, 2, 32) }, 1).unwrap()
}

/// Rewrites one key of `dir/config.json`.
fn set_key(dir: &Path, key: &str, value: serde_json::Value) {
    let p = dir.join(CONFIG_FILE);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn the_checked_parameter_count_is_the_tables() {
    for c in [
        GlaConfig::tiny(16, 2, 2, 32),
        GlaConfig { use_short_conv: true, tie_word_embeddings: true, ..GlaConfig::tiny(32, 3, 4, 50) },
        GlaConfig { use_output_gate: false, num_kv_heads: Some(2), intermediate_size: Some(40), ..GlaConfig::tiny(32, 1, 4, 7) },
        GlaConfig { use_short_conv: true, conv_size: 3, expand_k: 1.0, expand_v: 2.0, ..GlaConfig::tiny(24, 2, 3, 11) },
    ] {
        let d = c.dims().unwrap();
        assert_eq!(param_count(&d), Some(Layout::new(&d).numel as u64), "{c:?}");
    }
}

#[test]
fn oversized_or_inconsistent_configs_are_typed_errors_before_any_allocation() {
    let dir = tmpdir("sizes");
    let m = tiny();
    let cases: &[(&str, serde_json::Value, &str)] = &[
        ("expand_k", serde_json::json!(1e300), "expand_k"),
        ("hidden_size", serde_json::json!(100_000_000u64), "needs|expected shape"),
        ("hidden_size", serde_json::json!(1_000_000_000u64), "hidden_size 1000000000 * hidden_ratio"),
        ("hidden_size", serde_json::json!(1u64 << 32), "hidden_size"),
        ("conv_size", serde_json::json!(1_000_000_000_000u64), "conv_size"),
        ("intermediate_size", serde_json::json!(1_000_000_000_000u64), "intermediate_size"),
        ("intermediate_size", serde_json::json!(1_000_000_000u64), "needs|expected shape"),
        ("num_hidden_layers", serde_json::json!(1_000_000u64), "needs|do not belong together"),
        ("vocab_size", serde_json::json!(usize::MAX), "vocab_size"),
        ("hidden_ratio", serde_json::json!(1e300), "hidden_ratio"),
    ];
    for (key, value, want) in cases {
        let d = dir.join(key);
        save_model(&d, &m).unwrap();
        if *key == "hidden_ratio" {
            set_key(&d, "intermediate_size", serde_json::Value::Null);
        }
        set_key(&d, key, value.clone());
        let e = load_model_dir(&d).expect_err(&format!("{key} = {value}"));
        let msg = e.to_string();
        // which check speaks first depends on the machine's memory: each is a typed error
        assert!(want.split('|').any(|w| msg.contains(w)), "{key} = {value}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    // every single dimension is bounded by name
    let e = GlaConfig { num_hidden_layers: MAX_DIM + 1, ..GlaConfig::tiny(16, 1, 1, 8) }.dims().unwrap_err();
    assert!(e.to_string().contains("num_hidden_layers"), "{e}");
    // a sharded checkpoint whose config says more than its shards hold
    let d = dir.join("sharded");
    save_sharded(&d, &m, 4096).unwrap();
    set_key(&d, "num_hidden_layers", serde_json::json!(1_000_000u64));
    let e = load_model_dir(&d).unwrap_err();
    assert!(e.to_string().contains("do not belong together") || e.to_string().contains("needs"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_budget_smaller_than_the_model_is_named() {
    // a subprocess-free check: the budget is read once, so compare against it directly
    let budget = gla_model::limits::memory_budget();
    let c = GlaConfig { hidden_size: 65536, num_hidden_layers: 4096, vocab_size: 65536, ..GlaConfig::default() };
    let d = c.dims().unwrap();
    let e = gla_model::limits::check_model(&d, 4).unwrap_err();
    match e {
        Error::TooLarge { limit, .. } => assert_eq!(limit, budget),
        e => panic!("{e}"),
    }
}

#[test]
fn huge_training_flags_are_refused_before_allocation() {
    for (layers, d) in [(1_000_000_000usize, 64usize), (2, 100_000_000)] {
        let c = GlaConfig { use_short_conv: true, expand_k: 1.0, ..GlaConfig::tiny(d, layers, 1, 256) };
        let e = Trainer::new(c, TrainConfig::default()).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "layers {layers}, d {d}: {e}");
        assert!(e.to_string().contains("hidden_size") && e.to_string().contains("bytes"), "{e}");
    }
}

#[test]
fn non_finite_weights_are_refused_with_the_tensor_name() {
    let dir = tmpdir("nan");
    for (name, value) in
        [("lm_head.weight", f32::NAN), ("model.norm.weight", f32::NAN), ("model.layers.1.mlp.up_proj.weight", f32::INFINITY)]
    {
        let mut m = tiny();
        let id = m.layout.find(name).unwrap();
        let r = m.layout.specs[id].range();
        m.params[r.start + 3] = value;
        let d = dir.join(name);
        save_model(&d, &m).unwrap();
        let e = load_model(&d).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("non-finite") && e.contains("element 3"), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_not_read() {
    let dir = tmpdir("fifo");
    let m = tiny();
    // a FIFO as config.json: opening it would block until a writer comes
    let d = dir.join("cfg");
    save_model(&d, &m).unwrap();
    std::fs::remove_file(d.join(CONFIG_FILE)).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(d.join(CONFIG_FILE)).status().unwrap().success());
    let e = load_model_dir(&d).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    // /dev/urandom as the weights: it never ends
    let d = dir.join("weights");
    save_model(&d, &m).unwrap();
    std::fs::remove_file(d.join(WEIGHTS_FILE)).unwrap();
    std::os::unix::fs::symlink("/dev/urandom", d.join(WEIGHTS_FILE)).unwrap();
    let e = load_model_dir(&d).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
