//! The one row type of every check, its table and its JSON.

use serde::Serialize;

use crate::tol;

/// One line of a check: one tensor of one case on one path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Case name (from the case table, the delta table (`delta-...`, `gdn-...`, and the error
    /// rows `delta-error-...`), or the GPU's extra cases: `wide-...`, `T65536-...`, `big-...`,
    /// `repeat-...`, `lm-...`, `fla-...`).
    pub case: String,
    /// The path checked: the CPU's `cpu-naive`, `cpu-recurrent`, `cpu-chunk-seq`,
    /// `cpu-chunk-par`, `cpu-delta-naive`, `cpu-delta-recurrent`, `cpu-delta-chunk`,
    /// `cpu-delta-step` (and `contract` for errors of the problem itself); the GPU's `recurrent`,
    /// `chunk`, `chunk-wide`, `model`.
    pub path: &'static str,
    /// Storage of the path's inputs: `f32` or `bf16`.
    pub dtype: &'static str,
    /// `o`, `ht`, `dq`, `dk`, `dv`, `dg`, `dh0` (the delta rule adds `dbeta`, `dA_log`,
    /// `ddt_bias`), `repeat`, a model quantity (`loss`, `logits`, `grad-all`, ...),
    /// `typed-error` (a bad input gave the expected error: 0, else +inf; the message is in
    /// `note`), or `error` (the path failed; the message is in `note`).
    pub tensor: &'static str,
    /// Relative RMSE vs the reference (for `repeat`: the largest absolute difference of runs;
    /// for counts: the count).
    pub rel_rmse: f64,
    /// The tolerance applied ([`crate::tol`]).
    pub tol: f64,
    /// Whether the row passed ([`tol::passes`]).
    pub pass: bool,
    /// Details (the reference's values, the bf16 floor), or the error of a failed path.
    pub note: String,
}

impl Row {
    /// A measured row, judged by [`tol::passes`].
    pub fn new(case: &str, path: &'static str, dtype: &'static str, tensor: &'static str, err: f64, tol: f64) -> Self {
        Self { case: case.into(), path, dtype, tensor, rel_rmse: err, tol, pass: tol::passes(err, tol), note: String::new() }
    }
    /// The same row with a note.
    #[must_use]
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
    /// A failing `error` row: the path could not run; the other rows still do.
    pub fn failed(case: &str, path: &'static str, dtype: &'static str, tol: f64, e: impl std::fmt::Display) -> Self {
        Self { case: case.into(), path, dtype, tensor: "error", rel_rmse: f64::INFINITY, tol, pass: false, note: e.to_string() }
    }
}

/// A plain-text table of the rows, one line each, failures marked `FAIL`, a count line last.
pub fn format_table(rows: &[Row]) -> String {
    // the path column is at least 10 wide (the GPU's labels), wider for the CPU's
    let w = rows.iter().map(|r| r.path.len()).max().unwrap_or(0).max(10);
    let mut s = format!("{:<34} {:<w$} {:<5} {:<9} {:>11} {:>9}  {}\n", "case", "path", "dtype", "tensor", "rel_rmse", "tol", "result");
    for r in rows {
        s += &format!(
            "{:<34} {:<w$} {:<5} {:<9} {:>11.3e} {:>9.1e}  {}{}\n",
            r.case,
            r.path,
            r.dtype,
            r.tensor,
            r.rel_rmse,
            r.tol,
            if r.pass { "ok" } else { "FAIL" },
            if r.note.is_empty() { String::new() } else { format!("  {}", r.note) }
        );
    }
    s += &format!("{} rows, {} failed\n", rows.len(), failed(rows));
    s
}

/// The rows as a JSON array of objects with [`Row`]'s fields (a non-finite `rel_rmse` is `null`).
///
/// # Errors
/// Serialisation failures (none for these fields in practice).
pub fn to_json(rows: &[Row]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(rows)
}

/// How many rows failed.
pub fn failed(rows: &[Row]) -> usize {
    rows.iter().filter(|r| !r.pass).count()
}
