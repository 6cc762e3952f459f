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
#[derive(Debug, Clone, PartialEq)]
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

    /// Bytes held by the cache's k and v buffers (their capacity): the window's w slots per
    /// sequence from its first token with a window; without, a slot per token seen (and what
    /// the `Vec`s' growth reserves beyond).
    pub fn bytes(&self) -> usize {
        let t = std::mem::size_of::<T>();
        self.k.iter().chain(&self.v).map(|x| x.capacity() * t).sum()
    }

    /// Forgets every token (the buffers are kept).
    pub fn clear(&mut self) {
        self.k.iter_mut().chain(self.v.iter_mut()).for_each(Vec::clear);
        self.seen.fill(0);
    }

    /// Sequence `n`'s cache: `k [slots, H_KV, D]`, `v [slots, H_KV, DV]` (slot `t % w` for token
    /// `t` once a window w is full), `None` for a sequence the cache does not hold.
    pub fn kv(&self, n: usize) -> Option<(&[T], &[T])> {
        Some((self.k.get(n)?, self.v.get(n)?))
    }

    /// Adds tokens of sequence `n` to its cache without attending (after a prefill computed
    /// their outputs with a full-sequence path): `k [len, H_KV, D]`, `v [len, H_KV, DV]`, in
    /// order, each taking the slot [`AttnCache::step`] would give it.
    ///
    /// # Errors
    /// [`Error::BadArg`] for a sequence out of range; [`Error::ShapeMismatch`] when k and v
    /// are not whole rows of the same count.
    pub fn append(&mut self, n: usize, k: &[T], v: &[T]) -> Result<()> {
        let p = &self.p;
        if n >= p.n() {
            return Err(Error::BadArg { key: "n", reason: format!("sequence {n} of {}", p.n()) });
        }
        let (wk, wv) = (p.h_kv() * p.d(), p.h_kv() * p.dv());
        let len = k.len() / wk;
        if k.len() != len * wk || v.len() != len * wv {
            return Err(Error::ShapeMismatch {
                op: "attn-cache-append",
                tensor: "v",
                expected: format!("[{len}, H_KV={}, DV={}] beside k [{len}, H_KV, D]", p.h_kv(), p.dv()),
                numel: len * wv,
                got: v.len(),
            });
        }
        for (kr, vr) in k.chunks_exact(wk).zip(v.chunks_exact(wv)) {
            self.push(n, kr, vr);
        }
        Ok(())
    }

    /// Puts one token's rows into its slot of sequence `n`.
    fn push(&mut self, n: usize, k: &[T], v: &[T]) {
        let t = self.seen[n];
        match self.p.window() {
            Some(w) if t >= w => {
                let slot = t % w;
                let (wk, wv) = (k.len(), v.len());
                self.k[n][slot * wk..][..wk].copy_from_slice(k);
                self.v[n][slot * wv..][..wv].copy_from_slice(v);
            }
            window => {
                if let Some(w) = window {
                    // the ring's w slots at once: constant memory from the first token
                    let (kn, vn) = (&mut self.k[n], &mut self.v[n]);
                    kn.reserve_exact(w * k.len() - kn.len());
                    vn.reserve_exact(w * v.len() - vn.len());
                }
                self.k[n].extend_from_slice(k);
                self.v[n].extend_from_slice(v);
            }
        }
        self.seen[n] = t + 1;
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
            self.push(n, &k[r * wk..][..wk], &v[r * wv..][..wv]);
        }
        let p = &self.p;
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
