//! Token mixers: the layer of a block that mixes information across positions. Each family
//! lives in its own folder (`gla/`: its parameter rows, activations, forward and backward over
//! the backend primitives and its op family's trait); this file is the one place that lists
//! them, so a model takes one mixer per layer and a hybrid stack is a list of different ones.
//!
//! Contract of a mixer's `forward`: `out [N, D] = res + mixer(xn)` (the residual add is fused
//! into its output projection); with the backend's `Io` it continues each sequence from its
//! inference state of that layer and advances it. Its `backward` gets the GEMM operand of
//! `d out` and writes `d xn [N, D]`, accumulating its weights' gradients.

pub mod gla;

use crate::backend::{Act, Backend, ModelStorage, Plan, F32};
use crate::config::Dims;
use crate::params::Table;
use gla::{GlaActs, GlaIds, GlaScratch};

/// One layer's mixer and its parameter rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MixerIds {
    /// fla's `GatedLinearAttention`.
    Gla(GlaIds),
}

impl MixerIds {
    /// Adds the rows of the model's mixer under `prefix` (`model.layers.{l}.attn.`).
    pub fn table(t: &mut Table, prefix: &str, d: &Dims) -> Self {
        Self::Gla(GlaIds::table(t, prefix, d))
    }

    /// Layers whose mixers have the same kind share inference buffers.
    pub(crate) fn kind(&self) -> usize {
        match self {
            Self::Gla(_) => 0,
        }
    }
}

/// A layer's saved activations.
pub(crate) enum MixerActs<S: ModelStorage> {
    Gla(GlaActs<S>),
}

/// The backward's buffers of every mixer kind in the model (shared by the layers of a kind).
pub(crate) struct MixerScratch<S: ModelStorage> {
    gla: Option<GlaScratch<S>>,
}

impl<S: ModelStorage> MixerActs<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, ids: &MixerIds, n: usize) -> Result<Self, B::Error> {
        Ok(match ids {
            MixerIds::Gla(_) => Self::Gla(GlaActs::alloc(be, n)?),
        })
    }
}

impl<S: ModelStorage> MixerScratch<S> {
    /// Buffers for the kinds of `layers`, `n` rows.
    pub(crate) fn alloc<'a, B: Backend<Buf = S>>(be: &B, layers: impl Iterator<Item = &'a MixerIds>, n: usize) -> Result<Self, B::Error> {
        let mut s = Self { gla: None };
        for ids in layers {
            match ids {
                MixerIds::Gla(_) if s.gla.is_none() => s.gla = Some(GlaScratch::alloc(be, n)?),
                MixerIds::Gla(_) => {}
            }
        }
        Ok(s)
    }
}

/// `out = res + mixer(xn)` (module doc) for `b` sequences of `t` tokens.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<B: Backend>(
    be: &B,
    ids: &MixerIds,
    acts: &mut MixerActs<B::Buf>,
    plan: &Plan<B>,
    xn: &Act<B>,
    res: &F32<B>,
    out: &mut F32<B>,
    bt: (usize, usize),
    layer: usize,
    io: Option<&mut B::Io<'_>>,
) -> Result<(), B::Error> {
    match (ids, acts) {
        (MixerIds::Gla(ids), MixerActs::Gla(a)) => gla::forward(be, ids, a, plan, xn, res, out, bt, layer, io),
    }
}

/// Backward of [`forward`] (module doc).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend>(
    be: &B,
    ids: &MixerIds,
    acts: &MixerActs<B::Buf>,
    scratch: &mut MixerScratch<B::Buf>,
    plan: &Plan<B>,
    grads: &mut B::Grads,
    xn: &Act<B>,
    dout: &Act<B>,
    dxn: &mut F32<B>,
    bt: (usize, usize),
) -> Result<(), B::Error> {
    match (ids, acts, &mut scratch.gla) {
        (MixerIds::Gla(ids), MixerActs::Gla(a), Some(s)) => gla::backward(be, ids, a, s, plan, grads, xn, dout, dxn, bt),
        (MixerIds::Gla(_), MixerActs::Gla(_), None) => {
            Err(crate::model::shape_err("backward", "GLA scratch", "allocated for the model's mixers".into(), 1, 0).into())
        }
    }
}
