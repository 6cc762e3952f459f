//! `gla vision`: a short training run on synthetic images writes its checkpoint and metrics and
//! classifies with it; `classify` of hustvl's `.pth` (the fixture of tools/vig_fixtures.py)
//! gives hustvl's logits; a corrupt `.pth` is an error, not a panic.

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
    assert!(err.contains("test accuracy"), "{err}");
    for f in ["config.json", "model.safetensors", "metrics.jsonl"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6 + 2);
    // classify 2 images of 16x16 with the run
    let x: Vec<u8> = (0..2 * 256).flat_map(|i| ((i % 7) as f32 * 0.3 - 1.0).to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 1, 16, 16], &x).unwrap();
    std::fs::write(d.join("x.safetensors"), safetensors::serialize(vec![("images".to_string(), view)], None).unwrap()).unwrap();
    let (code, stdout, err) =
        gla(&["vision", "classify", "--model", out.to_str().unwrap(), "--input", d.join("x.safetensors").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("image ")).count(), 2, "{stdout}");
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
