//! Token mixers: the layer of a block that mixes information across positions. Each family
//! lives in its own folder (`gla/`, `delta/`, `attn/`: its parameter rows, activations, forward and
//! backward over the backend primitives and its op family's trait); this file is the one place
//! that lists them, so a model takes one mixer per layer and a hybrid stack is a list of
//! different ones. A layer's mixer config is its own ([`MixerDims`], kept in its ids).
//!
//! Contract of a mixer's `forward`: `out [N, D] = res + mixer(xn)` (the residual add is fused
//! into its output projection); with the backend's `Io` it continues each sequence from its
//! inference state of that layer and advances it. Its `backward` gets the GEMM operand of
//! `d out` and writes `d xn [N, D]`, accumulating its weights' gradients.

pub mod attn;
pub mod delta;
pub mod gla;

use crate::backend::{Act, Backend, ModelStorage, Plan, F32};
use crate::config::MixerDims;
use crate::params::Table;
use attn::{AttnActs, AttnIds, AttnScratch};
use delta::{DeltaActs, DeltaIds, DeltaScratch};
use gla::{GlaActs, GlaIds, GlaScratch};

/// One layer's mixer: its dims and parameter rows.
#[derive(Debug, Clone, PartialEq)]
pub enum MixerIds {
    /// fla's `GatedLinearAttention`.
    Gla(GlaIds),
    /// fla's `DeltaNet` / `GatedDeltaNet`.
    Delta(DeltaIds),
    /// fla's softmax `Attention` (a hybrid stack's `attn` layers).
    Attn(AttnIds),
}

impl MixerIds {
    /// Adds the rows of mixer `m` under `prefix` (`model.layers.{l}.attn.`) for model dim `d`.
    pub fn table(t: &mut Table, prefix: &str, d: usize, m: &MixerDims) -> Self {
        match m {
            MixerDims::Gla(g) => Self::Gla(GlaIds::table(t, prefix, d, g)),
            MixerDims::Delta(g) => Self::Delta(DeltaIds::table(t, prefix, d, g)),
            MixerDims::Attn(g) => Self::Attn(AttnIds::table(t, prefix, d, g)),
        }
    }

    /// The mixer's dims: layers whose mixers have equal dims share inference buffers and the
    /// backward's scratch.
    pub fn dims(&self) -> MixerDims {
        match self {
            Self::Gla(g) => MixerDims::Gla(g.dims),
            Self::Delta(g) => MixerDims::Delta(g.dims),
            Self::Attn(g) => MixerDims::Attn(g.dims),
        }
    }
}

/// A layer's saved activations.
pub(crate) enum MixerActs<S: ModelStorage> {
    Gla(GlaActs<S>),
    Delta(DeltaActs<S>),
    Attn(AttnActs<S>),
}

/// One kind's backward buffers.
enum Scratch<S: ModelStorage> {
    Gla(GlaScratch<S>),
    Delta(DeltaScratch<S>),
    Attn(AttnScratch<S>),
}

/// The backward's buffers of every mixer kind in the model (shared by the layers of a kind:
/// equal [`MixerDims`]).
pub(crate) struct MixerScratch<S: ModelStorage> {
    kinds: Vec<(MixerDims, Scratch<S>)>,
}

impl<S: ModelStorage> MixerActs<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, ids: &MixerIds, n: usize) -> Result<Self, B::Error> {
        Ok(match ids {
            MixerIds::Gla(g) => Self::Gla(GlaActs::alloc(be, &g.dims, n)?),
            MixerIds::Delta(g) => Self::Delta(DeltaActs::alloc(be, &g.dims, n)?),
            MixerIds::Attn(g) => Self::Attn(AttnActs::alloc(be, &g.dims, n)?),
        })
    }
}

impl<S: ModelStorage> MixerScratch<S> {
    /// Buffers for the kinds of `layers`, `n` rows.
    pub(crate) fn alloc<'a, B: Backend<Buf = S>>(be: &B, layers: impl Iterator<Item = &'a MixerIds>, n: usize) -> Result<Self, B::Error> {
        let mut kinds: Vec<(MixerDims, Scratch<S>)> = Vec::new();
        for ids in layers {
            let key = ids.dims();
            if kinds.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let s = match ids {
                MixerIds::Gla(g) => Scratch::Gla(GlaScratch::alloc(be, &g.dims, n)?),
                MixerIds::Delta(g) => Scratch::Delta(DeltaScratch::alloc(be, &g.dims, n)?),
                MixerIds::Attn(g) => Scratch::Attn(AttnScratch::alloc(be, &g.dims, n)?),
            };
            kinds.push((key, s));
        }
        Ok(Self { kinds })
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
        (MixerIds::Delta(ids), MixerActs::Delta(a)) => delta::forward(be, ids, a, plan, xn, res, out, bt, layer, io),
        (MixerIds::Attn(ids), MixerActs::Attn(a)) => attn::forward(be, ids, a, plan, xn, res, out, bt, layer, io),
        _ => Err(mismatch("forward", "activations").into()),
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
    let key = ids.dims();
    let s = scratch.kinds.iter_mut().find(|(k, _)| *k == key).map(|(_, s)| s);
    match (ids, acts, s) {
        (MixerIds::Gla(ids), MixerActs::Gla(a), Some(Scratch::Gla(s))) => gla::backward(be, ids, a, s, plan, grads, xn, dout, dxn, bt),
        (MixerIds::Delta(ids), MixerActs::Delta(a), Some(Scratch::Delta(s))) => {
            delta::backward(be, ids, a, s, plan, grads, xn, dout, dxn, bt)
        }
        (MixerIds::Attn(ids), MixerActs::Attn(a), Some(Scratch::Attn(s))) => attn::backward(be, ids, a, s, plan, grads, xn, dout, dxn, bt),
        _ => Err(mismatch("backward", "mixer scratch").into()),
    }
}

/// Buffers made for another mixer than the layer's (activations of another model).
fn mismatch(op: &'static str, tensor: &'static str) -> gla_core::Error {
    crate::model::shape_err(op, tensor, "allocated for the model's mixers".into(), 1, 0)
}
