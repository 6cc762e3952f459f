//! `gla vision`: a short training run on synthetic images writes its checkpoint, metrics and
//! curve and classifies with it (a safetensors batch; PNG and JPEG files made here, top-k with
//! class names); a resumed run ends with the uninterrupted run's weights, byte for byte; `gla eval`
//! of a vision run on idx files reports its test accuracy; `classify` of hustvl's `.pth` (the
//! fixture of tools/vig_fixtures.py) gives hustvl's logits; a corrupt `.pth` is an error, not a
//! panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn gla(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_gla")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-vision-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gla-model/tests/fixtures/vig/tiny_pth")
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn train_then_classify_synthetic() {
    let d = tmp("train");
    let out = d.join("run");
    let (code, _, err) = gla(&[
        "vision",
        "train",
        "--synthetic",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--embed-dim",
        "16",
        "--depth",
        "1",
        "--eval-every",
        "3",
        "--eval-examples",
        "32",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("test acc"), "{err}");
    for f in [
        "checkpoint-6/config.json",
        "checkpoint-6/model.safetensors",
        "checkpoint-6/trainer_state.json",
        "latest",
        "metrics.jsonl",
        "loss_curve.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(!out.join("checkpoint-3").exists(), "--keep 1 keeps the newest checkpoint only");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    // 6 steps, the evaluation at step 3 and the final one
    assert_eq!(metrics.lines().count(), 6 + 2);
    // classify 2 images of 16x16 with the run
    let x: Vec<u8> = (0..2 * 256).flat_map(|i| ((i % 7) as f32 * 0.3 - 1.0).to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 1, 16, 16], &x).unwrap();
    std::fs::write(d.join("x.safetensors"), safetensors::serialize(vec![("images".to_string(), view)], None).unwrap()).unwrap();
    let (code, stdout, err) =
        gla(&["vision", "classify", "--model", out.to_str().unwrap(), "--input", d.join("x.safetensors").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("image ")).count(), 2, "{stdout}");
    // a PNG and a JPEG of other sizes and colours: converted, resized, top 3 with the run's names
    let png = d.join("stripes.png");
    image::RgbImage::from_fn(40, 30, |x, _| if x % 4 < 2 { image::Rgb([230, 200, 210]) } else { image::Rgb([20, 30, 40]) })
        .save(&png)
        .unwrap();
    let jpg = d.join("square.jpg");
    image::GrayImage::from_fn(16, 16, |x, y| image::Luma([if (4..12).contains(&x) && (4..12).contains(&y) { 220 } else { 30 }]))
        .save(&jpg)
        .unwrap();
    let (code, stdout, err) =
        gla(&["vision", "classify", "--model", out.to_str().unwrap(), "--top-k", "3", png.to_str().unwrap(), jpg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit())).collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    assert!(stdout.contains("stripes.png:") && stdout.contains("square.jpg:"), "{stdout}");
    let names = ["horizontal stripes", "vertical stripes", "square", "diagonal"];
    assert!(rows.iter().all(|r| r.contains('%') && names.iter().any(|n| r.contains(n))), "{stdout}");
    let probs: Vec<f64> = rows.iter().map(|r| r.trim().split('%').next().unwrap().parse().unwrap()).collect();
    assert!(probs[0] >= probs[1] && probs[1] >= probs[2] && probs[..3].iter().sum::<f64>() <= 100.01, "{stdout}");
    // the images go through the model as one batch: each image's rows equal its own call's
    let (code, alone, err) = gla(&["vision", "classify", "--model", out.to_str().unwrap(), "--top-k", "3", jpg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.ends_with(&alone), "batched:\n{stdout}\nalone:\n{alone}");
    // not an image: an error, status 1
    let (code, _, err) = gla(&["vision", "classify", "--model", out.to_str().unwrap(), d.join("x.safetensors").to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("x.safetensors"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

fn train_args<'a>(out: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut v =
        vec!["vision", "train", "--synthetic", "--out", out, "--steps", steps, "--batch-size", "8", "--embed-dim", "16", "--depth", "2"];
    v.extend(["--eval-every", "2", "--eval-examples", "16", "--crop-pad", "2", "--drop-path", "0.2", "--warmup", "2"]);
    v
}

/// 6 steps straight, and 3 steps then `--resume` to 6 (its step 4 recomputes what a kill lost):
/// the same weights and AdamW moments, byte for byte.
#[test]
fn resume_gives_the_same_weights() {
    let d = tmp("resume");
    let (a, b) = (d.join("a"), d.join("b"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let (code, _, err) = gla(&train_args(a, "6"));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = gla(&train_args(b, "3"));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = gla(&train_args(b, "6"));
    assert_eq!(code, 1, "an existing run needs --resume: {err}");
    assert!(err.contains("--resume"), "{err}");
    // --shards is part of the numerics: the resumed run keeps its own (2) and says so
    let mut args = train_args(b, "6");
    args.extend(["--resume", "--shards", "1"]);
    let (code, _, err) = gla(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming"), "{err}");
    assert!(err.contains("--shards is ignored by --resume"), "{err}");
    for f in ["model.safetensors", "exp_avg.safetensors", "exp_avg_sq.safetensors"] {
        let (x, y) = (std::fs::read(d.join("a/checkpoint-6").join(f)).unwrap(), std::fs::read(d.join("b/checkpoint-6").join(f)).unwrap());
        assert!(x == y, "{f} differs after the resume");
    }
    let steps = |dir: &str| -> Vec<u64> {
        let m = std::fs::read_to_string(Path::new(dir).join("metrics.jsonl")).unwrap();
        m.lines()
            .filter(|l| l.contains("\"train\""))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(steps(b), (1..=6).collect::<Vec<_>>(), "metrics.jsonl holds each step once");
    assert_eq!(steps(a), steps(b));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A batch of one trains with the default shard count (two shards, at most one per image).
#[test]
fn batch_of_one_trains() {
    let d = tmp("batch1");
    let out = d.join("r");
    let mut args = train_args(out.to_str().unwrap(), "2");
    let at = args.iter().position(|&a| a == "--batch-size").unwrap();
    args[at + 1] = "1";
    let (code, _, err) = gla(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("in 1 shards"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// An idx file (MNIST's format) of `n` images of `s x s`, or of their labels.
fn idx(images: bool, n: usize, s: usize, seed: usize) -> Vec<u8> {
    let mut b = Vec::new();
    if images {
        b.extend(0x803u32.to_be_bytes());
        for x in [n, s, s] {
            b.extend((x as u32).to_be_bytes());
        }
        // class c: a bright column at c (plus a little per-image noise)
        for i in 0..n {
            let c = (i * 7 + seed) % 10;
            b.extend((0..s * s).map(|p| if p % s == c { 230u8 } else { ((p * 31 + i) % 40) as u8 }));
        }
    } else {
        b.extend(0x801u32.to_be_bytes());
        b.extend((n as u32).to_be_bytes());
        b.extend((0..n).map(|i| ((i * 7 + seed) % 10) as u8));
    }
    b
}

#[test]
fn eval_reports_test_accuracy() {
    let d = tmp("eval");
    let data = d.join("idx");
    std::fs::create_dir_all(&data).unwrap();
    for (split, n, seed) in [("train", 96, 0), ("t10k", 40, 3)] {
        std::fs::write(data.join(format!("{split}-images-idx3-ubyte")), idx(true, n, 16, seed)).unwrap();
        std::fs::write(data.join(format!("{split}-labels-idx1-ubyte")), idx(false, n, 16, seed)).unwrap();
    }
    let out = d.join("run");
    let (o, dd) = (out.to_str().unwrap(), data.to_str().unwrap());
    let (code, stdout, err) = gla(&[
        "vision",
        "train",
        "--data",
        dd,
        "--out",
        o,
        "--steps",
        "4",
        "--batch-size",
        "16",
        "--embed-dim",
        "16",
        "--depth",
        "1",
        "--eval-every",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("test accuracy") && stdout.contains("on 40 images"), "{stdout}");
    let (code, stdout, err) = gla(&["eval", "--model", o, "--data", dd]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.starts_with("test accuracy ") && stdout.contains("on 40 images, loss "), "{stdout}");
    let (code, stdout, err) = gla(&["eval", "--model", o, "--data", dd, "--json", "--max-windows", "8"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((v["model_type"].as_str(), v["images"].as_u64()), (Some("vig"), Some(8)));
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc) && v["loss"].as_f64().unwrap() > 0.0, "{v}");
    // the final evaluation of the run and `gla eval` agree (the same weights, the same 40 images)
    let (code, s1, _) = gla(&["eval", "--model", o, "--data", dd, "--json"]);
    assert_eq!(code, 0);
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(m.lines().last().unwrap()).unwrap();
    let all: serde_json::Value = serde_json::from_str(s1.trim()).unwrap();
    assert_eq!((last["kind"].as_str(), last["acc"].as_f64()), (Some("eval"), all["accuracy"].as_f64()));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn classify_hustvl_pth() {
    let d = tmp("pth");
    let fx_bytes = std::fs::read(fixture().join("fixture.safetensors")).unwrap();
    let fx = safetensors::SafeTensors::deserialize(&fx_bytes).unwrap();
    let input = fx.tensor("input").unwrap();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, input.shape().to_vec(), input.data()).unwrap();
    let xin = d.join("x.safetensors");
    std::fs::write(&xin, safetensors::serialize(vec![("images".to_string(), view)], None).unwrap()).unwrap();
    let pth = fixture().join("model.pth");
    let cfg = fixture().join("config.json");
    let yout = d.join("y.safetensors");
    let (code, _, err) = gla(&[
        "vision",
        "classify",
        "--pth",
        pth.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--input",
        xin.to_str().unwrap(),
        "--output",
        yout.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let y_bytes = std::fs::read(&yout).unwrap();
    let y = safetensors::SafeTensors::deserialize(&y_bytes).unwrap();
    let (got, want) = (f32s(y.tensor("logits").unwrap().data()), f32s(fx.tensor("logits").unwrap().data()));
    assert_eq!(got.len(), want.len());
    let err_max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err_max < 1e-4, "logits differ from hustvl's by {err_max}");
    // a truncated .pth: an error message and status 1
    let bytes = std::fs::read(&pth).unwrap();
    let bad = d.join("bad.pth");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) =
        gla(&["vision", "classify", "--pth", bad.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "--input", xin.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a readable .pth"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A directory that holds a `--device cuda` run's model (no checkpoints) is not trained over by
/// a CPU run: the run refuses before it touches the metrics.
#[test]
fn cpu_run_refuses_a_gpu_runs_directory() {
    let dir = tmp("gpu-dir");
    std::fs::write(dir.join("model.safetensors"), b"not really").unwrap();
    std::fs::write(dir.join("metrics.jsonl"), b"{\"kind\":\"eval\"}\n").unwrap();
    let out = dir.to_str().unwrap();
    let (code, _, err) = gla(&train_args(out, "2"));
    assert_ne!(code, 0, "a CPU run over a GPU run's directory must fail: {err}");
    assert!(err.contains("already holds a model"), "{err}");
    assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), b"{\"kind\":\"eval\"}\n", "metrics untouched");
    let _ = std::fs::remove_dir_all(&dir);
}
