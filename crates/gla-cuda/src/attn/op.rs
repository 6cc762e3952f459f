//! [`CudaAttn`]: the attention kernels behind the host-slice [`AttnOp`] contract (upload as bf16,
//! run, download as f32), for checking against the CPU oracle and for callers without device
//! buffers.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use gla_core::{AttnCacheLayout, AttnForward, AttnGrads, AttnInputs, AttnOp, AttnProblem};

use super::ops::{self, AttnDevInputs, AttnKvCache, DevAttnProblem};
use crate::error::Result;
use crate::ops::{bf16_to_f32, f32_to_bf16, poison};
use crate::runtime::Cuda;

/// Which GPU algorithm a [`CudaAttn`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttnOpAlgo {
    /// The flash forward and backward (`attn/fwd.cu`, `attn/bwd.cu`; on sm_90a for D = 128
    /// `attn/fwd_wg.cu`, `attn/bwd_wg.cu`).
    Flash,
    /// The forward as decode steps over a device KV cache (`attn/decode.cu`): every sequence fed
    /// one token per step (append, split attention, combine), a sequence that has ended idle
    /// (`lens = 0`); the cache holds the window (a ring buffer) or the longest sequence. Causal
    /// only, no backward.
    Decode,
}

/// An [`AttnOp<f32>`] on the GPU: host f32 slices rounded to bf16 on upload (q, k, v, do, and the
/// o handed to the backward; lse stays f32), results back as f32. Every output buffer is
/// poisoned with NaN before the run.
#[derive(Debug, Clone)]
pub struct CudaAttn {
    cuda: Arc<Cuda>,
    algo: AttnOpAlgo,
}

fn bf(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| f32_to_bf16(v)).collect()
}

impl CudaAttn {
    /// An op on `cuda` running `algo`.
    pub fn new(cuda: Arc<Cuda>, algo: AttnOpAlgo) -> Self {
        Self { cuda, algo }
    }
    /// The device handle.
    pub fn cuda(&self) -> &Arc<Cuda> {
        &self.cuda
    }

    fn up(&self, x: &[f32], what: &'static str) -> Result<CudaSlice<u16>> {
        self.cuda.upload(&bf(x), what)
    }
    fn down_bf(&self, x: &CudaSlice<u16>, n: usize, what: &'static str) -> Result<Vec<f32>> {
        let h = self.cuda.download(x, what)?;
        Ok(h.into_iter().take(n).map(bf16_to_f32).collect())
    }
    fn down_f32(&self, x: &CudaSlice<f32>, n: usize, what: &'static str) -> Result<Vec<f32>> {
        let mut h = self.cuda.download(x, what)?;
        h.truncate(n);
        Ok(h)
    }
    fn poisoned<T: cudarc::driver::DeviceRepr>(&self, len: usize, what: &'static str) -> Result<CudaSlice<T>> {
        // SAFETY: poisoned right away, before any read
        let mut b = unsafe { self.cuda.alloc_uninit::<T>(len.max(1), what) }?;
        poison(&self.cuda, &mut b)?;
        Ok(b)
    }

    fn flash_fwd(&self, p: &AttnProblem, x: &AttnInputs<'_, f32>) -> Result<AttnForward<f32>> {
        let dp = DevAttnProblem::new(&self.cuda, p)?;
        let (q, k, v) = (self.up(x.q, "q")?, self.up(x.k, "k")?, self.up(x.v, "v")?);
        let mut o = self.poisoned::<u16>(p.o_len(), "o")?;
        let mut lse = self.poisoned::<f32>(p.lse_len(), "lse")?;
        ops::attn_fwd(&self.cuda, &dp, &AttnDevInputs { q: &q, k: &k, v: &v }, &mut o, &mut lse)?;
        self.cuda.sync()?;
        Ok(AttnForward { o: self.down_bf(&o, p.o_len(), "o")?, lse: self.down_f32(&lse, p.lse_len(), "lse")? })
    }

    /// The forward as decode steps (see [`AttnOpAlgo::Decode`]).
    fn decode_fwd(&self, p: &AttnProblem, x: &AttnInputs<'_, f32>) -> Result<AttnForward<f32>> {
        let (n, h, hk, d, dv) = (p.n(), p.h(), p.h_kv(), p.d(), p.dv());
        let longest = (0..n).map(|s| p.seq(s).len()).max().unwrap_or(0);
        let layout = AttnCacheLayout::new(p, n, longest.max(1))?;
        let mut cache = AttnKvCache::new(&self.cuda, layout)?;
        let (mut o, mut lse) = (vec![f32::NAN; p.o_len()], vec![f32::NAN; p.lse_len()]);
        let mut os = self.poisoned::<u16>(n * h * dv, "decode o")?;
        let mut ls = self.poisoned::<f32>(n * h, "decode lse")?;
        for t in 0..longest {
            let live = |s: usize| t < p.seq(s).len();
            let lens: Vec<i32> = (0..n).map(|s| if live(s) { t as i32 + 1 } else { 0 }).collect();
            let gather = |src: &[f32], w: usize| -> Vec<f32> {
                (0..n).flat_map(|s| if live(s) { src[(p.seq(s).start + t) * w..][..w].to_vec() } else { vec![0.0; w] }).collect()
            };
            let lens_d = self.cuda.upload(&lens, "decode lens")?;
            let q = self.up(&gather(x.q, h * d), "decode q")?;
            let k = self.up(&gather(x.k, hk * d), "decode k")?;
            let v = self.up(&gather(x.v, hk * dv), "decode v")?;
            cache.step(&self.cuda, &lens_d, &q, &k, &v, &mut os, &mut ls)?;
            let (og, lg) = (self.down_bf(&os, n * h * dv, "decode o")?, self.down_f32(&ls, n * h, "decode lse")?);
            for s in (0..n).filter(|&s| live(s)) {
                let row = p.seq(s).start + t;
                o[row * h * dv..][..h * dv].copy_from_slice(&og[s * h * dv..][..h * dv]);
                lse[row * h..][..h].copy_from_slice(&lg[s * h..][..h]);
            }
        }
        Ok(AttnForward { o, lse })
    }

    fn flash_bwd(&self, p: &AttnProblem, x: &AttnInputs<'_, f32>, fwd: &AttnForward<f32>, d_o: &[f32]) -> Result<AttnGrads<f32>> {
        let dp = DevAttnProblem::new(&self.cuda, p)?;
        let (q, k, v) = (self.up(x.q, "q")?, self.up(x.k, "k")?, self.up(x.v, "v")?);
        let (o, dob) = (self.up(&fwd.o, "o")?, self.up(d_o, "do")?);
        let lse = self.cuda.upload(&fwd.lse, "lse")?;
        let mut g = ops::AttnDevGrads {
            dq: self.poisoned(p.q_len(), "dq")?,
            dk: self.poisoned(p.k_len(), "dk")?,
            dv: self.poisoned(p.v_len(), "dv")?,
            dq_acc: self.poisoned(ops::AttnDevGrads::acc_len(&dp, crate::dispatch::attn::bwd_tile(p, self.cuda.arch())), "dq sums")?,
        };
        let mut delta = self.poisoned::<f32>(p.lse_len(), "delta")?;
        ops::attn_bwd_ws(&self.cuda, &dp, &AttnDevInputs { q: &q, k: &k, v: &v }, &o, &lse, &dob, &mut delta, &mut g)?;
        self.cuda.sync()?;
        Ok(AttnGrads {
            dq: self.down_bf(&g.dq, p.q_len(), "dq")?,
            dk: self.down_bf(&g.dk, p.k_len(), "dk")?,
            dv: self.down_bf(&g.dv, p.v_len(), "dv")?,
        })
    }
}

impl AttnOp<f32> for CudaAttn {
    fn name(&self) -> &'static str {
        match self.algo {
            AttnOpAlgo::Flash => "cuda-attn-flash-bf16",
            AttnOpAlgo::Decode => "cuda-attn-decode-bf16",
        }
    }

    fn forward(&self, p: &AttnProblem, x: &AttnInputs<'_, f32>) -> gla_core::Result<AttnForward<f32>> {
        x.validate(p)?;
        if p.rows() == 0 {
            return Ok(AttnForward { o: Vec::new(), lse: Vec::new() });
        }
        let r = match self.algo {
            AttnOpAlgo::Flash => self.flash_fwd(p, x),
            AttnOpAlgo::Decode => self.decode_fwd(p, x),
        };
        Ok(r?)
    }

    fn backward(&self, p: &AttnProblem, x: &AttnInputs<'_, f32>, fwd: &AttnForward<f32>, d_o: &[f32]) -> gla_core::Result<AttnGrads<f32>> {
        x.validate(p)?;
        fwd.validate_backward(p, d_o)?;
        if self.algo == AttnOpAlgo::Decode {
            return Err(gla_core::Error::Unsupported { backend: "cuda", what: "the decode step has no backward".into() });
        }
        if p.rows() == 0 {
            return Ok(AttnGrads { dq: Vec::new(), dk: Vec::new(), dv: Vec::new() });
        }
        Ok(self.flash_bwd(p, x, fwd, d_o)?)
    }
}
