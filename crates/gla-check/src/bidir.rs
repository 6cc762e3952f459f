//! The bidirectional scan's case table (DESIGN.md section 4 extended by what the family adds:
//! two gates of different strengths, one per direction; ViG's head shapes), its seeded data, and
//! the runner of the table on any list of [`BidirOp<f32>`] paths against the f64 oracle
//! ([`gla_cpu::BidirNaive`]). Rows are named `bidir/<case>`.
//!
//! Inputs are drawn like the GLA table's: q, k, v uniform in [0, 1), `gf = logsigmoid(u) / gsf`
//! and `gb = logsigmoid(u) / gsb` with u uniform (0.1 = very strong decay), do standard normal.
//! As for GLA ([`crate::runner`]), the oracle runs on the inputs as a path stores them.

use gla_core::bidir::{BidirGrads, BidirInputs, BidirOp, BidirProblem, BidirSpec};
use gla_core::Result;
use gla_cpu::BidirNaive;

use crate::cases::{logsigmoid, rel_rmse, Rng};
use crate::row::Row;
use crate::runner::Storage;

/// Seed of the bidir table's first case (case `i` draws from `BIDIR_SEED + i`).
pub const BIDIR_SEED: u64 = 4000;

/// One row of the bidir case table.
#[derive(Debug, Clone, PartialEq)]
pub struct BidirCase {
    /// `bidir/<case>`, unique in the table.
    pub name: String,
    /// Problem dims and options.
    pub spec: BidirSpec,
    /// Gate normalisers `(forward, backward)`: `g = logsigmoid(u) / gs`.
    pub gate_scales: (f64, f64),
}

/// The bidir case table: odd T (1, 15, 63, 64, 65, 1000) with K = 60 != V = 100 and gates of
/// equal and of very different strengths per direction; packed varlen input with an empty
/// sequence and one of a single token, and one whose sequences all fit one chunk; ViG's heads
/// (K = 32, V = 64 at T = 196, 14 x 14 patches; K = V = 32 at T = 49, the CPU Fashion-MNIST
/// model) and K = V = 64 and 128 at B > 1.
pub fn cases() -> Vec<BidirCase> {
    let mut out = Vec::new();
    let spec = |b, t, h, k, v, cu: Option<Vec<usize>>| BidirSpec { cu_seqlens: cu, ..BidirSpec::new(b, t, h, k, v) };
    let mut push = |name: String, spec, gate_scales| out.push(BidirCase { name: format!("bidir/{name}"), spec, gate_scales });
    for t in [1usize, 15, 63, 64, 65, 1000] {
        let (b, h) = if t >= 1000 { (1, 2) } else { (2, 2) };
        for (gsf, gsb) in [(1.0, 1.0), (0.1, 10.0), (10.0, 0.1)] {
            push(format!("T{t}-gf{gsf}-gb{gsb}"), spec(b, t, h, 60, 100, None), (gsf, gsb));
        }
    }
    push("varlen-gf1-gb0.1".into(), spec(1, 365, 2, 60, 100, Some(vec![0, 15, 15, 100, 101, 300, 365])), (1.0, 0.1));
    push("varlen-empty-first".into(), spec(1, 80, 3, 60, 100, Some(vec![0, 0, 80])), (10.0, 1.0));
    // every sequence within one chunk (the fused CPU path's domain), one empty, strong gf
    push("varlen-short-gf0.1-gb1".into(), spec(1, 120, 2, 60, 100, Some(vec![0, 0, 49, 50, 114, 120])), (0.1, 1.0));
    // ViG's gates: logsigmoid(x) / 16 (gate_logit_normalizer), per direction
    push("vig-T196-K32-V64".into(), spec(2, 196, 3, 32, 64, None), (16.0, 16.0));
    // the CPU Fashion-MNIST model's shape: 7x7 tokens, 2 heads of 32
    push("vig-T49-K32-V32".into(), spec(8, 49, 2, 32, 32, None), (16.0, 16.0));
    push("T196-K64-V64".into(), spec(2, 196, 2, 64, 64, None), (16.0, 1.0));
    push("T130-K128-V128".into(), spec(2, 130, 2, 128, 128, None), (1.0, 16.0));
    out
}

/// A case's inputs in f64 and its problem.
#[derive(Debug, Clone)]
pub struct BidirCaseData {
    /// The validated problem.
    pub problem: BidirProblem,
    /// `q, k, v, gf, gb, do`.
    pub x: [Vec<f64>; 6],
}

impl BidirCaseData {
    /// Draws the data of `case` from `seed`.
    ///
    /// # Errors
    /// An invalid spec.
    pub fn generate(case: &BidirCase, seed: u64) -> Result<Self> {
        let p = BidirProblem::new(case.spec.clone())?;
        let mut rng = Rng::new(seed);
        let (qk, vl) = (p.qk_len(), p.v_len());
        let q = rng.fill(qk, Rng::uniform);
        let k = rng.fill(qk, Rng::uniform);
        let v = rng.fill(vl, Rng::uniform);
        let (gsf, gsb) = case.gate_scales;
        let gf = rng.fill(qk, |r| logsigmoid(r.uniform()) / gsf);
        let gb = rng.fill(qk, |r| logsigmoid(r.uniform()) / gsb);
        let d_o = rng.fill(vl, Rng::normal);
        Ok(Self { problem: p, x: [q, k, v, gf, gb, d_o] })
    }
}

/// A case's inputs rounded to one storage (as f32), and the f64 oracle on exactly those values.
pub struct BidirRounded {
    /// `q, k, v, gf, gb, do` as the storage holds them.
    pub x: [Vec<f32>; 6],
    /// The oracle's output.
    pub o: Vec<f64>,
    /// The oracle's gradients.
    pub grads: BidirGrads<f64>,
}

impl BidirRounded {
    /// Rounds `d` to `storage` and runs the oracle on the rounded values.
    ///
    /// # Errors
    /// The oracle's errors.
    pub fn new(d: &BidirCaseData, storage: Storage) -> Result<Self> {
        let x = d.x.clone().map(|t| storage.round(&t));
        let w = x.clone().map(|t| t.into_iter().map(f64::from).collect::<Vec<f64>>());
        let xi = BidirInputs { q: &w[0], k: &w[1], v: &w[2], gf: &w[3], gb: &w[4] };
        let o = BidirNaive.forward(&d.problem, &xi)?;
        let grads = BidirNaive.backward(&d.problem, &xi, &w[5])?;
        Ok(Self { x, o, grads })
    }
    /// The rounded inputs.
    pub fn inputs(&self) -> BidirInputs<'_, f32> {
        BidirInputs { q: &self.x[0], k: &self.x[1], v: &self.x[2], gf: &self.x[3], gb: &self.x[4] }
    }
}

/// One path of [`run_table`]: an f32 bidir op, its rows' label, storage and tolerance.
pub struct BidirPath<'a> {
    /// The rows' path label.
    pub label: &'static str,
    /// What the op stores; the oracle runs on inputs rounded to it.
    pub storage: Storage,
    /// The op.
    pub op: &'a dyn BidirOp<f32>,
    /// The tolerance of every tensor ([`crate::tol`]).
    pub tol: f64,
}

/// Relative RMSE of `o` and every gradient against the oracle.
pub fn compare(o: &[f32], g: &BidirGrads<f32>, r: &BidirRounded) -> [(&'static str, f64); 6] {
    let rg = &r.grads;
    [
        ("o", rel_rmse(o, &r.o)),
        ("dq", rel_rmse(&g.dq, &rg.dq)),
        ("dk", rel_rmse(&g.dk, &rg.dk)),
        ("dv", rel_rmse(&g.dv, &rg.dv)),
        ("dgf", rel_rmse(&g.dgf, &rg.dgf)),
        ("dgb", rel_rmse(&g.dgb, &rg.dgb)),
    ]
}

/// Runs `path` on one case: its rows, or a failing `error` row.
pub fn path_rows(case: &str, p: &BidirProblem, r: &BidirRounded, path: &BidirPath<'_>, out: &mut Vec<Row>) {
    let x = r.inputs();
    let dtype = path.storage.name();
    let run = path.op.forward(p, &x).and_then(|o| path.op.backward(p, &x, &r.x[5]).map(|g| (o, g)));
    match run {
        Ok((o, g)) => {
            for (tensor, err) in compare(&o, &g, r) {
                out.push(Row::new(case, path.label, dtype, tensor, err, path.tol));
            }
        }
        Err(e) => out.push(Row::failed(case, path.label, dtype, path.tol, e)),
    }
}

/// Runs the cases of `cases` whose name contains `filter` on `paths` (case `i` from seed
/// `seed0 + i`); the oracle runs once per case and storage.
///
/// # Errors
/// An invalid case spec or the oracle failing (never the paths: they give `error` rows).
pub fn run_table(cases: &[BidirCase], seed0: u64, filter: Option<&str>, paths: &[BidirPath<'_>], out: &mut Vec<Row>) -> Result<()> {
    for (i, case) in cases.iter().enumerate() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let d = BidirCaseData::generate(case, seed0 + i as u64)?;
        let mut oracles: Vec<(Storage, BidirRounded)> = Vec::new();
        for path in paths {
            if !oracles.iter().any(|o| o.0 == path.storage) {
                oracles.push((path.storage, BidirRounded::new(&d, path.storage)?));
            }
            let r = &oracles.iter().find(|o| o.0 == path.storage).expect("computed above").1;
            path_rows(&case.name, &d.problem, r, path, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_generates_and_names_are_unique() {
        let cases = cases();
        let mut names: Vec<_> = cases.iter().map(|c| c.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len());
        for c in &cases {
            let d = BidirCaseData::generate(c, 1).unwrap();
            let r = d.x.clone().map(|t| Storage::F32.round(&t));
            BidirInputs { q: &r[0], k: &r[1], v: &r[2], gf: &r[3], gb: &r[4] }.validate(&d.problem).unwrap();
        }
    }
}
