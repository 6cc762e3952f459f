//! Issue 17: what a hostile user does to the CLI. Interrupts stop `gla train` after a step with
//! a checkpoint, closed pipes never panic, write errors fail the command, --resume keeps the
//! run's settings, run directories are locked and cleaned, sizes from flags are checked.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gla"))
}

fn gla(args: &[&str]) -> (i32, String, String) {
    let o = bin().args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-cli-robust-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny MQAR model: steps take milliseconds.
const TINY: &[&str] = &[
    "--d-model",
    "16",
    "--layers",
    "1",
    "--seq-len",
    "16",
    "--kv-pairs",
    "2",
    "--vocab",
    "32",
    "--batch-size",
    "2",
    "--eval-examples",
    "2",
    "--eval-every",
    "0",
    "--stop-at-acc",
    "2",
    "--decay-steps",
    "0",
    "--warmup",
    "3",
];

/// `gla train` on TINY; a flag of `extra` replaces TINY's.
fn train_args<'a>(out: &'a str, steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", "--out", out, "--steps", steps];
    for pair in TINY.chunks(2) {
        if !extra.contains(&pair[0]) {
            v.extend_from_slice(pair);
        }
    }
    v.extend_from_slice(extra);
    v
}

/// (step, loss, lr) of the train lines of metrics.jsonl.
fn train_lines(out: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap(), v["lr"].as_f64().unwrap()))
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn sigint_finishes_the_step_saves_and_resume_continues_exactly() {
    let dir = tmpdir("sigint");
    let (full, part) = (dir.join("full"), dir.join("part"));
    let (fs, ps) = (full.to_str().unwrap(), part.to_str().unwrap());
    // the interrupted run: a long target, stopped by SIGINT after a few steps
    let fixed = ["--save-every", "1000", "--decay-steps", "50"];
    let mut child = bin().args(train_args(ps, "100000", &fixed)).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("5 steps", || std::fs::read_to_string(part.join("metrics.jsonl")).is_ok_and(|t| t.lines().count() >= 5));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("SIGINT") && err.contains("--resume"), "{err}");
    let done = train_lines(&part);
    let n = done.last().unwrap().0;
    assert_eq!(done.iter().map(|x| x.0).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
    assert!(part.join(format!("checkpoint-{n}")).join("model.safetensors").is_file(), "the checkpoint of the last step, {n}");

    // resume without --steps keeps the run's target: here a changed --steps is passed to end it
    let target = (n + 3).to_string();
    let (code, _, err) = gla(&["train", "--out", ps, "--resume", "--steps", &target]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = gla(&train_args(fs, &target, &fixed));
    assert_eq!(code, 0, "{err}");
    // the schedule does not depend on --steps (--decay-steps 50): the interrupted and resumed
    // run repeats the uninterrupted one bit for bit, one metrics line per step
    assert_eq!(train_lines(&part), train_lines(&full));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_keeps_the_step_target_and_refuses_changed_settings() {
    let dir = tmpdir("resume");
    let (full, part) = (dir.join("full"), dir.join("part"));
    let (fs, ps) = (full.to_str().unwrap(), part.to_str().unwrap());
    // the uninterrupted run: 8 steps, lr decays over --steps (decay-steps 0)
    let (code, _, err) = gla(&train_args(fs, "8", &[]));
    assert_eq!(code, 0, "{err}");
    // the same run, stopped at 5 by a crash-like end: a checkpoint at 5, then --steps ends it
    let (code, _, err) = gla(&train_args(ps, "8", &["--save-every", "5"]));
    assert_eq!(code, 0, "{err}");
    // remove the final checkpoint so that the run resumes from step 5 and drops the stale metrics
    std::fs::remove_dir_all(part.join("checkpoint-8")).unwrap();
    std::fs::write(part.join("latest"), "checkpoint-5").unwrap();
    let (code, _, err) = gla(&["train", "--out", ps, "--resume"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("at step 5 of 8"), "the target is kept: {err}");
    assert_eq!(train_lines(&part), train_lines(&full), "bit-exact losses and lrs, one line per step");

    // changed flags: an error listing each, unless overridden where that is allowed
    std::fs::write(part.join("latest"), "checkpoint-5").unwrap();
    let (code, _, err) = gla(&["train", "--out", ps, "--resume", "--lr", "0.001", "--batch-size", "4"]);
    assert_eq!(code, 1);
    assert!(err.contains("--lr 0.001 (the run has 0.003)") && err.contains("--batch-size 4 (the run has 2)"), "{err}");
    assert!(err.contains("--override-settings"), "{err}");
    let (code, _, err) = gla(&["train", "--out", ps, "--resume", "--d-model", "32", "--override-settings"]);
    assert_eq!(code, 1);
    assert!(err.contains("--d-model 32 (the run has 16)") && err.contains("cannot change"), "{err}");
    let (code, _, err) = gla(&["train", "--out", ps, "--resume", "--lr", "0.001", "--override-settings"]);
    assert_eq!(code, 0, "{err}");
    let lr6 = train_lines(&part).iter().find(|x| x.0 == 6).unwrap().2;
    assert!(lr6 < 0.0011, "the override applies: lr {lr6}");
    // a flag equal to the saved value is no conflict
    std::fs::write(part.join("latest"), "checkpoint-5").unwrap();
    let (code, _, err) = gla(&["train", "--out", ps, "--resume", "--d-model", "16", "--lr", "0.003"]);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_closed_stderr_or_stdout_never_panics() {
    let dir = tmpdir("pipe");
    let out = dir.join("run");
    // `gla train 2>&1 | head -1`: the progress goes quiet, the run finishes and saves
    let mut child = bin().args(train_args(out.to_str().unwrap(), "400", &["--eval-every", "10"])).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut first).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "first line {first:?}");
    assert!(out.join("checkpoint-400").join("model.safetensors").is_file());
    // `gla check | head -1`: exit 1 (the output is incomplete), no panic
    for args in [&["check", "--filter", "T=15"][..], &["bench", "ops", "--shape", "1,64,1,16,16"][..]] {
        let mut child = bin().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        let mut so = BufReader::new(child.stdout.take().unwrap());
        so.read_line(&mut line).unwrap();
        drop(so);
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(o.status.code() == Some(1) || o.status.code() == Some(0), "{args:?}: {:?} {err}", o.status);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_with_a_filter_that_matches_nothing_fails() {
    let (code, _, err) = gla(&["check", "--filter", "no-such-case"]);
    assert_eq!(code, 1);
    assert!(err.contains("matches no case"), "{err}");
}

#[test]
fn run_directories_are_locked_cleaned_and_their_metrics_rewritten() {
    let dir = tmpdir("lock");
    let out = dir.join("run");
    let os = out.to_str().unwrap();
    std::fs::create_dir_all(out.join(".tmp-checkpoint-7-12345")).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"kind\": \"train\", \"step\": 1, \"loss\": 9.0}\n{\"kind\": \"tr").unwrap();
    // another process holds the run: refused
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(out.join(".lock")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor owned by this test.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        let (code, _, err) = gla(&train_args(os, "2", &[]));
        assert_eq!(code, 1);
        assert!(err.contains("in use by another gla train"), "{err}");
    }
    drop(lock);
    let (code, _, err) = gla(&train_args(os, "3", &[]));
    assert_eq!(code, 0, "{err}");
    assert!(!out.join(".tmp-checkpoint-7-12345").exists(), "stale temporary checkpoint removed");
    let lines = train_lines(&out);
    assert_eq!(lines.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2, 3], "the stale file was replaced");
    assert_ne!(lines[0].1, 9.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn huge_model_flags_are_errors_not_aborts() {
    let dir = tmpdir("huge");
    let out = dir.join("run");
    for flags in [&["--layers", "1000000000"][..], &["--d-model", "100000000"][..], &["--d-model", "1000000000"][..]] {
        let mut args = vec!["train", "--out", out.to_str().unwrap(), "--steps", "1"];
        args.extend_from_slice(flags);
        let (code, _, err) = gla(&args);
        assert_eq!(code, 1, "{flags:?}: {err}");
        assert!(err.starts_with("error: ") && err.lines().count() == 1, "{flags:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_fifo_as_config_or_settings_is_refused() {
    let dir = tmpdir("fifo");
    let fifo = dir.join("config.json");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = dir.join("run");
    for flag in ["--config", "--settings"] {
        let mut child =
            bin().args(["train", "--out", out.to_str().unwrap(), flag, fifo.to_str().unwrap()]).stderr(Stdio::piped()).spawn().unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("{flag} FIFO: hangs");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_ne!(status.code(), Some(0), "{flag}: {err}");
        assert!(err.contains("not a regular file"), "{flag}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_from_another_directory_keeps_the_token_cache_under_the_run() {
    let dir = tmpdir("cwd");
    let data = dir.join("a.txt");
    std::fs::write(&data, "All the world's a stage, and all the men and women merely players.\n".repeat(40)).unwrap();
    let first = dir.join("first");
    std::fs::create_dir_all(&first).unwrap();
    let run = |cwd: &Path, args: &[&str]| {
        let o = bin().current_dir(cwd).args(args).output().unwrap();
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let mut args = vec!["train", "--data", data.to_str().unwrap(), "--out", "run", "--steps", "2"];
    args.extend_from_slice(&["--d-model", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "2", "--eval-examples", "2"]);
    let (code, err) = run(&first, &args);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_dir_all(first.join("run").join("data")).unwrap();
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let abs = first.join("run");
    let (code, err) = run(&elsewhere, &["train", "--out", abs.to_str().unwrap(), "--resume", "--steps", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(abs.join("data").is_dir(), "the token cache is rebuilt under the run");
    assert!(!elsewhere.join("run").exists(), "nothing under the working directory");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tiny_model_dir(dir: &Path) -> gla_model::GlaModel {
    let m =
        gla_model::GlaModel::new(gla_model::GlaConfig { initializer_range: 0.2, ..gla_model::GlaConfig::tiny(32, 1, 2, 256) }, 4).unwrap();
    gla_model::checkpoint::save_model(dir, &m).unwrap();
    m
}

#[cfg(target_os = "linux")]
#[test]
fn generate_to_a_full_disk_fails() {
    let dir = tmpdir("full");
    tiny_model_dir(&dir);
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = bin()
        .args(["generate", "--model", dir.to_str().unwrap(), "--prompt", "Hi", "--max-new-tokens", "9000", "--ignore-eos"])
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left") && !err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prompts_files_run_in_bounded_batches_with_the_same_lines() {
    let dir = tmpdir("batches");
    tiny_model_dir(&dir);
    let prompts: String = (0..7).map(|i| format!("prompt number {i}\n")).collect();
    std::fs::write(dir.join("p.txt"), prompts).unwrap();
    let run = |batch: &str| {
        let d = dir.to_str().unwrap();
        let p = dir.join("p.txt");
        let (code, out, err) = gla(&[
            "generate",
            "--model",
            d,
            "--prompts-file",
            p.to_str().unwrap(),
            "--max-new-tokens",
            "5",
            "--ignore-eos",
            "--batch-size",
            batch,
        ]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let whole = run("64");
    assert_eq!(whole.lines().count(), 7);
    assert_eq!(run("2"), whole, "batches of 2 give the same lines in the same order");
    std::fs::remove_dir_all(&dir).unwrap();
}
