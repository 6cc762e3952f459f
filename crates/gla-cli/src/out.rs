//! The binary's output: stdout carries results, stderr progress and diagnostics. Neither ever
//! panics on a write error (Rust's `println!` does, on a closed pipe): a failed stdout write is
//! remembered and turns the command's exit status into 1 ([`finish`]); a failed stderr write is
//! dropped, so a run whose progress pipe closed keeps working and saving.

use std::fmt;
use std::io::Write;
use std::sync::Mutex;

/// The first stdout write error, if any.
static STDOUT_ERROR: Mutex<Option<String>> = Mutex::new(None);

fn record(e: &std::io::Error) {
    if let Ok(mut g) = STDOUT_ERROR.lock() {
        g.get_or_insert_with(|| e.to_string());
    }
}

/// Writes to stdout; an error is recorded for [`finish`]. After the first error nothing more is
/// written (the reader is gone or the disk is full).
pub fn stdout(args: fmt::Arguments<'_>) {
    if failed() {
        return;
    }
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        record(&e);
    }
}

/// Writes to stderr, ignoring errors.
pub fn stderr(args: fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Whether a write to stdout has failed.
pub fn failed() -> bool {
    STDOUT_ERROR.lock().map(|g| g.is_some()).unwrap_or(true)
}

/// Records `e` as a stdout failure (for writers that bypass [`stdout`], such as a locked
/// stream held over a loop).
pub fn fail(e: &std::io::Error) {
    record(e);
}

/// Flushes stdout and reports the first write error of the run.
///
/// # Errors
/// The error, naming stdout.
pub fn finish() -> anyhow::Result<()> {
    if let Err(e) = std::io::stdout().lock().flush() {
        record(&e);
    }
    match STDOUT_ERROR.lock().ok().and_then(|g| g.clone()) {
        Some(e) => anyhow::bail!("writing to stdout: {e} (the output is incomplete)"),
        None => Ok(()),
    }
}
