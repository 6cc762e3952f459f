//! The runner's contract on the CPU: rows per tensor, error rows for a failing path, NaN fails.

use gla_check::cases::cases;
use gla_check::runner::{run_case, Path, Storage};
use gla_check::{format_table, tol, Row};
use gla_core::op::GlaOp;
use gla_core::{Backward, Forward, Grads, Inputs, Problem};
use gla_cpu::{FusedRecurrent, Naive};

/// A path that fails its backward and returns NaN outputs.
struct Broken;

impl GlaOp<f32> for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn forward(&self, p: &Problem, x: &Inputs<'_, f32>, s: bool) -> gla_core::Result<Forward<f32>> {
        let mut f = Naive.forward(p, x, s)?;
        f.o.iter_mut().for_each(|v| *v = f32::NAN);
        Ok(f)
    }
    fn backward(&self, _: &Problem, _: &Inputs<'_, f32>, _: &Backward<'_, f32>) -> gla_core::Result<Grads<f32>> {
        Err(gla_core::Error::Unsupported { backend: "broken", what: "backward".into() })
    }
}

#[test]
fn rows_per_tensor_and_failures_as_rows() {
    let case = cases().into_iter().find(|c| c.name == "T15-gs1-h0").expect("case in the table");
    let paths = [
        Path { label: "recurrent", storage: Storage::F32, op: &FusedRecurrent, tol: tol::CPU_F32, backward: true },
        Path { label: "broken", storage: Storage::Bf16, op: &Broken, tol: tol::GPU_BF16, backward: true },
    ];
    let mut rows: Vec<Row> = Vec::new();
    run_case(&case, 1000, &paths, &mut rows).expect("case runs");
    let tensors: Vec<&str> = rows.iter().filter(|r| r.path == "recurrent").map(|r| r.tensor).collect();
    assert_eq!(tensors, ["o", "ht", "dq", "dk", "dv", "dg", "dh0"]);
    assert!(rows.iter().filter(|r| r.path == "recurrent").all(|r| r.pass && r.dtype == "f32"), "{}", format_table(&rows));
    let broken: Vec<&Row> = rows.iter().filter(|r| r.path == "broken").collect();
    assert_eq!(broken.iter().map(|r| (r.tensor, r.pass)).collect::<Vec<_>>(), [("o", false), ("ht", true), ("error", false)]);
    assert!(broken[2].note.contains("backward"));
    assert!(format_table(&rows).ends_with("10 rows, 2 failed\n"));
}

#[test]
fn nan_and_inf_never_pass() {
    assert!(!tol::passes(f64::NAN, 1.0));
    assert!(!tol::passes(f64::INFINITY, f64::INFINITY));
    assert!(tol::passes(0.0, tol::BITWISE));
    assert_eq!(tol::floor_tol(1.0, tol::GRAD), tol::FLOOR_CAP);
    assert_eq!(tol::floor_tol(0.0, tol::GRAD), tol::GRAD);
}
