//! `gla train --data`: a few steps of a tiny byte-level LM on a temporary folder, and a resumed
//! run that repeats the uninterrupted one's losses.

use std::path::{Path, PathBuf};
use std::process::Command;

fn gla(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_gla")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-cli-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// (kind, step, loss) of every line of a run's metrics.jsonl.
fn metrics(out: &Path) -> Vec<(String, u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["kind"].as_str().unwrap().to_string(), v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

const TINY: &[&str] = &[
    "--d-model",
    "16",
    "--layers",
    "1",
    "--heads",
    "1",
    "--seq-len",
    "16",
    "--batch-size",
    "2",
    "--eval-every",
    "2",
    "--eval-examples",
    "4",
];

fn train(data: &Path, out: &Path, steps: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--steps", steps];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    gla(&args)
}

#[test]
fn train_on_a_text_folder_and_resume_exactly() {
    let dir = tmpdir("text");
    let data = dir.join("texts");
    std::fs::create_dir_all(data.join("act2")).unwrap();
    let line = "To be, or not to be, that is the question:\n";
    std::fs::write(data.join("act1.txt"), line.repeat(20)).unwrap();
    std::fs::write(data.join("act2").join("scene1.txt"), "Whether 'tis nobler in the mind to suffer\n".repeat(20)).unwrap();

    let full = dir.join("full");
    let (code, out, err) = train(&data, &full, "5", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("perplexity"), "{out}");
    assert!(err.contains("text files") && err.contains("byte-level"), "{err}");
    let m = metrics(&full);
    assert_eq!(m.iter().filter(|x| x.0 == "train").count(), 5);
    assert_eq!(m.iter().filter(|x| x.0 == "eval").map(|x| x.1).collect::<Vec<_>>(), [2, 4, 5]);
    assert!(full.join("loss_curve.png").is_file() && full.join("checkpoint-5").join("model.safetensors").is_file());
    let png = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(full.join("loss_curve.png")).unwrap()));
    let mut png = png.read_info().expect("loss_curve.png is a PNG");
    let mut px = vec![0; png.output_buffer_size().unwrap()];
    let info = png.next_frame(&mut px).expect("its image data decodes");
    assert!(info.width >= 640 && info.height >= 400 && px.iter().any(|&v| v < 128), "{info:?}");
    let cached: Vec<_> = std::fs::read_dir(full.join("data")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(cached.len() == 1 && cached[0].to_string_lossy().ends_with(".glatok"), "{cached:?}");

    // 3 steps, then --resume to 5: the same losses, the cached tokens reused
    let part = dir.join("part");
    let (code, _, err) = train(&data, &part, "3", &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = gla(&["train", "--out", part.to_str().unwrap(), "--resume", "--steps", "5"]);
    assert_eq!(code, 0, "{err}");
    let train_losses = |m: &[(String, u64, f64)]| m.iter().filter(|x| x.0 == "train").map(|x| (x.1, x.2)).collect::<Vec<_>>();
    assert_eq!(train_losses(&metrics(&part)), train_losses(&m), "bit-exact losses after --resume");
    // a second fresh run reuses its token file
    let (code, _, err) = train(&data, &dir.join("again"), "1", &["--data-cache", full.join("data").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reusing"), "{err}");

    // clear errors: a missing path; --resume on another corpus
    let (code, _, err) = train(&dir.join("nope"), &dir.join("x"), "1", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("nope") && err.contains("does not exist"), "{err}");
    let (code, _, err) = gla(&["train", "--out", part.to_str().unwrap(), "--resume", "--data", dir.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("differs from the run's corpus"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(not(feature = "hf-tokenizer"))]
#[test]
fn tokenizer_json_needs_the_feature() {
    let dir = tmpdir("hf");
    std::fs::write(dir.join("a.txt"), "some text").unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let (code, _, err) = train(&dir.join("a.txt"), &dir.join("run"), "1", &["--tokenizer", dir.join("tokenizer.json").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("hf-tokenizer"), "{err}");
    let (_, help, _) = gla(&["train", "--help"]);
    assert!(help.contains("--data") && help.contains("shakespeare"), "{help}");
    std::fs::remove_dir_all(&dir).unwrap();
}
