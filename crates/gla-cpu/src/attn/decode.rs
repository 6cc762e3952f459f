//! The decode step of causal attention over a KV cache: one new token per sequence.
//!
//! Cache layout, per sequence n: `k[n]` is `[slots, H_KV, D]` and `v[n]` `[slots, H_KV, DV]`,
//! row-major. Without a window the slots grow by one per step (a plain `Vec`); with a window w
//! they stop at w and token t overwrites slot `t % w` (a ring buffer), which is exactly the keys
//! `t - w < s <= t` the window allows. Softmax does not care about key order, so the ring's
//! rotation needs no bookkeeping beyond the count of tokens seen.

use super::{axpy, dot};
use gla_core::{AttnForward, AttnProblem, Error, Real, Result};

/// A KV cache for `N` sequences and the decode step over it.
#[derive(Debug, Clone)]
pub struct AttnCache<T> {
    p: AttnProblem,
    k: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
    seen: Vec<usize>,
}

impl<T: Real> AttnCache<T> {
    /// An empty cache for the sequences, heads, dims, window and scale of `p` (its T is ignored:
    /// the cache grows one token per [`AttnCache::step`]).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a non-causal problem (a decode step only sees the past).
    pub fn new(p: &AttnProblem) -> Result<Self> {
        if !p.causal() {
            return Err(Error::Unsupported { backend: "cpu-attn-decode", what: "non-causal attention".into() });
        }
        let n = p.n();
        Ok(Self { p: p.clone(), k: vec![Vec::new(); n], v: vec![Vec::new(); n], seen: vec![0; n] })
    }

    /// Tokens seen so far by sequence `n` (`None` for a sequence the cache does not hold).
    pub fn seen(&self, n: usize) -> Option<usize> {
        self.seen.get(n).copied()
    }

    /// Appends one token per sequence of `active` (`q [A,H,D]`, `k [A,H_KV,D]`, `v [A,H_KV,DV]`,
    /// row a for sequence `active[a]`) and returns its output `o [A,H,DV]` and `lse [A,H]`.
    ///
    /// # Errors
    /// [`Error::BadArg`] for a sequence index out of range or given twice (its second token
    /// would be visible to its first); [`Error::ShapeMismatch`] and
    /// [`Error::NonFinite`] as [`gla_core::AttnInputs::validate`].
    pub fn step(&mut self, active: &[usize], q: &[T], k: &[T], v: &[T]) -> Result<AttnForward<T>> {
        let p = &self.p;
        let (h, hk, d, dv) = (p.h(), p.h_kv(), p.d(), p.dv());
        if let Some(&n) = active.iter().find(|&&n| n >= p.n()) {
            return Err(Error::BadArg { key: "active", reason: format!("sequence {n} of {}", p.n()) });
        }
        let mut given = vec![false; p.n()];
        for &n in active {
            if std::mem::replace(&mut given[n], true) {
                return Err(Error::BadArg { key: "active", reason: format!("sequence {n} given twice in one step") });
            }
        }
        let a = active.len();
        let step = gla_core::AttnProblem::new(gla_core::AttnSpec {
            b: 1,
            t: a,
            h,
            h_kv: hk,
            d,
            dv,
            causal: true,
            window: None,
            scale: Some(p.scale()),
            cu_seqlens: None,
        })?;
        gla_core::AttnInputs { q, k, v }.validate(&step)?;
        let (wk, wv) = (hk * d, hk * dv);
        for (r, &n) in active.iter().enumerate() {
            let t = self.seen[n];
            match p.window() {
                Some(w) if t >= w => {
                    let slot = t % w;
                    self.k[n][slot * wk..][..wk].copy_from_slice(&k[r * wk..][..wk]);
                    self.v[n][slot * wv..][..wv].copy_from_slice(&v[r * wv..][..wv]);
                }
                _ => {
                    self.k[n].extend_from_slice(&k[r * wk..][..wk]);
                    self.v[n].extend_from_slice(&v[r * wv..][..wv]);
                }
            }
            self.seen[n] = t + 1;
        }
        let scale = T::from_f64(p.scale());
        let mut o = vec![T::ZERO; a * h * dv];
        let mut lse = vec![0f32; a * h];
        for (r, &n) in active.iter().enumerate() {
            let slots = self.k[n].len() / wk;
            for j in 0..h {
                let g = p.kv_head(j);
                let qi = &q[(r * h + j) * d..][..d];
                let s: Vec<T> = (0..slots).map(|c| scale * dot(qi, &self.k[n][c * wk + g * d..][..d])).collect();
                let m = s.iter().copied().fold(s[0], |x, y| if y > x { y } else { x });
                let e: Vec<T> = s.iter().map(|&x| (x - m).exp()).collect();
                let z = e.iter().fold(T::ZERO, |x, &y| x + y);
                let oi = &mut o[(r * h + j) * dv..][..dv];
                for (c, &ev) in e.iter().enumerate() {
                    axpy(oi, ev / z, &self.v[n][c * wv + g * dv..][..dv]);
                }
                lse[r * h + j] = (m.to_f64() + z.to_f64().ln()) as f32;
            }
        }
        Ok(AttnForward { o, lse })
    }
}
