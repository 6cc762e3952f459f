//! `gla eval` end to end on a tiny model saved in fla's format: logits, loss and gradients
//! against the library in-process, typed errors for bad inputs, and the corpus mode.

use std::path::{Path, PathBuf};
use std::process::Command;

use gla_model::checkpoint::save_model;
use gla_model::{shift_labels, Activations, GlaConfig, GlaModel, Rng};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

fn gla(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_gla")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-cli-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny model (short conv, untied head, GQA off) with weights large enough to matter.
fn tiny_model(dir: &Path, vocab: usize) -> GlaModel {
    let m = GlaModel::new(GlaConfig { initializer_range: 0.2, use_short_conv: true, ..GlaConfig::tiny(32, 2, 2, vocab) }, 3).unwrap();
    save_model(dir, &m).unwrap();
    m
}

fn write_ids(path: &Path, dtype: Dtype, ids: &[i64], shape: [usize; 2]) {
    let bytes: Vec<u8> = match dtype {
        Dtype::I32 => ids.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
        _ => ids.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    };
    let v = TensorView::new(dtype, shape.to_vec(), &bytes).unwrap();
    std::fs::write(path, safetensors::serialize([("input_ids", v)], None).unwrap()).unwrap();
}

fn f32s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    (t.shape().to_vec(), t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn eval_writes_the_library_logits_loss_and_gradients() {
    let dir = tmpdir("tensors");
    let model_dir = dir.join("model");
    let vocab = 64;
    let m = tiny_model(&model_dir, vocab);
    let (b, t) = (2, 9);
    let mut r = Rng::new(5);
    let ids: Vec<i64> = (0..b * t).map(|_| r.below(vocab) as i64).collect();
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::I64, &ids, [b, t]);
    let output = dir.join("out.safetensors");
    let (code, _, err) = gla(&[
        "eval",
        "--model",
        model_dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--grads",
    ]);
    assert_eq!(code, 0, "{err}");

    // the library in-process
    let ids32: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let want_logits = m.logits(&ids32, b, t).unwrap();
    let mut acts = Activations::new(&m.dims, b, t);
    let want = m.forward(&mut acts, &ids32, &shift_labels(&ids, t)).unwrap();
    let mut want_grads = vec![0.0f32; m.num_params()];
    m.backward(&mut acts, &mut want_grads, 1.0).unwrap();

    let bytes = std::fs::read(&output).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (shape, logits) = f32s(&st, "logits");
    assert_eq!(shape, [b, t, vocab]);
    assert!(max_abs_diff(&logits, &want_logits) <= 1e-6, "logits differ by {}", max_abs_diff(&logits, &want_logits));
    let (shape, loss) = f32s(&st, "loss");
    assert_eq!(shape, [1]);
    assert!((f64::from(loss[0]) - want.loss).abs() <= 1e-6 * want.loss.abs().max(1.0), "loss {} vs {}", loss[0], want.loss);
    assert_eq!(want.n_valid, b * (t - 1), "fla's shift leaves the last position of each row unscored");
    for s in &m.layout.specs {
        let (shape, g) = f32s(&st, &format!("grad.{}", s.name));
        assert_eq!(shape, s.shape, "{}", s.name);
        let d = max_abs_diff(&g, &want_grads[s.range()]);
        assert!(d <= 1e-6, "grad.{} differs by {d}", s.name);
    }
    assert_eq!(st.names().len(), 2 + m.layout.specs.len());

    // i32 ids give the same logits; without --grads only logits and loss are written
    write_ids(&input, Dtype::I32, &ids, [b, t]);
    let (code, _, err) =
        gla(&["eval", "--model", model_dir.to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&output).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(f32s(&st, "logits").1, logits);
    assert_eq!(st.names().len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_refuses_bad_input_files_with_one_line() {
    let dir = tmpdir("bad");
    let model_dir = dir.join("model");
    tiny_model(&model_dir, 64);
    let input = dir.join("in.safetensors");
    let output = dir.join("out.safetensors");
    let run =
        || gla(&["eval", "--model", model_dir.to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    type Case<'a> = (Box<dyn Fn() + 'a>, &'static str);
    let cases: Vec<Case> = vec![
        (
            Box::new(|| write_ids(&input, Dtype::I64, &[1, 2, 64, 3], [2, 2])),
            "input_ids[1, 0] = 64 is outside the model's vocabulary [0, 64)",
        ),
        (Box::new(|| write_ids(&input, Dtype::I64, &[1, -2], [1, 2])), "input_ids[0, 1] = -2"),
        (Box::new(|| write_ids(&input, Dtype::I64, &[1, 2, 3], [3, 1])), "has shape [3, 1]"),
        (
            Box::new(|| {
                let v = TensorView::new(Dtype::F32, vec![1, 2], &[0u8; 8]).unwrap();
                std::fs::write(&input, safetensors::serialize([("input_ids", v)], None).unwrap()).unwrap();
            }),
            "`input_ids` is F32; expected token ids as I64 or I32",
        ),
        (
            Box::new(|| {
                let v = TensorView::new(Dtype::I64, vec![1, 2], &[0u8; 16]).unwrap();
                std::fs::write(&input, safetensors::serialize([("tokens", v)], None).unwrap()).unwrap();
            }),
            "no tensor `input_ids` (the file holds: tokens)",
        ),
        (Box::new(|| std::fs::write(&input, b"hello").unwrap()), "not a safetensors file"),
        (Box::new(|| std::fs::remove_file(&input).unwrap()), "reading --input"),
    ];
    for (make, want) in cases {
        make();
        let (code, _, err) = run();
        assert_eq!(code, 1, "{want}: {err}");
        assert!(err.contains(want), "want {want:?} in {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!output.exists(), "no output after an error");
    }
    // --input needs --output; one of --input / --data is required of a language model
    let (code, _, err) = gla(&["eval", "--model", model_dir.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = gla(&["eval", "--model", model_dir.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run directory as `gla train` leaves it: `latest` naming a checkpoint with its state file.
fn fake_run(run: &Path, m: &GlaModel) {
    let ck = run.join("checkpoint-7");
    save_model(&ck, m).unwrap();
    std::fs::write(ck.join("trainer_state.json"), "{}").unwrap();
    std::fs::write(run.join("latest"), "checkpoint-7").unwrap();
}

#[test]
fn eval_on_text_reports_the_mean_loss_of_every_token() {
    let dir = tmpdir("data");
    let m = GlaModel::new(GlaConfig { initializer_range: 0.2, ..GlaConfig::tiny(32, 1, 2, 256) }, 9).unwrap();
    let run = dir.join("run");
    fake_run(&run, &m);
    let text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n".repeat(3);
    let data = dir.join("play.txt");
    std::fs::write(&data, &text).unwrap();
    let cache = dir.join("cache");
    let (seq, batch) = (16, 3);
    let (code, out, err) = gla(&[
        "eval",
        "--model",
        run.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--data-cache",
        cache.to_str().unwrap(),
        "--seq-len",
        &seq.to_string(),
        "--batch-size",
        &batch.to_string(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();

    // in-process: byte tokens, windows of `seq` predictions (the last shorter), each scored alone
    let tokens: Vec<i64> = text.bytes().map(i64::from).collect();
    let preds = tokens.len() - 1;
    let (mut nats, mut start) = (0.0, 0);
    while start < preds {
        let len = seq.min(preds - start);
        let ids: Vec<u32> = tokens[start..start + len].iter().map(|&x| x as u32).collect();
        let targets = tokens[start + 1..start + len + 1].to_vec();
        let mut acts = Activations::new(&m.dims, 1, len);
        nats += m.forward(&mut acts, &ids, &targets).unwrap().loss * len as f64;
        start += len;
    }
    let loss = nats / preds as f64;
    assert_eq!(v["tokens"], preds);
    assert_eq!(v["windows"], preds.div_ceil(seq));
    assert_eq!(v["seq_len"], seq);
    let got = v["loss"].as_f64().unwrap();
    assert!((got - loss).abs() <= 1e-6 * loss, "loss {got} vs {loss}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
    assert!(close(v["perplexity"].as_f64().unwrap(), got.exp()));
    assert!(close(v["bits_per_token"].as_f64().unwrap(), got / std::f64::consts::LN_2));
    assert!(close(v["bits_per_byte"].as_f64().unwrap(), v["bits_per_token"].as_f64().unwrap()), "byte-level: a token is a byte");
    assert!(err.contains("byte-level") && err.contains("perplexity"), "{err}");

    // the human summary; the default window is capped to the data; --max-windows
    let (code, out, err) =
        gla(&["eval", "--model", run.to_str().unwrap(), "--data", data.to_str().unwrap(), "--data-cache", cache.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("perplexity") && out.contains("bits/byte") && out.contains(&format!("over {preds} tokens")), "{out}");
    assert!(err.contains(&format!("1 windows of {preds} tokens")), "{err}");
    let (code, out, err) = gla(&[
        "eval",
        "--model",
        run.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--data-cache",
        cache.to_str().unwrap(),
        "--seq-len",
        "10",
        "--max-windows",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["windows"].as_u64(), v["tokens"].as_u64()), (Some(2), Some(20)));

    // clear errors: a missing corpus, a tokenizer beyond the model's vocabulary
    let (code, _, err) = gla(&["eval", "--model", run.to_str().unwrap(), "--data", dir.join("nope").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("nope") && err.contains("does not exist"), "{err}");
    let small = dir.join("small");
    save_model(&small, &GlaModel::new(GlaConfig::tiny(32, 1, 2, 100), 0).unwrap()).unwrap();
    let (code, _, err) =
        gla(&["eval", "--model", small.to_str().unwrap(), "--data", data.to_str().unwrap(), "--data-cache", cache.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("beyond the model's vocabulary of 100"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
