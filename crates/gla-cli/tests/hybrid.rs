//! Hybrid stacks (fla's `attn` key) through the `gla` binary: `gla train --attn-layers` for each
//! family (the checkpoint's config holds fla's attn key), resume, `gla generate` on the result
//! against the library in-process, and the GPU's refusal.

use std::path::{Path, PathBuf};

use gla_model::checkpoint::load_model;
use gla_model::config::MixerDims;
use gla_model::generate::{generate_ids, GenerateOptions};
use gla_model::tokenizer::Tokenizer;

mod common;
use common::{config_json, gla};

fn tmpdir(name: &str) -> PathBuf {
    common::tmpdir("hybrid", name)
}

/// A tiny MQAR run of 3 layer(s) (`common::train`).
fn train(out: &Path, steps: &str, extra: &[&str]) -> (i32, String, String) {
    common::train(out, steps, "3", extra)
}

#[test]
fn train_attn_layers_for_every_family_then_generate() {
    for arch in ["gla", "delta_net", "gated_deltanet"] {
        let out = tmpdir(arch);
        let (code, _, err) =
            train(&out, "2", &["--arch", arch, "--attn-layers", "0,2", "--attn-heads", "4", "--attn-kv-heads", "2", "--attn-window", "5"]);
        assert_eq!(code, 0, "{arch}: {err}");
        assert!(err.contains("attention H=4 H_KV=2 (Dh=4, window 5"), "{arch}: {err}");
        let ck = out.join("checkpoint-2");
        let c = config_json(&ck);
        assert_eq!(c["model_type"], arch);
        assert_eq!(
            c["attn"],
            serde_json::json!({"layers": [0, 2], "num_heads": 4, "num_kv_heads": 2, "qkv_bias": false, "window_size": 5, "rope_theta": 10000.0}),
            "{arch}"
        );
        let m = load_model(&ck).unwrap();
        assert!(matches!(m.dims.mixers[0], MixerDims::Attn(_)) && matches!(m.dims.mixers[2], MixerDims::Attn(_)));
        assert!(!matches!(m.dims.mixers[1], MixerDims::Attn(_)));
        // generation from the checkpoint equals the library's, prompt longer than the window
        let (code, stdout, err) = gla(&[
            "generate",
            "--model",
            ck.to_str().unwrap(),
            "--prompt-ids",
            "1,2,3,4,5,6,7,8",
            "--print-ids",
            "--max-new-tokens",
            "6",
            "--ignore-eos",
        ]);
        assert_eq!(code, 0, "{arch}: {err}");
        let got: Vec<u32> = stdout.trim().split(',').map(|x| x.trim().parse().unwrap()).collect();
        let opts = GenerateOptions { max_new_tokens: 6, eos: Vec::new(), ..GenerateOptions::default() };
        let want = generate_ids(&m, &Tokenizer::Bytes, &[vec![1, 2, 3, 4, 5, 6, 7, 8]], &opts, &mut |_, _| {}).unwrap();
        assert_eq!(got, want[0].tokens, "{arch}");
        // no GPU on the test machine: --device cuda fails with an error naming it (a build
        // without the feature, or no device), never a panic
        let (code, _, err) = gla(&["generate", "--model", ck.to_str().unwrap(), "--prompt-ids", "1", "--device", "cuda"]);
        assert_ne!(code, 0);
        assert!(err.to_lowercase().contains("cuda") && !err.contains("panicked"), "{err}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn a_hybrid_run_resumes_and_refuses_other_attn_flags() {
    let out = tmpdir("resume");
    let (code, _, err) = train(&out, "2", &["--attn-layers", "1"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = train(&out, "4", &["--attn-layers", "1", "--resume"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.join("checkpoint-4").is_dir());
    let (code, _, err) = train(&out, "6", &["--attn-layers", "2", "--resume"]);
    assert_ne!(code, 0, "a different attn key must not resume silently");
    assert!(err.contains("attn-layers"), "{err}");
    // fla's checks, through the flags
    let (code, _, err) = train(&tmpdir("bad"), "1", &["--attn-layers", "3"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a layer index in [0, 3)"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}
