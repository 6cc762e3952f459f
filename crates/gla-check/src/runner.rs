//! The check runner: the case table on a list of paths (any [`GlaOp<f32>`]) against the f64
//! oracle, one [`Row`] per tensor.
//!
//! Each path stores its inputs as f32 or bf16 ([`Storage`]); the oracle runs on the inputs as the
//! path sees them (rounded to its storage; states and their gradients are f32 on every path), so
//! the error measured is the path's own arithmetic and one tolerance per storage suffices
//! ([`crate::tol`]). A path that fails on a case gives a failing `error` row; the others still run.

use gla_core::op::GlaOp;
use gla_core::{Backward, Forward, Grads, Inputs, Problem};
use gla_cpu::Naive;

use crate::cases::{rel_rmse, Case, CaseData};
use crate::row::Row;

/// Seed of the case table's first case (case `i` draws from `TABLE_SEED + i`), on every backend.
pub const TABLE_SEED: u64 = 1000;

/// How a path stores q, k, v, g and do (states and their gradients are f32 on every path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// f32.
    F32,
    /// bf16 (round to nearest even).
    Bf16,
}

impl Storage {
    /// `f32` or `bf16`, the rows' dtype.
    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::Bf16 => "bf16",
        }
    }
    /// `x` rounded to what this storage holds, as f32.
    pub fn round(self, x: &[f64]) -> Vec<f32> {
        match self {
            Storage::F32 => x.iter().map(|&v| v as f32).collect(),
            Storage::Bf16 => x.iter().map(|&v| gla_core::bf16::bf16_to_f32(gla_core::bf16::f32_to_bf16(v as f32))).collect(),
        }
    }
}

/// One path of [`run_table`]: an op, the labels of its rows and its tolerance.
pub struct Path<'a> {
    /// The rows' path label.
    pub label: &'static str,
    /// What the op stores; the oracle runs on inputs rounded to it.
    pub storage: Storage,
    /// The op (it takes f32 slices and rounds them itself to its storage).
    pub op: &'a dyn GlaOp<f32>,
    /// The tolerance of every tensor ([`crate::tol`]).
    pub tol: f64,
    /// Whether its backward is checked (off where it runs the same kernels as another path).
    pub backward: bool,
}

/// A case's inputs rounded to one storage, with the f64 oracle's results on them.
pub struct Rounded {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    h0: Vec<f32>,
    /// `[B,T,H,V]`, rounded to the storage.
    pub d_o: Vec<f32>,
    /// `[N,H,K,V]`, f32.
    pub dht: Vec<f32>,
}

impl Rounded {
    /// The inputs of `d` as `storage` holds them.
    pub fn new(d: &CaseData, storage: Storage) -> Self {
        Self {
            q: storage.round(&d.q),
            k: storage.round(&d.k),
            v: storage.round(&d.v),
            g: storage.round(&d.g),
            h0: Storage::F32.round(&d.h0),
            d_o: storage.round(&d.d_o),
            dht: Storage::F32.round(&d.dht),
        }
    }
    /// The inputs as an [`Inputs`].
    pub fn inputs(&self) -> Inputs<'_, f32> {
        Inputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            g: (!self.g.is_empty()).then_some(&self.g[..]),
            h0: (!self.h0.is_empty()).then_some(&self.h0[..]),
        }
    }
    /// The upstream gradients.
    pub fn grads_in(&self) -> Backward<'_, f32> {
        Backward { d_o: &self.d_o, dht: Some(&self.dht) }
    }
    /// The f64 oracle's forward (with the final state) and backward on these inputs.
    ///
    /// # Errors
    /// The oracle's errors (an invalid problem).
    pub fn reference(&self, p: &Problem) -> gla_core::Result<(Forward<f64>, Grads<f64>)> {
        let w = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let (q, k, v, g, h0, d_o, dht) = (w(&self.q), w(&self.k), w(&self.v), w(&self.g), w(&self.h0), w(&self.d_o), w(&self.dht));
        let x = Inputs { q: &q, k: &k, v: &v, g: (!g.is_empty()).then_some(&g[..]), h0: (!h0.is_empty()).then_some(&h0[..]) };
        let f = Naive.forward(p, &x, true)?;
        let b = Naive.backward(p, &x, &Backward { d_o: &d_o, dht: Some(&dht) })?;
        Ok((f, b))
    }
}

/// Rows `o` and `ht` of a forward against the oracle's (a missing final state gives +inf).
pub fn fwd_rows(out: &mut Vec<Row>, case: &str, path: &'static str, dtype: &'static str, tol: f64, f: &Forward<f32>, r: &Forward<f64>) {
    out.push(Row::new(case, path, dtype, "o", rel_rmse(&f.o, &r.o), tol));
    let ht = f.ht.as_deref().map_or(f64::INFINITY, |h| rel_rmse(h, r.ht.as_deref().unwrap_or(&[])));
    out.push(Row::new(case, path, dtype, "ht", ht, tol));
}

/// Rows `dq`, `dk`, `dv`, and `dg`, `dh0` where the oracle has them (missing ones give +inf).
pub fn bwd_rows(out: &mut Vec<Row>, case: &str, path: &'static str, dtype: &'static str, tol: f64, b: &Grads<f32>, r: &Grads<f64>) {
    out.push(Row::new(case, path, dtype, "dq", rel_rmse(&b.dq, &r.dq), tol));
    out.push(Row::new(case, path, dtype, "dk", rel_rmse(&b.dk, &r.dk), tol));
    out.push(Row::new(case, path, dtype, "dv", rel_rmse(&b.dv, &r.dv), tol));
    if let Some(rg) = &r.dg {
        out.push(Row::new(case, path, dtype, "dg", b.dg.as_deref().map_or(f64::INFINITY, |a| rel_rmse(a, rg)), tol));
    }
    if let Some(rh) = &r.dh0 {
        out.push(Row::new(case, path, dtype, "dh0", b.dh0.as_deref().map_or(f64::INFINITY, |a| rel_rmse(a, rh)), tol));
    }
}

/// Runs one case (data drawn from `seed`) on every path in order, forward then backward; the
/// oracle runs once per storage.
///
/// # Errors
/// An invalid case spec, or the oracle failing (never the paths: they give `error` rows).
pub fn run_case(case: &Case, seed: u64, paths: &[Path<'_>], out: &mut Vec<Row>) -> gla_core::Result<()> {
    let d = CaseData::generate(case, seed)?;
    let p = &d.problem;
    let mut oracles: Vec<(Storage, Rounded, Forward<f64>, Grads<f64>)> = Vec::new();
    for path in paths {
        if !oracles.iter().any(|o| o.0 == path.storage) {
            let r = Rounded::new(&d, path.storage);
            let (rf, rb) = r.reference(p)?;
            oracles.push((path.storage, r, rf, rb));
        }
        let (_, r, rf, rb) = oracles.iter().find(|o| o.0 == path.storage).expect("oracle computed above");
        let (name, dtype, x) = (case.name.as_str(), path.storage.name(), r.inputs());
        match path.op.forward(p, &x, true) {
            Ok(f) => fwd_rows(out, name, path.label, dtype, path.tol, &f, rf),
            Err(e) => out.push(Row::failed(name, path.label, dtype, path.tol, e)),
        }
        if path.backward {
            match path.op.backward(p, &x, &r.grads_in()) {
                Ok(b) => bwd_rows(out, name, path.label, dtype, path.tol, &b, rb),
                Err(e) => out.push(Row::failed(name, path.label, dtype, path.tol, e)),
            }
        }
    }
    Ok(())
}

/// Runs the cases of `cases` whose name contains `filter` (all without one) on `paths`, case `i`
/// drawn from seed `seed0 + i` (a filter does not change a case's data).
///
/// # Errors
/// As [`run_case`].
pub fn run_table(cases: &[Case], seed0: u64, filter: Option<&str>, paths: &[Path<'_>], out: &mut Vec<Row>) -> gla_core::Result<()> {
    for (i, case) in cases.iter().enumerate() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        run_case(case, seed0 + i as u64, paths, out)?;
    }
    Ok(())
}
