//! The delta-rule family through the `gla` binary: `gla train --arch delta_net|gated_deltanet`
//! (checkpoints with fla's model_type, resume, the family's flags), `gla eval` and `gla generate`
//! dispatching on a model directory's model_type (against the library in-process), and the
//! errors for what is not built.

use std::path::{Path, PathBuf};

use gla_model::checkpoint::{load_model, save_model};
use gla_model::generate::{generate_ids, GenerateOptions};
use gla_model::tokenizer::Tokenizer;
use gla_model::{shift_labels, Activations, DeltaNetConfig, GatedDeltaNetConfig, GlaModel, Rng};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

mod common;
use common::{config_json, gla};

fn tmpdir(name: &str) -> PathBuf {
    common::tmpdir("delta", name)
}

/// A tiny MQAR run of 1 layer(s) (`common::train`).
fn train(out: &Path, steps: &str, extra: &[&str]) -> (i32, String, String) {
    common::train(out, steps, "1", extra)
}

#[test]
fn train_arch_writes_flas_model_type_and_resumes() {
    let dir = tmpdir("train");
    for (arch, extra) in [("delta_net", &[][..]), ("gated_deltanet", &["--v-heads", "4", "--expand-v", "2"][..])] {
        let out = dir.join(arch);
        let mut args = vec!["--arch", arch];
        args.extend_from_slice(extra);
        let (code, _, err) = train(&out, "3", &args);
        assert_eq!(code, 0, "{arch}: {err}");
        let name = if arch == "delta_net" { "DeltaNet H=2" } else { "Gated DeltaNet H=2 HV=4" };
        assert!(err.contains(name), "{arch}: {err}");
        let cfg = config_json(&out.join("checkpoint-3"));
        assert_eq!(cfg["model_type"], arch);
        let m = load_model(&out.join("checkpoint-3")).unwrap();
        assert_eq!(m.config.model_type(), arch);
        if arch == "gated_deltanet" {
            assert_eq!((cfg["num_v_heads"].as_u64(), cfg["head_dim"].as_u64(), cfg["expand_v"].as_f64()), (Some(4), Some(8), Some(2.0)));
            assert!(m.layout.find("model.layers.0.attn.A_log").is_some());
        }
        // --resume needs no --arch; giving another is a conflict that cannot be applied
        let (code, _, err) = gla(&["train", "--out", out.to_str().unwrap(), "--resume", "--steps", "4"]);
        assert_eq!(code, 0, "{arch} resume: {err}");
        assert!(out.join("checkpoint-4").is_dir());
        let (code, _, err) = gla(&["train", "--out", out.to_str().unwrap(), "--resume", "--steps", "5", "--arch", "gla"]);
        assert_eq!(code, 1);
        assert!(err.contains(&format!("--arch gla (the run has {arch})")) && err.contains("cannot change"), "{err}");
        let (code, _, err) = gla(&["train", "--out", out.to_str().unwrap(), "--resume", "--steps", "5", "--heads", "4"]);
        assert_eq!(code, 1);
        assert!(err.contains("--heads 4 (the run has 2)"), "{err}");
    }
    // a family's flags are refused for another, naming both
    let (code, _, err) = train(&dir.join("x"), "1", &["--arch", "gated_deltanet", "--expand-k", "0.5"]);
    assert_eq!(code, 1);
    assert!(err.contains("--expand-k") && err.contains("gated_deltanet"), "{err}");
    let (code, _, err) = train(&dir.join("y"), "1", &["--head-dim", "8"]);
    assert_eq!(code, 1);
    assert!(err.contains("--head-dim") && err.contains("--arch gla"), "{err}");
    // --config of another family than --arch
    let c = dir.join("gdn.json");
    std::fs::write(&c, GatedDeltaNetConfig::tiny(16, 1, 2, 32).to_json()).unwrap();
    let (code, _, err) = train(&dir.join("z"), "1", &["--arch", "delta_net", "--config", c.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("--arch delta_net differs"), "{err}");
    let (code, _, err) = train(&dir.join("w"), "1", &["--config", c.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(config_json(&dir.join("w").join("checkpoint-1"))["model_type"], "gated_deltanet");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn write_ids(path: &Path, ids: &[i64], shape: [usize; 2]) {
    let bytes: Vec<u8> = ids.iter().flat_map(|&x| x.to_le_bytes()).collect();
    let v = TensorView::new(Dtype::I64, shape.to_vec(), &bytes).unwrap();
    std::fs::write(path, safetensors::serialize([("input_ids", v)], None).unwrap()).unwrap();
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn eval_and_generate_dispatch_on_model_type() {
    let dir = tmpdir("eval");
    let vocab = 64;
    let models = [
        GlaModel::new(
            GatedDeltaNetConfig { initializer_range: 0.2, num_v_heads: Some(4), ..GatedDeltaNetConfig::tiny(32, 2, 2, vocab) },
            3,
        ),
        GlaModel::new(DeltaNetConfig { initializer_range: 0.2, qk_norm: "sum".into(), ..DeltaNetConfig::tiny(32, 2, 4, vocab) }, 4),
    ];
    for (i, m) in models.into_iter().enumerate() {
        let m = m.unwrap();
        let md = dir.join(format!("model{i}"));
        save_model(&md, &m).unwrap();
        // eval: logits, loss, every gradient as the library computes them
        let (b, t) = (2, 7);
        let mut r = Rng::new(5);
        let ids: Vec<i64> = (0..b * t).map(|_| r.below(vocab) as i64).collect();
        let (input, output) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
        write_ids(&input, &ids, [b, t]);
        let (code, _, err) = gla(&[
            "eval",
            "--model",
            md.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--grads",
        ]);
        assert_eq!(code, 0, "{err}");
        let ids32: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
        let mut acts = Activations::new(&m.dims, b, t);
        let want = m.forward(&mut acts, &ids32, &shift_labels(&ids, t)).unwrap();
        let mut g = vec![0.0f32; m.num_params()];
        m.backward(&mut acts, &mut g, 1.0).unwrap();
        let bytes = std::fs::read(&output).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(f32s(&st, "logits"), m.logits(&ids32, b, t).unwrap());
        assert!((f64::from(f32s(&st, "loss")[0]) - want.loss).abs() <= 1e-6);
        for s in &m.layout.specs {
            assert_eq!(f32s(&st, &format!("grad.{}", s.name)), &g[s.range()], "grad.{}", s.name);
        }
        // generate: the greedy ids of the library
        let opts = GenerateOptions { max_new_tokens: 6, ..Default::default() };
        let want = generate_ids(&m, &Tokenizer::Bytes, &[vec![1, 2, 3], vec![9]], &opts, &mut |_, _| {}).unwrap();
        let (code, out, err) = gla(&[
            "generate",
            "--model",
            md.to_str().unwrap(),
            "--prompt-ids",
            "1,2,3",
            "--prompt-ids",
            "9",
            "--print-ids",
            "--max-new-tokens",
            "6",
            "--ignore-eos",
        ]);
        assert_eq!(code, 0, "{err}");
        let got: Vec<Vec<u32>> = out.lines().map(|l| l.split(',').map(|x| x.trim().parse().unwrap()).collect()).collect();
        assert_eq!(got, want.iter().map(|g| g.tokens.clone()).collect::<Vec<_>>());
    }
    // a model_type not built: what it is, what is built, what to do
    let md = dir.join("model0");
    std::fs::write(md.join("config.json"), r#"{"model_type": "mamba2", "hidden_size": 32}"#).unwrap();
    let (code, _, err) = gla(&["generate", "--model", md.to_str().unwrap(), "--prompt-ids", "1", "--print-ids"]);
    assert_eq!(code, 1);
    assert!(err.contains("mamba2") && err.contains("delta_net") && err.contains("gla train --arch"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `gla train --arch delta_net|gated_deltanet --device cuda`, then `gla eval` and `gla generate`
/// on the GPU; on a machine without a usable GPU each command must fail for that reason only
/// (never refuse the model), and the test says it skipped.
#[cfg(feature = "cuda")]
#[test]
fn the_gpu_trains_evaluates_and_generates_delta_models() {
    let dir = tmpdir("cuda");
    let no_device = |err: &str| err.contains("no usable CUDA device") || err.contains("libnvrtc not found");
    for (arch, extra) in [("delta_net", &[][..]), ("gated_deltanet", &["--v-heads", "4", "--expand-v", "2"][..])] {
        let out = dir.join(arch);
        let mut args = vec!["--arch", arch, "--device", "cuda"];
        args.extend_from_slice(extra);
        let (code, _, err) = train(&out, "4", &args);
        if code != 0 && no_device(&err) {
            eprintln!("NOTICE: no usable GPU, the --device cuda run of {arch} SKIPPED: {err}");
            continue;
        }
        assert_eq!(code, 0, "{arch}: {err}");
        let model = out.join("checkpoint-4");
        let md = model.to_str().unwrap();
        let m = load_model(&model).unwrap();
        assert_eq!(m.config.model_type(), arch);
        // greedy ids on the GPU as many as the CPU's (the ids themselves may differ at a near
        // tie under bf16; gla check compares the GPU decoder's logits)
        let prompt = ["--prompt-ids", "1,2,3", "--print-ids", "--max-new-tokens", "6", "--ignore-eos"];
        let run = |device: &str| {
            let mut a = vec!["generate", "--model", md];
            a.extend_from_slice(&prompt);
            a.extend_from_slice(&["--device", device]);
            gla(&a)
        };
        let ((gc, gout, gerr), (cc, cout, cerr)) = (run("cuda"), run("cpu"));
        assert_eq!((gc, cc), (0, 0), "{arch}: cuda {gerr} / cpu {cerr}");
        let count = |o: &str| o.lines().map(|l| l.split(',').count()).collect::<Vec<_>>();
        assert_eq!(count(&gout), count(&cout), "{arch}: cuda {gout} / cpu {cout}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
