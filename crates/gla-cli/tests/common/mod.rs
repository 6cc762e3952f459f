//! Helpers of the `gla` binary's family tests (delta.rs, hybrid.rs): run the binary, a fresh
//! scratch folder, a tiny MQAR training run, a checkpoint's config.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `gla args`: exit code, stdout, stderr.
pub fn gla(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_gla")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// An empty folder `gla-cli-{suite}-{name}-{pid}` under the temp dir.
pub fn tmpdir(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-cli-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `gla train` on a tiny MQAR setting (D = 16, `layers` layers, 2 heads, T = 16, 2 pairs) for
/// `steps` steps into `out`, with `extra` flags.
pub fn train(out: &Path, steps: &str, layers: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["train", "--out", out.to_str().unwrap(), "--steps", steps];
    args.extend_from_slice(&["--d-model", "16", "--layers", layers, "--heads", "2", "--seq-len", "16", "--kv-pairs", "2"]);
    args.extend_from_slice(&["--vocab", "32", "--batch-size", "2", "--eval-every", "2", "--eval-examples", "4"]);
    args.extend_from_slice(extra);
    gla(&args)
}

/// A checkpoint's `config.json`.
pub fn config_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}
