//! Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus) and the
//! repetition penalty, in Hugging Face `generate`'s order (repetition penalty, then temperature,
//! top-k, top-p), with a seeded generator so that a seed always gives the same tokens.
//!
//! ```
//! use gla_model::sample::{Sampler, SamplingParams};
//! let mut s = Sampler::new(SamplingParams::default()).unwrap(); // greedy
//! assert_eq!(s.sample(&[0.1, 2.0, -1.0], &[]), 1);
//! let p = SamplingParams { temperature: 0.8, top_k: 2, seed: 7, ..Default::default() };
//! let (mut a, mut b) = (Sampler::new(p.clone()).unwrap(), Sampler::new(p).unwrap());
//! let logits = [0.5, 0.4, 0.3, 0.2];
//! let xs: Vec<u32> = (0..20).map(|_| a.sample(&logits, &[])).collect();
//! assert!(xs.iter().all(|&t| t < 2));
//! assert_eq!(xs, (0..20).map(|_| b.sample(&logits, &[])).collect::<Vec<_>>());
//! ```

use crate::error::GenerateError;
use crate::rng::Rng;

/// How the next token is chosen. The default is greedy (`temperature = 0`) with every filter off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax). Default 0.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` = off. Default 0.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; `1` = off.
    /// Default 1.
    pub top_p: f32,
    /// Hugging Face's repetition penalty (CTRL paper): the logit `x` of every token already in
    /// the context becomes `x / p` if positive, `x * p` otherwise; `1` = off. Default 1.
    pub repetition_penalty: f32,
    /// Seed of the sampling generator. Default 0.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// Checks every value's range.
    ///
    /// # Errors
    /// [`GenerateError::BadOption`] naming the option and the allowed range.
    pub fn validate(&self) -> Result<(), GenerateError> {
        let bad = |key: &'static str, reason: String| Err(GenerateError::BadOption { key, reason });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", format!("must be a finite number >= 0 (0 = greedy), found {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], found {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", format!("must be a finite number > 0 (1 = off), found {}", self.repetition_penalty));
        }
        Ok(())
    }

    /// Whether this picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// A sampler: the parameters and the generator's state (one per sequence).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    // scratch: (logit, token) pairs
    buf: Vec<(f32, u32)>,
    seen: Vec<bool>,
}

impl Sampler {
    /// A sampler seeded with `params.seed`.
    ///
    /// # Errors
    /// Those of [`SamplingParams::validate`].
    pub fn new(params: SamplingParams) -> Result<Self, GenerateError> {
        params.validate()?;
        Ok(Self { rng: Rng::new(params.seed), params, buf: Vec::new(), seen: Vec::new() })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token from `logits [vocab]`; `context` holds the tokens the repetition penalty
    /// applies to (the prompt and what was generated, as in Hugging Face). NaN logits are never
    /// chosen; when every logit is NaN or `-inf`, token 0 is returned.
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> u32 {
        let p = &self.params;
        self.buf.clear();
        self.buf.extend(logits.iter().enumerate().map(|(i, &x)| (if x.is_nan() { f32::NEG_INFINITY } else { x }, i as u32)));
        if p.repetition_penalty != 1.0 {
            self.seen.clear();
            self.seen.resize(logits.len(), false);
            for &t in context {
                if let Some(s) = self.seen.get_mut(t as usize) {
                    *s = true;
                }
            }
            for (x, t) in self.buf.iter_mut() {
                if self.seen[*t as usize] {
                    *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
                }
            }
        }
        if p.is_greedy() {
            // first maximum, as torch.argmax
            return self.buf.iter().fold((f32::NEG_INFINITY, 0u32), |best, &(x, t)| if x > best.0 { (x, t) } else { best }).1;
        }
        let inv_t = 1.0 / p.temperature;
        self.buf.iter_mut().for_each(|(x, _)| *x *= inv_t);
        // most likely first; ties by token id so the order is deterministic
        self.buf.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut keep = self.buf.len();
        if p.top_k > 0 && p.top_k < keep {
            // keep every token tied with the k-th (as Hugging Face's `scores < kth value` filter)
            let kth = self.buf[p.top_k - 1].0;
            keep = p.top_k + self.buf[p.top_k..].iter().take_while(|(x, _)| *x >= kth).count();
        }
        let mx = self.buf[0].0;
        if mx == f32::NEG_INFINITY {
            return 0;
        }
        let probs: Vec<f64> = self.buf[..keep].iter().map(|(x, _)| ((x - mx) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        if p.top_p < 1.0 {
            // the smallest prefix whose mass reaches top_p (at least one token)
            let mut cum = 0.0;
            let mut n = 0;
            for &q in &probs {
                cum += q / total;
                n += 1;
                if cum >= p.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let mass: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.uniform() * mass;
        for (i, &q) in probs[..keep].iter().enumerate() {
            if u < q {
                return self.buf[i].1;
            }
            u -= q;
        }
        self.buf[keep - 1].1
    }
}
