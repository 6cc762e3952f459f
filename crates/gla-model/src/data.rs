//! Multi-query associative recall (MQAR), generated on the fly from a seed (Zoology's
//! `multiquery_ar`, HazyResearch/zoology:zoology/data/multiquery_ar.py).
//!
//! Vocabulary split: keys in `[1, vocab/2)`, values in `[vocab/2, vocab)`. Each example draws
//! `kv` distinct keys and `kv` distinct values and lays out the context `k1 v1 k2 v2 ...`
//! (`2 kv` tokens). The rest of the `T` tokens holds `(T - 2kv)/2` even slots; `kv` of them,
//! chosen without replacement with probability `p_i ∝ i^(a-1)` (power law, a = 0.01, so short
//! gaps are likely), hold each key once more: a query. The target at a query is its value (the
//! next token), every other target is -100. Filler is token 0 (Zoology's Figure-2 setting), or
//! uniform random tokens with `random_non_queries`.
//!
//! Example `i` of a stream depends only on `(seed, i)` ([`Rng::for_item`]), so a run resumes
//! by remembering the index of the next example (the data cursor), nothing else.

use serde::{Deserialize, Serialize};

use crate::model::IGNORE_INDEX;
use crate::{Error, Result, Rng};

/// MQAR settings. Defaults: T = 128, 8 pairs, vocab 256, Zoology's power law.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mqar {
    /// Vocabulary size (> T).
    pub vocab: usize,
    /// Sequence length T (even).
    pub seq_len: usize,
    /// Key-value pairs per example (4 kv <= T).
    pub num_kv_pairs: usize,
    /// Power-law exponent of the query gaps (1 = uniform). Default 0.01.
    pub power_a: f64,
    /// Fill non-query slots with random tokens instead of 0. Default false.
    pub random_non_queries: bool,
}

impl Default for Mqar {
    fn default() -> Self {
        Self { vocab: 256, seq_len: 128, num_kv_pairs: 8, power_a: 0.01, random_non_queries: false }
    }
}

fn bad(key: &'static str, reason: String) -> Error {
    Error::BadArg { key, reason }
}

/// Draws `n` distinct indices of `0..p.len()` with probabilities `p` (numpy's
/// `choice(replace=False, p=p)`: sequential draws, renormalised over what is left).
fn choose_weighted(rng: &mut Rng, p: &[f64], n: usize, out: &mut Vec<usize>) {
    let mut w = p.to_vec();
    let mut total: f64 = w.iter().sum();
    out.clear();
    for _ in 0..n {
        let mut u = rng.uniform() * total;
        let mut pick = w.len() - 1;
        for (i, &wi) in w.iter().enumerate() {
            if wi > 0.0 && u < wi {
                pick = i;
                break;
            }
            u -= wi;
        }
        // the fall-through only happens by rounding: take the last index still available
        if w[pick] == 0.0 {
            pick = w.iter().rposition(|&x| x > 0.0).unwrap_or(0);
        }
        total -= w[pick];
        w[pick] = 0.0;
        out.push(pick);
    }
}

/// Draws `n` distinct integers of `lo..hi` uniformly (partial Fisher-Yates).
fn choose_uniform(rng: &mut Rng, lo: usize, hi: usize, n: usize) -> Vec<usize> {
    let mut pool: Vec<usize> = (lo..hi).collect();
    for i in 0..n {
        let j = i + rng.below(pool.len() - i);
        pool.swap(i, j);
    }
    pool.truncate(n);
    pool
}

impl Mqar {
    /// Checks Zoology's constraints.
    ///
    /// # Errors
    /// [`Error::BadArg`] naming the violated constraint.
    pub fn validate(&self) -> Result<()> {
        let (v, t, kv) = (self.vocab, self.seq_len, self.num_kv_pairs);
        if t == 0 || t % 2 != 0 {
            return Err(bad("seq_len", format!("must be even and > 0, got {t}")));
        }
        if v <= t {
            return Err(bad("vocab", format!("must exceed the sequence length {t}, got {v}")));
        }
        if kv == 0 || kv > t / 4 {
            return Err(bad("num_kv_pairs", format!("needs 1 <= kv and 4 kv <= T = {t}, got {kv}")));
        }
        if kv >= v / 2 || kv > v - v / 2 {
            return Err(bad("num_kv_pairs", format!("{kv} pairs need more keys/values than vocab {v} gives")));
        }
        if !(self.power_a.is_finite() && self.power_a > 0.0) {
            return Err(bad("power_a", format!("must be > 0, got {}", self.power_a)));
        }
        Ok(())
    }

    /// Example `index` of stream `seed`: writes `ids [T]` and aligned `targets [T]`.
    pub fn example(&self, seed: u64, index: u64, ids: &mut [u32], targets: &mut [i64]) {
        let (v, t, kv) = (self.vocab, self.seq_len, self.num_kv_pairs);
        let mut rng = Rng::for_item(seed, index);
        let keys = choose_uniform(&mut rng, 1, v / 2, kv);
        let values = choose_uniform(&mut rng, v / 2, v, kv);
        let ctx = 2 * kv;
        let space = (t - ctx) / 2;
        let a = self.power_a;
        let p: Vec<f64> = (1..=space).map(|i| a * (i as f64).powf(a - 1.0)).collect();
        let mut gaps = Vec::with_capacity(kv);
        choose_weighted(&mut rng, &p, kv, &mut gaps);
        ids[..t].fill(0);
        targets[..t].fill(IGNORE_INDEX);
        for i in 0..kv {
            ids[2 * i] = keys[i] as u32;
            ids[2 * i + 1] = values[i] as u32;
            let pos = ctx + 2 * gaps[i];
            ids[pos] = keys[i] as u32;
            targets[pos] = values[i] as i64;
        }
        if self.random_non_queries {
            for (i, id) in ids[..t].iter_mut().enumerate() {
                // Zoology replaces zeros after the context, queries keep their key
                if *id == 0 && i >= ctx {
                    *id = rng.below(v) as u32;
                }
            }
        }
    }

    /// `b` consecutive examples starting at `cursor` into `ids [b, T]`, `targets [b, T]`.
    pub fn batch(&self, seed: u64, cursor: u64, b: usize, ids: &mut [u32], targets: &mut [i64]) {
        let t = self.seq_len;
        for i in 0..b {
            self.example(seed, cursor + i as u64, &mut ids[i * t..(i + 1) * t], &mut targets[i * t..(i + 1) * t]);
        }
    }
}
