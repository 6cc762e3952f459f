//! The naive attention oracle: explicit scores per query row, masked softmax, the textbook
//! backward. Serial and slow on purpose: it shares nothing with the tiled path but the mask
//! ([`AttnProblem::keys`]), so the two fail independently.

use super::{axpy, dot};
use gla_core::{AttnForward, AttnGrads, AttnInputs, AttnOp, AttnProblem, Real, Result};

/// The naive oracle; `AttnNaive` over f64 is the reference every path is checked against.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnNaive;

/// Per (query row, query head): the allowed keys' absolute rows and their probabilities, with the
/// row's log-sum-exp. Computed in `T` throughout.
fn probs<T: Real>(p: &AttnProblem, x: &AttnInputs<'_, T>, start: usize, len: usize, i: usize, j: usize) -> (Vec<usize>, Vec<T>, T) {
    let (d, hk, g) = (p.d(), p.h_kv(), p.kv_head(j));
    let scale = T::from_f64(p.scale());
    let qi = &x.q[((start + i) * p.h() + j) * d..][..d];
    let rows: Vec<usize> = p.keys(i, len).map(|s| start + s).collect();
    let s: Vec<T> = rows.iter().map(|&r| scale * dot(qi, &x.k[(r * hk + g) * d..][..d])).collect();
    let m = s.iter().copied().fold(s[0], |a, b| if b > a { b } else { a });
    let e: Vec<T> = s.iter().map(|&v| (v - m).exp()).collect();
    let z = e.iter().fold(T::ZERO, |a, &b| a + b);
    let lse = m + T::from_f64(z.to_f64().ln());
    (rows, e.into_iter().map(|v| v / z).collect(), lse)
}

impl<T: Real> AttnOp<T> for AttnNaive {
    fn name(&self) -> &'static str {
        "cpu-attn-naive"
    }

    fn forward(&self, p: &AttnProblem, x: &AttnInputs<'_, T>) -> Result<AttnForward<T>> {
        x.validate(p)?;
        let (h, dv, hk) = (p.h(), p.dv(), p.h_kv());
        let mut o = vec![T::ZERO; p.o_len()];
        let mut lse = vec![0f32; p.lse_len()];
        for n in 0..p.n() {
            let seq = p.seq(n);
            for i in 0..seq.len() {
                for j in 0..h {
                    let (rows, pr, l) = probs(p, x, seq.start, seq.len(), i, j);
                    let oi = &mut o[((seq.start + i) * h + j) * dv..][..dv];
                    for (&r, &pv) in rows.iter().zip(&pr) {
                        axpy(oi, pv, &x.v[(r * hk + p.kv_head(j)) * dv..][..dv]);
                    }
                    lse[(seq.start + i) * h + j] = l.to_f64() as f32;
                }
            }
        }
        Ok(AttnForward { o, lse })
    }

    /// The textbook backward, recomputing P in `T` from scratch (the f32 `lse` is not used, so
    /// the f64 oracle stays f64-exact): `dP = dO V^T`, `dS = P (dP - rowsum(P dP))`,
    /// `dQ = scale dS K`, `dK = scale dS^T Q`, `dV = P^T dO`.
    fn backward(&self, p: &AttnProblem, x: &AttnInputs<'_, T>, fwd: &AttnForward<T>, d_o: &[T]) -> Result<AttnGrads<T>> {
        x.validate(p)?;
        fwd.validate_backward(p, d_o)?;
        let (h, d, dv, hk) = (p.h(), p.d(), p.dv(), p.h_kv());
        let scale = T::from_f64(p.scale());
        let mut dq = vec![T::ZERO; p.q_len()];
        let mut dk = vec![T::ZERO; p.k_len()];
        let mut dvv = vec![T::ZERO; p.v_len()];
        for n in 0..p.n() {
            let seq = p.seq(n);
            for i in 0..seq.len() {
                for j in 0..h {
                    let (rows, pr, _) = probs(p, x, seq.start, seq.len(), i, j);
                    let (qr, g) = ((seq.start + i) * h + j, p.kv_head(j));
                    let doi = &d_o[qr * dv..][..dv];
                    let dp: Vec<T> = rows.iter().map(|&r| dot(doi, &x.v[(r * hk + g) * dv..][..dv])).collect();
                    let di = pr.iter().zip(&dp).fold(T::ZERO, |a, (&pv, &dpv)| a + pv * dpv);
                    for ((&r, &pv), &dpv) in rows.iter().zip(&pr).zip(&dp) {
                        let ds = pv * (dpv - di) * scale;
                        let kr = (r * hk + g) * d;
                        axpy(&mut dq[qr * d..][..d], ds, &x.k[kr..][..d]);
                        axpy(&mut dk[kr..][..d], ds, &x.q[qr * d..][..d]);
                        axpy(&mut dvv[(r * hk + g) * dv..][..dv], pv, doi);
                    }
                }
            }
        }
        Ok(AttnGrads { dq, dk, dv: dvv })
    }
}
