//! Inference: immutable weights ([`GlaModel`]) plus one [`State`] per sequence.
//!
//! A [`State`] holds, per layer, the recurrent state `[H, K, V]` (f32) and, with short
//! convolution, the three conv caches `[C, W]` (the last `W` inputs of the q, k and v convs, the
//! newest last, as fla's `conv_state`). Its size depends only on the config, never on how many
//! tokens it has seen: a 64K-token context costs what a 1-token context costs.
//!
//! - [`GlaModel::prefill`] feeds a prompt (any length, in windows of [`PREFILL_WINDOW`] tokens so
//!   the working memory is bounded too) and returns the logits of its last position. Each window
//!   goes through the chunked op when it is longer than 64 tokens and through the fused recurrent
//!   op otherwise, fla's own mode switch (`mode = 'fused_recurrent' if T <= 64`).
//! - [`GlaModel::decode`] feeds one token through the recurrent path and returns its logits.
//! - [`GlaModel::prefill_batch`] / [`GlaModel::decode_batch`] do the same for several sequences,
//!   each with its own state, in the forwards of [`prefill_plan`] (the one prefill policy, which
//!   the GPU's decoder, `gpu::GpuDecoder`, follows too): the projections and the MLP run on all rows at once; the
//!   GLA op runs every sequence with the algorithm its window gets alone.
//!
//! ```
//! use gla_model::{GlaConfig, GlaModel};
//! let m = GlaModel::new(GlaConfig::tiny(32, 2, 2, 64), 0).unwrap();
//! let mut st = m.new_state();
//! let logits = m.prefill(&[1, 2, 3], &mut st).unwrap();
//! assert_eq!(logits.len(), 64);
//! let next = m.decode(7, &mut st).unwrap();
//! assert_eq!((next.len(), st.seen_tokens()), (64, 4));
//! ```

use crate::cpu::CpuIo;
use crate::model::{body, head_logits, Acts, GlaModel};
pub use crate::state::{LayerState, State, StateLayout};
use crate::{Error, Result};

/// The longest piece of a prompt one prefill call processes at once. A longer prompt is fed in
/// windows of this many tokens (a multiple of the chunk length 64, so chunk boundaries stay where
/// they would be in one call), carrying the state: working memory stays bounded at any context.
pub const PREFILL_WINDOW: usize = 2048;

/// fla switches from the chunked to the fused recurrent op for inputs of at most this many tokens.
pub const RECURRENT_MAX_T: usize = 64;

/// Tokens of one prefill forward at most (the inference activations stay bounded whatever the
/// prompts: about 45 KB a token for a 340M model on a GPU).
pub const PREFILL_TOKENS: usize = 8192;

/// One forward of a prefill ([`prefill_plan`]): tokens `start..end` of each prompt in `seqs`
/// (prompts of the same length, in index order), as a `[B, end - start]` batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefillStep {
    /// The prompts of this forward.
    pub seqs: Vec<usize>,
    /// First token of the window.
    pub start: usize,
    /// One past its last token.
    pub end: usize,
    /// The window ends the prompts: their last-position logits are the prefill's result.
    pub last: bool,
}

/// The prefill policy of every device (the CPU's [`GlaModel::prefill_batch`], the GPU's
/// decoder): prompts of the same length run together, at most `max_batch` at a time, as
/// `[B, w]` forwards over windows of `w = clamp(PREFILL_TOKENS / B, 64, PREFILL_WINDOW)` tokens
/// (a multiple of the chunk length 64 wherever a window ends inside a prompt, so chunk
/// boundaries stay where one call would put them), shortest prompts first. Equal lengths keep
/// every forward a plain `[B, T]` batch on any device.
pub fn prefill_plan(lens: &[usize], max_batch: usize) -> Vec<PrefillStep> {
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, &n) in lens.iter().enumerate() {
        groups.entry(n).or_default().push(i);
    }
    let mut plan = Vec::new();
    for (len, members) in groups {
        for group in members.chunks(max_batch.max(1)) {
            // PREFILL_TOKENS / B rounded down to a multiple of 64 (at least 64)
            let w = ((PREFILL_TOKENS / group.len()) / 64 * 64).clamp(64, PREFILL_WINDOW);
            for start in (0..len).step_by(w) {
                let end = (start + w).min(len);
                plan.push(PrefillStep { seqs: group.to_vec(), start, end, last: end == len });
            }
        }
    }
    plan
}

/// Bytes the KV caches of the softmax-attention layers (a hybrid stack's) hold for one sequence
/// after `tokens` tokens, on the CPU (f32 k and v, `2 * H_KV * Dh * 4` bytes a slot; a layer
/// with a window w keeps w slots from its first token, one without keeps a slot per token).
/// The GPU's cache has the same slots in its own element type. 0 for a model without
/// attention layers: its state is the constant [`State::bytes`].
pub fn kv_cache_bytes(dims: &crate::config::Dims, tokens: usize) -> usize {
    dims.mixers
        .iter()
        .filter_map(|m| match m {
            crate::config::MixerDims::Attn(a) => Some(2 * a.kv_dim() * 4 * a.window.unwrap_or(tokens)),
            _ => None,
        })
        .sum()
}

/// The states of `seqs` (distinct indices in increasing order) out of `states`.
pub fn pick<'a, S>(states: &'a mut [&mut S], seqs: &[usize]) -> Vec<&'a mut S> {
    let mut out = Vec::with_capacity(seqs.len());
    let mut rest: &mut [&mut S] = states;
    let mut base = 0;
    for &i in seqs {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
        let (one, tail) = tail.split_at_mut(1);
        out.push(&mut *one[0]);
        rest = tail;
        base = i + 1;
    }
    out
}

impl GlaModel {
    /// A zero [`State`] sized for this model.
    pub fn new_state(&self) -> State {
        State::new(&self.dims)
    }

    /// Feeds a prompt (one or more tokens) into `state` and returns the logits `[vocab]` of its
    /// last position. A state that has already seen tokens continues from them (multi-turn).
    ///
    /// # Errors
    /// [`Error::Shape`] for an empty prompt or a state of another config; [`Error::Token`] for an
    /// id outside the vocabulary; [`Error::Op`] when an activation is not finite. On error the
    /// state may have been advanced by the windows before the failing one.
    pub fn prefill(&self, ids: &[u32], state: &mut State) -> Result<Vec<f32>> {
        let mut out = self.prefill_batch(&[ids], &mut [state])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Feeds one token and returns its logits `[vocab]` (the recurrent path).
    ///
    /// # Errors
    /// As [`GlaModel::prefill`]; the state is unchanged on error.
    pub fn decode(&self, id: u32, state: &mut State) -> Result<Vec<f32>> {
        let mut out = self.forward_packed(&[id], &[1], &mut [state])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// [`GlaModel::prefill`] for several sequences, each into its own state: returns the logits
    /// of each prompt's last position. Prompts may have different lengths.
    ///
    /// # Errors
    /// As [`GlaModel::prefill`]; [`Error::Shape`] when the counts of prompts and states differ.
    pub fn prefill_batch(&self, prompts: &[&[u32]], states: &mut [&mut State]) -> Result<Vec<Vec<f32>>> {
        if prompts.len() != states.len() {
            return Err(Error::Shape {
                op: "prefill_batch",
                tensor: "states",
                shape: "one per prompt".into(),
                expected: prompts.len(),
                got: states.len(),
            });
        }
        if prompts.iter().any(|p| p.is_empty()) {
            return Err(Error::Shape {
                op: "prefill",
                tensor: "input_ids",
                shape: "[T >= 1] (a prompt needs at least one token)".into(),
                expected: 1,
                got: 0,
            });
        }
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
        for step in prefill_plan(&lens, PREFILL_TOKENS / 64) {
            let ids: Vec<u32> = step.seqs.iter().flat_map(|&i| prompts[i][step.start..step.end].iter().copied()).collect();
            let lens = vec![step.end - step.start; step.seqs.len()];
            let mut sts = pick(states, &step.seqs);
            let logits = self.forward_packed(&ids, &lens, &mut sts)?;
            if step.last {
                for (&i, l) in step.seqs.iter().zip(logits) {
                    out[i] = l;
                }
            }
        }
        Ok(out)
    }

    /// [`GlaModel::decode`] for several sequences: token `ids[i]` into `states[i]`; returns each
    /// sequence's logits.
    ///
    /// # Errors
    /// As [`GlaModel::prefill_batch`].
    pub fn decode_batch(&self, ids: &[u32], states: &mut [&mut State]) -> Result<Vec<Vec<f32>>> {
        if ids.len() != states.len() {
            return Err(Error::Shape {
                op: "decode_batch",
                tensor: "states",
                shape: "one per token".into(),
                expected: ids.len(),
                got: states.len(),
            });
        }
        self.forward_packed(ids, &vec![1; ids.len()], states)
    }

    /// One forward over packed sequences: `ids` holds `lens[i]` tokens of sequence `i` in turn;
    /// `states[i]` is read and advanced. Returns the last-position logits of each sequence.
    fn forward_packed(&self, ids: &[u32], lens: &[usize], states: &mut [&mut State]) -> Result<Vec<Vec<f32>>> {
        let dm = &self.dims;
        let rows: usize = lens.iter().sum();
        if rows != ids.len() || lens.len() != states.len() {
            return Err(Error::Shape {
                op: "forward_packed",
                tensor: "input_ids",
                shape: "sum of the lengths".into(),
                expected: rows,
                got: ids.len(),
            });
        }
        if lens.contains(&0) {
            return Err(Error::Shape { op: "prefill", tensor: "input_ids", shape: "[T >= 1]".into(), expected: 1, got: 0 });
        }
        crate::model::check_ids(dm, ids)?;
        if let Some(st) = states.iter().find(|s| !s.fits(dm)) {
            let want = State::new(dm);
            let first = want.shapes.first().map(|s| format!("[H={}, K={}, V={}] (conv width {})", s.heads, s.k, s.v, s.w));
            return Err(Error::Shape {
                op: "forward_packed",
                tensor: "state",
                shape: format!("L={} layers of {}", dm.layers, first.unwrap_or_default()),
                expected: want.numel(),
                got: st.numel(),
            });
        }
        let bounds: Vec<usize> = std::iter::once(0)
            .chain(lens.iter().scan(0, |a, &l| {
                *a += l;
                Some(*a)
            }))
            .collect();
        let mut io = CpuIo {
            // new conv caches (small copies) and new recurrent states (the op's outputs), moved
            // into the states only at the end, so that an error leaves them unchanged
            convs: states.iter().map(|s| s.layers.iter().map(|l| l.conv.clone()).collect()).collect(),
            recs: states.iter().map(|_| Vec::with_capacity(dm.layers)).collect(),
            kvs: states.iter().map(|_| Vec::new()).collect(),
            bounds,
            states: &*states,
        };
        let cpu = self.cpu().for_inference();
        let ns = lens.len();
        let mut acts = Acts::alloc(&cpu, &self.layout, 1, rows, true, ns)?;
        acts.ids_mut().copy_from_slice(ids);
        body(&cpu, &self.layout, &mut acts, Some(&mut io))?;
        // the last row of each sequence reaches the lm_head (all of them at decode)
        if ns == rows {
            head_logits(&cpu, &self.layout, &mut acts, None)?;
        } else {
            let mut last = vec![crate::IGNORE_INDEX; rows];
            io.bounds[1..].iter().for_each(|&e| last[e - 1] = 0);
            head_logits(&cpu, &self.layout, &mut acts, Some(&last))?;
        }
        let CpuIo { convs, recs, kvs, .. } = io;
        for ((((st, c), r), kv), &len) in states.iter_mut().zip(convs).zip(recs).zip(kvs).zip(lens) {
            for ((layer, c), r) in st.layers.iter_mut().zip(c).zip(r) {
                layer.conv = c;
                layer.recurrent = r;
            }
            for (l, cache) in kv {
                st.layers[l].kv = Some(cache);
            }
            st.seen += len;
        }
        Ok(acts.logits()[..ns * dm.vocab].chunks_exact(dm.vocab).map(<[f32]>::to_vec).collect())
    }
}
