//! The naive oracle of the bidirectional scan: each direction's recurrence walked token by token
//! in its own time order, exactly the contract ([`gla_core::bidir`]), sharing no code with the
//! GLA paths (the identity `o = gla(..f..)/2 + flip(gla(..b..))/2` that the fast paths use is
//! checked against it, not assumed).
//!
//! One direction visits the rows `r_1 .. r_L` of a sequence (forward: in order; backward:
//! reversed) with its gate `g` and weight `w = 1/2`:
//!
//! ```text
//! S_i = diag(exp(g_{r_i})) S_{i-1} + k_{r_i} v_{r_i}^T,   o_{r_i} += w scale S_i^T q_{r_i}
//! ```
//!
//! and its backward is the GLA oracle's direct form (`docs/math/gla_chunk.md`) on those rows,
//! keeping every state (memory `L K V` per sequence and head: an oracle):
//!
//! ```text
//! dS = 0;  for i = L .. 1:
//!   dS += w scale q do^T;  dq += w scale S_i do;  dk += dS v;  dv += dS^T k
//!   dg  = exp(g) * rowsum(S_{i-1} * dS);  dS = diag(exp(g)) dS
//! ```
//!
//! Serial over sequences and heads. Its backward is checked by central finite differences in
//! f64 (tests/bidir.rs).

use gla_core::bidir::{BidirGrads, BidirInputs, BidirOp, BidirProblem, COMBINE};
use gla_core::op::first_bad;
use gla_core::{Real, Result};

/// The token-by-token oracle (`cpu-bidir-naive`); over f64 the reference of every test.
#[derive(Debug, Clone, Copy, Default)]
pub struct BidirNaive;

/// One (sequence, head, direction): its rows in scan order, and where things live.
struct Scan<'a, T> {
    p: &'a BidirProblem,
    x: &'a BidirInputs<'a, T>,
    g: &'a [T],
    h: usize,
    rows: Vec<usize>,
}

impl<T: Real> Scan<'_, T> {
    fn kr(&self, r: usize) -> usize {
        (r * self.p.h() + self.h) * self.p.k()
    }
    fn vr(&self, r: usize) -> usize {
        (r * self.p.h() + self.h) * self.p.v()
    }
    /// `S_0 .. S_L` in scan order.
    fn states(&self) -> Vec<T> {
        let (kd, vd) = (self.p.k(), self.p.v());
        let kv = kd * vd;
        let mut s = vec![T::ZERO; (self.rows.len() + 1) * kv];
        for (i, &r) in self.rows.iter().enumerate() {
            let (prev, next) = s[i * kv..(i + 2) * kv].split_at_mut(kv);
            let (k, v, g) = (&self.x.k[self.kr(r)..][..kd], &self.x.v[self.vr(r)..][..vd], &self.g[self.kr(r)..][..kd]);
            for a in 0..kd {
                let decay = g[a].exp();
                for j in 0..vd {
                    next[a * vd + j] = decay * prev[a * vd + j] + k[a] * v[j];
                }
            }
        }
        s
    }
    fn forward(&self, w: T, o: &mut [T]) {
        let (kd, vd, kv) = (self.p.k(), self.p.v(), self.p.k() * self.p.v());
        let s = self.states();
        for (i, &r) in self.rows.iter().enumerate() {
            let st = &s[(i + 1) * kv..(i + 2) * kv];
            let q = &self.x.q[self.kr(r)..][..kd];
            let or = &mut o[self.vr(r)..][..vd];
            for j in 0..vd {
                let mut acc = T::ZERO;
                for a in 0..kd {
                    acc += st[a * vd + j] * q[a];
                }
                or[j] += w * acc;
            }
        }
    }
    #[allow(clippy::too_many_arguments)]
    fn backward(&self, w: T, d_o: &[T], dq: &mut [T], dk: &mut [T], dv: &mut [T], dg: &mut [T]) {
        let (kd, vd, kv) = (self.p.k(), self.p.v(), self.p.k() * self.p.v());
        let s = self.states();
        let mut ds = vec![T::ZERO; kv];
        for (i, &r) in self.rows.iter().enumerate().rev() {
            let (s_prev, s_t) = (&s[i * kv..(i + 1) * kv], &s[(i + 1) * kv..(i + 2) * kv]);
            let (kr, vr) = (self.kr(r), self.vr(r));
            let (q, k, v, g, dor) =
                (&self.x.q[kr..][..kd], &self.x.k[kr..][..kd], &self.x.v[vr..][..vd], &self.g[kr..][..kd], &d_o[vr..][..vd]);
            for a in 0..kd {
                let (mut dqa, mut dka, mut dga) = (T::ZERO, T::ZERO, T::ZERO);
                for j in 0..vd {
                    ds[a * vd + j] += w * q[a] * dor[j];
                    dqa += s_t[a * vd + j] * dor[j];
                    dka += ds[a * vd + j] * v[j];
                    dga += s_prev[a * vd + j] * ds[a * vd + j];
                }
                dq[kr + a] += w * dqa;
                dk[kr + a] += dka;
                dg[kr + a] = g[a].exp() * dga;
            }
            for j in 0..vd {
                let mut acc = T::ZERO;
                for a in 0..kd {
                    acc += ds[a * vd + j] * k[a];
                }
                dv[vr + j] += acc;
            }
            for a in 0..kd {
                let decay = g[a].exp();
                for j in 0..vd {
                    ds[a * vd + j] *= decay;
                }
            }
        }
    }
}

/// Both directions of every (sequence, head): forward scans with `gf`, backward with `gb`.
fn scans<'a, T: Real>(p: &'a BidirProblem, x: &'a BidirInputs<'a, T>) -> Vec<(Scan<'a, T>, bool)> {
    let mut out = Vec::new();
    for n in 0..p.n() {
        for h in 0..p.h() {
            let fwd: Vec<usize> = p.seq(n).collect();
            let bwd: Vec<usize> = p.seq(n).rev().collect();
            out.push((Scan { p, x, g: x.gf, h, rows: fwd }, false));
            out.push((Scan { p, x, g: x.gb, h, rows: bwd }, true));
        }
    }
    out
}

impl<T: Real> BidirOp<T> for BidirNaive {
    fn name(&self) -> &'static str {
        "cpu-bidir-naive"
    }

    fn forward(&self, p: &BidirProblem, x: &BidirInputs<'_, T>) -> Result<Vec<T>> {
        x.validate(p)?;
        let w = T::from_f64(COMBINE * p.scale());
        let mut o = vec![T::ZERO; p.v_len()];
        for (s, _) in scans(p, x) {
            s.forward(w, &mut o);
        }
        Ok(o)
    }

    fn backward(&self, p: &BidirProblem, x: &BidirInputs<'_, T>, d_o: &[T]) -> Result<BidirGrads<T>> {
        x.validate(p)?;
        x.validate_do(p, d_o, &first_bad)?;
        let w = T::from_f64(COMBINE * p.scale());
        let z = |n| vec![T::ZERO; n];
        let mut gr = BidirGrads { dq: z(p.qk_len()), dk: z(p.qk_len()), dv: z(p.v_len()), dgf: z(p.qk_len()), dgb: z(p.qk_len()) };
        for (s, back) in scans(p, x) {
            let dg = if back { &mut gr.dgb } else { &mut gr.dgf };
            s.backward(w, d_o, &mut gr.dq, &mut gr.dk, &mut gr.dv, dg);
        }
        Ok(gr)
    }
}
