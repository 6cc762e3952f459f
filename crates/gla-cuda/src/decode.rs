//! The decoder's device parts: [`GpuState`] (one sequence's recurrent states and conv caches),
//! the batch copies of the states around a prefill forward ([`GpuDecoding::prefill_step`]) and the
//! decode step through a device table of the states, captured as a CUDA graph
//! ([`GpuDecoding::decode_step`]). The model's own work (its forward over the ids, the lm_head)
//! is the caller's: a closure for a prefill step, a [`DecodeStep`] for a decode step
//! (gla-model's `gpu::GpuDecoder` supplies both).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};

use crate::backend::{ptr, unsupported, Gpu, InferCtx};
use crate::error::{Error, Result};
use crate::runtime::Cuda;
use crate::weights::GpuWeights;

/// One sequence's generation state on the GPU (what gla-model's `state::State` is on the CPU):
/// per layer the recurrent state f32 (GLA's `[Hop, K, Vop]`, the delta rule's `[HV, K, V]`) and
/// the q, k, v conv caches `[C, W]` f32. Its size depends only on the config.
pub struct GpuState {
    rec: Vec<CudaSlice<f32>>,
    conv: Vec<Option<[CudaSlice<f32>; 3]>>,
    seen: usize,
}

impl GpuState {
    /// Tokens fed so far.
    pub fn seen_tokens(&self) -> usize {
        self.seen
    }
}

/// Device-to-device copy of `len` f32 from `src[src_off..]` to `dst[dst_off..]`.
fn copy_f32(cuda: &Cuda, dst: &CudaSlice<f32>, dst_off: usize, src: &CudaSlice<f32>, src_off: usize, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (d, s) = (ptr(cuda, dst) + 4 * dst_off as u64, ptr(cuda, src) + 4 * src_off as u64);
    // SAFETY: both ranges lie inside live buffers of this device (callers size them from the
    // model dims) and do not overlap (different buffers); the copy is ordered on the stream
    unsafe { cudarc::driver::result::memcpy_dtod_async(d, s, 4 * len, cuda.stream().cu_stream()) }.map_err(Error::driver("copy state"))
}

/// The model's decode step on the device, from the ids to the logits of every sequence
/// (implemented by the model, gla-model's `gpu` module): what [`GpuDecoding::decode_step`] runs
/// eagerly on a batch size's first step and captures as a CUDA graph from its second.
pub trait DecodeStep {
    /// The activations of a `[B, 1]` step (allocated once per batch size, kept at fixed
    /// addresses).
    type Acts;
    /// Activations for `b` sequences of one token.
    ///
    /// # Errors
    /// Allocation failures.
    fn alloc(&self, gpu: &Gpu, b: usize) -> Result<Self::Acts>;
    /// Copies the step's token ids into `acts` (checked by the caller).
    ///
    /// # Errors
    /// [`Error::Driver`].
    fn upload_ids(&self, gpu: &Gpu, acts: &mut Self::Acts, ids: &[u32]) -> Result<()>;
    /// The step's device work, from the ids in `acts` to the logits of every row: nothing but
    /// kernel launches and GEMMs on the stream (it is captured in a CUDA graph). Each sequence's
    /// state is read and updated in place through the table at `table` (`InferIo::Table`).
    ///
    /// # Safety
    /// As [`crate::ops::gla_decode`]: `table` holds `[L][4][B]` addresses of live, distinct
    /// state buffers of the sizes [`GpuDecoding::state_bytes`] counts (0 for absent conv caches).
    ///
    /// # Errors
    /// The backend's.
    unsafe fn body(&self, gpu: &Gpu, acts: &mut Self::Acts, table: u64) -> Result<()>;
    /// Downloads the logits of the step, `[B, vocab]` f32.
    ///
    /// # Errors
    /// [`Error::Driver`].
    fn logits(&self, weights: &GpuWeights, acts: &Self::Acts) -> Result<Vec<f32>>;
}

/// Generation's device side on inference-only weights: the states, the batch copies of a
/// prefill step and the decode step's state table and CUDA graph by batch size; `A` is the
/// decode step's activations ([`DecodeStep::Acts`]).
pub struct GpuDecoding<A> {
    weights: GpuWeights,
    /// Decode steps run as a replay of a captured CUDA graph (the check counts them).
    graph_steps: AtomicU64,
    /// Decode steps by batch size (a few: a batch whose sequences finish at different times
    /// shrinks step by step).
    decode: Mutex<HashMap<usize, DecodeSlot<A>>>,
}

/// Bytes of the batch copies of the states one grouped prefill forward may hold (for fla's
/// 340M config, 12 MiB of state per sequence: groups of up to 21 prompts).
pub const PREFILL_STATE_BYTES: usize = 512 << 20;

/// Batch sizes whose decode step (buffers and graph) is kept; more are dropped all at once.
const DECODE_SLOTS: usize = 4;

/// Everything one decode step of B sequences touches, at fixed device addresses: its
/// activations, the state table ([`InferIo::Table`]) and, from the second step on, the step
/// captured as a CUDA graph (one launch instead of ~20 per layer: at batch 1 the step is
/// bound by launch overhead, not by the GPU).
struct DecodeSlot<A> {
    acts: A,
    table: CudaSlice<u64>,
    /// The table's contents on the device (re-uploaded only when the states change).
    uploaded: Vec<u64>,
    graph: Option<CudaGraph>,
    /// Steps run; the first runs eagerly (it loads the kernels and sizes cuBLAS's workspace).
    steps: u64,
    /// A capture failed: this slot runs eagerly from now on.
    no_graph: bool,
}

impl<A> GpuDecoding<A> {
    /// Generation over `weights` (made by [`GpuWeights::new_inference`]: bf16 GEMM matrices,
    /// no gradients).
    pub fn new(weights: GpuWeights) -> Self {
        Self { weights, graph_steps: AtomicU64::new(0), decode: Mutex::new(HashMap::new()) }
    }

    /// The device weights.
    pub fn weights(&self) -> &GpuWeights {
        &self.weights
    }

    /// Elements of layer `l`'s part of a state: the recurrent state and the q, k, v conv caches.
    fn state_sizes(&self, l: usize) -> (usize, [usize; 3]) {
        self.weights.backend().layer_state_sizes(l)
    }

    fn layers(&self) -> usize {
        self.weights.backend().dims.layers
    }

    /// Decode steps so far that replayed a captured CUDA graph (the others ran eagerly: the
    /// first step of each batch size, and every step when capture is off or was refused).
    pub fn graph_steps(&self) -> u64 {
        self.graph_steps.load(Ordering::Relaxed)
    }

    /// Bytes of one [`GpuState`] (recurrent states and conv caches, f32): fixed by the config.
    pub fn state_bytes(&self) -> usize {
        (0..self.layers())
            .map(|l| {
                let (rec, conv) = self.state_sizes(l);
                4 * (rec + conv.iter().sum::<usize>())
            })
            .sum()
    }

    /// A zero state (an empty context).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn new_state(&self) -> Result<GpuState> {
        let gpu = self.weights.backend();
        let z = |len: usize| gpu.cuda.alloc_zeros::<f32>(len.max(1), "generation state");
        let (mut rec, mut convs) = (Vec::with_capacity(self.layers()), Vec::with_capacity(self.layers()));
        for l in 0..self.layers() {
            let (r, conv) = self.state_sizes(l);
            rec.push(z(r)?);
            convs.push(if gpu.layer_conv(l) > 0 { Some([z(conv[0])?, z(conv[1])?, z(conv[2])?]) } else { None });
        }
        Ok(GpuState { rec, conv: convs, seen: 0 })
    }

    /// Refuses a state made for another model (it would be read and written out of bounds).
    fn check_states(&self, states: &[&mut GpuState]) -> Result<()> {
        let layers = self.layers();
        for (i, s) in states.iter().enumerate() {
            let fits = s.rec.len() == layers
                && s.conv.len() == layers
                && (0..layers).all(|l| {
                    let (rec, conv) = self.state_sizes(l);
                    s.rec[l].len() == rec.max(1)
                        && match &s.conv[l] {
                            None => self.weights.backend().layer_conv(l) == 0,
                            Some(cs) => cs.iter().zip(conv).all(|(x, n)| x.len() == n.max(1)),
                        }
                });
            if !fits {
                return Err(unsupported(format!("state {i} was not made by this model's decoder (layers, heads or dims differ)")));
            }
        }
        Ok(())
    }

    /// A prefill step of B sequences of T tokens (`shape`) from their states: gathers the states
    /// into batch buffers, runs `run` (the model's forward from the states in the context to the
    /// logits of each sequence's last position, `[B, vocab]` on the host), scatters the states
    /// back; returns each sequence's logits.
    ///
    /// # Errors
    /// States of another model, a wrong number of ids or states ([`Error::Op`]); `run`'s;
    /// device errors.
    pub fn prefill_step(
        &self,
        shape: (usize, usize),
        ids: &[u32],
        states: &mut [&mut GpuState],
        run: impl FnOnce(&mut InferCtx) -> Result<Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>> {
        let (b, t) = shape;
        let c = &*self.weights.backend().cuda;
        let layers = self.layers();
        self.check_states(states)?;
        if ids.len() != b * t || states.len() != b {
            return Err(unsupported(format!("{} ids and {} states for a [{b}, {t}] step", ids.len(), states.len())));
        }
        let z = |len: usize| c.alloc_zeros::<f32>(len.max(1), "batch state");
        let mut ctx = InferCtx { h0: Vec::with_capacity(layers), ht: Vec::with_capacity(layers), conv: Vec::with_capacity(layers) };
        for l in 0..layers {
            let (rec, conv) = self.state_sizes(l);
            let (h0, ht) = (z(b * rec)?, z(b * rec)?);
            for (i, s) in states.iter().enumerate() {
                copy_f32(c, &h0, i * rec, &s.rec[l], 0, rec)?;
            }
            ctx.h0.push(h0);
            ctx.ht.push(ht);
            ctx.conv.push(match states.first().and_then(|s| s.conv[l].as_ref()) {
                None => None,
                Some(_) => {
                    let bufs = [z(b * conv[0])?, z(b * conv[1])?, z(b * conv[2])?];
                    for (i, s) in states.iter().enumerate() {
                        if let Some(cs) = &s.conv[l] {
                            for j in 0..3 {
                                copy_f32(c, &bufs[j], i * conv[j], &cs[j], 0, conv[j])?;
                            }
                        }
                    }
                    Some(bufs)
                }
            });
        }
        let logits = run(&mut ctx)?;
        for (i, s) in states.iter_mut().enumerate() {
            for l in 0..layers {
                let (rec, conv) = self.state_sizes(l);
                copy_f32(c, &s.rec[l], 0, &ctx.ht[l], i * rec, rec)?;
                if let (Some(cs), Some(bufs)) = (&s.conv[l], &ctx.conv[l]) {
                    for j in 0..3 {
                        copy_f32(c, &cs[j], 0, &bufs[j], i * conv[j], conv[j])?;
                    }
                }
            }
            s.seen += t;
        }
        let vocab = self.weights.backend().dims.vocab;
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// One token for each sequence, all in one step of `model` (ids checked by the caller);
    /// returns each one's logits. The first step of a batch size runs eagerly, the next ones
    /// replay the step captured as a CUDA graph (unless graphs are off or were refused).
    ///
    /// # Errors
    /// States of another model, a wrong number of states ([`Error::Op`]); device errors.
    pub fn decode_step<S: DecodeStep<Acts = A>>(&self, model: &S, ids: &[u32], states: &mut [&mut GpuState]) -> Result<Vec<Vec<f32>>> {
        if ids.len() != states.len() {
            return Err(unsupported(format!("{} tokens for {} states", ids.len(), states.len())));
        }
        self.check_states(states)?;
        let vocab = self.weights.backend().dims.vocab;
        let b = ids.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let gpu = self.weights.backend();
        let c = &*gpu.cuda;
        let st = c.stream();
        let mut slots = self.decode.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(&b) {
            if slots.len() >= DECODE_SLOTS {
                slots.clear();
            }
            let slot = DecodeSlot {
                acts: model.alloc(gpu, b)?,
                table: c.alloc_zeros::<u64>(self.weights.backend().dims.layers * 4 * b, "state table")?,
                uploaded: Vec::new(),
                graph: None,
                steps: 0,
                no_graph: false,
            };
            slots.insert(b, slot);
        }
        let Some(slot) = slots.get_mut(&b) else { unreachable!("inserted above") };
        // the table: [L][4][B] addresses (recurrent state, q/k/v conv caches)
        let mut table = vec![0u64; self.weights.backend().dims.layers * 4 * b];
        for l in 0..self.weights.backend().dims.layers {
            for (i, s) in states.iter().enumerate() {
                table[l * 4 * b + i] = ptr(c, &s.rec[l]);
                if let Some(cs) = &s.conv[l] {
                    for j in 0..3 {
                        table[(l * 4 + 1 + j) * b + i] = ptr(c, &cs[j]);
                    }
                }
            }
        }
        if table != slot.uploaded {
            st.memcpy_htod(&table, &mut slot.table).map_err(Error::driver("upload state table"))?;
            slot.uploaded = table;
        }
        model.upload_ids(gpu, &mut slot.acts, ids)?;
        let tab = ptr(c, &slot.table);
        if slot.graph.is_none() && slot.steps > 0 && !slot.no_graph && c.options().graphs {
            slot.graph = self.capture(model, &mut slot.acts, tab)?;
            slot.no_graph = slot.graph.is_none();
        }
        match &slot.graph {
            Some(g) => {
                g.launch().map_err(Error::driver("launch the decode graph"))?;
                self.graph_steps.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: the table was just built from these states' own buffers, checked above to
            // have this model's sizes; they are distinct (each &mut GpuState owns its buffers)
            // and stay borrowed until the logits are read back below (a synchronising copy)
            None => unsafe { model.body(gpu, &mut slot.acts, tab)? },
        }
        slot.steps += 1;
        let logits = model.logits(&self.weights, &slot.acts)?;
        for s in states.iter_mut() {
            s.seen += 1;
        }
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Captures the decode step of `acts` into a CUDA graph; `None` (the step then runs
    /// eagerly, as correct, only slower) when the driver refuses the capture.
    fn capture<S: DecodeStep<Acts = A>>(&self, model: &S, acts: &mut A, table: u64) -> Result<Option<CudaGraph>> {
        let gpu = self.weights.backend();
        let st = gpu.cuda.stream();
        // relaxed: cuBLAS may make allocation calls on first use of a shape, which a stricter
        // mode would turn into capture failures
        if st.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).is_err() {
            return Ok(None);
        }
        // SAFETY: as in decode_batch (the table holds the live states of this step); during the
        // capture nothing runs, the graph replays these launches at the next launch
        let body = unsafe { model.body(gpu, acts, table) };
        let graph = st.end_capture(CUgraphInstantiate_flags(0));
        match (body, graph) {
            (Ok(()), Ok(Some(g))) => Ok(Some(g)),
            // a launch error inside the capture is the body's own error: report it
            (Err(e), _) if !matches!(e, Error::Launch { .. } | Error::Blas { .. } | Error::Driver { .. }) => Err(e),
            _ => Ok(None),
        }
    }
}
