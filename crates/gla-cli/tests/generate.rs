//! `gla generate` end to end on a tiny byte-level model saved in fla's format.

use std::io::Write;
use std::process::{Command, Stdio};

use gla_model::checkpoint::save_model;
use gla_model::generate::{generate, generate_ids, GenerateOptions};
use gla_model::tokenizer::Tokenizer;
use gla_model::{GlaConfig, GlaModel};

fn tiny_dir(name: &str) -> (std::path::PathBuf, GlaModel) {
    let dir = std::env::temp_dir().join(format!("gla-cli-gen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = GlaModel::new(GlaConfig { initializer_range: 0.2, use_short_conv: true, ..GlaConfig::tiny(32, 2, 2, 256) }, 4).unwrap();
    save_model(&dir, &m).unwrap();
    (dir, m)
}

fn gla(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gla"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(c.stdin.take());
    let o = c.wait_with_output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn generate_cli_streams_what_the_library_generates() {
    let (dir, m) = tiny_dir("stream");
    let d = dir.to_str().unwrap();
    let opts = GenerateOptions { max_new_tokens: 12, ..Default::default() };
    let want = generate(&m, &Tokenizer::Bytes, "Hello", &opts, |_| {}).unwrap();
    let (code, out, err) = gla(&["generate", "--model", d, "--prompt", "Hello", "--max-new-tokens", "12", "--ignore-eos"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{}\n", want.text));
    // the same prompt from stdin and from a file
    let (_, out2, _) = gla(&["generate", "--model", d, "--max-new-tokens", "12", "--ignore-eos"], Some("Hello"));
    assert_eq!(out2, out);
    std::fs::write(dir.join("p.txt"), "Hello").unwrap();
    let (_, out3, _) = gla(
        &["generate", "--model", d, "--prompt-file", dir.join("p.txt").to_str().unwrap(), "--max-new-tokens", "12", "--ignore-eos"],
        None,
    );
    assert_eq!(out3, out);
    // a batch from a file: one JSON line per prompt, the first equal to the single run
    std::fs::write(dir.join("ps.txt"), "Hello\n\nab\nThe longest prompt of the three\n").unwrap();
    let (code, out, err) = gla(
        &["generate", "--model", d, "--prompts-file", dir.join("ps.txt").to_str().unwrap(), "--max-new-tokens", "12", "--ignore-eos"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["text"], want.text.as_str());
    assert_eq!(lines[2]["prompt"], "The longest prompt of the three");
    assert_eq!(lines[1]["tokens"], 12);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_cli_prompt_ids_print_the_library_greedy_ids() {
    let (dir, m) = tiny_dir("ids");
    let d = dir.to_str().unwrap();
    let opts = GenerateOptions { max_new_tokens: 10, ..Default::default() };
    let prompts = vec![vec![72u32, 101, 108], vec![1, 2, 3, 4, 5, 255]];
    let want = generate_ids(&m, &Tokenizer::Bytes, &prompts, &opts, &mut |_, _| {}).unwrap();
    let lines = |gens: &[gla_model::generate::Generation]| {
        gens.iter().map(|g| g.tokens.iter().map(u32::to_string).collect::<Vec<_>>().join(",") + "\n").collect::<String>()
    };
    let args = ["--max-new-tokens", "10", "--ignore-eos", "--temperature", "0", "--print-ids"];
    let (code, out, err) =
        gla(&[&["generate", "--model", d, "--prompt-ids", "72,101,108", "--prompt-ids", "1, 2,3,4,5,255"][..], &args].concat(), None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, lines(&want));
    assert_eq!(want[0].tokens.len(), 10);
    // one prompt alone gives its batch line; the same ids as text decode to the library's text
    let (code, out, err) = gla(&[&["generate", "--model", d, "--prompt-ids", "72,101,108"][..], &args].concat(), None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, lines(&want[..1]));
    let (_, text, _) = gla(&["generate", "--model", d, "--prompt-ids", "72,101,108", "--max-new-tokens", "10", "--ignore-eos"], None);
    assert_eq!(text, format!("{}\n", want[0].text));
    // a text prompt with --print-ids prints the ids of its continuation
    let (_, out, _) = gla(&[&["generate", "--model", d, "--prompt", "Hel"][..], &args].concat(), None);
    assert_eq!(out, lines(&want[..1]));

    // a run directory stands for its newest checkpoint
    let run = dir.join("run");
    save_model(&run.join("checkpoint-3"), &m).unwrap();
    std::fs::write(run.join("checkpoint-3").join("trainer_state.json"), "{}").unwrap();
    std::fs::write(run.join("latest"), "checkpoint-3").unwrap();
    let (code, out, err) = gla(&[&["generate", "--model", run.to_str().unwrap(), "--prompt-ids", "72,101,108"][..], &args].concat(), None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, lines(&want[..1]));

    // typed errors naming the id and the vocabulary
    for (ids, want) in [
        ("1,256,3", "token id 256 at position 1 is outside the model's vocabulary of 256 tokens (ids 0..=255)"),
        ("1,x", "`x` is not a token id"),
        ("1,-4", "`-4` is not a token id"),
        ("", "is empty"),
    ] {
        let (code, _, err) = gla(&["generate", "--model", d, "--prompt-ids", ids], None);
        assert_eq!(code, 1, "{ids}");
        assert!(err.contains(want), "{ids}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_cli_names_the_bad_tensor_and_bad_flags() {
    let (dir, _) = tiny_dir("bad");
    let d = dir.to_str().unwrap();
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.replace("\"hidden_size\": 32", "\"hidden_size\": 64")).unwrap();
    let (code, _, err) = gla(&["generate", "--model", d, "--prompt", "x"], None);
    assert_eq!(code, 1);
    assert!(err.contains("model.embeddings.weight") && err.contains("expected shape [256, 64]"), "{err}");
    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    let (code, _, err) = gla(&["generate", "--model", d, "--prompt", "x", "--top-p", "0"], None);
    assert_eq!(code, 1);
    assert!(err.contains("top_p"), "{err}");
    let (code, _, err) = gla(&["generate", "--model", d, "--prompt", ""], None);
    assert_eq!(code, 1);
    assert!(err.contains("empty"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_generate_cli_reports_every_batch_and_context() {
    let dir = std::env::temp_dir().join(format!("gla-cli-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("gen.json");
    let cfg = r#"{"hidden_size": 32, "num_hidden_layers": 1, "num_heads": 2, "vocab_size": 64, "use_short_conv": true}"#;
    let (code, out, err) = gla(
        &[
            "bench",
            "generate",
            "--config",
            cfg,
            "--prompt-len",
            "70",
            "--new-tokens",
            "4",
            "--batch",
            "1,3",
            "--contexts",
            "16,100",
            "--json",
            json.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("decode tok/s"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    assert_eq!(v["results"][1]["batch"], 3);
    assert_eq!(v["memory"][1]["context"], 100);
    assert_eq!(v["memory"][0]["state_bytes"], v["memory"][1]["state_bytes"]);
    let (code, _, err) = gla(&["bench", "generate", "--config", cfg, "--batch", "0"], None);
    assert_eq!(code, 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
