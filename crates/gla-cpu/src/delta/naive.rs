//! The delta-rule oracle: token by token, exactly the contract ([`gla_core::delta`]), generic over
//! f32 and f64.
//!
//! Per (sequence, value head j, its query/key head i), on the prepared inputs ([`super::prep`]):
//!
//! ```text
//! S' = exp(g_t) S_{t-1};  p = S'^T k_t;  u = beta_t (v_t - p);  S_t = S' + k_t u^T;  o_t = S_t^T q_t
//! ```
//!
//! Its backward keeps every state and walks back with `dS` (the gradient of `S_t`):
//!
//! ```text
//! dS += q_t do_t^T;   dq_t = S_t do_t
//! du  = dS^T k_t;     dk_t = dS u            (S_t = S' + k u^T)
//! dv_t = beta du;     dbeta_t = du . (v_t - p);   dp = -beta du
//! dS' = dS + k_t dp^T;   dk_t += S' dp        (p = S'^T k)
//! dg_t = exp(g_t) <S_{t-1}, dS'>;   dS = exp(g_t) dS'
//! dh0 = dS
//! ```
//!
//! dq and dk of a query/key head sum over its HV / H value heads. Checked by central finite
//! differences in f64 (tests/delta_oracle.rs).

use gla_core::delta::DeltaOp;
use gla_core::{Backward, DeltaGrads, DeltaInputs, DeltaProblem, Forward, Real, Result};

use super::prep::{self, Prepared};

/// The token-by-token delta-rule oracle (`cpu-delta-naive`). Use it with f64 as the reference.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeltaNaive;

/// Where (sequence, value head) reads and writes: offsets into the flat tensors.
struct At {
    hv: usize,
    h: usize,
    kd: usize,
    vd: usize,
    i: usize,
    j: usize,
}

impl At {
    fn qk(&self, r: usize) -> std::ops::Range<usize> {
        let o = (r * self.h + self.i) * self.kd;
        o..o + self.kd
    }
    fn v(&self, r: usize) -> std::ops::Range<usize> {
        let o = (r * self.hv + self.j) * self.vd;
        o..o + self.vd
    }
    fn s(&self, n: usize) -> std::ops::Range<usize> {
        let kv = self.kd * self.vd;
        let o = (n * self.hv + self.j) * kv;
        o..o + kv
    }
}

/// One step: `S <- S_t` from `S_{t-1}`; returns `(p, u)`.
fn step<T: Real>(s: &mut [T], a: T, k: &[T], v: &[T], beta: T, vd: usize) -> (Vec<T>, Vec<T>) {
    for x in s.iter_mut() {
        *x *= a;
    }
    let mut p = vec![T::ZERO; vd];
    for (ka, row) in k.iter().zip(s.chunks_exact(vd)) {
        for (pc, &sc) in p.iter_mut().zip(row) {
            *pc += sc * *ka;
        }
    }
    let u: Vec<T> = v.iter().zip(&p).map(|(&vc, &pc)| beta * (vc - pc)).collect();
    for (ka, row) in k.iter().zip(s.chunks_exact_mut(vd)) {
        for (sc, &uc) in row.iter_mut().zip(&u) {
            *sc += *ka * uc;
        }
    }
    (p, u)
}

fn heads(p: &DeltaProblem) -> impl Iterator<Item = (usize, At)> + '_ {
    (0..p.n()).flat_map(move |n| (0..p.hv()).map(move |j| (n, At { hv: p.hv(), h: p.h(), kd: p.k(), vd: p.v(), i: p.qk_head(j), j })))
}

impl<T: Real> DeltaOp<T> for DeltaNaive {
    fn name(&self) -> &'static str {
        "cpu-delta-naive"
    }

    fn forward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, T>, output_final_state: bool) -> Result<Forward<T>> {
        x.validate(DeltaOp::<T>::name(self), p)?;
        let pre = prep::forward(p, x);
        let (kd, vd) = (p.k(), p.v());
        let mut o = vec![T::ZERO; p.v_len()];
        let mut ht = vec![T::ZERO; p.state_len()];
        for (n, at) in heads(p) {
            let mut s = x.h0.map_or_else(|| vec![T::ZERO; kd * vd], |h0| h0[at.s(n)].to_vec());
            for r in p.seq(n) {
                let rj = r * p.hv() + at.j;
                step(&mut s, pre.g[rj].exp(), &pre.k[at.qk(r)], &x.v[at.v(r)], pre.beta[rj], vd);
                let q = &pre.q[at.qk(r)];
                let out = &mut o[at.v(r)];
                for (qa, row) in q.iter().zip(s.chunks_exact(vd)) {
                    for (oc, &sc) in out.iter_mut().zip(row) {
                        *oc += sc * *qa;
                    }
                }
            }
            ht[at.s(n)].copy_from_slice(&s);
        }
        Ok(Forward { o, ht: output_final_state.then_some(ht) })
    }

    fn backward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, T>, d: &Backward<'_, T>) -> Result<DeltaGrads<T>> {
        let name = DeltaOp::<T>::name(self);
        x.validate(name, p)?;
        d.validate_delta(name, p)?;
        let pre: Prepared<T> = prep::forward(p, x);
        let (kd, vd, kv) = (p.k(), p.v(), p.k() * p.v());
        let (mut dq, mut dk) = (vec![T::ZERO; p.qk_len()], vec![T::ZERO; p.qk_len()]);
        let mut dv = vec![T::ZERO; p.v_len()];
        let (mut dbeta, mut dg) = (vec![T::ZERO; p.beta_len()], vec![T::ZERO; p.beta_len()]);
        let mut dh0 = vec![T::ZERO; p.state_len()];
        for (n, at) in heads(p) {
            let rows = p.seq(n);
            // states[t] = S before token t of the sequence (states[0] = h0)
            let mut states = Vec::with_capacity((rows.len() + 1) * kv);
            let mut s = x.h0.map_or_else(|| vec![T::ZERO; kv], |h0| h0[at.s(n)].to_vec());
            for r in rows.clone() {
                states.extend_from_slice(&s);
                let rj = r * p.hv() + at.j;
                step(&mut s, pre.g[rj].exp(), &pre.k[at.qk(r)], &x.v[at.v(r)], pre.beta[rj], vd);
            }
            states.extend_from_slice(&s);
            let mut ds = d.dht.map_or_else(|| vec![T::ZERO; kv], |dht| dht[at.s(n)].to_vec());
            for (t, r) in rows.enumerate().rev() {
                let rj = r * p.hv() + at.j;
                let (a, beta) = (pre.g[rj].exp(), pre.beta[rj]);
                let (q, k, v, d_o) = (&pre.q[at.qk(r)], &pre.k[at.qk(r)], &x.v[at.v(r)], &d.d_o[at.v(r)]);
                let (s_prev, s_t) = (&states[t * kv..(t + 1) * kv], &states[(t + 1) * kv..(t + 2) * kv]);
                let mut sp = s_prev.to_vec();
                let (pv, u) = step(&mut sp, a, k, v, beta, vd);
                // sp now holds S_t; S' = a S_{t-1}
                debug_assert!(sp.len() == s_t.len());
                let mut du = vec![T::ZERO; vd];
                for ka in 0..kd {
                    let (mut dqa, mut dka) = (T::ZERO, T::ZERO);
                    for c in 0..vd {
                        ds[ka * vd + c] += q[ka] * d_o[c];
                        dqa += s_t[ka * vd + c] * d_o[c];
                        dka += ds[ka * vd + c] * u[c];
                        du[c] += ds[ka * vd + c] * k[ka];
                    }
                    dq[at.qk(r).start + ka] += dqa;
                    dk[at.qk(r).start + ka] += dka;
                }
                let mut dbt = T::ZERO;
                let mut dp = vec![T::ZERO; vd];
                for c in 0..vd {
                    dv[at.v(r).start + c] = beta * du[c];
                    dbt += du[c] * (v[c] - pv[c]);
                    dp[c] = -(beta * du[c]);
                }
                dbeta[rj] = dbt;
                let mut dgt = T::ZERO;
                for ka in 0..kd {
                    let mut dka = T::ZERO;
                    for c in 0..vd {
                        let sprime = a * s_prev[ka * vd + c];
                        ds[ka * vd + c] += k[ka] * dp[c];
                        dka += sprime * dp[c];
                        dgt += s_prev[ka * vd + c] * ds[ka * vd + c];
                        ds[ka * vd + c] *= a;
                    }
                    dk[at.qk(r).start + ka] += dka;
                }
                dg[rj] = a * dgt;
            }
            dh0[at.s(n)].copy_from_slice(&ds);
        }
        Ok(prep::backward(p, x, &pre, &dq, &dk, dv, &dbeta, &dg, x.h0.map(|_| dh0)))
    }
}
